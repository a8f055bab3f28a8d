import { createHash } from 'node:crypto';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { Readable, addAbortSignal } from 'node:stream';
import { domainToUnicode } from 'node:url';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  type CompletedPart,
  type GetObjectCommandOutput,
  type ListObjectsV2CommandOutput,
  type ServerSideEncryption,
  type StorageClass,
} from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { InterruptedError, RuntimeFailure, UsageError } from '../errors.js';
import { MAX_S3_KEY_BYTES, MAX_S3_PREFIX_BYTES, type S3Settings } from './open.js';
import { DEFAULT_RETRY_POLICY, asFailure, describeError, notSent, stoppedAnswering, noAnswer, noConnection, noTraffic, schemeMismatch, backoffDelay, isRetryable, pauseBeforeRetry, refusedPermission, reportingRetries, retrying, webPageAnswer, withRetry, type EndpointError, type RefusedPermission, type RetryPolicy, type SilentServerError } from './retry.js';
import type { Reporter } from '../core/events.js';
import { parseDuration } from '../config/duration.js';
import { credentialsFailure, nonEmpty, staticCredentials } from './s3-credentials.js';
import { putThroughWriter } from './put-through-writer.js';
import { MAX_PARTS, PartWriter, growingPartSize } from './s3-part-writer.js';
import { readerOverStream } from './reader-over-stream.js';
import {
  ARCHIVE_STORAGE_CLASSES,
  ArchivedObjectError,
  MAX_DOCUMENT_BYTES,
  ObjectNotFoundError,
  documentTooLarge,
  readDocumentBody,
  isAccessDenied,
  isObjectKey,
  removeIncompleteOlderThan,
  type GetDocumentOptions,
  type GetOptions,
  type IncompleteWrite,
  type ObjectInfo,
  type ObjectReader,
  type ObjectWriter,
  type PutDocumentOptions,
  type PutOptions,
  type Storage,
  type StorageCapabilities,
} from './storage.js';
import { quoteName } from '../format/quote.js';

const MiB = 1024 * 1024;
const DELETE_BATCH = 1000;

/** Knobs below the config file's settings; tests shrink them, users never need to. */
export interface S3Tuning {
  /** Size of a multipart part (and the largest object sent in one PutObject). Default 8 MiB. */
  partSize?: number;
  /** Parts of one object in flight at once. Default 4. */
  partConcurrency?: number;
  retry?: RetryPolicy;
  connectionTimeoutMs?: number;
  /** A socket with no traffic for this long is abandoned (and the request retried). Default s3.idleTimeout. */
  socketTimeoutMs?: number;
  /** How long a request without a large body waits for the start of the answer. Default s3.timeout. */
  answerTimeoutMs?: number;
}

/** How long a request waits for the server to begin answering, and a connection with nothing moving on it, unless s3.timeout and s3.idleTimeout say otherwise. */
const DEFAULT_ANSWER_TIMEOUT_MS = 20_000;
const DEFAULT_IDLE_TIMEOUT_MS = 60_000;
/** A request that sends more than this may take its time to send it: only the idle timeout applies to it. */
const SMALL_BODY_BYTES = MiB;

export interface S3CreateOptions {
  bucket: string;
  prefix: string;
  settings: S3Settings;
  env: NodeJS.ProcessEnv;
  tuning?: S3Tuning;
  /** Told of each request that is tried again, as it happens. */
  reporter?: Reporter;
  /** The command's interruption (Ctrl-C, SIGTERM): requests under way stop, and none that fails after it is tried again. */
  interrupt?: AbortSignal;
}

/**
 * A repository in an S3 bucket (AWS, or any S3-compatible server).
 *
 * Retries happen at two levels. The retry wrapper (retry.ts) repeats whole
 * requests that can be repeated: documents, heads, deletes, opening a download.
 * A streaming upload cannot be repeated as a whole, since its body is a one-shot
 * stream, so this driver retries below it, on what it holds in memory: each
 * buffered multipart part, or the buffered body of a small object. A download
 * that breaks mid-body is resumed here with a ranged GET from the first byte
 * not yet delivered, and list pages are retried one by one.
 */
export class S3Storage implements Storage {
  readonly location: string;
  readonly capabilities: StorageCapabilities = { conditionalPut: true, rangedGet: true };
  private readonly root: string;
  private readonly writeParams: { StorageClass?: StorageClass; ServerSideEncryption?: ServerSideEncryption; SSEKMSKeyId?: string };
  private readonly transfers: Semaphore;
  private readonly partSize: number;
  private readonly partConcurrency: number;
  /** Set once the server has refused If-Match on an object that had not changed. */
  private refusesIfMatch = false;

  /** Opens a repository; the result retries transient failures (see withRetry). */
  static async create(options: S3CreateOptions): Promise<Storage> {
    const storage = S3Storage.open(options);
    await storage.checkRegion();
    return withRetry(storage, storage.retry);
  }

  /** A missing region is a configuration mistake: say so before the first request fails obscurely. */
  private async checkRegion(): Promise<void> {
    try {
      const region = await this.client.config.region();
      if (region) return;
    } catch {
      // Falls through to the usage error below.
    }
    throw new UsageError(`no AWS region is set for ${quoteName(this.location)}`, {
      hint: 'set s3.region in lifeboat.yaml, AWS_REGION, or a region in your AWS profile',
    });
  }

