import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import type BetterSqlite3 from 'better-sqlite3';
import { InterruptedError, RuntimeFailure, UsageError, errorMessage } from '../errors.js';
import { makeDirectories } from '../format/mkdirs.js';

// A native module loaded only when a SQLite source is backed up or restored, not by every command.
const requireAtRunTime = createRequire(import.meta.url);
let sqliteModule: typeof BetterSqlite3 | undefined;
function sqlite(): typeof BetterSqlite3 {
  return (sqliteModule ??= requireAtRunTime('better-sqlite3') as typeof BetterSqlite3);
}

/** How long the copy waits for a writer's lock before SQLite reports busy. */
const BUSY_TIMEOUT_MS = 10_000;
/** Whole attempts when the source stays busy beyond that. */
const ATTEMPTS = 5;

export interface SqliteCopy {
  pages: number;
  bytes: number;
  durationMs: number;
  /** The copy has no table, index or view: an empty file, or one named where the database was meant. */
  empty: boolean;
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
export async function copySqlite(name: string, database: string, destination: string, signal?: AbortSignal): Promise<SqliteCopy> {
  const started = Date.now();
  try {
    const st = await fsp.stat(database);
    if (!st.isFile()) throw new UsageError(`source ${name}: ${database} is not a file`);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`source ${name}: cannot read the SQLite database ${database}: ${errorMessage(err)}`);
  }
  try {
    return await retryWhileBusy(
      signal,
      async () => {
        await fsp.rm(destination, { force: true });
        const source = new (sqlite())(database, { readonly: true, fileMustExist: true, timeout: BUSY_TIMEOUT_MS });
        let pages: number;
        try {
          pages = await onlineBackup(source, destination);
        } finally {
          source.close();
        }
        return { pages, ...(await seal(destination)), durationMs: Date.now() - started };
      },
      {
        failed: (err) => {
          if (err instanceof RuntimeFailure) return err;
          // A file of something else (a dump, a log, another store's data) named where the database was meant.
          if ((err as { code?: string }).code === 'SQLITE_NOTADB') {
            return new UsageError(`source ${name}: ${database} is not a SQLite database`, { cause: err, hint: `check the file that sources.${name}.sqlite names` });
          }
          return new RuntimeFailure(`source ${name}: online backup of ${database} failed: ${errorMessage(err)}`, { cause: err });
        },
        stayedLocked: (last) =>
          new RuntimeFailure(`source ${name}: ${database} stayed locked by a writer through ${ATTEMPTS} attempts: ${errorMessage(last)}`, {
            hint: 'a transaction that holds the database for minutes blocks a consistent copy; use a pre-backup hook to pause it',
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
  let keptAs: string | undefined;
  if (await fsp.stat(database).then((st) => st.size > 0, () => false)) {
    keptAs = await unusedName(`${database}.lifeboat-replaced-${new Date().toISOString().replace(/[-:]/g, '')}`);
    await copySqlite(name, database, keptAs, signal).catch(async (err: unknown) => {
      if ((err as { cause?: { code?: string } }).cause?.code !== 'SQLITE_NOTADB') throw err;
      // What is there is no database any more (overwritten, its header damaged): the very case for
      // putting the state back. It is kept as it is, moved aside with its journal, which must not be
      // applied to the restored database.
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
    signal,
    async () => {
      const source = new (sqlite())(copy, { readonly: true, fileMustExist: true });
      try {
        return await onlineBackup(source, database);
      } finally {
        source.close();
      }
    },
    {
      failed: (err) => new RuntimeFailure(`source ${name}: restoring ${database} failed: ${errorMessage(err)}`, { cause: err }),
      stayedLocked: (last) =>
        new RuntimeFailure(`source ${name}: ${database} stayed locked by another connection through ${ATTEMPTS} attempts: ${errorMessage(last)}`, {
          hint: `stop what holds a long transaction on it (the deactivate hook can), or copy it back by hand from the point (restore --target DIR --include ${name})`,
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
 * Runs `attempt` again while the database stays locked by another connection,
 * a few times with a growing pause; any other failure, or the last lock, is
 * thrown as the caller words it.
 */
async function retryWhileBusy<T>(signal: AbortSignal | undefined, attempt: () => Promise<T>, errors: { failed(err: unknown): Error; stayedLocked(last: unknown): Error }): Promise<T> {
  let lastError: unknown;
  for (let n = 1; n <= ATTEMPTS; n++) {
    if (signal?.aborted) throw new InterruptedError();
    try {
      return await attempt();
    } catch (err) {
      if (!isBusy(err)) throw errors.failed(err);
      lastError = err;
    }
    await new Promise((resolve) => setTimeout(resolve, 200 * n));
  }
  throw errors.stayedLocked(lastError);
}

/** Makes the copy a single rollback-journal file and checks it; returns its size, and whether it holds no schema at all. */
async function seal(file: string): Promise<{ bytes: number; empty: boolean }> {
  const db = new (sqlite())(file, { fileMustExist: true });
  let empty: boolean;
  try {
    db.pragma('journal_mode = DELETE');
    const result = db.pragma('quick_check', { simple: true });
    if (result !== 'ok') throw new RuntimeFailure(`the copy ${file} fails quick_check: ${String(result)}`);
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
