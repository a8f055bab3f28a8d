import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { LockLostError, acquireLock, readStoredLock, removeLock } from '../src/core/lock.js';
import { prune } from '../src/core/prune.js';
import { Repository } from '../src/core/repository.js';
import { lockTarget } from '../src/core/slots.js';
import { formatStart, processStart } from '../src/format/process-alive.js';
import type { LockedError } from '../src/errors.js';
import { LocalStorage } from '../src/storage/local.js';
import { lifeboat, runChild, spawnLifeboat } from './helpers/cli.js';
import { sleep, startedNow } from './helpers/processes.js';
import { worker } from './helpers/lock-workers.js';
import { smallDeployment } from './helpers/repo.js';
import { prng, tempDir, writeRandomFile } from './helpers/tree.js';

interface Bed {
  work: string;
  repo: string;
  big: string;
  small: string;
  lockFile: string;
}

/** A repository of small volumes (a point's data/<id>/ appears early), a source that takes a while to store, and a small one. */
async function bed(t: { after(fn: () => Promise<void>): void }): Promise<Bed> {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const big = path.join(work, 'big');
  const small = path.join(work, 'small');
  await fsp.mkdir(big);
  await fsp.mkdir(small);
  const rand = prng(11);
  for (let i = 0; i < 4; i++) await writeRandomFile(path.join(big, `shard-${i}.bin`), 24 << 20, rand);
  await fsp.writeFile(path.join(small, 'config.json'), '{"hidden": 64}');
  const repo = path.join(work, 'repo');
  await Repository.init(new LocalStorage(repo), { volumeSize: 1 << 20 });
  return { work, repo, big, small, lockFile: path.join(repo, 'locks', 'lock.json') };
}

async function waitFor(what: string, cond: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) assert.fail(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The points whose volumes are in the repository, committed or not. */
async function dataDirs(repo: string): Promise<string[]> {
  const dirs = await fsp.readdir(path.join(repo, 'data')).catch(() => [] as string[]);
  const holding = await Promise.all(dirs.map(async (d) => (await fsp.readdir(path.join(repo, 'data', d)).catch(() => [])).length > 0));
  return dirs.filter((_, i) => holding[i]);
}
const readLockFile = async (b: Bed) => JSON.parse(await fsp.readFile(b.lockFile, 'utf8')) as { token?: string; pid: number; refreshedAt: string };

/** A backup child with its output collected, and its exit. */
function startBackup(b: Bed, source: string, extra: string[] = []): { child: ChildProcess; exited: Promise<{ code: number | null; stdout: string; stderr: string }> } {
  const child = spawnLifeboat(['--repo', b.repo, 'backup', '--source', `m=${source}`, '--type', 'full', ...extra]);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on('data', (c: Buffer) => out.push(c));
  child.stderr!.on('data', (c: Buffer) => err.push(c));
  const exited = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() })),
  );
  return { child, exited };
}

/** Starts a backup of the big source and stops it (SIGSTOP) once its first volumes are stored: it holds the lock, uncommitted. */
async function pausedBackup(b: Bed, t: { after(fn: () => void): void }) {
  const a = startBackup(b, b.big);
  t.after(() => {
    a.child.kill('SIGCONT');
    a.child.kill('SIGKILL');
  });
  let id = '';
  await waitFor('the backup has stored a volume', async () => {
    id = (await dataDirs(b.repo))[0] ?? '';
    return id !== '';
  });
  a.child.kill('SIGSTOP');
  const points = await fsp.readdir(path.join(b.repo, 'points')).catch(() => [] as string[]);
  assert.deepEqual(points, [], 'the backup was stopped before it committed (make its source larger if this fails)');
  return { ...a, id, token: (await readLockFile(b)).token };
}

async function pointIds(repo: string): Promise<string[]> {
  return (await lifeboat(['--repo', repo, '--json', 'list'])).json().map((p: { id: string }) => p.id);
}

