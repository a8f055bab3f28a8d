import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { planRetention, type RetentionPoint, type RetentionPolicy } from '../src/core/retention.js';
import { lifeboat, runChild, spawnLifeboat } from './helpers/cli.js';
import { waitFor } from './helpers/processes.js';
import { repoFiles } from './helpers/repo.js';
import { compareSnapshots, mutateTree, pick, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile, type SnapshotEntry } from './helpers/tree.js';
import { oracleKeep, type OraclePoint } from './helpers/retention-oracle.js';

/**
 * Randomized checks of what a prune keeps against an oracle written from README's words
 * (test/helpers/retention-oracle.ts): first the planner fed random histories, then the
 * command line on real repositories.
 */

const STEPS = Number(process.env.LIFEBOAT_TEST_STEPS) || 0;

const HOUR = 3600_000;

/** `YYYYMMDD-HHMMSS-mmmT` of a time, as docs/FORMAT.md gives point ids. */
function pointId(ms: number, type: RetentionPoint['type']): string {
  const iso = new Date(ms).toISOString();
  return `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}-${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}-${iso.slice(20, 23)}${type[0]!.toUpperCase()}`;
}

interface History {
  points: RetentionPoint[];
  now: Date;
}

/**
 * A random history: several deployments backing up in turn, fulls, diffs and incrs in random
 * order, some taken against a point other than the newest (its newer points damaged, or gone when
 * it was taken), some referring to bytes another point of the chain holds, and now and then a
 * point missing altogether (its parent or full among them).
 */
function randomHistory(rand: () => number): History {
  const deployments = Array.from({ length: 1 + Math.floor(rand() * 4) }, (_, i) => (i === 0 ? 'default' : `dep-${i}`));
  const count = 20 + Math.floor(rand() * 380);
  const points: RetentionPoint[] = [];
  let t = Date.UTC(2026, 0, 1) + Math.floor(rand() * 300 * 24 * HOUR);
  const gapScale = pick(rand, [60_000, HOUR, 24 * HOUR]);
  for (let i = 0; i < count; i++) {
    t += 1000 + Math.floor(rand() * gapScale * 2);
    const deployment = pick(rand, deployments);
    const own = points.filter((p) => p.deployment === deployment);
    const fulls = own.filter((p) => p.type === 'full');
    const r = rand();
    const type: RetentionPoint['type'] = fulls.length === 0 || r < 0.15 ? 'full' : r < 0.45 ? 'diff' : 'incr';
    // Mostly the newest, sometimes an older one.
    const reference = (among: RetentionPoint[]) => (rand() < 0.8 ? among[among.length - 1]! : among[Math.floor(rand() * among.length)]!);
    let parent: RetentionPoint | null = null;
    if (type === 'diff') parent = reference(fulls);
    if (type === 'incr') parent = reference(own);
    const id = pointId(t, type);
    const full = parent === null ? id : parent.type === 'full' ? parent.id : parent.full;
    const point: RetentionPoint = {
      id,
      deployment,
      type,
      parent: parent?.id ?? null,
      full,
      completedAt: new Date(t + Math.floor(rand() * 500)).toISOString(),
    };
    if (parent && rand() < 0.15) {
      // Bytes stored by an older point of its chain, or by another point of its deployment.
      const chain: string[] = [];
      for (let p: RetentionPoint | undefined = parent; p; p = p.parent ? own.find((q) => q.id === p!.parent) : undefined) chain.push(p.id);
      point.references = [rand() < 0.8 ? pick(rand, chain) : pick(rand, own).id];
    }
    points.push(point);
  }
  // A few points missing: their manifests moved out, or lost.
  const missing = rand() < 0.3 ? Math.floor(rand() * 4) : 0;
  for (let i = 0; i < missing && points.length > 1; i++) points.splice(Math.floor(rand() * points.length), 1);
  const now = new Date(t + Math.floor(rand() * pick(rand, [1000, HOUR, 10 * 24 * HOUR])));
  return { points, now };
}

