import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { prng, seedFromEnv, tempDir, writeRandomFile } from './helpers/tree.js';

/**
 * The layout of a Hugging Face hub cache: a snapshot directory whose files are
 * symlinks into the repository's blobs/, outside the snapshot that is backed up.
 */
test('a source whose symlinks point outside it (a Hugging Face snapshot) is stored with the files they point to, and restores on its own', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const rand = prng(seedFromEnv());
  const cache = path.join(work, 'hub', 'models--org--tiny');
  const snapshot = path.join(cache, 'snapshots', 'rev1');
  await fsp.mkdir(path.join(cache, 'blobs'), { recursive: true });
  await fsp.mkdir(path.join(snapshot, 'sub'), { recursive: true });
  await fsp.writeFile(path.join(cache, 'blobs', 'aaa'), '{"hidden_size": 8}\n');
  await writeRandomFile(path.join(cache, 'blobs', 'bbb'), (3 << 20) + 17, rand);
  await fsp.chmod(path.join(cache, 'blobs', 'bbb'), 0o640);
  await fsp.symlink('../../blobs/aaa', path.join(snapshot, 'settings.json'));
  await fsp.symlink('../../blobs/bbb', path.join(snapshot, 'weights.bin'));
  await fsp.writeFile(path.join(snapshot, 'sub', 'notes.txt'), 'kept as is\n');
  await fsp.symlink('sub/notes.txt', path.join(snapshot, 'notes-link'));

  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const full = await lifeboat(['--repo', repo, '--json', 'backup', snapshot, '--type', 'full']);
  assert.equal(full.code, 0, full.stderr);
  assert.match(full.stderr, /2 symlink\(s\) point outside the source; the files they point to are stored in their place \(settings\.json -> \.\.\/\.\.\/blobs\/aaa, weights\.bin -> \.\.\/\.\.\/blobs\/bbb\)/);
  assert.deepEqual(full.json().warnings, [], 'nothing a restore would refuse');

  const first = path.join(work, 'first');
  const restored = await lifeboat(['--repo', repo, 'restore', full.json().id, '--target', first]);
  assert.equal(restored.code, 0, restored.stderr);
  const out = path.join(first, 'rev1');
  for (const [name, blob] of [['settings.json', 'aaa'], ['weights.bin', 'bbb']]) {
    const st = await fsp.lstat(path.join(out, name!));
    assert.ok(st.isFile(), `${name} is restored as a regular file`);
    assert.deepEqual(await fsp.readFile(path.join(out, name!)), await fsp.readFile(path.join(cache, 'blobs', blob!)));
  }
  assert.equal((await fsp.stat(path.join(out, 'weights.bin'))).mode & 0o777, 0o640, 'with the mode of the file it pointed to');
  assert.equal(await fsp.readlink(path.join(out, 'notes-link')), 'sub/notes.txt', 'a link inside the source stays a link');

  // A new revision of a blob: the link now points to another file, and the incremental stores it.
  await writeRandomFile(path.join(cache, 'blobs', 'ccc'), (2 << 20) + 3, rand);
  await fsp.rm(path.join(snapshot, 'weights.bin'));
  await fsp.symlink('../../blobs/ccc', path.join(snapshot, 'weights.bin'));
  const incr = await lifeboat(['--repo', repo, '--json', 'backup', snapshot, '--type', 'incr']);
  assert.equal(incr.code, 0, incr.stderr);
  assert.equal(incr.json().changed, 1);
  const latest = path.join(work, 'latest');
  assert.equal((await lifeboat(['--repo', repo, 'restore', 'latest', '--target', latest])).code, 0);
  assert.deepEqual(await fsp.readFile(path.join(latest, 'rev1', 'weights.bin')), await fsp.readFile(path.join(cache, 'blobs', 'ccc')));

  // A link out of the source to a directory, or to nothing, is not followed: it is left out, with a warning,
  // rather than kept in a point that restore would then refuse.
  await fsp.symlink('../../blobs', path.join(snapshot, 'all-blobs'));
  await fsp.symlink('/nowhere/at/all', path.join(snapshot, 'sub', 'dangling'));
  const linked = await lifeboat(['--repo', repo, '--json', 'backup', snapshot, '--type', 'incr']);
  assert.equal(linked.code, 0, linked.stderr);
  assert.deepEqual(
    linked.json().warnings.map((w: { code: string; path: string }) => [w.code, w.path]),
    [['link-escapes', 'rev1/all-blobs'], ['link-escapes', 'rev1/sub/dangling']],
  );
  assert.match(linked.json().warnings[0].message, /left out of the backup/);
  const without = path.join(work, 'without');
  const back = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', without]);
  assert.equal(back.code, 0, back.stderr);
  await assert.rejects(fsp.lstat(path.join(without, 'rev1', 'all-blobs')), { code: 'ENOENT' });
  await assert.rejects(fsp.lstat(path.join(without, 'rev1', 'sub', 'dangling')), { code: 'ENOENT' });
  assert.equal(await fsp.readFile(path.join(without, 'rev1', 'sub', 'notes.txt'), 'utf8'), 'kept as is\n');
});