test('a backup paused past the staleness threshold, whose lock another backup took over, commits nothing and exits 4', { timeout: 60_000 }, async (t) => {
  const b = await bed(t);
  const a = await pausedBackup(b, t);
  // As if the pause had lasted ten minutes: the lease was last refreshed then (a live process on this host is only ever stale by its lease).
  const held = await readLockFile(b);
  await fsp.writeFile(b.lockFile, JSON.stringify({ ...held, refreshedAt: new Date(Date.now() - 600_000).toISOString() }));

  const other = await runChild(['--repo', b.repo, 'backup', '--source', `m=${b.small}`, '--type', 'full', '--lock-stale-after', '2m']);
  assert.equal(other.code, 0, other.stderr);
  assert.match(other.stderr, /took over a stale lock of backup on .*pid /);
  assert.match(other.stderr, new RegExp(`left by an aborted backup under data/${a.id}/`), 'the new holder removed the paused backup\'s volumes');
  const [taken] = await pointIds(b.repo);

  a.child.kill('SIGCONT');
  const paused = await a.exited;
  assert.equal(paused.code, 4, `the paused backup fails once it resumes: ${paused.stderr}`);
  assert.match(paused.stderr, /this backup lost the repository lock/);
  assert.doesNotMatch(paused.stderr + paused.stdout, /took .* backup/);
  assert.deepEqual(await pointIds(b.repo), [taken], 'only the new holder\'s point is committed');
  const verify = await lifeboat(['--repo', b.repo, '--json', 'verify']);
  assert.equal(verify.code, 0, verify.stdout);
  assert.deepEqual(await dataDirs(b.repo), [taken], 'the paused backup removed its own volumes, and only those');
});

test('a backup paused while `unlock --force` removed its lock neither commits nor disturbs the next holder when it resumes', { timeout: 60_000 }, async (t) => {
  const b = await bed(t);
  // Many small files: the backup scans them for a while after it took the lock, and writes nothing meanwhile.
  const many = path.join(b.work, 'many');
  await fsp.mkdir(many);
  for (let i = 0; i < 3000; i++) await fsp.writeFile(path.join(many, `f${i}.txt`), `file ${i}\n`);
  const a = startBackup(b, many);
  t.after(() => {
    a.child.kill('SIGCONT');
    a.child.kill('SIGKILL');
  });
  await waitFor('the backup holds the lock', async () => (await readLockFile(b).catch(() => undefined))?.pid === a.child.pid);
  a.child.kill('SIGSTOP');
  assert.deepEqual(await dataDirs(b.repo), [], 'the backup was stopped before it stored anything');
  const unlocked = await runChild(['--repo', b.repo, 'unlock', '--force']);
  assert.equal(unlocked.code, 0, unlocked.stderr);

  const next = startBackup(b, b.big);
  t.after(() => next.child.kill('SIGKILL'));
  await waitFor('the next backup holds the lock and stores its volumes', async () => (await readLockFile(b).catch(() => undefined))?.pid === next.child.pid && (await dataDirs(b.repo)).length > 0);
  // Resumed while the other runs: it must neither commit nor write the other's lock back as its own.
  a.child.kill('SIGCONT');
  const paused = await a.exited;
  assert.equal(paused.code, 4, `the resumed backup stops: ${paused.stderr}`);
  // Taken over by the running backup, or removed, when that one has finished before the resumed one looked.
  assert.match(paused.stderr, /this backup lost the repository lock: (backup on .* took it over|it was removed)/);
  assert.notEqual((await readLockFile(b).catch(() => undefined))?.pid, a.child.pid, 'the resumed backup did not write its lock back');
  const done = await next.exited;
  assert.equal(done.code, 0, done.stderr);
  const ids = await pointIds(b.repo);
  assert.equal(ids.length, 1, 'only the next holder committed a point');
  assert.deepEqual(await dataDirs(b.repo), ids);
  const verify = await lifeboat(['--repo', b.repo, '--json', 'verify', '--read-data']);
  assert.equal(verify.code, 0, verify.stdout);
  await assert.rejects(fsp.access(b.lockFile), 'the lock is released');
});

