import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { tempDir } from './helpers/tree.js';
import { planRetention, type RetentionPoint } from '../src/core/retention.js';
import { encodeDocument } from '../src/format/document.js';
import { backup as takeBackup } from '../src/core/backup.js';
import { Repository } from '../src/core/repository.js';
import { pointTime } from '../src/format/ids.js';
import { LocalStorage } from '../src/storage/local.js';
import { status } from '../src/core/failover.js';
import { MANIFEST_FORMAT, summarize, type Manifest } from '../src/format/manifest.js';

/** Two hosts, each serving its own model, back up into one repository under the same source name. */
async function sharedRepository() {
  const work = await tempDir();
  const repo = path.join(work, 'repo');
  const models = { a: path.join(work, 'host-a', 'models'), b: path.join(work, 'host-b', 'models') };
  for (const [name, dir] of Object.entries(models)) {
    await fsp.mkdir(dir, { recursive: true });
    await fsp.writeFile(path.join(dir, 'weights.bin'), `weights of ${name} `.repeat(1000));
    await fsp.writeFile(path.join(dir, `only-${name}.json`), `{"model": "${name}"}\n`);
  }
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const backup = async (deployment: 'a' | 'b', ...args: string[]) => {
    const run = await lifeboat(['--repo', repo, '--deployment', deployment, '--json', 'backup', '--source', `models=${models[deployment]}`, ...args]);
    assert.equal(run.code, 0, run.stderr);
    return { ...run.json(), stderr: run.stderr };
  };
  return { work, repo, models, backup };
}

