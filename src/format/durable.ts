import * as fsp from 'node:fs/promises';

/** Writes all of `chunk` at `position`; resolves once the chunk may be reused. */
export async function writeAt(fh: fsp.FileHandle, chunk: Uint8Array, position: number): Promise<void> {
  for (let at = 0; at < chunk.length; ) at += (await fh.write(chunk, at, chunk.length - at, position + at)).bytesWritten;
}

/**
 * Writes a whole file and syncs it before closing (its data only, with
 * `dataOnly`). `flag` 'wx' refuses to replace anything already there.
 */
export async function writeFileSynced(file: string, data: Uint8Array | string, options: { flag?: string; mode?: number; dataOnly?: boolean } = {}): Promise<void> {
  const fh = await fsp.open(file, options.flag ?? 'w', options.mode);
  try {
    await fh.writeFile(data);
    await (options.dataOnly ? fh.datasync() : fh.sync());
  } finally {
    await fh.close();
  }
}

/**
 * Makes what was written to a file (or, for a directory, the names in it)
 * durable: fsync, or fdatasync with `dataOnly` when the file's size is all
 * the metadata that matters.
 */
export async function syncPath(file: string, options: { dataOnly?: boolean } = {}): Promise<void> {
  const fh = await fsp.open(file, 'r');
  try {
    await (options.dataOnly ? fh.datasync() : fh.sync());
  } finally {
    await fh.close();
  }
}

/** Bytes written to a file between the starts of its background writebacks. */
const EARLY_SYNC_BYTES = 32 << 20;

/**
 * Starts writeback of a file being written every 32 MiB, in the background
 * and one at a time, so the fsync that ends it finds little left to write.
 */
export class EarlyWriteback {
  private unsynced = 0;
  private syncing: Promise<void> = Promise.resolve();

  constructor(private readonly fh: fsp.FileHandle) {}

  wrote(bytes: number): void {
    this.unsynced += bytes;
    if (this.unsynced < EARLY_SYNC_BYTES) return;
    this.unsynced = 0;
    // A failure here is found again by the final fsync.
    this.syncing = this.syncing.then(() => this.fh.datasync()).catch(() => undefined);
  }

  /** Waits for the writeback in flight; call before the final fsync or closing the file. */
  settle(): Promise<void> {
    return this.syncing;
  }
}
