import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat, runChild } from './helpers/cli.js';
import { compareSnapshots, snapshotTree, tempDir } from './helpers/tree.js';

const NOBODY = 65534;

/** A repository with one point of models/ (tok/ with two files, two files alike of other modes and times), restored into target/. */
async function restoredDeployment(): Promise<{ work: string; repo: string; target: string; point: string }> {
  const work = await tempDir();
  const models = path.join(work, 'models');
  await fsp.mkdir(path.join(models, 'tok'), { recursive: true });
  await fsp.writeFile(path.join(models, 'tok', 'tokenizer.json'), '{"vocab": {"a": 0}}\n');
  await fsp.writeFile(path.join(models, 'tok', 'merges.txt'), 'a b\n');
  await fsp.writeFile(path.join(models, 'config.json'), '{"layers": 2}\n', { mode: 0o644 });
  await fsp.writeFile(path.join(models, 'config.copy.json'), '{"layers": 2}\n', { mode: 0o600 });
  await fsp.utimes(path.join(models, 'config.copy.json'), 1.6e9, 1.6e9);
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const b = await lifeboat(['--repo', repo, '--json', 'backup', models]);
  assert.equal(b.code, 0, b.stderr);
  const target = path.join(work, 'target');
  const r = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target]);
  assert.equal(r.code, 0, r.stderr);
  return { work, repo, target, point: b.json().id };
}

test('a --delta over a directory replaced by a link to a copy of it elsewhere writes its files into a directory again, and leaves the copy alone', async () => {
  const { work, repo, target } = await restoredDeployment();
  const expected = await snapshotTree(target);
  const tok = path.join(target, 'models', 'tok');
  const elsewhere = path.join(work, 'elsewhere');
  await fsp.cp(tok, elsewhere, { recursive: true, preserveTimestamps: true });
  await fsp.rm(tok, { recursive: true });
  await fsp.symlink(elsewhere, tok);
  const before = await snapshotTree(elsewhere);

  const dry = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--delta', '--dry-run']);
  assert.equal(dry.code, 0, dry.stderr);
  assert.equal(dry.json().rewritten, 2, 'the files reached through the link are not where the point has them');
  const r = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--delta']);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /ENOENT|unexpected/);
  assert.equal(r.json().rewritten, 2);
  assert.equal(r.json().removed, 1);
  assert.equal(compareSnapshots(expected, await snapshotTree(target)), undefined);
  assert.equal(compareSnapshots(before, await snapshotTree(elsewhere)), undefined, 'the directory the link led to is as it was');
});

test('a --delta over files that are one file under two names gives each its own mode and time, and leaves a name outside the target alone', async () => {
  const { work, repo, target } = await restoredDeployment();
  const expected = await snapshotTree(target);
  const config = path.join(target, 'models', 'config.json');
  const copy = path.join(target, 'models', 'config.copy.json');
  // Deduplicated on the host: the two files alike are now one.
  await fsp.rm(copy);
  await fsp.link(config, copy);
  // And another file of the tree has a second name outside it.
  const outside = path.join(work, 'merges.kept');
  await fsp.link(path.join(target, 'models', 'tok', 'merges.txt'), outside);
  await fsp.chmod(outside, 0o600);
  await fsp.utimes(outside, 1.5e9, 1.5e9);

  const r = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--delta']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.json().rewritten, 3, 'the files under two names get one each');
  assert.equal(r.json().unchanged, 1);
  assert.equal(compareSnapshots(expected, await snapshotTree(target)), undefined);
  const kept = await fsp.stat(outside);
  assert.equal(kept.mode & 0o7777, 0o600, 'the name outside the target keeps its mode');
  assert.equal(kept.mtimeMs, 1.5e12, 'and its time');
  assert.equal((await fsp.stat(config)).nlink, 1);

  // Once apart, nothing is rewritten again.
  const again = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--delta']);
  assert.equal(again.json().rewritten, 0);
});

