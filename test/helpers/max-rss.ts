// Preloaded with `node --import` into a lifeboat child: on exit, writes the
// process's peak RSS (KiB) to the file named by MAX_RSS_FILE.
import * as fs from 'node:fs';

const file = process.env.MAX_RSS_FILE;
if (file) {
  process.on('exit', () => {
    fs.writeFileSync(file, String(process.resourceUsage().maxRSS));
  });
}
