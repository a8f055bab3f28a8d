import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { runChild, spawnLifeboat, type CliRun } from './helpers/cli.js';
import { removeTree } from '../src/format/remove-tree.js';
import { compareSnapshots, snapshotTree, tempDir } from './helpers/tree.js';

const NOBODY = 65534;
// Root's rights do not depend on modes: as root, lifeboat runs as nobody, who meets read-only directories as a service account does.
const asRoot = process.geteuid?.() === 0;
const user = asRoot ? { uid: NOBODY, gid: NOBODY } : undefined;

async function giveAway(root: string): Promise<void> {
  if (!asRoot) return;
  await fsp.lchown(root, NOBODY, NOBODY);
  const st = await fsp.lstat(root);
  if (st.isDirectory()) for (const name of await fsp.readdir(root)) await giveAway(path.join(root, name));
}

/** Changes a read-only directory the way its owner would: opened, changed, closed again. */
async function editReadOnly(dir: string, change: () => Promise<void>): Promise<void> {
  await fsp.chmod(dir, 0o755);
  await change();
  await fsp.chmod(dir, 0o555);
}

test('a model store with read-only directories restores, replaces, delta-restores and fails over as its non-root owner', async (t) => {
  const work = await tempDir();
  t.after(() => removeTree(work));
  await fsp.chmod(work, 0o755);
  const models = path.join(work, 'models');
  await fsp.mkdir(path.join(models, 'shards'), { recursive: true });
  await fsp.writeFile(path.join(models, 'config.json'), '{"layers": 2}\n');
  for (const name of ['a', 'b']) await fsp.writeFile(path.join(models, 'shards', `${name}.bin`), `weights ${name}\n`.repeat(1000));
  for (const name of ['a', 'b']) await fsp.chmod(path.join(models, 'shards', `${name}.bin`), 0o444);
  await fsp.chmod(path.join(models, 'shards'), 0o555);
  await fsp.chmod(models, 0o555);
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./models\ntargets:\n  prod: { slots: ./slots, active: ./current, keepSlots: 2 }\n');
  await giveAway(work);
  const run = async (...args: string[]): Promise<CliRun> => {
    const r = await runChild(args, { cwd: work, user });
    assert.equal(r.code, 0, `lifeboat ${args.join(' ')}: ${r.stderr}`);
    return r;
  };
  const backup = async () => (await run('--json', 'backup')).json().id as string;

  await run('init');
  const points = [await backup()];
  const states = [await snapshotTree(models)];
  // A new version: one shard rewritten, one removed, one added, inside the read-only directory.
  await editReadOnly(models, () =>
    editReadOnly(path.join(models, 'shards'), async () => {
      await fsp.rm(path.join(models, 'shards', 'b.bin'));
      await fsp.writeFile(path.join(models, 'shards', 'c.bin'), 'weights c\n'.repeat(900), { mode: 0o444 });
      await fsp.chmod(path.join(models, 'shards', 'a.bin'), 0o644);
      await fsp.writeFile(path.join(models, 'shards', 'a.bin'), 'weights A2\n'.repeat(800));
      await fsp.chmod(path.join(models, 'shards', 'a.bin'), 0o444);
      await giveAway(models);
    }),
  );
  points.push(await backup());
  states.push(await snapshotTree(models));

  const target = path.join(work, 'restored');
  const restoredMatches = async (i: number, how: string) => {
    assert.equal(compareSnapshots(states[i]!, await snapshotTree(path.join(target, 'models'))), undefined, `${how} restore of point ${i}`);
  };
  await run('restore', points[0]!, '--target', target);
  await restoredMatches(0, 'a first');
  await run('restore', points[1]!, '--target', target, '--delta');
  await restoredMatches(1, 'a --delta');
  await run('restore', points[0]!, '--target', target, '--delta');
  await restoredMatches(0, 'a --delta');
  const forced = await run('--json', 'restore', points[1]!, '--target', target, '--force');
  await restoredMatches(1, 'a --force');
  assert.deepEqual(forced.json().warnings, []);
  assert.deepEqual(await fsp.readdir(work).then((names) => names.filter((n) => n.includes('restored'))), ['restored'], 'nothing replaced is left beside the target');

  // A drill's scratch restore is removed after it.
  const scratch = path.join(work, 'scratch');
  await fsp.mkdir(scratch);
  await giveAway(scratch);
  await run('drill', '--work-dir', scratch);
  assert.deepEqual(await fsp.readdir(scratch), []);

  // Failovers make room by removing old slots, whose directories are read-only: the fourth removes the first two.
  points.push(await backup(), await backup());
  for (const point of points) await run('failover', point);
  assert.deepEqual((await fsp.readdir(path.join(work, 'slots'))).filter((n) => !n.startsWith('.')).sort(), points.slice(2).sort());
});

