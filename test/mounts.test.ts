import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { inNamespace, unshare } from './helpers/namespace.js';
import { compareSnapshots, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile } from './helpers/tree.js';

/** A source `models` of random files (path → size) under `work`, and a repository holding one full backup of it. */
async function backedUp(work: string, files: Record<string, number>) {
  const src = path.join(work, 'models');
  const rand = prng(seedFromEnv());
  for (const [name, size] of Object.entries(files)) {
    await fsp.mkdir(path.dirname(path.join(src, name)), { recursive: true });
    await writeRandomFile(path.join(src, name), size, rand);
  }
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const full = await lifeboat(['--repo', repo, 'backup', src, '--type', 'full', '--json']);
  assert.equal(full.code, 0, full.stderr);
  return { src, repo, rand, fullId: full.json().id as string };
}

const skip = unshare ? false : 'unshare cannot make a mount namespace here';

// Volumes and restored files are written with O_DIRECT where the file system allows it.
// ramfs does not: opening a file there with O_DIRECT fails with EINVAL.
test('a repository and a restore on a file system without direct I/O (ramfs) work through the page cache', { skip }, async (t) => {
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

  inNamespace(
    String.raw`
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
`,
    { MNT: mount, SRC: src, COPY: copied },
  );
  // The namespace is gone, and with it the ramfs: nothing of it is left on the directory it covered.
  assert.deepEqual(await fsp.readdir(mount), []);
  const difference = compareSnapshots(await snapshotTree(src), await snapshotTree(path.join(copied, 'models')));
  assert.equal(difference, undefined, difference);
});

test('a restore into a directory where a file system is mounted stages inside it, keeps lost+found, and replaces or updates with --force and --delta', { skip }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const { src, repo, rand, fullId } = await backedUp(work, { 'weights.bin': (2 << 20) + 5, 'tok/vocab.txt': 9_000 });
  const atFull = await snapshotTree(src);
  await writeRandomFile(path.join(src, 'tok', 'vocab.txt'), 12_000, rand);
  await fsp.writeFile(path.join(src, 'added.json'), '{}\n');
  const incr = await lifeboat(['--repo', repo, 'backup', src, '--type', 'incr', '--json']);
  assert.equal(incr.code, 0, incr.stderr);
  const atIncr = await snapshotTree(src);

  const target = path.join(work, 'mounted');
  const out = path.join(work, 'out');
  await fsp.mkdir(target);
  await fsp.mkdir(out);
  inNamespace(
    String.raw`
mount -t ramfs ramfs "$TARGET"
mkdir "$TARGET/lost+found"
node "$BIN" --repo "$REPO" restore "$FULL" --target "$TARGET" > /dev/null
cp -a "$TARGET" "$OUT/first"
echo stray > "$TARGET/stray"
status=0; node "$BIN" --repo "$REPO" restore latest --target "$TARGET" 2> "$OUT/refused.txt" || status=$?
echo $status > "$OUT/refused-status"
node "$BIN" --repo "$REPO" restore latest --target "$TARGET" --force > /dev/null
cp -a "$TARGET" "$OUT/forced"
node "$BIN" --repo "$REPO" restore "$FULL" --target "$TARGET" --delta > /dev/null
cp -a "$TARGET" "$OUT/delta"
`,
    { TARGET: target, REPO: repo, FULL: fullId, OUT: out },
  );
  const sameAs = async (expected: Map<string, unknown>, dir: string) => compareSnapshots(expected as never, await snapshotTree(path.join(out, dir, 'models')));
  assert.equal(await sameAs(atFull, 'first'), undefined);
  assert.deepEqual((await fsp.readdir(path.join(out, 'first'))).sort(), ['lost+found', 'models']);
  assert.equal((await fsp.readFile(path.join(out, 'refused-status'), 'utf8')).trim(), '2', 'a target holding more than lost+found is not empty');
  assert.match(await fsp.readFile(path.join(out, 'refused.txt'), 'utf8'), /is not empty/);
  assert.equal(await sameAs(atIncr, 'forced'), undefined);
  assert.deepEqual((await fsp.readdir(path.join(out, 'forced'))).sort(), ['lost+found', 'models'], '--force replaces what was there, lost+found aside');
  assert.equal(await sameAs(atFull, 'delta'), undefined);
  assert.deepEqual((await fsp.readdir(path.join(out, 'delta'))).sort(), ['lost+found', 'models']);
  // Nothing was staged on the file system the mount point lies on.
  assert.deepEqual((await fsp.readdir(work)).sort(), ['models', 'mounted', 'out', 'repo']);
});