test('the lease refresh never writes back a lock another process took over, and the holder finds it lost', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const storage = new LocalStorage(work);
  // A lease of 3 s is refreshed every second.
  const held = await acquireLock(storage, 'backup', 3000);
  t.after(() => held.release());
  const lockFile = path.join(work, 'locks', 'lock.json');
  const other = { host: 'batch-node-7', pid: 4242, command: 'backup', startedAt: new Date().toISOString(), refreshedAt: new Date().toISOString(), leaseMs: 1_800_000, token: 'f'.repeat(32) };
  await fsp.writeFile(lockFile, JSON.stringify(other));
  await new Promise((r) => setTimeout(r, 2500));
  assert.deepEqual(JSON.parse(await fsp.readFile(lockFile, 'utf8')), other, 'the other holder\'s lock is left as it is');
  assert.throws(() => held.throwIfLost(), LockLostError);
  await assert.rejects(held.check(), (err: Error) => err instanceof LockLostError && /backup on batch-node-7, pid 4242, since .* took it over/.test(err.message));
  await assert.rejects(held.announce(['x']), LockLostError);
  await held.release();
  assert.deepEqual(JSON.parse(await fsp.readFile(lockFile, 'utf8')), other, 'release leaves the other holder\'s lock');
});

/** A repository holding `count` full backups of a one-file source. */
async function fullBackups(t: { after(fn: () => Promise<void>): void }, count: number): Promise<{ repo: string }> {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'src');
  await fsp.mkdir(src);
  await fsp.writeFile(path.join(src, 'a.bin'), 'a');
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  for (let i = 0; i < count; i++) assert.equal((await lifeboat(['--repo', repo, 'backup', src, '--type', 'full'])).code, 0);
  return { repo };
}

test('a prune whose lock is taken over before it deletes deletes nothing and exits 4', async (t) => {
  const { repo } = await fullBackups(t, 3);
  const before = await pointIds(repo);
  const storage = new LocalStorage(repo);
  const other = { host: os.hostname(), pid: process.pid, command: 'backup', startedAt: new Date().toISOString(), refreshedAt: new Date().toISOString(), leaseMs: 1_800_000, token: 'e'.repeat(32) };
  // The prune looks up pins once it holds the lock; a takeover lands right then (as after a long pause there).
  const run = prune(await Repository.open(storage), {
    policy: { keepFull: 1 },
    findProtected: async () => {
      await fsp.writeFile(path.join(repo, 'locks', 'lock.json'), JSON.stringify(other));
      return new Map();
    },
  });
  await assert.rejects(run, (err: LockLostError) => err instanceof LockLostError && err.exitCode === 4);
  assert.deepEqual(await pointIds(repo), before, 'no point was removed');
  assert.equal(JSON.parse(await fsp.readFile(path.join(repo, 'locks', 'lock.json'), 'utf8')).token, other.token);
  assert.equal((await lifeboat(['--repo', repo, 'verify'])).code, 0);
});

test('unlock removes only the lock it judged: one taken over since stays with its new holder', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const storage = new LocalStorage(work);
  const lockFile = path.join(work, 'locks', 'lock.json');
  await fsp.mkdir(path.dirname(lockFile));
  const stale = { host: 'batch-node-7', pid: 4242, command: 'backup', startedAt: new Date(0).toISOString(), refreshedAt: new Date(0).toISOString(), leaseMs: 1_800_000 };
  await fsp.writeFile(lockFile, JSON.stringify(stale));
  const judged = (await readStoredLock(storage))!;
  assert.equal(judged.stale, true);
  // Taken over between unlock's look and its removal.
  const taker = await acquireLock(storage, 'backup');
  t.after(() => taker.release());
  assert.ok(taker.tookOver);
  assert.equal(await removeLock(storage, judged), false);
  await taker.check();
  await taker.release();
  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  await fsp.writeFile(lockFile, JSON.stringify(stale));
  assert.equal(await removeLock(storage, (await readStoredLock(storage))!), true);
  await assert.rejects(fsp.access(lockFile));
});

