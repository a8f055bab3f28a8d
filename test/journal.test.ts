import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { appendEvent, readEvents } from '../src/core/journal.js';
import { LocalStorage } from '../src/storage/local.js';
import { tempDir } from './helpers/tree.js';

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
