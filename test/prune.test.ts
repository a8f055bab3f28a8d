import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat, spawnLifeboat } from './helpers/cli.js';
import { compareSnapshots, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile, type SnapshotEntry } from './helpers/tree.js';
import { repoFiles, smallDeployment } from './helpers/repo.js';
import { runInNamespace, unshare } from './helpers/namespace.js';
import { planRetention, type RetentionPoint } from '../src/core/retention.js';
import { Repository } from '../src/core/repository.js';
import { LocalStorage } from '../src/storage/local.js';
import { waitFor } from './helpers/processes.js';

interface Listed {
  id: string;
  type: 'full' | 'diff' | 'incr';
  parent: string | null;
  full: string;
}

/**
 * The expected keep set, stated over whole chains rather than computed the way
 * the implementation does: a point survives when its full is one of the newest
 * `keepFull` fulls and every diff on its chain is one of the newest `keepDiff`
 * diffs of those fulls; the newest point and its chain always survive.
 */
function expectedKeep(points: Listed[], keepFull: number, keepDiff?: number): Set<string> {
  const byId = new Map(points.map((p) => [p.id, p]));
  const chain = (p: Listed): Listed[] => [p, ...(p.parent ? chain(byId.get(p.parent)!) : [])];
  const fulls = points.filter((p) => p.type === 'full').slice(-keepFull).map((p) => p.id);
  const diffs = points.filter((p) => p.type === 'diff' && fulls.includes(p.full));
  const keptDiffs = new Set((keepDiff === undefined ? diffs : keepDiff === 0 ? [] : diffs.slice(-keepDiff)).map((p) => p.id));
  const keep = new Set(
    points.filter((p) => fulls.includes(p.full) && chain(p).every((q) => q.type !== 'diff' || keptDiffs.has(q.id))).map((p) => p.id),
  );
  for (const q of chain(points[points.length - 1]!)) keep.add(q.id);
  return keep;
}

/** Twelve points across three fulls, with diffs and incrs; the source's state at each, for restores. */
async function twelvePoints(seed: number) {
  const d = await smallDeployment({ seed });
  const rand = prng(seed);
  const types = ['full', 'incr', 'diff', 'incr', 'full', 'diff', 'incr', 'diff', 'full', 'incr', 'diff', 'incr'];
  const states = new Map<string, Map<string, SnapshotEntry>>();
  for (const [i, type] of types.entries()) {
    await writeRandomFile(path.join(d.src, `step-${i}.bin`), 2000 + Math.floor(rand() * 50_000), rand);
    await writeRandomFile(path.join(d.src, 'weights.bin'), 100_000 + i, rand);
    if (i % 3 === 2) await fsp.rm(path.join(d.src, `step-${i - 1}.bin`));
    const r = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', type]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json().type, type);
    states.set(r.json().id, await snapshotTree(d.src));
  }
  const list: Listed[] = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json();
  assert.equal(list.length, 12);
  return { d, list, states };
}

