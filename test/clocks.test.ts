import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat, runChild } from './helpers/cli.js';
import { tempDir } from './helpers/tree.js';
import { backup, type BackupResult } from '../src/core/backup.js';
import { Repository } from '../src/core/repository.js';
import { LocalStorage } from '../src/storage/local.js';
import { updateMetricsFile } from '../src/core/metrics.js';
import { verify } from '../src/core/verify.js';
import { bucketCount, bucketOf } from '../src/core/verify-ledger.js';

/** A point of `models` holding `weights`, taken on a host whose clock says `at`. */
async function pointAt(repo: string, models: string, type: 'full' | 'incr', at: string, weights: string): Promise<BackupResult> {
  await fsp.writeFile(path.join(models, 'w.bin'), weights);
  const storage = new LocalStorage(repo);
  try {
    return await backup(await Repository.open(storage), { sources: [{ name: 'models', path: models }], type, now: () => new Date(at) });
  } finally {
    await storage.close();
  }
}

/** A working directory, removed after the test, with an empty `models` source and where the repository goes. */
async function workspace(t: TestContext): Promise<{ work: string; repo: string; models: string }> {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const models = path.join(work, 'models');
  await fsp.mkdir(models);
  return { work, repo: path.join(work, 'repo'), models };
}

test('a time selects the newest state at that time, not a point from a host whose clock ran ahead that the points taken after it complete before', async (t) => {
  const { work, repo, models } = await workspace(t);
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  // The full was taken by a host whose clock ran a day ahead; the clock was set right before the next backups.
  const ahead = await pointAt(repo, models, 'full', '2026-11-25T05:00:00Z', 'v1');
  const next = await pointAt(repo, models, 'incr', '2026-11-24T06:00:00Z', 'v2');
  const newest = await pointAt(repo, models, 'incr', '2026-11-25T03:00:00Z', 'v3');
  assert.deepEqual([ahead.id, next.id, newest.id], [ahead.id, next.id, newest.id].sort(), 'ids in the order the points were taken');

  const chosen = async (selector: string) => {
    const shown = await lifeboat(['--repo', repo, '--json', 'show', selector]);
    assert.equal(shown.code, 0, shown.stderr);
    return shown.json().id as string;
  };
  assert.equal(await chosen('2026-11-24T07:00:00Z'), next.id);
  assert.equal(await chosen('2026-11-25T04:00:00Z'), newest.id);
  // Every point has completed by then, by its own clock: the newest state is the last point taken.
  for (const at of ['2026-11-25T05:30:00Z', '2026-11-25T05:30-12:00', '2026-11-26T00:00Z']) assert.equal(await chosen(at), newest.id, at);
  // Before every point: the hint names the point that completed first, not the oldest id, which completed a day later.
  const before = await lifeboat(['--repo', repo, 'show', '2026-11-24T05:00:00Z']);
  assert.equal(before.code, 2, before.stderr);
  assert.equal(before.stderr, `lifeboat: no backup point completed at or before 2026-11-24T05:00:00Z\n  the first point to complete is ${next.id}, at 2026-11-24T06:00:00.000Z\n`);
  const restored = path.join(work, 'restored');
  assert.equal((await lifeboat(['--repo', repo, 'restore', '2026-11-25T05:30:00Z', '--target', restored])).code, 0);
  assert.equal(await fsp.readFile(path.join(restored, 'models', 'w.bin'), 'utf8'), 'v3');
});

test('a full backup on a host whose clock is behind a point that cannot be read gets an id after it, so that latest and the next incremental are the new full, not the damaged point', async (t) => {
  const { repo, models } = await workspace(t);
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  await pointAt(repo, models, 'full', '2026-11-24T06:00:00Z', 'v1');
  // Taken by a host whose clock ran a day ahead; then its summary and manifest were lost.
  const damaged = await pointAt(repo, models, 'incr', '2026-11-25T05:00:00Z', 'v2');
  await fsp.writeFile(path.join(repo, 'points', `${damaged.id}.json`), '{}');
  await fsp.writeFile(path.join(repo, 'summaries', `${damaged.id}.json`), '{}');

  // An incremental cannot tell what it would build on, and says to take a full.
  const incr = await lifeboat(['--repo', repo, 'backup', '--source', `models=${models}`]);
  assert.equal(incr.code, 3, incr.stderr);
  assert.match(incr.stderr, /take a full backup/);
  // The full, taken with the clock set right (before the damaged point's time), comes after it.
  const full = await pointAt(repo, models, 'full', '2026-11-24T07:00:00Z', 'v3');
  assert.ok(full.id > damaged.id, `${full.id} after ${damaged.id}`);
  assert.deepEqual(full.warnings.map((w) => w.code), ['clock-behind']);
  assert.match(full.warnings[0]!.message, new RegExp(`before the newest point ${damaged.id} `));

  const latest = await lifeboat(['--repo', repo, '--json', 'show', 'latest']);
  assert.equal(latest.code, 0, latest.stderr);
  assert.equal(latest.json().id, full.id);
  const next = await lifeboat(['--repo', repo, '--json', 'backup', '--source', `models=${models}`]);
  assert.equal(next.code, 0, next.stderr);
  assert.equal(next.json().parent, full.id);
});

