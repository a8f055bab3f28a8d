import { hkdfSync, randomBytes } from 'node:crypto';
import { IntegrityError } from '../errors.js';
import { cipherThread } from './cipher-thread.js';
import { HEADER_SIZE, SALT_SIZE, TAG_SIZE, openInto, sealInto } from './gcm.js';

export { HEADER_SIZE, SALT_SIZE, TAG_SIZE };

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
export const SEALED_SEGMENT = SEGMENT_SIZE + TAG_SIZE;
const MAGIC = Buffer.from('LBEN', 'latin1');
const VERSION = 1;
const INFO = 'lifeboat object v1\0';
/** Segments per batch handed to the encryption thread. */
export const BATCH_SEGMENTS = 16;
/** Batches of one stream handed over and not yet emitted: the bound on its memory. */
const IN_FLIGHT = 4;

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

export function checkHeader(header: Buffer, name: string): void {
  if (header.length !== HEADER_SIZE || !header.subarray(0, 4).equals(MAGIC)) {
    throw new IntegrityError(`${name} is not an encrypted lifeboat object (its header is damaged)`);
  }
  if (header[4] !== VERSION || header[5] !== SEGMENT_LOG2 || header[6] !== 0 || header[7] !== 0) {
    throw new IntegrityError(`${name} has an unknown encryption header (version ${header[4]}, segment size 2^${header[5]})`);
  }
}

export function objectKey(dataKey: Buffer, header: Buffer, name: string): Buffer {
  return Buffer.from(hkdfSync('sha256', dataKey, header.subarray(8), INFO + name, 32));
}

export function truncated(name: string, index: number): IntegrityError {
  return new IntegrityError(`${name} is truncated: encrypted segment ${index} is incomplete or missing`);
}

export function notAuthentic(name: string, index: number): IntegrityError {
  return new IntegrityError(`${name} is damaged or was tampered with: encrypted segment ${index} does not authenticate`);
}

/** A batch of segments sealed or opened: the input buffer back, and the result. */
export interface BatchResult {
  input: ArrayBuffer;
  output: Buffer;
}

/**
 * Batch buffers, kept for the next object once an object is done with them.
 * Buffers of a megabyte are given memory of their own by the C library, and
 * once one is freed the library serves the next ones from its heap instead,
 * where freed batches of many volumes left tens of megabytes that were never
 * given back to the system. Only as many are kept as were in use at once.
 */
class BatchBufferPool {
  private readonly idle = new Map<number, ArrayBuffer[]>();

  take(size: number): ArrayBuffer {
    return this.idle.get(size)?.pop() ?? new ArrayBuffer(size);
  }

  /** Keeps `buffer` for reuse: its last user must be done with it. */
  give(buffer: ArrayBuffer): void {
    if (buffer.byteLength === 0) return; // moved to another thread and never returned
    const list = this.idle.get(buffer.byteLength);
    if (list) list.push(buffer);
    else this.idle.set(buffer.byteLength, [buffer]);
  }
}

export const batchBuffers = new BatchBufferPool();

/**
 * Gathers bytes into batches of whole segments and hands them to the
 * encryption thread, at most IN_FLIGHT not yet emitted, emitting results in order.
 * Input buffers go to the thread and come back to be filled again, so memory
 * is a few batches whatever the object's size.
 */
export class SegmentBatches {
  /** Batches handed over and not yet emitted, oldest first. */
  private readonly outstanding: Promise<void>[] = [];
  private emitting: Promise<void> = Promise.resolve();
  private batch: Uint8Array;
  private fill = 0;

  constructor(
    private readonly batchSize: number,
    private readonly process: (input: ArrayBuffer, length: number, last: boolean) => Promise<BatchResult>,
    private readonly emit: (output: Buffer) => void | Promise<void>,
  ) {
    this.batch = new Uint8Array(batchBuffers.take(batchSize));
  }

