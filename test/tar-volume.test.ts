/**
 * readVolume against archives written by GNU tar (gnu and pax formats), so
 * the block framing is checked on input lifeboat did not write itself.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { IntegrityError } from '../src/errors.js';
import { crc32 } from '../src/format/checksum.js';
import { TarVolumeWriter, readVolume, type VolumeChecksum, type VolumeEntry } from '../src/format/tar.js';
import { LocalStorage } from '../src/storage/local.js';
import { generatedBytes, seededRandom, testSeed } from './helpers/data.js';
import { tarBlocks } from './helpers/tar-blocks.js';
import { run } from './helpers/processes.js';

interface SeenEntry {
  index: number;
  name: string;
  type: string;
  size: number;
  linkpath?: string;
  sha256?: string;
}

async function readAllEntries(
  storage: LocalStorage,
  key: string,
  options: { offset?: number; firstIndex?: number; lastIndex?: number; checksum?: VolumeChecksum; leaveSomeBodies?: boolean } = {},
) {
  const seen: SeenEntry[] = [];
  const result = await readVolume(
    await storage.openReader(key, { offset: options.offset }),
    key,
    async (entry: VolumeEntry) => {
      const hash = createHash('sha256');
      let size = 0;
      // Bodies left unread are skipped: the CRC-32 must come out the same.
      const leave = options.leaveSomeBodies && entry.index % 3 === 2;
      if (!leave) {
        for await (const chunk of entry.body) {
          hash.update(chunk);
          size += chunk.length;
        }
        assert.equal(size, entry.size, `body of ${entry.name}`);
      }
      seen.push({
        index: entry.index,
        name: entry.name.replace(/\/$/, ''),
        type: entry.type,
        size: entry.size,
        linkpath: entry.linkpath,
        sha256: entry.type === 'File' && !leave ? hash.digest('hex') : undefined,
      });
    },
    { firstIndex: options.firstIndex, lastIndex: options.lastIndex, checksum: options.checksum },
  );
  return { seen, result };
}

/**
 * The CRC-32 of a tar archive's framing, by a walk of its own: every byte but
 * the bodies of entries that are not extended headers or long names.
 */
function framingCrcOf(archive: Buffer): number {
  let crc = 0;
  for (const b of tarBlocks(archive)) {
    crc = crc32(archive.subarray(b.header, b.body), crc);
    crc = crc32(archive.subarray(b.meta ? b.body : b.padding, b.next), crc);
  }
  return crc;
}

describe('reading tar volumes written by GNU tar', () => {
  let work: string;
  let storage: LocalStorage;
  const files = new Map<string, Buffer>();
  const longDir = `d-${'é'.repeat(60)}`;
  const longName = `${longDir}/${'n'.repeat(150)}.bin`;
  const longTarget = `${'t'.repeat(120)}/target`;

  before(async () => {
    work = await fsp.mkdtemp(path.join(os.tmpdir(), 'lifeboat-tar-'));
    storage = new LocalStorage(path.join(work, 'repo'));
    const seed = testSeed('tar-volume');
    // Sizes around the 1 MiB read buffers, so bodies and headers fall on both sides of a boundary.
    const sizes = [0, 1, 511, 512, 513, (1 << 20) - 512 - 100, 3 * (1 << 20) + 7, 200_000];
    for (const [i, size] of sizes.entries()) files.set(`f${i}.bin`, await generatedBytes(size, seed + i));
    files.set(longName, await generatedBytes(70_000, seed + 99));
    const tree = path.join(work, 'tree');
    for (const [name, data] of files) {
      await fsp.mkdir(path.dirname(path.join(tree, name)), { recursive: true });
      await fsp.writeFile(path.join(tree, name), data);
    }
    await fsp.symlink(longTarget, path.join(tree, 'link'));
    await fsp.mkdir(path.join(tree, 'empty-dir'));
  });

  after(async () => {
    await fsp.rm(work, { recursive: true, force: true });
  });

  for (const format of ['gnu', 'pax']) {
    it(`reads every entry of a ${format}-format archive with its name, link target and bytes`, async () => {
      const archive = path.join(work, 'repo', `${format}.tar`);
      await fsp.mkdir(path.dirname(archive), { recursive: true });
      await run('tar', [`--format=${format}`, '-cf', archive, '-C', path.join(work, 'tree'), '--sort=name', '.']);
      const { seen, result } = await readAllEntries(storage, `${format}.tar`);
      const bytes = await fsp.readFile(archive);
      assert.equal(result.size, bytes.length);
      assert.equal(result.crc32, framingCrcOf(bytes), 'the CRC-32 of the framing, by default');
      assert.notEqual(result.crc32, crc32(bytes));
      assert.equal(result.entries, seen.length);
      const whole = await readAllEntries(storage, `${format}.tar`, { checksum: 'volume', leaveSomeBodies: true });
      assert.deepEqual(whole.result, { ...result, crc32: crc32(bytes) }, 'the CRC-32 of every byte, for volumes of manifest format 1');
      const skipping = await readAllEntries(storage, `${format}.tar`, { leaveSomeBodies: true });
      assert.deepEqual(skipping.result, result, 'the same CRC-32 of the framing with bodies skipped');
      assert.deepEqual(
        skipping.seen.map((e) => e.name),
        seen.map((e) => e.name),
      );
      for (const [name, data] of files) {
        const entry = seen.find((e) => e.name === `./${name}`);
        assert.ok(entry, `${name} is listed`);
        assert.equal(entry.sha256, createHash('sha256').update(data).digest('hex'), `${name} content`);
      }
      const link = seen.find((e) => e.name === './link');
      assert.equal(link?.type, 'SymbolicLink');
      assert.equal(link?.linkpath, longTarget);
      assert.equal(seen.find((e) => e.name === './empty-dir')?.type, 'Directory');
      assert.deepEqual(
        seen.map((e) => e.index),
        seen.map((_, i) => i),
      );

      // Stopping after an entry reads no further; starting at an entry's offset numbers from there.
      const { seen: firstTwo } = await readAllEntries(storage, `${format}.tar`, { lastIndex: 1 });
      assert.deepEqual(firstTwo, seen.slice(0, 2));
    });
  }

  it('refuses a volume cut inside an entry or inside a block, and one with a damaged header', async () => {
    const archive = path.join(work, 'repo', 'cut.tar');
    await run('tar', ['--format=pax', '-cf', archive, '-C', path.join(work, 'tree'), 'f6.bin']);
    const whole = await fsp.readFile(archive);
    for (const cut of [2048, 1 << 20, whole.length - 1024 * 10 - 3]) {
      await fsp.writeFile(archive, whole.subarray(0, cut));
      await assert.rejects(readAllEntries(storage, 'cut.tar'), (err: unknown) => {
        assert.ok(err instanceof IntegrityError, `cut at ${cut}: ${String(err)}`);
        assert.match(err.message, /cut\.tar is not a readable tar volume: it ends inside/);
        return true;
      });
    }
    const damaged = Buffer.from(whole);
    damaged[0]! ^= 0x01; // the first header's name: its checksum no longer matches
    await fsp.writeFile(archive, damaged);
    await assert.rejects(readAllEntries(storage, 'cut.tar'), /fails its checksum/);
  });
});

