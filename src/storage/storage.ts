import type { Readable } from 'node:stream';
import { IntegrityError, PermissionRefusedError, RuntimeFailure, UsageError } from '../errors.js';

/** One stored object as a listing or a head request sees it. */
export interface ObjectInfo {
  key: string;
  size: number;
  /** The storage class of an object that cannot be read until it is retrieved from an archive (S3 Glacier). */
  archived?: string;
}

/**
 * S3 storage classes whose objects must be retrieved (a request that takes
 * hours) before they can be read. A lifecycle rule that moves a repository's
 * volumes there leaves points that cannot be restored when they are needed.
 */
export const ARCHIVE_STORAGE_CLASSES: ReadonlySet<string> = new Set(['GLACIER', 'DEEP_ARCHIVE']);

/** A stored object that must be retrieved from an archive before it can be read. */
export class ArchivedObjectError extends IntegrityError {
  constructor(
    readonly key: string,
    readonly storageClass: string,
  ) {
    super(`${key} is in the archive storage class ${storageClass} and cannot be read until it is retrieved from there`, {
      volume: key,
      hint: `retrieve it first (aws s3api restore-object), and keep the repository's objects out of lifecycle rules that archive them`,
    });
  }
}

/**
 * A write that never completed: a local temporary file not yet renamed into
 * place, or an S3 multipart upload neither completed nor aborted. A process
 * killed while it writes (a backup's volume) leaves one behind.
 */
export interface IncompleteWrite {
  /** Where it is: `.tmp/<file>` (local), or the key the upload was for (S3). */
  key: string;
  /** What it is, for messages: `a temporary file`, `an incomplete multipart upload`. */
  what: string;
  /** Bytes written so far, where the driver knows them without a request per write. */
  size?: number;
  /** The id of the process that writes it, where the driver records one (local). */
  pid?: number;
  /** When it was last written to (local) or started (S3); some servers do not say. */
  since?: Date;
  /** The driver's own name for it (the S3 upload id), for removeIncomplete. */
  uploadId?: string;
}

/**
 * What a driver can promise. Callers branch on these, never on the driver type.
 */
export interface StorageCapabilities {
  /** putDocument({ifAbsent}) is an atomic create-if-absent (used for the repository lock). */
  conditionalPut: boolean;
  /** get() with an offset reads from there without transferring the bytes before it. */
  rangedGet: boolean;
}

export interface PutOptions {
  /** Size in bytes when known in advance (lets a driver choose single-part uploads). */
  size?: number;
  signal?: AbortSignal;
}

export interface PutDocumentOptions {
  /** Create only: returns false, changing nothing, when the key already exists. */
  ifAbsent?: boolean;
  /**
   * Replace only: returns false, changing nothing, unless the key holds exactly
   * these bytes (a lock's holder rewriting its own lock). Atomic where the
   * server honours If-Match (S3); a local repository compares and renames over
   * it while holding a claim beside the key. Either way the key holds the old
   * document or the new one at every instant, never nothing.
   */
  ifMatch?: Uint8Array;
  /**
   * Runs once the bytes are stored, just before they become visible under the
   * key (a lock's holder checking it still holds it); when it throws, nothing
   * becomes visible and putDocument rejects with its error.
   */
  beforeVisible?: () => Promise<void>;
  /**
   * On a file system with no room left, may free the room the driver keeps
   * aside (keepReserve) and write again: for the lock of a prune, which frees
   * space, so that a repository that filled its disk can still be pruned.
   */
  spendReserve?: boolean;
}

export interface GetDocumentOptions {
  /** The most bytes the document may have (MAX_DOCUMENT_BYTES when absent); a larger one is refused before it is read. */
  maxBytes?: number;
}

export interface GetOptions {
  offset?: number;
  /** Number of bytes to read from offset; to the end when absent. */
  length?: number;
  signal?: AbortSignal;
}

/**
 * An object being written piece by piece. The caller may reuse a chunk's
 * memory as soon as `write` resolves, which lets it recycle a few buffers
 * instead of allocating one per chunk.
 */
export interface ObjectWriter {
  /** Appends `chunk`; resolves once its memory may be reused. */
  write(chunk: Uint8Array): Promise<void>;
  /** Completes the object; it is visible under its key once this resolves, and nothing is when it rejects. */
  end(): Promise<ObjectInfo>;
  /** Abandons the object; nothing becomes visible under its key. */
  abort(reason: Error): Promise<void>;
}