test('status says that the newest point completed ahead of this host\'s clock, with by how much, rather than an age of 0 that reads as a fresh backup', async (t) => {
  const { work, repo, models } = await workspace(t);
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./models\ntargets:\n  prod: { slots: ./slots, active: ./current }\n');
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  // Taken by a host whose clock ran a day ahead.
  const ahead = new Date(Date.now() + 86_400_000 + 3_600_000).toISOString();
  const point = await pointAt(repo, models, 'full', ahead, 'v1');
  assert.equal((await lifeboat(['failover', point.id], { cwd: work })).code, 0);

  const text = await lifeboat(['status'], { cwd: work });
  assert.equal(text.code, 0, text.stderr);
  const by = `completed ${ahead.replace(/\./g, '\\.')}, 2[45]h\\d+m ahead of this host's clock`;
  assert.match(text.stdout, new RegExp(`^newest backup ${point.id}, ${by} \\(RPO not known: check the clocks\\)\\n`));
  assert.match(text.stdout, new RegExp(`\\ntarget prod: ${point.id}, ${by}; health not checked\\n`));
  const json = (await lifeboat(['--json', 'status'], { cwd: work })).json();
  assert.equal(json.newest.ageMs, 0);
  assert.ok(json.newest.aheadMs > 86_400_000 && json.newest.aheadMs <= 90_000_000, String(json.newest.aheadMs));
  assert.ok(json.targets[0].active.aheadMs > 86_400_000, String(json.targets[0].active.aheadMs));

  // A point taken with this host's clock has an age, and no aheadMs.
  await pointAt(repo, models, 'incr', new Date(Date.now() - 120_000).toISOString(), 'v2');
  const now = await lifeboat(['--json', 'status'], { cwd: work });
  assert.equal(now.json().newest.aheadMs, undefined);
});

/**
 * The text of a `verify --since-verified` after one point's volume was read back by a host whose clock said
 * `offsetMs` from now: with a sample that does not read the volume again (which would record it with this host's clock).
 */
async function verifiedAt(t: TestContext, offsetMs: number): Promise<string> {
  const { repo, models } = await workspace(t);
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  await pointAt(repo, models, 'full', new Date().toISOString(), 'v1');
  const storage = new LocalStorage(repo);
  try {
    const then = new Date(Date.now() + offsetMs);
    assert.equal((await verify(await Repository.open(storage), { readData: true, now: () => then })).ok, true);
  } finally {
    await storage.close();
  }
  const [volume] = (await fsp.readdir(path.join(repo, 'data'), { recursive: true })).filter((f) => f.endsWith('.tar'));
  const sample = [50, 34, 25, 20, 17, 15, 13, 12, 10].find((p) => bucketOf(`data/${volume!.split(path.sep).join('/')}`, bucketCount(p)) !== 0);
  const text = await lifeboat(['--repo', repo, 'verify', '--since-verified', '--sample', String(sample)]);
  assert.equal(text.code, 0, text.stderr);
  return text.stdout;
}

