import * as os from 'node:os';
import { randomBytes } from 'node:crypto';
import * as z from 'zod';
import { InterruptedError, LockedError, PermissionRefusedError, RuntimeFailure, UsageError, errorMessage, throwIfAborted } from '../errors.js';
import { sleep } from '../sleep.js';
import { formatDuration } from '../config/duration.js';
import { isNotFound, isPermissionRefused, type Storage } from '../storage/storage.js';
import { keys } from '../format/manifest.js';
import { parseDocumentJson } from '../format/document.js';
import type { Notice, Reporter } from './events.js';
import { ownStart, parseStart, pidReusedSince, processRuns, startDiffers } from '../format/process-alive.js';

export const DEFAULT_LEASE_MS = 30 * 60 * 1000;

const lockSchema = z.object({
  host: z.string(),
  pid: z.number().int(),
  command: z.string(),
  startedAt: z.string(),
  refreshedAt: z.string(),
  leaseMs: z.number().int().positive(),
  /** A prune, once it has planned: the points it removes. Readers of other points need not wait for it. */
  removing: z.array(z.string().max(64)).max(10_000_000).optional(),
  /** A reader that says: the points it reads (each with its chain). Absent: it may read any. */
  reads: z.array(z.string().max(64)).max(10_000_000).optional(),
  /** Unique to one holding of the lock: its holder checks the stored lock still has it before each step that commits or deletes. */
  token: z.string().max(128).optional(),
  /** When the holder's process started, `<ticks>-<boot>` (see ProcessStart), where the system says: tells it from a later process given its pid whatever the clock does. */
  processStart: z.string().max(64).optional(),
});
export type LockInfo = z.infer<typeof lockSchema>;

export interface LockStatus {
  info: LockInfo;
  stale: boolean;
  /** Why it is stale, when it is. */
  reason?: string;
  /** The lock document does not read (damaged, empty): `info` names no holder, and the lock is stale. */
  unreadable?: true;
}

export function describeLock(info: LockInfo): string {
  return `${info.command} on ${info.host}, pid ${info.pid}, since ${info.startedAt}`;
}

/** How readers judge staleness; the holder's recorded lease applies when unset. */
export interface StalenessOptions {
  /** A lock whose lease was not refreshed for this long is stale. */
  staleAfterMs?: number;
  host?: string;
  alive?: (pid: number) => boolean;
  /** When the process with this pid started (ms), where the system says. */
  startedAt?: (pid: number) => number | undefined;
}

/** How often a holder with this lease refreshes it. */
export function refreshInterval(leaseMs: number): number {
  return Math.max(1000, Math.min(60_000, Math.floor(leaseMs / 3)));
}

/**
 * How long a lock of lease `leaseMs` may go unrefreshed before it is stale: `staleAfterMs` (lock.staleAfter), or the
 * lease; never less than two of its holder's refresh intervals, so that a live holder is not judged stale between two.
 */
export function staleLimit(leaseMs: number, staleAfterMs?: number): number {
  return Math.max(staleAfterMs ?? leaseMs, Math.min(leaseMs, 2 * refreshInterval(leaseMs)));
}

/**
 * Pure staleness rule: the owner is gone from this host, or its lease has not
 * been refreshed for `staleAfterMs` (default: the lease the holder recorded).
 * A threshold shorter than two of the holder's refresh intervals is raised to
 * that, so a live holder is never judged stale between two refreshes.
 */
