import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BIN } from './helpers/cli.js';
import { tempDir } from './helpers/tree.js';

const PRELOAD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'helpers', 'max-rss.js');
const GiB = 1024 ** 3;

/** Runs lifeboat as a child and returns its exit code and peak RSS in MiB. */
async function peakRss(args: string[], work: string, env: NodeJS.ProcessEnv = {}): Promise<{ code: number; mib: number; stderr: string }> {
  const rssFile = path.join(work, `rss-${Date.now()}-${Math.random()}`);
  const child = spawn(process.execPath, ['--import', PRELOAD, BIN, ...args], { env: { ...process.env, ...env, MAX_RSS_FILE: rssFile }, stdio: ['ignore', 'ignore', 'pipe'] });
  const err: Buffer[] = [];
  child.stderr.on('data', (c: Buffer) => err.push(c));
  const code = await new Promise<number>((r) => child.on('close', (c) => r(c ?? 1)));
  const kib = Number(await fsp.readFile(rssFile, 'utf8'));
  return { code, mib: kib / 1024, stderr: Buffer.concat(err).toString() };
}

test('peak memory does not grow with file size: a 4 GiB file backs up and restores in bounded memory', async (t) => {
  const work = await tempDir();
  const free = await fsp.statfs(work).then((s) => s.bavail * s.bsize);
  if (free < 14 * GiB) {
    t.skip(`needs 14 GiB free in ${path.dirname(work)} for two copies of a 4 GiB file, has ${(free / GiB).toFixed(1)} GiB`);
    return;
  }
  const figures: Record<string, number> = {};
  try {
    for (const [label, size] of [['4MiB', 4 * 1024 * 1024], ['1GiB', GiB], ['4GiB', 4 * GiB]] as const) {
      const src = path.join(work, `src-${label}`, 'models');
      await fsp.mkdir(src, { recursive: true });
      // Sparse: cheap to create, but every byte is still read, hashed, archived, stored and restored.
      const fh = await fsp.open(path.join(src, 'model.safetensors'), 'w');
      await fh.truncate(size);
      await fh.write(Buffer.from('end'), 0, 3, size - 3);
      await fh.close();
      const repo = path.join(work, `repo-${label}`);
      const init = await peakRss(['--repo', repo, 'init'], work);
      assert.equal(init.code, 0, init.stderr);
      const b = await peakRss(['--repo', repo, 'backup', src, '--type', 'full'], work);
      assert.equal(b.code, 0, b.stderr);
      await fsp.rm(path.join(work, `src-${label}`), { recursive: true });
      const r = await peakRss(['--repo', repo, 'restore', 'latest', '--target', path.join(work, `out-${label}`)], work);
      assert.equal(r.code, 0, r.stderr);
      assert.equal((await fsp.stat(path.join(work, `out-${label}`, 'models', 'model.safetensors'))).size, size);
      await fsp.rm(path.join(work, `out-${label}`), { recursive: true });
      await fsp.rm(repo, { recursive: true });
      figures[`backup ${label}`] = b.mib;
      figures[`restore ${label}`] = r.mib;
    }
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
  t.diagnostic(Object.entries(figures).map(([k, v]) => `${k}: ${v.toFixed(0)} MiB`).join(', '));
  // Streaming leaves garbage buffers that V8 collects once about 64 MiB of
  // external memory has piled up: a fixed slack reached within the first GiB,
  // after which four times the data must cost no more memory.
  for (const step of ['backup', 'restore']) {
    const small = figures[`${step} 4MiB`]!;
    const mid = figures[`${step} 1GiB`]!;
    const big = figures[`${step} 4GiB`]!;
    assert.ok(big < mid + 16, `${step}: peak RSS ${big.toFixed(0)} MiB for 4 GiB vs ${mid.toFixed(0)} MiB for 1 GiB`);
    assert.ok(big < small + 80, `${step}: peak RSS ${big.toFixed(0)} MiB for 4 GiB vs ${small.toFixed(0)} MiB for 4 MiB`);
    assert.ok(big < 150, `${step}: peak RSS ${big.toFixed(0)} MiB is under 150 MiB`);
  }
});

test('an encrypted backup and restore of four 400 MiB files, each in volumes of its own, stay under 150 MiB', async (t) => {
  const work = await tempDir();
  const free = await fsp.statfs(work).then((s) => s.bavail * s.bsize);
  if (free < 5 * GiB) {
    t.skip(`needs 5 GiB free in ${path.dirname(work)} for two copies of 1.6 GiB, has ${(free / GiB).toFixed(1)} GiB`);
    return;
  }
  // Each segment's output is a new buffer of Node's, and each volume took batch buffers of its own: before
  // the encryption thread collected them young and batch buffers were pooled across volumes, this took
  // 170 to 190 MiB.
  const env = { LIFEBOAT_PASSWORD: 'memory test' };
  const size = 400 * 1024 * 1024;
  try {
    const src = path.join(work, 'src', 'models');
    await fsp.mkdir(src, { recursive: true });
    for (let i = 1; i <= 4; i++) {
      // Sparse, and different from one another (equal files would be stored once).
      const fh = await fsp.open(path.join(src, `shard-${i}.safetensors`), 'w');
      await fh.truncate(size);
      await fh.write(Buffer.from(`shard ${i}`), 0, 7, 0);
      await fh.close();
    }
    const repo = path.join(work, 'repo');
    const init = await peakRss(['--repo', repo, 'init', '--encryption', 'aes-256-gcm'], work, env);
    assert.equal(init.code, 0, init.stderr);
    const b = await peakRss(['--repo', repo, 'backup', src, '--type', 'full'], work, env);
    assert.equal(b.code, 0, b.stderr);
    await fsp.rm(path.join(work, 'src'), { recursive: true });
    const r = await peakRss(['--repo', repo, 'restore', 'latest', '--target', path.join(work, 'out')], work, env);
    assert.equal(r.code, 0, r.stderr);
    for (let i = 1; i <= 4; i++) assert.equal((await fsp.stat(path.join(work, 'out', 'models', `shard-${i}.safetensors`))).size, size);
    t.diagnostic(`encrypted backup: ${b.mib.toFixed(0)} MiB, restore: ${r.mib.toFixed(0)} MiB`);
    assert.ok(b.mib < 150, `encrypted backup: peak RSS ${b.mib.toFixed(0)} MiB is under 150 MiB`);
    assert.ok(r.mib < 150, `encrypted restore: peak RSS ${r.mib.toFixed(0)} MiB is under 150 MiB`);
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
});
