import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat, type CliRun } from './helpers/cli.js';
import { compareSnapshots, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile } from './helpers/tree.js';
import { probeWindow } from '../src/format/probe.js';

const SHARD = 3 << 20;

/** Copies a tree as `cp -r` does: new inodes and new times, the same bytes. */
async function copyTree(from: string, to: string): Promise<void> {
  await fsp.cp(from, to, { recursive: true, preserveTimestamps: false });
}

test('a model directory copied to a new version is not stored again: its files refer to the bytes already stored, and a same-size file that differs is stored (randomized)', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const seed = seedFromEnv();
  const rand = prng(seed);
  const models = path.join(work, 'models');
  const v1 = path.join(models, 'v1');
  await fsp.mkdir(v1, { recursive: true });
  for (let i = 0; i < 3; i++) await writeRandomFile(path.join(v1, `shard-${i}.safetensors.bin`), SHARD, rand);
  for (let i = 0; i < 5; i++) await writeRandomFile(path.join(v1, `config-${i}.json`), 100 + Math.floor(rand() * 5000), rand);
  const repo = path.join(work, 'repo');
  const ok = async (...args: string[]): Promise<CliRun> => {
    const r = await lifeboat(['--repo', repo, ...args]);
    assert.equal(r.code, 0, `seed ${seed}: lifeboat ${args.join(' ')}: ${r.stderr}`);
    return r;
  };
  await ok('init');
  // Two copies of one shard in the first backup: stored once.
  await fsp.copyFile(path.join(v1, 'shard-0.safetensors.bin'), path.join(v1, 'shard-0-copy.bin'));
  const full = (await ok('--json', 'backup', models)).json();
  assert.ok(full.storedBytes < 4 * SHARD, `seed ${seed}: a file twice in one backup is stored once (${full.storedBytes} bytes stored)`);

  // A new version: a copy of v1 (new times, new inodes), one shard fine-tuned (same size, other bytes),
  // and one that differs from its original only outside the probed middle.
  const v2 = path.join(models, 'v2');
  await copyTree(v1, v2);
  await writeRandomFile(path.join(v2, 'shard-1.safetensors.bin'), SHARD, rand);
  const edited = path.join(v2, 'shard-2.safetensors.bin');
  const { start, end } = probeWindow(SHARD);
  const at = rand() < 0.5 ? Math.floor(rand() * start) : end + Math.floor(rand() * (SHARD - end));
  const fh = await fsp.open(edited, 'r+');
  const byte = Buffer.alloc(1);
  await fh.read(byte, 0, 1, at);
  byte[0] ^= 0xff;
  await fh.write(byte, 0, 1, at);
  await fh.close();
  const incr = (await ok('--json', 'backup', models)).json();
  // Only the two shards that differ are stored; the rest of v2 refers to v1's bytes.
  assert.ok(incr.storedBytes >= 2 * SHARD && incr.storedBytes < 2 * SHARD + (1 << 20), `seed ${seed}: stored ${incr.storedBytes} bytes`);
  const manifest = JSON.parse(await fsp.readFile(path.join(repo, 'points', `${incr.id}.json`), 'utf8'));
  const refOf = (p: string) => manifest.entries.find((e: { path: string }) => e.path === p).ref.point;
  assert.equal(refOf('v2/shard-0.safetensors.bin'), full.id);
  assert.equal(refOf('v2/config-3.json'), full.id, 'small files too');
  assert.equal(refOf('v2/shard-1.safetensors.bin'), incr.id);
  assert.equal(refOf('v2/shard-2.safetensors.bin'), incr.id, `seed ${seed}: a file whose probe matches but whose byte ${at} differs is stored`);

  const snapshot = await snapshotTree(models);
  await ok('restore', incr.id, '--target', path.join(work, 'restored'));
  assert.equal(compareSnapshots(snapshot, await snapshotTree(path.join(work, 'restored', 'models'))), undefined, `seed ${seed}`);
  const v = await ok('--json', 'verify', '--read-data');
  assert.equal(v.json().ok, true);
});