/**
 * An object being read into the caller's buffers, so a reader can recycle a
 * few buffers instead of receiving a new one per chunk.
 */
export interface ObjectReader {
  /** Fills the start of `into` with the next bytes; resolves with how many (0 at the end). */
  read(into: Uint8Array): Promise<number>;
  /** Releases the object; safe to call more than once. */
  close(): Promise<void>;
}

/**
 * The storage seam: everything the core knows about where backups live.
 * Keys are '/'-separated relative names (`points/<id>.json`, `data/<id>/v000001.tar`).
 * Drivers know nothing about backups.
 */
export interface Storage {
  /** Where the repository is, for messages; never contains credentials. */
  readonly location: string;
  readonly capabilities: StorageCapabilities;
  /** Set by a wrapper that encrypts every object it stores (recorded in each volume's record). */
  readonly encryption?: 'aes-256-gcm';
  /**
   * Streams `body` into `key`. The object becomes visible under `key` only once
   * it is completely and durably stored; a failed or aborted put leaves nothing visible.
   */
  put(key: string, body: Readable, options?: PutOptions): Promise<ObjectInfo>;
  /** Like put, written through calls instead of a stream; the same visibility guarantee. */
  openWriter(key: string, options?: PutOptions): Promise<ObjectWriter>;
  /**
   * Writes a small document atomically. With `ifAbsent` or `ifMatch`, returns
   * false and changes nothing when the key's present state is not the one asked for.
   */
  putDocument(key: string, data: Uint8Array, options?: PutDocumentOptions): Promise<boolean>;
  /**
   * Reads a whole small document. Throws ObjectNotFoundError when absent, and
   * documentTooLarge's error, having read at most that much, when it is larger than `maxBytes`.
   */
  getDocument(key: string, options?: GetDocumentOptions): Promise<Buffer>;
  /** Streams an object (or a byte range of it). Throws ObjectNotFoundError when absent. */
  get(key: string, options?: GetOptions): Promise<Readable>;
  /** Like get, read through calls into the caller's buffers. */
  openReader(key: string, options?: GetOptions): Promise<ObjectReader>;
  /** Size of an object, or undefined when it does not exist. */
  head(key: string): Promise<ObjectInfo | undefined>;
  /** Every object whose key starts with `prefix`, in key order. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /**
   * The "folders" one level below `prefix` (which ends in '/'): each distinct
   * `prefix + segment + '/'` that some object's key starts with, in key order.
   * Objects directly under `prefix` are not listed. Costs one listing entry
   * per folder, however many objects each holds.
   */
  listPrefixes(prefix: string): AsyncIterable<string>;
  /** Removes objects; keys that do not exist are ignored. */
  delete(keys: readonly string[]): Promise<void>;
  /**
   * The writes of this driver that have not completed (temporary files, incomplete
   * multipart uploads), including those still going on, never outside the repository.
   * `prefix` narrows them where the driver knows what each is for (S3); a local
   * temporary file does not say, and is listed whatever the prefix.
   */
  incompleteWrites(prefix?: string): AsyncIterable<IncompleteWrite>;
  /** Removes incomplete writes that incompleteWrites listed; one that has completed or gone since is left alone. */
  removeIncomplete(writes: readonly IncompleteWrite[]): Promise<void>;
  /**
   * Removes what interrupted writes of this driver left behind (temporary files,
   * incomplete multipart uploads) that started more than `olderThanMs` ago,
   * under `prefix` when given (never outside the repository). Returns how many were removed.
   */
  cleanupIncomplete(olderThanMs: number, prefix?: string): Promise<number>;
  /**
   * Makes sure the room a write with `spendReserve` may use is kept aside (a
   * local repository's `.reserve/space`); a driver whose storage cannot
   * fill up does nothing. Fails, leaving nothing half made, where there is no room.
   */
  keepReserve(): Promise<void>;
  close(): Promise<void>;
}