test("a prune's plan never names the lock: the stale lock a killed backup left is taken over and said so, by --dry-run as what the prune would do", async (t) => {
  const { repo } = await fullBackups(t, 2);
  const gone = 2 ** 22 + 4242;
  const stale = JSON.stringify({ host: os.hostname(), pid: gone, command: 'backup', startedAt: new Date().toISOString(), refreshedAt: new Date().toISOString(), leaseMs: 1_800_000, token: 'd'.repeat(32) });
  const lockFile = path.join(repo, 'locks', 'lock.json');
  await fsp.mkdir(path.dirname(lockFile));
  await fsp.writeFile(lockFile, stale);
  const dry = await lifeboat(['--repo', repo, '--json', 'prune', '--keep-full', '1', '--dry-run']);
  assert.equal(dry.code, 0, dry.stderr);
  assert.match(dry.stderr, new RegExp(`warning: would take over a stale lock of backup on .*, pid ${gone}, since .* \\(process ${gone} no longer runs on `));
  assert.equal(await fsp.readFile(lockFile, 'utf8'), stale, 'a dry run leaves the lock');
  const run = await lifeboat(['--repo', repo, '--json', 'prune', '--keep-full', '1']);
  assert.equal(run.code, 0, run.stderr);
  assert.match(run.stderr, new RegExp(`warning: took over a stale lock of backup on .*, pid ${gone}, `));
  assert.deepEqual(run.json().objects, dry.json().objects, 'the prune removed what its dry run said');
  assert.ok(!run.json().objects.includes('locks/lock.json'));
  await assert.rejects(fsp.access(lockFile), 'the lock, taken over, is released');
});

/** An empty repository and a source of one small file to back up into it. */
async function smallRepository(t: { after(fn: () => Promise<void>): void }): Promise<{ src: string; repo: string }> {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  const repo = path.join(work, 'repo');
  await fsp.mkdir(src);
  await fsp.writeFile(path.join(src, 'config.json'), '{}');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  return { src, repo };
}