export function lockStaleness(info: LockInfo, now: Date, options: StalenessOptions = {}): string | undefined {
  const host = options.host ?? os.hostname();
  const alive = options.alive ?? processRuns;
  if (info.host === host) {
    if (!alive(info.pid)) return `process ${info.pid} no longer runs on ${host}`;
    // The pid was given again (a reboot, a container whose every run has the same pid): its holder is gone.
    // Told by the process's start as the system counts it where the lock records it, so that a clock stepped
    // while the holder runs does not make it look gone; by the times otherwise.
    const differs = options.startedAt ? undefined : startDiffers(info.pid, parseStart(info.processStart));
    if (differs) return `process ${info.pid} no longer runs on ${host}: that pid is now another process's`;
    const started = differs === undefined ? pidReusedSince(info.pid, Date.parse(info.startedAt), options.startedAt) : undefined;
    if (started !== undefined) {
      return `process ${info.pid} no longer runs on ${host}: that pid is now another process's, started at ${new Date(started).toISOString()}`;
    }
  }
  const refreshed = Date.parse(info.refreshedAt);
  const limit = staleLimit(info.leaseMs, options.staleAfterMs);
  if (Number.isFinite(refreshed) && now.getTime() - refreshed > limit) {
    return `its lease was last refreshed at ${info.refreshedAt}, more than ${describeLimit(limit)} ago`;
  }
  return undefined;
}

function describeLimit(ms: number): string {
  return ms >= 120_000 ? `${Math.round(ms / 60000)} min` : `${Math.round(ms / 1000)} s`;
}

export async function readLock(storage: Storage, options: StalenessOptions = {}, key: string = keys.lock): Promise<LockStatus | undefined> {
  const stored = await readStoredLock(storage, options, key);
  return stored && statusOf(stored);
}

/** A lock as read, with its bytes: what a conditional replace or removal of exactly that document compares with. */
export interface StoredLock extends LockStatus {
  raw: Buffer;
}

const statusOf = ({ info, stale, reason, unreadable }: StoredLock): LockStatus => ({ info, stale, reason, ...(unreadable ? { unreadable } : {}) });

export async function readStoredLock(storage: Storage, options: StalenessOptions = {}, key: string = keys.lock): Promise<StoredLock | undefined> {
  let raw: Buffer;
  try {
    raw = await storage.getDocument(key);
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
  let info: LockInfo;
  try {
    info = lockSchema.parse(parseDocumentJson(raw, key));
  } catch {
    // A lock nobody can read can't be proven live; treat it as stale.
    info = { host: '?', pid: 0, command: '?', startedAt: '?', refreshedAt: new Date(0).toISOString(), leaseMs: 1 };
    return { info, stale: true, reason: 'the lock document is unreadable', unreadable: true, raw };
  }
  const reason = lockStaleness(info, new Date(), options);
  return { info, stale: reason !== undefined, reason, raw };
}

/**
 * Removes the lock `judged` (`unlock`), unless another process has replaced
 * it since it was read: a stale lock taken over meanwhile stays with its new
 * holder. Returns whether it was removed. The document is compared, then
 * deleted: a replacement in the instant between the two is not seen, and its
 * holder then finds its lock gone at its next check and stops.
 */
export async function removeLock(storage: Storage, judged: StoredLock): Promise<boolean> {
  const now = await readStoredLock(storage);
  if (!now || !now.raw.equals(judged.raw)) return false;
  await storage.delete([keys.lock]);
  return true;
}

/** The repository lock was taken over by another process, or removed by `unlock --force`, while this one held it. */
export class LockLostError extends LockedError {}

export interface HeldLock {
  info: LockInfo;
  /** Set when a stale lock was taken over to get this one. */
  tookOver?: LockStatus;
  /**
   * Reads the lock and throws LockLostError unless it is still this holder's
   * (its token). Call before each step that commits or deletes: a holder that
   * was paused (a suspended VM, Ctrl-Z, a hung mount) for longer than others'
   * staleness threshold has been taken over, and the new holder may already
   * have removed this one's data as leftovers.
   */
  check(): Promise<void>;
  /** Throws LockLostError when the lease refresh has found the lock lost (no request). */
  throwIfLost(): void;
  /** Records in the lock the points this holder (a prune) removes, before it removes any. */
  announce(removing: readonly string[]): Promise<void>;
  /** Removes the lock, if it is still this holder's. */
  release(): Promise<void>;
}

/** The commands that take --retry-lock (and lock.retry). */
const RETRY_LOCK_COMMANDS = new Set(['backup', 'prune']);

export interface LockWait {
  /** How long to wait for a live holder to finish before failing with exit 4 (restic's --retry-lock); default not at all. */
  retryForMs?: number;
  signal?: AbortSignal;
  /** Told once, when the lock is found held by a live process and there is time to wait. */
  onWait?: (holder: LockStatus) => void;
}

/** How often a command waiting `waitMs` for the lock looks again: hosts whose cron jobs start together are spread out, and a short wait is not a busy loop. */
export function lockPollMs(waitMs: number): number {
  return Math.min(5000, Math.max(100, waitMs / 20));
}

/**
 * Takes the repository's exclusive lock (backups, prunes). A live holder makes
 * this fail with exit 4, at once or after `retryForMs` of waiting for it; a
 * stale one is taken over and reported. The lease is refreshed while the lock
 * is held, so a crashed holder on another host is recognised once its lease
 * runs out.
 */
export async function acquireLock(storage: Storage, command: string, leaseMs = DEFAULT_LEASE_MS, options: StalenessOptions & LockWait = {}): Promise<HeldLock> {
  const waitMs = options.retryForMs ?? 0;
  const deadline = Date.now() + waitMs;
  const pollMs = lockPollMs(waitMs);
  for (let attempt = 1; ; attempt++) {
    const outcome = await tryLock(storage, command, leaseMs, options);
    if ('held' in outcome) return outcome.held;
    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      throw new LockedError(`the repository is locked by ${describeLock(outcome.busy.info)}${waitMs > 0 ? `, still after waiting ${formatDuration(waitMs)}` : ''}`, {
        hint:
          waitMs > 0
            ? 'wait longer with --retry-lock (or lock.retry); if that process is gone, run `lifeboat unlock`'
            : RETRY_LOCK_COMMANDS.has(command)
              ? 'wait for it to finish, or let the command wait with --retry-lock 30m; if that process is gone, run `lifeboat unlock`'
              : // key remove and key passwd take no --retry-lock: a hint to use it would end in an unknown option.
                'wait for it to finish and run this again; if that process is gone, run `lifeboat unlock`',
      });
    }
    if (attempt === 1) options.onWait?.(outcome.busy);
    await sleep(Math.min(remaining, pollMs * (0.5 + Math.random())), options.signal);
    throwIfAborted(options.signal);
  }
}

