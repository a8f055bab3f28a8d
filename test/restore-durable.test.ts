/**
 * A restore that reports success has its data on disk, not only in the page
 * cache: right after it exits, no page of any restored file may be dirty or
 * still under writeback. Linux's cachestat(2) (6.5 and later) tells, called
 * from python3; where either is missing the test says so and skips.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { test } from 'node:test';
import { lifeboat, runChild } from './helpers/cli.js';
import { smallDeployment } from './helpers/repo.js';
import { MANY_SMALL_FILES } from '../src/core/restore.js';
import { MODES, compareSnapshots, pick, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile } from './helpers/tree.js';

const PROBE = `
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]
class Stat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]
for f in sys.argv[1:]:
    fd = os.open(f, os.O_RDONLY)
    s = Stat()
    if libc.syscall(451, fd, ctypes.byref(Range(0, 0)), ctypes.byref(s), 0) != 0:
        sys.exit(3)
    os.close(fd)
    print(s.dirty + s.writeback, f)
`;

/** Pages of each file not yet on disk, or undefined when this machine cannot tell. */
function unwrittenPages(files: string[]): Map<string, number> | undefined {
  const run = spawnSync('python3', ['-c', PROBE, ...files], { encoding: 'utf8' });
  if (run.error || run.status !== 0 || process.platform !== 'linux') return undefined;
  const pages = new Map<string, number>();
  for (const line of run.stdout.trim().split('\n')) {
    const space = line.indexOf(' ');
    pages.set(line.slice(space + 1), Number(line.slice(0, space)));
  }
  return pages;
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name));
  }
  return out;
}

