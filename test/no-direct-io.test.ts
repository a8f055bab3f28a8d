import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { BIN } from './helpers/cli.js';
import { compareSnapshots, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile } from './helpers/tree.js';

/**
 * Volumes and restored files are written with O_DIRECT where the file system
 * allows it. ramfs does not: opening a file there with O_DIRECT fails with
 * EINVAL. A private mount namespace lends the test a ramfs without touching
 * the machine's mounts; it vanishes with the last process in it.
 */
function namespaceCommand(): string[] | undefined {
  const candidates = process.getuid?.() === 0 ? [['unshare', '--mount', '--propagation', 'private'], ['unshare', '--map-root-user', '--mount']] : [['unshare', '--map-root-user', '--mount']];
  for (const prefix of candidates) {
    const probe = spawnSync(prefix[0]!, [...prefix.slice(1), 'true'], { stdio: 'ignore' });
    if (probe.status === 0) return prefix;
  }
  return undefined;
}

const unshare = namespaceCommand();

function withoutLifeboatSettings(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([k]) => !k.startsWith('LIFEBOAT_')));
}

test('a repository and a restore on a file system without direct I/O (ramfs) work through the page cache', { skip: unshare ? false : 'unshare cannot make a mount namespace here' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  await fsp.mkdir(path.join(src, 'tok'), { recursive: true });
  const rand = prng(seedFromEnv());
  // Large files (over 1 MiB) are the ones written straight from aligned memory when direct I/O is there.
  await writeRandomFile(path.join(src, 'shard-0.safetensors.bin'), (5 << 20) + 123, rand);
  await writeRandomFile(path.join(src, 'shard-1.safetensors.bin'), 3 << 20, rand);
  await writeRandomFile(path.join(src, 'tok', 'vocab.txt'), 70_001, rand);
  await fsp.writeFile(path.join(src, 'config.json'), '{"hidden_size": 64}\n');
  const mount = path.join(work, 'ramfs');
  const copied = path.join(work, 'restored-copy');
  await fsp.mkdir(mount);

  const script = String.raw`
set -e
mount -t ramfs ramfs "$MNT"
# The premise: this file system refuses O_DIRECT (else the test would prove nothing).
node -e '
const fs = require("node:fs");
try { fs.openSync(process.argv[1], fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_DIRECT); }
catch (e) { if (e.code === "EINVAL") process.exit(0); throw e; }
console.error("O_DIRECT was accepted"); process.exit(9);
' "$MNT/probe"
rm -f "$MNT/probe"
node "$BIN" init --repo "$MNT/repo"
node "$BIN" --repo "$MNT/repo" backup "$SRC" --type full --json > /dev/null
echo extra >> "$SRC/config.json"
node "$BIN" --repo "$MNT/repo" backup "$SRC" --type incr --json > /dev/null
node "$BIN" --repo "$MNT/repo" verify --read-data > /dev/null
node "$BIN" --repo "$MNT/repo" restore latest --target "$MNT/restored" > /dev/null
cp -a "$MNT/restored" "$COPY"
`;
  const run = spawnSync(unshare![0]!, [...unshare!.slice(1), 'sh', '-c', script], {
    env: { ...withoutLifeboatSettings(process.env), MNT: mount, BIN, SRC: src, COPY: copied },
    encoding: 'utf8',
    timeout: 120_000,
  });
  assert.equal(run.status, 0, `the run in a mount namespace failed (status ${run.status}):\n${run.stderr}`);
  // The namespace is gone, and with it the ramfs: nothing of it is left on the directory it covered.
  assert.deepEqual(await fsp.readdir(mount), []);
  const difference = compareSnapshots(await snapshotTree(src), await snapshotTree(path.join(copied, 'models')));
  assert.equal(difference, undefined, difference);
});