  /** The bare driver, without the retry wrapper. */
  static open(options: S3CreateOptions): S3Storage {
    const { settings, env } = options;
    const concurrency = settings.concurrency ?? 4;
    if (!Number.isInteger(concurrency) || concurrency < 1) {
      throw new UsageError(`s3.concurrency must be a whole number of at least 1, not ${String(settings.concurrency)}`);
    }
    const endpoint = settings.endpoint ?? nonEmpty(env.AWS_ENDPOINT_URL_S3) ?? nonEmpty(env.AWS_ENDPOINT_URL);
    if (endpoint !== undefined) checkEndpoint(endpoint, options.bucket, endpointSource(settings, env));
    // S3-compatible servers rarely have a region of their own; AWS's default is their convention.
    const region =
      settings.region ?? nonEmpty(env.AWS_REGION) ?? nonEmpty(env.AWS_DEFAULT_REGION) ?? (endpoint ? 'us-east-1' : undefined);
    const tuning = options.tuning ?? {};
    const policy = tuning.retry ?? DEFAULT_RETRY_POLICY;
    const partConcurrency = tuning.partConcurrency ?? 4;
    // Sockets for every part of every transfer, plus downloads a caller holds open.
    const agentOptions = { keepAlive: true, maxSockets: Math.max(50, concurrency * partConcurrency * 2) };
    // The SDK warns on every run under Node < 22 about its future releases; this
    // project pins its SDK version, and the warning would be noise in every cron log.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    // A custom endpoint (MinIO, Ceph, R2, ...) is addressed by path unless told otherwise.
    const forcePathStyle = settings.forcePathStyle ?? endpoint !== undefined;
    if (!forcePathStyle) checkHostableBucket(options.bucket, endpoint);
    const client = new S3Client({
      region,
      endpoint,
      forcePathStyle,
      credentials: staticCredentials(env),
      // Servers other than AWS reject or mangle the aws-chunked CRC framing newer SDKs
      // send by default; we send Content-MD5 ourselves instead.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      // Our retries (with backoff and resumable pieces) are the ones that count.
      maxAttempts: 1,
      requestHandler: new AnswerTimedHandler(
        {
          connectionTimeout: tuning.connectionTimeoutMs ?? 10_000,
          socketTimeout: tuning.socketTimeoutMs ?? timeoutSetting(settings, 'idleTimeout') ?? DEFAULT_IDLE_TIMEOUT_MS,
          httpAgent: new HttpAgent(agentOptions),
          httpsAgent: new HttpsAgent(agentOptions),
        },
        tuning.answerTimeoutMs ?? timeoutSetting(settings, 'timeout') ?? DEFAULT_ANSWER_TIMEOUT_MS,
        policy.maxAttempts,
        options.interrupt,
        options.reporter,
      ),
    });
    signUploadsWithoutPayloadHash(client);
    explainMissingCredentials(client, env);
    const retry = { ...policy, interrupt: options.interrupt };
    return new S3Storage(client, options.bucket, options.prefix, settings, concurrency, tuning, options.reporter ? reportingRetries(retry, options.reporter) : retry);
  }

  private constructor(
    private readonly client: S3Client,
    private readonly bucket: string,
    prefix: string,
    settings: S3Settings,
    concurrency: number,
    tuning: S3Tuning,
    /** The retries of the driver and of its wrapper, with their reports. */
    private readonly retry: RetryPolicy,
  ) {
    const trimmed = prefix.replace(/^\/+|\/+$/g, '');
    this.root = trimmed === '' ? '' : `${trimmed}/`;
    this.location = `s3://${bucket}${trimmed === '' ? '' : `/${trimmed}`}`;
    markRefusals(client, bucket, this.root);
    this.writeParams = {
      ...(settings.storageClass ? { StorageClass: settings.storageClass as StorageClass } : {}),
      // A KMS key implies KMS encryption; S3 refuses the key id without it.
      ...(settings.sse || settings.kmsKeyId
        ? { ServerSideEncryption: (settings.sse ?? 'aws:kms') as ServerSideEncryption }
        : {}),
      ...(settings.kmsKeyId ? { SSEKMSKeyId: settings.kmsKeyId } : {}),
    };
    this.transfers = new Semaphore(concurrency);
    this.partSize = Math.max(1, tuning.partSize ?? 8 * MiB);
    this.partConcurrency = Math.max(1, tuning.partConcurrency ?? 4);
  }

  private objectKey(key: string): string {
    if (!isObjectKey(key)) {
      throw new RuntimeFailure(`invalid object key ${JSON.stringify(key)}`);
    }
    const objectKey = this.root + key;
    // The server's answer to a longer key is a bare 400, and only once the key is needed: a repository made before init refused such prefixes.
    const bytes = Buffer.byteLength(objectKey);
    if (bytes > MAX_S3_KEY_BYTES) {
      throw new UsageError(`${key} in ${quoteName(this.location)} would be an S3 key of ${bytes} bytes, longer than the ${MAX_S3_KEY_BYTES} S3 allows: the repository's prefix is too long`, {
        hint: `a repository's prefix may have at most ${MAX_S3_PREFIX_BYTES} bytes: make a new repository under a shorter one`,
      });
    }
    return objectKey;
  }

  async openWriter(key: string, options?: PutOptions): Promise<ObjectWriter> {
    const objectKey = this.objectKey(key);
    const signal = options?.signal;
    const first = this.partSizeFor(options?.size);
    const release = await this.transfers.acquire();
    return new PartWriter(
      {
        putWhole: (data) => this.putBuffered(key, objectKey, data, signal),
        create: () => this.createMultipart(key, objectKey, signal),
        uploadPart: (uploadId, partNumber, data) => this.uploadPart(key, objectKey, uploadId, partNumber, data, signal),
        complete: (uploadId, parts, size) => this.completeMultipart(key, objectKey, uploadId, parts, size, signal),
        abort: (uploadId) => this.abortUpload(objectKey, uploadId),
        abortUnanswered: () => this.abortUploadsOf(objectKey),
      },
      {
        key,
        // Of unknown size (or small), parts grow as the object does; of a known large size, they are fixed.
        partSize: (n) => (first === this.partSize ? growingPartSize(this.partSize, n) : first),
        concurrency: this.partConcurrency,
        release,
        failure: (err) => asFailure('put', key, err),
        signal,
      },
    );
  }

  async put(key: string, body: Readable, options?: PutOptions): Promise<ObjectInfo> {
    if (options?.signal) addAbortSignal(options.signal, body);
    return putThroughWriter(await this.openWriter(key, options), body);
  }

  /**
   * Parts are at least S3's minimum, and large enough that an object of the
   * announced size fits in S3's 10,000 parts. Of unknown size, the part size
   * doubles every 1,000 parts (see growingPartSize), so memory stays small for
   * ordinary objects and objects up to S3's 5 TiB still fit.
   */
  private partSizeFor(size: number | undefined): number {
    const base = this.partSize;
    if (size === undefined) return base;
    return Math.max(base, Math.ceil(size / MAX_PARTS / MiB) * MiB);
  }