/** What a writing command (backup, prune) takes the lock with: staleness, how long to wait, and a notice when it waits. */
export function writerLockOptions(o: WriterLockOptions, reporter: Reporter): StalenessOptions & LockWait {
  return {
    staleAfterMs: o.lockStaleAfterMs,
    retryForMs: o.lockRetryMs,
    signal: o.signal,
    onWait: (holder) =>
      reporter.notice?.({ level: 'info', code: 'lock-wait', message: `the repository is locked by ${describeLock(holder.info)}; waiting up to ${formatDuration(o.lockRetryMs ?? 0)} for it` }),
  };
}

/** What a writing command says about how to take the lock. */
export interface WriterLockOptions {
  lockStaleAfterMs?: number;
  lockRetryMs?: number;
  signal?: AbortSignal;
}

/** What a writer says of a stale lock it took over (`took over`), or that a dry run finds and the command would take over. */
export function staleLockNotice(stale: LockStatus, verb: 'took over' | 'would take over'): Notice {
  const message = stale.unreadable ? `${verb} the repository lock, whose document was unreadable (damaged or empty)` : `${verb} a stale lock of ${describeLock(stale.info)} (${stale.reason})`;
  return { level: 'warning', code: 'stale-lock', message };
}

/** Takes the repository lock for a writing command (backup, prune), and reports a stale lock it took over. */
export async function acquireWriterLock(storage: Storage, command: string, options: WriterLockOptions, reporter: Reporter): Promise<HeldLock> {
  const lock = await acquireLock(storage, command, undefined, writerLockOptions(options, reporter));
  if (lock.tookOver) reporter.notice?.(staleLockNotice(lock.tookOver, 'took over'));
  // Where it fails (no room), the room kept for a prune is missing: the writer's own writes say so.
  await storage.keepReserve().catch(() => undefined);
  return lock;
}

