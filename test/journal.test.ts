import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { SwitchSettling, appendEvent, readEvents, withoutEndedAnnouncements, type JournalEvent } from '../src/core/journal.js';
import { LocalStorage } from '../src/storage/local.js';
import { tempDir } from './helpers/tree.js';
import { lifeboat } from './helpers/cli.js';
import { smallDeployment } from './helpers/repo.js';

test('the journal gives back its newest events in order, read several at once, skipping a damaged one', async () => {
  const dir = await tempDir();
  const storage = new LocalStorage(dir);
  const start = Date.parse('2026-11-01T00:00:00Z');
  for (let i = 0; i < 40; i++) {
    await appendEvent(storage, { type: 'drill', point: null, outcome: 'ok', at: new Date(start + i * 60_000).toISOString(), detail: { n: i } });
  }
  const keys = (await fsp.readdir(path.join(dir, 'journal'))).sort();
  await fsp.writeFile(path.join(dir, 'journal', keys[35]!), '{"type": "dri');
  const events = await readEvents(storage, 30);
  assert.deepEqual(
    events.map((e) => e.detail?.n),
    Array.from({ length: 30 }, (_, i) => 10 + i).filter((n) => n !== 35),
  );
  await storage.close();
  await fsp.rm(dir, { recursive: true, force: true });
});

test('a switch announced in the journal stays unsettled until its own end or a later switch of its target is journalled, whatever the clocks said', () => {
  const at = (m: number) => new Date(Date.UTC(2026, 10, 1, 0, m)).toISOString();
  const ev = (m: number, outcome: JournalEvent['outcome'], generation: number | undefined, slot: string, target = 'prod'): JournalEvent => ({
    type: 'failover',
    at: at(m),
    user: 'ops',
    host: 'h',
    point: slot,
    target,
    outcome,
    detail: { slot, from: 'old', ...(generation === undefined ? {} : { generation }) },
  });
  const unsettled = (events: JournalEvent[]) => {
    const s = new SwitchSettling();
    for (const e of [...events].reverse()) s.see(e);
    return s.unsettled().map((e) => `${e.target} ${e.point}`);
  };
  // Ended, even with the end written before the announcement by the clocks.
  assert.deepEqual(unsettled([ev(1, 'switching', 1, 'a'), ev(2, 'ok', 1, 'a')]), []);
  assert.deepEqual(unsettled([ev(2, 'ok', 1, 'a'), ev(3, 'switching', 1, 'a')]), []);
  // Killed: its end never came; another target's switches change nothing; a later switch of the target settles it.
  assert.deepEqual(unsettled([ev(1, 'switching', 1, 'a'), ev(2, 'ok', 7, 'x', 'eu')]), ['prod a']);
  assert.deepEqual(unsettled([ev(1, 'switching', 1, 'a'), ev(2, 'switching', 2, 'b'), ev(3, 'ok', 2, 'b')]), []);
  // A later failover that failed before it switched (no generation) does not settle it.
  assert.deepEqual(unsettled([ev(1, 'ok', 1, 'z'), ev(2, 'switching', 2, 'a'), ev(3, 'failed', undefined, 'b')]), ['prod a']);
  // Made while the host's clock ran ahead, an older switch does not settle one made after it.
  assert.deepEqual(unsettled([ev(1, 'switching', 3, 'a'), ev(50, 'ok', 2, 'z')]), ['prod a']);
  // A target whose record of switches was lost counts again from 1: its newest announcement is unsettled.
  assert.deepEqual(unsettled([ev(1, 'ok', 10, 'z'), ev(2, 'switching', 1, 'a')]), ['prod a']);
  // Status lists a switch once: the announcement of one that ended is left out, not that of one killed.
  const listed = withoutEndedAnnouncements([ev(1, 'switching', 1, 'a'), ev(2, 'ok', 1, 'a'), ev(3, 'switching', 2, 'b')]);
  assert.deepEqual(listed.map((e) => `${e.point} ${e.outcome}`), ['a ok', 'b switching']);
});

