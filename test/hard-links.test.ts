import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { lifeboat } from './helpers/cli.js';
import { compareSnapshots, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile } from './helpers/tree.js';
import { decodeDocument, encodeDocument } from '../src/format/document.js';
import { manifestSchema } from '../src/format/manifest.js';

const BIG = (3 << 20) + 11;

/** Model versions that share unchanged files by hard links, as `cp -al` or `rsync --link-dest` leave them. */
async function versions(work: string) {
  const rand = prng(seedFromEnv());
  const src = path.join(work, 'models');
  for (const v of ['v1', 'v2', 'v3']) await fsp.mkdir(path.join(src, v), { recursive: true });
  await writeRandomFile(path.join(src, 'v1', 'weights.bin'), BIG, rand);
  await fsp.writeFile(path.join(src, 'v1', 'config.json'), '{"v": 1}\n');
  await fsp.link(path.join(src, 'v1', 'weights.bin'), path.join(src, 'v2', 'weights.bin'));
  await fsp.link(path.join(src, 'v1', 'weights.bin'), path.join(src, 'v3', 'weights.bin'));
  await fsp.link(path.join(src, 'v1', 'config.json'), path.join(src, 'v2', 'config.json'));
  await fsp.writeFile(path.join(src, 'v3', 'config.json'), '{"v": 3}\n');
  return src;
}

const inode = async (p: string) => (await fsp.stat(p)).ino;

/** The versions in a fresh work directory, with a repository beside it holding a full backup of them. */
async function versionsBackedUp(t: { after(fn: () => Promise<void>): void }) {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = await versions(work);
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const full = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'full']);
  assert.equal(full.code, 0, full.stderr);
  return { work, src, repo, full };
}

/** An incremental backup of `src`, and what `diff --json` says changed since the point `from`. */
async function incrementalDiff(repo: string, src: string, from: string) {
  const incr = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'incr']);
  assert.equal(incr.code, 0, incr.stderr);
  const diff = await lifeboat(['--repo', repo, '--json', 'diff', from, incr.json().id]);
  assert.equal(diff.code, 0, diff.stderr);
  return { id: incr.json().id as string, changed: diff.json().changed, removed: diff.json().removed, counted: incr.json().changed as number };
}