test('a lock whose pid now belongs to a process started after it was taken (a reboot, a container run again) is stale: backup takes it over, unlock removes it', async (t) => {
  const { src, repo } = await smallRepository(t);
  // The process that now has the pid the lock names: started minutes after the lock was taken.
  const other = startedNow(t);
  const lockFile = path.join(repo, 'locks', 'lock.json');
  const minutesAgo = new Date(Date.now() - 10 * 60_000).toISOString();
  const killed = { host: os.hostname(), pid: other.pid, command: 'backup', startedAt: minutesAgo, refreshedAt: minutesAgo, leaseMs: 1_800_000, token: 'd'.repeat(32) };
  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  await fsp.writeFile(lockFile, JSON.stringify(killed));

  const unlocked = await lifeboat(['--repo', repo, 'unlock']);
  assert.equal(unlocked.code, 0, unlocked.stderr);
  assert.match(unlocked.stdout, new RegExp(`removed stale lock .* process ${other.pid} no longer runs on .*: that pid is now another process's`));
  await assert.rejects(fsp.access(lockFile));

  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  await fsp.writeFile(lockFile, JSON.stringify(killed));
  const backup = await lifeboat(['--repo', repo, 'backup', src]);
  assert.equal(backup.code, 0, backup.stderr);
  assert.match(backup.stderr, /took over a stale lock .*that pid is now another process's/);

  // The same process holding a lock it took after it started is live.
  const now = new Date().toISOString();
  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  await fsp.writeFile(lockFile, JSON.stringify({ ...killed, startedAt: now, refreshedAt: now }));
  const live = await lifeboat(['--repo', repo, 'unlock']);
  assert.equal(live.code, 4, live.stdout + live.stderr);
});

test('a lock that records its process start (ticks since boot) is judged by it, not by the clock: a live holder after a clock stepped forward is not taken over, a pid given again after a clock stepped back is', { skip: processStart(process.pid) === undefined && 'the system does not tell when a process started (no /proc)' }, async (t) => {
  const { src, repo } = await smallRepository(t);
  const holder = startedNow(t);
  const start = processStart(holder.pid!);
  assert.ok(start, 'the system tells when it started');
  const lockFile = path.join(repo, 'locks', 'lock.json');
  const lockAt = async (at: Date, ticks: number) => {
    await fsp.mkdir(path.dirname(lockFile), { recursive: true });
    const time = at.toISOString();
    await fsp.writeFile(lockFile, JSON.stringify({ host: os.hostname(), pid: holder.pid, command: 'backup', startedAt: time, refreshedAt: new Date().toISOString(), leaseMs: 1_800_000, token: 'e'.repeat(32), processStart: formatStart({ ...start, ticks }) }));
  };

  // Taken, then the clock stepped forward 10 minutes: by the times its process started after it took the lock.
  await lockAt(new Date(Date.now() - 10 * 60_000), start.ticks);
  const live = await lifeboat(['--repo', repo, 'backup', src]);
  assert.equal(live.code, 4, live.stderr);
  assert.match(live.stderr, new RegExp(`locked by backup on .*, pid ${holder.pid}, `));
  assert.equal((await lifeboat(['--repo', repo, 'unlock'])).code, 4, 'unlock refuses it too');

  // The pid given to another process, the clock stepped back meanwhile: by the times it could be the holder.
  await lockAt(new Date(Date.now() + 10 * 60_000), start.ticks - 1);
  const backup = await lifeboat(['--repo', repo, 'backup', src]);
  assert.equal(backup.code, 0, backup.stderr);
  assert.match(backup.stderr, /took over a stale lock .*that pid is now another process's/);
  await assert.rejects(fsp.access(lockFile), 'released');
});

test('the claim of a live process replacing the lock, which records its process start, is not taken for one a gone process left when the clock stepped forward since it was made', { skip: processStart(process.pid) === undefined && 'the system does not tell when a process started (no /proc)' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const storage = new LocalStorage(work);
  const before = Buffer.from('{"seq":0}');
  await storage.putDocument('locks/lock.json', before);
  const other = startedNow(t);
  // Made, by the clock of then, 10 minutes before its process started by the clock of now.
  const claim = path.join(work, 'locks', 'lock.json.claim');
  await fsp.mkdir(claim);
  const owner = JSON.stringify({ host: os.hostname(), pid: other.pid, at: new Date(Date.now() - 10 * 60_000).toISOString(), nonce: '0123456789abcdef', processStart: formatStart(processStart(other.pid!)!) });
  await fsp.writeFile(path.join(claim, 'owner.json'), owner);
  let settled = false;
  const replacing = storage.putDocument('locks/lock.json', Buffer.from('{"seq":1}'), { ifMatch: before }).finally(() => (settled = true));
  await sleep(1500);
  assert.equal(await fsp.readFile(path.join(claim, 'owner.json'), 'utf8'), owner, 'the live claim is left to its owner');
  assert.equal(settled, false, 'the replace waits for it');
  await fsp.rm(claim, { recursive: true });
  assert.equal(await replacing, true);
  assert.equal(await fsp.readFile(path.join(work, 'locks', 'lock.json'), 'utf8'), '{"seq":1}');
});

test("a target's switch lock whose pid now belongs to a process started after it was taken is taken over; one taken after that process started is not", async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const slots = path.join(work, 'slots');
  await fsp.mkdir(slots);
  const other = startedNow(t);
  const lockFile = path.join(slots, '.lifeboat-switch.lock');
  const lockOf = (startedAt: Date) => JSON.stringify({ host: os.hostname(), pid: other.pid, command: 'failover', startedAt: startedAt.toISOString() });

  await fsp.writeFile(lockFile, lockOf(new Date(Date.now() - 10 * 60_000)));
  const release = await lockTarget(slots, 'prod', 'failover');
  assert.equal(JSON.parse(await fsp.readFile(lockFile, 'utf8')).pid, process.pid, 'taken over');
  await release();
  await assert.rejects(fsp.access(lockFile));

  await fsp.writeFile(lockFile, lockOf(new Date()));
  await assert.rejects(lockTarget(slots, 'prod', 'rollback'), (err: LockedError) => err.exitCode === 4 && new RegExp(`being switched by failover \\(pid ${other.pid} on `).test(err.message));
  // A lock of an older version, without the time it was taken, is judged by its pid alone.
  await fsp.writeFile(lockFile, JSON.stringify({ host: os.hostname(), pid: other.pid, command: 'failover' }));
  await assert.rejects(lockTarget(slots, 'prod', 'rollback'), (err: LockedError) => err.exitCode === 4);
});

test("a target's switch lock written on another host (slots on NFS) is taken over once its failover was killed and its lease ran out; a live holder's never is", { timeout: 120_000 }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const slots = path.join(work, 'slots');
  await fsp.mkdir(slots);
  const lockFile = path.join(slots, '.lifeboat-switch.lock');
  // A failover on gpu-node-2 whose lease is 6 s: it refreshes it every 2 s while it runs.
  const failover = worker(t, 'switch', slots, '6000', 'gpu-node-2');
  assert.deepEqual(await failover.next(), { held: true });
  const busy = (err: LockedError) => err.exitCode === 4 && new RegExp(`being switched by failover \\(pid ${failover.child.pid} on gpu-node-2, since `).test(err.message);
  await sleep(9000);
  await assert.rejects(lockTarget(slots, 'prod', 'rollback'), busy, 'alive, and longer than its lease since it took the lock');
  assert.ok(Date.parse(JSON.parse(await fsp.readFile(lockFile, 'utf8')).refreshedAt) > Date.now() - 6000, 'its lease is refreshed');

  failover.child.kill('SIGKILL');
  await failover.exited;
  let refused = 0;
  let release: (() => Promise<void>) | undefined;
  while (!release && refused < 200) {
    release = await lockTarget(slots, 'prod', 'rollback').catch((err: LockedError) => {
      assert.ok(busy(err), err.message);
      assert.match(err.hint ?? '', /taken over once its lease has not been refreshed for 6\.0s/);
      refused++;
      return undefined;
    });
    if (!release) await sleep(100);
  }
  assert.ok(release, 'taken over once its lease ran out');
  assert.equal(JSON.parse(await fsp.readFile(lockFile, 'utf8')).host, os.hostname());
  await release();
  await assert.rejects(fsp.access(lockFile), 'released');

  // Stopped (Ctrl-Z) past its lease there, and taken over: continued, it finds its lock lost before it switches anything.
  const stopped = worker(t, 'switch', slots, '3000', 'gpu-node-2');
  assert.deepEqual(await stopped.next(), { held: true });
  stopped.child.kill('SIGSTOP');
  let taken: (() => Promise<void>) | undefined;
  for (let tries = 0; !taken && tries < 200; tries++) {
    taken = await lockTarget(slots, 'prod', 'rollback').catch(() => undefined);
    if (!taken) await sleep(100);
  }
  assert.ok(taken, 'taken over once its lease ran out');
  stopped.child.kill('SIGCONT');
  stopped.child.stdin!.end();
  assert.match(String((await stopped.next()).lost), /^this failover lost the switch lock of target prod: rollback \(pid \d+ on .*\) took it over/);
  await stopped.exited;
  assert.equal(JSON.parse(await fsp.readFile(lockFile, 'utf8')).pid, process.pid, 'its release leaves the new holder its lock');
  await taken();

  // On its own host, a live holder whose lease ran out (stopped with Ctrl-Z) keeps its lock: its pid tells.
  const live = startedNow(t);
  const longAgo = new Date(Date.now() - 3_600_000).toISOString();
  await fsp.writeFile(lockFile, JSON.stringify({ host: os.hostname(), pid: live.pid, command: 'failover', startedAt: new Date().toISOString(), refreshedAt: longAgo, leaseMs: 1000 }));
  await assert.rejects(lockTarget(slots, 'prod', 'rollback'), (err: LockedError) => err.exitCode === 4 && new RegExp(`being switched by failover \\(pid ${live.pid} on `).test(err.message));

  // A lock of an earlier version records no lease: from another host it is never judged, as before.
  await fsp.writeFile(lockFile, JSON.stringify({ host: 'gpu-node-2', pid: 4242, command: 'failover', startedAt: new Date(Date.now() - 86_400_000).toISOString() }));
  await assert.rejects(lockTarget(slots, 'prod', 'rollback'), (err: LockedError) => err.exitCode === 4 && /being switched by failover \(pid 4242 on gpu-node-2/.test(err.message) && /remove /.test(err.hint ?? ''));
});

test("the copy of a target's switch lock that a failover killed while it refreshed its lease left beside the lock is removed by the next holder; a live process's is not", { timeout: 60_000 }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const slots = path.join(work, 'slots');
  await fsp.mkdir(slots);
  // Its lease of 1.5 s is refreshed after 1 s: killed then, after it wrote the new lock's copy and before it renamed it.
  const failover = worker(t, 'switch-killed', slots, '1500');
  assert.deepEqual(await failover.next(), { held: true });
  assert.deepEqual(await failover.next(), { paused: 1 });
  failover.child.kill('SIGKILL');
  await failover.exited;
  const copies = async () => (await fsp.readdir(slots)).filter((n) => /^\.lifeboat-switch\.lock\.\d+-[0-9a-f]{8}$/.test(n));
  const [left] = await copies();
  assert.equal(left, `.lifeboat-switch.lock.${failover.child.pid}-${left!.slice(-8)}`, 'the killed refresh left its copy');
  // Killed a minute ago; beside it, the copy of a process that runs, stopped while it replaces the lock for 20 s.
  const minuteAgo = new Date(Date.now() - 60_000);
  await fsp.utimes(path.join(slots, left!), minuteAgo, minuteAgo);
  const live = startedNow(t);
  const running = `.lifeboat-switch.lock.${live.pid}-0123abcd`;
  await fsp.writeFile(path.join(slots, running), '{}');
  const before = new Date(Date.now() - 20_000);
  await fsp.utimes(path.join(slots, running), before, before);

  const release = await lockTarget(slots, 'prod', 'rollback');
  assert.deepEqual(await copies(), [running], "the killed process's copy is removed");
  await release();
  assert.deepEqual((await fsp.readdir(slots)).sort(), [running], 'and its claim: nothing else is left');
});

