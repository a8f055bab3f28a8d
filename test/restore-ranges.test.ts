import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { smallDeployment } from './helpers/repo.js';
import { compareSnapshots, prng, snapshotTree, writeRandomFile } from './helpers/tree.js';

test('a restore skips the superseded copy of a rewritten file instead of streaming it', async () => {
  const d = await smallDeployment();
  const rand = prng(11);
  for (const name of ['a.safetensors', 'b.safetensors', 'c.safetensors']) await writeRandomFile(path.join(d.src, name), 12 << 20, rand);
  const full = (await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'full'])).json();
  await writeRandomFile(path.join(d.src, 'b.safetensors'), 12 << 20, rand);
  const incr = (await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'incr'])).json();
  const expected = await snapshotTree(path.dirname(d.src));
  expected.delete('repo');
  for (const k of [...expected.keys()]) if (k.startsWith('repo/')) expected.delete(k);

  // Damage the old copy of b inside the full's volume: only a reader that streams it would notice.
  const shown = (await lifeboat(['--repo', d.repo, '--json', 'show', full.id])).json();
  assert.ok(shown.entries.some((e: { path: string }) => e.path === 'b.safetensors'));
  const manifest = JSON.parse(await fsp.readFile(path.join(d.repo, 'points', `${full.id}.json`), 'utf8'));
  const oldB = manifest.entries.find((e: { path: string }) => e.path === 'b.safetensors');
  const volume = path.join(d.repo, ...manifest.volumes[oldB.ref.volume].key.split('/'));
  const fh = await fsp.open(volume, 'r+');
  await fh.write(Buffer.from([0xff, 0x00, 0xff]), 0, 3, oldB.ref.offset + 512 + (6 << 20));
  await fh.close();

  const target = path.join(d.work, 'out');
  const r = await lifeboat(['--repo', d.repo, 'restore', incr.id, '--target', target]);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /volume-checksum|does not match its recorded/, 'the damaged, superseded bytes were never read');
  const restored = await snapshotTree(target);
  for (const [p, e] of restored) assert.equal(compareSnapshots(new Map([[p, expected.get(p)!]]), new Map([[p, e]])), undefined);

  // The full still restores (from the whole volume, whose damage is then reported) only if b's copy is intact: it is not.
  const v = await lifeboat(['--repo', d.repo, '--json', 'verify', '--read-data']);
  assert.equal(v.code, 3);
  assert.ok(v.json().problems.some((p: { point: string; path: string }) => p.point === full.id && p.path === 'models/b.safetensors'));
  await fsp.rm(d.work, { recursive: true, force: true });
});