  private async putBuffered(key: string, objectKey: string, data: Buffer, signal?: AbortSignal): Promise<void> {
    const contentMd5 = md5Base64(data);
    await retrying(
      this.retry,
      'put',
      key,
      () =>
        this.client.send(
          new PutObjectCommand({
            Bucket: this.bucket,
            Key: objectKey,
            Body: data,
            ContentLength: data.length,
            ContentMD5: contentMd5,
            ...this.writeParams,
          }),
          { abortSignal: signal },
        ),
      signal,
    ).catch((err: unknown) => {
      throw this.settingsRefused(key, err) ?? err;
    });
  }

  /**
   * A write the server refused as a bad request while it carried the storage class or encryption
   * the config asks for (many S3-compatible servers support neither, or need them set up): a
   * set-up error naming those settings, rather than a storage failure.
   */
  private settingsRefused(key: string, err: unknown): UsageError | undefined {
    const asked = [
      this.writeParams.StorageClass && `s3.storageClass: ${this.writeParams.StorageClass}`,
      this.writeParams.ServerSideEncryption && `s3.sse: ${this.writeParams.ServerSideEncryption}`,
      this.writeParams.SSEKMSKeyId && `s3.kmsKeyId: ${this.writeParams.SSEKMSKeyId}`,
    ].filter(Boolean);
    const cause = err instanceof RuntimeFailure && err.cause !== undefined ? err.cause : err;
    const status = httpStatus(cause);
    if (asked.length === 0 || (status !== 400 && status !== 501)) return undefined;
    const name = errorName(cause) ?? '';
    if (!/^(InvalidStorageClass|InvalidArgument|InvalidRequest|InvalidEncryptionAlgorithmError|NotImplemented|KMS\.)/.test(name)) return undefined;
    return new UsageError(`the S3 server refused to store ${key} with ${asked.join(', ')} (${describeError(cause)})`, {
      cause,
      hint: 'many S3-compatible servers (Ceph, MinIO) offer other storage classes and server-side encryption only when set up for them: change or remove those settings in the config',
    });
  }