test("status says who holds a target's switch lock, whether that process is gone, and the copies of the lock killed processes left beside it, changing none of them", async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\ntargets:\n  prod: { slots: ./slots, active: ./current }\n');
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const slots = path.join(work, 'slots');
  await fsp.mkdir(slots);
  const lockFile = path.join(slots, '.lifeboat-switch.lock');
  const status = async () => {
    const text = await lifeboat(['status'], { cwd: work });
    const json = await lifeboat(['--json', 'status'], { cwd: work });
    assert.equal(text.code, 0, text.stdout + text.stderr);
    assert.equal(json.code, 0, json.stdout + json.stderr);
    return { text: text.stdout, target: json.json().targets[0] };
  };
  assert.equal((await status()).target.switchLock, undefined, 'no lock, nothing said');

  const live = startedNow(t);
  const since = new Date().toISOString();
  await fsp.writeFile(lockFile, JSON.stringify({ host: os.hostname(), pid: live.pid, command: 'failover 20261122-030000-457I', startedAt: since, refreshedAt: since, leaseMs: 1_800_000 }));
  let seen = await status();
  assert.deepEqual(seen.target.switchLock, { command: 'failover 20261122-030000-457I', host: os.hostname(), pid: live.pid, startedAt: since, refreshedAt: since, stale: false });
  assert.match(seen.text, new RegExp(`\n  being switched by failover 20261122-030000-457I \\(pid ${live.pid} on ${os.hostname()}, since ${since}\\)\n`));

  // Its process gone, killed while it refreshed its lease: the lock and the copy it was writing stay.
  live.kill('SIGKILL');
  await new Promise((resolve) => live.once('exit', resolve));
  const copy = `.lifeboat-switch.lock.${live.pid}-0123abcd`;
  await fsp.writeFile(path.join(slots, copy), '{}');
  const minuteAgo = new Date(Date.now() - 60_000);
  await fsp.utimes(path.join(slots, copy), minuteAgo, minuteAgo);
  seen = await status();
  assert.equal(seen.target.switchLock.stale, true);
  assert.deepEqual(seen.target.switchLockCopies, [copy]);
  assert.match(seen.text, new RegExp(`\n  switch lock left by failover 20261122-030000-457I \\(pid ${live.pid} on .*\\), which is gone: the next failover or rollback takes it over\n`));
  assert.match(seen.text, new RegExp(`\n  left beside the switch lock by a failover or rollback killed while it rewrote it: ${copy.replace(/[.]/g, '\\.')} \\(harmless; the next failover or rollback removes it\\)\n`));
  assert.deepEqual((await fsp.readdir(slots)).sort(), ['.lifeboat-switch.lock', copy], 'status removes nothing');

  // The next holder removes both.
  const release = await lockTarget(slots, 'prod', 'rollback');
  await release();
  seen = await status();
  assert.equal(seen.target.switchLock, undefined);
  assert.equal(seen.target.switchLockCopies, undefined);
});