test('a restore that cannot fit is refused before it writes, and a disk that fills up midway is one clear sentence', { skip }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const logs = Object.fromEntries(Array.from({ length: 60 }, (_, i) => [`logs/run-${i}.log`, 10]));
  const { repo } = await backedUp(work, { 'weights.bin': 3 << 20, ...logs });

  const small = path.join(work, 'small');
  const fewInodes = path.join(work, 'few-inodes');
  const out = path.join(work, 'out');
  await Promise.all([small, fewInodes, out].map((d) => fsp.mkdir(d)));
  inNamespace(
    String.raw`
mount -t tmpfs -o size=1m tmpfs "$SMALL"
status=0; node "$BIN" --repo "$REPO" restore latest --target "$SMALL/restore" 2> "$OUT/small.txt" || status=$?
echo $status > "$OUT/small-status"; ls -A "$SMALL" > "$OUT/small-left"
# Room for the bytes, not for the files: the disk fills up while the restore writes.
mount -t tmpfs -o size=64m,nr_inodes=24 tmpfs "$FEW"
status=0; node "$BIN" --repo "$REPO" restore latest --target "$FEW/restore" 2> "$OUT/few.txt" || status=$?
echo $status > "$OUT/few-status"; ls -A "$FEW" > "$OUT/few-left"
`,
    { SMALL: small, FEW: fewInodes, REPO: repo, OUT: out },
  );
  const read = (name: string) => fsp.readFile(path.join(out, name), 'utf8');
  assert.equal((await read('small-status')).trim(), '1');
  assert.match(await read('small.txt'), /the restore needs 3\.\d+ MiB on the file system of .*small\/restore, and \d+\.\d+ (KiB|MiB) is free\n {2}free space there/);
  assert.equal(await read('small-left'), '', 'nothing is left behind');
  assert.equal((await read('few-status')).trim(), '1');
  const few = await read('few.txt');
  assert.match(few, /^lifeboat: cannot restore into .*few-inodes\/restore: ENOSPC: no space left on device.*\n {2}free space on the file system of .*few-inodes\/restore/);
  assert.doesNotMatch(few, /lifeboat-staging|unexpected error/);
  assert.equal(await read('few-left'), '', 'the staging directory is removed');
});

test('a restore into a file system with no inode left for its staging directory says to free space there', { skip }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const { repo } = await backedUp(work, { 'weights.bin': 100_000 });
  const none = path.join(work, 'no-inodes');
  const out = path.join(work, 'out');
  await Promise.all([none, out].map((d) => fsp.mkdir(d)));
  // Bytes to spare, and no file: the root directory and the target's lock take the two inodes.
  inNamespace(
    String.raw`
mount -t tmpfs -o size=4m,nr_inodes=2 tmpfs "$NONE"
status=0; node "$BIN" --repo "$REPO" restore latest --target "$NONE/restore" 2> "$OUT/none.txt" || status=$?
echo $status > "$OUT/none-status"; ls -A "$NONE" > "$OUT/none-left"
`,
    { NONE: none, REPO: repo, OUT: out },
  );
  const read = (name: string) => fsp.readFile(path.join(out, name), 'utf8');
  assert.equal((await read('none-status')).trim(), '1');
  assert.match(await read('none.txt'), /^lifeboat: cannot create .*no-inodes\/\.restore\.lifeboat-staging-\S+ to restore into: ENOSPC: no space left on device.*\n {2}free space on the file system of .*no-inodes, or use another place\n$/);
  assert.equal(await read('none-left'), '', 'nothing is left behind');
});