describe('volumes whose large bodies start on a 4 KiB boundary', () => {
  it('pads with a pax comment that lifeboat, node-tar and GNU tar all read past (randomized)', async () => {
    const seed = testSeed('aligned bodies');
    const random = seededRandom(seed);
    const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'lifeboat-aligned-'));
    try {
      const storage = new LocalStorage(path.join(work, 'repo'));
      const out = await storage.openWriter('v.tar');
      const tar = new TarVolumeWriter(out);
      const names = ['plain.bin', `d-${'é'.repeat(70)}/x.bin`, `${'n'.repeat(150)}.bin`, 'ünïcode.bin', `a/${'b'.repeat(98)}`];
      const written: { name: string; data: Buffer; aligned: boolean }[] = [];
      for (let i = 0; i < 40; i++) {
        const name = `${i}-${names[Math.floor(random() * names.length)]}`;
        const data = await generatedBytes(Math.floor(random() * random() * 300_000), seed + i);
        const aligned = random() < 0.6;
        await tar.header({ name, type: 'File', size: data.length, mode: 0o644, mtime: new Date(1_700_000_000_000), alignBody: aligned });
        await tar.body(data);
        await tar.endEntry(data.length, data.length);
        written.push({ name, data, aligned });
      }
      await tar.end();
      await out.end();
      const archive = await fsp.readFile(path.join(work, 'repo', 'v.tar'));
      assert.equal(archive.length, tar.size);

      const bodies = [...tarBlocks(archive)].filter((b) => b.type === '0');
      assert.equal(bodies.length, written.length);
      for (const [i, w] of written.entries()) {
        if (w.aligned) assert.equal(bodies[i]!.body % 4096, 0, `the body of ${w.name} starts at ${bodies[i]!.body} (seed ${seed})`);
      }

      const { seen } = await readAllEntries(storage, 'v.tar');
      assert.deepEqual(
        seen.map((e) => [e.name, e.sha256]),
        written.map((w) => [w.name, createHash('sha256').update(w.data).digest('hex')]),
        `seed ${seed}`,
      );

      const extracted = path.join(work, 'x');
      await fsp.mkdir(extracted);
      const gnu = spawnSync('tar', ['-xf', path.join(work, 'repo', 'v.tar'), '-C', extracted], { encoding: 'utf8' });
      assert.equal(gnu.status, 0, gnu.stderr);
      assert.equal(gnu.stderr, '', 'GNU tar reads past the padding without a word');
      for (const w of written) assert.ok((await fsp.readFile(path.join(extracted, w.name))).equals(w.data), `${w.name} as GNU tar extracts it (seed ${seed})`);
    } finally {
      await fsp.rm(work, { recursive: true, force: true });
    }
  });

  it('aligns the body of an entry whose own pax records already take many blocks', async () => {
    const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'lifeboat-aligned-'));
    try {
      const storage = new LocalStorage(path.join(work, 'repo'));
      const out = await storage.openWriter('v.tar');
      const tar = new TarVolumeWriter(out);
      // A name of 9,000 bytes: its pax record alone fills 18 blocks.
      const names = [`${'ü'.repeat(100)}/`.repeat(45) + 'x.bin', 'after.bin'];
      const data = Buffer.alloc(10_000, 7);
      for (const name of names) {
        await tar.header({ name, type: 'File', size: data.length, mode: 0o644, mtime: new Date(0), alignBody: true });
        await tar.body(data);
        await tar.endEntry(data.length, data.length);
      }
      await tar.end();
      await out.end();
      const archive = await fsp.readFile(path.join(work, 'repo', 'v.tar'));
      const bodies = [...tarBlocks(archive)].filter((b) => b.type === '0');
      assert.deepEqual(bodies.map((b) => b.body % 4096), [0, 0]);
      const { seen } = await readAllEntries(storage, 'v.tar');
      assert.deepEqual(seen.map((e) => e.name), names);
    } finally {
      await fsp.rm(work, { recursive: true, force: true });
    }
  });
});
