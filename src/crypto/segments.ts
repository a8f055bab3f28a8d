import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { IntegrityError } from '../errors.js';

/**
 * The encrypted object format (docs/SECURITY.md):
 *
 *   header  = "LBEN" | version (1) | log2(segment size) (1) | 0x0000 | salt (32 random bytes)
 *   segment = AES-256-GCM(objectKey, nonce, plaintext[i*S .. (i+1)*S]) | tag (16)
 *
 * objectKey = HKDF-SHA256(dataKey, salt, "lifeboat object v1\0" | object name), so every
 * object has its own key: segments spliced in from another object, or an object
 * renamed to another name, fail to authenticate. The nonce is the segment index
 * and the final-segment flag; the additional data is the header, the index and the
 * flag, so reordered, dropped, appended or truncated segments fail too.
 * Every segment but the last holds exactly S plaintext bytes; the last holds 0..S
 * (0 only for an empty object), so sizes map both ways by a formula.
 */
export const SEGMENT_LOG2 = 16;
export const SEGMENT_SIZE = 1 << SEGMENT_LOG2;
export const TAG_SIZE = 16;
export const SALT_SIZE = 32;
export const HEADER_SIZE = 8 + SALT_SIZE;
const SEALED_SEGMENT = SEGMENT_SIZE + TAG_SIZE;
const MAGIC = Buffer.from('LBEN', 'latin1');
const VERSION = 1;
const INFO = 'lifeboat object v1\0';

export const DATA_KEY_SIZE = 32;

/** Ciphertext size of a plaintext of `size` bytes. */
export function ciphertextSize(size: number): number {
  const segments = Math.max(1, Math.ceil(size / SEGMENT_SIZE));
  return HEADER_SIZE + size + segments * TAG_SIZE;
}

/** Plaintext size of a ciphertext of `size` bytes, or undefined when no plaintext encrypts to that size. */
export function plaintextSize(size: number): number | undefined {
  const rest = size - HEADER_SIZE;
  if (rest < TAG_SIZE) return undefined;
  const full = Math.floor(rest / SEALED_SEGMENT);
  const tail = rest % SEALED_SEGMENT;
  if (tail === 0) return full * SEGMENT_SIZE;
  if (tail < TAG_SIZE || (tail === TAG_SIZE && full > 0)) return undefined;
  return full * SEGMENT_SIZE + tail - TAG_SIZE;
}

/** Index of the last segment of a plaintext of `size` bytes. */
export function lastSegmentIndex(size: number): number {
  return Math.max(1, Math.ceil(size / SEGMENT_SIZE)) - 1;
}

/** Offset in the ciphertext where segment `index` begins. */
export function segmentOffset(index: number): number {
  return HEADER_SIZE + index * SEALED_SEGMENT;
}

function newHeader(): Buffer {
  const header = Buffer.alloc(HEADER_SIZE);
  MAGIC.copy(header, 0);
  header[4] = VERSION;
  header[5] = SEGMENT_LOG2;
  randomBytes(SALT_SIZE).copy(header, 8);
  return header;
}

function checkHeader(header: Buffer, name: string): void {
  if (header.length !== HEADER_SIZE || !header.subarray(0, 4).equals(MAGIC)) {
    throw new IntegrityError(`${name} is not an encrypted lifeboat object (its header is damaged)`);
  }
  if (header[4] !== VERSION || header[5] !== SEGMENT_LOG2 || header[6] !== 0 || header[7] !== 0) {
    throw new IntegrityError(`${name} has an unknown encryption header (version ${header[4]}, segment size 2^${header[5]})`);
  }
}

function objectKey(dataKey: Buffer, header: Buffer, name: string): Buffer {
  return Buffer.from(hkdfSync('sha256', dataKey, header.subarray(8), INFO + name, 32));
}

function nonceAndAad(header: Buffer, index: number, final: boolean): { nonce: Buffer; aad: Buffer } {
  const nonce = Buffer.alloc(12);
  nonce.writeUInt32BE(Math.floor(index / 0x1_0000_0000), 0);
  nonce.writeUInt32BE(index >>> 0, 4);
  nonce[8] = final ? 1 : 0;
  const aad = Buffer.alloc(HEADER_SIZE + 9);
  header.copy(aad, 0);
  nonce.copy(aad, HEADER_SIZE, 0, 9);
  return { nonce, aad };
}

