import type { Readable } from 'node:stream';
import { Header, Parser, Pax, type ReadEntry } from 'tar';
import { IntegrityError } from '../errors.js';
import { crc32 } from './checksum.js';
import { streamChunks } from './stream-chunks.js';

const BLOCK = 512;
const ZERO_BLOCKS = Buffer.alloc(BLOCK * 2);

export interface TarHeaderFields {
  name: string;
  type: 'File' | 'Directory' | 'SymbolicLink';
  size: number;
  mode: number;
  mtime: Date;
  uid?: number;
  gid?: number;
  linkpath?: string;
}

/** Where a volume's bytes go: resolves once the chunk's memory may be reused (an ObjectWriter). */
export interface ChunkSink {
  write(chunk: Uint8Array): Promise<void>;
}

/** Pieces smaller than this are gathered into one write; larger ones go out as they are. */
const GATHER_BELOW = 256 << 10;
const GATHER_SIZE = 1 << 20;

/**
 * Writes one standard (ustar + pax) tar volume into `sink`, counting bytes,
 * entries and a CRC-32 of everything written. Headers are encoded by node-tar;
 * file bodies are pushed by the caller, so it can hash them in the same pass.
 * Headers, padding and small files are gathered into large writes (two
 * buffers, so one fills while the other is written): a write per tar block
 * would cost a round trip each.
 */
export class TarVolumeWriter {
  size = 0;
  crc = 0;
  entries = 0;
  private gather = Buffer.allocUnsafe(GATHER_SIZE);
  private spare = Buffer.allocUnsafe(GATHER_SIZE);
  private gathered = 0;
  private writing: Promise<void> = Promise.resolve();

  constructor(private readonly sink: ChunkSink) {}

  private async push(buf: Uint8Array): Promise<void> {
    if (buf.length === 0) return;
    this.crc = crc32(buf, this.crc);
    this.size += buf.length;
    if (buf.length < GATHER_BELOW) {
      if (this.gathered + buf.length > GATHER_SIZE) await this.flush();
      this.gather.set(buf, this.gathered);
      this.gathered += buf.length;
      return;
    }
    await this.flush();
    await this.writing;
    await this.sink.write(buf);
  }

  /** Starts writing what is gathered; waits only for the write before it, whose buffer it takes next. */
  private async flush(): Promise<void> {
    if (this.gathered === 0) return;
    await this.writing;
    const full = this.gather.subarray(0, this.gathered);
    [this.gather, this.spare] = [this.spare, this.gather];
    this.gathered = 0;
    this.writing = this.sink.write(full);
    // A failure is reported by the next push or by end().
    this.writing.catch(() => undefined);
  }

  /** Starts an entry; returns its index in the volume and the byte offset where it starts. */
  async header(fields: TarHeaderFields): Promise<{ index: number; offset: number }> {
    const offset = this.size;
    const name = fields.type === 'Directory' ? `${fields.name}/` : fields.name;
    const header = new Header({
      path: name,
      type: fields.type,
      size: fields.type === 'File' ? fields.size : 0,
      mode: fields.mode,
      mtime: fields.mtime,
      uid: fields.uid ?? 0,
      gid: fields.gid ?? 0,
      linkpath: fields.linkpath,
    });
    if (header.encode()) {
      const pax = new Pax({
        path: name,
        linkpath: fields.linkpath,
        size: fields.type === 'File' ? fields.size : 0,
        mtime: fields.mtime,
        uid: fields.uid ?? 0,
        gid: fields.gid ?? 0,
      });
      await this.push(pax.encode());
    }
    await this.push(header.block!);
    return { index: this.entries++, offset };
  }

  /** Appends part of a file's body; resolves once `chunk` may be reused. */
  async body(chunk: Uint8Array): Promise<void> {
    await this.push(chunk);
  }