test('absolute symlinks into the source (a live-version pointer) are stored as relative links and name the restored copy', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const models = path.join(work, 'srv', 'models');
  await fsp.mkdir(path.join(models, 'v3', 'tok'), { recursive: true });
  await fsp.writeFile(path.join(models, 'v3', 'weights.bin'), 'v3 weights');
  await fsp.writeFile(path.join(models, 'v3', 'tok', 'vocab.txt'), 'a\nb\n');
  await fsp.symlink(path.join(models, 'v3'), path.join(models, 'current'));
  await fsp.symlink(path.join(models, 'v3', 'weights.bin'), path.join(models, 'v3', 'tok', 'weights-link'));
  await fsp.symlink(`${models}/./v3/../`, path.join(models, 'v3', 'root'));
  // The source given through a link to it: absolute targets may name either path.
  await fsp.symlink(path.join(work, 'srv'), path.join(work, 'srv-link'));
  await fsp.symlink(path.join(work, 'srv-link', 'models', 'v3', 'tok'), path.join(models, 'tok-via-link'));

  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const full = await lifeboat(['--repo', repo, '--json', 'backup', '--source', `models=${path.join(work, 'srv-link', 'models')}`, '--type', 'full']);
  assert.equal(full.code, 0, full.stderr);
  assert.deepEqual(full.json().warnings, []);
  assert.match(full.stderr, /4 absolute symlink\(s\) into the source are stored as relative links/);
  const again = await lifeboat(['--repo', repo, '--json', 'backup', '--source', `models=${path.join(work, 'srv-link', 'models')}`]);
  assert.equal(again.code, 0, again.stderr);
  assert.equal(again.json().changed, 0, 'unchanged links are not changes');
  // A new link is an entry added, not a file: the summary says which it counts.
  await fsp.symlink('v3/weights.bin', path.join(models, 'weights-latest'));
  const linked = await lifeboat(['--repo', repo, 'backup', '--source', `models=${path.join(work, 'srv-link', 'models')}`]);
  assert.equal(linked.code, 0, linked.stderr);
  assert.match(linked.stdout, /\n {2}2 files, 14 B; entries: 1 added, 0 changed, 0 removed\n/);

  // Restored elsewhere, each link names the restored copy; the tree it was backed up from may be gone.
  await fsp.rm(path.join(work, 'srv'), { recursive: true });
  const out = path.join(work, 'out');
  const restored = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', out]);
  assert.equal(restored.code, 0, restored.stderr);
  const root = path.join(out, 'models');
  assert.equal(await fsp.readlink(path.join(root, 'current')), 'v3');
  assert.equal(await fsp.readlink(path.join(root, 'v3', 'tok', 'weights-link')), '../weights.bin');
  assert.equal(await fsp.readlink(path.join(root, 'v3', 'root')), '..');
  assert.equal(await fsp.readlink(path.join(root, 'tok-via-link')), 'v3/tok');
  assert.equal(await fsp.readFile(path.join(root, 'current', 'weights.bin'), 'utf8'), 'v3 weights');
  assert.equal(await fsp.readFile(path.join(root, 'v3', 'tok', 'weights-link'), 'utf8'), 'v3 weights');
});

test('a link that leads out of the source through another link is found, as the kernel would follow it: stored as its file, or left out', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'src');
  await fsp.mkdir(path.join(src, 'a', 'b'), { recursive: true });
  await fsp.writeFile(path.join(work, 'outside.txt'), 'not part of the source');
  await fsp.writeFile(path.join(src, 'f'), 'inside');
  // Read alone, each of these stays inside; through a/b/s (which leads to the source's root) they do not.
  await fsp.symlink('../..', path.join(src, 'a', 'b', 's'));
  await fsp.symlink('a/b/s/..', path.join(src, 'up'));
  await fsp.symlink('a/b/s/../outside.txt', path.join(src, 'peek'));
  await fsp.symlink('a/b/s/f', path.join(src, 'same'));
  await fsp.symlink('loop2', path.join(src, 'loop1'));
  await fsp.symlink('loop1', path.join(src, 'loop2'));
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const b = await lifeboat(['--repo', repo, '--json', 'backup', '--source', `s=${src}`]);
  assert.equal(b.code, 0, b.stderr);
  assert.deepEqual(b.json().warnings.map((w: { code: string; path: string }) => [w.code, w.path]), [['link-escapes', 's/up']]);
  assert.match(b.stderr, /peek -> a\/b\/s\/\.\.\/outside\.txt/, 'the file it leads to is stored in its place');
  const out = path.join(work, 'out');
  const r = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', out]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await fsp.readFile(path.join(out, 's', 'peek'), 'utf8'), 'not part of the source');
  assert.ok((await fsp.lstat(path.join(out, 's', 'peek'))).isFile());
  assert.equal(await fsp.readlink(path.join(out, 's', 'same')), 'a/b/s/f', 'through a link, but inside: kept as a link');
  assert.equal(await fsp.readFile(path.join(out, 's', 'same'), 'utf8'), 'inside');
  assert.equal(await fsp.readlink(path.join(out, 's', 'loop1')), 'loop2', 'a loop leads nowhere, and is kept');
  await assert.rejects(fsp.lstat(path.join(out, 's', 'up')), { code: 'ENOENT' });
});
