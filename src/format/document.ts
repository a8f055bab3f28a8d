import { createHash } from 'node:crypto';
import type * as z from 'zod';
import { IntegrityError } from '../errors.js';
import { sha256Hex } from './checksum.js';

/**
 * Repository documents (config, manifests) are JSON with a trailing `checksum`
 * over the compact serialisation of everything else, so a flipped bit in a
 * manifest is caught like one in a volume.
 *
 * They are written compact, the checksum last, so that the bytes before
 * `,"checksum"` (closed with `}`) are exactly what the checksum covers: a
 * reader hashes the bytes it got, instead of serialising a manifest of a
 * million entries again to hash that. Documents written indented (by older
 * versions) are checked the slow way.
 */
export function encodeDocument(body: Record<string, unknown>): Buffer {
  const { checksum: _ignored, ...rest } = body;
  const json = new JsonBuffer();
  json.add('{');
  let first = true;
  // Member by member, and a long array element by element, as JSON.stringify would write them: a manifest
  // of 100,000 files is 36 MB of JSON, which built whole as a string (then copied into the document's
  // buffer) held a second copy of it at a backup's peak of memory. Each piece goes into the buffer as made.
  for (const [key, value] of Object.entries(rest)) {
    const whole = Array.isArray(value) ? undefined : JSON.stringify(value);
    // What JSON.stringify leaves out of an object (undefined, a function) is left out here too.
    if (whole === undefined && !Array.isArray(value)) continue;
    json.add(`${first ? '' : ','}${JSON.stringify(key)}:`);
    first = false;
    if (whole === undefined) json.addArray(value as unknown[]);
    else json.add(whole);
  }
  json.add('}');
  const compact = json.finish();
  if (compact.length === 2) return Buffer.from(`{"checksum":"sha256:${sha256Hex('{}')}"}\n`);
  const document = compact.buffer;
  const length = compact.length;
  const checksum = createHash('sha256').update(document.subarray(0, length)).digest('hex');
  // The closing brace of the compact JSON gives way to the checksum member.
  document.write(`,"checksum":"sha256:${checksum}"}\n`, length - 1, 'latin1');
  return document.subarray(0, length - 1 + CHECKSUM_TAIL_BYTES + 1);
}

/** The longest string V8 makes: JSON.stringify of a longer document throws a RangeError, and so does JsonBuffer. */
const MAX_STRING_CHARS = 2 ** 29 - 24;
/** Elements of an array serialised together before they go into the buffer. */
const ELEMENTS_PER_PIECE = 256;

/** The compact JSON of a document, written into one buffer piece by piece, with room for the checksum after it. */
class JsonBuffer {
  private buffer = Buffer.allocUnsafe(64 << 10);
  private length = 0;
  private chars = 0;

  add(piece: string): void {
    this.chars += piece.length;
    if (this.chars > MAX_STRING_CHARS) throw new RangeError('Invalid string length');
    // A piece takes at most 3 bytes per UTF-16 unit: only when that might not fit is it measured.
    if (piece.length * 3 > this.room()) {
      const bytes = Buffer.byteLength(piece);
      // Room for as many bytes again after it, so that pieces added one by one copy the buffer a few times only.
      if (bytes > this.room()) this.grow(2 * bytes);
    }
    this.length += this.buffer.write(piece, this.length);
  }

  /**
   * An array as JSON.stringify writes it (`null` for what it cannot represent), some elements at a
   * time. The room for the rest is judged from the elements written so far, and made at once: each
   * time a buffer grows, it and the larger one are both held while it is copied.
   */
  addArray(values: readonly unknown[]): void {
    this.add('[');
    const start = this.length;
    for (let from = 0; from < values.length; from += ELEMENTS_PER_PIECE) {
      const to = Math.min(values.length, from + ELEMENTS_PER_PIECE);
      const parts: string[] = [];
      for (let i = from; i < to; i++) parts.push(JSON.stringify(values[i]) ?? 'null');
      this.add(`${from === 0 ? '' : ','}${parts.join(',')}`);
      const expected = Math.ceil(((this.length - start) / to) * (values.length - to) * 1.25);
      if (expected > this.room()) this.grow(expected);
    }
    this.add(']');
  }

  finish(): { buffer: Buffer; length: number } {
    return { buffer: this.buffer, length: this.length };
  }

  /** Bytes that can still be written, leaving room for the checksum. */
  private room(): number {
    return this.buffer.length - this.length - CHECKSUM_TAIL_BYTES - 1;
  }

  /**
   * Room for `bytes` more. The part of a buffer not yet written takes no memory (allocUnsafe leaves
   * it unwritten, and the system gives pages only once they are written).
   */
  private grow(bytes: number): void {
    const larger = Buffer.allocUnsafe(this.length + bytes + CHECKSUM_TAIL_BYTES + 1);
    this.buffer.copy(larger, 0, 0, this.length);
    this.buffer = larger;
  }
}