/** Runs `work` holding the repository lock as a writing command, and releases it however `work` ends. */
export async function whileHoldingLock<T>(storage: Storage, command: string, options: WriterLockOptions, reporter: Reporter, work: (lock: HeldLock) => Promise<T>): Promise<T> {
  const lock = await acquireWriterLock(storage, command, options, reporter);
  let failed = true;
  try {
    const result = await work(lock);
    failed = false;
    return result;
  } finally {
    await releaseAfter(lock, failed);
  }
}

/**
 * Releases a writer's lock once its work has ended. After work that failed, a
 * release that fails too (the server that failed the work has gone away) is
 * not reported: the work's error says what happened, and the lock left behind
 * is taken over as stale.
 */
export function releaseAfter(lock: HeldLock | undefined, failed: boolean): Promise<void> {
  const released = lock?.release() ?? Promise.resolve();
  return failed ? released.catch(() => undefined) : released;
}

/** What a lock of this process says of when it started (see ProcessStart), where the system says. */
export function ownProcessStart(): { processStart?: string } {
  const start = ownStart();
  return start ? { processStart: start } : {};
}

/** One attempt: the lock taken (a stale holder's taken over), or the live holder that has it. */
async function tryLock(storage: Storage, command: string, leaseMs: number, options: StalenessOptions): Promise<{ held: HeldLock } | { busy: LockStatus }> {
  const now = new Date().toISOString();
  const info: LockInfo = { host: os.hostname(), pid: process.pid, command, startedAt: now, refreshedAt: now, leaseMs, token: randomBytes(16).toString('hex'), ...ownProcessStart() };
  const written = encodeLock(info);
  // A prune is what frees space: on a disk the repository filled, its lock may take the room kept aside for it.
  const spendReserve = command === 'prune';
  if (await takingBack(storage, info, () => storage.putDocument(keys.lock, written, { ifAbsent: true, spendReserve }))) return { held: holdLock(storage, info, written) };
  const holder = await readStoredLock(storage, options);
  // Released between the two calls: the next attempt takes it.
  if (!holder) return tryLock(storage, command, leaseMs, options);
  const status = statusOf(holder);
  if (!holder.stale) return { busy: status };
  // Replaced only while it is still the stale lock judged: of two processes taking it over at once, one does.
  if (await takingBack(storage, info, () => storage.putDocument(keys.lock, written, { ifMatch: holder.raw, spendReserve }))) return { held: holdLock(storage, info, written, status) };
  const winner = await readLock(storage);
  if (!winner) return tryLock(storage, command, leaseMs, options);
  if (!winner.stale) return { busy: winner };
  throw new LockedError(`the repository was locked by another process while taking over a stale lock`);
}

const encodeLock = (info: LockInfo) => Buffer.from(JSON.stringify(info));

/**
 * A write of the lock whose answer never came (the command interrupted while it was on its way, the
 * connection lost) may have taken the lock all the same, on S3 where the server finishes a request it
 * has received: the lock would stay behind with nobody to release it, and keep other hosts' writers out
 * until it is stale. It is looked at, and removed when it holds this process's token; tried once.
 */
async function takingBack(storage: Storage, info: LockInfo, write: () => Promise<boolean>): Promise<boolean> {
  try {
    return await write();
  } catch (err) {
    try {
      const current = await readStoredLock(storage);
      if (current?.info.token === info.token) await storage.delete([keys.lock]);
    } catch {
      // What could not be removed stays, and is taken over as stale.
    }
    throw err;
  }
}

/** How often a rewrite of the lock is tried again when the lock holds this holder's token but not the bytes it last wrote. */
const REWRITE_ATTEMPTS = 3;

/**
 * The lock this process holds. Its lease is refreshed until it is released,
 * and every rewrite replaces only the bytes this holder last wrote, so a lock
 * another process took over (or `unlock --force` removed) is never written
 * back: the holder finds it lost, and check() says so.
 */