test('retention plan: chains are never broken; keep-within and protected points keep what they need', () => {
  const at = (h: number) => new Date(Date.UTC(2026, 10, 1, h)).toISOString();
  const id = (h: number, t: string) => `20261101-${String(h).padStart(2, '0')}0000-000${t}`;
  const p = (h: number, type: RetentionPoint['type'], parent: number | null, full: number): RetentionPoint => ({
    id: id(h, type[0]!.toUpperCase()),
    deployment: 'default',
    type,
    parent: parent === null ? null : points.find((x) => x.id.startsWith(`20261101-${String(parent).padStart(2, '0')}`))!.id,
    full: points.find((x) => x.id.startsWith(`20261101-${String(full).padStart(2, '0')}`))?.id ?? id(h, 'F'),
    completedAt: at(h),
  });
  const points: RetentionPoint[] = [];
  points.push(p(1, 'full', null, 1));
  points.push(p(2, 'incr', 1, 1));
  points.push(p(3, 'diff', 1, 1));
  points.push(p(4, 'incr', 3, 1));
  points.push(p(5, 'full', null, 5));
  points.push(p(6, 'incr', 5, 5));
  const now = new Date(Date.UTC(2026, 10, 1, 6, 30));
  const ids = (ds: { id: string }[]) => ds.map((x) => x.id.slice(9, 11));

  const plain = planRetention(points, { keepFull: 1 }, { now });
  assert.deepEqual(ids(plain.keep), ['05', '06']);
  assert.deepEqual(ids(plain.remove), ['01', '02', '03', '04']);
  assert.match(plain.remove[0]!.reasons[0]!, /older than the 1 newest full/);
  assert.match(plain.remove[3]!.reasons[0]!, /parent .* is not kept by the policy/);

  // The incr at 04:00 is within 3h: it keeps its diff and its full, but not the unrelated incr at 02:00.
  const within = planRetention(points, { keepFull: 1, keepWithinMs: 3 * 3600_000 }, { now });
  assert.deepEqual(ids(within.keep), ['01', '03', '04', '05', '06']);
  assert.ok(within.keep[0]!.reasons.some((r) => r.startsWith('needed by')));

  const pinned = planRetention(points, { keepFull: 1, keepDiff: 0 }, { now, protected: new Map([[points[1]!.id, 'pinned: audit']]) });
  assert.deepEqual(ids(pinned.keep), ['01', '02', '05', '06']);
  // The full 01 stays (the pinned incr needs it), so the diff on it may not be said to go because its full does.
  const diffGoes = pinned.remove.find((d) => d.type === 'diff')!;
  assert.deepEqual(diffGoes.reasons, [`its full ${points[0]!.id} is not kept by the policy`]);
  const fullPinned = planRetention(points, { keepFull: 1 }, { now, protected: new Map([[points[0]!.id, 'pinned: audit']]) });
  assert.deepEqual(fullPinned.remove.find((d) => d.type === 'diff')!.reasons, [`its full ${points[0]!.id} is kept only as pinned: audit, which keeps that point alone`]);

  const refs = planRetention([...points.slice(0, 5), { ...points[5]!, references: [points[1]!.id] }], { keepFull: 1 }, { now });
  assert.deepEqual(ids(refs.keep), ['01', '02', '05', '06'], 'a point whose bytes live elsewhere keeps that point');
});