test('hard links are stored once and restored as links; verify, incrementals, --include and --delta handle them', async (t) => {
  const { work, src, repo, full } = await versionsBackedUp(t);
  assert.equal(full.json().bytes, 3 * BIG + 3 * 9);
  assert.ok(full.json().storedBytes < BIG + 64 * 1024, `the weights are stored once (${full.json().storedBytes} bytes stored)`);
  const manifest = decodeDocument(await fsp.readFile(path.join(repo, 'points', `${full.json().id}.json`)), manifestSchema, 'manifest');
  const links = manifest.entries.filter((e) => e.link !== undefined).map((e) => [e.path, e.link]);
  assert.deepEqual(links, [['v2/config.json', 'v1/config.json'], ['v2/weights.bin', 'v1/weights.bin'], ['v3/weights.bin', 'v1/weights.bin']]);

  const out = path.join(work, 'out');
  assert.equal((await lifeboat(['--repo', repo, 'restore', 'latest', '--target', out])).code, 0);
  assert.equal(compareSnapshots(await snapshotTree(src), await snapshotTree(path.join(out, 'models'))), undefined);
  const weights = await inode(path.join(out, 'models', 'v1', 'weights.bin'));
  assert.equal(await inode(path.join(out, 'models', 'v2', 'weights.bin')), weights);
  assert.equal(await inode(path.join(out, 'models', 'v3', 'weights.bin')), weights);
  assert.equal(await inode(path.join(out, 'models', 'v2', 'config.json')), await inode(path.join(out, 'models', 'v1', 'config.json')));
  assert.notEqual(await inode(path.join(out, 'models', 'v3', 'config.json')), await inode(path.join(out, 'models', 'v1', 'config.json')));
  const verified = await lifeboat(['--repo', repo, '--json', 'verify', '--read-data']);
  assert.equal(verified.code, 0, verified.stdout);

  // A fourth version made the same way: the incremental stores nothing new for it.
  await fsp.mkdir(path.join(src, 'v4'));
  await fsp.link(path.join(src, 'v1', 'weights.bin'), path.join(src, 'v4', 'weights.bin'));
  const incr = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'incr']);
  assert.equal(incr.code, 0, incr.stderr);
  assert.ok(incr.json().storedBytes < 64 * 1024);
  const latest = path.join(work, 'latest');
  assert.equal((await lifeboat(['--repo', repo, 'restore', 'latest', '--target', latest])).code, 0);
  assert.equal(await inode(path.join(latest, 'models', 'v4', 'weights.bin')), await inode(path.join(latest, 'models', 'v1', 'weights.bin')));
  assert.equal((await lifeboat(['--repo', repo, 'verify', '--read-data'])).code, 0);

  // Without the file a link names, the link is written as a copy; so is every file a delta rewrites.
  const part = path.join(work, 'part');
  assert.equal((await lifeboat(['--repo', repo, 'restore', 'latest', '--target', part, '--include', 'models/v3'])).code, 0);
  assert.deepEqual(await fsp.readFile(path.join(part, 'models', 'v3', 'weights.bin')), await fsp.readFile(path.join(src, 'v1', 'weights.bin')));
  await fsp.rm(path.join(out, 'models', 'v2', 'weights.bin'));
  const delta = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', out, '--delta']);
  assert.equal(delta.code, 0, delta.stderr);
  assert.equal(compareSnapshots(await snapshotTree(src), await snapshotTree(path.join(out, 'models'))), undefined);
});

test('a manifest whose hard link names no earlier file with the same content is refused (exit 3)', async (t) => {
  const { work, repo, full } = await versionsBackedUp(t);
  const id = full.json().id;
  const file = path.join(repo, 'points', `${id}.json`);
  const original = decodeDocument(await fsp.readFile(file), manifestSchema, 'manifest');
  const tamper = [
    (e: { path: string; link?: string }) => e.path === 'v2/weights.bin' && (e.link = 'v3/weights.bin'),
    (e: { path: string; link?: string }) => e.path === 'v3/config.json' && (e.link = 'v1/config.json'),
    (e: { path: string; link?: string }) => e.path === 'v2/config.json' && (e.link = '../../etc/passwd'),
  ];
  for (const [i, change] of tamper.entries()) {
    const m = structuredClone(original);
    m.entries.forEach(change);
    await fsp.writeFile(file, encodeDocument(m));
    const target = path.join(work, `out-${i}`);
    const r = await lifeboat(['--repo', repo, 'restore', id, '--target', target]);
    assert.equal(r.code, 3, `tampering ${i}: ${r.stderr}`);
    assert.match(r.stderr, /recorded as a hard link to/);
    await assert.rejects(fsp.access(target), 'nothing is restored');
  }
});