function holdLock(storage: Storage, info: LockInfo, written: Buffer, tookOver?: LockStatus): HeldLock {
  let stored = written;
  let refreshedAt = info.refreshedAt;
  let lost: LockLostError | undefined;
  let writes: Promise<unknown> = Promise.resolve();
  let timer: NodeJS.Timeout | undefined;
  let released = false;
  const loseTo = (holder: LockInfo | undefined): LockLostError => {
    clearInterval(timer);
    lost ??= lockLost(info.command, refreshedAt, holder);
    return lost;
  };
  /**
   * Runs the rewrites, the looks at the lock and its release one at a time: a
   * release between a rewrite's comparison and its write would have the
   * rewrite put back the lock just removed.
   */
  const inTurn = <T>(step: () => Promise<T>): Promise<T> => {
    const run = writes.then(step);
    writes = run.catch(() => undefined);
    return run;
  };
  /** Rewrites the lock with `change` over what this holder last wrote. */
  const rewrite = (change: (info: LockInfo) => void): Promise<void> =>
    inTurn(async () => {
      if (lost) throw lost;
      // A refresh that was due as the lock was released: there is nothing to refresh.
      if (released) return;
      change(info);
      const next = encodeLock(info);
      for (let attempt = 1; ; attempt++) {
        if (await storage.putDocument(keys.lock, next, { ifMatch: stored })) {
          stored = next;
          refreshedAt = info.refreshedAt;
          return;
        }
        // Not the bytes last written: another process's lock, or a write of ours that went through although it failed.
        const current = await readStoredLock(storage);
        if (!current || current.info.token !== info.token) throw loseTo(current?.info);
        if (attempt >= REWRITE_ATTEMPTS) throw new RuntimeFailure('the repository lock keeps changing under its holder');
        stored = current.raw;
      }
    });
  timer = setInterval(() => {
    // A refresh that fails is tried again at the next one; one that finds the lock lost stops them.
    rewrite((i) => {
      i.refreshedAt = new Date().toISOString();
    }).catch(() => undefined);
  }, refreshInterval(info.leaseMs));
  timer.unref();
  return {
    info,
    tookOver,
    check: () =>
      inTurn(async () => {
        if (lost) throw lost;
        const current = await readStoredLock(storage);
        if (!current || current.info.token !== info.token) throw loseTo(current?.info);
      }),
    throwIfLost() {
      if (lost) throw lost;
    },
    async announce(removing) {
      await rewrite((i) => {
        i.removing = [...removing];
      });
    },
    release: () => {
      clearInterval(timer);
      released = true;
      return inTurn(async () => {
        if (lost) return;
        try {
          // Compared, then deleted: a takeover in the instant between the two loses its lock, and finds that at its next check.
          const current = await readStoredLock(storage);
          if (current?.info.token === info.token) await storage.delete([keys.lock]);
        } catch (err) {
          // Nobody else holds the lock: this is a failure of the storage (exit 1), or a permission it refuses (exit 2, as
          // any), not a lock held by another process (exit 4).
          const stays = 'the lock stays until it is taken over: at once by the next writer on this host, since this process is gone; from another host once it is stale (lock.staleAfter)';
          const message = `${info.command} could not release the repository lock: ${errorMessage(err)}`;
          if (isPermissionRefused(err)) {
            throw new PermissionRefusedError(message, {
              cause: err,
              hint: `the storage does not let this user or these credentials delete in the repository (on S3, s3:DeleteObject on its locks/: see docs/S3.md); ${stays}. \`lifeboat unlock\` removes it when run by one that may delete`,
            });
          }
          throw new RuntimeFailure(message, { cause: err, hint: `${stays}. \`lifeboat unlock\` removes it once the repository can be reached` });
        }
      });
    },
  };
}

function lockLost(command: string, refreshedAt: string, holder: LockInfo | undefined): LockLostError {
  const how = holder
    ? `${describeLock(holder)} took it over, this process having last refreshed its lease at ${refreshedAt}`
    : 'it was removed (by `lifeboat unlock --force`, or by a process that took it over and has finished since)';
  return new LockLostError(`this ${command} lost the repository lock: ${how}`, {
    hint: 'it stopped before changing anything more; run it again. A process paused (a suspended VM, Ctrl-Z, a hung mount) for longer than lock.staleAfter is taken over by the next writer: raise lock.staleAfter (--lock-stale-after) where pauses that long are expected',
  });
}