test('prune of twelve points across three fulls keeps exactly the expected set; every kept point restores bit-exact', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const { d, list, states } = await twelvePoints(seed);

  // Without keep-full anywhere, prune refuses.
  const refused = await lifeboat(['--repo', d.repo, 'prune']);
  assert.equal(refused.code, 2);
  assert.match(refused.stderr, /--keep-full/);

  // keep-full 2 with no diff limit: the oldest full's chain goes, the rest stays.
  const wide = await lifeboat(['--repo', d.repo, '--json', 'prune', '--keep-full', '2', '--dry-run']);
  assert.equal(wide.code, 0, wide.stderr);
  assert.deepEqual(new Set(wide.json().keep.map((k: Listed) => k.id)), expectedKeep(list, 2));

  // The real policy: two fulls, one diff. A dry run lists exactly what then goes.
  const before = await repoFiles(d.repo);
  const dry = await lifeboat(['--repo', d.repo, '--json', 'prune', '--keep-full', '2', '--keep-diff', '1', '--dry-run']);
  assert.equal(dry.code, 0, dry.stderr);
  const expected = expectedKeep(list, 2, 1);
  assert.equal(expected.size, 5, 'the test itself: two fulls, the newest diff, an incr on each side of it');
  assert.deepEqual(new Set(dry.json().keep.map((k: Listed) => k.id)), expected);
  assert.deepEqual(await repoFiles(d.repo), before, 'a dry run changes nothing');
  for (const r of dry.json().remove) assert.ok(r.reasons.length > 0, `${r.id} has a reason`);

  const real = await lifeboat(['--repo', d.repo, '--json', 'prune', '--keep-full', '2', '--keep-diff', '1']);
  assert.equal(real.code, 0, real.stderr);
  const after = await repoFiles(d.repo);
  const gone = before.filter((f) => !after.includes(f) && !f.startsWith('journal/'));
  assert.deepEqual(gone.sort(), [...dry.json().objects].sort(), 'exactly what the dry run listed was removed');
  assert.ok(!after.includes('locks/lock.json'), 'the lock is released');
  assert.ok(after.some((f) => f.startsWith('journal/')), 'the prune is journaled');

  const remaining: Listed[] = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json();
  assert.deepEqual(new Set(remaining.map((p) => p.id)), expected);
  for (const f of after.filter((f) => f.startsWith('data/'))) assert.ok(expected.has(f.split('/')[1]!), `${f} belongs to a kept point`);

  const v = await lifeboat(['--repo', d.repo, '--json', 'verify', '--read-data']);
  assert.equal(v.code, 0, v.stdout);
  assert.deepEqual(v.json().warnings, []);

  for (const id of expected) {
    const target = path.join(d.work, `restore-${id}`);
    const r = await lifeboat(['--repo', d.repo, 'restore', id, '--target', target]);
    assert.equal(r.code, 0, r.stderr);
    const diff = compareSnapshots(states.get(id)!, await snapshotTree(path.join(target, 'models')));
    assert.equal(diff, undefined, `point ${id} restores bit-exact`);
  }
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('retention from the config file; --keep-full overrides it', async () => {
  const { d, list } = await twelvePoints(11);
  await fsp.writeFile(path.join(d.work, 'lifeboat.yaml'), `repository: ${d.repo}\nretention: { keepFull: 1, keepDiff: 1 }\n`);
  const fromConfig = await lifeboat(['--json', 'prune', '--dry-run'], { cwd: d.work });
  assert.equal(fromConfig.code, 0, fromConfig.stderr);
  assert.deepEqual(new Set(fromConfig.json().keep.map((k: Listed) => k.id)), expectedKeep(list, 1, 1));
  const flagged = await lifeboat(['--json', 'prune', '--dry-run', '--keep-full', '3'], { cwd: d.work });
  assert.deepEqual(new Set(flagged.json().keep.map((k: Listed) => k.id)), expectedKeep(list, 3, 1));
  // Every prune needs a number of fulls to keep, as README.md says: a window alone is refused, not taken for "keep every full".
  await fsp.writeFile(path.join(d.work, 'lifeboat.yaml'), `repository: ${d.repo}\nretention: { keepWithin: 14d }\n`);
  const windowOnly = await lifeboat(['prune'], { cwd: d.work });
  assert.equal(windowOnly.code, 2, windowOnly.stderr);
  assert.match(windowOnly.stderr, /^lifeboat: prune needs --keep-full N \(or retention\.keepFull in the config\)\n/);
  assert.equal((await lifeboat(['--json', 'list'], { cwd: d.work })).json().length, list.length, 'nothing was removed');
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('prune gives the keep-within window back as it was written, from the flag or the config', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  const reasons = async (args: string[]) => {
    const r = await lifeboat(['--json', 'prune', '--dry-run', ...args], { cwd: d.work });
    assert.equal(r.code, 0, r.stderr);
    return r.json().keep[0].reasons as string[];
  };
  await fsp.writeFile(path.join(d.work, 'lifeboat.yaml'), `repository: ${d.repo}\nretention: { keepFull: 1, keepWithin: 7d }\n`);
  assert.ok((await reasons([])).includes('completed within 7d'));
  assert.ok((await reasons(['--keep-within', '14d'])).includes('completed within 14d'));
  assert.ok((await reasons(['--keep-within', '1h30m'])).includes('completed within 1h30m'));
  const text = await lifeboat(['prune', '--dry-run', '--keep-within', '14d'], { cwd: d.work });
  assert.match(text.stdout, /completed within 14d/);
});

test('prune lists kept and removed points in the same columns, in a dry run ("would remove") as in a prune', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  for (const type of ['full', 'full', 'incr']) {
    await fsp.appendFile(path.join(d.src, 'config.json'), ' ');
    assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src, '--type', type])).code, 0);
  }
  for (const args of [['--dry-run'], []]) {
    const r = await lifeboat(['--repo', d.repo, 'prune', '--keep-full', '1', ...args]);
    assert.equal(r.code, 0, r.stderr);
    const rows = r.stdout.split('\n').filter((l) => /^(keep|remove|would remove) +\d{8}-/.test(l));
    assert.equal(rows.length, 3, r.stdout);
    // Each row's id starts in the same column.
    assert.equal(new Set(rows.map((l) => l.search(/\d{8}-/))).size, 1, r.stdout);
  }
});