test('deployments sharing a repository: each backup builds on its own deployment, and latest asks which', async () => {
  const { work, repo, backup } = await sharedRepository();
  const a1 = await backup('a', '--type', 'full');
  assert.equal(a1.deployment, 'a');

  // b's first backup has nothing of its own to build on: a's point is not its reference.
  const b1 = await backup('b');
  assert.equal(b1.type, 'full');
  assert.equal(b1.parent, null);
  assert.match(b1.stderr, /deployment b has no backup in this repository yet \(its deployments: a\), so this incr backup is taken as a full/);

  // a's incremental builds on a's own point, not on b's newer one: nothing changed, nothing stored.
  const a2 = await backup('a');
  assert.equal(a2.parent, a1.id);
  assert.deepEqual([a2.added, a2.changed, a2.removed, a2.storedBytes], [0, 0, 0, 0]);
  const b2 = await backup('b', '--type', 'diff');
  assert.equal(b2.parent, b1.id);
  assert.equal(b2.storedBytes, 0);

  const listed = (await lifeboat(['--repo', repo, '--json', 'list'])).json();
  assert.deepEqual(listed.map((p: { deployment: string }) => p.deployment), ['a', 'b', 'a', 'b']);
  const table = await lifeboat(['--repo', repo, 'list']);
  assert.match(table.stdout, /^ID\s+DEPLOYMENT\s+TYPE/);
  assert.match(table.stdout, new RegExp(`${a2.id}\\s+a\\s+incr`));
  // With a deployment named, list shows its points, so that the last id listed is one of its own.
  const ofA = await lifeboat(['--repo', repo, '--deployment', 'a', '--json', 'list']);
  assert.deepEqual(ofA.json().map((p: { id: string }) => p.id), [a1.id, a2.id]);
  assert.match((await lifeboat(['--repo', repo, '--deployment', 'a', 'list'])).stdout, /\n2 point\(s\) of other deployments \(b\) not shown; list --all shows them\n$/);
  assert.equal((await lifeboat(['--repo', repo, '--deployment', 'a', '--json', 'list', '--all'])).json().length, 4);

  // latest and times select within one deployment; without one, the repository asks which.
  const target = (name: string) => path.join(work, 'restored', name);
  const ambiguous = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target('x')]);
  assert.equal(ambiguous.code, 2, ambiguous.stderr);
  assert.match(ambiguous.stderr, /holds the backups of 2 deployments \(a, b\); say which\n {2}add --deployment a \(or deployment: in lifeboat\.yaml\), or give a point id/);
  await assert.rejects(fsp.access(target('x')));

  const byFlag = await lifeboat(['--repo', repo, '--json', '--deployment', 'a', 'restore', 'latest', '--target', target('flag')]);
  assert.equal(byFlag.code, 0, byFlag.stderr);
  assert.equal(byFlag.json().point, a2.id);
  await fsp.access(path.join(target('flag'), 'models', 'only-a.json'));

  const byEnv = await lifeboat(['--repo', repo, '--json', 'restore', new Date().toISOString(), '--target', target('env')], { env: { LIFEBOAT_DEPLOYMENT: 'b' } });
  assert.equal(byEnv.json().point, b2.id);

  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ${repo}\ndeployment: b\ntargets:\n  prod: { slots: ./slots, active: ./current, health: { command: "true" } }\n`);
  const byConfig = await lifeboat(['--json', 'show', 'latest'], { cwd: work });
  assert.equal(byConfig.json().id, b2.id);
  assert.equal(byConfig.json().deployment, 'b');
  // An id of another deployment, copied from list, does not go into service.
  const wrongModel = await lifeboat(['failover', a2.id, '--to', 'prod'], { cwd: work });
  assert.equal(wrongModel.code, 2, wrongModel.stderr);
  assert.match(wrongModel.stderr, new RegExp(`point ${a2.id} is a backup of deployment a, not of b, which prod serves\n {2}choose a point of b \\(lifeboat list\\), or name the deployment with --deployment a`));
  await assert.rejects(fsp.lstat(path.join(work, 'current')), 'nothing was switched');
  const right = await lifeboat(['failover', b1.id, '--to', 'prod'], { cwd: work });
  assert.equal(right.code, 0, right.stderr);
  // Named nowhere, the deployment of the point the target serves stands in.
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ${repo}\ntargets:\n  prod: { slots: ./slots, active: ./current, health: { command: "true" } }\n`);
  const unnamedWrong = await lifeboat(['failover', a2.id, '--to', 'prod'], { cwd: work });
  assert.equal(unnamedWrong.code, 2, unnamedWrong.stderr);
  assert.match(unnamedWrong.stderr, /is a backup of deployment a, not of b, which prod serves/);
  const meant = await lifeboat(['--deployment', 'a', 'failover', a2.id, '--to', 'prod'], { cwd: work });
  assert.equal(meant.code, 0, meant.stderr);
  // A probe of the shared repository, naming no deployment, gets each one's newest point and RPO.
  const status = await lifeboat(['--json', 'status'], { cwd: work });
  assert.equal(status.code, 0, status.stderr);
  const st = status.json();
  assert.equal(st.newest, null);
  assert.deepEqual(st.deployments.map((d: { deployment: string; id: string }) => [d.deployment, d.id]), [['a', a2.id], ['b', b2.id]]);
  assert.equal(st.targets[0].rpoMs, st.deployments[0].ageMs, 'a target\'s RPO is that of the deployment it serves');
  const statusText = await lifeboat(['status'], { cwd: work });
  assert.match(statusText.stdout, new RegExp(`^deployment a: newest backup ${a2.id}, .* ago \\(RPO\\)\ndeployment b: newest backup ${b2.id}`));
  // A point id needs no deployment.
  assert.equal((await lifeboat(['--repo', repo, '--json', 'show', a1.id])).json().deployment, 'a');
  assert.match((await lifeboat(['--repo', repo, 'show', a1.id])).stdout, new RegExp(`^point ${a1.id} \\(full\\) of deployment a, completed`));

  const unknown = await lifeboat(['--repo', repo, '--deployment', 'c', 'restore', 'latest', '--target', target('c')]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /has no backup points of deployment c\n {2}its deployments: a, b/);
  const invalid = await lifeboat(['--repo', repo, '--deployment', '../a', 'list']);
  assert.equal(invalid.code, 2);
  assert.match(invalid.stderr, /deployment name "\.\.\/a" is invalid/);
  await fsp.rm(work, { recursive: true, force: true });
});

