import type * as fsp from 'node:fs/promises';
import { openRegularFile } from '../format/durable.js';

/** Reads up to `length` bytes at `position`; fewer only at the end of the file. */
export async function readAt(fh: fsp.FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let filled = 0;
  while (filled < length) {
    const { bytesRead } = await fh.read(buf, filled, length - filled, position + filled);
    if (bytesRead === 0) break;
    filled += bytesRead;
  }
  return filled === length ? buf : buf.subarray(0, filled);
}

const WINDOW = 1 << 20;

/**
 * Reads at any offset through one bounded window, so that a walk over many
 * small neighbouring fields makes one read per window rather than one or two
 * per field. What it returns is a view of the window: copy what is kept.
 */
export class WindowedFile {
  private buf: Buffer = Buffer.alloc(0);
  private bufStart = 0;

  constructor(
    private readonly fh: fsp.FileHandle,
    readonly size: number,
    private readonly window = WINDOW,
  ) {}

  /** Up to `length` bytes at `position`; fewer only at the end of the file. */
  async at(position: number, length: number): Promise<Buffer> {
    if (position < this.bufStart || position + length > this.bufStart + this.buf.length) {
      this.bufStart = position;
      this.buf = await readAt(this.fh, position, Math.max(0, Math.min(Math.max(length, this.window), this.size - position)));
    }
    const at = position - this.bufStart;
    return this.buf.subarray(at, at + length);
  }
}

/**
 * Sequential little-endian reads through a file with a bounded buffer: what a
 * header walk needs without ever holding the file. Every length taken from the
 * file is checked against what is left before anything is allocated.
 */
export class FileCursor {
  private readonly file: WindowedFile;
  pos = 0;

  constructor(
    fh: fsp.FileHandle,
    readonly size: number,
  ) {
    this.file = new WindowedFile(fh, size);
  }

  get remaining(): number {
    return this.size - this.pos;
  }

  private async need(n: number, what: string): Promise<Buffer> {
    if (n > this.remaining) throw new TruncatedError(`${what} at byte ${this.pos} runs past the end of the file (${this.size} bytes)`);
    const got = await this.file.at(this.pos, n);
    if (got.length < n) throw new TruncatedError(`${what} at byte ${this.pos}: the file is shorter than it claims`);
    this.pos += n;
    return got;
  }

  async u8(what: string): Promise<number> {
    return (await this.need(1, what)).readUInt8(0);
  }
  async u32(what: string): Promise<number> {
    return (await this.need(4, what)).readUInt32LE(0);
  }
  async u64(what: string): Promise<bigint> {
    return (await this.need(8, what)).readBigUInt64LE(0);
  }
  async bytes(n: number, what: string): Promise<Buffer> {
    return Buffer.from(await this.need(n, what));
  }
  skip(n: number, what: string): void {
    if (n > this.remaining) throw new TruncatedError(`${what} at byte ${this.pos} runs past the end of the file (${this.size} bytes)`);
    this.pos += n;
  }
}

/** A length or count read from a file points past its end. */
export class TruncatedError extends Error {}

/** A bigint from a file as a number, or an error naming it when it cannot be one. */
export function safeNumber(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new TruncatedError(`${what} ${v} is impossibly large`);
  return Number(v);
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * JSON from bytes that must be UTF-8, as the loaders read it (transformers,
 * the safetensors crate): a byte that is not UTF-8 is an error naming its
 * position, not a replacement character that lets the file pass.
 */
export function parseUtf8Json(bytes: Uint8Array): unknown {
  let text: string;
  try {
    text = strictUtf8.decode(bytes);
  } catch {
    const at = Buffer.from(bytes).toString('utf8').indexOf('\uFFFD');
    throw new SyntaxError(`not UTF-8 text (an invalid byte sequence near character ${at})`);
  }
  return JSON.parse(text);
}

/** A regular file's JSON, which must be UTF-8. */
export async function readUtf8Json(abs: string): Promise<unknown> {
  const { handle } = await openRegularFile(abs);
  try {
    return parseUtf8Json(await handle.readFile());
  } finally {
    await handle.close();
  }
}