/**
 * Rewrites a reader's registration as its lease runs, until stopped. A registration found gone was judged
 * stale (by a prune or `unlock`: the reader was stopped, or its host cut off, for longer than its lease)
 * and is written back; resumed() then says that a prune may have run meanwhile, without this reader.
 * Found by a create-if-absent, not by a replace of what was last written: a local repository's replace
 * makes a claim beside the document, which a prune would list among the readers.
 */
function keepRefreshed(storage: Storage, key: string, info: LockInfo): { resumed(): Promise<boolean>; stop(): Promise<void> } {
  let resumed = false;
  let refreshing: Promise<unknown> = Promise.resolve();
  const refresh = () => {
    refreshing = refreshing
      .then(async () => {
        info.refreshedAt = new Date().toISOString();
        const next = encodeLock(info);
        if (await storage.putDocument(key, next, { ifAbsent: true })) resumed = true;
        else await storage.putDocument(key, next);
      })
      .catch(() => undefined);
    return refreshing;
  };
  const timer = setInterval(refresh, refreshInterval(info.leaseMs));
  timer.unref();
  return {
    async resumed() {
      await refresh();
      return resumed;
    },
    async stop() {
      clearInterval(timer);
      await refreshing;
    },
  };
}

/** Commands whose exclusive lock readers must not run beside: they delete committed data. */
const DELETES_DATA = new Set(['prune']);

export interface ReadLock {
  /** Why no reader lock could be written (a read-only repository or credentials), when none was. */
  unlocked?: string;
  /** The prune this reader waited for, when it had to wait for one. */
  waitedFor?: LockInfo;
  /** Whether this reader's registration was found gone (judged stale) and written back; refreshes it to look. */
  resumed(): Promise<boolean>;
  release(): Promise<void>;
}

/** How often a reader waiting for a prune looks again. */
const PRUNE_POLL_MS = 1000;

/** How long a reader waits for a running prune when neither --retry-lock nor lock.retry says. */
export const READER_WAIT_MS = 30 * 60 * 1000;

/** How often a reader waiting `waitForMs` for a prune says that it still waits: about every minute, or a quarter of a shorter wait. */
function stillWaitingMs(waitForMs: number): number {
  return Math.min(60_000, Math.max(PRUNE_POLL_MS, waitForMs / 4));
}

/** What a reading command (restore, verify, drill, failover) is told about a running prune: how long to wait for it, and when its lock is stale. */
export interface ReaderLockOptions {
  /** How long to wait for a live prune before failing with exit 4 (--retry-lock, lock.retry); READER_WAIT_MS when unset. */
  lockRetryMs?: number;
  /** A prune's lock whose lease was not refreshed for this long is stale (--lock-stale-after, lock.staleAfter). */
  lockStaleAfterMs?: number;
  /** The command the reader registers as and speaks of ("this drill"), where it is not the one reading (a drill's restore). */
  readingFor?: string;
}

/** The options of a reading command that its registration as a reader takes. */
export const readerLockOptions = (o: ReaderLockOptions & { signal?: AbortSignal }) => ({ signal: o.signal, lockRetryMs: o.lockRetryMs, lockStaleAfterMs: o.lockStaleAfterMs, readingFor: o.readingFor });

export interface ReadLockOptions extends StalenessOptions {
  signal?: AbortSignal;
  /** How long to wait for a live prune before failing with exit 4; READER_WAIT_MS when unset. */
  waitForMs?: number;
  /** Called when the reader has to wait for a prune that holds the lock: once as it starts (`waitedMs` 0), then as stillWaitingMs says. */
  waiting?: (prune: LockInfo, waitedMs: number, waitForMs: number) => void;
  /**
   * The points the reader reads (each with the chain it depends on, which a
   * prune keeps with it). A prune that has said what it removes, none of
   * these, does not make it wait. Unset: every prune does.
   */
  reads?: readonly string[];
  /** Called when the reader may not remove its registration (credentials that may not delete), with why. */
  kept?: (reason: string) => void;
}

