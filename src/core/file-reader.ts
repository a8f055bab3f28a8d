import type { BigIntStats } from 'node:fs';
import { isGoneAsFile, openRegularFile, type OpenedFile } from '../format/durable.js';

/** Files up to this size are read whole, ahead of time, so their latency overlaps. */
export const SMALL_FILE = 1 << 20;

export interface WholeFile {
  data: Buffer;
  before: BigIntStats;
  after: BigIntStats;
}

/** Reads a small file whole, with its stat before and after (to detect changes while reading). */
export async function readWholeFile(file: string): Promise<WholeFile | undefined> {
  let opened: OpenedFile;
  try {
    opened = await openRegularFile(file);
  } catch (err) {
    if (isGoneAsFile(err)) return undefined;
    throw err;
  }
  const { handle: fh, stats: before } = opened;
  try {
    const size = Number(before.size);
    const data = Buffer.allocUnsafe(size);
    let filled = 0;
    while (filled < size) {
      const { bytesRead } = await fh.read(data, filled, size - filled, filled);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    const after = await fh.stat({ bigint: true });
    return { data: data.subarray(0, filled), before, after };
  } finally {
    await fh.close();
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
      const read = readWholeFile(f.path);
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