test('prune --dry-run names no summary for a point written before summaries existed, and the prune deletes exactly what it named', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src, '--type', 'full'])).code, 0);
  const [oldest] = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json() as Listed[];
  await fsp.appendFile(path.join(d.src, 'config.json'), ' ');
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src, '--type', 'full'])).code, 0);
  // As an earlier version wrote it: a manifest and volumes, no summary.
  await fsp.rm(path.join(d.repo, 'summaries', `${oldest!.id}.json`));
  const before = await repoFiles(d.repo);
  const dry = await lifeboat(['--repo', d.repo, '--json', 'prune', '--keep-full', '1', '--dry-run']);
  assert.equal(dry.code, 0, dry.stderr);
  assert.deepEqual(dry.json().remove.map((r: Listed) => r.id), [oldest!.id]);
  assert.deepEqual(dry.json().objects, [`points/${oldest!.id}.json`, `data/${oldest!.id}/v000001.tar`]);
  const real = await lifeboat(['--repo', d.repo, '--json', 'prune', '--keep-full', '1']);
  assert.equal(real.code, 0, real.stderr);
  assert.deepEqual(real.json().objects, dry.json().objects);
  const after = await repoFiles(d.repo);
  assert.deepEqual(before.filter((f) => !after.includes(f)), [`data/${oldest!.id}/v000001.tar`, `points/${oldest!.id}.json`]);
});

test('prune --dry-run names the temporary file a killed backup left, which the prune then deletes with what it named', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src, '--type', 'full'])).code, 0);
  await writeRandomFile(path.join(d.src, 'shard.bin'), 64 << 20, prng(3));
  const child = spawnLifeboat(['--repo', d.repo, 'backup', d.src, '--type', 'incr']);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  // A volume being written, not the lock's document on its way into place, which is gone a moment later.
  const tmp = path.join(d.repo, '.tmp');
  const writing = async () => {
    for (const name of await fsp.readdir(tmp).catch(() => [])) {
      if (((await fsp.stat(path.join(tmp, name)).catch(() => undefined))?.size ?? 0) >= 1 << 20) return true;
    }
    return false;
  };
  assert.ok(await waitFor(writing, 20_000), 'the backup is writing a volume');
  child.kill('SIGKILL');
  await exited;
  const before = await repoFiles(d.repo);
  const left = before.filter((f) => f.startsWith('.tmp/'));
  assert.ok(left.length > 0, 'the killed backup left a temporary file');

  const dry = await lifeboat(['--repo', d.repo, '--json', 'prune', '--keep-full', '1', '--dry-run']);
  assert.equal(dry.code, 0, dry.stderr);
  for (const f of left) assert.ok(dry.json().objects.includes(f), `the dry run names ${f}: ${dry.stdout}`);
  const text = await lifeboat(['--repo', d.repo, 'prune', '--keep-full', '1', '--dry-run']);
  for (const f of left) assert.match(text.stdout, new RegExp(`would delete ${f}: a temporary file of \\d+ bytes, left by a write that never finished`));
  const real = await lifeboat(['--repo', d.repo, '--json', 'prune', '--keep-full', '1']);
  assert.equal(real.code, 0, real.stderr);
  assert.deepEqual(real.json().objects, dry.json().objects);
  const after = await repoFiles(d.repo);
  // The lock the killed backup left is taken over and given back: not a deletion the plan is about.
  const gone = before.filter((f) => !after.includes(f) && f !== 'locks/lock.json');
  assert.deepEqual(gone.sort(), [...dry.json().objects].sort(), 'the prune deleted exactly what its dry run named');
});

test('status shows a prune of the journal as one plain line: it names no point, and leaves no gap for one', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  assert.equal((await lifeboat(['--repo', d.repo, 'prune', '--keep-full', '1'])).code, 0);
  const status = await lifeboat(['--repo', d.repo, 'status']);
  assert.equal(status.code, 0, status.stderr);
  assert.match(status.stdout, /\n {2}\S+ {2}prune ok \(\S+@\S+\)\n/);
});