  /**
   * Ends a file entry after `written` of its declared `size` bytes: zero-fills
   * a short body (the caller records it as torn) and pads to the block size.
   */
  async endEntry(written: number, size: number): Promise<void> {
    let missing = size - written;
    while (missing > 0) {
      const n = Math.min(missing, 1 << 20);
      await this.push(Buffer.alloc(n));
      missing -= n;
    }
    const pad = (BLOCK - (size % BLOCK)) % BLOCK;
    if (pad) await this.push(ZERO_BLOCKS.subarray(0, pad));
  }

  /** Writes the end-of-archive blocks and everything still gathered. */
  async end(): Promise<void> {
    await this.push(ZERO_BLOCKS);
    await this.flush();
    await this.writing;
  }
}

export interface VolumeEntry {
  index: number;
  name: string;
  type: string;
  size: number;
  mode: number;
  linkpath?: string;
  /** The entry's body; read it or leave it (it is skipped). */
  body: AsyncIterable<Buffer>;
}

export interface VolumeReadResult {
  size: number;
  crc32: number;
  entries: number;
}

/**
 * Streams a tar volume through node-tar's parser, calling `onEntry` for each
 * entry in order. Damaged headers and truncated volumes are IntegrityErrors.
 */
export interface ReadVolumeOptions {
  signal?: AbortSignal;
  /** Index of the first entry in `source` (when it starts at an entry's offset, not at 0). */
  firstIndex?: number;
  /** Stop once the entry with this index has been handled (the rest is not read). */
  lastIndex?: number;
}

export async function readVolume(
  source: Readable,
  what: string,
  onEntry: (entry: VolumeEntry) => Promise<void>,
  options: ReadVolumeOptions = {},
): Promise<VolumeReadResult> {
  const signal = options.signal;
  let size = 0;
  let crc = 0;
  let index = options.firstIndex ?? 0;
  let reachedLast = false;
  let failure: unknown;
  let pending: Promise<void> = Promise.resolve();
  // The entry a handler is reading: stopped on a failure, so the handler is not left waiting for bytes that never come.
  let active: ReadEntry | undefined;

  const parser = new Parser({ strict: true });
  const ended = new Promise<void>((resolve) => parser.on('end', () => resolve()));
  parser.on('error', (err: Error) => {
    failure ??= new IntegrityError(`${what} is not a readable tar volume: ${err.message}`, { cause: err });
  });
  parser.on('entry', (entry: ReadEntry) => {
    const current = index++;
    pending = pending.then(async () => {
      if (failure) {
        entry.resume();
        return;
      }
      active = entry;
      try {
        await onEntry({
          index: current,
          name: entry.path,
          type: entry.type,
          size: entry.size ?? 0,
          mode: entry.mode ?? 0,
          linkpath: entry.linkpath,
          body: entry as unknown as AsyncIterable<Buffer>,
        });
      } catch (err) {
        failure ??= err;
      } finally {
        active = undefined;
        // Whatever the handler left unread is skipped so the parser moves on.
        entry.resume();
        if (options.lastIndex !== undefined && current >= options.lastIndex) reachedLast = true;
      }
    });
  });

  try {
    for await (const chunk of streamChunks(source)) {
      if (signal?.aborted) break;
      size += chunk.length;
      crc = crc32(chunk, crc);
      if (failure || reachedLast) break;
      if (!parser.write(chunk)) await new Promise<void>((r) => parser.once('drain', () => r()));
    }
  } catch (err) {
    failure ??= err;
  }
  if (reachedLast && !failure) {
    // Entries after the last wanted one may be queued; their handlers only skip them.
    source.destroy();
    await pending;
    if (failure) throw failure;
    return { size, crc32: crc, entries: index };
  }
  if (failure || signal?.aborted) {
    source.destroy();
    parser.abort?.(new Error('stopped'));
    // Ended rather than destroyed: a destroyed entry never wakes a reader that asks for more after it.
    try {
      active?.end();
    } catch {
      // already ended
    }
    await pending.catch(() => undefined);
    if (failure) throw failure;
    return { size, crc32: crc, entries: index };
  }
  parser.end();
  await ended;
  await pending;
  if (failure) throw failure;
  return { size, crc32: crc, entries: index };
}