const CHECKSUM_TAIL = /^,"checksum":"sha256:([0-9a-f]{64})"\}$/;
/** `,"checksum":"sha256:<64 hex digits>"}`, which replaces the closing brace of the compact JSON. */
const CHECKSUM_TAIL_BYTES = ',"checksum":"sha256:"}'.length + 64;

/** Whether the document's raw bytes carry their checksum as encodeDocument writes it, and it matches them. */
export function rawChecksumMatches(data: Buffer): boolean {
  let end = data.length;
  if (data[end - 1] === 0x0a) end--;
  // An empty document, `{"checksum":…}`, has no comma before its checksum: it is checked the slow way.
  if (end < CHECKSUM_TAIL_BYTES + 1) return false;
  const tail = CHECKSUM_TAIL.exec(data.toString('latin1', end - CHECKSUM_TAIL_BYTES, end));
  if (!tail) return false;
  const hash = createHash('sha256').update(data.subarray(0, end - CHECKSUM_TAIL_BYTES)).update('}');
  return hash.digest('hex') === tail[1];
}

/** Deeper than any document lifeboat writes: a manifest's entries are four levels down. */
const MAX_DEPTH = 64;
/**
 * What JSON.parse makes of a document is bounded by its size only as long as it
 * holds few values for its size: `[],[],…` takes 15 times its bytes in memory,
 * nesting 5 million levels deep took 18 s and 1.1 GiB, and a manifest of a few
 * hundred MiB of either exhausted the memory of the process. Nothing lifeboat
 * writes has an object or array in fewer than 32 bytes, or a value in fewer
 * than 4 (a manifest's entries take some 200 bytes apiece, a dozen values in
 * one object), so a document with more is refused before it is parsed.
 */
const BYTES_PER_CONTAINER = 32;
const BYTES_PER_VALUE = 4;
/** Room for the empty objects and arrays of a small document (`"tags":{}`, `"warnings":[]`). */
const SMALL_ALLOWANCE = 256;

/** Why `data` cannot be a document lifeboat wrote, judged from its structure alone; undefined when it may be. */
export function shapeProblem(data: Buffer): string | undefined {
  let depth = 0;
  // Counted down, so that a document with too many is refused as soon as that shows.
  let containers = SMALL_ALLOWANCE + data.length / BYTES_PER_CONTAINER;
  let values = SMALL_ALLOWANCE + data.length / BYTES_PER_VALUE;
  const tooMany = `it holds more objects, arrays or values for its ${data.length} bytes than any document lifeboat writes`;
  for (let i = 0; i < data.length; i++) {
    const c = data[i]!;
    if (c === 0x22) {
      // A string: on to its closing quote, one not escaped by an odd run of backslashes.
      let end = data.indexOf(0x22, i + 1);
      for (;;) {
        if (end < 0) return undefined; // unterminated: JSON.parse says so
        let slashes = 0;
        while (data[end - 1 - slashes] === 0x5c) slashes++;
        if (slashes % 2 === 0) break;
        end = data.indexOf(0x22, end + 1);
      }
      i = end;
    } else if (c === 0x7b || c === 0x5b) {
      if (++depth > MAX_DEPTH) return `it nests more than ${MAX_DEPTH} levels deep`;
      if (--containers < 0) return tooMany;
    } else if (c === 0x7d || c === 0x5d) {
      depth--;
    } else if (c === 0x2c) {
      if (--values < 0) return tooMany;
    }
  }
  return undefined;
}

/** A repository document's JSON, refused (IntegrityError) when it is not JSON or not shaped as lifeboat writes it. */
export function parseDocumentJson(data: Buffer, what: string): unknown {
  const shape = shapeProblem(data);
  if (shape !== undefined) throw new IntegrityError(`${what} is damaged: ${shape}`);
  try {
    return JSON.parse(data.toString('utf8'));
  } catch (err) {
    throw new IntegrityError(`${what} is not valid JSON: ${(err as Error).message}`);
  }
}

export function decodeDocument<T>(data: Buffer, schema: z.ZodType<T>, what: string): T {
  const parsed = parseDocumentJson(data, what);
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new IntegrityError(`${what} is not a JSON object`);
  }
  const { checksum, ...rest } = parsed as Record<string, unknown>;
  // The raw bytes hashed are the bytes parsed; JSON.parse keeps the last of repeated members, the checksum written last.
  if (!rawChecksumMatches(data) && (typeof checksum !== 'string' || checksum !== `sha256:${sha256Hex(JSON.stringify(rest))}`)) {
    throw new IntegrityError(`${what} is damaged: its checksum does not match its content`);
  }
  const result = schema.safeParse(rest);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new IntegrityError(`${what} is malformed at ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return result.data;
}