  /** Copies bytes in, handing each full batch over once more bytes follow it. */
  async append(chunk: Uint8Array): Promise<void> {
    for (let at = 0; at < chunk.length; ) {
      if (this.fill === this.batchSize) await this.handOver(false);
      const n = Math.min(this.batchSize - this.fill, chunk.length - at);
      this.batch.set(chunk.subarray(at, at + n), this.fill);
      this.fill += n;
      at += n;
    }
  }

  /** Hands over what is left as the stream's last batch and emits every result. */
  async finish(): Promise<void> {
    await this.handOver(true);
    batchBuffers.give(this.batch.buffer as ArrayBuffer);
  }

  private async handOver(last: boolean): Promise<void> {
    const result = this.process(this.batch.buffer as ArrayBuffer, this.fill, last).then(({ input, output }) => {
      batchBuffers.give(input);
      return output;
    });
    result.catch(() => undefined);
    // Results are emitted in order, each after the one before, while the caller goes on filling batches:
    // writing batch k overlaps sealing batch k+1 and gathering k+2.
    const emitted = this.emitting.then(() => result).then((output) => (output.length > 0 ? this.emit(output) : undefined));
    // A failure reaches the caller through the awaits below; until then it must not count as unhandled.
    emitted.catch(() => undefined);
    this.emitting = emitted;
    this.outstanding.push(emitted);
    this.batch = new Uint8Array(batchBuffers.take(this.batchSize));
    this.fill = 0;
    while (this.outstanding.length >= (last ? 1 : IN_FLIGHT)) await this.outstanding.shift();
  }
}

/** Plaintext bytes per batch handed to the encryption thread. */
export const SEAL_BATCH = BATCH_SEGMENTS * SEGMENT_SIZE;
/** Largest sealed output of one batch. */
export const SEALED_BATCH = BATCH_SEGMENTS * SEALED_SEGMENT;

/** Seals the segments of one object, batch by batch, in order. */
export class SegmentSealer {
  readonly header = newHeader();
  private readonly key: Buffer;
  private index = 0;

  constructor(dataKey: Buffer, name: string) {
    this.key = objectKey(dataKey, this.header, name);
  }

  /** Seals `length` bytes of `input` (whole segments unless `last`); `output`, when given, receives the result. */
  async seal(input: ArrayBuffer, length: number, last: boolean, output?: ArrayBuffer): Promise<BatchResult> {
    const first = this.index;
    const segments = last ? Math.max(1, Math.ceil(length / SEGMENT_SIZE)) : length / SEGMENT_SIZE;
    this.index += segments;
    const reply = await cipherThread.run({
      op: 'seal',
      key: this.key,
      header: this.header,
      segmentSize: SEGMENT_SIZE,
      firstIndex: first,
      finalIndex: last ? first + segments - 1 : -1,
      input,
      length,
      output,
    });
    return { input: reply.input, output: Buffer.from(reply.output!, 0, reply.length) };
  }
}

/** Encrypts a small object held in memory. */
export function encryptBuffer(dataKey: Buffer, name: string, plain: Uint8Array): Buffer {
  const header = newHeader();
  const key = objectKey(dataKey, header, name);
  const last = lastSegmentIndex(plain.length);
  const out = Buffer.allocUnsafe(ciphertextSize(plain.length));
  header.copy(out, 0);
  let at = HEADER_SIZE;
  for (let i = 0; i <= last; i++) {
    at += sealInto(key, header, i, i === last, plain.subarray(i * SEGMENT_SIZE, (i + 1) * SEGMENT_SIZE), out, at);
  }
  return out;
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
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  for (let i = 0; i <= last; i++) {
    const start = segmentOffset(i);
    const n = openInto(key, header, i, i === last, sealed.subarray(start, Math.min(sealed.length, start + SEALED_SEGMENT)), out, at);
    if (n < 0) throw notAuthentic(name, i);
    at += n;
  }
  return out;
}
