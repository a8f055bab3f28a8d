import * as os from 'node:os';
import { z } from 'zod';
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

/** Pure staleness rule: the owner is gone from this host, or its lease ran out. */
export function lockStaleness(info: LockInfo, now: Date, host = os.hostname(), alive = pidAlive): string | undefined {
  if (info.host === host && !alive(info.pid)) return `process ${info.pid} no longer runs on ${host}`;
  const refreshed = Date.parse(info.refreshedAt);
  if (Number.isFinite(refreshed) && now.getTime() - refreshed > info.leaseMs) {
    return `its lease was last refreshed at ${info.refreshedAt}, more than ${Math.round(info.leaseMs / 60000)} min ago`;
  }
  return undefined;
}

export async function readLock(storage: Storage): Promise<LockStatus | undefined> {
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
  const reason = lockStaleness(info, new Date());
  return { info, stale: reason !== undefined, reason };
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
export async function acquireLock(storage: Storage, command: string, leaseMs = DEFAULT_LEASE_MS): Promise<HeldLock> {
  const now = new Date().toISOString();
  const info: LockInfo = { host: os.hostname(), pid: process.pid, command, startedAt: now, refreshedAt: now, leaseMs };
  const encode = (i: LockInfo) => Buffer.from(JSON.stringify(i));
  let tookOver: LockStatus | undefined;
  if (!(await storage.putDocument(keys.lock, encode(info), { ifAbsent: true }))) {
    const holder = await readLock(storage);
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
  const refreshEvery = Math.max(1000, Math.min(60_000, Math.floor(leaseMs / 3)));
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