test('restore --in-place --delta as a non-root owner rewrites a file of another user it may read but not hard-link (protected_hardlinks), setting it aside by renaming it', { skip: asRoot ? false : 'needs root, to leave a file of another user in the tree' }, async (t) => {
  const work = await tempDir();
  t.after(() => removeTree(work));
  await fsp.chmod(work, 0o755);
  const models = path.join(work, 'models');
  await fsp.mkdir(models);
  await fsp.writeFile(path.join(models, 'config.json'), '{"layers": 2}\n');
  await fsp.writeFile(path.join(models, 'other.json'), '{}\n');
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./models\n  other: ./other\n');
  await fsp.mkdir(path.join(work, 'other'));
  await fsp.writeFile(path.join(work, 'other', 'notes.txt'), 'notes\n');
  await giveAway(work);
  const run = (...args: string[]): Promise<CliRun> => runChild(args, { cwd: work, user });
  assert.equal((await run('init')).code, 0);
  const backup = await run('--json', 'backup');
  assert.equal(backup.code, 0, backup.stderr);
  const atPoint = await snapshotTree(models);
  // Root left its own copy there, which nobody may read but neither write nor link to.
  await fsp.rm(path.join(models, 'config.json'));
  await fsp.writeFile(path.join(models, 'config.json'), '{"layers": 3}\n', { mode: 0o644 });
  const r = await run('restore', backup.json().id as string, '--in-place', '--delta');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(compareSnapshots(atPoint, await snapshotTree(models)), undefined);
  assert.equal((await fsp.stat(path.join(models, 'config.json'))).uid, NOBODY);
});

/**
 * A store whose owner is not root: models/ holds read-only directories, one of which (cache/) its backup
 * leaves out; its repository made and a point of it taken.
 */
async function readOnlyStore(t: { after(fn: () => Promise<unknown>): void }): Promise<{ work: string; models: string; run: (...args: string[]) => Promise<CliRun>; point: string }> {
  const work = await tempDir();
  t.after(() => removeTree(work));
  await fsp.chmod(work, 0o755);
  const models = path.join(work, 'models');
  for (const dir of ['shards', 'cache']) await fsp.mkdir(path.join(models, dir), { recursive: true });
  await fsp.writeFile(path.join(models, 'shards', 'a.bin'), 'weights a\n'.repeat(500));
  await fsp.writeFile(path.join(models, 'cache', 'kv.tmp'), 'cached\n');
  for (const dir of ['shards', 'cache']) await fsp.chmod(path.join(models, dir), 0o555);
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nexclude: [cache]\nsources:\n  models: ./models\n');
  await giveAway(work);
  const run = (...args: string[]): Promise<CliRun> => runChild(args, { cwd: work, user });
  assert.equal((await run('init')).code, 0);
  const backup = await run('--json', 'backup');
  assert.equal(backup.code, 0, backup.stderr);
  return { work, models, run, point: backup.json().id as string };
}