test('diff names a file that became a hard link of an identical file, and one that became a copy of its own again', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  await fsp.mkdir(path.join(src, 'v2'), { recursive: true });
  const when = new Date('2026-11-01T00:00:00Z');
  for (const name of ['a.bin', 'v2/a.bin', 'c.bin']) {
    await fsp.writeFile(path.join(src, name), 'the same weights');
    await fsp.utimes(path.join(src, name), when, when);
  }
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const copies = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'full']);
  assert.equal(copies.code, 0, copies.stderr);
  const both = [
    { path: 'models/a.bin', what: ['hard-link'] },
    { path: 'models/v2/a.bin', what: ['hard-link'] },
  ];
  // Deduplicated as `ln -f` (or hardlink(1)) does it: same content, same time, now one file.
  await fsp.rm(path.join(src, 'v2', 'a.bin'));
  await fsp.link(path.join(src, 'a.bin'), path.join(src, 'v2', 'a.bin'));
  const linked = await incrementalDiff(repo, src, copies.json().id);
  assert.deepEqual(linked.changed, both);
  assert.equal(linked.counted, 2, 'the backup counts them as diff names them');
  const text = await lifeboat(['--repo', repo, 'diff', copies.json().id, linked.id]);
  assert.match(text.stdout, /^M models\/v2\/a\.bin {2}\(hard-link\)$/m);
  assert.doesNotMatch(text.stdout, /c\.bin/);

  // And back: a copy of its own again.
  await fsp.rm(path.join(src, 'v2', 'a.bin'));
  await fsp.copyFile(path.join(src, 'a.bin'), path.join(src, 'v2', 'a.bin'));
  await fsp.utimes(path.join(src, 'v2', 'a.bin'), when, when);
  const copied = await incrementalDiff(repo, src, linked.id);
  assert.deepEqual(copied.changed, both);
  assert.equal(copied.counted, 2);
  assert.deepEqual((await lifeboat(['--repo', repo, '--json', 'diff', copies.json().id, copied.id])).json().changed, []);
});

test('diff does not name the other names of a file when only the name they were recorded as links of is removed', async (t) => {
  const { src, repo, full } = await versionsBackedUp(t);
  await fsp.rm(path.join(src, 'v1', 'weights.bin'));
  const incr = await incrementalDiff(repo, src, full.json().id);
  assert.deepEqual([incr.changed, incr.removed], [[], ['models/v1/weights.bin']]);
});

test('a file chmod-ed while a backup looks at its names is recorded with one mode for all of them, the one its restore can give it', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  // Many files between the two names, so that the scan looks at them some time apart.
  for (const d of ['a', 'm', 'z']) await fsp.mkdir(path.join(src, d), { recursive: true });
  for (let i = 0; i < 2000; i++) await fsp.writeFile(path.join(src, 'm', `f${i}`), `${i}\n`);
  await fsp.writeFile(path.join(src, 'a', 'weights.bin'), 'shared weights\n');
  await fsp.link(path.join(src, 'a', 'weights.bin'), path.join(src, 'z', 'weights.bin'));
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  // Another process turns the file's mode over and over, as a deploy tool making it read-only might, once.
  const flipper = spawn(process.execPath, ['-e', `const fs = require('fs'); for (let i = 0; ; i++) fs.chmodSync(${JSON.stringify(path.join(src, 'a', 'weights.bin'))}, i % 2 ? 0o444 : 0o644);`], { stdio: 'ignore' });
  t.after(() => flipper.kill('SIGKILL'));
  let split = 0;
  for (let i = 0; i < 6; i++) {
    const r = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'full']);
    assert.equal(r.code, 0, r.stderr);
    const shown = await lifeboat(['--repo', repo, '--json', 'show', r.json().id]);
    const modes = new Set((shown.json().entries as { path: string; mode: number }[]).filter((e) => e.path.endsWith('weights.bin')).map((e) => e.mode));
    if (modes.size > 1) split++;
    const target = path.join(work, `restored-${i}`);
    const restored = await lifeboat(['--repo', repo, 'restore', r.json().id, '--target', target]);
    assert.equal(restored.code, 0, restored.stderr);
    const [a, z] = await Promise.all(['a', 'z'].map((d) => fsp.stat(path.join(target, 'models', d, 'weights.bin'))));
    assert.equal(a!.ino, z!.ino, 'restored as one file');
    const recorded = (shown.json().entries as { path: string; mode: number }[]).find((e) => e.path === 'a/weights.bin')!.mode;
    assert.equal(a!.mode & 0o7777, recorded & 0o7777, 'the mode the manifest gives its first name');
  }
  assert.equal(split, 0, 'names of one file recorded with different modes');
});