test('a restore of thousands of small files is refused before it writes when their blocks do not fit, though their bytes would', { skip }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  // 2,000 files of 10 bytes: 20 KB of data, 8 MB of 4 KiB blocks.
  const { repo } = await backedUp(work, Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [`tok/part-${i}.txt`, 10])));
  const small = path.join(work, 'small');
  const out = path.join(work, 'out');
  await Promise.all([small, out].map((d) => fsp.mkdir(d)));
  inNamespace(
    String.raw`
mount -t tmpfs -o size=4m tmpfs "$SMALL"
status=0; node "$BIN" --repo "$REPO" restore latest --target "$SMALL/restore" 2> "$OUT/small.txt" || status=$?
echo $status > "$OUT/small-status"; ls -A "$SMALL" > "$OUT/small-left"
`,
    { SMALL: small, REPO: repo, OUT: out },
  );
  const read = (name: string) => fsp.readFile(path.join(out, name), 'utf8');
  assert.equal((await read('small-status')).trim(), '1');
  assert.match(await read('small.txt'), /^lifeboat: the restore needs 7\.\d+ MiB \(19\.5 KiB in 2000 files, each taking whole blocks of 4\.00 KiB\) on the file system of .*small\/restore, and 4\.00 MiB is free\n {2}free space there/);
  assert.equal(await read('small-left'), '', 'nothing was written');
});

test('a repository mounted read-only restores and verifies, with a warning that no reader could be registered', { skip }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const { src, repo } = await backedUp(work, { 'weights.bin': (2 << 20) + 9 });
  const readOnly = path.join(work, 'read-only');
  const out = path.join(work, 'out');
  await fsp.mkdir(readOnly);
  await fsp.mkdir(out);
  inNamespace(
    String.raw`
mount --bind "$REPO" "$RO"
mount -o remount,bind,ro "$RO"
node "$BIN" --repo "$RO" restore latest --target "$OUT/restored" 2> "$OUT/restore.txt"
node "$BIN" --repo "$RO" verify --read-data 2> "$OUT/verify.txt" > /dev/null
`,
    { REPO: repo, RO: readOnly, OUT: out },
  );
  assert.equal(compareSnapshots(await snapshotTree(src), await snapshotTree(path.join(out, 'restored', 'models'))), undefined);
  for (const log of ['restore.txt', 'verify.txt']) {
    assert.match(await fsp.readFile(path.join(out, log), 'utf8'), /could not register as a reader of the repository \(.*read-only file system.*\); a prune started meanwhile could remove/);
  }
});

test('a target that holds a mount point: --delta fills it across file systems, --force refuses to replace it', { skip }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const { src, repo } = await backedUp(work, { 'weights.bin': (2 << 20) + 1, 'tok/vocab.txt': 5_000 });
  const target = path.join(work, 'srv');
  const out = path.join(work, 'out');
  await fsp.mkdir(path.join(target, 'models'), { recursive: true });
  await fsp.mkdir(out);
  inNamespace(
    String.raw`
mount -t ramfs ramfs "$TARGET/models"
echo stale > "$TARGET/models/old.txt"
status=0; node "$BIN" --repo "$REPO" restore latest --target "$TARGET" --force 2> "$OUT/force.txt" || status=$?
echo $status > "$OUT/force-status"
node "$BIN" --repo "$REPO" restore latest --target "$TARGET" --delta > /dev/null
cp -a "$TARGET/models" "$OUT/models"
`,
    { TARGET: target, REPO: repo, OUT: out },
  );
  assert.equal((await fsp.readFile(path.join(out, 'force-status'), 'utf8')).trim(), '2');
  assert.match(await fsp.readFile(path.join(out, 'force.txt'), 'utf8'), /holds file systems mounted at .*srv\/models; --force will not replace it/);
  assert.equal(compareSnapshots(await snapshotTree(src), await snapshotTree(path.join(out, 'models'))), undefined, 'the delta restore filled the mounted directory');
});

