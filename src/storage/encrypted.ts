import { Readable } from 'node:stream';
import { IntegrityError } from '../errors.js';
import {
  HEADER_SIZE,
  SEAL_BATCH,
  SEALED_BATCH,
  SEGMENT_SIZE,
  SegmentBatches,
  SegmentSealer,
  batchBuffers,
  ciphertextSize,
  decryptBuffer,
  encryptBuffer,
  lastSegmentIndex,
  plaintextSize,
  segmentOffset,
} from '../crypto/segments.js';
import { putThroughWriter } from './put-through-writer.js';
import { DecryptingReader } from '../crypto/decrypting-reader.js';
import { EMPTY_READER, streamOverReader } from './reader-over-stream.js';
import { MAX_DOCUMENT_BYTES, documentTooLarge, readDocumentBody, readFully, type GetDocumentOptions, type GetOptions, type IncompleteWrite, type ObjectInfo, type ObjectReader, type ObjectWriter, type PutDocumentOptions, type PutOptions, type Storage, type StorageCapabilities } from './storage.js';

/**
 * Objects left in plaintext: what is needed before a key is unlocked (the
 * repository config and the key files) and the lock, which other processes read
 * to name the holder.
 */
export function isPlaintextKey(key: string): boolean {
  return key === 'config.json' || key.startsWith('keys/') || key.startsWith('locks/');
}

/**
 * Client-side encryption as a Storage wrapper: every object but the plaintext
 * bootstrap is stored in the segmented AES-256-GCM format of src/crypto/segments.ts.
 * Callers see plaintext bytes and plaintext sizes; damage is an IntegrityError
 * that names the object.
 */
export class EncryptedStorage implements Storage {
  readonly location: string;
  readonly capabilities: StorageCapabilities;
  readonly encryption = 'aes-256-gcm' as const;

  constructor(
    private readonly inner: Storage,
    private readonly dataKey: Buffer,
  ) {
    this.location = inner.location;
    this.capabilities = inner.capabilities;
  }

  async put(key: string, body: Readable, options?: PutOptions): Promise<ObjectInfo> {
    if (isPlaintextKey(key)) return this.inner.put(key, body, options);
    return putThroughWriter(await this.openWriter(key, options), body);
  }

  async openWriter(key: string, options?: PutOptions): Promise<ObjectWriter> {
    if (isPlaintextKey(key)) return this.inner.openWriter(key, options);
    const inner = await this.inner.openWriter(key, {
      ...options,
      size: options?.size === undefined ? undefined : ciphertextSize(options.size),
    });
    const sealer = new SegmentSealer(this.dataKey, key);
    try {
      await inner.write(sealer.header);
    } catch (err) {
      await inner.abort(err as Error);
      throw err;
    }
    return new SealingWriter(key, sealer, inner);
  }

  async putDocument(key: string, data: Uint8Array, options?: PutDocumentOptions): Promise<boolean> {
    if (isPlaintextKey(key)) return this.inner.putDocument(key, data, options);
    // Each encryption of the same bytes differs: stored ciphertext cannot be compared with plaintext.
    if (options?.ifMatch) throw new Error(`a conditional replace of the encrypted document ${key} is not supported`);
    return this.inner.putDocument(key, encryptBuffer(this.dataKey, key, data), options);
  }

  async getDocument(key: string, options?: GetDocumentOptions): Promise<Buffer> {
    if (isPlaintextKey(key)) return this.inner.getDocument(key, options);
    const limit = options?.maxBytes ?? MAX_DOCUMENT_BYTES;
    // Streamed, so an object too large to be a document is refused before it is held in memory.
    const body = await this.inner.get(key);
    return decryptBuffer(this.dataKey, key, await readDocumentBody(body, ciphertextSize(limit), () => documentTooLarge(key, limit)));
  }

  async get(key: string, options?: GetOptions): Promise<Readable> {
    if (isPlaintextKey(key)) return this.inner.get(key, options);
    return streamOverReader(await this.openReader(key, options));
  }