function randomPolicy(rand: () => number, history: History): RetentionPolicy {
  const policy: RetentionPolicy = { keepFull: pick(rand, [1, 1, 2, 3, 1 + Math.floor(rand() * 10), 1000]) };
  const diff = rand();
  if (diff < 0.6) policy.keepDiff = pick(rand, [0, 0, 1, 2, Math.floor(rand() * 20), 1000]);
  const within = rand();
  if (within < 0.2) policy.keepWithinMs = 0;
  else if (within < 0.7 && history.points.length > 0) {
    // A window ending between two points' completions, or just past one.
    const around = Date.parse(pick(rand, history.points).completedAt);
    policy.keepWithinMs = Math.max(0, history.now.getTime() - around + Math.floor((rand() - 0.5) * 2 * 60_000));
  } else if (within < 0.8) policy.keepWithinMs = 1000 * 24 * HOUR;
  if (policy.keepWithinMs !== undefined) policy.keepWithin = `${policy.keepWithinMs / 1000}s`;
  return policy;
}

test('the retention planner keeps exactly the points README says, over random histories', (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const rand = prng(seed);
  const rounds = STEPS ? STEPS * 10 : 400;
  for (let round = 0; round < rounds; round++) {
    const history = randomHistory(rand);
    const policy = randomPolicy(rand, history);
    const pins = new Map<string, string>();
    const pinCount = rand() < 0.5 ? 0 : Math.floor(rand() * 6);
    for (let i = 0; i < pinCount && history.points.length > 0; i++) pins.set(pick(rand, history.points).id, `pinned: hold ${i}`);
    const deployments = [...new Set(history.points.map((p) => p.deployment))];
    const deployment = rand() < 0.3 ? pick(rand, deployments) : undefined;
    const plan = planRetention(history.points, policy, { now: history.now, protected: pins, deployment });
    const expected = oracleKeep(history.points, { keepFull: policy.keepFull!, keepDiff: policy.keepDiff, keepWithinMs: policy.keepWithinMs }, { now: history.now, protected: pins.keys(), deployment });
    const kept = new Set(plan.keep.map((d) => d.id));
    const where = `round ${round} (seed ${seed}): ${history.points.length} points, policy ${JSON.stringify(policy)}, now ${history.now.toISOString()}, deployment ${deployment ?? '(each)'}, pins ${[...pins.keys()].join(' ')}`;
    assert.equal(plan.keep.length + plan.remove.length, history.points.length, `every point decided once; ${where}`);
    assert.deepEqual(new Set([...plan.keep, ...plan.remove].map((d) => d.id)), new Set(history.points.map((p) => p.id)), where);
    const onlyPlanner = [...kept].filter((id) => !expected.has(id));
    const onlyOracle = [...expected].filter((id) => !kept.has(id));
    if (onlyPlanner.length > 0 || onlyOracle.length > 0) {
      const show = (id: string) => {
        const p = history.points.find((q) => q.id === id)!;
        const d = [...plan.keep, ...plan.remove].find((q) => q.id === id)!;
        return `${id} ${p.deployment} parent ${p.parent} full ${p.full}${p.references ? ` refs ${p.references.join(',')}` : ''}: ${d.reasons.join('; ')}`;
      };
      assert.fail(`${where}\nkept by the planner only:\n  ${onlyPlanner.map(show).join('\n  ')}\nkept by the oracle only:\n  ${onlyOracle.map(show).join('\n  ')}`);
    }
    for (const d of [...plan.keep, ...plan.remove]) assert.ok(d.reasons.length > 0, `${d.id} has a reason; ${where}`);
    for (const [id, reason] of pins) assert.ok(plan.keep.find((d) => d.id === id)!.reasons.includes(reason), `${id} kept saying "${reason}"; ${where}`);
  }
});

/** Preloaded into a backup so that it runs on a clock set to the time the history gives it. */
const SHIFTED_CLOCK = pathToFileURL(path.join(path.dirname(fileURLToPath(import.meta.url)), 'helpers', 'shifted-clock.js')).href;

interface Listed extends OraclePoint {
  pinned: boolean;
  pinReason: string | null;
}

interface Decided {
  id: string;
  type: string;
  reasons: string[];
}

const sorted = (ids: Iterable<string>) => [...ids].sort();

