import { constants as fsConstants } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { ALIGN, alignedMemory, alignedMemoryAvailable, isAlignedChunk } from './aligned-memory.js';
import { EarlyWriteback, writeAt } from './durable.js';

/**
 * A new file written front to back and made durable at the end: a volume of
 * a local repository before it is renamed into place, or a restored file.
 */
export interface FileSink {
  /** Appends `chunk`; resolves once its memory may be reused. */
  write(chunk: Uint8Array): Promise<void>;
  /** Makes every byte written durable and closes the file. */
  finish(): Promise<void>;
  /** Closes the file without making anything durable (the caller removes it). */
  discard(): Promise<void>;
}

/**
 * Creates `file` (which must not exist, with `mode` before the umask) and
 * opens it for writing, bypassing the page cache where the file system
 * allows it, unless `pageCache` asks to keep what is written there (for a
 * reader about to load it).
 */
export async function createFileSink(file: string, mode = 0o666, options: { pageCache?: boolean } = {}): Promise<FileSink> {
  const direct = options.pageCache ? undefined : await DirectFileSink.create(file, mode);
  return direct ?? new BufferedFileSink(await fsp.open(file, 'wx', mode));
}

/** Writes through the page cache, starting writeback early so the final fsync finds little to do. */
class BufferedFileSink implements FileSink {
  private size = 0;
  private readonly writeback: EarlyWriteback;
  private closed = false;

  constructor(private readonly fh: fsp.FileHandle) {
    this.writeback = new EarlyWriteback(fh);
  }

  async write(chunk: Uint8Array): Promise<void> {
    // Positional writes complete before they resolve, so the caller may reuse the chunk.
    await writeAt(this.fh, chunk, this.size);
    this.size += chunk.length;
    this.writeback.wrote(chunk.length);
  }

  async finish(): Promise<void> {
    await this.writeback.settle();
    await this.fh.sync();
    this.closed = true;
    await this.fh.close();
  }

  async discard(): Promise<void> {
    await this.writeback.settle();
    if (this.closed) return;
    this.closed = true;
    await this.fh.close().catch(() => undefined);
  }
}

/** Bytes per aligned buffer, and per direct write but the last. */
const BLOCK = 512 << 10;
/** Direct writes of one file in flight at once; the caller fills the next buffer meanwhile. */
const WRITES_IN_FLIGHT = 2;
/** Buffers allocated together. */
const BUFFERS_PER_ARENA = 8;

/** Aligned buffers no writer holds, kept for the next (their number is bounded by the writers open at once). */
const idle: Buffer[] = [];

function takeBuffer(): Buffer {
  const reused = idle.pop();
  if (reused) return reused;
  // DirectFileSink.create made sure aligned memory can be had.
  const arena = alignedMemory(BUFFERS_PER_ARENA * BLOCK)!;
  for (let i = 1; i < BUFFERS_PER_ARENA; i++) idle.push(Buffer.from(arena, i * BLOCK, BLOCK));
  return Buffer.from(arena, 0, BLOCK);
}

function isInvalid(err: unknown): boolean {
  return (err as NodeJS.ErrnoException).code === 'EINVAL';
}

/**
 * Writes with O_DIRECT from page-aligned buffers: the bytes go from this
 * process's memory to the device, with no copy into the page cache, no dirty
 * pages for the kernel to write back, and no fsync waiting for them. A
 * volume, or a restored file, is written once and not read again by the
 * command that writes it, so caching it gains nothing. Incoming chunks are
 * copied into aligned buffers of 512 KiB, written two at a time (larger or
 * more did not write faster, and cost a restore memory); the last one is
 * padded to the alignment and the file truncated to its true size. Chunks
 * already in aligned memory are written from where they are.
 */
class DirectFileSink implements FileSink {
  private current: Buffer | undefined = takeBuffer();
  private filled = 0;
  /** File offset of `current`'s first byte. */
  private position = 0;
  private readonly inFlight: Promise<void>[] = [];
  /** Opened when a direct write is refused after all (an alignment this device does not accept). */
  private buffered?: Promise<fsp.FileHandle>;
  private closed = false;

  private constructor(
    private readonly fh: fsp.FileHandle,
    private readonly file: string,
  ) {}

  /** Undefined when this platform or file system has no direct I/O, or Node no aligned memory. */
  static async create(file: string, mode: number): Promise<DirectFileSink | undefined> {
    const direct = fsConstants.O_DIRECT;
    if (direct === undefined || !alignedMemoryAvailable()) return undefined;
    try {
      const fh = await fsp.open(file, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | direct, mode);
      return new DirectFileSink(fh, file);
    } catch (err) {
      if (!isInvalid(err)) throw err;
      // Linux creates the file before it finds that the file system refuses O_DIRECT (ramfs, some FUSE
      // file systems). O_EXCL makes it this call's own file: an existing one would have failed with EEXIST.
      await fsp.unlink(file).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
      });
      return undefined;
    }
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (isAlignedChunk(chunk) && this.filled % ALIGN === 0) {
      // Straight from the caller's memory, once what was copied before it is on its way.
      if (this.filled > 0) await this.issue();
      await this.writeBlock(chunk, this.position);
      this.position += chunk.length;
      return;
    }
    for (let at = 0; at < chunk.length; ) {
      const n = Math.min(chunk.length - at, BLOCK - this.filled);
      this.current!.set(chunk.subarray(at, at + n), this.filled);
      this.filled += n;
      at += n;
      if (this.filled === BLOCK) await this.issue();
    }
  }

  /** Starts writing the current buffer, waiting only while too many writes are in flight. */
  private async issue(): Promise<void> {
    const buffer = this.current!;
    const length = this.filled;
    const padded = Math.ceil(length / ALIGN) * ALIGN;
    buffer.fill(0, length, padded);
    const position = this.position;
    this.position += length;
    this.current = takeBuffer();
    this.filled = 0;
    const written = this.writeBlock(buffer.subarray(0, padded), position).finally(() => idle.push(buffer));
    written.catch(() => undefined);
    this.inFlight.push(written);
    while (this.inFlight.length >= WRITES_IN_FLIGHT) await this.inFlight.shift();
  }

  private async writeBlock(bytes: Uint8Array, position: number): Promise<void> {
    if (!this.buffered) {
      try {
        return await writeAt(this.fh, bytes, position);
      } catch (err) {
        if (!isInvalid(err)) throw err;
        this.buffered ??= fsp.open(this.file, 'r+');
      }
    }
    await writeAt(await this.buffered, bytes, position);
  }

  private async settle(): Promise<void> {
    while (this.inFlight.length > 0) await this.inFlight.shift();
  }

  private release(): void {
    if (this.current) idle.push(this.current);
    this.current = undefined;
  }

  async finish(): Promise<void> {
    const size = this.position + this.filled;
    if (this.filled > 0) await this.issue();
    await this.settle();
    this.release();
    // The last write was padded to the alignment.
    if (size % ALIGN !== 0) await this.fh.truncate(size);
    // Direct writes bypass the page cache, not the device's cache, nor the metadata that finds the blocks.
    await this.fh.datasync();
    await this.close();
  }

  async discard(): Promise<void> {
    await Promise.allSettled(this.inFlight.splice(0));
    this.release();
    await this.close().catch(() => undefined);
  }

  private async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const buffered = this.buffered;
    this.buffered = undefined;
    try {
      await this.fh.close();
    } finally {
      if (buffered) await (await buffered).close();
    }
  }
}