test('prune applies the policy to each deployment on its own: one deployment\'s fulls never push out another\'s', async () => {
  const { work, repo, backup } = await sharedRepository();
  const a1 = await backup('a', '--type', 'full');
  const a2 = await backup('a');
  const b: { id: string }[] = [];
  for (let i = 0; i < 3; i++) b.push(await backup('b', '--type', 'full'));

  const prune = async (...args: string[]) => {
    const run = await lifeboat(['--repo', repo, '--json', ...args, 'prune', '--keep-full', '1']);
    assert.equal(run.code, 0, run.stderr);
    return run.json();
  };
  // Only a's points are pruned when a is named; b's three fulls stay.
  const onlyA = await prune('--deployment', 'a');
  assert.deepEqual(onlyA.remove, []);
  assert.deepEqual(onlyA.keep.find((d: { id: string }) => d.id === b[0].id).reasons, ['deployment b is not pruned here']);

  const all = await prune();
  assert.deepEqual(all.remove.map((d: { id: string }) => d.id), [b[0].id, b[1].id]);
  const left = (await lifeboat(['--repo', repo, '--json', 'list'])).json().map((p: { id: string }) => p.id);
  assert.deepEqual(left, [a1.id, a2.id, b[2].id]);
  assert.equal((await lifeboat(['--repo', repo, 'verify', '--read-data'])).code, 0);
  await fsp.rm(work, { recursive: true, force: true });
});

test('retention plan: the newest point and keep-full count per deployment', () => {
  const point = (id: string, deployment: string, type: RetentionPoint['type'], parent: string | null, full: string): RetentionPoint => ({
    id,
    deployment,
    type,
    parent,
    full,
    completedAt: new Date(Date.UTC(2026, 10, 1, Number(id.slice(9, 11)))).toISOString(),
  });
  const points = [
    point('20261101-010000-000F', 'a', 'full', null, '20261101-010000-000F'),
    point('20261101-020000-000I', 'a', 'incr', '20261101-010000-000F', '20261101-010000-000F'),
    point('20261101-030000-000F', 'b', 'full', null, '20261101-030000-000F'),
    point('20261101-040000-000F', 'b', 'full', null, '20261101-040000-000F'),
    point('20261101-050000-000F', 'a', 'full', null, '20261101-050000-000F'),
  ];
  const plan = planRetention(points, { keepFull: 1 }, { now: new Date(Date.UTC(2026, 10, 2)) });
  assert.deepEqual(
    plan.remove.map((d) => [d.id, d.reasons]),
    [
      ['20261101-010000-000F', ['older than the 1 newest full(s)']],
      ['20261101-020000-000I', ['its parent 20261101-010000-000F is not kept by the policy']],
      ['20261101-030000-000F', ['older than the 1 newest full(s)']],
    ],
  );
  assert.deepEqual(
    plan.keep.map((d) => [d.id, d.reasons]),
    [
      ['20261101-040000-000F', ['the newest full', 'the newest point']],
      ['20261101-050000-000F', ['the newest full', 'the newest point']],
    ],
  );
});

test('an unnamed backup building on a point another host took says how to keep deployments apart', async () => {
  const { work, repo, models } = await sharedRepository();
  const backup = (...args: string[]) => lifeboat(['--repo', repo, 'backup', '--source', `models=${models.a}`, ...args]);
  assert.equal((await backup()).code, 0);
  assert.doesNotMatch((await backup()).stderr, /taken on host/, 'this host took it');

  // The newest point as another host would have written it.
  const takenElsewhere = async () => {
    const [newest] = (await lifeboat(['--repo', repo, '--json', 'list'])).json().slice(-1);
    const file = path.join(repo, 'points', `${newest.id}.json`);
    const { checksum: _, ...manifest } = JSON.parse(await fsp.readFile(file, 'utf8'));
    await fsp.writeFile(file, encodeDocument({ ...manifest, host: 'gpu-node-7' }));
    return newest.id as string;
  };
  await takenElsewhere();
  // A named deployment has said what it is.
  const named = await backup('--deployment', 'default');
  assert.equal(named.code, 0, named.stderr);
  assert.doesNotMatch(named.stderr, /taken on host/);

  const elsewhere = await takenElsewhere();
  const unnamed = await backup();
  assert.equal(unnamed.code, 0, unnamed.stderr);
  assert.match(unnamed.stderr, new RegExp(`this incr builds on ${elsewhere}, taken on host gpu-node-7; if this host backs up another deployment, name each with --deployment`));
  await fsp.rm(work, { recursive: true, force: true });
});

