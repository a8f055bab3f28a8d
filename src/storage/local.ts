import { createReadStream, type Dirent } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { IntegrityError, LifeboatError, PermissionRefusedError, RuntimeFailure, UsageError, errorMessage, fileSystemHint } from '../errors.js';
import { isAbsentPath, openRegularFile, syncPath, writeFileSynced } from '../format/durable.js';
import { createFileSink } from '../format/file-sink.js';
import { putThroughWriter } from './put-through-writer.js';
import { danglingLinkTarget, makeDirectories, notADirectoryOnTheWay } from '../format/mkdirs.js';
import { quoteName } from '../format/quote.js';
import { ownStart, ownerRuns, parseStart } from '../format/process-alive.js';
import { sleep } from '../sleep.js';
import {
  MAX_DOCUMENT_BYTES,
  ObjectNotFoundError,
  documentTooLarge,
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

/** Temporary files live here until they are renamed into place. */
const TMP_DIR = '.tmp';
/**
 * Room kept aside in a directory of its own at the root: a prune on a disk the repository filled frees it
 * to take its lock. Random bytes, so that a compressing file system keeps them. Not under TMP_DIR, where
 * earlier versions remove every entry as a file, and fail a backup on a directory.
 */
const RESERVE_DIR = '.reserve';
const RESERVE_FILE = 'space';
/** Where versions before it kept the reserve: removed when the reserve is kept, spent when it is all there is. */
const EARLIER_RESERVE_DIR = `${TMP_DIR}/reserve`;
/** Directories at the root that hold no objects. */
const NOT_OBJECTS = new Set([TMP_DIR, RESERVE_DIR]);
const RESERVE_BYTES = 256 * 1024;
/**
 * Empty files kept aside beside it: a disk out of inodes (files, not bytes) is full too, and the lock
 * takes a few (its temporary file, locks/, and on tmpfs its link).
 */
const RESERVE_INODES = Array.from({ length: 8 }, (_, i) => `inode-${i}`);

/**
 * A repository in a local directory. Writes go to a temporary file, are fsynced
 * and renamed into place, and the directory is fsynced, so a crash never leaves a
 * partially written object under its final name.
 */
export class LocalStorage implements Storage {
  readonly location: string;
  readonly capabilities: StorageCapabilities = { conditionalPut: true, rangedGet: true };
  readonly root: string;

  constructor(root: string) {
    this.root = path.resolve(root);
    this.location = this.root;
  }

  /** The listing of the top was named "/", which reads as the root of the file system. */
  private get rootForErrors(): string {
    return `the repository ${quoteName(this.root)}`;
  }

  private pathOf(key: string): string {
    if (!isObjectKey(key)) {
      throw new RuntimeFailure(`invalid object key ${JSON.stringify(key)}`);
    }
    return path.join(this.root, ...key.split('/'));
  }

  private async tempFile(): Promise<string> {
    const dir = path.join(this.root, TMP_DIR);
    await makeDirectories(dir).catch(async (err: unknown) => {
      // A repository path given where a file is (init on a file, a typo) is the user's to correct, not a failure of the disk.
      const blocker = (err as NodeJS.ErrnoException).code === 'ENOTDIR' ? await notADirectoryOnTheWay(dir) : undefined;
      if (blocker !== undefined) {
        // A link to a directory not made yet (a mount point's path, a volume not attached) is not a file in the way.
        const dangling = await danglingLinkTarget(blocker);
        if (dangling !== undefined) {
          throw new UsageError(`the repository ${quoteName(this.root)} cannot be made: ${quoteName(blocker)} is a symbolic link to ${quoteName(dangling)}, which does not exist`, {
            hint: 'make the directory it points to first (or mount what should be there), or give another path',
          });
        }
        throw new UsageError(`the repository ${quoteName(this.root)} cannot be a directory: ${quoteName(blocker)} is not one`, { hint: 'give a directory for the repository, or a path where one can be made' });
      }
      throw new RuntimeFailure(`cannot create ${quoteName(dir)}: ${errorMessage(err)}`, { cause: err });
    });
    return path.join(dir, `${process.pid}-${randomBytes(6).toString('hex')}`);
  }

  /**
   * Moves a finished temporary file to `key`: with `exclusive` only where
   * nothing is, with `ifMatch` only over exactly those bytes. False when that
   * condition failed. The temporary file is gone afterwards either way.
   */
  private async commit(key: string, tmp: string, condition: Pick<PutDocumentOptions, 'ifMatch' | 'beforeVisible'> & { exclusive?: boolean } = {}): Promise<boolean> {
    const final = this.pathOf(key);
    try {
      await condition.beforeVisible?.();
      const placed = condition.ifMatch ? await replaceHolding(final, tmp, condition.ifMatch, key) : await moveIntoPlace(tmp, final, condition.exclusive === true);
      if (placed) await syncPath(path.dirname(final));
      return placed;
    } finally {
      // A link, or a replacement that did not happen, leaves the temporary file behind.
      await fsp.rm(tmp, { force: true });
    }
  }

  async put(key: string, body: Readable, options?: PutOptions): Promise<ObjectInfo> {
    return putThroughWriter(await this.openWriter(key, options), body).catch((err: unknown) => {
      throw wrap('write', key, err);
    });
  }

  async openWriter(key: string, options?: PutOptions): Promise<ObjectWriter> {
    this.pathOf(key); // an invalid key is refused before anything is written
    const tmp = await this.tempFile();
    const file = await createFileSink(tmp).catch((err: unknown) => {
      throw wrap('write', key, err);
    });
    const signal = options?.signal;
    let size = 0;
    const discard = async (): Promise<void> => {
      await file.discard();
      await fsp.rm(tmp, { force: true });
    };
    return {
      write: async (chunk: Uint8Array): Promise<void> => {
        signal?.throwIfAborted();
        try {
          await file.write(chunk);
          size += chunk.length;
        } catch (err) {
          await discard();
          throw wrap('write', key, err);
        }
      },
      end: async (): Promise<ObjectInfo> => {
        try {
          signal?.throwIfAborted();
          await file.finish();
          await this.commit(key, tmp);
          return { key, size };
        } catch (err) {
          await discard();
          throw wrap('write', key, err);
        }
      },
      abort: async (): Promise<void> => {
        await discard();
      },
    };
  }

  async putDocument(key: string, data: Uint8Array, options: PutDocumentOptions = {}): Promise<boolean> {
    this.pathOf(key); // an invalid key is refused before anything is written
    const attempt = async (): Promise<boolean> => {
      const tmp = await this.tempFile();
      try {
        await writeFileSynced(tmp, data, { flag: 'wx' });
        return await this.commit(key, tmp, { exclusive: options.ifAbsent === true, ifMatch: options.ifMatch, beforeVisible: options.beforeVisible });
      } finally {
        await fsp.rm(tmp, { force: true });
      }
    };
    try {
      // Out of room anywhere on the way (the temporary file, its directory, the link that places it: on
      // tmpfs a link takes an inode too), a write that may spend the reserve frees it and starts again.
      return await attempt().catch(async (err: unknown) => {
        const full = ['ENOSPC', 'EDQUOT'].includes((err as NodeJS.ErrnoException).code ?? '');
        if (!(full && options.spendReserve && (await this.spendReserve()))) throw err;
        return attempt();
      });
    } catch (err) {
      throw wrap('write', key, err);
    }
  }

  async getDocument(key: string, options?: GetDocumentOptions): Promise<Buffer> {
    const limit = options?.maxBytes ?? MAX_DOCUMENT_BYTES;
    try {
      const { handle, stats } = await openRegularFile(this.pathOf(key));
      try {
        if (stats.size > BigInt(limit)) throw documentTooLarge(key, limit);
        return await handle.readFile();
      } finally {
        await handle.close();
      }
    } catch (err) {
      if (isAbsentPath(err)) throw new ObjectNotFoundError(key, this.location);
      throw wrap('read', key, err);
    }
  }

  async get(key: string, options?: GetOptions): Promise<Readable> {
    const fh = await this.openForReading(key);
    const start = options?.offset ?? 0;
    const end = options?.length === undefined ? undefined : start + options.length - 1;
    if (end !== undefined && end < start) {
      await fh.close();
      const { Readable } = await import('node:stream');
      return Readable.from([]);
    }
    return createReadStream('', { fd: fh, start, end, highWaterMark: 1 << 20, signal: options?.signal });
  }

  async openReader(key: string, options?: GetOptions): Promise<ObjectReader> {
    const fh = await this.openForReading(key);
    let position = options?.offset ?? 0;
    const end = options?.length === undefined ? Number.POSITIVE_INFINITY : position + options.length;
    let closed = false;
    return {
      read: async (into: Uint8Array): Promise<number> => {
        options?.signal?.throwIfAborted();
        const want = Math.min(into.length, end - position);
        if (want <= 0 || closed) return 0;
        try {
          const { bytesRead } = await fh.read(into, 0, want, position);
          position += bytesRead;
          return bytesRead;
        } catch (err) {
          throw wrap('read', key, err);
        }
      },
      close: async (): Promise<void> => {
        if (closed) return;
        closed = true;
        await fh.close();
      },
    };
  }

  private async openForReading(key: string): Promise<fsp.FileHandle> {
    return openRegularFile(this.pathOf(key)).then(({ handle }) => handle, (err: NodeJS.ErrnoException) => {
      if (isAbsentPath(err)) throw new ObjectNotFoundError(key, this.location);
      throw wrap('read', key, err);
    });
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    try {
      const st = await fsp.stat(this.pathOf(key));
      return st.isFile() ? { key, size: st.size } : undefined;
    } catch (err) {
      if (isAbsentPath(err)) return undefined;
      throw wrap('stat', key, err);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const slash = prefix.lastIndexOf('/');
    const dirKey = slash < 0 ? '' : prefix.slice(0, slash);
    const startDir = dirKey === '' ? this.root : path.join(this.root, ...dirKey.split('/'));
    yield* this.walk(startDir, dirKey, prefix);
  }

  async *listPrefixes(prefix: string): AsyncIterable<string> {
    const entries = await entriesOf(path.join(this.root, ...prefix.split('/').filter(Boolean)), prefix || this.rootForErrors);
    const folders = entries.filter((e) => e.isDirectory() && !(prefix === '' && NOT_OBJECTS.has(e.name))).map((e) => `${prefix}${e.name}/`);
    folders.sort(compareKeys);
    // A folder emptied by deletes holds no object, and an object store would not list it. Folders are looked
    // into all at once: a backup lists one per point while it scans, and waits for them before it writes.
    const holding = await Promise.all(folders.map((folder) => holdsFile(path.join(this.root, ...folder.split('/').filter(Boolean)), folder)));
    yield* folders.filter((_, i) => holding[i]);
  }

  private async *walk(dir: string, dirKey: string, prefix: string): AsyncIterable<ObjectInfo> {
    const entries = await entriesOf(dir, dirKey || this.rootForErrors);
    // Key order: sort by the key each entry contributes ('a/' sorts as 'a/').
    const named = entries
      .filter((e) => !(dirKey === '' && NOT_OBJECTS.has(e.name)))
      .map((e) => ({ e, key: dirKey === '' ? e.name : `${dirKey}/${e.name}` }))
      .sort((a, b) => compareKeys(a.e.isDirectory() ? `${a.key}/` : a.key, b.e.isDirectory() ? `${b.key}/` : b.key));
    for (const { e, key } of named) {
      if (e.isDirectory()) {
        if (`${key}/`.startsWith(prefix) || prefix.startsWith(`${key}/`)) {
          yield* this.walk(path.join(dir, e.name), key, prefix);
        }
      } else if (e.isFile() && key.startsWith(prefix)) {
        const st = await fsp.stat(path.join(dir, e.name)).catch(() => undefined);
        if (st) yield { key, size: st.size };
      }
    }
  }

  async delete(keys: readonly string[]): Promise<void> {
    const dirs = new Set<string>();
    for (const key of keys) {
      const file = this.pathOf(key);
      try {
        await fsp.unlink(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw wrap('delete', key, err);
      }
      dirs.add(path.dirname(file));
    }
    // Drop directories the deletes emptied, so a removed point leaves no trace.
    for (const dir of [...dirs].sort((a, b) => b.length - a.length)) {
      let d = dir;
      while (d !== this.root && d.startsWith(this.root)) {
        try {
          await fsp.rmdir(d);
        } catch {
          break;
        }
        d = path.dirname(d);
      }
    }
  }

  async *incompleteWrites(): AsyncIterable<IncompleteWrite> {
    const dir = path.join(this.root, TMP_DIR);
    for (const entry of await entriesOf(dir, `${TMP_DIR}/`)) {
      if (!entry.isFile()) continue;
      // Renamed into place or removed since the directory was read: complete, or not there.
      const st = await fsp.stat(path.join(dir, entry.name)).catch(() => undefined);
      if (!st) continue;
      const writer = /^(\d+)-/.exec(entry.name);
      yield { key: `${TMP_DIR}/${entry.name}`, what: 'a temporary file', size: st.size, since: st.mtime, ...(writer ? { pid: Number(writer[1]) } : {}) };
    }
  }

  async removeIncomplete(writes: readonly IncompleteWrite[]): Promise<void> {
    for (const { key } of writes) {
      const name = key.slice(TMP_DIR.length + 1);
      if (!key.startsWith(`${TMP_DIR}/`) || name === '' || name.includes('/') || name === '..') throw new RuntimeFailure(`${key} is not a temporary file of the repository`);
      await fsp.rm(path.join(this.root, TMP_DIR, name), { force: true }).catch((err: unknown) => {
        throw wrap('delete', key, err);
      });
    }
  }

  cleanupIncomplete(olderThanMs: number): Promise<number> {
    return removeIncompleteOlderThan(this, olderThanMs);
  }

  async keepReserve(): Promise<void> {
    await fsp.rm(path.join(this.root, EARLIER_RESERVE_DIR), { recursive: true, force: true }).catch(() => undefined);
    const dir = path.join(this.root, RESERVE_DIR);
    const file = path.join(dir, RESERVE_FILE);
    const spaceKept = (await fsp.stat(file).catch(() => undefined))?.size === RESERVE_BYTES;
    const present = await Promise.all(RESERVE_INODES.map((name) => fsp.stat(path.join(dir, name)).then(() => true, () => false)));
    const missingInodes = RESERVE_INODES.filter((_, i) => !present[i]);
    if (spaceKept && missingInodes.length === 0) return;
    await makeDirectories(dir);
    // Made by the holder of the writer lock only: one name serves, and what a killed writer left is written over.
    // All or nothing: a reserve made in part, on a disk a prune has just taken it from, would take back
    // the inodes its lock and its next writes need.
    const tmp = path.join(dir, `${RESERVE_FILE}.new`);
    const made: string[] = [];
    try {
      for (const name of missingInodes) {
        const inode = path.join(dir, name);
        await fsp.writeFile(inode, '', { flag: 'wx' });
        made.push(inode);
      }
      if (!spaceKept) {
        await fsp.writeFile(tmp, randomBytes(RESERVE_BYTES));
        await fsp.rename(tmp, file);
      }
    } catch (err) {
      await Promise.all([tmp, ...made].map((f) => fsp.rm(f, { force: true })));
      throw wrap('write', `${RESERVE_DIR}/${RESERVE_FILE}`, err);
    }
  }

  /** Frees the room kept aside, bytes and inodes; whether there was any. */
  private async spendReserve(): Promise<boolean> {
    let spent = false;
    for (const dir of [RESERVE_DIR, EARLIER_RESERVE_DIR]) {
      for (const name of [RESERVE_FILE, ...RESERVE_INODES]) {
        const file = path.join(this.root, dir, name);
        if (!(await fsp.stat(file).catch(() => undefined))) continue;
        await fsp.rm(file, { force: true });
        spent = true;
      }
      if (spent) return true;
    }
    return false;
  }

  async close(): Promise<void> {}
}

/** How often a write whose directory another process removed meanwhile is tried again. */
const DIRECTORY_ATTEMPTS = 10;

/**
 * Links (`exclusive`: false when something is there, atomically) or renames
 * `from` to `to`. Another process's delete() drops the directories it empties
 * (locks/ when a lock is released, pins/ with the last pin): one dropped
 * between the mkdir and the link or rename here is made again.
 */
async function moveIntoPlace(from: string, to: string, exclusive: boolean): Promise<boolean> {
  for (let attempt = 1; ; attempt++) {
    try {
      await makeDirectories(path.dirname(to));
      if (exclusive) await fsp.link(from, to);
      else await fsp.rename(from, to);
      return true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (exclusive && code === 'EEXIST') return false;
      if (code === 'ENOENT' && attempt < DIRECTORY_ATTEMPTS && (await isFile(from))) continue;
      throw err;
    }
  }
}

/**
 * Replaces the file `final` with `tmp` (a file on the same file system) only while it holds exactly
 * `expected`, by a rename over it: it holds the old document until the new one is in its place, never
 * nothing. Two processes doing this at once cannot both do it, nor a process paused halfway do it over
 * another's document: each takes the claim beside the file (see claimBeside) and compares and renames
 * only while it holds it, the new document renamed from inside the claim, so that one whose claim was
 * taken over (it was paused or slow for longer than CLAIM_STALE_MS) finds nothing to rename and tries
 * again from the start. A create-if-absent never finds the file missing meanwhile. `name` is what an
 * error calls it (the repository's key). `tmp` stays where it is.
 */
export async function replaceHolding(final: string, tmp: string, expected: Uint8Array, name: string): Promise<boolean> {
  for (let attempt = 1; ; attempt++) {
    const claim = await claimBeside(final);
    try {
      const staged = path.join(claim.dir, claim.nonce);
      // The claim taken over before the link (ENOENT), or the link made in another's claim (not ours below): again.
      const linked = await fsp.link(tmp, staged).then(() => true, (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return false;
        throw err;
      });
      if (linked && (await claim.held())) {
        if (!(await holdsExactly(final, expected))) return false;
        try {
          await fsp.rename(staged, final);
          return true;
        } catch (err) {
          // Taken over since it was compared: what it held may have changed.
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        }
      }
    } finally {
      await claim.release();
    }
    if (attempt >= CLAIM_ATTEMPTS) throw new RuntimeFailure(`cannot replace ${name}: its claim (${path.basename(claimPath(final))}) was taken over ${attempt} times while this process held it`, { hint: 'the file system answers more slowly than other writers wait for; try again' });
  }
}

/**
 * How long a claim beside a document being replaced may stand before another replacer removes it, when
 * its owner is not known to be gone (on another host, or not written down yet). A replace holds its claim
 * for a few milliseconds; one slower than this has its claim taken over, and tries again.
 */
export const CLAIM_STALE_MS = 10_000;
/** How often a replace whose claim was taken over while it held it tries again. */
const CLAIM_ATTEMPTS = 5;
/** The name of the file in a claim that says whose it is. */
const CLAIM_OWNER = 'owner.json';

/** Where the claim on replacing the document at `final` is made: a directory beside it. */
function claimPath(final: string): string {
  return `${final}.claim`;
}

interface Claim {
  dir: string;
  /** Unique to this claim: the name of the document it stages. */
  nonce: string;
  /** Whether the claim at `dir` is still this one. */
  held(): Promise<boolean>;
  /** Removes the claim if it is still this one, or else what this one staged in another's. */
  release(): Promise<void>;
}

/**
 * Takes the claim on replacing the document at `final`: a directory made beside it (mkdir, of several
 * at once one succeeds) holding `owner.json` ({host, pid, at, nonce}). A claim whose owner is gone from
 * this host, or that this process has seen unchanged for CLAIM_STALE_MS, is removed, and the claim made
 * again.
 */
async function claimBeside(final: string): Promise<Claim> {
  const dir = claimPath(final);
  const ownerFile = path.join(dir, CLAIM_OWNER);
  const nonce = randomBytes(8).toString('hex');
  const start = ownStart();
  const owner = JSON.stringify({ host: os.hostname(), pid: process.pid, at: new Date().toISOString(), nonce, ...(start ? { processStart: start } : {}) });
  const readOwner = () => fsp.readFile(ownerFile, 'utf8').catch(() => '');
  let seen: { owner: string; since: number } | undefined;
  for (let vanished = 0; ; ) {
    try {
      await fsp.mkdir(dir);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // Its directory dropped by another process's delete (locks/ when a lock is released): made again.
      if (code === 'ENOENT' && ++vanished < DIRECTORY_ATTEMPTS) {
        await makeDirectories(path.dirname(dir));
        continue;
      }
      if (code !== 'EEXIST') throw err;
      const other = await readOwner();
      if (seen?.owner !== other) seen = { owner: other, since: performance.now() };
      if (claimAbandoned(other, performance.now() - seen.since)) {
        // Removed only while it is still the claim judged; one removed that was not (another's, made meanwhile) costs its owner a new attempt.
        if ((await readOwner()) === other) await fsp.rm(dir, { recursive: true, force: true, maxRetries: 3 }).catch(() => undefined);
        seen = undefined;
      } else {
        await sleep(2 + Math.random() * 6);
      }
      continue;
    }
    // Another's claim here already (this one was taken over since the mkdir) when the file exists: held() says so.
    await fsp.writeFile(ownerFile, owner, { flag: 'wx' }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT' && err.code !== 'EEXIST') throw err;
    });
    const held = async () => (await readOwner()) === owner;
    return {
      dir,
      nonce,
      held,
      release: async () => {
        if (await held()) await fsp.rm(dir, { recursive: true, force: true, maxRetries: 3 }).catch(() => undefined);
        else await fsp.rm(path.join(dir, nonce), { force: true }).catch(() => undefined);
      },
    };
  }
}

/**
 * Whether a claim whose `owner.json` reads `owner` ('' when it does not read), seen unchanged for
 * `seenMs`, was left by a writer that is gone or stuck. How long is measured by this process's own
 * clock, not by the claim's time: a host whose clock is behind would have its claims taken over as
 * soon as they are made.
 */
function claimAbandoned(owner: string, seenMs: number): boolean {
  if (seenMs > CLAIM_STALE_MS) return true;
  let info: { host?: unknown; pid?: unknown; at?: unknown; processStart?: unknown };
  try {
    info = JSON.parse(owner) as typeof info;
  } catch {
    return false;
  }
  const at = typeof info.at === 'string' ? Date.parse(info.at) : Number.NaN;
  const start = typeof info.processStart === 'string' ? parseStart(info.processStart) : undefined;
  return info.host === os.hostname() && typeof info.pid === 'number' && !ownerRuns(info.pid, Number.isFinite(at) ? at : undefined, start);
}

/** Whether `file` holds exactly `bytes` (false when it is not there). */
async function holdsExactly(file: string, bytes: Uint8Array): Promise<boolean> {
  let opened;
  try {
    opened = await openRegularFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  try {
    return opened.stats.size === BigInt(bytes.length) && (await opened.handle.readFile()).equals(bytes);
  } finally {
    await opened.handle.close();
  }
}

async function isFile(p: string): Promise<boolean> {
  return fsp.stat(p).then((st) => st.isFile(), () => false);
}

function compareKeys(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Whether a file lies anywhere under `dir`. */
async function holdsFile(dir: string, keyForErrors: string): Promise<boolean> {
  const entries = await entriesOf(dir, keyForErrors);
  if (entries.some((e) => e.isFile())) return true;
  for (const e of entries) {
    if (e.isDirectory() && (await holdsFile(path.join(dir, e.name), `${keyForErrors}${e.name}/`))) return true;
  }
  return false;
}

/** A directory's entries, or none when it is not there (a listing of a prefix nothing is under). */
async function entriesOf(dir: string, keyForErrors: string): Promise<Dirent[]> {
  try {
    return await fsp.readdir(dir, { withFileTypes: true });
  } catch (err) {
    if (isAbsentPath(err)) return [];
    throw wrap('list', keyForErrors, err);
  }
}

function wrap(op: string, key: string, err: unknown): Error {
  if (err instanceof LifeboatError) return err;
  if (err instanceof Error && err.name === 'AbortError') return err;
  // Only lifeboat's own files belong in a repository: a pipe or a device there is damage or tampering.
  if ((err as NodeJS.ErrnoException).code === 'EFTYPE') return new IntegrityError(`cannot ${op} ${key}: it is not a regular file in the repository`, { cause: err });
  const code = (err as NodeJS.ErrnoException).code;
  // As S3's 403: running again changes nothing until the user or the modes do (exit 2).
  if (code === 'EACCES' || code === 'EPERM') {
    const who = process.getuid === undefined ? 'this user' : `this user (uid ${process.getuid()})`;
    return new PermissionRefusedError(`cannot ${op} ${key}: ${errorMessage(err)}`, {
      cause: err,
      hint: `${who} may not ${op === 'write' || op === 'delete' ? 'write in' : 'read'} the repository: run lifeboat as the user that owns it, or give this user access to its files and directories`,
    });
  }
  // What fills a repository's disk is most often the repository: the command that frees it is the useful advice.
  const hint = code === 'ENOSPC' || code === 'EDQUOT' ? 'free space on the file system of the repository; where its backups fill it, lifeboat prune removes the points retention does not keep (it runs on a full disk)' : fileSystemHint(err, 'the repository');
  return new RuntimeFailure(`cannot ${op} ${key}: ${errorMessage(err)}`, { cause: err, hint });
}
