import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { MODES, compareSnapshots, mutateTree, pick, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile, type SnapshotEntry } from './helpers/tree.js';

function randomName(rand: () => number, n: number): string {
  const kinds = [
    () => `f${n}-${Math.floor(rand() * 1e6)}`,
    () => `модель-${n}-重み-ü`,
    () => `${'long'.repeat(36)}-${n}`.slice(0, 150),
    () => `space name ${n}.json`,
  ];
  return pick(rand, kinds)();
}

function randomSize(rand: () => number): number {
  const r = rand();
  if (r < 0.15) return 0;
  if (r < 0.7) return Math.floor(rand() * 4096);
  if (r < 0.95) return Math.floor(rand() * 512 * 1024);
  return Math.floor(8 * 1024 * 1024 + rand() * 24 * 1024 * 1024);
}

/** A tree of nested dirs, files from 0 bytes to tens of MiB, odd names, links, modes, empty dirs. */
async function buildTree(root: string, rand: () => number): Promise<void> {
  let n = 0;
  const dirs: string[] = [root];
  for (let i = 0; i < 8; i++) {
    const parent = pick(rand, dirs);
    const d = path.join(parent, randomName(rand, n++));
    await fsp.mkdir(d, { recursive: true });
    dirs.push(d);
  }
  await fsp.mkdir(path.join(root, 'empty-dir'), { recursive: true });
  for (let i = 0; i < 30; i++) {
    const f = path.join(pick(rand, dirs), randomName(rand, n++));
    await writeRandomFile(f, randomSize(rand), rand);
    await fsp.chmod(f, pick(rand, MODES));
  }
  // A big file, so volumes roll over and progress has something to show.
  await writeRandomFile(path.join(root, 'weights.safetensors'), 20 * 1024 * 1024 + 123, rand);
  await fsp.symlink('weights.safetensors', path.join(root, 'current.safetensors'));
  await fsp.symlink('../weights.safetensors', path.join(dirs[1]!, 'up-link'));
}

/** Edits, appends, truncations, deletions, additions, renames and chmods. */
function mutate(root: string, rand: () => number, round: number): Promise<string[]> {
  return mutateTree(root, rand, round, { operations: 8, sizeOf: randomSize });
}

test('randomized round trip: full → incr → diff → incr, every point restores bit-exact', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed} (replay with LIFEBOAT_TEST_SEED=${seed})`);
  const rand = prng(seed);
  const work = await tempDir();
  const src = path.join(work, 'src');
  const models = path.join(src, 'models');
  const serving = path.join(src, 'serving');
  await fsp.mkdir(models, { recursive: true });
  await fsp.mkdir(serving, { recursive: true });
  await buildTree(models, rand);
  await buildTree(serving, rand);
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);

  const points: { id: string; type: string; snapshot: Map<string, SnapshotEntry> }[] = [];
  for (const [round, type] of (['full', 'incr', 'diff', 'incr'] as const).entries()) {
    if (round > 0) {
      const ops = (await mutate(models, rand, round)).concat(await mutate(serving, rand, round));
      t.diagnostic(`round ${round}: ${ops.map((o) => o.split(' ')[0]).join(', ')}`);
    }
    const r = await lifeboat(['--repo', repo, '--json', 'backup', models, serving, '--type', type]);
    assert.equal(r.code, 0, r.stderr);
    const result = r.json();
    assert.equal(result.type, type);
    points.push({ id: result.id, type, snapshot: await snapshotTree(src) });
  }

  const list = (await lifeboat(['--repo', repo, '--json', 'list'])).json();
  assert.deepEqual(list.map((p: { id: string }) => p.id), points.map((p) => p.id));
  assert.equal(list[2].parent, points[0]!.id, 'a diff depends on the last full only');
  assert.equal(list[3].parent, points[2]!.id, 'an incr depends on the previous point');

  const shown = (await lifeboat(['--repo', repo, '--json', 'show', points[2]!.id])).json();
  for (const e of shown.entries) {
    if (e.type === 'file') assert.ok([points[0]!.id, points[2]!.id].includes(e.storedIn), `diff entry ${e.path} stored in ${e.storedIn}`);
  }

  for (const [i, p] of points.entries()) {
    const target = path.join(work, `restore-${i}`);
    const r = await lifeboat(['--repo', repo, '--json', 'restore', p.id, '--target', target]);
    assert.equal(r.code, 0, r.stderr);
    const difference = compareSnapshots(p.snapshot, await snapshotTree(target));
    assert.equal(difference, undefined, `point ${i} (${p.type}) differs after restore: ${difference}`);
  }

  // --delta from the newest restore back to the first point.
  const deltaTarget = path.join(work, 'restore-3');
  const d = await lifeboat(['--repo', repo, '--json', 'restore', points[0]!.id, '--target', deltaTarget, '--delta']);
  assert.equal(d.code, 0, d.stderr);
  assert.equal(compareSnapshots(points[0]!.snapshot, await snapshotTree(deltaTarget)), undefined);
  assert.ok(d.json().unchanged > 0, 'delta kept files whose content was already right');

  const v = await lifeboat(['--repo', repo, '--json', 'verify', '--read-data']);
  assert.equal(v.code, 0, v.stdout);
  assert.equal(v.json().ok, true);
  await fsp.rm(work, { recursive: true, force: true });
});