test('a prune killed with SIGKILL at random moments leaves a repository that verifies', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const rand = prng(seed);
  const d = await smallDeployment({ seed });
  const work = await tempDir();
  const backup = async (type: string, i: number) => {
    for (let k = 0; k < 6; k++) await writeRandomFile(path.join(d.src, `f-${i}-${k}.bin`), 20_000, rand);
    const r = await lifeboat(['--repo', d.repo, 'backup', d.src, '--type', type]);
    assert.equal(r.code, 0, r.stderr);
  };
  const runPrune = () => {
    const child = spawnLifeboat(['--repo', d.repo, 'prune', '--keep-full', '1']);
    return { child, exited: new Promise<number | null>((r) => child.on('exit', (code) => r(code))) };
  };

  // Calibrate: how long does an uninterrupted prune of this repository take, start-up included?
  let n = 0;
  for (const type of ['full', 'incr', 'diff', 'incr', 'full']) await backup(type, n++);
  const t0 = Date.now();
  const calibrate = runPrune();
  assert.equal(await calibrate.exited, 0);
  const span = Date.now() - t0;
  t.diagnostic(`an uninterrupted prune takes ${span} ms`);

  let interrupted = 0;
  let midway = 0;
  const points = async () => (await lifeboat(['--repo', d.repo, '--json', 'list'])).json().length as number;
  for (let round = 0; round < 6; round++) {
    for (const type of ['incr', 'diff', 'full', 'incr', 'diff', 'incr', 'full']) await backup(type, n++);
    const pointsBefore = await points();
    const { child, exited } = runPrune();
    let delay: number;
    if (round % 2 === 0) {
      // At a random moment of its run.
      delay = Math.floor(span * (0.3 + 0.8 * rand()));
      await new Promise((r) => setTimeout(r, delay));
    } else {
      // Once it has started deleting manifests, a few milliseconds in.
      const pointsDir = path.join(d.repo, 'points');
      const t1 = Date.now();
      while ((await fsp.readdir(pointsDir)).length >= pointsBefore && Date.now() - t1 < 10_000) await new Promise((r) => setImmediate(r));
      await new Promise((r) => setTimeout(r, Math.floor(rand() * 4)));
      delay = Date.now() - t1;
    }
    child.kill('SIGKILL');
    const code = await exited;
    if (code !== 0) interrupted++;
    const left = (await lifeboat(['--repo', d.repo, '--json', 'prune', '--keep-full', '1', '--dry-run'])).json();
    if (code !== 0 && (await points()) < pointsBefore && (left.remove.length > 0 || left.dataObjects > 0)) midway++;
    const v = await lifeboat(['--repo', d.repo, '--json', 'verify', '--read-data']);
    assert.equal(v.code, 0, `verify after a kill at ${delay} ms (round ${round}): ${v.stdout}`);
    assert.deepEqual(v.json().problems, []);
  }
  t.diagnostic(`${interrupted} of 6 prunes were killed before they finished, ${midway} of them half-way through deleting`);

  // The lock the killed prune left is stale (its process is gone), so the next prune takes it over and finishes the job.
  const done = await lifeboat(['--repo', d.repo, '--json', 'prune', '--keep-full', '1']);
  assert.equal(done.code, 0, done.stderr);
  const v = await lifeboat(['--repo', d.repo, '--json', 'verify', '--read-data']);
  assert.equal(v.code, 0);
  assert.deepEqual(v.json().warnings, [], 'no unreferenced data is left');
  const list: Listed[] = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json();
  assert.equal(list.filter((p) => p.type === 'full').length, 1);
  await fsp.rm(d.work, { recursive: true, force: true });
  await fsp.rm(work, { recursive: true, force: true });
});

test('a prune on a disk the repository filled up still runs: it frees the room kept aside to take its lock, and keeps it aside again after', { skip: unshare ? false : 'unshare cannot make a mount namespace here' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  await writeRandomFile(path.join(src, 'weights.bin'), 1_500_000, prng(seedFromEnv()));
  // Two fulls fit on the 4 MiB file system; the third fills it. What is left of it is then taken up.
  const read = await runInNamespace(work, [
    'mkdir small && mount -t tmpfs -o size=4m tmpfs small',
    'node "$BIN" --repo small/repo init > /dev/null',
    'node "$BIN" --repo small/repo backup models --type full > /dev/null',
    'echo 1 >> models/config.json',
    'node "$BIN" --repo small/repo backup models --type full > /dev/null',
    'echo 2 >> models/config.json',
    'status=0; node "$BIN" --repo small/repo backup models --type full 2> out/backup.txt || status=$?',
    'echo "$status" > out/backup-status.txt',
    'cat /dev/urandom > small/filler 2> /dev/null || true',
    'df --output=avail -B1 small | tail -1 > out/avail.txt',
    'status=0; node "$BIN" --repo small/repo --json prune --keep-full 1 > out/prune.json 2> out/prune.txt || status=$?',
    'echo "$status" > out/prune-status.txt',
    'node "$BIN" --repo small/repo --json list > out/list.json',
    'node "$BIN" --repo small/repo --json verify > out/verify.json',
    'ls -A small/repo/.reserve > out/reserve.txt',
    'ls -A small/repo > out/repo.txt',
  ]);
  assert.equal((await read('backup-status.txt')).trim(), '1');
  assert.match(await read('backup.txt'), /^lifeboat: cannot write .*: ENOSPC: no space left on device, write\n {2}free space on the file system of the repository; where its backups fill it, lifeboat prune removes the points retention does not keep \(it runs on a full disk\)\n$/);
  assert.equal((await read('avail.txt')).trim(), '0', 'the premise: no room is left');
  assert.equal((await read('prune-status.txt')).trim(), '0', await read('prune.txt'));
  assert.equal(JSON.parse(await read('prune.json')).remove.length, 1);
  assert.equal(JSON.parse(await read('list.json')).length, 1);
  assert.equal(JSON.parse(await read('verify.json')).ok, true);
  assert.equal((await read('reserve.txt')).trim(), RESERVE_FILES, 'the room is kept aside again');
  assert.doesNotMatch(await read('repo.txt'), /locks/, 'the lock is released');
});