  /** One request, not retried: a clean-up after a failure or an interruption, which the next backup finishes if need be. */
  private async abortUpload(objectKey: string, uploadId: string): Promise<void> {
    await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: objectKey, UploadId: uploadId }));
  }

  /**
   * Aborts every upload of exactly `objectKey`: what a CreateMultipartUpload whose answer never came
   * (interrupted, or lost on the way) may have started. Only a volume is written through uploads, and a
   * volume's key is its own backup's, so no other writer's upload is of that key.
   */
  private async abortUploadsOf(objectKey: string): Promise<void> {
    const page = await this.client.send(new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: objectKey }));
    for (const upload of page.Uploads ?? []) {
      if (upload.Key === objectKey && upload.UploadId) await this.abortUpload(objectKey, upload.UploadId);
    }
  }

  private async createMultipart(key: string, objectKey: string, signal?: AbortSignal): Promise<string> {
    const created = await retrying(
      this.retry,
      'put',
      key,
      () => this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: objectKey, ...this.writeParams }), { abortSignal: signal }),
      signal,
    ).catch((err: unknown) => {
      throw this.settingsRefused(key, err) ?? err;
    });
    if (!created.UploadId) throw new RuntimeFailure(`put ${key} failed: the server returned no multipart upload id`);
    return created.UploadId;
  }

  private async uploadPart(
    key: string,
    objectKey: string,
    uploadId: string,
    partNumber: number,
    data: Buffer,
    signal?: AbortSignal,
  ): Promise<string> {
    const contentMd5 = md5Base64(data);
    const result = await retrying(
      this.retry,
      'put',
      `${key} (part ${partNumber})`,
      () =>
        this.client.send(
          new UploadPartCommand({
            Bucket: this.bucket,
            Key: objectKey,
            UploadId: uploadId,
            PartNumber: partNumber,
            Body: data,
            ContentLength: data.length,
            ContentMD5: contentMd5,
          }),
          { abortSignal: signal },
        ),
      signal,
    );
    if (!result.ETag) throw new RuntimeFailure(`put ${key} failed: the server returned no ETag for part ${partNumber}`);
    return result.ETag;
  }

  private async completeMultipart(
    key: string,
    objectKey: string,
    uploadId: string,
    parts: CompletedPart[],
    size: number,
    signal?: AbortSignal,
  ): Promise<void> {
    await retrying(
      this.retry,
      'put',
      key,
      async (attempt) => {
        try {
          await this.client.send(
            new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key: objectKey, UploadId: uploadId, MultipartUpload: { Parts: parts } }),
            { abortSignal: signal },
          );
        } catch (err) {
          // A repeated completion whose first attempt succeeded but lost its answer
          // finds the upload gone; the object is then there with our size.
          if (attempt > 1 && errorName(err) === 'NoSuchUpload') return;
          throw err;
        }
      },
      signal,
    );
    // The completion's own answer is not trusted for the result (some servers send
    // an empty ETag there); the object as the server now shows it is.
    const stored = await retrying(this.retry, 'head', key, () => this.headObject(objectKey));
    if (stored?.size !== size) {
      throw new RuntimeFailure(`put ${key} failed: stored ${stored?.size ?? 'no'} bytes where ${size} were sent`);
    }
  }

  /**
   * One PutObject: with `ifAbsent`, after a HEAD that finds nothing, with
   * If-None-Match: *; with `ifMatch`, the object is read first and replaced
   * with If-Match on the ETag it had, so a write by anyone in between makes
   * the server refuse it (412). On a server that ignores those headers the
   * conditions are only as good as the read before the write.
   */
  async putDocument(key: string, data: Uint8Array, options: PutDocumentOptions = {}): Promise<boolean> {
    const objectKey = this.objectKey(key);
    const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const release = await this.transfers.acquire();
    try {
      if (!options.ifMatch) {
        // Some servers ignore If-None-Match (Ceph 16 in a versioned bucket, which would let a backup
        // overwrite a live lock): an object that is already there is looked for first, so that only a
        // writer starting at the same instant could get past the condition there.
        if (options.ifAbsent && (await this.headObject(objectKey)) !== undefined) return false;
        await options.beforeVisible?.();
        return await this.putObjectIf(objectKey, body, options.ifAbsent ? { IfNoneMatch: '*' } : {});
      }
      const held = await this.holding(objectKey, options.ifMatch);
      if (!held) return false;
      await options.beforeVisible?.();
      if (held.etag === undefined || this.refusesIfMatch) return await this.putObjectIf(objectKey, body, {});
      if (await this.putObjectIf(objectKey, body, { IfMatch: held.etag })) return true;
      // Refused: the object changed since it was read, or the server refuses the condition although
      // nothing changed. Ceph (16) compares If-Match with the ETag unquoted, so the quoted one fails.
      const unchanged = async () => {
        const again = await this.holding(objectKey, options.ifMatch!);
        return again !== false && again.etag === held.etag;
      };
      if (!(await unchanged())) return false;
      const bare = held.etag.replace(/^"(.*)"$/, '$1');
      if (bare !== held.etag) {
        if (await this.putObjectIf(objectKey, body, { IfMatch: bare })) return true;
        if (!(await unchanged())) return false;
      }
      // In a versioned bucket Ceph (16) refuses If-Match whatever the ETag (and ignores If-None-Match):
      // the documents are replaced after a read that finds them unchanged, as on servers that ignore
      // the header.
      this.refusesIfMatch = true;
      return await this.putObjectIf(objectKey, body, {});
    } finally {
      release();
    }
  }

  /** A PutObject of a small body; false when a condition it carries was not met (412, or If-Match on an object that is gone). */
  private async putObjectIf(objectKey: string, body: Buffer, condition: { IfNoneMatch?: string; IfMatch?: string }): Promise<boolean> {
    try {
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: objectKey,
          Body: body,
          ContentLength: body.length,
          ContentMD5: md5Base64(body),
          ...condition,
          ...this.writeParams,
        }),
      );
      return true;
    } catch (err) {
      const conditional = condition.IfNoneMatch !== undefined || condition.IfMatch !== undefined;
      if (conditional && (httpStatus(err) === 412 || errorName(err) === 'PreconditionFailed')) return false;
      if (condition.IfMatch !== undefined && isMissing(err)) return false;
      throw this.settingsRefused(objectKey.slice(this.root.length), err) ?? err;
    }
  }

  /** Whether the object holds exactly `expected`, with its ETag (which a server may leave out); false when it holds anything else or is not there. */
  private async holding(objectKey: string, expected: Uint8Array): Promise<false | { etag?: string }> {
    let response: GetObjectCommandOutput;
    try {
      response = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: objectKey }));
    } catch (err) {
      if (isMissing(err)) return false;
      throw err;
    }
    if (response.ContentLength !== undefined && response.ContentLength !== expected.length) {
      (response.Body as Readable | undefined)?.destroy();
      return false;
    }
    const held = await response.Body!.transformToByteArray();
    return Buffer.from(expected).equals(held) ? { etag: response.ETag } : false;
  }

  async getDocument(key: string, options?: GetDocumentOptions): Promise<Buffer> {
    const objectKey = this.objectKey(key);
    const limit = options?.maxBytes ?? MAX_DOCUMENT_BYTES;
    const release = await this.transfers.acquire();
    try {
      const response = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: objectKey }));
      const body = response.Body as Readable;
      if ((response.ContentLength ?? 0) > limit) {
        body.destroy();
        throw documentTooLarge(key, limit);
      }
      // Counted as it comes: a body sent without a length (chunked) was read for as long as it lasted.
      const bytes = await readDocumentBody(body, limit, () => documentTooLarge(key, limit));
      if (response.ContentLength !== undefined && bytes.length !== response.ContentLength) {
        throw Object.assign(new Error('response body ended early'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
      }
      return bytes;
    } catch (err) {
      if (isMissing(err)) throw new ObjectNotFoundError(key, this.location);
      throw err;
    } finally {
      release();
    }
  }

  async openReader(key: string, options?: GetOptions): Promise<ObjectReader> {
    return readerOverStream(await this.get(key, options));
  }

  /**
   * The concurrency limit covers opening the download, not reading it: a permit
   * held until the caller finishes reading would deadlock a caller that opens
   * several streams before it drains them.
   */
  async get(key: string, options?: GetOptions): Promise<Readable> {
    const objectKey = this.objectKey(key);
    const start = options?.offset ?? 0;
    const length = options?.length;
    const signal = options?.signal;
    if (length === 0) {
      if ((await this.headObject(objectKey)) === undefined) throw new ObjectNotFoundError(key, this.location);
      return Readable.from([]);
    }
    const end = length === undefined ? undefined : start + length - 1;
    let first: GetObjectCommandOutput;
    const release = await this.transfers.acquire();
    try {
      first = await this.openRange(objectKey, start, end, undefined, signal);
    } catch (err) {
      if (isMissing(err)) throw new ObjectNotFoundError(key, this.location);
      if (errorName(err) === 'InvalidObjectState') throw new ArchivedObjectError(key, archiveTierOf(err));
      // Reading from at or past the end: nothing to read, as with a file.
      if (httpStatus(err) === 416 || errorName(err) === 'InvalidRange') {
        if ((await this.headObject(objectKey)) === undefined) throw new ObjectNotFoundError(key, this.location);
        return Readable.from([]);
      }
      throw err;
    } finally {
      release();
    }
    const stream = Readable.from(this.resumingBody(key, objectKey, first, start, end, signal), { objectMode: false });
    if (signal) this.endOnAbort(stream, signal);
    return stream;
  }

  /**
   * Ends a download when `signal` aborts: an interruption (Ctrl-C, SIGTERM) with the InterruptedError the
   * request handler and `retrying` use, so that the command says "interrupted" (exit 130), not the stream's
   * "The operation was aborted" as an unexpected error; any other abort with that AbortError.
   */
  private endOnAbort(stream: Readable, signal: AbortSignal): void {
    const stop = () =>
      stream.destroy(this.retry.interrupt?.aborted ? new InterruptedError() : Object.assign(new Error('The operation was aborted', { cause: signal.reason }), { name: 'AbortError', code: 'ABORT_ERR' }));
    if (signal.aborted) {
      stop();
      return;
    }
    signal.addEventListener('abort', stop, { once: true });
    stream.once('close', () => signal.removeEventListener('abort', stop));
  }

  private openRange(objectKey: string, start: number, end: number | undefined, etag: string | undefined, signal?: AbortSignal) {
    const range = start === 0 && end === undefined ? undefined : `bytes=${start}-${end ?? ''}`;
    return this.client.send(
      new GetObjectCommand({ Bucket: this.bucket, Key: objectKey, Range: range, ...(etag ? { IfMatch: etag } : {}) }),
      { abortSignal: signal },
    );
  }

  /**
   * The bytes of a download; when the connection breaks mid-body, continues with
   * a ranged GET from the first byte not yet delivered, pinned to the same
   * object version by its ETag. The retry budget is renewed after each MiB of
   * progress, so a long download survives many spread-out faults but a stuck
   * one gives up.
   */
  private async *resumingBody(
    key: string,
    objectKey: string,
    first: GetObjectCommandOutput,
    start: number,
    end: number | undefined,
    signal?: AbortSignal,
  ): AsyncGenerator<Buffer> {
    let response = first;
    const etag = first.ETag;
    const expected = first.ContentLength;
    let delivered = 0;
    let failures = 0;
    let deliveredAtLastFailure = 0;
    for (;;) {
      const body = response.Body as Readable | undefined;
      try {
        if (body) {
          for await (const chunk of body) {
            delivered += (chunk as Buffer).length;
            yield chunk as Buffer;
          }
        }
        if (expected !== undefined && delivered < expected) {
          throw Object.assign(new Error('response body ended early'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
        }
        return;
      } catch (caught) {
        body?.destroy();
        // Interrupted: said as the request handler and `retrying` say it, not in the words of the body it broke.
        if (this.retry.interrupt?.aborted) throw new InterruptedError();
        const err = noTraffic(undefined, caught) ?? caught;
        if (delivered - deliveredAtLastFailure >= MiB) failures = 0;
        deliveredAtLastFailure = delivered;
        failures++;
        if (!isRetryable(err) || signal?.aborted || failures >= this.retry.maxAttempts) {
          throw asFailure('get', key, err, failures);
        }
        const delayMs = backoffDelay(this.retry, failures);
        this.retry.onRetry?.({ operation: 'get', key, attempt: failures, delayMs, error: err });
        await pauseBeforeRetry(this.retry, delayMs, signal);
        response = await retrying(this.retry, 'get', key, () => this.openRange(objectKey, start + delivered, end, etag, signal), signal).catch(
          (reopenError: unknown) => {
            const cause = (reopenError as { cause?: unknown }).cause ?? reopenError;
            if (httpStatus(cause) === 412) {
              throw new RuntimeFailure(`get ${key} failed: the object changed while it was read`, { cause });
            }
            throw reopenError;
          },
        );
      }
    }
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    const info = await this.headObject(this.objectKey(key));
    return info === undefined ? undefined : { key, size: info.size };
  }

  private async headObject(objectKey: string): Promise<{ size: number } | undefined> {
    try {
      const response = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: objectKey }));
      return { size: response.ContentLength ?? 0 };
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw err;
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    for await (const page of this.listingPages(prefix, `list ${prefix === '' ? '/' : prefix}`)) {
      for (const object of page.Contents ?? []) {
        if (object.Key === undefined || !object.Key.startsWith(this.root)) continue;
        const archived = object.StorageClass !== undefined && ARCHIVE_STORAGE_CLASSES.has(object.StorageClass) ? { archived: object.StorageClass } : {};
        yield { key: object.Key.slice(this.root.length), size: object.Size ?? 0, ...archived };
      }
    }
  }

  async *listPrefixes(prefix: string): AsyncIterable<string> {
    for await (const page of this.listingPages(prefix, `list folders of ${prefix === '' ? '/' : prefix}`, '/')) {
      for (const common of page.CommonPrefixes ?? []) {
        if (common.Prefix === undefined || !common.Prefix.startsWith(this.root)) continue;
        yield common.Prefix.slice(this.root.length);
      }
    }
  }

  /** The pages of one ListObjectsV2 listing under `prefix`, each retried, until the server says it is done. */
  private async *listingPages(prefix: string, what: string, delimiter?: string): AsyncIterable<ListObjectsV2CommandOutput> {
    const markers = new ListingMarkers(what);
    let continuationToken: string | undefined;
    do {
      const token = continuationToken;
      const page = await retrying(this.retry, 'list', prefix === '' ? '/' : prefix, () =>
        this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.root + prefix, Delimiter: delimiter, ContinuationToken: token })),
      );
      yield page;
      continuationToken = page.IsTruncated ? markers.next(page.NextContinuationToken) : undefined;
    } while (continuationToken);
  }

  async delete(keys: readonly string[]): Promise<void> {
    for (let i = 0; i < keys.length; i += DELETE_BATCH) {
      const batch = keys.slice(i, i + DELETE_BATCH).map((key) => ({ Key: this.objectKey(key) }));
      const response = await this.client.send(
        new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: batch, Quiet: true } }),
      );
      const errors = (response.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
      if (errors.length > 0) {
        const firstError = errors[0]!;
        const key = firstError.Key?.slice(this.root.length) ?? '?';
        // Named after the server's code, so the retry wrapper can judge it like any error.
        const failed = Object.assign(new Error(`${errors.length} of ${batch.length} deletes failed, first ${key}: ${firstError.Code ?? 'unknown'}`), {
          name: firstError.Code ?? 'DeleteFailed',
        });
        if (failed.name === 'AccessDenied') refusedPermission(failed, { action: 's3:DeleteObject', on: repositoryObjectsArn(this.bucket, this.root) });
        throw failed;
      }
    }
  }

  async *incompleteWrites(prefix = ''): AsyncIterable<IncompleteWrite> {
    const where = `incomplete uploads under ${prefix === '' ? '/' : prefix}`;
    const markers = new ListingMarkers(`list ${where}`);
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    for (;;) {
      const [key, uploadId] = [keyMarker, uploadIdMarker];
      const page = await retrying(this.retry, 'list', where, async () => {
        try {
          return await this.client.send(new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: `${this.root}${prefix}`, KeyMarker: key, UploadIdMarker: uploadId }));
        } catch (err) {
          // A server without multipart listing (some test stand-ins) has nothing we can find.
          if (httpStatus(err) === 501 || httpStatus(err) === 405 || errorName(err) === 'NotImplemented') return undefined;
          throw err;
        }
      });
      if (!page) return;
      for (const upload of page.Uploads ?? []) {
        if (!upload.Key || !upload.UploadId || !upload.Key.startsWith(this.root)) continue;
        yield { key: upload.Key.slice(this.root.length), what: 'an incomplete multipart upload', uploadId: upload.UploadId, ...(upload.Initiated ? { since: upload.Initiated } : {}) };
      }
      if (!page.IsTruncated) return;
      markers.next(page.NextKeyMarker === undefined && page.NextUploadIdMarker === undefined ? undefined : `${page.NextKeyMarker ?? ''}\0${page.NextUploadIdMarker ?? ''}`);
      keyMarker = page.NextKeyMarker;
      uploadIdMarker = page.NextUploadIdMarker;
    }
  }

  async removeIncomplete(writes: readonly IncompleteWrite[]): Promise<void> {
    for (const { key, uploadId } of writes) {
      if (uploadId === undefined) throw new RuntimeFailure(`${key} is not an upload of ${this.location}`);
      try {
        await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: this.objectKey(key), UploadId: uploadId }));
      } catch (err) {
        if (errorName(err) !== 'NoSuchUpload') throw err;
      }
    }
  }

  cleanupIncomplete(olderThanMs: number, prefix = ''): Promise<number> {
    return removeIncompleteOlderThan(this, olderThanMs, prefix);
  }

  /** A bucket does not fill up: nothing is kept aside. */
  async keepReserve(): Promise<void> {}

  async close(): Promise<void> {
    this.client.destroy();
  }
}

