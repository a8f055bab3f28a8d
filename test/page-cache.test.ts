import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { prng, seedFromEnv, tempDir, writeRandomFile } from './helpers/tree.js';
import { hasFincore, resident } from './helpers/page-cache.js';

const SIZE = 16 << 20;

test('a failover and a drill leave the restored weights in the page cache for what loads them next; a plain restore writes past it', { skip: hasFincore ? false : 'fincore (util-linux) is not installed' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.mkdir(path.join(work, 'live', 'models'), { recursive: true });
  await writeRandomFile(path.join(work, 'live', 'models', 'weights.bin'), SIZE, prng(seedFromEnv()));
  await fsp.mkdir(path.join(work, 'serving'));
  const seen = path.join(work, 'resident-at-health-check');
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    [
      'repository: ./repo',
      'sources:',
      '  models: ./live/models',
      'targets:',
      '  prod:',
      '    slots: ./serving/slots',
      '    active: ./serving/current',
      // The health check runs right after the switch, where a server would load the weights.
      `    health: { command: ${JSON.stringify(`fincore --bytes --noheadings --output RES "$LIFEBOAT_SLOT/models/weights.bin" > "${seen}"`)}, timeout: 10s }`,
      '',
    ].join('\n'),
  );
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['backup', '--type', 'full'], { cwd: work })).code, 0);

  const plain = path.join(work, 'plain');
  assert.equal((await lifeboat(['restore', 'latest', '--target', plain], { cwd: work })).code, 0);
  const afterRestore = resident(path.join(plain, 'models', 'weights.bin'));

  const failover = await lifeboat(['failover', 'latest'], { cwd: work });
  assert.equal(failover.code, 0, failover.stderr);
  const atHealthCheck = Number((await fsp.readFile(seen, 'utf8')).trim());
  t.diagnostic(`resident after a restore: ${afterRestore} bytes; at the failover's health check: ${atHealthCheck} bytes of ${SIZE}`);
  assert.ok(atHealthCheck >= 0.9 * SIZE, `only ${atHealthCheck} of ${SIZE} bytes were in memory when the server would load them`);
  assert.ok(afterRestore <= 0.1 * SIZE, `a plain restore left ${afterRestore} of ${SIZE} bytes in memory`);

  // A drill restores as a failover does, so reading every restored file back to check it reads memory, not
  // the disk. It runs in this process, with the repository's volume read into memory first, so this process's
  // count of blocks read from storage is what the check read from disk.
  const data = path.join(work, 'repo', 'data');
  for (const point of await fsp.readdir(data)) {
    for (const volume of await fsp.readdir(path.join(data, point))) await fsp.readFile(path.join(data, point, volume));
  }
  const before = process.resourceUsage().fsRead;
  const drill = await lifeboat(['drill'], { cwd: work });
  assert.equal(drill.code, 0, drill.stderr);
  const readFromDisk = (process.resourceUsage().fsRead - before) * 512;
  t.diagnostic(`read from storage during the drill: ${readFromDisk} bytes`);
  assert.ok(readFromDisk < 0.25 * SIZE, `the drill read ${readFromDisk} bytes from storage to check ${SIZE} bytes it had just restored`);
});