const RESERVE_FILES = [...Array.from({ length: 8 }, (_, i) => `inode-${i}`), 'space'].join('\n');

test('a prune on a disk out of inodes still runs: the reserve keeps files aside too, and is kept again only after the prune has written its journal', { skip: unshare ? false : 'unshare cannot make a mount namespace here' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  await writeRandomFile(path.join(src, 'weights.bin'), 300_000, prng(seedFromEnv()));
  // Bytes to spare, files not: every inode left is taken (on tmpfs a hard link takes one too, as the lock's does).
  const read = await runInNamespace(work, [
    'mkdir small && mount -t tmpfs -o size=64m,nr_inodes=64 tmpfs small',
    'node "$BIN" --repo small/repo init > /dev/null',
    'node "$BIN" --repo small/repo backup models --type full > /dev/null',
    'echo 1 >> models/config.json',
    'node "$BIN" --repo small/repo backup models --type full > /dev/null',
    'i=0; while touch small/f$i 2> /dev/null; do i=$((i+1)); done',
    'df --output=iavail small | tail -1 > out/iavail.txt',
    'status=0; node "$BIN" --repo small/repo --json prune --keep-full 1 > out/prune.json 2> out/prune.txt || status=$?',
    'echo "$status" > out/prune-status.txt',
    'rm small/f*',
    'node "$BIN" --repo small/repo --json list > out/list.json',
    'node "$BIN" --repo small/repo --json verify > out/verify.json',
    'ls -A small/repo/.reserve > out/reserve.txt',
    'ls -A small/repo > out/repo.txt',
  ]);
  assert.equal((await read('iavail.txt')).trim(), '0', 'the premise: no inode is left');
  assert.equal((await read('prune-status.txt')).trim(), '0', await read('prune.txt'));
  assert.equal(JSON.parse(await read('prune.json')).remove.length, 1);
  assert.equal(JSON.parse(await read('list.json')).length, 1);
  assert.equal(JSON.parse(await read('verify.json')).ok, true);
  assert.equal((await read('reserve.txt')).trim(), RESERVE_FILES, 'the files are kept aside again');
  assert.doesNotMatch(await read('repo.txt'), /locks/, 'the lock is released');
});

test('prune --dry-run while a backup is running does not list that backup\'s volumes and summary as objects it would delete', async (t) => {
  const d = await smallDeployment({ bigFiles: 3, bigSize: 48 << 20 });
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  // Small volumes, so that the running backup has stored some while it writes the rest.
  await fsp.rm(d.repo, { recursive: true });
  await Repository.init(new LocalStorage(d.repo), { volumeSize: 1 << 20 });
  const child = spawnLifeboat(['--repo', d.repo, 'backup', d.src, '--type', 'full']);
  child.stdout!.resume();
  child.stderr!.resume();
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  t.after(() => void child.kill('SIGKILL'));
  const storedAVolume = async () => {
    for (const folder of await fsp.readdir(path.join(d.repo, 'data')).catch(() => [])) if ((await fsp.readdir(path.join(d.repo, 'data', folder))).length > 0) return true;
    return false;
  };
  assert.ok(await waitFor(storedAVolume, 20_000), 'the backup stored a volume');
  child.kill('SIGSTOP');
  const dry = await lifeboat(['--repo', d.repo, '--json', 'prune', '--keep-full', '1', '--dry-run']);
  child.kill('SIGCONT');
  assert.equal(dry.code, 0, dry.stderr);
  assert.deepEqual(dry.json().objects, [], 'what the running backup writes is its point to be');
  assert.equal(await exited, 0, 'the backup went on to the end');
});