/**
 * The continuation markers of one paged listing. A server that says a listing
 * goes on without saying where, or hands out a marker it gave before, would
 * otherwise keep the listing going forever (or end it early without a word).
 */
class ListingMarkers {
  private readonly seen = new Set<string>();

  constructor(private readonly what: string) {}

  next(marker: string | undefined): string {
    if (marker === undefined || marker === '') throw new RuntimeFailure(`${this.what} failed: the server said the listing goes on but gave no marker to continue from`);
    if (this.seen.has(marker)) throw new RuntimeFailure(`${this.what} failed: the server handed out the same continuation marker twice, so its listing would never end`);
    this.seen.add(marker);
    return marker;
  }
}

/**
 * An endpoint is a server's URL: http:// or https:// in any case, as URLs allow. One whose path is
 * the bucket's name (copied from a console or a browser) would put every key under a second copy
 * of the bucket's name, where no repository is found and `init` would make a new one.
 */
function checkEndpoint(endpoint: string, bucket: string, from: string): void {
  const notAUrl = () => new UsageError(`${from} must be an http:// or https:// URL, not ${endpoint}`);
  if (!/^https?:\/\/[^/]/i.test(endpoint)) throw notAUrl();
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw notAUrl();
  }
  if (url.pathname.replace(/^\/+|\/+$/g, '') === bucket) {
    throw new UsageError(`${from} ${endpoint} names the bucket ${bucket} in its path, so every request would look under ${bucket}/${bucket}/`, {
      hint: `give the server alone as the endpoint (${url.origin}); the bucket comes from the repository URL`,
    });
  }
}