test('deployments.json spares latest from reading every point when the repository holds one deployment, and is rebuilt from the points when missing', async () => {
  const { work, repo, models, backup } = await sharedRepository();
  const unnamed = (...args: string[]) => lifeboat(['--repo', repo, '--json', ...args]);
  const first = (await unnamed('backup', '--source', `models=${models.a}`)).json().id;
  const newest = (await unnamed('backup', '--source', `models=${models.a}`, '--type', 'full')).json().id;
  const record = path.join(repo, 'deployments.json');
  assert.deepEqual(JSON.parse(await fsp.readFile(record, 'utf8')).names, ['default']);

  // An old point damaged beyond reading: latest does not need it.
  await fsp.writeFile(path.join(repo, 'points', `${first}.json`), '{}');
  await fsp.writeFile(path.join(repo, 'summaries', `${first}.json`), '{}');
  const target = path.join(work, 'restored');
  const latest = await unnamed('restore', 'latest', '--target', target);
  assert.equal(latest.code, 0, latest.stderr);
  assert.equal(latest.json().point, newest);
  await fsp.rm(path.join(repo, 'points', `${first}.json`));
  await fsp.rm(path.join(repo, 'summaries', `${first}.json`));

  // A repository written before the record: the first named backup makes it from every point, unnamed ones included.
  await fsp.rm(record);
  await backup('b');
  assert.deepEqual(JSON.parse(await fsp.readFile(record, 'utf8')).names, ['b', 'default']);
  const ambiguous = await unnamed('restore', 'latest', '--target', target);
  assert.equal(ambiguous.code, 2, ambiguous.stderr);

  // A name recorded by a backup that then failed: latest reads the points and finds one deployment after all.
  await fsp.rm(path.join(repo, 'points', `${newest}.json`));
  await fsp.rm(path.join(repo, 'summaries', `${newest}.json`));
  const onlyB = await unnamed('show', 'latest');
  assert.equal(onlyB.code, 0, onlyB.stderr);
  assert.equal(onlyB.json().deployment, 'b');
  await fsp.rm(work, { recursive: true, force: true });
});

test('verify finds a deployments.json that lacks a deployment with points, and writes it again with it', async () => {
  const { work, repo, backup } = await sharedRepository();
  await backup('a');
  const b1 = await backup('b');
  const record = path.join(repo, 'deployments.json');
  const names = async () => JSON.parse(await fsp.readFile(record, 'utf8')).names;
  const verify = () => lifeboat(['--repo', repo, '--json', 'verify']);
  const ambiguousLatest = async () => (await lifeboat(['--repo', repo, '--json', 'show', 'latest'])).code === 2;
  assert.ok(await ambiguousLatest());

  // As a lifeboat older than b's backups leaves it: one name, so latest would take b's point for the only deployment's.
  await fsp.writeFile(record, encodeDocument({ format: 1, names: ['a'] }));
  assert.ok(!(await ambiguousLatest()));
  const lacking = await verify();
  assert.equal(lacking.code, 3, lacking.stderr);
  const found = lacking.json().problems;
  assert.equal(found.length, 1, JSON.stringify(found));
  assert.equal(found[0].kind, 'deployments-record');
  assert.equal(found[0].point, b1.id);
  assert.match(found[0].detail, /does not name deployment b, which has points.*written again with them/);
  assert.deepEqual(await names(), ['a', 'b']);
  assert.ok(await ambiguousLatest());
  assert.equal((await verify()).code, 0);

  // Damaged: reported and written again from the points.
  await fsp.writeFile(record, '{"format":1,"names":["a"');
  const damaged = await verify();
  assert.equal(damaged.code, 3, damaged.stderr);
  assert.match(damaged.json().problems[0].detail, /it is damaged .*deployments a, b have points/);
  assert.deepEqual(await names(), ['a', 'b']);

  // Missing (a repository written before the record) is not a problem: the next backup makes it.
  await fsp.rm(record);
  assert.equal((await verify()).code, 0);
  await fsp.rm(work, { recursive: true, force: true });
});