test('prune on a real repository of two deployments keeps what README says, dry run and prune agree, and what stays restores', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const rand = prng(seed);
  const steps = STEPS || 40;
  const work = await tempDir();
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const deployments = ['alpha', 'beta'];
  const sources = new Map<string, string>();
  for (const d of deployments) {
    const src = path.join(work, d, 'models');
    await fsp.mkdir(path.join(src, 'tok'), { recursive: true });
    await fsp.writeFile(path.join(src, 'keep.txt'), `${d}\n`);
    for (let i = 0; i < 4; i++) await writeRandomFile(path.join(src, i % 2 ? 'tok' : '', `f${i}.bin`), 1 + Math.floor(rand() * 30_000), rand);
    sources.set(d, src);
  }
  // The history's clock: backups every hour to two days, ending well before now.
  let clock = Date.now() - (steps * 2 + 2) * 24 * HOUR;
  const trees = new Map<string, Map<string, SnapshotEntry>>();
  // Summaries made unreadable since the last prune.
  const damagedSummaries = new Set<string>();
  // A target that serves alpha's points: what it serves now and before (where rollback goes) is kept.
  await fsp.writeFile(
    path.join(work, 'serve.yaml'),
    [`repository: ${repo}`, 'deployment: alpha', 'targets:', '  prod:', `    slots: ${path.join(work, 'slots')}`, `    active: ${path.join(work, 'current')}`, "    health: { command: 'true', timeout: 10s }", '    keepSlots: 2', ''].join('\n'),
  );
  const target: { served?: string; previous?: string } = {};
  const big = path.join(work, 'big', 'models');
  await fsp.mkdir(big, { recursive: true });
  await writeRandomFile(path.join(big, 'weights.bin'), 24 << 20, rand);
  const log: string[] = [];
  let passed = false;
  // What happened, step by step, when the test fails.
  t.after(() => {
    if (!passed) for (const line of log) t.diagnostic(line);
  });

  const prunes = async (step: number) => {
    const listed: Listed[] = (await lifeboat(['--repo', repo, '--json', 'list', '--all'])).json();
    const present = new Set(listed.map((p) => p.id));
    // The points holding a point's bytes, from its manifest (docs/FORMAT.md: each file's `ref`).
    const references = async (id: string) => {
      const manifest = JSON.parse(await fsp.readFile(path.join(repo, 'points', `${id}.json`), 'utf8')) as { entries: { ref?: { point: string } }[] };
      return [...new Set(manifest.entries.flatMap((e) => (e.ref ? [e.ref.point] : [])))];
    };
    const points: OraclePoint[] = await Promise.all(listed.map(async (p) => ({ ...p, references: await references(p.id) })));

    // A policy from flags, from the config file, or some of each (flags override the file's keys).
    const keepFull = pick(rand, [1, 1, 2, 3, 10]);
    const keepDiff = pick(rand, [undefined, undefined, 0, 1, 2, 5]);
    let keepWithin: string | undefined;
    let keepWithinMs: number | undefined;
    const w = rand();
    if (w < 0.1) [keepWithin, keepWithinMs] = ['0', 0];
    else if (w < 0.6) {
      // Ending 5 to 20 minutes on either side of a point's completion; points are an hour or more apart.
      const around = Date.parse(pick(rand, listed).completedAt);
      const minutes = Math.max(1, Math.round((Date.now() - around) / 60_000 + (rand() < 0.5 ? -1 : 1) * (5 + rand() * 15)));
      [keepWithin, keepWithinMs] = [`${minutes}m`, minutes * 60_000];
    }
    const withPoints = deployments.filter((d) => listed.some((p) => p.deployment === d));
    const deployment = rand() < 0.5 ? undefined : pick(rand, withPoints);
    const fromFile = rand() < 0.5;
    const flags: string[] = [];
    const file: string[] = [];
    const put = (flag: string, key: string, value: string | number) => {
      if (fromFile && rand() < 0.75) file.push(`${key}: ${value}`);
      else flags.push(flag, String(value));
    };
    put('--keep-full', 'keepFull', keepFull);
    if (keepDiff !== undefined) put('--keep-diff', 'keepDiff', keepDiff);
    if (keepWithin !== undefined) put('--keep-within', 'keepWithin', keepWithin);
    const head = fromFile ? ['--config', path.join(work, `prune-${step}.yaml`)] : ['--repo', repo];
    if (fromFile) {
      const yaml = [`repository: ${repo}`, ...(file.length > 0 ? [`retention: { ${file.join(', ')} }`] : []), ...(deployment ? [`deployment: ${deployment}`] : [])];
      await fsp.writeFile(path.join(work, `prune-${step}.yaml`), `${yaml.join('\n')}\n`);
    } else if (deployment) head.push('--deployment', deployment);
    const command = [...head, '--json', 'prune', ...flags];
    log.push(`step ${step}: lifeboat ${command.join(' ')}${fromFile ? ` (file: ${file.join(', ')}${deployment ? `, deployment ${deployment}` : ''})` : ''}`);

    const pins = listed.filter((p) => p.pinned).map((p) => p.id);
    const served = [target.served, target.previous].filter((id): id is string => id !== undefined);
    const expected = oracleKeep(points, { keepFull, keepDiff, keepWithinMs }, { now: new Date(), protected: [...pins, ...served], deployment });
    const before = await repoFiles(repo);
    const dry = await lifeboat([...command, '--dry-run']);
    assert.equal(dry.code, 0, dry.stderr);
    const planned = dry.json() as { keep: Decided[]; remove: Decided[]; objects: string[] };
    const describe = (ids: Iterable<string>) =>
      [...ids].map((id) => {
        const p = listed.find((q) => q.id === id)!;
        const d = [...planned.keep, ...planned.remove].find((q) => q.id === id);
        return `${id} (${p.deployment}, parent ${p.parent}${p.pinned ? ', pinned' : ''}): ${d?.reasons.join('; ')}`;
      });
    const keptByDry = new Set(planned.keep.map((d) => d.id));
    const onlyLifeboat = [...keptByDry].filter((id) => !expected.has(id));
    const onlyOracle = [...expected].filter((id) => !keptByDry.has(id));
    assert.ok(
      onlyLifeboat.length === 0 && onlyOracle.length === 0,
      `seed ${seed}, step ${step}: kept by lifeboat only:\n  ${describe(onlyLifeboat).join('\n  ')}\nkept by the oracle only:\n  ${describe(onlyOracle).join('\n  ')}\n${listed.map((p) => `${p.id} ${p.deployment} parent ${p.parent} ${p.completedAt}${p.pinned ? ' pinned' : ''}`).join('\n')}`,
    );
    assert.deepEqual(sorted(planned.remove.map((d) => d.id)), sorted([...present].filter((id) => !expected.has(id))));
    assert.deepEqual(await repoFiles(repo), before, 'a dry run changes nothing');

    const real = await lifeboat(command);
    assert.equal(real.code, 0, real.stderr);
    const done = real.json() as { keep: Decided[]; remove: Decided[]; objects: string[] };
    assert.deepEqual(sorted(done.remove.map((d) => d.id)), sorted(planned.remove.map((d) => d.id)), 'the prune removes the points its dry run named');
    const after = await repoFiles(repo);
    // The lock a killed backup left is taken over and given back: not one of the deletions planned.
    const gone = before.filter((f) => !after.includes(f) && f !== 'locks/lock.json');
    assert.deepEqual(sorted(gone), sorted(planned.objects), 'the prune deletes exactly the objects its dry run named');
    assert.deepEqual(sorted(done.objects), sorted(planned.objects));
    const added = after.filter((f) => !before.includes(f) && !f.startsWith('journal/'));
    assert.deepEqual(added, [], 'a prune writes nothing but its journal entry');
    log.push(`  kept ${sorted(expected).join(' ')}; removed ${done.remove.map((d) => d.id).join(' ')}`);

    // What is left: the kept points, whole, and nothing of the others.
    const remaining: Listed[] = (await lifeboat(['--repo', repo, '--json', 'list', '--all'])).json();
    assert.deepEqual(sorted(remaining.map((p) => p.id)), sorted(expected));
    for (const d of done.remove) {
      const left = after.filter((f) => f.startsWith(`data/${d.id}/`) || f === `points/${d.id}.json` || f === `summaries/${d.id}.json`);
      assert.deepEqual(left, [], `nothing of removed point ${d.id} stays`);
    }
    for (const p of remaining) assert.equal(p.pinned, pins.includes(p.id), `${p.id} pinned as before`);
    // A damaged summary of a kept point is reported once, and written again from its manifest.
    const damaged = remaining.filter((p) => damagedSummaries.has(p.id)).map((p) => p.id);
    damagedSummaries.clear();
    if (damaged.length > 0) {
      const reported = await lifeboat(['--repo', repo, '--json', 'verify']);
      assert.equal(reported.code, 3, reported.stdout + reported.stderr);
      assert.deepEqual(sorted(reported.json().problems.map((p: { point: string; kind: string }) => `${p.point} ${p.kind}`)), sorted(damaged.map((id) => `${id} summary-mismatch`)));
    }
    const verified = await lifeboat(['--repo', repo, '--json', 'verify']);
    assert.equal(verified.code, 0, verified.stdout + verified.stderr);
    assert.deepEqual(verified.json().problems, []);
    assert.deepEqual(verified.json().warnings, [], 'no leftover');
    for (const p of remaining) {
      const target = path.join(work, 'restored');
      const restored = await lifeboat(['--repo', repo, 'restore', p.id, '--target', target]);
      assert.equal(restored.code, 0, restored.stderr);
      assert.equal(compareSnapshots(trees.get(p.id)!, await snapshotTree(path.join(target, 'models'))), undefined, `${p.id} restores as it was taken`);
      await fsp.rm(target, { recursive: true });
    }
    // status names each deployment's newest point; diff of two kept points says what changed between their trees.
    const status = await lifeboat(['--repo', repo, '--json', 'status']);
    const newestOf = (d: string) => remaining.filter((p) => p.deployment === d).at(-1)?.id;
    const left = deployments.filter((d) => newestOf(d) !== undefined);
    if (left.length > 1) {
      assert.deepEqual(
        status.json().deployments.map((n: { deployment: string; id: string }) => `${n.deployment} ${n.id}`).sort(),
        left.map((d) => `${d} ${newestOf(d)}`).sort(),
        status.stdout,
      );
    } else assert.equal(status.json().newest?.id, newestOf(left[0]!), status.stdout);
    const compared = pick(rand, left);
    const ofOne = remaining.filter((p) => p.deployment === compared);
    const [from, to] = [pick(rand, ofOne), pick(rand, ofOne)];
    const diff = await lifeboat(['--repo', repo, '--json', 'diff', from.id, to.id]);
    assert.equal(diff.code, 0, diff.stderr);
    const [a, b] = [trees.get(from.id)!, trees.get(to.id)!];
    const shown = diff.json() as { added: string[]; removed: string[]; changed: { path: string; what: string[] | string }[] };
    assert.deepEqual(sorted(shown.added), sorted([...b.keys()].filter((k) => !a.has(k)).map((k) => `models/${k}`)), `diff ${from.id} ${to.id}: added`);
    assert.deepEqual(sorted(shown.removed), sorted([...a.keys()].filter((k) => !b.has(k)).map((k) => `models/${k}`)), `diff ${from.id} ${to.id}: removed`);
    const changed = new Set(shown.changed.map((c) => c.path));
    for (const [k, e] of a) {
      const f = b.get(k);
      if (!f) continue;
      const differs = e.sha256 !== f.sha256 || e.mode !== f.mode || e.type !== f.type;
      if (differs) assert.ok(changed.has(`models/${k}`), `diff ${from.id} ${to.id} names ${k}, changed`);
      if (changed.has(`models/${k}`)) assert.ok(differs || e.mtimeMs !== f.mtimeMs || e.size !== f.size, `diff ${from.id} ${to.id} names ${k}, which did not change`);
    }
  };

  for (let step = 0; step < steps; step++) {
    const listed: Listed[] = (await lifeboat(['--repo', repo, '--json', 'list', '--all'])).json();
    const r = rand();
    if (listed.length === 0 || r < 0.62) {
      const deployment = pick(rand, deployments);
      const src = sources.get(deployment)!;
      await mutateTree(src, rand, step, { operations: 1 + Math.floor(rand() * 4), sizeOf: (rnd) => Math.floor(rnd() * 20_000), skip: (f) => f.endsWith('keep.txt') });
      const type = pick(rand, ['full', 'diff', 'diff', 'incr', 'incr', 'incr']);
      clock += HOUR + Math.floor(rand() * 47 * HOUR);
      const taken = await runChild(['--repo', repo, '--deployment', deployment, '--json', 'backup', src, '--type', type], {
        env: { NODE_OPTIONS: `--import=${SHIFTED_CLOCK}`, SHIFTED_CLOCK_AT: new Date(clock).toISOString() },
      });
      assert.equal(taken.code, 0, taken.stderr);
      const point = taken.json() as { id: string; type: string; parent: string | null };
      const idTime = Date.parse(point.id.replace(/^(\d{4})(\d\d)(\d\d)-(\d\d)(\d\d)(\d\d)-(\d{3}).$/, '$1-$2-$3T$4:$5:$6.$7Z'));
      assert.ok(Math.abs(idTime - clock) < 60_000, `${point.id} was taken on the clock given it, ${new Date(clock).toISOString()}`);
      trees.set(point.id, await snapshotTree(src));
      log.push(`step ${step}: ${deployment} ${point.type} ${point.id} on ${point.parent}`);
    } else if (r < 0.67) {
      // A backup killed (kill -9) while it stores a large file: it leaves a temporary file, or volumes without a manifest.
      const deployment = pick(rand, deployments);
      const child = spawnLifeboat(['--repo', repo, '--deployment', deployment, 'backup', big, '--type', 'full']);
      const exited = new Promise((resolve) => child.once('exit', resolve));
      const wait = Math.floor(rand() * 3);
      let writes = 0;
      await waitFor(async () => {
        const pending = await fsp.readdir(path.join(repo, '.tmp')).catch(() => []);
        return pending.length > 0 && writes++ >= wait;
      }, 20_000);
      child.kill('SIGKILL');
      await exited;
      const after: Listed[] = (await lifeboat(['--repo', repo, '--json', 'list', '--all'])).json();
      const committed = after.find((p) => !listed.some((q) => q.id === p.id));
      if (committed) trees.set(committed.id, await snapshotTree(big));
      log.push(`step ${step}: ${deployment} backup killed${committed ? `, after it committed ${committed.id}` : ''}: ${(await repoFiles(repo)).filter((f) => f.startsWith('.tmp/')).join(' ')}`);
    } else if (r < 0.72) {
      // A summary lost (a point written before summaries existed) or damaged: it is read from the manifest instead.
      const p = pick(rand, listed);
      const summary = path.join(repo, 'summaries', `${p.id}.json`);
      if (rand() < 0.5) await fsp.rm(summary, { force: true });
      else if (await fsp.stat(summary).catch(() => undefined)) {
        await fsp.writeFile(summary, '{"format": 1, "id": "');
        damagedSummaries.add(p.id);
      }
      log.push(`step ${step}: summary of ${p.id} ${damagedSummaries.has(p.id) ? 'damaged' : 'removed'}`);
    } else if (r < 0.79) {
      // A failover of the target to another of alpha's points.
      const candidates = listed.filter((p) => p.deployment === 'alpha' && p.id !== target.served);
      if (candidates.length === 0) continue;
      const p = pick(rand, candidates);
      const switched = await lifeboat(['--config', path.join(work, 'serve.yaml'), '--json', 'failover', p.id, '--to', 'prod']);
      assert.equal(switched.code, 0, switched.stdout + switched.stderr);
      [target.previous, target.served] = [target.served, p.id];
      log.push(`step ${step}: failover to ${p.id} (previous ${target.previous})`);
    } else if (r < 0.88) {
      const pinned = listed.filter((p) => p.pinned);
      if (pinned.length > 0 && rand() < 0.4) {
        const p = pick(rand, pinned);
        assert.equal((await lifeboat(['--repo', repo, 'unpin', p.id])).code, 0);
        log.push(`step ${step}: unpin ${p.id}`);
      } else {
        const p = pick(rand, listed);
        const pinned = await lifeboat(['--repo', repo, 'pin', p.id, '--reason', `hold ${step}`]);
        assert.equal(pinned.code, 0, pinned.stderr);
        log.push(`step ${step}: pin ${p.id}`);
      }
    } else await prunes(step);
  }
  await prunes(steps);
  passed = true;
  await fsp.rm(work, { recursive: true, force: true });
});