test('verify says that the oldest verification was recorded ahead of this host\'s clock, rather than "0 hour(s) ago"', async (t) => {
  // Read back by a host whose clock ran five hours ahead.
  const text = await verifiedAt(t, 5 * 3_600_000 + 60_000);
  assert.match(text, /^oldest verification: \S+ \(5h\d+m in the future: the clock of the host that recorded it ran ahead of this one's\)$/m);
  assert.doesNotMatch(text, /hour\(s\) ago/);
});

test('verify says how long ago, in minutes, a verification recorded within the hour was, not "0 hour(s) ago"', async (t) => {
  assert.match(await verifiedAt(t, -30 * 60_000), /^oldest verification: \S+ \(3[01]m\d+s ago\)$/m);
});

test('a drill of a point completed ahead of this host\'s clock does not meet --rpo with an age of 0: the RPO check fails saying the clocks disagree', async (t) => {
  const { repo, models } = await workspace(t);
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const ahead = new Date(Date.now() + 6 * 3_600_000).toISOString();
  const point = await pointAt(repo, models, 'full', ahead, 'v1');
  const unknown = new RegExp(`the point completed ${ahead.replace(/\./g, '\\.')}, 5h59m ahead of this host's clock, so its age, the RPO, is not known: check the clocks`);

  const drilled = await lifeboat(['--repo', repo, '--json', 'drill', point.id, '--rpo', '26h']);
  assert.equal(drilled.code, 5, drilled.stderr);
  assert.equal(drilled.json().objectives.rpo.met, false);
  assert.deepEqual(drilled.json().problems.map((p: { check: string }) => p.check), ['rpo']);
  assert.match(drilled.json().problems[0].message, unknown);
  // Without an objective there is nothing to miss; the check still says why no RPO is given.
  const plain = await lifeboat(['--repo', repo, '--json', 'drill', point.id]);
  assert.equal(plain.code, 0, plain.stderr);
  assert.match(plain.json().checks.find((c: { name: string }) => c.name === 'rpo').message, unknown);
});

test('a metrics file\'s lock left by a killed run before the clock was set back is taken over, not waited on until the clock catches up', async (t) => {
  const { work } = await workspace(t);
  const metrics = path.join(work, 'lifeboat.prom');
  const lock = path.join(work, '.lifeboat.prom.lock');
  await fsp.writeFile(lock, '');
  // Made an hour "later" than now: the clock ran ahead, and NTP set it back since.
  const later = new Date(Date.now() + 3_600_000);
  await fsp.utimes(lock, later, later);
  const started = Date.now();
  await updateMetricsFile(metrics, { command: 'backup' }, [{ name: 'lifeboat_last_run_exit_code', labels: { command: 'backup' }, value: 0 }]);
  assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms`);
  assert.match(await fsp.readFile(metrics, 'utf8'), /lifeboat_last_run_exit_code\{command="backup"\} 0/);
  assert.deepEqual(await fsp.readdir(work), ['lifeboat.prom', 'models']);
});

test('a time without its zone is refused with the offset this host\'s zone has then, both in the hour its clocks repeat, and none in the one they skip', async (t) => {
  const { repo, models } = await workspace(t);
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  await pointAt(repo, models, 'full', '2026-11-20T03:00:00Z', 'v1');
  const hint = async (zone: string, at: string) => {
    const refused = await runChild(['--repo', repo, 'show', at], { env: { ...process.env, TZ: zone } });
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, new RegExp(`^lifeboat: ${at} has no time zone\\n {2}add Z for UTC, as lifeboat shows times \\(${at}Z\\)`));
    return refused.stderr.split('\n')[1]!.replace(/^.*\(\S+Z\)/, '');
  };
  // An example offset would be copied as it is: in New York it is the state of another hour.
  assert.equal(await hint('America/New_York', '2026-11-20T03:00'), ', or the offset meant (2026-11-20T03:00-05:00 in this host\'s time zone)');
  assert.equal(await hint('America/New_York', '2026-11-01T01:30'), ', or the offset meant (2026-11-01T01:30-04:00 or 2026-11-01T01:30-05:00: this host\'s clocks show that time twice)');
  assert.equal(await hint('Europe/Berlin', '2026-03-29T02:30:00'), '; in this host\'s time zone 2026-03-29T02:30:00 never happens (its clocks jump past it), so give the offset meant');
  // Lord Howe Island moves its clocks by half an hour.
  assert.equal(await hint('Australia/Lord_Howe', '2026-04-05T01:45'), ', or the offset meant (2026-04-05T01:45+11:00 or 2026-04-05T01:45+10:30: this host\'s clocks show that time twice)');
  assert.equal(await hint('Etc/GMT-14', '2026-11-20T03:00'), ', or the offset meant (2026-11-20T03:00+14:00 in this host\'s time zone)');

  // A date alone: the end of that day in UTC, and in this host's zone.
  const dated = async (zone: string) => (await runChild(['--repo', repo, 'show', '2026-11-20'], { env: { ...process.env, TZ: zone } })).stderr;
  assert.equal(await dated('Pacific/Chatham'), 'lifeboat: 2026-11-20 is a date; a point is chosen by a time, with its zone\n  for the state at the end of that day in UTC: 2026-11-20T23:59:59Z, in this host\'s time zone: 2026-11-20T23:59:59+13:45\n');
  assert.match(await dated('UTC'), /in UTC: 2026-11-20T23:59:59Z\n$/);
});
