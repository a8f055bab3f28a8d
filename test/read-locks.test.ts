import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { smallDeployment } from './helpers/repo.js';
import { sleep } from './helpers/processes.js';
import { finished, worker } from './helpers/lock-workers.js';
import { makePointId } from '../src/format/ids.js';
import { Repository } from '../src/core/repository.js';
import { prune } from '../src/core/prune.js';
import { restore } from '../src/core/restore.js';
import type { LifeboatError } from '../src/errors.js';
import { LocalStorage } from '../src/storage/local.js';
import { acquireLock, acquireReadLock } from '../src/core/lock.js';
import { isNotFound } from '../src/storage/storage.js';

function lockDocument(command: string, pid = process.pid) {
  const now = new Date().toISOString();
  return JSON.stringify({ host: os.hostname(), pid, command, startedAt: now, refreshedAt: now, leaseMs: 1_800_000 });
}

/** A pid no process has (Linux pids stay below 2^22). */
const GONE = 2 ** 22 + 4242;

async function twoFulls() {
  const d = await smallDeployment();
  for (let i = 0; i < 2; i++) {
    await fsp.writeFile(path.join(d.src, 'config.json'), JSON.stringify({ step: i }));
    const r = await lifeboat(['--repo', d.repo, 'backup', d.src, '--type', 'full']);
    assert.equal(r.code, 0, r.stderr);
  }
  return d;
}

const readersDir = (repo: string) => path.join(repo, 'locks', 'readers');
const readers = async (repo: string) => (await fsp.readdir(readersDir(repo)).catch(() => [])).sort();

