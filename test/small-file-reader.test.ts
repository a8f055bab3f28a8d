/**
 * The backup's small-file reader reads synchronously while reads are quick
 * and starts reading ahead on the threadpool when they are not. Either way
 * each file taken must be its own bytes and stat, whatever is skipped, gone
 * or no longer a file.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { test } from 'node:test';
import { SmallFileReader, type SmallFile } from '../src/core/file-reader.js';
import { prng, seedFromEnv, tempDir, writeRandomFile } from './helpers/tree.js';

interface Case {
  files: SmallFile[];
  /** Positions whose file is gone (removed, or replaced by a pipe) by the time it is read. */
  gone: Set<number>;
  /** Positions the backup passes over without taking them (another name of a file already stored). */
  skipped: Set<number>;
  work: string;
}

async function makeCase(rand: () => number, count: number): Promise<Case> {
  const work = await tempDir();
  const files: SmallFile[] = [];
  const gone = new Set<number>();
  const skipped = new Set<number>();
  let position = 0;
  for (let i = 0; i < count; i++) {
    // Plan positions of directories and large files lie between the small files'.
    position += 1 + Math.floor(rand() * 3);
    const file = path.join(work, `f${i}.json`);
    const size = Math.floor(rand() * 20_000);
    await writeRandomFile(file, size, rand);
    files.push({ position, path: file, size });
    const fate = rand();
    if (fate < 0.03) {
      await fsp.rm(file);
      gone.add(position);
    } else if (fate < 0.05 && spawnSync('mkfifo', ['--version']).status === 0) {
      await fsp.rm(file);
      assert.equal(spawnSync('mkfifo', [file]).status, 0);
      gone.add(position);
    } else if (fate < 0.1) {
      skipped.add(position);
    }
  }
  return { files, gone, skipped, work };
}

/** Takes every file not skipped, in order, and checks it; returns how often the reader began and stopped reading ahead. */
async function takeAll(c: Case, reader: SmallFileReader): Promise<{ began: number; stopped: number }> {
  const turns = { began: 0, stopped: 0 };
  let ahead = false;
  for (const f of c.files) {
    if (c.skipped.has(f.position)) continue;
    const read = reader.take(f.position);
    assert.ok(read, `position ${f.position} is a small file`);
    if (reader.readingAhead !== ahead) turns[ahead ? 'stopped' : 'began']++;
    ahead = reader.readingAhead;
    const whole = await read;
    if (c.gone.has(f.position)) {
      assert.equal(whole, undefined, `${f.path} is gone`);
      continue;
    }
    assert.ok(whole, `${f.path} was read`);
    assert.deepEqual(whole.data, await fsp.readFile(f.path), `${f.path}: its own bytes`);
    assert.equal(whole.stats.ino, (await fsp.stat(f.path, { bigint: true })).ino, `${f.path}: its own stat`);
    // Not a small file: nothing to take there.
    assert.equal(reader.take(f.position + 0.5), undefined);
  }
  return turns;
}

test('the small-file reader gives each file its own bytes, read synchronously or ahead, with files skipped, gone or turned into pipes', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed} (replay with LIFEBOAT_TEST_SEED=${seed})`);
  const c = await makeCase(prng(seed), 400);
  t.after(() => fsp.rm(c.work, { recursive: true, force: true }));

  // Reads never slower than the page cache is thought to be: all synchronous.
  assert.deepEqual(await takeAll(c, new SmallFileReader(c.files, { cachedReadMs: Infinity })), { began: 0, stopped: 0 }, 'quick reads are not read ahead');

  // Every read judged slow: after two batches it reads ahead, for a run of 100 files, then tries again.
  const turns = await takeAll(c, new SmallFileReader(c.files, { cachedReadMs: -1, aheadRun: 100, maxFiles: 5 }));
  assert.ok(turns.began >= 2 && turns.stopped >= 1, `slow reads are read ahead, a run at a time (${JSON.stringify(turns)})`);

  // Many in flight, bounded by bytes.
  assert.ok((await takeAll(c, new SmallFileReader(c.files, { cachedReadMs: -1, maxFiles: 64, maxBytes: 30_000 }))).began >= 1);
});

test('a read ahead that fails is reported when its file is taken, not before', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const files: SmallFile[] = [];
  for (let i = 0; i < 80; i++) {
    const file = path.join(work, `f${i}`);
    await fsp.writeFile(file, `file ${i}`);
    files.push({ position: i, path: file, size: 8 });
  }
  // A name too long to open fails with ENAMETOOLONG, as an unreadable file would fail with EACCES (the tests run as root).
  files[70] = { position: 70, path: path.join(work, 'x'.repeat(300)), size: 8 };
  const reader = new SmallFileReader(files, { cachedReadMs: -1 });
  for (let i = 0; i < 70; i++) assert.equal((await reader.take(i))!.data.toString(), `file ${i}`);
  assert.equal(reader.readingAhead, true);
  await assert.rejects(reader.take(70)!, { code: 'ENAMETOOLONG' });
  assert.equal((await reader.take(71))!.data.toString(), 'file 71');
});