test('status with a deployment named gives each target the RPO of the deployment it serves, not of the one named', async () => {
  const { work, repo, backup } = await sharedRepository();
  const a1 = await backup('a');
  const b1 = await backup('b');
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ${repo}\ntargets:\n  ta: { slots: ./slots-a, active: ./current-a }\n  tb: { slots: ./slots-b, active: ./current-b }\n`);
  for (const [deployment, point, target] of [['a', a1.id, 'ta'], ['b', b1.id, 'tb']]) {
    const run = await lifeboat(['--deployment', deployment!, 'failover', point!, '--to', target!], { cwd: work });
    assert.equal(run.code, 0, run.stderr);
  }
  const b2 = await backup('b');
  const completed = new Map<string, number>((await lifeboat(['--repo', repo, '--json', 'list', '--all'])).json().map((p: { id: string; completedAt: string }) => [p.id, Date.parse(p.completedAt)]));

  const run = await lifeboat(['--deployment', 'a', '--json', 'status'], { cwd: work });
  assert.equal(run.code, 0, run.stderr);
  const st = run.json();
  assert.equal(st.newest.id, a1.id);
  const [ta, tb] = st.targets;
  assert.equal(ta.rpoMs, st.newest.ageMs);
  // tb serves b, whose newest point is b2: its RPO is b2's age (taken with the same clock as a1's), not a1's.
  assert.equal(ta.rpoMs - tb.rpoMs, completed.get(b2.id)! - completed.get(a1.id)!);
  assert.ok(tb.rpoMs < tb.active.ageMs, 'b has a point newer than the one tb serves');
  await fsp.rm(work, { recursive: true, force: true });
});

test('a time before every point of the deployment named says whose points it means, not that the repository has none that old', async () => {
  const { work, repo, backup } = await sharedRepository();
  await backup('a');
  const b1 = await backup('b');
  const [a1] = (await lifeboat(['--repo', repo, '--json', 'list', '--all'])).json();
  // Between a's point and b's: a has one that old, b none.
  const between = new Date(Date.parse(a1.completedAt) + 1).toISOString();
  const run = await lifeboat(['--repo', repo, '--deployment', 'b', 'restore', between, '--target', path.join(work, 'restored')]);
  assert.equal(run.code, 2, run.stderr);
  assert.match(run.stderr, new RegExp(`^lifeboat: no backup point of deployment b completed at or before ${between}\n {2}the first point of deployment b to complete is ${b1.id}, at 20`));
  assert.equal((await lifeboat(['--repo', repo, '--deployment', 'a', '--json', 'show', between])).json().id, a1.id);
  await fsp.rm(work, { recursive: true, force: true });
});

test('diff of points of two deployments names each one\'s deployment, so two models are not read as one model\'s changes', async () => {
  const { work, repo, backup } = await sharedRepository();
  const a1 = await backup('a');
  const a2 = await backup('a');
  const b1 = await backup('b');
  const across = await lifeboat(['--repo', repo, '--deployment', 'b', 'diff', a1.id, 'latest']);
  assert.equal(across.code, 0, across.stderr);
  assert.match(across.stdout, new RegExp(`^${a1.id} \\(deployment a\\) → ${b1.id} \\(deployment b\\): 1 added, 1 changed, 1 removed\n`));
  const json = (await lifeboat(['--repo', repo, '--json', 'diff', a1.id, b1.id])).json();
  assert.deepEqual([json.fromDeployment, json.toDeployment], ['a', 'b']);
  const within = await lifeboat(['--repo', repo, 'diff', a1.id, a2.id]);
  assert.match(within.stdout, new RegExp(`^${a1.id} → ${a2.id}: 0 added, 0 changed, 0 removed`));
  await fsp.rm(work, { recursive: true, force: true });
});

test('another deployment\'s host whose clock runs ahead moves neither this deployment\'s ids nor makes its --strict backups fail', async () => {
  const { work, repo, models, backup } = await sharedRepository();
  const a1 = await backup('a');
  // b's newest point was taken by a host whose clock ran an hour ahead.
  const ahead = new Date(Date.now() + 3_600_000);
  const storage = new LocalStorage(repo);
  const b1 = await takeBackup(await Repository.open(storage), { sources: [{ name: 'models', path: models.b }], type: 'full', deployment: 'b', now: () => ahead });
  await storage.close();

  const before = Date.now();
  const a2 = await backup('a', '--strict');
  assert.doesNotMatch(a2.stderr, /clock/);
  assert.equal(a2.parent, a1.id);
  assert.ok(pointTime(a2.id) >= before && pointTime(a2.id) < pointTime(b1.id), `${a2.id} has this host's time, not b's`);
  const latest = await lifeboat(['--repo', repo, '--deployment', 'a', '--json', 'show', 'latest']);
  assert.equal(latest.json().id, a2.id);

  // b's own next backup is still kept after b's newest point, with the warning.
  const b2 = await lifeboat(['--repo', repo, '--deployment', 'b', '--json', 'backup', '--source', `models=${models.b}`]);
  assert.equal(b2.code, 0, b2.stderr);
  assert.match(b2.stderr, new RegExp(`before the newest point ${b1.id} .*the new point's id is set just after it`));
  assert.ok(b2.json().id > b1.id);
  assert.equal(b2.json().parent, b1.id);
  await fsp.rm(work, { recursive: true, force: true });
});

