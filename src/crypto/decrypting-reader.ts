import { readFully, type ObjectReader } from '../storage/storage.js';
import { cipherThread } from './cipher-thread.js';
import {
  BATCH_SEGMENTS,
  SEALED_BATCH,
  SEALED_SEGMENT,
  SEAL_BATCH,
  SEGMENT_SIZE,
  TAG_SIZE,
  batchBuffers,
  checkHeader,
  notAuthentic,
  objectKey,
  truncated,
} from './segments.js';

/** Batches read and opened ahead of the one being copied out. */
const AHEAD = 2;

/** Which segments of an encrypted object a reader opens, and which plaintext bytes it returns. */
export interface SegmentRange {
  /** The object's header (it names the object's key). */
  header: Buffer;
  /** First segment the inner reader starts at. */
  firstSegment: number;
  /** Last segment to read. */
  lastSegment: number;
  /** The object's final segment, sealed with the final flag, and its plaintext size. */
  finalSegment: number;
  finalSegmentSize: number;
  /** Plaintext bytes of the first segment to drop, and how many to return at most. */
  skip: number;
  limit: number;
}

interface OpenedBatch {
  input: ArrayBuffer;
  output: ArrayBuffer;
  plain: Buffer;
}

/**
 * Decrypts an encrypted object into the caller's buffers. Sealed segments are
 * read straight into batch buffers, opened on the encryption thread into
 * recycled output buffers, and copied out, a few batches ahead: so memory is
 * a few megabytes and nothing is allocated per chunk. Any damage, truncation
 * or extension is an IntegrityError naming the object.
 */
export class DecryptingReader implements ObjectReader {
  private readonly key: Buffer;
  private readonly queue: Promise<OpenedBatch>[] = [];
  private readTail: Promise<unknown> = Promise.resolve();
  private nextSegment: number;
  private current?: OpenedBatch;
  private at = 0;
  private skip: number;
  private remaining: number;
  private stopped = false;

  constructor(
    dataKey: Buffer,
    private readonly name: string,
    private readonly inner: ObjectReader,
    private readonly range: SegmentRange,
  ) {
    checkHeader(range.header, name);
    this.key = objectKey(dataKey, range.header, name);
    this.nextSegment = range.firstSegment;
    this.skip = range.skip;
    this.remaining = range.limit;
    for (let i = 0; i < AHEAD; i++) this.schedule();
  }

  private sealedSize(index: number): number {
    return index === this.range.finalSegment ? this.range.finalSegmentSize + TAG_SIZE : SEALED_SEGMENT;
  }

  /** Reads the next batch (after the reads before it) and hands it to the encryption thread. */
  private schedule(): void {
    const first = this.nextSegment;
    if (first > this.range.lastSegment) return;
    const count = Math.min(BATCH_SEGMENTS, this.range.lastSegment - first + 1);
    this.nextSegment += count;
    const last = first + count - 1;
    const length = (count - 1) * SEALED_SEGMENT + this.sealedSize(last);
    const buffers = { input: batchBuffers.take(SEALED_BATCH), output: batchBuffers.take(SEAL_BATCH) };
    const read = this.readTail.then(() => this.fillExactly(new Uint8Array(buffers.input, 0, length), first));
    this.readTail = read.catch(() => {
      this.stopped = true;
    });
    const opened = read
      .then(() =>
        cipherThread.run({
          op: 'open',
          key: this.key,
          header: this.range.header,
          segmentSize: SEGMENT_SIZE,
          firstIndex: first,
          finalIndex: last === this.range.finalSegment ? last : -1,
          input: buffers.input,
          length,
          output: buffers.output,
        }),
      )
      .then((reply): OpenedBatch => {
        if (reply.failedIndex !== undefined) throw notAuthentic(this.name, reply.failedIndex);
        return { input: reply.input, output: reply.output, plain: Buffer.from(reply.output, 0, reply.length) };
      });
    // A failure reaches the caller through read().
    opened.catch(() => undefined);
    this.queue.push(opened);
  }

  private async fillExactly(into: Uint8Array, firstSegment: number): Promise<void> {
    if (this.stopped) throw new Error('closed');
    const n = await readFully(this.inner, into);
    if (n < into.length) throw truncated(this.name, firstSegment + Math.floor(n / SEALED_SEGMENT));
  }

  async read(into: Uint8Array): Promise<number> {
    while (!this.current || this.at === this.current.plain.length) {
      if (this.current) {
        batchBuffers.give(this.current.input);
        batchBuffers.give(this.current.output);
        this.current = undefined;
        this.schedule();
      }
      const next = this.queue.shift();
      if (!next || this.remaining === 0) return 0;
      const batch = await next;
      let plain = batch.plain;
      if (this.skip > 0) {
        const dropped = Math.min(this.skip, plain.length);
        plain = plain.subarray(dropped);
        this.skip -= dropped;
      }
      if (plain.length > this.remaining) plain = plain.subarray(0, this.remaining);
      this.remaining -= plain.length;
      this.current = { ...batch, plain };
      this.at = 0;
    }
    const n = Math.min(into.length, this.current.plain.length - this.at);
    into.set(this.current.plain.subarray(this.at, this.at + n));
    this.at += n;
    return n;
  }

  async close(): Promise<void> {
    this.stopped = true;
    await this.readTail;
    const opened = await Promise.allSettled(this.queue.splice(0));
    for (const batch of [this.current, ...opened.map((r) => (r.status === 'fulfilled' ? r.value : undefined))]) {
      if (!batch) continue;
      batchBuffers.give(batch.input);
      batchBuffers.give(batch.output);
    }
    this.current = undefined;
    await this.inner.close();
  }
}