/** Seals one segment; returns ciphertext then tag. */
function seal(key: Buffer, header: Buffer, index: number, final: boolean, plain: Buffer): Buffer[] {
  const { nonce, aad } = nonceAndAad(header, index, final);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(aad);
  const body = cipher.update(plain);
  cipher.final();
  return [body, cipher.getAuthTag()];
}

function open(key: Buffer, header: Buffer, index: number, final: boolean, sealed: Buffer, name: string): Buffer {
  if (sealed.length < TAG_SIZE) throw truncated(name, index);
  const { nonce, aad } = nonceAndAad(header, index, final);
  const decipher = createDecipheriv('aes-256-gcm', key, nonce);
  decipher.setAAD(aad);
  decipher.setAuthTag(sealed.subarray(sealed.length - TAG_SIZE));
  const body = decipher.update(sealed.subarray(0, sealed.length - TAG_SIZE));
  try {
    decipher.final();
  } catch {
    throw new IntegrityError(`${name} is damaged or was tampered with: encrypted segment ${index} does not authenticate`);
  }
  return body;
}

function truncated(name: string, index: number): IntegrityError {
  return new IntegrityError(`${name} is truncated: encrypted segment ${index} is incomplete or missing`);
}

/** Encrypts a stream; memory is one segment. `name` is the object's key in the repository. */
export class EncryptStream extends Transform {
  private readonly header = newHeader();
  private readonly key: Buffer;
  private readonly buffer = Buffer.allocUnsafe(SEGMENT_SIZE);
  private fill = 0;
  private index = 0;
  /** Plaintext bytes seen so far. */
  plainBytes = 0;

  constructor(dataKey: Buffer, name: string) {
    super({ highWaterMark: 1 << 20 });
    this.key = objectKey(dataKey, this.header, name);
    this.push(this.header);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.plainBytes += chunk.length;
    // One output buffer per input chunk: fewer, larger writes downstream.
    const out: Buffer[] = [];
    let at = 0;
    while (at < chunk.length) {
      if (this.fill === SEGMENT_SIZE) {
        out.push(...seal(this.key, this.header, this.index++, false, this.buffer));
        this.fill = 0;
      }
      if (this.fill === 0 && chunk.length - at > SEGMENT_SIZE) {
        // A whole segment with more after it: sealed straight from the chunk, without a copy.
        out.push(...seal(this.key, this.header, this.index++, false, chunk.subarray(at, at + SEGMENT_SIZE)));
        at += SEGMENT_SIZE;
        continue;
      }
      const n = Math.min(SEGMENT_SIZE - this.fill, chunk.length - at);
      chunk.copy(this.buffer, this.fill, at, at + n);
      this.fill += n;
      at += n;
    }
    if (out.length > 0) this.push(out.length === 1 ? out[0] : Buffer.concat(out));
    done();
  }

  override _flush(done: TransformCallback): void {
    for (const b of seal(this.key, this.header, this.index, true, this.buffer.subarray(0, this.fill))) this.push(b);
    this.buffer.fill(0);
    done();
  }
}

export interface DecryptOptions {
  /** The object's header, when the stream starts at a segment rather than at the header. */
  header?: Buffer;
  /** Index of the first segment in the stream. */
  firstSegment?: number;
  /** Index of the object's last segment, when known (ranged reads); else the stream's last segment is the final one. */
  finalSegment?: number;
  /** Plaintext bytes of the first segment to drop. */
  skip?: number;
  /** Plaintext bytes to emit at most. */
  limit?: number;
}

/** Decrypts a stream; memory is one segment. Any damage is an IntegrityError naming the object. */
export class DecryptStream extends Transform {
  private header?: Buffer;
  private key?: Buffer;
  private readonly pending = Buffer.allocUnsafe(SEALED_SEGMENT);
  private fill = 0;
  private headerFill = 0;
  private headerBuf?: Buffer;
  private index: number;
  private skip: number;
  private remaining: number;

  constructor(
    private readonly dataKey: Buffer,
    private readonly name: string,
    private readonly options: DecryptOptions = {},
  ) {
    super({ highWaterMark: 1 << 20 });
    this.index = options.firstSegment ?? 0;
    this.skip = options.skip ?? 0;
    this.remaining = options.limit ?? Number.POSITIVE_INFINITY;
    if (options.header) this.setHeader(options.header);
  }

