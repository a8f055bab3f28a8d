import type { CompletedPart } from '@aws-sdk/client-s3';
import { throwIfAborted } from '../errors.js';
import type { ObjectInfo, ObjectWriter } from './storage.js';

/** S3's limit on the parts of one multipart upload. */
export const MAX_PARTS = 10_000;
/** S3's largest part. */
export const MAX_PART_BYTES = 5 * 1024 ** 3;

/**
 * The size of part `partNumber` (1-based) of an object whose size is not known
 * beforehand (a volume holds a whole file, however large), from `base`:
 * doubling every 1,000 parts. From the default 8 MiB, objects up to about
 * 8 GB keep 8 MiB parts, and 10,000 parts hold 7.8 TiB, more than S3's largest
 * object (5 TiB), with parts of at most 4 GiB.
 */
export function growingPartSize(base: number, partNumber: number): number {
  return Math.min(MAX_PART_BYTES, base * 2 ** Math.floor((partNumber - 1) / 1000));
}

/** The requests a PartWriter makes, each retried by the driver as it sees fit. */
export interface MultipartRequests {
  /** Stores the whole object with one PutObject. */
  putWhole(data: Buffer): Promise<void>;
  /** Starts a multipart upload; its id. */
  create(): Promise<string>;
  /** Uploads one part; its ETag. */
  uploadPart(uploadId: string, partNumber: number, data: Buffer): Promise<string>;
  /** Completes the upload and checks the stored size. */
  complete(uploadId: string, parts: CompletedPart[], size: number): Promise<void>;
  /** Abandons the upload (best effort). */
  abort(uploadId: string): Promise<void>;
  /**
   * Abandons whatever upload of the object a `create` that failed may have started all the same
   * (the server started it, and its answer was lost or the command interrupted before it came),
   * best effort.
   */
  abortUnanswered(): Promise<void>;
}

export interface PartWriterOptions {
  key: string;
  /** Size of part `n` (1-based). */
  partSize: (partNumber: number) => number;
  /** Parts on the wire at once. */
  concurrency: number;
  /** Called once, when the writer ends or is aborted. */
  release: () => void;
  /** The error the caller sees for a failure of this object. */
  failure: (err: unknown) => Error;
  signal?: AbortSignal;
}

/**
 * Writes an object to S3 from the caller's chunks. They are copied into part
 * buffers, and a buffer is filled again once its part is uploaded, so a long
 * object allocates a few parts, not a buffer per part and per chunk (whose
 * garbage kept V8's collector busy for seconds per GB). An object that fits
 * in one part goes out as one PutObject; a larger one as a multipart upload
 * with at most `concurrency` parts on the wire.
 */
export class PartWriter implements ObjectWriter {
  private buffer: Buffer;
  private fill = 0;
  /** Bytes in the parts handed over so far. */
  private sent = 0;
  private uploadId?: string;
  /** A `create` failed: the server may have started an upload whose id never came back. */
  private createUnanswered = false;
  private partNumber = 0;
  private readonly parts: CompletedPart[] = [];
  private readonly inFlight = new Set<Promise<void>>();
  private readonly spare: Buffer[] = [];
  private failed?: { error: unknown };
  private released = false;

  constructor(
    private readonly requests: MultipartRequests,
    private readonly options: PartWriterOptions,
  ) {
    this.buffer = Buffer.allocUnsafe(options.partSize(1));
  }

  async write(chunk: Uint8Array): Promise<void> {
    try {
      for (let at = 0; at < chunk.length; ) {
        // A full part goes out only once more bytes follow, so an object of exactly one part is one PutObject.
        if (this.fill === this.buffer.length) await this.sendPart();
        const n = Math.min(this.buffer.length - this.fill, chunk.length - at);
        this.buffer.set(chunk.subarray(at, at + n), this.fill);
        this.fill += n;
        at += n;
      }
    } catch (err) {
      throw this.options.failure(err);
    }
  }

  private async sendPart(): Promise<void> {
    this.throwIfFailed();
    const partNumber = ++this.partNumber;
    if (partNumber > MAX_PARTS) throw new Error(`the object is larger than S3's ${MAX_PARTS} parts allow`);
    if (this.uploadId === undefined) {
      try {
        this.uploadId = await this.requests.create();
      } catch (err) {
        this.createUnanswered = true;
        throw err;
      }
    }
    const buffer = this.buffer;
    const data = buffer.subarray(0, this.fill);
    this.sent += data.length;
    const upload: Promise<void> = this.requests.uploadPart(this.uploadId, partNumber, data).then(
      (etag) => {
        this.parts.push({ PartNumber: partNumber, ETag: etag });
        this.spare.push(buffer);
        this.inFlight.delete(upload);
      },
      (error: unknown) => {
        this.failed ??= { error };
        this.inFlight.delete(upload);
      },
    );
    this.inFlight.add(upload);
    while (this.inFlight.size >= this.options.concurrency && !this.failed) await Promise.race(this.inFlight);
    this.throwIfFailed();
    const size = this.options.partSize(partNumber + 1);
    // Once parts grow, buffers of the smaller size are never used again: kept, they would add
    // up to several parts of each size passed (gigabytes, for a file of a terabyte).
    if (this.spare.some((b) => b.length !== size)) this.spare.splice(0, this.spare.length, ...this.spare.filter((b) => b.length === size));
    const reused = this.spare.findIndex((b) => b.length === size);
    this.buffer = reused >= 0 ? this.spare.splice(reused, 1)[0]! : Buffer.allocUnsafe(size);
    this.fill = 0;
  }

  async end(): Promise<ObjectInfo> {
    try {
      throwIfAborted(this.options.signal);
      if (this.uploadId === undefined && this.partNumber === 0) {
        await this.requests.putWhole(this.buffer.subarray(0, this.fill));
        return { key: this.options.key, size: this.fill };
      }
      if (this.fill > 0) await this.sendPart();
      await Promise.all(this.inFlight);
      this.throwIfFailed();
      this.parts.sort((a, b) => a.PartNumber! - b.PartNumber!);
      await this.requests.complete(this.uploadId!, this.parts, this.sent);
      return { key: this.options.key, size: this.sent };
    } catch (err) {
      await this.abandon();
      throw this.options.failure(err);
    } finally {
      this.release();
    }
  }

  async abort(): Promise<void> {
    try {
      await this.abandon();
    } finally {
      this.release();
    }
  }

  private throwIfFailed(): void {
    throwIfAborted(this.options.signal);
    if (this.failed) throw this.failed.error;
  }

  private async abandon(): Promise<void> {
    // Parts still on the wire settle first: a part landing after the abort would be kept.
    await Promise.allSettled(this.inFlight);
    if (this.uploadId !== undefined) await this.requests.abort(this.uploadId).catch(() => undefined);
    else if (this.createUnanswered) await this.requests.abortUnanswered().catch(() => undefined);
    this.uploadId = undefined;
    this.createUnanswered = false;
  }

  private release(): void {
    if (this.released) return;
    this.released = true;
    this.options.release();
  }
}
