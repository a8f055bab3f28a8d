import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { acquireLock, readStoredLock } from '../src/core/lock.js';
import { LocalStorage } from '../src/storage/local.js';
import { prng, seedFromEnv, tempDir } from './helpers/tree.js';
import { sleep } from './helpers/processes.js';
import { finished, worker } from './helpers/lock-workers.js';
import type { ChildProcess } from 'node:child_process';


test('a prune rewriting its lock back to back is never found without one: readers looking meanwhile always see it, and a backup never takes it', { timeout: 10 * 60_000 }, async (t) => {
  const repo = await tempDir();
  t.after(() => fsp.rm(repo, { recursive: true, force: true }));
  const stop = path.join(repo, 'stop');
  const prune = worker(t, 'announce', repo, '2000');
  assert.deepEqual(await prune.next(), { held: true });
  const lookers = [worker(t, 'look', repo, stop), worker(t, 'look', repo, stop)];
  const backup = worker(t, 'take', repo, stop);
  const announced = await prune.next();
  await fsp.writeFile(stop, '');
  const looked = (await Promise.all(lookers.map((l) => l.next()))) as { looks: number; missing: number }[];
  const took = (await backup.next()) as { tries: number; taken: number };
  prune.child.stdin!.end();
  await Promise.all([prune, ...lookers, backup].map(finished));
  t.diagnostic(`looks ${looked.map((l) => l.looks).join(' + ')}, attempts of the backup ${took.tries}`);
  assert.deepEqual(announced, { announced: 2000 }, 'the prune kept its lock through every rewrite');
  assert.ok(looked.every((l) => l.looks > 0) && took.tries > 0, 'the readers and the backup looked while the prune rewrote its lock');
  assert.deepEqual(
    looked.map((l) => l.missing),
    [0, 0],
    'a reader found no lock while the prune held it',
  );
  assert.equal(took.taken, 0, 'a backup took the lock while the prune held it');
});

test('of processes replacing the same document at once, one does, and the document is its', { timeout: 5 * 60_000 }, async (t) => {
  const repo = await tempDir();
  t.after(() => fsp.rm(repo, { recursive: true, force: true }));
  const storage = new LocalStorage(repo);
  const keys = Array.from({ length: 200 }, (_, i) => `locks/race-${i}.json`);
  for (const key of keys) await storage.putDocument(key, Buffer.from('stale'));
  const go = path.join(repo, 'go');
  const racers = ['a', 'b', 'c'].map((name) => worker(t, 'race', repo, go, name, ...keys));
  await sleep(500);
  await fsp.writeFile(go, '');
  const won = (await Promise.all(racers.map((r) => r.next()))).map((line) => new Set(line.won as string[]));
  await Promise.all(racers.map(finished));
  for (const key of keys) {
    const winners = ['a', 'b', 'c'].filter((_, i) => won[i]!.has(key));
    assert.equal(winners.length, 1, `${key}: replaced by ${winners.join(', ') || 'none'}`);
    assert.equal((await storage.getDocument(key)).toString(), winners[0], key);
  }
  t.diagnostic(`won: ${won.map((w) => w.size).join(', ')}`);
  await assert.rejects(fsp.readdir(path.join(repo, 'locks', 'race-0.json.claim')), 'no claim is left behind');
});

/** A seeded random source (the seed printed) and an empty local repository. */
async function randomBed(t: { diagnostic(message: string): void; after(fn: () => Promise<void>): void }) {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed} (LIFEBOAT_TEST_SEED)`);
  const repo = await tempDir();
  t.after(() => fsp.rm(repo, { recursive: true, force: true }));
  return { rand: prng(seed), repo, storage: new LocalStorage(repo) };
}

/** The writer's process is stopped while it holds its claim on `key` (the claim names its pid); false when it was not then. */
async function stoppedWhileClaiming(child: ChildProcess, claim: string): Promise<boolean> {
  child.kill('SIGSTOP');
  // A process stopped is stopped once the signal is delivered; the claim is looked at after that.
  await sleep(20);
  // Only this writer makes claims: one there is its, said whose or not yet (the instants after its mkdir).
  if (await fsp.stat(claim).then(() => true, () => false)) return true;
  child.kill('SIGCONT');
  return false;
}

test('a writer stopped while it replaces a document (SIGSTOP) does not write over another\'s replacement when it is continued', { timeout: 5 * 60_000 }, async (t) => {
  const { rand, repo, storage } = await randomBed(t);
  const key = 'locks/lock.json';
  const file = path.join(repo, 'locks', 'lock.json');
  const claim = `${file}.claim`;
  for (let round = 0; round < 2; round++) {
    await fsp.rm(path.join(repo, 'locks'), { recursive: true, force: true });
    await storage.putDocument(key, Buffer.from(JSON.stringify({ seq: 0 })));
    const writer = worker(t, 'rewrite', repo, key);
    assert.deepEqual(await writer.next(), { started: true });
    let stopped = false;
    for (let attempt = 0; attempt < 2000 && !stopped; attempt++) {
      await sleep(1 + rand() * 20);
      stopped = await stoppedWhileClaiming(writer.child, claim);
    }
    assert.ok(stopped, 'the writer was stopped while it held its claim');
    // Another process (this one) replaces what the document holds now: it waits for the stopped writer's claim, then takes it over.
    const now = await storage.getDocument(key);
    const mine = Buffer.from(JSON.stringify({ seq: -1, by: 'another' }));
    assert.equal(await storage.putDocument(key, mine, { ifMatch: now }), true, 'the document was replaced beside the stopped writer');
    writer.child.kill('SIGCONT');
    const refused = (await writer.next()).refused as number;
    await finished(writer);
    assert.deepEqual(await storage.getDocument(key), mine, `the writer, continued, wrote over the other's document (round ${round}, it was at ${refused})`);
    await assert.rejects(fsp.readdir(claim), 'no claim is left behind');
  }
});