test('a deployment named that has no points in a shared repository: prune says so (exit 2) instead of pruning nothing, status does not call the repository unread', async () => {
  const { work, repo, backup } = await sharedRepository();
  await backup('a');
  await backup('a', '--type', 'full');
  await backup('b');
  for (const dryRun of [[], ['--dry-run']]) {
    const typo = await lifeboat(['--repo', repo, '--deployment', 'aa', 'prune', '--keep-full', '1', ...dryRun]);
    assert.equal(typo.code, 2, typo.stderr);
    assert.match(typo.stderr, /^lifeboat: the repository at .* has no backup points of deployment aa\n {2}did you mean a\? its deployments: a, b\n$/);
  }
  // A name as far from every deployment's as from another's is not guessed at.
  const far = await lifeboat(['--repo', repo, '--deployment', 'fraud-detector', 'prune', '--keep-full', '1', '--dry-run']);
  assert.equal(far.code, 2, far.stderr);
  assert.match(far.stderr, /\n {2}its deployments: a, b\n$/);
  assert.equal((await lifeboat(['--repo', repo, '--json', 'list', '--all'])).json().length, 3, 'nothing was removed');

  const status = await lifeboat(['--repo', repo, '--deployment', 'aa', 'status']);
  assert.equal(status.code, 2, status.stderr);
  assert.match(status.stdout, /^no backups of deployment aa yet \(did you mean a\? its deployments: a, b\)\n/);
  assert.doesNotMatch(status.stdout + status.stderr, /not read|could not be read/);
  assert.match(status.stderr, /^lifeboat: the repository at .* has no backup points of deployment aa\n/);
  const json = await lifeboat(['--repo', repo, '--deployment', 'aa', '--json', 'status']);
  assert.deepEqual([json.code, json.json().repository, json.json().newest], [2, { ok: true }, null]);
  await fsp.rm(work, { recursive: true, force: true });
});

test('an invalid deployment name from LIFEBOAT_DEPLOYMENT says that it comes from there, seen nowhere on the command line', async () => {
  const { work, repo } = await sharedRepository();
  const fromEnv = await lifeboat(['--repo', repo, 'list'], { env: { LIFEBOAT_DEPLOYMENT: 'fraud detector' } });
  assert.equal(fromEnv.code, 2, fromEnv.stderr);
  assert.match(fromEnv.stderr, /^lifeboat: deployment name "fraud detector" is invalid: .*\n {2}it comes from LIFEBOAT_DEPLOYMENT in the environment\n$/);
  const fromFlag = await lifeboat(['--repo', repo, '--deployment', 'fraud detector', 'list'], { env: { LIFEBOAT_DEPLOYMENT: 'a' } });
  assert.equal(fromFlag.code, 2, fromFlag.stderr);
  assert.doesNotMatch(fromFlag.stderr, /LIFEBOAT_DEPLOYMENT/);
  await fsp.rm(work, { recursive: true, force: true });
});

test("status with a deployment named lists that deployment's events, not another's failed drill; without one, every event", async () => {
  const { work, repo, backup } = await sharedRepository();
  const a1 = await backup('a');
  const b1 = await backup('b');
  // b's nightly drill fails its objective; a's passes.
  assert.equal((await lifeboat(['--repo', repo, '--deployment', 'b', 'drill', '--rpo', '1ms'])).code, 5);
  assert.equal((await lifeboat(['--repo', repo, '--deployment', 'a', 'drill'])).code, 0);
  const pointsOf = async (...args: string[]) => {
    const run = await lifeboat(['--repo', repo, ...args, '--json', 'status']);
    assert.equal(run.code, 0, run.stderr);
    return run.json().events.map((e: { type: string; point: string | null }) => `${e.type} ${e.point}`);
  };
  assert.deepEqual(await pointsOf('--deployment', 'a'), [`drill ${a1.id}`]);
  assert.deepEqual(await pointsOf('--deployment', 'b'), [`drill ${b1.id}`]);
  assert.deepEqual(await pointsOf(), [`drill ${b1.id}`, `drill ${a1.id}`]);
  await fsp.rm(work, { recursive: true, force: true });
});