/** Where the endpoint in use was given, as a message names it: the flag or the config's key, else the environment variable. */
function endpointSource(settings: S3Settings, env: NodeJS.ProcessEnv): string {
  if (settings.endpoint !== undefined) return settings.endpointFrom ?? 's3.endpoint';
  return nonEmpty(env.AWS_ENDPOINT_URL_S3) !== undefined ? 'AWS_ENDPOINT_URL_S3' : 'AWS_ENDPOINT_URL';
}

/**
 * Addressed virtual-hosted style, the bucket is part of the server's host name. A name no host
 * may have (`xn--abc`, which is not valid punycode, or one with a space) would make the SDK print
 * a stack trace of its own and fail every request: said at once, as the set-up error it is.
 */
function checkHostableBucket(bucket: string, endpoint: string | undefined): void {
  if (punycodeDecodes(bucket)) {
    try {
      new URL(`https://${bucket}.s3.amazonaws.com`);
      return;
    } catch {
      // Said below.
    }
  }
  throw new UsageError(`the bucket name ${JSON.stringify(bucket)} cannot be part of a host name, as ${endpoint === undefined ? 'AWS S3 addresses buckets' : 's3.forcePathStyle: false asks'} (virtual-hosted addressing)`, {
    hint: `check the bucket name in the repository URL (S3 bucket names are lowercase letters, digits, hyphens and dots, and do not start with xn--); for a server that has such a bucket, use --s3-path-style`,
  });
}

/**
 * Whether every label of `host` that is punycode (`xn--…`) stands for a name that is not plain
 * ASCII, as punycode must. Node 24's URL parser takes any such label as it is, where Node 20 and
 * 22 refuse one that does not decode; this refuses it on all three.
 */
function punycodeDecodes(host: string): boolean {
  return host.split('.').every((label) => !/^xn--/i.test(label) || /[^\x00-\x7f]/.test(domainToUnicode(label)));
}

/** s3.timeout or s3.idleTimeout in milliseconds, when set. */
function timeoutSetting(settings: S3Settings, name: 'timeout' | 'idleTimeout'): number | undefined {
  const text = settings[name];
  if (text === undefined) return undefined;
  const ms = parseDuration(text);
  if (ms === undefined || ms === 0) throw new UsageError(`s3.${name} must be a duration longer than 0 such as 20s or 2m, not ${text}`);
  return ms;
}

