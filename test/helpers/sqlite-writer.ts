/**
 * A process that keeps writing to a SQLite database: each transaction inserts
 * ROWS rows tagged with the transaction's number, then prints `committed N`.
 * Runs until SIGTERM. Usage: node sqlite-writer.js DB JOURNAL_MODE ROWS [CHECKPOINT [PAUSE_MS]]:
 * with CHECKPOINT, a WAL database is checkpointed (and its -wal truncated) after
 * every CHECKPOINT transactions (0: never), besides SQLite's own automatic
 * checkpoints; PAUSE_MS (default 1) passes between transactions.
 */
import Database from 'better-sqlite3';
import { keepingHandles } from '../../src/state/sqlite.js';

// Under Node 24 a statement of better-sqlite3 that is collected aborts the process: kept, as lifeboat keeps its own.
keepingHandles(Database);

const [file, journalMode = 'delete', rowsArg = '50', checkpointArg = '0', pauseArg = '1'] = process.argv.slice(2);
if (!file) throw new Error('usage: sqlite-writer DB [JOURNAL_MODE] [ROWS]');
const rows = Number(rowsArg);
const checkpointEvery = Number(checkpointArg);
const pauseMs = Number(pauseArg);
const db = new Database(file, { timeout: 20_000 });
db.pragma(`journal_mode = ${journalMode}`);
db.exec('CREATE TABLE IF NOT EXISTS t (txn INTEGER NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL)');
const insert = db.prepare('INSERT INTO t (txn, seq, payload) VALUES (?, ?, ?)');
let next = ((db.prepare('SELECT max(txn) AS m FROM t').get() as { m: number | null }).m ?? 0) + 1;
const txn = db.transaction((id: number) => {
  for (let i = 0; i < rows; i++) insert.run(id, i, Buffer.alloc(256, (id + i) & 0xff));
});

let stopping = false;
process.on('SIGTERM', () => {
  stopping = true;
});

function step(): void {
  if (stopping) {
    db.close();
    process.stdout.write('stopped\n');
    return;
  }
  txn(next);
  process.stdout.write(`committed ${next}\n`);
  if (checkpointEvery > 0 && next % checkpointEvery === 0) db.pragma('wal_checkpoint(TRUNCATE)');
  next++;
  setTimeout(step, pauseMs);
}
process.stdout.write('ready\n');
step();