  async openReader(key: string, options?: GetOptions): Promise<ObjectReader> {
    if (isPlaintextKey(key)) return this.inner.openReader(key, options);
    const signal = options?.signal;
    // The size tells which segment is the final one, so each batch is known whole or last before it is read.
    const info = await this.inner.head(key);
    if (!info) return this.inner.openReader(key, options); // throws the driver's not-found error
    const total = plaintextSize(info.size);
    if (total === undefined) throw new IntegrityError(`${key} is truncated or extended: ${info.size} bytes is not a possible encrypted size`);
    const offset = options?.offset ?? 0;
    const end = Math.min(total, options?.length === undefined ? total : offset + options.length);
    const whole = offset === 0 && end === total;
    // A whole object is always opened, even when empty: its one segment proves it authentic.
    if (offset >= end && !whole) return EMPTY_READER;
    const finalSegment = lastSegmentIndex(total);
    const first = Math.floor(offset / SEGMENT_SIZE);
    const last = whole ? finalSegment : Math.floor((end - 1) / SEGMENT_SIZE);
    const inner = await this.inner.openReader(key, { offset: first === 0 ? 0 : segmentOffset(first), signal });
    try {
      const header = Buffer.alloc(HEADER_SIZE);
      const headerSource = first === 0 ? inner : await this.inner.openReader(key, { offset: 0, length: HEADER_SIZE, signal });
      try {
        if ((await readFully(headerSource, header)) < HEADER_SIZE) throw new IntegrityError(`${key} is truncated: its encryption header is incomplete`);
      } finally {
        if (headerSource !== inner) await headerSource.close();
      }
      return new DecryptingReader(this.dataKey, key, inner, {
        header,
        firstSegment: first,
        lastSegment: last,
        finalSegment,
        finalSegmentSize: total - finalSegment * SEGMENT_SIZE,
        skip: offset - first * SEGMENT_SIZE,
        limit: end - offset,
      });
    } catch (err) {
      await inner.close();
      throw err;
    }
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    const info = await this.inner.head(key);
    return info && !isPlaintextKey(key) ? { key, size: plainSizeOf(info.size) } : info;
  }

  listPrefixes(prefix: string): AsyncIterable<string> {
    // Keys are not encrypted: the folders are the driver's.
    return this.inner.listPrefixes(prefix);
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    for await (const info of this.inner.list(prefix)) {
      yield isPlaintextKey(info.key) ? info : { ...info, size: plainSizeOf(info.size) };
    }
  }

  delete(keys: readonly string[]): Promise<void> {
    return this.inner.delete(keys);
  }

  incompleteWrites(prefix?: string): AsyncIterable<IncompleteWrite> {
    // Their sizes are of what was written: ciphertext, as it takes room in the repository.
    return this.inner.incompleteWrites(prefix);
  }

  removeIncomplete(writes: readonly IncompleteWrite[]): Promise<void> {
    return this.inner.removeIncomplete(writes);
  }

  cleanupIncomplete(olderThanMs: number, prefix?: string): Promise<number> {
    return this.inner.cleanupIncomplete(olderThanMs, prefix);
  }

  keepReserve(): Promise<void> {
    return this.inner.keepReserve();
  }

  close(): Promise<void> {
    this.dataKey.fill(0);
    return this.inner.close();
  }
}

/**
 * Encrypts into another writer. Sealed batches are written in order and their
 * buffers go back to the encryption thread to be filled again, so a long
 * object allocates nothing per batch.
 */
class SealingWriter implements ObjectWriter {
  private readonly batches: SegmentBatches;
  private plainBytes = 0;

  constructor(
    private readonly key: string,
    sealer: SegmentSealer,
    private readonly inner: ObjectWriter,
  ) {
    this.batches = new SegmentBatches(
      SEAL_BATCH,
      (input, length, last) => sealer.seal(input, length, last, batchBuffers.take(SEALED_BATCH)),
      async (sealed) => {
        await inner.write(sealed);
        batchBuffers.give(sealed.buffer as ArrayBuffer);
      },
    );
  }

  async write(chunk: Uint8Array): Promise<void> {
    this.plainBytes += chunk.length;
    await this.batches.append(chunk);
  }

  async end(): Promise<ObjectInfo> {
    try {
      await this.batches.finish();
    } catch (err) {
      await this.inner.abort(err as Error);
      throw err;
    }
    const info = await this.inner.end();
    if (plaintextSize(info.size) !== this.plainBytes) {
      throw new IntegrityError(`${this.key} was stored with ${info.size} encrypted bytes, which does not match the ${this.plainBytes} bytes written`);
    }
    return { key: this.key, size: this.plainBytes };
  }

  abort(reason: Error): Promise<void> {
    return this.inner.abort(reason);
  }
}

/** An impossible encrypted size shows as -1, which never matches a recorded size. */
function plainSizeOf(size: number): number {
  return plaintextSize(size) ?? -1;
}