test('status --events N shows N events of the repository too, not ten whatever N says, on a host with no targets', async () => {
  const d = await smallDeployment();
  const repo = ['--repo', d.repo];
  assert.equal((await lifeboat([...repo, 'backup', d.src])).code, 0);
  // Twelve drills of that point, as a nightly drill leaves them.
  const point = (await lifeboat([...repo, '--json', 'list'])).json()[0].id as string;
  const storage = new LocalStorage(d.repo);
  const start = Date.parse('2026-11-01T05:30:00Z');
  for (let i = 0; i < 12; i++) await appendEvent(storage, { type: 'drill', point, outcome: 'ok', at: new Date(start + i * 86_400_000).toISOString(), durationMs: 1000 + i });
  await storage.close();
  const shown = async (args: string[]) => {
    const text = await lifeboat([...repo, 'status', ...args]);
    assert.equal(text.code, 0, text.stderr);
    const json = await lifeboat([...repo, '--json', 'status', ...args]);
    assert.equal(json.code, 0, json.stderr);
    const events = json.json().events as { at: string }[];
    assert.equal(text.stdout.split('\n').filter((line) => / {2}\d{4}-\d\d-\d\dT.* drill /.test(line)).length, events.length, text.stdout);
    return events.map((e) => e.at.slice(0, 10));
  };
  assert.equal((await shown([])).length, 10, 'ten by default');
  assert.deepEqual(await shown(['--events', '3']), ['2026-11-10', '2026-11-11', '2026-11-12']);
  assert.deepEqual(await shown(['--events', '0']), []);
  assert.equal((await shown(['--events', '20'])).length, 12);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('a restore refused before it wrote anything is not journalled as a failed restore; one that failed is, and status says why', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  const journal = () => fsp.readdir(path.join(d.repo, 'journal')).catch(() => [] as string[]);
  const busy = path.join(d.work, 'busy');
  await fsp.mkdir(busy);
  await fsp.writeFile(path.join(busy, 'keep.txt'), 'mine');
  const refusals = [
    ['restore', 'latest', '--target', busy],
    ['restore', 'latest', '--target', path.join(d.work, 'out'), '--include', 'nothing/**'],
    ['restore', 'latest', '--target', path.join(d.work, 'out'), '--force', '--include', 'models/**'],
  ];
  for (const args of refusals) assert.equal((await lifeboat(['--repo', d.repo, ...args])).code, 2);
  assert.deepEqual(await journal(), [], 'nothing was restored, nothing failed');
  assert.doesNotMatch((await lifeboat(['--repo', d.repo, 'status'])).stdout, /restore/);

  // A damaged volume: the restore fails, and that is journalled with its reason.
  const data = path.join(d.repo, 'data');
  const [volume] = (await fsp.readdir(data, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
  const bytes = await fsp.readFile(volume!);
  bytes[bytes.length >> 1] ^= 0xff;
  await fsp.writeFile(volume!, bytes);
  const damaged = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', path.join(d.work, 'out')]);
  assert.equal(damaged.code, 3, damaged.stderr);
  assert.equal((await journal()).length, 1);
  const status = await lifeboat(['--repo', d.repo, 'status']);
  assert.match(status.stdout, /restore \d{8}-\d{6}-\d{3}F failed \([^)]+\): \S/);
});

test('status says why a drill failed, as the drill said it', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  const drill = await lifeboat(['--repo', d.repo, 'drill', '--rto', '1ms']);
  assert.equal(drill.code, 5, drill.stderr);
  const status = await lifeboat(['--repo', d.repo, 'status']);
  assert.match(status.stdout, /drill \d{8}-\d{6}-\d{3}F failed, RTO \S+ \([^)]+\): rto: achieved RTO \S+ exceeds the objective of 1ms\n/);
});