test('an unreadable lock (damaged, empty) is said to be unreadable, not described as a holder "? on ?, pid 0": unlock removes it, a backup takes it over', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const lockFile = path.join(d.repo, 'locks', 'lock.json');
  const damage = async (text: string) => {
    await fsp.mkdir(path.dirname(lockFile), { recursive: true });
    await fsp.writeFile(lockFile, text);
  };

  await damage('');
  const unlocked = await lifeboat(['--repo', d.repo, 'unlock']);
  assert.equal(unlocked.code, 0, unlocked.stderr);
  assert.equal(unlocked.stdout, 'removed the repository lock, whose document was unreadable (damaged or empty)\n');
  await damage('{"host": "batch-node-7", "pid":');
  const json = await lifeboat(['--repo', d.repo, '--json', 'unlock']);
  assert.deepEqual(json.json(), { removed: true, lock: null, stale: true, reason: 'the lock document is unreadable', readersRemoved: 0 });

  await damage('\0\0\0\0');
  const backup = await lifeboat(['--repo', d.repo, 'backup', d.src]);
  assert.equal(backup.code, 0, backup.stderr);
  assert.match(backup.stderr, /warning: took over the repository lock, whose document was unreadable \(damaged or empty\)/);
  assert.doesNotMatch(backup.stderr + unlocked.stdout, /\?|pid 0/);
  await assert.rejects(fsp.access(lockFile), 'released');
});

