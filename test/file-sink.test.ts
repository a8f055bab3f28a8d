import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { alignedMemory } from '../src/format/aligned-memory.js';
import { createFileSink } from '../src/format/file-sink.js';
import { seededRandom, testSeed } from './helpers/data.js';

async function tempDir(t: import('node:test').TestContext): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'lifeboat-sink-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Chunk sizes around the sink's alignment (4 KiB) and buffer (512 KiB) boundaries, and random ones. */
function chunkSizes(random: () => number): number[] {
  const edges = [0, 1, 511, 512, 4095, 4096, 4097, (512 << 10) - 1, 512 << 10, (512 << 10) + 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 << 20];
  const sizes: number[] = [];
  const count = Math.floor(random() * 12);
  for (let i = 0; i < count; i++) sizes.push(random() < 0.5 ? edges[Math.floor(random() * edges.length)]! : Math.floor(random() * (2 << 20)));
  return sizes;
}

test('a file written through the sink holds exactly the bytes written, whatever the chunk sizes (randomized)', async (t) => {
  const seed = testSeed('file sink');
  const random = seededRandom(seed);
  const dir = await tempDir(t);
  const plain = Buffer.alloc(3 << 20);
  // Whole pages of page-aligned memory go to the disk from where they are, not through the sink's buffers.
  const aligned = Buffer.from(alignedMemory(3 << 20)!);
  for (let round = 0; round < 40; round++) {
    const file = path.join(dir, `f${round}`);
    const sink = await createFileSink(file);
    const expected = createHash('sha256');
    let size = 0;
    for (const wanted of chunkSizes(random)) {
      const fromAligned = random() < 0.4;
      const n = fromAligned ? wanted - (wanted % 4096) : wanted;
      const chunk = fromAligned ? aligned : plain;
      for (let i = 0; i < n; i++) chunk[i] = (random() * 256) | 0;
      await sink.write(chunk.subarray(0, n));
      expected.update(chunk.subarray(0, n));
      // The sink has let go of the chunk: scribbling over it changes nothing written.
      chunk.fill(0xee, 0, n);
      size += n;
    }
    await sink.finish();
    const written = await fsp.readFile(file);
    assert.equal(written.length, size, `round ${round} (seed ${seed})`);
    assert.equal(createHash('sha256').update(written).digest('hex'), expected.digest('hex'), `round ${round} (seed ${seed})`);
  }
});

test('the sink refuses to replace an existing file', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'there');
  await fsp.writeFile(file, 'keep me');
  await assert.rejects(createFileSink(file), { code: 'EEXIST' });
  assert.equal(await fsp.readFile(file, 'utf8'), 'keep me');
});

test('a discarded sink closes its file and can be removed; its buffers serve the next sink', async (t) => {
  const dir = await tempDir(t);
  const abandoned = await createFileSink(path.join(dir, 'abandoned'));
  await abandoned.write(Buffer.alloc(5 << 20, 1));
  await abandoned.discard();
  await fsp.rm(path.join(dir, 'abandoned'));
  const next = await createFileSink(path.join(dir, 'next'));
  await next.write(Buffer.from('after a discard'));
  await next.finish();
  assert.equal(await fsp.readFile(path.join(dir, 'next'), 'utf8'), 'after a discard');
});
