import * as os from 'node:os';
import * as z from 'zod';
import { LockedError, errorMessage } from '../errors.js';
import { isNotFound, type Storage } from '../storage/storage.js';
import { keys } from '../format/manifest.js';

export const DEFAULT_LEASE_MS = 30 * 60 * 1000;

const lockSchema = z.object({
  host: z.string(),
  pid: z.number().int(),
  command: z.string(),
  startedAt: z.string(),
  refreshedAt: z.string(),
  leaseMs: z.number().int().positive(),
});
export type LockInfo = z.infer<typeof lockSchema>;

export interface LockStatus {
  info: LockInfo;
  stale: boolean;
  /** Why it is stale, when it is. */
  reason?: string;
}

export function describeLock(info: LockInfo): string {
  return `${info.command} on ${info.host}, pid ${info.pid}, since ${info.startedAt}`;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** How readers judge staleness; the holder's recorded lease applies when unset. */
export interface StalenessOptions {
  /** A lock whose lease was not refreshed for this long is stale. */
  staleAfterMs?: number;
  host?: string;
  alive?: (pid: number) => boolean;
}

/** How often a holder with this lease refreshes it. */
export function refreshInterval(leaseMs: number): number {
  return Math.max(1000, Math.min(60_000, Math.floor(leaseMs / 3)));
}

/**
 * Pure staleness rule: the owner is gone from this host, or its lease has not
 * been refreshed for `staleAfterMs` (default: the lease the holder recorded).
 * A threshold shorter than two of the holder's refresh intervals is raised to
 * that, so a live holder is never judged stale between two refreshes.
 */
export function lockStaleness(info: LockInfo, now: Date, options: StalenessOptions = {}): string | undefined {
  const host = options.host ?? os.hostname();
  const alive = options.alive ?? pidAlive;
  if (info.host === host && !alive(info.pid)) return `process ${info.pid} no longer runs on ${host}`;
  const refreshed = Date.parse(info.refreshedAt);
  const limit = Math.max(options.staleAfterMs ?? info.leaseMs, Math.min(info.leaseMs, 2 * refreshInterval(info.leaseMs)));
  if (Number.isFinite(refreshed) && now.getTime() - refreshed > limit) {
    return `its lease was last refreshed at ${info.refreshedAt}, more than ${describeLimit(limit)} ago`;
  }
  return undefined;
}

function describeLimit(ms: number): string {
  return ms >= 120_000 ? `${Math.round(ms / 60000)} min` : `${Math.round(ms / 1000)} s`;
}

export async function readLock(storage: Storage, options: StalenessOptions = {}): Promise<LockStatus | undefined> {
  let raw: Buffer;
  try {
    raw = await storage.getDocument(keys.lock);
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
  let info: LockInfo;
  try {
    info = lockSchema.parse(JSON.parse(raw.toString('utf8')));
  } catch {
    // A lock nobody can read can't be proven live; treat it as stale.
    info = { host: '?', pid: 0, command: '?', startedAt: '?', refreshedAt: new Date(0).toISOString(), leaseMs: 1 };
    return { info, stale: true, reason: 'the lock document is unreadable' };
  }
  const reason = lockStaleness(info, new Date(), options);
  return { info, stale: reason !== undefined, reason };
}

/**
 * Removes the lock when it is stale by `options` (for writers whose engine
 * judges staleness by the recorded lease only). Returns what was removed.
 */
export async function clearStaleLock(storage: Storage, options: StalenessOptions): Promise<LockStatus | undefined> {
  const holder = await readLock(storage, options);
  if (!holder?.stale) return undefined;
  await storage.delete([keys.lock]);
  return holder;
}

export interface HeldLock {
  info: LockInfo;
  /** Set when a stale lock was taken over to get this one. */
  tookOver?: LockStatus;
  release(): Promise<void>;
}

/**
 * Takes the repository's exclusive lock (backups, prunes). A live holder makes
 * this fail at once with exit 4; a stale one is taken over and reported. The
 * lease is refreshed while the lock is held, so a crashed holder on another
 * host is recognised once its lease runs out.
 */
export async function acquireLock(storage: Storage, command: string, leaseMs = DEFAULT_LEASE_MS, options: StalenessOptions = {}): Promise<HeldLock> {
  const now = new Date().toISOString();
  const info: LockInfo = { host: os.hostname(), pid: process.pid, command, startedAt: now, refreshedAt: now, leaseMs };
  const encode = (i: LockInfo) => Buffer.from(JSON.stringify(i));
  let tookOver: LockStatus | undefined;
  if (!(await storage.putDocument(keys.lock, encode(info), { ifAbsent: true }))) {
    const holder = await readLock(storage, options);
    if (holder && !holder.stale) {
      throw new LockedError(`the repository is locked by ${describeLock(holder.info)}`, {
        hint: 'wait for it to finish; if that process is gone, run `lifeboat unlock`',
      });
    }
    tookOver = holder;
    await storage.delete([keys.lock]);
    if (!(await storage.putDocument(keys.lock, encode(info), { ifAbsent: true }))) {
      const winner = await readLock(storage);
      throw new LockedError(`the repository was locked by ${winner ? describeLock(winner.info) : 'another process'} while taking over a stale lock`);
    }
  }
  const refreshEvery = refreshInterval(leaseMs);
  let refreshing: Promise<unknown> = Promise.resolve();
  const timer = setInterval(() => {
    info.refreshedAt = new Date().toISOString();
    refreshing = storage.putDocument(keys.lock, encode(info)).catch(() => undefined);
  }, refreshEvery);
  timer.unref();
  return {
    info,
    tookOver,
    async release() {
      clearInterval(timer);
      await refreshing;
      try {
        const current = await readLock(storage);
        if (current && current.info.pid === info.pid && current.info.host === info.host && current.info.startedAt === info.startedAt) {
          await storage.delete([keys.lock]);
        }
      } catch (err) {
        throw new LockedError(`could not release the repository lock: ${errorMessage(err)}`);
      }
    },
  };
}
