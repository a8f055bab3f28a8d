import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { constants as fsConstants, statfsSync } from 'node:fs';
import { createRequire } from 'node:module';
import type BetterSqlite3 from 'better-sqlite3';
import { InterruptedError, RuntimeFailure, UsageError, errorMessage, fileSystemHint } from '../errors.js';
import { makeDirectories } from '../format/mkdirs.js';
import { sleep } from '../sleep.js';
import { quoteName, shellWord } from '../format/quote.js';

// A native module loaded only when a SQLite source is backed up or restored, not by every command.
const requireAtRunTime = createRequire(import.meta.url);
let sqliteModule: typeof BetterSqlite3 | undefined;
function sqlite(): typeof BetterSqlite3 {
  return (sqliteModule ??= keepingHandles(requireAtRunTime('better-sqlite3') as typeof BetterSqlite3));
}

/**
 * Every database, statement and backup object better-sqlite3 makes in this process, kept until it
 * ends. Built against Node 24's headers, each of them, when garbage-collected, takes itself off the
 * list of what Node cleans up at exit, and Node 24 aborts the process when that happens during a
 * collection (`Assertion failed: (env) != nullptr`, exit 134): a backup, restore or failover would
 * die halfway, whenever a collection came after a database was closed. Never collected, none is;
 * a command opens a few databases and prepares a few statements on each. Node 20 and 22 do not
 * abort, and the same is done there.
 */
const kept: object[] = [];

/** Makes `Database` keep what it makes (see `kept`); exported for tests, whose own databases live in the same process. */
export function keepingHandles(Database: typeof BetterSqlite3): typeof BetterSqlite3 {
  // The native module, loaded by the first database opened, is what makes each object.
  kept.push(new Database(':memory:'));
  const addon = Object.values(requireAtRunTime.cache).find((m) => m?.filename.endsWith('better_sqlite3.node'))?.exports as NativeSqlite | undefined;
  if (!addon || addon.keepsHandles) return Database;
  addon.keepsHandles = true;
  const NativeDatabase = addon.Database;
  const keeping = function (this: unknown, ...args: unknown[]) {
    return keep(new NativeDatabase(...args));
  } as unknown as NativeSqlite['Database'];
  keeping.prototype = NativeDatabase.prototype;
  addon.Database = keeping;
  keepResults(NativeDatabase.prototype, 'prepare');
  keepResults(NativeDatabase.prototype, 'backup');
  keepResults(addon.Statement.prototype, 'iterate');
  return Database;
}

interface NativeSqlite {
  Database: new (...args: unknown[]) => object;
  Statement: { prototype: Record<string, unknown> };
  keepsHandles?: boolean;
}

function keep<T>(handle: T): T {
  kept.push(handle as object);
  return handle;
}

function keepResults(prototype: Record<string, unknown>, method: string): void {
  const original = prototype[method] as (...args: unknown[]) => unknown;
  prototype[method] = function (this: unknown, ...args: unknown[]) {
    return keep(original.apply(this, args));
  };
}

/**
 * How long one try waits for a writer's lock before SQLite reports busy. SQLite waits inside the
 * call, where no signal is handled: kept short, so that Ctrl-C acts at once; the waiting is done
 * by trying again.
 */
const BUSY_TIMEOUT_MS = 250;
/** How long a copy for a backup waits for a writer to let go of the database. */
const COPY_PATIENCE_MS = 60_000;
/** How long putting a database back waits: a failover should not hang on a writer. */
const RESTORE_PATIENCE_MS = 3_000;

export interface SqliteCopy {
  pages: number;
  bytes: number;
  durationMs: number;
  /** The copy has no table, index or view: an empty file, or one named where the database was meant. */
  empty: boolean;
}

/**
 * SQLite says only that it is "unable to open database file" (SQLITE_CANTOPEN) when a file it makes,
 * a copy or its journal, cannot be made in `dir` because its file system has no room or no inode
 * left: that is the full disk it is, told as SQLITE_FULL. A copy takes two new files, the database
 * and its journal, and a copy that failed has removed the file it made: fewer than two inodes left
 * is no room.
 */
function asFull(err: unknown, dir: string): unknown {
  if ((err as { code?: string }).code !== 'SQLITE_CANTOPEN') return err;
  try {
    const st = statfsSync(dir);
    if (st.ffree >= 2 && st.bavail > 0) return err;
  } catch {
    return err;
  }
  return Object.assign(new Error('database or disk is full: no room or no inode left for a new file'), { code: 'SQLITE_FULL', reported: 'SQLITE_CANTOPEN', cause: err });
}