test("a target's switch lock being written (empty for an instant) is waited for, never taken over; one left empty or damaged by a crash is taken over", async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const slots = path.join(work, 'slots');
  await fsp.mkdir(slots);
  const lockFile = path.join(slots, '.lifeboat-switch.lock');
  const holder = JSON.stringify({ host: os.hostname(), pid: process.pid, command: 'rollback', startedAt: new Date().toISOString() });

  // Made by another failover, which writes it a moment later.
  await fsp.writeFile(lockFile, '');
  const writing = new Promise((resolve) => setTimeout(resolve, 100)).then(() => fsp.writeFile(lockFile, holder));
  await assert.rejects(lockTarget(slots, 'prod', 'failover'), (err: LockedError) => err.exitCode === 4 && /target prod is being switched by rollback/.test(err.message));
  await writing;
  assert.equal(await fsp.readFile(lockFile, 'utf8'), holder, 'the holder keeps its lock');

  for (const left of ['', '{"host": "', '\0\0\0\0']) {
    await fsp.writeFile(lockFile, left);
    const aMinuteAgo = new Date(Date.now() - 60_000);
    await fsp.utimes(lockFile, aMinuteAgo, aMinuteAgo);
    const release = await lockTarget(slots, 'prod', 'failover');
    assert.equal(JSON.parse(await fsp.readFile(lockFile, 'utf8')).pid, process.pid, `${JSON.stringify(left)} is taken over`);
    await release();
  }
  assert.deepEqual(await fsp.readdir(slots), [], 'nothing is left in the slots directory');
});
