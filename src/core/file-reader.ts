import * as fs from 'node:fs';
import { closeFd, openFd, readFd, statFd } from '../format/fd.js';

/** Files up to this size are read whole, with one read. */
export const SMALL_FILE = 1 << 20;

export interface WholeFile {
  /** Up to one byte more than the size the file was expected to have (so growth shows). */
  data: Buffer;
  /** Taken once the file was read. */
  stats: fs.BigIntStats;
}

/** O_NONBLOCK: a named pipe or a device put where a file was cannot block the open or the read. */
const READ_FLAGS = fs.constants.O_RDONLY | fs.constants.O_NONBLOCK;

/**
 * Reads a small file whole with one read of up to `size` + 1 bytes (a read
 * of a regular file comes up short only at its end), then stats it. A pipe or
 * a device put there since the scan is found by the stat and counts as gone,
 * as does a file that is gone. On the main thread: see SmallFileReader.
 */
export function readWholeFile(file: string, size: number): WholeFile | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, READ_FLAGS);
  } catch (err) {
    return goneOrThrow(err);
  }
  try {
    const data = Buffer.allocUnsafe(size + 1);
    let read: number | { err: unknown };
    try {
      read = fs.readSync(fd, data, 0, data.length, 0);
    } catch (err) {
      read = { err };
    }
    return wholeOrGone(data, read, fs.fstatSync(fd, { bigint: true }));
  } finally {
    try {
      fs.closeSync(fd);
    } catch {
      // Only read: a failure to close it is of no consequence.
    }
  }
}

/** readWholeFile on the threadpool. */
export async function readWholeFileAhead(file: string, size: number): Promise<WholeFile | undefined> {
  let fd: number;
  try {
    fd = await openFd(file, READ_FLAGS);
  } catch (err) {
    return goneOrThrow(err);
  }
  try {
    const data = Buffer.allocUnsafe(size + 1);
    let read: number | { err: unknown };
    try {
      read = await readFd(fd, data, 0);
    } catch (err) {
      read = { err };
    }
    return wholeOrGone(data, read, await statFd(fd));
  } finally {
    await closeFd(fd).catch(() => undefined);
  }
}

/** A file that is gone is undefined; any other failure is thrown. */
function goneOrThrow(err: unknown): undefined {
  if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
  throw err;
}

function wholeOrGone(data: Buffer, read: number | { err: unknown }, stats: fs.BigIntStats): WholeFile | undefined {
  if (!stats.isFile()) return undefined;
  if (typeof read !== 'number') throw read.err;
  return { data: data.subarray(0, read), stats };
}

/** A small file's plan position, path and size as scanned. */
export interface SmallFile {
  position: number;
  path: string;
  size: number;
}

/** Synchronous reads judged together. */
const BATCH = 32;
/** What reading a small file from the page cache should cost at most: a fixed part, and its bytes at 1 GB/s. */
const CACHED_READ_MS = 0.025;
const CACHED_MS_PER_BYTE = 1e-6;
/** Files read ahead before the reader tries synchronous reads again. */
const AHEAD_RUN = 512;

/**
 * Reads the small files a backup stores, in plan order, choosing how by how
 * fast they come. From the page cache, a synchronous read on the main thread
 * is quickest: for 100,000 files of a few KiB, round trips to the threadpool,
 * and its threads contending with the main one for two cores, had cost more
 * than the reads (a full backup of them took 6 to 7 s this way, 11 s
 * through the pool). From the disk, reads started ahead on the threadpool
 * overlap the disk's latency with the archiving (13 s instead of 18 s).
 * So it reads synchronously while reads are about as quick as the page
 * cache, and reads ahead for a while after two batches in a row were not
 * (one alone may be a pause for garbage collection).
 */
export class SmallFileReader {
  private readonly pending = new Map<number, { read: Promise<WholeFile | undefined>; size: number }>();
  private pendingBytes = 0;
  /** Index in `files` of the next file to be taken. */
  private next = 0;
  /** Index in `files` of the next file to read ahead. */
  private cursor = 0;
  /** Files still to take before reads ahead stop; 0: reading synchronously. */
  private aheadLeft = 0;
  private slowBatches = 0;
  private batch = { files: 0, ms: 0, cachedMs: 0 };

  private readonly maxFiles: number;
  private readonly maxBytes: number;
  private readonly cachedReadMs: number;
  private readonly aheadRun: number;

  constructor(
    /** In the order they are taken. */
    private readonly files: readonly SmallFile[],
    options: { maxFiles?: number; maxBytes?: number; cachedReadMs?: number; aheadRun?: number } = {},
  ) {
    this.maxFiles = options.maxFiles ?? 16;
    this.maxBytes = options.maxBytes ?? 16 << 20;
    this.cachedReadMs = options.cachedReadMs ?? CACHED_READ_MS;
    this.aheadRun = options.aheadRun ?? AHEAD_RUN;
  }

  /** Whether reads are being started ahead (for tests). */
  get readingAhead(): boolean {
    return this.aheadLeft > 0;
  }

  /** The read of the small file at plan position `position`, or undefined if it is not one. */
  take(position: number): Promise<WholeFile | undefined> | undefined {
    // Files passed over (another name of a file already stored) are not read; a read started for one is dropped.
    while (this.next < this.files.length && this.files[this.next]!.position < position) this.drop(this.files[this.next++]!.position);
    const f = this.files[this.next];
    if (f?.position !== position) return undefined;
    this.next++;
    const started = this.pending.get(position);
    if (started) {
      this.drop(position);
      if (this.aheadLeft > 0) this.aheadLeft--;
      this.fill();
      return started.read;
    }
    const t0 = performance.now();
    let whole: WholeFile | undefined;
    try {
      whole = readWholeFile(f.path, f.size);
    } catch (err) {
      return Promise.reject(err);
    }
    this.judge(performance.now() - t0, f.size);
    return Promise.resolve(whole);
  }

  private drop(position: number): void {
    const entry = this.pending.get(position);
    if (!entry) return;
    this.pending.delete(position);
    this.pendingBytes -= entry.size;
  }

  private judge(ms: number, size: number): void {
    const b = this.batch;
    b.files++;
    b.ms += ms;
    b.cachedMs += this.cachedReadMs + size * CACHED_MS_PER_BYTE;
    if (b.files < BATCH) return;
    this.slowBatches = b.ms > 2 * b.cachedMs ? this.slowBatches + 1 : 0;
    this.batch = { files: 0, ms: 0, cachedMs: 0 };
    if (this.slowBatches < 2) return;
    this.slowBatches = 0;
    this.aheadLeft = this.aheadRun;
    this.fill();
  }

  private fill(): void {
    this.cursor = Math.max(this.cursor, this.next);
    while (this.aheadLeft > 0 && this.cursor < this.files.length && this.pending.size < this.maxFiles && this.pendingBytes < this.maxBytes) {
      const f = this.files[this.cursor++]!;
      const read = readWholeFileAhead(f.path, f.size);
      // Failures surface when the read is taken; until then nobody awaits it.
      read.catch(() => undefined);
      this.pending.set(f.position, { read, size: f.size });
      this.pendingBytes += f.size;
    }
  }
}