  private setHeader(header: Buffer): void {
    checkHeader(header, this.name);
    this.header = header;
    this.key = objectKey(this.dataKey, header, this.name);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    try {
      let at = 0;
      if (!this.header) {
        this.headerBuf ??= Buffer.alloc(HEADER_SIZE);
        const n = Math.min(HEADER_SIZE - this.headerFill, chunk.length);
        chunk.copy(this.headerBuf, this.headerFill, 0, n);
        this.headerFill += n;
        at = n;
        if (this.headerFill < HEADER_SIZE) return done();
        this.setHeader(this.headerBuf);
      }
      const out: Buffer[] = [];
      while (at < chunk.length) {
        if (this.fill === SEALED_SEGMENT) {
          out.push(this.openSegment(this.pending, false));
          this.fill = 0;
        }
        if (this.fill === 0 && chunk.length - at > SEALED_SEGMENT) {
          // A whole segment with more after it: opened straight from the chunk, without a copy.
          out.push(this.openSegment(chunk.subarray(at, at + SEALED_SEGMENT), false));
          at += SEALED_SEGMENT;
          continue;
        }
        const n = Math.min(SEALED_SEGMENT - this.fill, chunk.length - at);
        chunk.copy(this.pending, this.fill, at, at + n);
        this.fill += n;
        at += n;
      }
      const plain = out.length === 1 ? out[0]! : Buffer.concat(out);
      if (plain.length > 0) this.push(plain);
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  override _flush(done: TransformCallback): void {
    try {
      if (!this.header) throw new IntegrityError(`${this.name} is truncated: its encryption header is incomplete`);
      // The last segment of the stream is always still buffered here; none at all is a truncation.
      if (this.fill === 0) throw truncated(this.name, this.index);
      const plain = this.openSegment(this.pending.subarray(0, this.fill), true);
      this.fill = 0;
      if (plain.length > 0) this.push(plain);
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  /** Opens one sealed segment; `atEnd`: nothing follows it in this stream. Returns the plaintext to emit. */
  private openSegment(sealed: Buffer, atEnd: boolean): Buffer {
    const known = this.options.finalSegment;
    if (known !== undefined && this.index > known) {
      throw new IntegrityError(`${this.name} is damaged or was tampered with: it has more encrypted segments than its size allows`);
    }
    const final = known !== undefined ? this.index === known : atEnd;
    if (!final && sealed.length !== SEALED_SEGMENT) throw truncated(this.name, this.index);
    let plain = open(this.key!, this.header!, this.index, final, sealed, this.name);
    this.index++;
    if (this.skip > 0) {
      plain = plain.subarray(Math.min(this.skip, plain.length));
      this.skip = 0;
    }
    if (plain.length > this.remaining) plain = plain.subarray(0, this.remaining);
    this.remaining -= plain.length;
    return plain;
  }
}

/** Encrypts a small object held in memory. */
export function encryptBuffer(dataKey: Buffer, name: string, plain: Uint8Array): Buffer {
  const header = newHeader();
  const key = objectKey(dataKey, header, name);
  const data = Buffer.from(plain.buffer, plain.byteOffset, plain.byteLength);
  const out: Buffer[] = [header];
  const last = lastSegmentIndex(data.length);
  for (let i = 0; i <= last; i++) {
    out.push(...seal(key, header, i, i === last, data.subarray(i * SEGMENT_SIZE, (i + 1) * SEGMENT_SIZE)));
  }
  return Buffer.concat(out);
}

/** Decrypts a small object held in memory. */
export function decryptBuffer(dataKey: Buffer, name: string, sealed: Buffer): Buffer {
  if (sealed.length < HEADER_SIZE) throw new IntegrityError(`${name} is truncated: its encryption header is incomplete`);
  const header = sealed.subarray(0, HEADER_SIZE);
  checkHeader(header, name);
  const size = plaintextSize(sealed.length);
  if (size === undefined) throw new IntegrityError(`${name} is truncated or extended: ${sealed.length} bytes is not a possible encrypted size`);
  const key = objectKey(dataKey, header, name);
  const last = lastSegmentIndex(size);
  const out: Buffer[] = [];
  for (let i = 0; i <= last; i++) {
    const start = segmentOffset(i);
    out.push(open(key, header, i, i === last, sealed.subarray(start, Math.min(sealed.length, start + SEALED_SEGMENT)), name));
  }
  return Buffer.concat(out);
}
