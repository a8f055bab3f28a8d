/**
 * Bundles the command-line program into dist/bundle: one file per entry point
 * (the CLI and the two worker threads) plus shared chunks, all in one
 * directory so the workers are found beside the code that starts them.
 * Loading one bundle instead of some two hundred modules halves start-up,
 * which every command (and every cron run) pays. The AWS SDK goes into chunks
 * of its own, loaded only with an S3 repository: from there it loads about
 * 45 ms faster than from its hundreds of files in node_modules. Native and
 * CommonJS-only packages required through createRequire stay outside.
 */
import { rm } from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const compiled = path.join(root, 'dist/src');

const outdir = path.join(root, 'dist/bundle');
// Chunk names carry a hash of their content: without this, every build would leave the last one's behind.
await rm(outdir, { recursive: true, force: true });

await build({
  entryPoints: ['cli/main.js', 'core/sha256-worker.js', 'crypto/cipher-worker.js'].map((f) => path.join(compiled, f)),
  outdir,
  entryNames: '[name]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  external: ['better-sqlite3'],
  // CommonJS dependencies require Node's built-in modules; an ES module has no require of its own.
  banner: { js: "import { createRequire as createRequireForBundle } from 'node:module'; const require = createRequireForBundle(import.meta.url);" },
  logLevel: 'warning',
});
