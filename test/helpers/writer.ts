import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const WRITER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'sqlite-writer.js');
export const ROWS_PER_TXN = 40;

export interface Writer {
  child: ChildProcess;
  /** The highest transaction it has said it committed. */
  committed: () => number;
  /** Resolves once a few transactions are committed. */
  ready: Promise<void>;
  /** Stops it; resolves with the last committed transaction. */
  stop: () => Promise<number>;
}

/** A process that keeps inserting rows in transactions of ROWS_PER_TXN rows into a SQLite database. */
export function startWriter(db: string, journalMode: string): Writer {
  const child = spawn(process.execPath, [WRITER, db, journalMode, String(ROWS_PER_TXN)], { stdio: ['ignore', 'pipe', 'inherit'] });
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