type HandlerArguments = Parameters<NodeHttpHandler['handle']>;

/**
 * The SDK's handler, with a limit on how long a request waits for the server to
 * begin its answer: a server that takes the connection and then says nothing
 * (hung, overloaded, or not an S3 server at all) is given up on after
 * s3.timeout, not after the minute the idle timeout allows, which a large
 * transfer needs. Requests that send a large body, complete a multipart upload
 * (the server assembles the object before it answers) or delete a batch of
 * objects are left to the idle timeout alone.
 */
class AnswerTimedHandler extends NodeHttpHandler {
  /** Requests under way, each stopped if the command is interrupted or the server is taken for silent. */
  private readonly underway = new Set<AbortController>();
  /** Bodies of answers not yet read to their end, each stopped if the command is interrupted or the server is taken for silent. */
  private readonly arriving = new Set<Readable>();
  /** Requests in a row that got no answer at all (no status, not a byte), since the server last answered one. */
  private unanswered = 0;
  /** Why the server is taken for silent, once it is: from then on no request is sent to it. */
  private silence: { why: string; error?: SilentServerError } | undefined;

  constructor(
    options: ConstructorParameters<typeof NodeHttpHandler>[0],
    private readonly answerTimeoutMs: number,
    /** Requests in a row without an answer after which the server is taken for silent: a request's attempts. */
    private readonly silentAfter: number,
    private readonly interrupt?: AbortSignal,
    /** Told when the clean-up after Ctrl-C is cut short. */
    private readonly reporter?: Reporter,
  ) {
    super(options);
    interrupt?.addEventListener(
      'abort',
      () => {
        this.underway.forEach((request) => request.abort());
        this.arriving.forEach((body) => body.destroy(new InterruptedError()));
      },
      { once: true },
    );
  }

  override async handle(request: HandlerArguments[0], options: HandlerArguments[1] = {}): ReturnType<NodeHttpHandler['handle']> {
    // Ctrl-C stops what is under way at once; a request made after it (a clean-up) is left to run, for as long as
    // s3.timeout allows whatever it asks (a batch delete too): after a first one that got no answer, the server is
    // taken for gone, and the rest of the clean-up is left to the next run rather than waited out request by request.
    // Without Ctrl-C, the server is taken for gone once as many requests in a row as a request may make attempts got
    // no answer at all: what is under way stops, and no request is sent to it any more (a clean-up's neither).
    const cleanUp = this.interrupt?.aborted === true;
    if (this.silence) throw notSent(serverOf(request), this.silence.why);
    const outer = options.abortSignal as AbortSignal | undefined;
    const controller = new AbortController();
    const passOn = () => controller.abort(outer?.reason);
    if (outer?.aborted) passOn();
    outer?.addEventListener('abort', passOn, { once: true });
    if (!cleanUp) this.underway.add(controller);
    let timedOut = false;
    const timer = answersAtOnce(request, cleanUp)
      ? setTimeout(() => {
          timedOut = true;
          controller.abort();
        }, this.answerTimeoutMs)
      : undefined;
    let answer: Awaited<ReturnType<NodeHttpHandler['handle']>>;
    try {
      answer = await super.handle(request, { ...options, abortSignal: controller.signal });
    } catch (err) {
      if (controller.signal.reason === SILENCED) throw this.silentError(request);
      if (timedOut) throw this.noAnswerTo(request, noAnswer(serverOf(request), this.answerTimeoutMs, err), cleanUp);
      if (controller.signal.aborted && this.interrupt?.aborted) throw new InterruptedError();
      const mismatch = schemeMismatch(serverOf(request), err);
      if (mismatch) throw mismatch;
      const unaccepted = noConnection(serverOf(request), err);
      if (unaccepted) throw this.noAnswerTo(request, unaccepted, cleanUp, true);
      const stalled = noTraffic(serverOf(request), err);
      throw stalled ? this.noAnswerTo(request, stalled, cleanUp) : err;
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener('abort', passOn);
      this.underway.delete(controller);
    }
    this.unanswered = 0;
    const { statusCode, headers, body } = answer.response;
    const contentType = Object.entries(headers).find(([name]) => name.toLowerCase() === 'content-type')?.[1];
    const notS3 = webPageAnswer(serverOf(request), statusCode, contentType);
    if (notS3) {
      (body as { destroy?: () => void } | undefined)?.destroy?.();
      throw notS3;
    }
    if (!cleanUp && body instanceof Readable && !body.destroyed) {
      // An answer still arriving (a manifest, a volume) stops at Ctrl-C too, whoever reads it.
      this.arriving.add(body);
      body.once('close', () => this.arriving.delete(body));
    }
    return answer;
  }

  /** The error of a request sent before the server was taken for silent, which got no answer either. */
  private silentError(request: HandlerArguments[0]): Error {
    return this.silence?.error ?? notSent(serverOf(request), this.silence?.why ?? 'stopped answering');
  }

  /**
   * Counts a request that got no answer at all (`err` says how long it waited for one). After Ctrl-C the
   * first such clean-up request is enough, else as many in a row as a request makes attempts: the server is
   * then taken for silent. The clean-up request keeps its own error, and the next ones are not sent; without
   * Ctrl-C, what is under way stops too, and the request that showed it fails with the error that says so,
   * unless `ownError`: a connection not accepted says so itself, with what to check (the host, the port, a firewall).
   */
  private noAnswerTo(request: HandlerArguments[0], err: EndpointError, cleanUp: boolean, ownError = false): Error {
    const server = serverOf(request);
    if (this.silence) return this.silence.error ?? err;
    this.unanswered++;
    if (cleanUp) {
      this.silence = { why: `answered nothing to an earlier request of the clean-up after the interruption (it waited ${err.waited ?? 's3.timeout'})` };
      // The command then says no more than `interrupted`: what it leaves behind is said here.
      this.reporter?.notice?.({
        level: 'warning',
        code: 'cleanup-cut-short',
        message: `the server at ${server} answered nothing to the clean-up after the interruption (it waited ${err.waited ?? 's3.timeout'}): the rest of the clean-up was not sent, and what it would have removed (this command's lock or registration as a reader, stored volumes, an incomplete upload) stays until the next backup or prune takes it over and removes it (at once on this host, from another host once it is stale: lock.staleAfter)`,
      });
      return err;
    }
    if (this.unanswered < this.silentAfter) return err;
    const error = stoppedAnswering(server, this.unanswered, err);
    this.silence = { why: `had stopped answering (${this.unanswered} requests in a row got no answer)`, error };
    this.underway.forEach((underway) => underway.abort(SILENCED));
    this.arriving.forEach((body) => body.destroy(error));
    return ownError ? err : error;
  }
}

