import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { runChild, type CliRun } from './helpers/cli.js';
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