function isBusy(err: unknown): boolean {
  const code = (err as { code?: string }).code ?? '';
  return code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED');
}

/**
 * Runs the online backup of `source` into `destination` and returns the pages it copied. The
 * driver takes a first step that finds either side locked by another connection (SQLITE_BUSY) for
 * a finished copy of nothing: the destination then is untouched. Such a copy of a database that has
 * pages is thrown as the lock it is, so that the caller waits and tries again.
 */
async function onlineBackup(source: BetterSqlite3.Database, destination: string): Promise<number> {
  const expected = source.pragma('page_count', { simple: true }) as number;
  const { totalPages } = await source.backup(destination, { progress: () => 0x7fffffff });
  if (totalPages === 0 && expected > 0) throw Object.assign(new Error('database is locked'), { code: 'SQLITE_BUSY' });
  return totalPages;
}

/**
 * Copies a live SQLite database with SQLite's online backup API: all pages in
 * one step under one read transaction, so the copy is one committed state of
 * the database however hard other processes write to it (in WAL mode they are
 * not even held up). The copy is then switched to a rollback journal so it is
 * one self-contained file, and checked with `PRAGMA quick_check`.
 */
export async function copySqlite(
  name: string,
  database: string,
  destination: string,
  options: {
    signal?: AbortSignal;
    /** Told what the copy waits for or does to the live database, as it happens. */
    tell?: (message: string) => void;
    /**
     * Whether a transaction a crashed writer left unfinished (a hot journal) is rolled back in the
     * live database, as any SQLite connection that opens it for writing would; without, such a
     * database fails with SQLITE_READONLY_ROLLBACK.
     */
    rollBackHotJournal?: boolean;
    /** How long a writer's lock is waited for (default: a minute, for a backup). */
    patienceMs?: number;
    /** What to do about a lock held longer (default: the advice for a backup). */
    lockedHint?: string;
    /** The directory the copy is made under, named when its file system is full (default: the copy's own). */
    stagedIn?: string;
    /** Advice added to freeing space when that file system is full. */
    elsewhere?: string;
  } = {},
): Promise<SqliteCopy> {
  const started = Date.now();
  const patienceMs = options.patienceMs ?? COPY_PATIENCE_MS;
  try {
    const st = await fsp.stat(database);
    if (!st.isFile()) throw new UsageError(`source ${name}: ${quoteName(database)} is not a file`);
    // SQLite says only that it is "unable to open database file".
    await fsp.access(database, fsConstants.R_OK);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    const hint = (err as NodeJS.ErrnoException).code === 'EACCES' ? 'run the backup as a user who may read it, such as the one the server that writes it runs as' : undefined;
    throw new UsageError(`source ${name}: cannot read the SQLite database ${quoteName(database)}: ${errorMessage(err)}`, { hint });
  }
  try {
    return await retryWhileBusy(
      { signal: options.signal, patienceMs, onFirstBusy: () => options.tell?.(`${quoteName(database)} is locked by a writer; waiting up to ${patienceMs / 1000} s for it`) },
      async () => {
        const copyOnce = async () => {
          await fsp.rm(destination, { force: true });
          const source = new (sqlite())(database, { readonly: true, fileMustExist: true, timeout: BUSY_TIMEOUT_MS });
          try {
            return await onlineBackup(source, destination);
          } finally {
            source.close();
          }
        };
        let pages: number;
        try {
          pages = await copyOnce();
        } catch (err) {
          if ((err as { code?: string }).code !== 'SQLITE_READONLY_ROLLBACK' || !options.rollBackHotJournal) throw err;
          rollBackHotJournal(name, database);
          options.tell?.(`${quoteName(database)} held a transaction a writer left unfinished (${quoteName(`${path.basename(database)}-journal`)}); it was rolled back, as the next writer would have, and the copy holds the last committed state`);
          pages = await copyOnce();
        }
        return { pages, ...(await seal(destination)), durationMs: Date.now() - started };
      },
      {
        failed: (thrown) => {
          if (thrown instanceof RuntimeFailure) return thrown;
          const err = asFull(thrown, path.dirname(destination));
          // A file of something else (a dump, a log, another store's data) named where the database was meant.
          if ((err as { code?: string }).code === 'SQLITE_NOTADB') {
            return new UsageError(`source ${name}: ${quoteName(database)} is not a SQLite database`, { cause: err, hint: `check the file that sources.${name}.sqlite names` });
          }
          if ((err as { code?: string }).code === 'SQLITE_READONLY_DIRECTORY') {
            // A database in WAL mode that no process has open: reading it makes its -shm file, beside it.
            const dir = path.dirname(database);
            return new UsageError(`source ${name}: cannot read the SQLite database ${quoteName(database)} as this user: it is in WAL mode and no process has it open, so reading it needs its -wal and -shm files made beside it, in ${quoteName(dir)}, which this user may not write`, {
              cause: err,
              hint: `run the backup as a user who may write ${quoteName(dir)}, or while the server that writes the database has it open`,
            });
          }
          if ((err as { code?: string }).code === 'SQLITE_FULL') {
            // SQLite says "database or disk is full": what is full is where the copy is written, not the live database.
            const place = options.stagedIn ?? path.dirname(destination);
            const hint = fileSystemHint(err, place)!;
            // Named as SQLite reported it, so that the code a user searches for is the one SQLite gave.
            const reported = (err as { reported?: string }).reported;
            const why = reported ? `no space or no inode left on its file system (${reported})` : 'no space left on device (SQLITE_FULL)';
            return new RuntimeFailure(`source ${name}: the copy of ${quoteName(database)} does not fit in ${quoteName(place)}: ${why}`, {
              cause: err,
              hint: options.elsewhere ? `${hint}; ${options.elsewhere}` : hint,
            });
          }
          return new RuntimeFailure(`source ${name}: online backup of ${quoteName(database)} failed: ${errorMessage(err)}`, { cause: err });
        },
        stayedLocked: (last) =>
          new RuntimeFailure(`source ${name}: ${quoteName(database)} stayed locked by a writer for ${patienceMs / 1000} s: ${errorMessage(last)}`, {
            hint: options.lockedHint ?? 'a transaction that holds the database for minutes blocks a consistent copy; use a pre-backup hook to pause it',
          }),
      },
    );
  } catch (err) {
    await fsp.rm(destination, { force: true });
    throw err;
  }
}