/** The reason a request under way is stopped with when the server is taken for silent. */
const SILENCED = Symbol('the server is taken for silent');

/**
 * Whether the server is expected to begin its answer as soon as the request has arrived. A clean-up
 * after an interruption is held to it for a batch delete too, which may otherwise take its time.
 */
function answersAtOnce(request: HandlerArguments[0], cleanUp: boolean): boolean {
  const query = request.query ?? {};
  if (!cleanUp && request.method === 'POST' && ('uploadId' in query || 'delete' in query)) return false;
  const length = Object.entries(request.headers).find(([name]) => name.toLowerCase() === 'content-length')?.[1];
  return length === undefined || Number(length) <= SMALL_BODY_BYTES;
}

/** `https://host:port` of a request, for messages. */
function serverOf(request: HandlerArguments[0]): string {
  return `${request.protocol}//${request.hostname}${request.port ? `:${request.port}` : ''}`;
}


function md5Base64(data: Uint8Array): string {
  return createHash('md5').update(data).digest('base64');
}

function httpStatus(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
}

function errorName(err: unknown): string | undefined {
  return (err as { name?: string } | undefined)?.name;
}

/** The storage class (and Intelligent-Tiering access tier) an InvalidObjectState error names. */
function archiveTierOf(err: unknown): string {
  const { StorageClass, AccessTier } = err as { StorageClass?: string; AccessTier?: string };
  if (StorageClass === undefined) return 'an archive tier';
  return AccessTier === undefined ? StorageClass : `${StorageClass} (${AccessTier})`;
}

function isMissing(err: unknown): boolean {
  const name = errorName(err);
  // A missing bucket is a 404 too, but not a missing object: "no repository here" would send the user to `init`, which cannot help.
  if (name === 'NoSuchBucket') return false;
  return httpStatus(err) === 404 || name === 'NoSuchKey' || name === 'NotFound';
}

/** The commands whose bodies carry our Content-MD5. */
const UPLOADS = new Set(['PutObjectCommand', 'UploadPartCommand']);

/**
 * Uploads are signed with UNSIGNED-PAYLOAD, as S3 allows: their Content-MD5,
 * which the signature covers and every S3-compatible server checks, already
 * proves the body arrived intact. Otherwise the SDK hashes each body with
 * SHA-256 for the signature, a second pass over every byte sent (about 1.1 s
 * of CPU per 1.7 GB) beside the MD5.
 */
function signUploadsWithoutPayloadHash(client: S3Client): void {
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const request = args.request as { headers?: Record<string, string> } | undefined;
      if (UPLOADS.has(context.commandName ?? '') && request?.headers) request.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
      return next(args);
    },
    { step: 'build', name: 'lifeboatUnsignedPayload' },
  );
}

/** Credentials the chain could not provide fail every request alike, before it is sent: the error says why, once, and is not retried. */
function explainMissingCredentials(client: S3Client, env: NodeJS.ProcessEnv): void {
  client.middlewareStack.add(
    (next) => async (args) => {
      try {
        return await next(args);
      } catch (err) {
        if (errorName(err) === 'CredentialsProviderError') throw credentialsFailure(err, env);
        throw err;
      }
    },
    { step: 'initialize', name: 'lifeboatCredentialsFailure' },
  );
}

/** The ARN of the repository's objects, as a policy grants an action on them. */
function repositoryObjectsArn(bucket: string, root: string): string {
  return `arn:aws:s3:::${bucket}/${root}*`;
}

/**
 * Marks each request the server refuses for want of permission with the action it needed and where
 * (the repository's objects, or the bucket), so that the error's hint says what to grant.
 */
function markRefusals(client: S3Client, bucket: string, root: string): void {
  const objects = repositoryObjectsArn(bucket, root);
  const whole = `arn:aws:s3:::${bucket}`;
  const read = { action: 's3:GetObject', on: objects };
  const write = { action: 's3:PutObject', on: objects };
  const needs: Record<string, RefusedPermission> = {
    GetObjectCommand: read,
    HeadObjectCommand: read,
    PutObjectCommand: write,
    CreateMultipartUploadCommand: write,
    UploadPartCommand: write,
    CompleteMultipartUploadCommand: write,
    AbortMultipartUploadCommand: { action: 's3:AbortMultipartUpload', on: objects },
    // Ceph (16) checks a multi-object delete against the bucket before each key.
    DeleteObjectsCommand: { action: 's3:DeleteObject', on: objects, also: whole },
    ListObjectsV2Command: { action: 's3:ListBucket', on: whole },
    ListMultipartUploadsCommand: { action: 's3:ListBucketMultipartUploads', on: whole },
  };
  client.middlewareStack.add(
    (next, context) => async (args) => {
      try {
        return await next(args);
      } catch (err) {
        const needed = needs[context.commandName ?? ''];
        if (needed && isAccessDenied(err)) refusedPermission(err, needed);
        throw err;
      }
    },
    { step: 'initialize', name: 'lifeboatRefusedPermission' },
  );
}

/** Bounds how many transfers run at once. */
class Semaphore {
  private available: number;
  private readonly waiting: (() => void)[] = [];

  constructor(permits: number) {
    this.available = permits;
  }

  async acquire(): Promise<() => void> {
    if (this.available > 0) this.available--;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next) next();
      else this.available++;
    };
  }
}
