import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { appendEvent, readEvents } from '../src/core/journal.js';
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