test('a restore that succeeded has every file on disk', async (t) => {
  const d = await smallDeployment({ bigFiles: 1, bigSize: 40 << 20, seed: 31 });
  // A file just written is dirty for a while: if the probe cannot see that here, it cannot judge the restore.
  const control = path.join(d.work, 'control.bin');
  await writeRandomFile(control, 4 << 20, prng(5));
  const seen = unwrittenPages([control]);
  if (!seen || seen.get(control)! === 0) {
    t.skip(seen ? 'this machine writes files back at once, so dirty pages cannot be observed' : 'needs python3 and Linux cachestat(2) to observe dirty pages');
    return;
  }
  for (let i = 0; i < 30; i++) await fsp.writeFile(path.join(d.src, 'tok', `extra-${i}.json`), JSON.stringify({ i }));
  const backup = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'full']);
  assert.equal(backup.code, 0, backup.stderr);
  // Without coreutils on PATH, lifeboat cannot use `sync -f`; with this few small files it does not need to.
  const noSync = path.join(d.work, 'empty-path');
  await fsp.mkdir(noSync);
  for (const [how, run] of [
    ['with sync -f', (target: string) => lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', target])],
    ['without sync on PATH', (target: string) => runChild(['--repo', d.repo, 'restore', 'latest', '--target', target], { env: { PATH: noSync } })],
  ] as const) {
    const target = path.join(d.work, `restored ${how}`);
    const restore = await run(target);
    assert.equal(restore.code, 0, restore.stderr);
    const files = await filesUnder(target);
    assert.ok(files.length >= 34, `restored ${files.length} files`);
    const pages = unwrittenPages(files)!;
    const unwritten = [...pages].filter(([, n]) => n > 0);
    assert.deepEqual(unwritten, [], `restored ${how}: files with pages not yet on disk`);
  }
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('a restore of many small files writes them with their modes, times and owners and syncs them together, with sync -f or file by file without it', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed} (replay with LIFEBOAT_TEST_SEED=${seed})`);
  const rand = prng(seed);
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'configs');
  const owned: string[] = [];
  // Enough small files for the restore to write them on the main thread and sync them together.
  for (let i = 0; i < MANY_SMALL_FILES + 50; i++) {
    const dir = path.join(src, `run-${i % 40}`);
    if (i < 40) await fsp.mkdir(dir, { recursive: true });
    const file = path.join(dir, `step-${i}.json`);
    // Some hold the same bytes, stored once: one entry of a volume written to several files.
    await fsp.writeFile(file, i % 997 === 5 ? '{"loss":0.5}\n' : JSON.stringify({ i, loss: rand() }).repeat(1 + Math.floor(rand() * 40)));
    const when = new Date(Date.UTC(2025, 0, 1) + Math.floor(rand() * 3e10));
    await fsp.utimes(file, when, when);
    // A change of owner after the mode would clear set-user-ID: the mode must survive it.
    if (i % 1000 === 7 && process.getuid?.() === 0) {
      await fsp.chown(file, 4321, 8765);
      await fsp.chmod(file, 0o4755);
      owned.push(path.relative(src, file));
    } else await fsp.chmod(file, pick(rand, MODES));
  }
  const expected = await snapshotTree(src);
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const backup = await lifeboat(['--repo', repo, 'backup', src]);
  assert.equal(backup.code, 0, backup.stderr);
  const noSync = path.join(work, 'empty-path');
  await fsp.mkdir(noSync);
  for (const [how, run] of [
    ['with sync -f', (target: string) => lifeboat(['--repo', repo, 'restore', 'latest', '--target', target])],
    ['without sync on PATH', (target: string) => runChild(['--repo', repo, 'restore', 'latest', '--target', target], { env: { PATH: noSync } })],
  ] as const) {
    const target = path.join(work, `restored ${how}`);
    const restore = await run(target);
    assert.equal(restore.code, 0, restore.stderr);
    const root = path.join(target, 'configs');
    const files = [...expected].filter(([, e]) => e.type === 'file').map(([p]) => path.join(root, p));
    const pages = unwrittenPages(files);
    if (pages) assert.deepEqual([...pages].filter(([, n]) => n > 0), [], `restored ${how}: files with pages not yet on disk`);
    else t.diagnostic('python3 or cachestat(2) missing: durability not observed');
    assert.equal(compareSnapshots(expected, await snapshotTree(root)), undefined, `restored ${how}: the tree as it was`);
    for (const rel of owned) {
      const st = await fsp.stat(path.join(root, rel));
      assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [4321, 8765, 0o4755], `restored ${how}: ${rel} keeps its owner and set-user-ID`);
    }
  }
});

test('a restore takes over the newest staging directory that killed restores left beside its target, removes older ones, and leaves what a killed --force set aside', async () => {
  const d = await smallDeployment();
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  const target = path.join(d.work, 'out');
  // Two restores killed while they streamed (their process is gone), one still running (this test's process), and a
  // --force killed between moving the old target aside and the new one in.
  const gone = 2 ** 22 + 777;
  const older = path.join(d.work, `.out.lifeboat-staging-${gone}-0badcafe`);
  const newer = path.join(d.work, `.out.lifeboat-staging-${gone}-0badf00d`);
  const running = path.join(d.work, `.out.lifeboat-staging-${process.pid}-00c0ffee`);
  const setAside = path.join(d.work, `.out.lifeboat-staging-${gone}-0badbeef-replaced`);
  for (const dir of [older, newer, running, setAside]) {
    await fsp.mkdir(path.join(dir, 'models'), { recursive: true });
    await fsp.writeFile(path.join(dir, 'models', 'partial.bin'), 'x');
  }
  const anHourAgo = new Date(Date.now() - 3600_000);
  await fsp.utimes(older, anHourAgo, anHourAgo);
  const r = await lifeboat(['--repo', d.repo, '--json', 'restore', 'latest', '--target', target]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`${older.replaceAll('.', '\\.')}: removed the staging directory of an interrupted restore`));
  assert.match(r.stderr, new RegExp(`${newer.replaceAll('.', '\\.')}: resuming an interrupted restore: 0 file\\(s\\), 0 B, already there and verified`));
  await assert.rejects(fsp.access(older), 'the older staging directory is removed');
  await assert.rejects(fsp.access(newer), 'the newer one became the target');
  await assert.rejects(fsp.access(path.join(target, 'models', 'partial.bin')), 'with nothing the point lacks');
  await fsp.access(running);
  await fsp.access(path.join(setAside, 'models', 'partial.bin'));
  assert.match(r.stderr, new RegExp(`warning: ${setAside.replaceAll('.', '\\.')}: holds what an interrupted restore --force was replacing`));
  assert.deepEqual(r.json().warnings.map((w: { code: string; path: string }) => [w.code, w.path]), [['replaced-left', setAside]], 'and in --json');
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('a restore whose paths are too long under its target is refused at once saying by how many bytes, with the path shortened, and leaves no staging directory', async () => {
  const work = await tempDir();
  const src = path.join(work, 'models');
  // 30 levels of 120-byte names: about 3,600 bytes below the source, which fits under a short target and not under a long one.
  let deep = src;
  for (let i = 0; i < 30; i++) deep = path.join(deep, `${'d'.repeat(117)}${String(i).padStart(3, '0')}`);
  await fsp.mkdir(deep, { recursive: true });
  await fsp.writeFile(path.join(src, 'config.json'), '{}');
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const b = await lifeboat(['--repo', repo, 'backup', src]);
  assert.equal(b.code, 0, b.stderr);
  const parent = path.join(work, 'x'.repeat(250), 'y'.repeat(250));
  await fsp.mkdir(parent, { recursive: true });
  const long = path.join(parent, 'out');
  const r = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', long]);
  assert.equal(r.code, 2, r.stderr);
  const over = Buffer.byteLength(path.join(long, 'models', path.relative(src, deep))) + 1 - 4096;
  assert.match(r.stderr, new RegExp(`is ${over} byte\\(s\\) too long for this point: under it, .*…d{20,}029 would be longer than the system allows \\(4,096 bytes in all\\)`));
  assert.match(r.stderr, new RegExp(`at least ${over} byte\\(s\\) shorter`));
  assert.ok(r.stderr.length < 1000, `the paths are shortened: ${r.stderr.length} bytes`);
  assert.deepEqual(await fsp.readdir(parent), [], 'no staging directory left beside the target');
  const short = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', path.join(work, 'r')]);
  assert.equal(short.code, 0, short.stderr);
  await fsp.rm(work, { recursive: true, force: true });
});

/** Directories of 200-byte names under `root`, and a file in them, whose path has `total` bytes. */
async function pathOfBytes(root: string, under: string, total: number): Promise<string> {
  let rel = '';
  while (total - Buffer.byteLength(path.join(under, rel)) - 1 > 255) rel = path.join(rel, 'd'.repeat(200));
  rel = path.join(rel, 'f'.repeat(total - Buffer.byteLength(path.join(under, rel)) - 1));
  await fsp.mkdir(path.dirname(path.join(root, rel)), { recursive: true });
  await fsp.writeFile(path.join(root, rel), 'weights\n');
  return rel;
}

test('a point whose path comes within 20 bytes of the 4,096-byte limit restores into a target as long as its source, and in place', async () => {
  const work = await tempDir();
  const src = path.join(work, 'models');
  const target = path.join(work, 'restored');
  // 4,075 bytes under the target, 4,066 where it was backed up from; the staging directory beside either must not be longer.
  const rel = await pathOfBytes(src, path.join(target, 'models'), 4075);
  await fsp.writeFile(path.join(src, 'config.json'), '{}');
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const b = await lifeboat(['--repo', repo, 'backup', src]);
  assert.equal(b.code, 0, b.stderr);
  const r = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await fsp.readFile(path.join(target, 'models', rel), 'utf8'), 'weights\n');
  assert.deepEqual((await fsp.readdir(work)).sort(), ['models', 'repo', 'restored'], 'no staging directory, nor its link, is left');
  await fsp.rm(src, { recursive: true });
  const inPlace = await lifeboat(['--repo', repo, 'restore', 'latest', '--in-place']);
  assert.equal(inPlace.code, 0, inPlace.stderr);
  assert.equal(await fsp.readFile(path.join(src, rel), 'utf8'), 'weights\n');
  assert.deepEqual((await fsp.readdir(work)).sort(), ['models', 'repo', 'restored']);
  await fsp.rm(work, { recursive: true, force: true });
});

test('a restore goes on from a short-named staging directory that an interrupted restore of a point near the limit left, named by a link of the usual name, and removes both', async () => {
  const work = await tempDir();
  const src = path.join(work, 'models');
  const target = path.join(work, 'restored');
  const rel = await pathOfBytes(src, path.join(target, 'models'), 4075);
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const b = await lifeboat(['--repo', repo, 'backup', src]);
  assert.equal(b.code, 0, b.stderr);
  const left = path.join(work, '.lbabcde');
  await fsp.mkdir(path.dirname(path.join(left, 'models', rel)), { recursive: true, mode: 0o700 });
  await fsp.chmod(left, 0o700);
  await fsp.copyFile(path.join(src, rel), path.join(left, 'models', rel));
  await fsp.symlink('.lbabcde', path.join(work, `.restored.lifeboat-staging-${2 ** 22 + 999}-0badcafe`));
  const r = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /resuming an interrupted restore: 1 file\(s\), 8 B, already there and verified/);
  assert.equal(await fsp.readFile(path.join(target, 'models', rel), 'utf8'), 'weights\n');
  assert.deepEqual((await fsp.readdir(work)).sort(), ['models', 'repo', 'restored'], 'neither the directory nor its link is left');
  await fsp.rm(work, { recursive: true, force: true });
});