test('a writer stopped after it compared and before it wrote (its claim taken over meanwhile) does not write when it is continued', { timeout: 5 * 60_000 }, async (t) => {
  const { rand, repo, storage } = await randomBed(t);
  const key = 'locks/lock.json';
  await storage.putDocument(key, Buffer.from(JSON.stringify({ seq: 0 })));
  const nth = 1 + Math.floor(rand() * 50);
  const writer = worker(t, 'rewrite', repo, key, String(nth));
  assert.deepEqual(await writer.next(), { started: true });
  assert.deepEqual(await writer.next(), { paused: nth });
  // What it compared is what the document still holds: only its claim, taken over after CLAIM_STALE_MS, stops it.
  const now = await storage.getDocument(key);
  assert.deepEqual(JSON.parse(now.toString()), { seq: nth - 1 });
  const mine = Buffer.from(JSON.stringify({ seq: -1, by: 'another' }));
  assert.equal(await storage.putDocument(key, mine, { ifMatch: now }), true, 'the document was replaced beside the stopped writer');
  writer.child.kill('SIGCONT');
  assert.deepEqual(await writer.next(), { refused: nth });
  await finished(writer);
  assert.deepEqual(await storage.getDocument(key), mine, 'the writer, continued, wrote over the other\'s document');
  await assert.rejects(fsp.readdir(path.join(repo, 'locks', 'lock.json.claim')), 'no claim is left behind');
});

test('a prune killed (SIGKILL) at any moment while it rewrites its lock leaves a whole lock, which the next writer takes over', { timeout: 10 * 60_000 }, async (t) => {
  const { rand, repo, storage } = await randomBed(t);
  let claimsLeft = 0;
  for (let round = 0; round < 20; round++) {
    const prune = worker(t, 'announce', repo, '1000000');
    assert.deepEqual(await prune.next(), { held: true });
    await sleep(rand() * 300);
    prune.child.kill('SIGKILL');
    const { signal } = await prune.exited;
    assert.equal(signal, 'SIGKILL', `round ${round}: the prune was killed`);
    if (await fsp.stat(path.join(repo, 'locks', 'lock.json.claim')).then(() => true, () => false)) claimsLeft++;
    const left = await readStoredLock(storage);
    assert.ok(left && !left.unreadable, `round ${round}: the killed prune left ${left ? 'an unreadable lock' : 'no lock'}`);
    assert.equal(left.info.pid, prune.child.pid, `round ${round}: the lock is the killed prune's`);
    assert.ok(left.stale, `round ${round}: the killed prune's lock is stale (${left.reason})`);
    const next = await acquireLock(storage, 'backup');
    assert.equal(next.tookOver?.info.pid, prune.child.pid, `round ${round}: the next writer took over the killed prune's lock`);
    await next.release();
  }
  t.diagnostic(`killed holding its claim: ${claimsLeft} of 20`);
});

test("processes taking over a target's stale switch lock at once never both hold it, nor lose it to a third (the lock is replaced, never set aside)", { timeout: 5 * 60_000 }, async (t) => {
  const slots = await tempDir();
  t.after(() => fsp.rm(slots, { recursive: true, force: true }));
  const stop = path.join(slots, 'stop');
  // Each takes the lock, checks no other holds it, and leaves it as a killed failover would: every take is a takeover.
  const churners = [0, 1, 2].map(() => worker(t, 'churn', slots, stop));
  await sleep(20_000);
  await fsp.writeFile(stop, '');
  const said = await Promise.all(churners.map((w) => w.next()));
  await Promise.all(churners.map(finished));
  t.diagnostic(`takeovers: ${said.map((s) => s.taken).join(', ')}; found held: ${said.map((s) => s.busy).join(', ')}`);
  assert.ok(said.every((s) => (s.taken as number) > 0), 'each took the lock');
  assert.deepEqual(said.map((s) => s.both), [0, 0, 0], 'no process held the lock while another did');
  assert.deepEqual((await fsp.readdir(slots)).filter((n) => n !== 'stop' && n !== '.lifeboat-switch.lock'), [], 'nothing is left beside the lock (no claim, no copy)');
});
