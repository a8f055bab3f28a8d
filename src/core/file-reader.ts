import * as fs from 'node:fs';
import { closeFd, openFd, readFd, statFd } from '../format/fd.js';

/** Files up to this size are read whole, ahead of time, so their latency overlaps. */
export const SMALL_FILE = 1 << 20;

export interface WholeFile {
  /** Up to one byte more than the size the file was expected to have (so growth shows). */
  data: Buffer;
  /** Taken once the file was read. */
  stats: fs.BigIntStats;
}

/**
 * Reads a small file whole with one read of up to `size` + 1 bytes (a read
 * of a regular file comes up short only at its end), then stats it. It is
 * opened with O_NONBLOCK, so a named pipe or a device put there since the scan
 * cannot block the read; one is found by the stat and counts as gone.
 * Undefined when the file is gone.
 */
export async function readWholeFile(file: string, size: number): Promise<WholeFile | undefined> {
  let fd: number;
  try {
    fd = await openFd(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const data = Buffer.allocUnsafe(size + 1);
    let read: number | { err: unknown };
    try {
      read = await readFd(fd, data, 0);
    } catch (err) {
      read = { err };
    }
    const stats = await statFd(fd);
    if (!stats.isFile()) return undefined;
    if (typeof read !== 'number') throw read.err;
    return { data: data.subarray(0, read), stats };
  } finally {
    // Only read: a failure to close it is of no consequence.
    await closeFd(fd).catch(() => undefined);
  }
}

/**
 * Starts reads of the small files a backup will need, a bounded number ahead
 * of the one being archived, so that thousands of config files cost
 * overlapping round trips instead of sequential ones.
 */
export class SmallFilePrefetcher {
  private readonly pending = new Map<number, { read: Promise<WholeFile | undefined>; size: number }>();
  private pendingBytes = 0;
  private cursor = 0;

  constructor(
    /** Plan positions and paths of the small files to read, in archive order. */
    private readonly files: readonly { position: number; path: string; size: number }[],
    private readonly maxFiles = 16,
    private readonly maxBytes = 16 << 20,
  ) {}

  private fill(): void {
    while (this.cursor < this.files.length && this.pending.size < this.maxFiles && this.pendingBytes < this.maxBytes) {
      const f = this.files[this.cursor++]!;
      const read = readWholeFile(f.path, f.size);
      // Failures surface when the read is taken; until then nobody awaits it.
      read.catch(() => undefined);
      this.pending.set(f.position, { read, size: f.size });
      this.pendingBytes += f.size;
    }
  }

  /** The read of the small file at plan position `position`, or undefined if it is not one. */
  take(position: number): Promise<WholeFile | undefined> | undefined {
    this.fill();
    const entry = this.pending.get(position);
    if (!entry) return undefined;
    this.pending.delete(position);
    this.pendingBytes -= entry.size;
    this.fill();
    return entry.read;
  }
}
