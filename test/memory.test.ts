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
async function peakRss(args: string[], work: string): Promise<{ code: number; mib: number; stderr: string }> {
  const rssFile = path.join(work, `rss-${Date.now()}-${Math.random()}`);
  const child = spawn(process.execPath, ['--import', PRELOAD, BIN, ...args], { env: { ...process.env, MAX_RSS_FILE: rssFile }, stdio: ['ignore', 'ignore', 'pipe'] });
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