export interface SqliteRestore extends SqliteCopy {
  /** Where the database's state from just before was kept, when there was one. */
  keptAs?: string;
}

/**
 * Copies a point's copy of a database back into the live database, with the
 * online backup API again: one write transaction, so readers and writers
 * of the live database see either the old state or the restored one, never a
 * mix, and a failure leaves the old state. The old state is first kept
 * beside it (`<database>.lifeboat-replaced-<time>`), since whatever was
 * written since the point was taken would otherwise be lost.
 */
export async function restoreSqlite(name: string, copy: string, database: string, signal?: AbortSignal): Promise<SqliteRestore> {
  const started = Date.now();
  const lockedHint = `stop what holds a long transaction on it (the deactivate hook can), or copy it back by hand from the point (restore --target DIR --include ${name})`;
  let keptAs: string | undefined;
  if (await fsp.stat(database).then((st) => st.size > 0, () => false)) {
    keptAs = await unusedName(`${database}.lifeboat-replaced-${new Date().toISOString().replace(/[-:]/g, '')}`);
    // A writer that holds the database locked would hold up the restore after it as well: the copy
    // kept aside waits no longer than the restore does.
    await copySqlite(name, database, keptAs, { signal, patienceMs: RESTORE_PATIENCE_MS, lockedHint }).catch(async (err: unknown) => {
      const code = (err as { cause?: { code?: string } }).cause?.code;
      if (code !== 'SQLITE_NOTADB' && code !== 'SQLITE_READONLY_ROLLBACK') throw err;
      // What is there is no database any more (overwritten, its header damaged), or holds a
      // transaction a crashed writer left unfinished: the very cases for putting the state back. It
      // is kept as it is, moved aside with its journal, which must not be applied to the restored
      // database (and which rolls the kept copy back when that is opened).
      for (const suffix of ['', '-wal', '-journal']) {
        await fsp.rename(`${database}${suffix}`, `${keptAs}${suffix}`).catch((e: NodeJS.ErrnoException) => {
          if (suffix === '' || e.code !== 'ENOENT') throw e;
        });
      }
      await fsp.rm(`${database}-shm`, { force: true });
    });
  } else {
    await makeDirectories(path.dirname(database));
  }
  const pages = await retryWhileBusy(
    { signal, patienceMs: RESTORE_PATIENCE_MS },
    async () => {
      const source = new (sqlite())(copy, { readonly: true, fileMustExist: true });
      try {
        return await onlineBackup(source, database);
      } finally {
        source.close();
      }
    },
    {
      failed: (err) => new RuntimeFailure(`source ${name}: restoring ${quoteName(database)} failed: ${errorMessage(err)}`, { cause: err, hint: fileSystemHint(err, path.dirname(database)) }),
      stayedLocked: (last) =>
        new RuntimeFailure(`source ${name}: ${quoteName(database)} stayed locked by another connection for ${RESTORE_PATIENCE_MS / 1000} s: ${errorMessage(last)}`, {
          hint: lockedHint,
        }),
    },
  );
  return { pages, bytes: (await fsp.stat(database)).size, durationMs: Date.now() - started, empty: pages === 0, ...(keptAs ? { keptAs } : {}) };
}