test('a --delta --include writes into a directory, not through a link in its place to a directory elsewhere, nor over what has another type', async () => {
  const { work, repo, target } = await restoredDeployment();
  const expected = await snapshotTree(target);
  const tok = path.join(target, 'models', 'tok');
  const elsewhere = path.join(work, 'elsewhere');
  await fsp.mkdir(elsewhere);
  await fsp.writeFile(path.join(elsewhere, 'tokenizer.json'), 'not this one\n');
  await fsp.rm(tok, { recursive: true });
  await fsp.symlink(elsewhere, tok);
  const before = await snapshotTree(elsewhere);
  await fsp.rm(path.join(target, 'models', 'config.json'));
  await fsp.mkdir(path.join(target, 'models', 'config.json', 'deep'), { recursive: true });

  const dry = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--delta', '--include', 'models/tok/**', '--include', 'models/config.json', '--dry-run']);
  assert.equal(dry.code, 0, dry.stderr);
  assert.deepEqual(dry.json().removals.sort(), ['models/config.json', 'models/tok']);
  const r = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--delta', '--include', 'models/tok/**', '--include', 'models/config.json']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.json().removed, 2);
  assert.equal(compareSnapshots(before, await snapshotTree(elsewhere)), undefined, 'nothing was written through the link');
  assert.equal(compareSnapshots(expected, await snapshotTree(target)), undefined);
});

test("a --delta run by the tree's owner (not root) writes anew a file of another user it may not read, or may not give its time", { skip: process.geteuid?.() === 0 ? false : 'needs root to leave files of another user' }, async () => {
  const { work, repo, target } = await restoredDeployment();
  const expected = await snapshotTree(target);
  execFileSync('chown', ['-R', `${NOBODY}:${NOBODY}`, work]);
  // Left by root: one it cannot read, one readable and alike but of another time.
  const unreadable = path.join(target, 'models', 'tok', 'merges.txt');
  await fsp.chown(unreadable, 0, 0);
  await fsp.chmod(unreadable, 0o600);
  const otherMode = path.join(target, 'models', 'config.json');
  await fsp.chown(otherMode, 0, 0);
  await fsp.chmod(otherMode, 0o644);
  await fsp.utimes(otherMode, 1.5e9, 1.5e9);

  const r = await runChild(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--delta'], { user: { uid: NOBODY, gid: NOBODY } });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.json().rewritten, 2);
  assert.equal(compareSnapshots(expected, await snapshotTree(target)), undefined);
  for (const p of [unreadable, otherMode]) assert.equal((await fsp.stat(p)).uid, NOBODY, `${p} is the restoring user's`);
});

test('a --delta over a target where a source is a file or a link to a directory elsewhere says it removes it, and does', async () => {
  const { work, repo, target } = await restoredDeployment();
  const expected = await snapshotTree(target);
  const models = path.join(target, 'models');
  const elsewhere = path.join(work, 'elsewhere');
  await fsp.mkdir(elsewhere);
  for (const put of [() => fsp.writeFile(models, 'not a directory'), () => fsp.symlink(elsewhere, models)]) {
    await fsp.rm(models, { recursive: true });
    await put();
    const dry = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--delta', '--dry-run']);
    assert.equal(dry.code, 0, dry.stderr);
    assert.deepEqual(dry.json().removals, ['models']);
    const r = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--delta']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json().removed, 1);
    assert.equal(compareSnapshots(expected, await snapshotTree(target)), undefined);
  }
  assert.deepEqual(await fsp.readdir(elsewhere), []);
});

test('a --delta removes the copies that restores killed while they copied a file across file systems left beside its place, even where the excludes keep hidden files, but not those of a process that runs', async () => {
  const work = await tempDir();
  const models = path.join(work, 'models');
  await fsp.mkdir(path.join(models, 'tok'), { recursive: true });
  await fsp.writeFile(path.join(models, 'tok', 'tokenizer.json'), '{"vocab": {"a": 0}}\n');
  await fsp.writeFile(path.join(models, 'config.json'), '{"layers": 2}\n');
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  // Hidden files are left out of the backup, and so kept by a --delta.
  assert.equal((await lifeboat(['--repo', repo, 'backup', models, '--exclude', '.*'])).code, 0);
  const target = path.join(work, 'target');
  assert.equal((await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target])).code, 0);
  const gone = spawn(process.execPath, ['-e', '']);
  await once(gone, 'exit');
  const tok = path.join(target, 'models', 'tok');
  const plant = async () => {
    // Killed while copying tokenizer.json into place: its copy is left beside it.
    await fsp.writeFile(path.join(tok, `.tokenizer.json.lifeboat-${gone.pid}-0badf00d`), '{"vocab"');
    // One being made by a restore that runs now (this process stands for it) is its own.
    await fsp.writeFile(path.join(tok, `.tokenizer.json.lifeboat-${process.pid}-0123abcd`), '{"voc');
    await fsp.writeFile(path.join(tok, '.keep'), 'an operator\'s note');
  };
  await plant();
  for (const args of [[], ['--include', 'models/tok/**']]) {
    const r = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--delta', ...args]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual((await fsp.readdir(tok)).sort(), ['.keep', `.tokenizer.json.lifeboat-${process.pid}-0123abcd`, 'tokenizer.json'], `${args.join(' ')}`);
    await plant();
  }
  await fsp.rm(work, { recursive: true, force: true });
});