test('a prune does not remove what a live reader reads: it exits 4 naming the reader; a reader that is gone is removed', async (t) => {
  const d = await twoFulls();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  await fsp.mkdir(readersDir(d.repo), { recursive: true });
  await fsp.writeFile(path.join(readersDir(d.repo), 'elsewhere.json'), lockDocument('restore'));

  const blocked = await lifeboat(['--repo', d.repo, 'prune', '--keep-full', '1']);
  assert.equal(blocked.code, 4, blocked.stderr);
  assert.match(blocked.stderr, new RegExp(`being read by restore on ${os.hostname()}, pid ${process.pid}`));
  assert.equal((await lifeboat(['--repo', d.repo, '--json', 'list'])).json().length, 2, 'nothing was removed');
  assert.deepEqual(await readers(d.repo), ['elsewhere.json'], 'the reader is left alone');
  const dry = await lifeboat(['--repo', d.repo, 'prune', '--keep-full', '1', '--dry-run']);
  assert.equal(dry.code, 0, 'a dry run removes nothing, so readers do not stop it');

  const kept = await lifeboat(['--repo', d.repo, '--json', 'unlock']);
  assert.equal(kept.json().readersRemoved, 0, 'unlock leaves a live reader alone');
  await fsp.writeFile(path.join(readersDir(d.repo), 'elsewhere.json'), lockDocument('restore', GONE));
  const unlocked = await lifeboat(['--repo', d.repo, '--json', 'unlock']);
  assert.equal(unlocked.json().readersRemoved, 1, 'unlock removes a reader that is gone');
  assert.deepEqual(await readers(d.repo), []);

  await fsp.mkdir(readersDir(d.repo), { recursive: true });
  await fsp.writeFile(path.join(readersDir(d.repo), 'elsewhere.json'), lockDocument('restore', GONE));
  const pruned = await lifeboat(['--repo', d.repo, 'prune', '--keep-full', '1']);
  assert.equal(pruned.code, 0, pruned.stderr);
  assert.equal((await lifeboat(['--repo', d.repo, '--json', 'list'])).json().length, 1);
  assert.deepEqual(await readers(d.repo), [], 'the stale reader is removed');

  // Readers register while they read and leave nothing behind.
  assert.equal((await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', path.join(d.work, 'out')])).code, 0);
  assert.equal((await lifeboat(['--repo', d.repo, 'verify', '--read-data'])).code, 0);
  assert.deepEqual(await readers(d.repo), []);
});

test('prune --retry-lock waits for a live reader (another deployment\'s drill or restore) as for a live holder, and gives up with exit 4 when it does not finish', async (t) => {
  const d = await twoFulls();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  await fsp.mkdir(readersDir(d.repo), { recursive: true });
  const reader = path.join(readersDir(d.repo), 'elsewhere.json');
  await fsp.writeFile(reader, lockDocument('drill'));

  const gaveUp = await lifeboat(['--repo', d.repo, 'prune', '--keep-full', '1', '--retry-lock', '600ms']);
  assert.equal(gaveUp.code, 4, gaveUp.stderr);
  assert.match(gaveUp.stderr, new RegExp(`the repository is being read by drill on ${os.hostname()}, pid ${process.pid}, since \\S+; waiting up to 600ms for it\n`));
  assert.match(gaveUp.stderr, /lifeboat: the repository is being read by drill .*, still after waiting 600ms\n {2}wait longer with --retry-lock/);
  assert.equal((await lifeboat(['--repo', d.repo, '--json', 'list'])).json().length, 2, 'nothing was removed');
  await assert.rejects(fsp.access(path.join(d.repo, 'locks', 'lock.json')), 'the lock is not held while the prune waits');

  // The reader finishes while the prune waits.
  const waiting = lifeboat(['--repo', d.repo, '--json', 'prune', '--keep-full', '1', '--retry-lock', '30s']);
  await sleep(500);
  await fsp.rm(reader);
  const waited = await waiting;
  assert.equal(waited.code, 0, waited.stderr);
  assert.match(waited.stderr, /being read by drill .*; waiting up to 30\.0s for it/);
  assert.equal(waited.json().remove.length, 1);
});

test('restore and verify wait for a running prune to finish, not for a backup', async (t) => {
  const d = await twoFulls();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const lockFile = path.join(d.repo, 'locks', 'lock.json');
  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  await fsp.writeFile(lockFile, lockDocument('prune'));
  const target = path.join(d.work, 'a');
  const restoring = lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', target]);
  const verifying = lifeboat(['--repo', d.repo, 'verify']);
  await sleep(1500);
  await assert.rejects(fsp.access(target), 'nothing is restored while the prune runs');
  assert.equal((await readers(d.repo)).length, 2, 'both are registered, so no new prune starts');
  await fsp.rm(lockFile);
  const [restored, verified] = await Promise.all([restoring, verifying]);
  assert.equal(restored.code, 0, restored.stderr);
  assert.equal(verified.code, 0, verified.stderr);
  for (const r of [restored, verified]) assert.match(r.stderr, new RegExp(`waiting for the prune on ${os.hostname()}, pid ${process.pid}, since .* to finish`));
  assert.deepEqual(await readers(d.repo), []);

  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  await fsp.writeFile(lockFile, lockDocument('backup'));
  const beside = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', path.join(d.work, 'b')]);
  assert.equal(beside.code, 0, beside.stderr);
  assert.doesNotMatch(beside.stderr, /waiting/);
  assert.equal((await lifeboat(['--repo', d.repo, 'verify'])).code, 0);

  // A reader interrupted while it waits leaves no registration behind.
  await fsp.writeFile(lockFile, lockDocument('prune'));
  const controller = new AbortController();
  const interrupted = lifeboat(['--repo', d.repo, 'verify'], { signal: controller.signal });
  await sleep(300);
  controller.abort();
  assert.equal((await interrupted).code, 130);
  assert.deepEqual(await readers(d.repo), []);
});

/** Two points, and a real process that holds the lock as a prune, its lease refreshed by its timer, and does nothing more. */
async function stuckPrune(t: Parameters<typeof worker>[0] & { after(fn: () => Promise<void>): void }) {
  const d = await twoFulls();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const stuck = worker(t, 'announce', d.repo, '0');
  assert.deepEqual(await stuck.next(), { held: true });
  return { d, stuck, pid: stuck.child.pid! };
}

test('a reader never waits without limit for a prune alive but stuck (its lease refreshed) or stopped (SIGSTOP): after --retry-lock or lock.retry it exits 4 naming the prune, its host and pid', { timeout: 120_000 }, async (t) => {
  const { d, stuck, pid } = await stuckPrune(t);
  const target = path.join(d.work, 'a');
  const restored = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', target, '--retry-lock', '2s']);
  assert.equal(restored.code, 4, restored.stderr);
  assert.match(restored.stderr, new RegExp(`waiting for the prune on ${os.hostname()}, pid ${pid}, since .* to finish, up to 2\\.0s`));
  assert.match(restored.stderr, new RegExp(`the repository is being pruned by prune on ${os.hostname()}, pid ${pid}, since .*, still after waiting 2\\.0s; this restore reads what it may remove`));
  assert.match(restored.stderr, new RegExp(`end process ${pid} on ${os.hostname()} and run this restore again`));
  await assert.rejects(fsp.access(target), 'nothing is restored');
  assert.deepEqual(await readers(d.repo), [], 'its registration as a reader is removed');

  // Stopped (Ctrl-Z): its lease is not refreshed, but has not run out; lock.retry of the config bounds the wait.
  stuck.child.kill('SIGSTOP');
  const config = path.join(d.work, 'lifeboat.yaml');
  await fsp.writeFile(config, 'lock:\n  retry: 1s\n');
  for (const args of [['verify'], ['drill'], ['restore', 'latest', '--target', target]]) {
    const r = await lifeboat(['--repo', d.repo, '--config', config, ...args]);
    assert.equal(r.code, 4, `${args[0]}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`being pruned by prune on ${os.hostname()}, pid ${pid}, .*still after waiting 1\\.0s; this ${args[0]} reads what it may remove\n {2}.* run this ${args[0]} again`));
  }
  // --retry-lock 0 does not wait at all, and the flag wins over the config.
  const now = await lifeboat(['--repo', d.repo, '--config', config, 'verify', '--retry-lock', '0']);
  assert.equal(now.code, 4, now.stderr);
  assert.match(now.stderr, /being pruned by prune on .*; this verify reads what it may remove/);
  assert.doesNotMatch(now.stderr, /still after waiting/);
  stuck.child.kill('SIGCONT');
  stuck.child.stdin!.end();
  await finished(stuck);
  assert.equal((await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', target])).code, 0, 'once the prune has ended, the restore goes on');
});

test('a reader waiting for a prune says that it still waits, about every minute or every quarter of a shorter --retry-lock', { timeout: 60_000 }, async (t) => {
  const { d, stuck, pid } = await stuckPrune(t);
  const r = await lifeboat(['--repo', d.repo, 'verify', '--retry-lock', '4s']);
  assert.equal(r.code, 4, r.stderr);
  const still = r.stderr.split('\n').filter((l) => l.includes('still waiting'));
  assert.ok(still.length >= 1, r.stderr);
  for (const line of still) assert.match(line, new RegExp(`still waiting for the prune on ${os.hostname()}, pid ${pid}, since \\S+ to finish: \\d+\\.\\ds so far, up to 4\\.0s$`));
  stuck.child.stdin!.end();
  await finished(stuck);
});

test("a reader takes a prune's lock not refreshed for --lock-stale-after (or lock.staleAfter) as stale, and goes on", async (t) => {
  const d = await twoFulls();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const lockFile = path.join(d.repo, 'locks', 'lock.json');
  const tenMinutesAgo = new Date(Date.now() - 10 * 60_000).toISOString();
  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  await fsp.writeFile(lockFile, JSON.stringify({ ...JSON.parse(lockDocument('prune')), refreshedAt: tenMinutesAgo }));
  const waited = await lifeboat(['--repo', d.repo, 'verify', '--retry-lock', '1s']);
  assert.equal(waited.code, 4, 'within its lease of 30 minutes, the prune is live');
  const flag = await lifeboat(['--repo', d.repo, 'verify', '--retry-lock', '1s', '--lock-stale-after', '5m']);
  assert.equal(flag.code, 0, flag.stderr);
  assert.doesNotMatch(flag.stderr, /waiting/);
  const config = path.join(d.work, 'lifeboat.yaml');
  await fsp.writeFile(config, 'lock:\n  staleAfter: 5m\n  retry: 1s\n');
  const configured = await lifeboat(['--repo', d.repo, '--config', config, 'restore', 'latest', '--target', path.join(d.work, 'a')]);
  assert.equal(configured.code, 0, configured.stderr);
});

test('once a running prune has said which points it removes, a restore of another point goes on beside it; one of those points waits', { timeout: 60_000 }, async (t) => {
  const d = await twoFulls();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const [older, newer] = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json().map((p: { id: string }) => p.id) as string[];
  const lockFile = path.join(d.repo, 'locks', 'lock.json');
  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  await fsp.writeFile(lockFile, JSON.stringify({ ...JSON.parse(lockDocument('prune')), removing: [older] }));

  const kept = await lifeboat(['--repo', d.repo, 'restore', newer!, '--target', path.join(d.work, 'kept')]);
  assert.equal(kept.code, 0, kept.stderr);
  assert.doesNotMatch(kept.stderr, /waiting/);
  assert.equal((await lifeboat(['--repo', d.repo, 'verify', newer!])).code, 0, 'a verify of that point too');

  const target = path.join(d.work, 'removed');
  const waiting = lifeboat(['--repo', d.repo, 'restore', older!, '--target', target]);
  await sleep(1500);
  await assert.rejects(fsp.access(target), 'a point the prune removes is not read while it runs');
  await fsp.rm(lockFile);
  const after = await waiting;
  assert.equal(after.code, 0, after.stderr);
  assert.match(after.stderr, /waiting for the prune on /);
});

test('a restore, drill or verify of a point the prune it waited for removed says so (exit 2), instead of reporting its data missing or checking nothing', { timeout: 60_000 }, async (t) => {
  const d = await twoFulls();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const [older] = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json().map((p: { id: string }) => p.id) as string[];
  const lockFile = path.join(d.repo, 'locks', 'lock.json');
  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  await fsp.writeFile(lockFile, JSON.stringify({ ...JSON.parse(lockDocument('prune')), removing: [older] }));

  const target = path.join(d.work, 'removed');
  const waiting = [
    lifeboat(['--repo', d.repo, 'restore', older!, '--target', target]),
    lifeboat(['--repo', d.repo, 'verify', older!, '--read-data']),
    lifeboat(['--repo', d.repo, '--json', 'drill', older!]),
  ];
  await sleep(1500);
  // What the prune does with that point: its manifest, its summary, then its data.
  await fsp.rm(path.join(d.repo, 'points', `${older}.json`));
  await fsp.rm(path.join(d.repo, 'summaries', `${older}.json`));
  await fsp.rm(path.join(d.repo, 'data', older!), { recursive: true });
  await fsp.rm(lockFile);
  const [restored, verified, drilled] = await Promise.all(waiting);
  for (const r of [restored!, verified!, drilled!]) {
    assert.equal(r.code, 2, r.stdout + r.stderr);
    assert.match(r.stderr, new RegExp(`backup point ${older} was removed by the prune \\(prune on ${os.hostname()}, pid ${process.pid}, since .*\\) this ${r === drilled ? 'drill' : r === verified ? 'verify' : 'restore'} waited for`));
    assert.doesNotMatch(r.stderr, /does not exist|no problems found/);
  }
  assert.equal(drilled!.json().error.exitCode, 2);
  await assert.rejects(fsp.access(target), 'nothing is restored');
  assert.deepEqual(await readers(d.repo), []);
});

test('a restore or failover whose point a prune removed after it was chosen, and before the reader registered, says so (exit 2), instead of reporting its data missing (exit 3)', async (t) => {
  const d = await twoFulls();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const [older] = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json().map((p: { id: string }) => p.id) as string[];
  // The point is chosen (its manifest read), then a prune that started at that moment removes it and ends.
  const repo = await Repository.open(new LocalStorage(d.repo));
  const manifest = await repo.resolve(older!);
  const pruned = await lifeboat(['--repo', d.repo, 'prune', '--keep-full', '1']);
  assert.equal(pruned.code, 0, pruned.stderr);
  const target = path.join(d.work, 'removed');
  await assert.rejects(restore(repo, manifest, { target }), (err: LifeboatError) => {
    assert.equal(err.exitCode, 2, err.message);
    assert.match(err.message, new RegExp(`^backup point ${older} was removed by a prune that ran as this restore started$`));
    return true;
  });
  await assert.rejects(fsp.access(target), 'nothing is restored');
  assert.deepEqual(await readers(d.repo), []);
});

test('a prune says which points it removes in its lock before it removes any', async (t) => {
  const d = await twoFulls();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const [older] = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json().map((p: { id: string }) => p.id) as string[];
  // What the prune asks of the storage, in order: the lock it rewrites and what it deletes.
  const inner = new LocalStorage(d.repo);
  const log: string[] = [];
  const storage = new Proxy(inner, {
    get(target, prop) {
      if (prop === 'putDocument') {
        return async (key: string, data: Uint8Array, options?: { ifAbsent?: boolean }) => {
          const removing = key === 'locks/lock.json' ? JSON.parse(Buffer.from(data).toString('utf8')).removing : undefined;
          if (removing) log.push(`announce ${removing.join(',')}`);
          return target.putDocument(key, data, options);
        };
      }
      if (prop === 'delete') return async (keys: readonly string[]) => (log.push(`delete ${keys.join(',')}`), target.delete(keys));
      const value = Reflect.get(target, prop);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  const result = await prune(await Repository.open(storage), { policy: { keepFull: 1 } });
  assert.deepEqual(result.remove.map((p) => p.id), [older]);
  const announced = log.findIndex((l) => l.startsWith('announce'));
  assert.equal(log[announced], `announce ${older}`);
  assert.ok(announced < log.findIndex((l) => l.startsWith('delete') && l.includes(`points/${older}.json`)), log.join('\n'));
});

test('verify during a backup says the uncommitted point is being written, and warns only about older leftovers', async () => {
  const d = await twoFulls();
  const lockStarted = Date.now();
  // A backup holds the lock and has written part of its point; an aborted one left data before it.
  await fsp.mkdir(path.join(d.repo, 'locks'), { recursive: true });
  await fsp.writeFile(path.join(d.repo, 'locks', 'lock.json'), lockDocument('backup'));
  const writing = makePointId(new Date(lockStarted + 1500), 'incr');
  const aborted = makePointId(new Date(lockStarted - 3_600_000), 'incr');
  for (const id of [writing, aborted]) {
    await fsp.mkdir(path.join(d.repo, 'data', id), { recursive: true });
    await fsp.writeFile(path.join(d.repo, 'data', id, 'v000001.tar'), Buffer.alloc(1024));
  }
  await fsp.writeFile(path.join(d.repo, 'summaries', `${writing}.json`), '{}');
  const r = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`data/${writing}/: being written by the running backup on ${os.hostname()}, pid ${process.pid}`));
  assert.match(r.stderr, new RegExp(`summaries/${writing}\\.json: being written by the running backup on`));
  assert.match(r.stderr, new RegExp(`warning: data/${aborted}/: 1 object\\(s\\), 1024 bytes, left by an aborted backup`));
  assert.deepEqual(r.json().warnings.map((w: { path: string }) => w.path), [`data/${aborted}/`]);

  // Once that backup is gone, what it left is a leftover like any other.
  await fsp.writeFile(path.join(d.repo, 'locks', 'lock.json'), lockDocument('backup', GONE));
  const after = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  assert.deepEqual(after.json().warnings.map((w: { path: string }) => w.path).sort(), [`data/${aborted}/`, `data/${writing}/`, `summaries/${writing}.json`].sort());
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('a reader that looks at the lock while a prune rewrites it back to back (a local repository) always finds it, and waits for the prune', async (t) => {
  const d = await twoFulls();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const [older] = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json().map((p: { id: string }) => p.id) as string[];
  const inner = new LocalStorage(d.repo);
  const pruning = await acquireLock(inner, 'prune');
  // The prune says, again and again, that it removes the point the reader reads, until the reader has waited for it.
  let done = false;
  const rewriting = (async () => {
    while (!done) await pruning.announce([older!]);
  })();
  // Each look of the reader's at the lock is a run of looks, any of which may fall on a rewrite.
  let looks = 0;
  let missed = 0;
  const storage = new Proxy(inner, {
    get(target, prop) {
      if (prop === 'getDocument') {
        return async (key: string, ...rest: unknown[]) => {
          const read = () => (target.getDocument as (...a: unknown[]) => Promise<Buffer>).call(target, key, ...rest);
          if (key !== 'locks/lock.json' || done) return read();
          for (let i = 0; i < 200; i++) {
            looks++;
            await read().catch((err: unknown) => {
              if (!isNotFound(err)) throw err;
              missed++;
            });
          }
          return read();
        };
      }
      const value = Reflect.get(target, prop);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  let waited = false;
  let settled = false;
  const reading = acquireReadLock(storage, 'restore', { reads: [older!], waiting: () => (waited = true) }).finally(() => (settled = true));
  while (!waited && !settled) await sleep(10);
  done = true;
  await rewriting;
  await pruning.release();
  const reader = await reading;
  await reader.release();
  assert.equal(missed, 0, `${missed} of ${looks} looks found no lock while the prune held it`);
  assert.ok(waited && reader.waitedFor?.command === 'prune', 'the reader went on while the prune that removes its point held the lock');
});

/** Rewrites a reader's registration as if its lease had last been refreshed two hours ago (the reader stopped, or its host cut off, since). */
async function lapse(file: string, change: Record<string, unknown> = {}) {
  const info = JSON.parse(await fsp.readFile(file, 'utf8'));
  await fsp.writeFile(file, JSON.stringify({ ...info, refreshedAt: new Date(Date.now() - 2 * 3_600_000).toISOString(), ...change }));
}

test('a reader taken for gone (its lease lapsed) whose point a prune removed meanwhile says so when it goes on (exit 2), instead of reporting its data missing', async (t) => {
  const d = await twoFulls();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const [older] = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json().map((p: { id: string }) => p.id) as string[];
  const reader = worker(t, 'read', d.repo, older!);
  assert.deepEqual(await reader.next(), { reading: true });
  const [registration] = await readers(d.repo);
  assert.deepEqual(JSON.parse(await fsp.readFile(path.join(readersDir(d.repo), registration!), 'utf8')).reads, [older], 'it says which points it reads');
  reader.child.kill('SIGSTOP');
  await lapse(path.join(readersDir(d.repo), registration!));
  const pruned = await lifeboat(['--repo', d.repo, 'prune', '--keep-full', '1']);
  assert.equal(pruned.code, 0, pruned.stderr);
  assert.deepEqual(await readers(d.repo), [], 'the prune removed the stale registration');
  reader.child.kill('SIGCONT');
  reader.child.stdin!.end();
  const said = await reader.next();
  assert.equal(said.exitCode, 2, String(said.error));
  assert.match(String(said.error), new RegExp(`^backup point ${older} was removed by a prune while this restore was stopped for longer than its lease`));
  await finished(reader);
  assert.deepEqual(await readers(d.repo), [], 'its registration, written back, is removed as it ends');
});

test('a prune stops (exit 4), every point left whole, when a reader it took for gone comes back to read a point it has yet to remove; not for one that reads a point it keeps', async (t) => {
  const d = await twoFulls();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  await fsp.writeFile(path.join(d.src, 'config.json'), JSON.stringify({ step: 2 }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src, '--type', 'full'])).code, 0);
  const [oldest, middle, newest] = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json().map((p: { id: string }) => p.id) as string[];
  await fsp.mkdir(readersDir(d.repo), { recursive: true });
  const registration = path.join(readersDir(d.repo), 'elsewhere.json');
  // A restore on another host, cut off for longer than its lease.
  const elsewhere = (reads: string[]) => ({ ...JSON.parse(lockDocument('restore')), host: 'db-elsewhere', reads });
  await fsp.writeFile(registration, JSON.stringify(elsewhere([oldest!])));
  await lapse(registration);

  const pruning = worker(t, 'prune', d.repo, '1');
  assert.deepEqual(await pruning.next(), { paused: `points/${middle}.json` }, 'newest first');
  assert.deepEqual(await readers(d.repo), [], 'taken for gone, the registration was removed');
  // Back, the reader writes its registration again as it refreshes its lease.
  await fsp.mkdir(readersDir(d.repo), { recursive: true });
  await fsp.writeFile(registration, JSON.stringify(elsewhere([oldest!])));
  pruning.child.kill('SIGCONT');
  const stopped = await pruning.next();
  assert.equal(stopped.exitCode, 4, String(stopped.error));
  assert.match(String(stopped.error), new RegExp(`^the prune stopped: restore on db-elsewhere, pid \\d+, since \\S+, taken for gone as the prune started, is reading again point ${oldest}, which this prune removes$`));
  await finished(pruning);
  assert.deepEqual((await lifeboat(['--repo', d.repo, '--json', 'list'])).json().map((p: { id: string }) => p.id), [oldest, newest], 'the point it reads is left');
  await assert.rejects(fsp.access(path.join(d.repo, 'locks', 'lock.json')), 'the lock is released');
  const verified = await lifeboat(['--repo', d.repo, 'verify', '--read-data']);
  assert.equal(verified.code, 0, verified.stderr);

  // Back to read the point the prune keeps, it does not stop the prune.
  await lapse(registration, { reads: [newest] });
  const again = worker(t, 'prune', d.repo, '1');
  assert.deepEqual(await again.next(), { paused: `points/${oldest}.json` });
  await fsp.mkdir(readersDir(d.repo), { recursive: true });
  await fsp.writeFile(registration, JSON.stringify(elsewhere([newest!])));
  again.child.kill('SIGCONT');
  assert.deepEqual(await again.next(), { removed: [oldest] });
  await finished(again);
  assert.deepEqual((await lifeboat(['--repo', d.repo, '--json', 'list'])).json().map((p: { id: string }) => p.id), [newest]);
});
