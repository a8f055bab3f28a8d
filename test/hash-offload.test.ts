import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Sha256Offload } from '../src/core/hash-offload.js';
import { seededRandom, testSeed } from './helpers/data.js';

describe('hashing on a second thread', () => {
  it('gives every stream its own SHA-256 while many share the ring', async () => {
    const random = seededRandom(testSeed('hash-offload'));
    const hasher = new Sha256Offload();
    try {
      const streams = Array.from({ length: 7 }, (_, i) => ({ digest: hasher.stream(), hash: createHash('sha256'), left: i === 0 ? 0 : Math.floor(random() * (9 << 20)) }));
      // Each stream feeds pieces of random sizes (some above a slot) from one reused buffer, interleaved with the others.
      const scratch = Buffer.alloc(3 << 20);
      await Promise.all(
        streams.map(async (s) => {
          while (s.left > 0) {
            const n = Math.min(s.left, 1 + Math.floor(random() * scratch.length));
            const piece = Buffer.alloc(n);
            for (let i = 0; i < n; i += 4096) piece[i] = Math.floor(random() * 256);
            s.hash.update(piece);
            await s.digest.update(piece);
            piece.fill(0); // the caller may reuse its memory once update resolves
            s.left -= n;
          }
        }),
      );
      for (const [i, s] of streams.entries()) {
        assert.equal(await s.digest.digest(), s.hash.digest('hex'), `stream ${i}`);
      }
    } finally {
      await hasher.close();
    }
  });

  it('hashes bytes read into its lent buffers where they are, in order with copied ones (randomized)', async () => {
    const random = seededRandom(testSeed('hash-offload in place'));
    const hasher = new Sha256Offload();
    try {
      const digest = hasher.stream();
      const expected = createHash('sha256');
      const hashed: Promise<void>[] = [];
      const copied = Buffer.alloc(1 << 20);
      for (let i = 0; i < 60; i++) {
        const turn = i % hasher.buffers.length;
        // A lent buffer is written to again only once its last bytes are hashed.
        await hashed[turn];
        const n = Math.floor(random() * (hasher.buffers[turn]!.length + 1));
        if (random() < 0.75) {
          const view = hasher.buffers[turn]!.subarray(0, n);
          for (let at = 0; at < n; at += 512) view[at] = Math.floor(random() * 256);
          expected.update(view);
          hashed[turn] = (await digest.updateInPlace(view)).hashed;
        } else {
          for (let at = 0; at < n; at += 512) copied[at] = Math.floor(random() * 256);
          expected.update(copied.subarray(0, n));
          await digest.update(copied.subarray(0, n));
        }
      }
      assert.equal(await digest.digest(), expected.digest('hex'));
      await assert.rejects(hasher.stream().updateInPlace(Buffer.alloc(10)), /lends/);
    } finally {
      await hasher.close();
    }
  });

  it('keeps the program alive until close returns, even while lent buffers are still being hashed', () => {
    const module = fileURLToPath(new URL('../src/core/hash-offload.js', import.meta.url));
    const dir = mkdtempSync(path.join(os.tmpdir(), 'lifeboat-offload-'));
    // Closing with every lent buffer queued and none awaited: the waits for them end while close waits for
    // the thread to exit, and must not let the program end with close pending (exit 13, nothing printed).
    const script = `
      const { Sha256Offload } = await import(${JSON.stringify(module)});
      for (let round = 0; round < 20; round++) {
        const h = new Sha256Offload();
        const s = h.stream();
        for (const buffer of h.buffers) await s.updateInPlace(buffer);
        await h.close();
      }
      console.log('closed');
    `;
    const file = path.join(dir, 'offload-close-while-hashing.mjs');
    writeFileSync(file, script);
    const run = spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 60_000 });
    rmSync(dir, { recursive: true, force: true });
    assert.equal(run.status, 0, `exit status: ${run.stderr}`);
    assert.equal(run.stdout.trim(), 'closed');
  });

  it('never keeps a finished program alive, closed or not', () => {
    const module = fileURLToPath(new URL('../src/core/hash-offload.js', import.meta.url));
    const dir = mkdtempSync(path.join(os.tmpdir(), 'lifeboat-offload-'));
    for (const close of [true, false]) {
      const script = `
        const { Sha256Offload } = await import(${JSON.stringify(module)});
        const h = new Sha256Offload();
        const s = h.stream();
        await s.update(Buffer.alloc(5 << 20, 1));
        console.log(await s.digest());
        ${close ? 'await h.close();' : ''}
      `;
      const file = path.join(dir, `offload-${close ? 'closed' : 'left-open'}.mjs`);
      writeFileSync(file, script);
      const run = spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 20_000 });
      assert.equal(run.status, 0, `exit status (close: ${close}): ${run.stderr}`);
      assert.equal(run.stdout.trim(), createHash('sha256').update(Buffer.alloc(5 << 20, 1)).digest('hex'));
    }
    rmSync(dir, { recursive: true, force: true });
  });
});
