import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const WRITER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'sqlite-writer.js');
export const ROWS_PER_TXN = 40;
const requireHere = createRequire(import.meta.url);

export interface Writer {
  child: ChildProcess;
  /** The highest transaction it has said it committed. */
  committed: () => number;
  /** Resolves once a few transactions are committed. */
  ready: Promise<void>;
  /** Stops it; resolves with the last committed transaction. */
  stop: () => Promise<number>;
}

/** A process that keeps inserting rows in transactions of ROWS_PER_TXN rows into a SQLite database (checkpointing a WAL one every `checkpointEvery` transactions, when given; `pauseMs` between transactions, 1 unless given). */
export function startWriter(db: string, journalMode: string, options: { checkpointEvery?: number; pauseMs?: number } = {}): Writer {
  const args = [WRITER, db, journalMode, String(ROWS_PER_TXN), String(options.checkpointEvery ?? 0), String(options.pauseMs ?? 1)];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let committed = 0;
  let buffered = '';
  let onReady: () => void;
  const ready = new Promise<void>((resolve) => (onReady = resolve));
  child.stdout!.on('data', (c: Buffer) => {
    buffered += c.toString();
    const lines = buffered.split('\n');
    buffered = lines.pop()!;
    for (const line of lines) {
      const m = /^committed (\d+)$/.exec(line);
      if (m) committed = Number(m[1]);
      if (committed >= 5) onReady();
    }
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    child,
    committed: () => committed,
    ready,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
      return committed;
    },
  };
}

/**
 * Leaves `db` as a writer that crashed mid-transaction does: a process opens it in rollback-journal
 * mode, writes more rows than its one-page cache holds (so pages reach the file and the journal
 * holds what they replaced), and is killed before it commits. What it wrote is no committed state.
 */
export function crashMidTransaction(db: string): void {
  const script = `
    const Database = require(${JSON.stringify(requireHere.resolve('better-sqlite3'))});
    const db = new Database(${JSON.stringify(db)});
    db.pragma('journal_mode = delete');
    db.pragma('cache_size = 1');
    db.exec('CREATE TABLE IF NOT EXISTS uncommitted (data BLOB)');
    db.exec('BEGIN');
    const insert = db.prepare('INSERT INTO uncommitted VALUES (randomblob(1000))');
    for (let i = 0; i < 2000; i++) insert.run();
    process.kill(process.pid, 'SIGKILL');`;
  const r = spawnSync(process.execPath, ['-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.signal !== 'SIGKILL') throw new Error(`the writer did not crash as meant: ${r.stderr.toString()}`);
}