test('a --delta as a non-root owner gives the read-only directories it opened and the point gives no mode (one its backup left out) their modes back', async (t) => {
  const { models, run, point } = await readOnlyStore(t);
  const before = await snapshotTree(models);
  for (const args of [['--in-place', '--delta'], ['--target', path.dirname(models), '--delta']]) {
    await editReadOnly(path.join(models, 'shards'), async () => {
      await fsp.writeFile(path.join(models, 'shards', 'stray.bin'), 'stray\n');
      await giveAway(models);
    });
    const r = await run('restore', point, ...args);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(compareSnapshots(before, await snapshotTree(models)), undefined, `restore ${args.join(' ')}`);
    assert.equal((await fsp.stat(path.join(models, 'cache'))).mode & 0o7777, 0o555, `restore ${args.join(' ')}: the directory left out is read-only still`);
  }
});

test('a --delta in place killed (SIGKILL) as a non-root owner is put back by the next restore with every directory it opened read-only again, what the point lacks and what its backup left out too', async (t) => {
  const { work, models, run, point } = await readOnlyStore(t);
  // A point with a file no tree has, whose data is damaged: a restore of it fails (exit 3) once it has put back what the kill left.
  await editReadOnly(path.join(models, 'shards'), async () => {
    await fsp.writeFile(path.join(models, 'shards', 'only-here.bin'), 'only in the damaged point\n'.repeat(50));
    await giveAway(models);
  });
  const backup = await run('--json', 'backup');
  assert.equal(backup.code, 0, backup.stderr);
  const damaged = backup.json().id as string;
  const manifest = JSON.parse(await fsp.readFile(path.join(work, 'repo', 'points', `${damaged}.json`), 'utf8'));
  const entry = manifest.entries.find((e: { path: string }) => e.path === 'shards/only-here.bin');
  const volume = path.join(work, 'repo', manifest.volumes[entry.ref.volume].key);
  const bytes = await fsp.readFile(volume);
  bytes[entry.ref.offset + 512 + 7]! ^= 0x20;
  await fsp.writeFile(volume, bytes);
  // What the point lacks: a read-only directory, and files enough in another for the changes to take a while.
  await editReadOnly(path.join(models, 'shards'), async () => {
    await fsp.rm(path.join(models, 'shards', 'only-here.bin'));
    for (let i = 0; i < 1500; i++) await fsp.writeFile(path.join(models, 'shards', `extra-${i}`), `${i}\n`);
  });
  await fsp.mkdir(path.join(models, 'junk'));
  await fsp.writeFile(path.join(models, 'junk', 'notes.txt'), 'notes\n');
  await fsp.chmod(path.join(models, 'junk'), 0o555);
  await giveAway(models);
  const before = await snapshotTree(models);

  const child = spawnLifeboat(['restore', point, '--in-place', '--delta'], { cwd: work, user });
  const exited = new Promise<string | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
  const journal = () => {
    const aside = fs.readdirSync(work).find((n) => n.endsWith('-replaced'));
    if (aside === undefined) return '';
    try {
      return fs.readFileSync(path.join(work, aside, 'journal'), 'utf8');
    } catch {
      // The directory comes an instant before the journal in it.
      return '';
    }
  };
  // Looked for without a pause: the changes take milliseconds.
  for (const until = Date.now() + 30_000; Date.now() < until && journal().split('\n').length < 40; );
  child.kill('SIGKILL');
  assert.equal(await exited, 'SIGKILL');
  assert.match(await fsp.readFile(path.join(work, '.models.lifeboat-moving'), 'utf8'), /"phase":"moving"/, 'killed among its changes');

  const probe = await run('restore', damaged, '--in-place', '--delta');
  assert.equal(probe.code, 3, probe.stderr);
  assert.match(probe.stderr, /put back .*models.* as they were before an interrupted restore --in-place/);
  assert.equal(compareSnapshots(before, await snapshotTree(models)), undefined);
  const r = await run('restore', point, '--in-place', '--delta');
  assert.equal(r.code, 0, r.stderr);
  assert.equal((await fsp.stat(path.join(models, 'cache'))).mode & 0o7777, 0o555);
  assert.equal(await fsp.stat(path.join(models, 'junk')).then(() => true, () => false), false);
});