/**
 * Registers a reader (restore, verify, drill) under locks/readers/, so that a
 * prune does not delete what it reads: a prune that finds a live reader exits
 * 4, and a reader that finds a prune running waits for it to finish, up to
 * `waitForMs` (a prune alive but stuck, its lease refreshed by its timer while
 * its work hangs, would otherwise hold it for ever), then exits 4 naming it.
 * Each writes its own lock before looking for the other's, so of two that
 * start together at least one sees the other. Backups do not exclude readers:
 * they delete nothing a committed point uses. Where no lock can be written (a
 * repository mounted read-only, read-only credentials), the reader goes on
 * without one.
 */
export async function acquireReadLock(storage: Storage, command: string, options: ReadLockOptions = {}): Promise<ReadLock> {
  const now = new Date().toISOString();
  const info: LockInfo = {
    host: os.hostname(),
    pid: process.pid,
    command,
    startedAt: now,
    refreshedAt: now,
    leaseMs: DEFAULT_LEASE_MS,
    ...ownProcessStart(),
    ...(options.reads ? { reads: [...options.reads] } : {}),
  };
  const key = keys.reader(`${info.host.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 64)}-${info.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await storage.putDocument(key, encodeLock(info));
  } catch (err) {
    // A write whose answer never came (the command interrupted while it was on its way, the connection
    // lost) may have registered the reader all the same, on S3: left there, it would keep prunes on other
    // hosts out (exit 4) until stale. The key is this reader's own; tried once.
    await storage.delete([key]).catch(() => undefined);
    if (err instanceof InterruptedError) throw err;
    return { unlocked: errorMessage(err), resumed: async () => false, release: async () => undefined };
  }
  const lease = keepRefreshed(storage, key, info);
  const release = async () => {
    await lease.stop();
    await storage.delete([key]).catch((err) => {
      if (isPermissionRefused(err)) options.kept?.(errorMessage(err));
    });
  };
  const waitForMs = options.waitForMs ?? READER_WAIT_MS;
  const started = Date.now();
  let told = started;
  let waitedFor: LockInfo | undefined;
  try {
    for (;;) {
      const writer = await readLock(storage, options);
      if (!writer || writer.stale || !DELETES_DATA.has(writer.info.command)) break;
      const removing = writer.info.removing;
      if (removing && options.reads && !options.reads.some((id) => removing.includes(id))) break;
      const waited = Date.now() - started;
      if (waited >= waitForMs) throw pruneOutwaited(command, writer.info, waitForMs);
      // Registered already, so no new prune starts; this one was past its look at the readers.
      if (!waitedFor) options.waiting?.(writer.info, 0, waitForMs);
      else if (Date.now() - told >= stillWaitingMs(waitForMs)) {
        told = Date.now();
        options.waiting?.(writer.info, waited, waitForMs);
      }
      waitedFor = writer.info;
      await sleep(Math.min(PRUNE_POLL_MS, waitForMs - waited), options.signal);
      throwIfAborted(options.signal);
    }
  } catch (err) {
    await release();
    throw err;
  }
  return { waitedFor, resumed: () => lease.resumed(), release };
}

/** A reader that waited for a prune as long as it may: the prune, where it runs, and what to do. */
function pruneOutwaited(command: string, prune: LockInfo, waitedMs: number): LockedError {
  const elsewhere = prune.host !== os.hostname();
  return new LockedError(`the repository is being pruned by ${describeLock(prune)}${waitedMs > 0 ? `, still after waiting ${formatDuration(waitedMs)}` : ''}; this ${command} reads what it may remove`, {
    hint:
      `if that prune is stuck (a hung mount or storage, a process stopped with Ctrl-Z), end process ${prune.pid} on ${prune.host} and run this ${command} again` +
      (elsewhere ? ' (its lock stays until its lease runs out, lock.staleAfter: `lifeboat unlock --force` removes it once that process has ended)' : '') +
      '; otherwise let it wait longer with --retry-lock (or lock.retry)',
  });
}

/**
 * Runs `work` registered as a reader of the repository: after a running prune
 * (waited for up to `lockRetryMs`), and keeping new ones from starting until it is done.
 */
export async function whileReading<T>(
  storage: Storage,
  command: string,
  context: { signal?: AbortSignal; reporter: Reporter; warnings: Notice[]; reads?: readonly string[] } & ReaderLockOptions,
  work: () => Promise<T>,
): Promise<T> {
  const lock = await acquireReadLock(storage, command, {
    signal: context.signal,
    reads: context.reads,
    staleAfterMs: context.lockStaleAfterMs,
    waitForMs: context.lockRetryMs,
    waiting: (prune, waitedMs, waitForMs) => context.reporter.notice?.(waitingNotice(prune, waitedMs, waitForMs)),
    kept: (reason) =>
      context.reporter.notice?.({
        level: 'warning',
        code: 'read-lock-kept',
        message: `could not remove this ${command}'s registration as a reader (${reason}): a prune on another host takes it for a running reader and refuses to run (exit 4) until it is stale (lock.staleAfter, by default ${DEFAULT_LEASE_MS / 60_000} minutes from now); on S3, give the credentials s3:DeleteObject on the repository's locks/ (see docs/S3.md)`,
      }),
  });
  try {
    await throwIfPruned(storage, command, lock.waitedFor, context.reads ?? []);
    if (lock.unlocked) {
      const notice = unlockedNotice(lock.unlocked);
      context.warnings.push(notice);
      context.reporter.notice?.(notice);
    }
    return await work();
  } catch (err) {
    // Its registration judged stale while it was stopped, a prune may have removed what it read: that is what failed.
    if (!(err instanceof InterruptedError) && (await lock.resumed())) await throwIfPruned(storage, command, 'stopped', context.reads ?? []);
    throw err;
  } finally {
    await lock.release();
  }
}

/**
 * After waiting for a prune, or when a prune ran to its end between choosing the points and registering
 * (so that there was nothing to wait for), the points a reader was started on may be gone: reading them
 * now would report their removed volumes as damaged data (or verify nothing), so this says what happened.
 * Registered, the reader keeps any later prune from removing them.
 */
async function throwIfPruned(storage: Storage, command: string, prune: LockInfo | undefined | 'stopped', reads: readonly string[]): Promise<void> {
  for (const id of reads) {
    if (await storage.head(keys.point(id))) continue;
    const by =
      prune === 'stopped'
        ? `a prune while this ${command} was stopped for longer than its lease (its registration as a reader was taken for that of a process gone)`
        : prune
          ? `the prune (${describeLock(prune)}) this ${command} waited for`
          : `a prune that ran as this ${command} started`;
    throw new UsageError(`backup point ${id} was removed by ${by}`, {
      hint: 'see `lifeboat list` for the points that remain',
    });
  }
}

/** What a reader says as it starts waiting for a prune, and about every minute (see stillWaitingMs) while it still waits. */
function waitingNotice(prune: LockInfo, waitedMs: number, waitForMs: number): Notice {
  const message =
    waitedMs === 0
      ? `waiting for the ${describeLock(prune)} to finish, up to ${formatDuration(waitForMs)} (--retry-lock)`
      : `still waiting for the ${describeLock(prune)} to finish: ${formatDuration(waitedMs)} so far, up to ${formatDuration(waitForMs)}`;
  return { level: 'info', code: 'waiting-for-prune', message };
}

/** The warning of a reader that could not register itself. */
function unlockedNotice(reason: string): Notice {
  return {
    level: 'warning',
    code: 'no-read-lock',
    message: `could not register as a reader of the repository (${reason}); a prune started meanwhile could remove what is being read`,
  };
}

/** Readers registered under locks/readers/: the live ones, and the stale ones (which a prune removes). */
export async function readersOf(storage: Storage, options: StalenessOptions = {}): Promise<{ live: (LockStatus & { key: string })[]; stale: string[] }> {
  const live: (LockStatus & { key: string })[] = [];
  const stale: string[] = [];
  for await (const { key } of storage.list(keys.readersPrefix)) {
    const status = await readLock(storage, options, key);
    if (!status) continue;
    if (status.stale) stale.push(key);
    else live.push({ ...status, key });
  }
  return { live, stale };
}