/** A local repository that counts the summaries read. */
class CountingStorage extends LocalStorage {
  summariesRead = 0;
  override async getDocument(key: string): Promise<Buffer> {
    if (key.startsWith('summaries/')) this.summariesRead++;
    return super.getDocument(key);
  }
}

test('status of a shared repository finds every deployment\'s newest point in one pass, however long ago a retired one backed up', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const repo = path.join(work, 'repo');
  await Repository.init(new LocalStorage(repo));
  await fsp.mkdir(path.join(repo, 'points'));
  await fsp.mkdir(path.join(repo, 'summaries'));
  // Four deployments retired after their first backup (their points pinned, say), then months of one that lives on.
  const LIVE = 200;
  const owners = [...['r1', 'r2', 'r3', 'r4'], ...Array.from({ length: LIVE }, () => 'live')];
  for (const [i, deployment] of owners.entries()) {
    const at = new Date(Date.UTC(2026, 0, 1, 3) + i * 86_400_000);
    const id = `${at.toISOString().slice(0, 10).replaceAll('-', '')}-030000-000F`;
    const manifest: Manifest = {
      format: MANIFEST_FORMAT, id, type: 'full', parent: null, full: id, deployment, startedAt: at.toISOString(), completedAt: at.toISOString(), host: 'test', tags: {},
      sources: [{ name: 'models', kind: 'files', path: '/srv/models' }], volumes: [], entries: [],
      stats: { files: 0, bytes: 0, added: 0, changed: 0, removed: 0, storedBytes: 0 }, warnings: [],
    };
    await fsp.writeFile(path.join(repo, 'points', `${id}.json`), encodeDocument(manifest));
    await fsp.writeFile(path.join(repo, 'summaries', `${id}.json`), encodeDocument(summarize(manifest)));
  }
  await fsp.writeFile(path.join(repo, 'deployments.json'), encodeDocument({ format: 1, names: ['live', 'r1', 'r2', 'r3', 'r4'] }));
  const storage = new CountingStorage(repo);
  const { result } = await status(await Repository.open(storage), []);
  assert.deepEqual(result.deployments?.map((d) => d.deployment), ['live', 'r1', 'r2', 'r3', 'r4']);
  // Each point's summary read once at most, not once for each deployment retired before it.
  assert.ok(storage.summariesRead <= owners.length, `${storage.summariesRead} summaries read for ${owners.length} points`);
});

test("another deployment's newest point, damaged, does not stop this deployment's incremental", async () => {
  const { repo, backup } = await sharedRepository();
  const a1 = await backup('a', '--type', 'full');
  const b1 = await backup('b', '--type', 'full');
  // b's point is the repository's newest; its manifest loses its last bytes (a disk error, a partial copy).
  const damaged = path.join(repo, 'points', `${b1.id}.json`);
  const text = await fsp.readFile(damaged);
  await fsp.writeFile(damaged, text.subarray(0, text.length - 20));
  const a2 = await backup('a', '--type', 'incr');
  assert.equal(a2.type, 'incr');
  assert.equal(a2.parent, a1.id);
  // b's own incremental still stops, saying its reference is damaged (exit 3).
  const b2 = await lifeboat(['--repo', repo, '--deployment', 'b', 'backup', '--type', 'incr', '--source', `models=${path.join(path.dirname(repo), 'host-b', 'models')}`]);
  assert.equal(b2.code, 3, b2.stderr);
});

test("an incremental in a shared repository does not read another deployment's newest manifest, only its summary", async (t) => {
  const { work, repo, models, backup } = await sharedRepository();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const a1 = await backup('a', '--type', 'full');
  const b1 = await backup('b', '--type', 'full');
  // A local repository that counts the documents read.
  class Counting extends LocalStorage {
    readonly reads: string[] = [];
    override async getDocument(key: string): Promise<Buffer> {
      this.reads.push(key);
      return super.getDocument(key);
    }
  }
  const storage = new Counting(repo);
  t.after(() => storage.close());
  const taken = await takeBackup(await Repository.open(storage, { deployment: 'a' }), { sources: [{ name: 'models', path: models.a }], type: 'incr', deployment: 'a' });
  assert.equal(taken.type, 'incr');
  assert.equal(taken.parent, a1.id);
  assert.ok(!storage.reads.includes(`points/${b1.id}.json`), `b's manifest was read: ${storage.reads.join(', ')}`);
});