test('restore --in-place into a source that is a mount point (a volume of its own at /srv/models): --delta and --force update it, keeping lost+found', { skip }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  const out = path.join(work, 'out');
  await fsp.mkdir(src);
  await fsp.mkdir(out);
  // The source is backed up, then restored, while a file system is mounted on it.
  inNamespace(
    String.raw`
mount -t ramfs ramfs "$SRC"
mkdir "$SRC/lost+found" "$SRC/tok"
head -c 3000000 /dev/urandom > "$SRC/weights.bin"
echo '{"vocab": 1}' > "$SRC/tok/vocab.json"
node "$BIN" --repo "$WORK/repo" init > /dev/null
node "$BIN" --repo "$WORK/repo" backup "$SRC" --json > "$OUT/full.json"
cp -a "$SRC" "$OUT/at-full"
head -c 3000000 /dev/urandom > "$SRC/weights.bin"
echo stray > "$SRC/stray.txt"
node "$BIN" --repo "$WORK/repo" restore latest --in-place --delta > /dev/null
cp -a "$SRC" "$OUT/delta"
echo damaged > "$SRC/tok/vocab.json"
node "$BIN" --repo "$WORK/repo" restore latest --in-place --force > /dev/null
cp -a "$SRC" "$OUT/forced"
`,
    { SRC: src, WORK: work, OUT: out },
  );
  const atFull = await snapshotTree(path.join(out, 'at-full'));
  for (const how of ['delta', 'forced']) {
    assert.equal(compareSnapshots(atFull, await snapshotTree(path.join(out, how))), undefined, how);
    assert.deepEqual((await fsp.readdir(path.join(out, how))).sort(), ['lost+found', 'tok', 'weights.bin'], `${how}: the staging directory is gone, lost+found stays`);
  }
});

test('a --delta that would remove a directory where a file system is mounted refuses before writing anything, instead of emptying it and failing with EBUSY', { skip }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const { repo } = await backedUp(work, { 'weights.bin': 3_000, 'tok/vocab.txt': 5_000 });
  const target = path.join(work, 'srv');
  const out = path.join(work, 'out');
  await fsp.mkdir(out);
  assert.equal((await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target])).code, 0);
  inNamespace(
    String.raw`
# A volume mounted where the point has a file, and one where it has nothing.
rm "$TARGET/models/weights.bin" && mkdir "$TARGET/models/weights.bin" "$TARGET/models/cache"
for m in weights.bin cache; do
  mount -t ramfs ramfs "$TARGET/models/$m"
  echo kept > "$TARGET/models/$m/data"
  status=0; node "$BIN" --repo "$REPO" restore latest --target "$TARGET" --delta 2> "$OUT/$m.txt" || status=$?
  echo $status > "$OUT/$m-status"
  cp "$TARGET/models/$m/data" "$OUT/$m-data"
  umount "$TARGET/models/$m"
  rmdir "$TARGET/models/$m"
  [ "$m" = cache ] || echo restored > "$TARGET/models/$m"
done
`,
    { TARGET: target, REPO: repo, OUT: out },
  );
  for (const m of ['weights.bin', 'cache']) {
    assert.equal((await fsp.readFile(path.join(out, `${m}-status`), 'utf8')).trim(), '2', m);
    const said = await fsp.readFile(path.join(out, `${m}.txt`), 'utf8');
    assert.match(said, new RegExp(`--delta would remove .*models/${m.replace('.', '\\.')}, .*a file system is mounted at`));
    assert.doesNotMatch(said, /EBUSY|unexpected/);
    assert.equal(await fsp.readFile(path.join(out, `${m}-data`), 'utf8'), 'kept\n', `what is mounted at ${m} was left alone`);
  }
  assert.deepEqual((await fsp.readdir(work)).filter((n) => n.includes('lifeboat-staging')), []);
});