/** cleanupIncomplete, for a driver that lists and removes its incomplete writes. */
export async function removeIncompleteOlderThan(storage: Pick<Storage, 'incompleteWrites' | 'removeIncomplete'>, olderThanMs: number, prefix?: string): Promise<number> {
  const cutoff = Date.now() - olderThanMs;
  const old: IncompleteWrite[] = [];
  for await (const write of storage.incompleteWrites(prefix)) {
    if (write.since === undefined || write.since.getTime() <= cutoff) old.push(write);
  }
  await storage.removeIncomplete(old);
  return old.length;
}

/**
 * Whether a key names an object inside the repository: relative, with no empty,
 * `.` or `..` segment and no NUL. Both drivers refuse any other key, and a
 * manifest naming one is damaged.
 */
export function isObjectKey(key: string): boolean {
  return key !== '' && !key.startsWith('/') && !key.includes('\0') && !key.split('/').some((s) => s === '..' || s === '.' || s === '');
}

/** The largest document (manifest, summary, ledger, lock) read into memory. */
export const MAX_DOCUMENT_BYTES = 512 * 1024 * 1024;

/**
 * The largest repository config, pin or journal event read: each takes a few
 * hundred bytes, and one of 400 MB (a sparse file) took 1.2 GiB of memory and
 * 10 s to be found damaged, in every command that read it.
 */
export const SMALL_DOCUMENT_BYTES = 1024 * 1024;

/** Refused before it is read: nothing lifeboat writes as a document comes near the limit. */
export function documentTooLarge(key: string, limit: number = MAX_DOCUMENT_BYTES): IntegrityError {
  const kind = limit === MAX_DOCUMENT_BYTES ? 'a document' : 'a document of its kind';
  return new IntegrityError(`${key} is larger than the ${limit / (1 << 20)} MiB ${kind} may have`);
}

/** A document's body read to its end, refused with `tooLarge` as soon as it holds more than `most` bytes. */
export async function readDocumentBody(body: Readable, most: number, tooLarge: () => Error): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > most) throw tooLarge();
      chunks.push(chunk);
    }
  } finally {
    body.destroy();
  }
  return Buffer.concat(chunks, size);
}

export class ObjectNotFoundError extends RuntimeFailure {
  readonly key: string;
  constructor(key: string, location: string) {
    super(`object ${key} does not exist in ${location}`);
    this.key = key;
  }
}

export function isNotFound(err: unknown): err is ObjectNotFoundError {
  return err instanceof ObjectNotFoundError;
}

/** Answers with 403 that are not about permissions: an archived object, a clock far off. */
const OTHER_FORBIDDEN = new Set(['InvalidObjectState', 'RequestTimeTooSkewed']);

/** Whether S3 refused a request for want of permission (a 403 answer to a HEAD has no body to name it). */
export function isAccessDenied(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } } | undefined;
  return e?.name === 'AccessDenied' || (e?.$metadata?.httpStatusCode === 403 && !OTHER_FORBIDDEN.has(e.name ?? ''));
}

/**
 * Whether the storage refused a request for want of permission: S3's 403
 * AccessDenied, for a whole request or for one key of a multi-object delete
 * (credentials whose policy leaves out an action), or a file system's EACCES,
 * EPERM or EROFS. Credentials the server does not know at all are a usage error
 * of their own, not this.
 */
export function isPermissionRefused(err: unknown): boolean {
  if (err instanceof PermissionRefusedError) return true;
  if (err instanceof UsageError) return false;
  type Step = { name?: string; code?: string; $metadata?: { httpStatusCode?: number }; cause?: unknown };
  for (let e = err as Step | undefined, depth = 0; e && depth < 4; e = e.cause as Step | undefined, depth++) {
    if (isAccessDenied(e)) return true;
    if (e.code === 'EACCES' || e.code === 'EPERM' || e.code === 'EROFS') return true;
  }
  return false;
}

/** Reads until `into` is full or the object ends; resolves with how many bytes it holds. */
export async function readFully(reader: ObjectReader, into: Uint8Array): Promise<number> {
  let n = 0;
  while (n < into.length) {
    const got = await reader.read(into.subarray(n));
    if (got === 0) break;
    n += got;
  }
  return n;
}

/** Collects a listing; for small prefixes only (points, locks). */
export async function listAll(storage: Storage, prefix: string): Promise<ObjectInfo[]> {
  const out: ObjectInfo[] = [];
  for await (const info of storage.list(prefix)) out.push(info);
  return out;
}