/** `base`, or `base-2`, `base-3` … when it is taken: a kept state is never overwritten. */
async function unusedName(base: string): Promise<string> {
  for (let n = 1; ; n++) {
    const name = n === 1 ? base : `${base}-${n}`;
    if (!(await fsp.stat(name).then(() => true, () => false))) return name;
  }
}

/**
 * Runs `attempt` again while the database stays locked by another connection, with a growing
 * pause, for up to `patienceMs`; any other failure, or the last lock, is thrown as the caller
 * words it. `onFirstBusy` is told once, when the first try finds the lock.
 */
async function retryWhileBusy<T>(
  wait: { signal?: AbortSignal; patienceMs: number; onFirstBusy?: () => void },
  attempt: () => Promise<T>,
  errors: { failed(err: unknown): Error; stayedLocked(last: unknown): Error },
): Promise<T> {
  const deadline = Date.now() + wait.patienceMs;
  for (let n = 1; ; n++) {
    if (wait.signal?.aborted) throw new InterruptedError();
    try {
      return await attempt();
    } catch (err) {
      if (!isBusy(err)) throw errors.failed(err);
      if (Date.now() >= deadline) throw errors.stayedLocked(err);
      if (n === 1) wait.onFirstBusy?.();
    }
    await sleep(Math.min(200 * n, 1000), wait.signal);
  }
}

/**
 * Opens the live database for writing and reads from it: SQLite then rolls back the transaction
 * its hot journal holds (a journal is hot only when no live connection holds the database for
 * writing, so nothing in progress is undone).
 */
function rollBackHotJournal(name: string, database: string): void {
  let db: BetterSqlite3.Database | undefined;
  try {
    db = new (sqlite())(database, { fileMustExist: true, timeout: BUSY_TIMEOUT_MS });
    db.pragma('schema_version', { simple: true });
  } catch (err) {
    if (isBusy(err)) throw err;
    throw new RuntimeFailure(
      `source ${name}: ${quoteName(database)} holds a transaction a writer left unfinished (${quoteName(`${database}-journal`)}), and it could not be rolled back: ${errorMessage(err)}`,
      { cause: err, hint: `starting the application that owns it rolls it back, as does \`sqlite3 ${shellWord(database)} "PRAGMA quick_check"\` run by a user who may write it` },
    );
  } finally {
    db?.close();
  }
}

/** Makes the copy a single rollback-journal file and checks it; returns its size, and whether it holds no schema at all. */
async function seal(file: string): Promise<{ bytes: number; empty: boolean }> {
  const db = new (sqlite())(file, { fileMustExist: true });
  let empty: boolean;
  try {
    db.pragma('journal_mode = DELETE');
    const result = db.pragma('quick_check', { simple: true });
    if (result !== 'ok') throw new RuntimeFailure(`the copy ${quoteName(file)} fails quick_check: ${String(result)}`);
    empty = db.prepare('SELECT 1 FROM sqlite_master LIMIT 1').get() === undefined;
  } finally {
    db.close();
  }
  return { bytes: (await fsp.stat(file)).size, empty };
}

/** Runs `PRAGMA integrity_check` on a database file; 'ok' when it is sound. */
export function integrityCheck(file: string): string {
  const db = new (sqlite())(file, { readonly: true, fileMustExist: true });
  try {
    const rows = db.pragma('integrity_check') as { integrity_check: string }[];
    return rows.map((r) => r.integrity_check).join('; ');
  } finally {
    db.close();
  }
}
