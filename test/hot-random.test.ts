/**
 * Backups of a deployment that is being changed. Writer processes change its files at random
 * (rewritten in place, appended, truncated, replaced by a rename, deleted and made again, a
 * directory renamed, the live-version link switched), commit to two SQLite registries (one in
 * rollback-journal mode, one in WAL mode with checkpoints) and change what a command source
 * prints, while backups of every type, to a plain and an encrypted repository, some of them
 * --strict, are taken. Each point must hold only states that existed while it was taken (or
 * say which file changed as it was read), restore as its manifest says, and pass
 * verify --read-data; once the writers stop, an incremental restores the tree as it is.
 *
 * LIFEBOAT_TEST_SEED replays a run; LIFEBOAT_TEST_STEPS sets how many backups are taken.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createHash } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { runChild, type CliRun } from './helpers/cli.js';
import { compareSnapshots, prng, seedFromEnv, snapshotTree, tempDir, type SnapshotEntry } from './helpers/tree.js';
import { ROWS_PER_TXN, startWriter, type Writer } from './helpers/writer.js';
import { integrityCheck } from '../src/state/sqlite.js';

const FILE_WRITER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'helpers', 'file-writer.js');
const STEPS = Number(process.env.LIFEBOAT_TEST_STEPS) > 0 ? Number(process.env.LIFEBOAT_TEST_STEPS) : 8;
const PASSWORD = { LIFEBOAT_PASSWORD: 'hot-random' };
/** What a backup may warn of when files change under it; anything else is a defect. */
const CHANGE_WARNINGS = new Set(['file-changed-during-read', 'file-vanished', 'unreadable']);

/** One state of one path, as the file writer logged it. */
interface State {
  p: string;
  h?: string | null;
  s?: number;
  link?: string | null;
  t0: number;
  t1: number;
}

async function readLog(file: string): Promise<Map<string, State[]>> {
  const byPath = new Map<string, State[]>();
  for (const line of (await fsp.readFile(file, 'utf8')).split('\n')) {
    if (line === '') continue;
    const s = JSON.parse(line) as State;
    let list = byPath.get(s.p);
    if (!list) byPath.set(s.p, (list = []));
    list.push(s);
  }
  return byPath;
}

/** Whether `p` was in a state that `matches` at some time between `from` and `to`. */
function heldDuring(states: readonly State[] | undefined, matches: (s: State) => boolean, from: number, to: number): boolean {
  if (!states) return false;
  return states.some((s, i) => matches(s) && s.t0 <= to && (i + 1 === states.length || states[i + 1]!.t1 >= from));
}

function startFileWriter(work: string, seed: number, log: string): { child: ChildProcess; ready: Promise<void>; stop: () => Promise<void> } {
  const child = spawn(process.execPath, [FILE_WRITER, work, String(seed), log], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = once(child, 'exit');
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (c: Buffer) => {
      if (c.toString().includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`the file writer exited (${code}) before it was ready`)));
  });
  return {
    child,
    ready,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

interface ShownEntry {
  source: string;
  path: string;
  type: 'file' | 'dir' | 'symlink';
  size: number;
  mode: number;
  mtime: string;
  sha256: string | null;
  target: string | null;
  storedIn: string | null;
}

interface Shown {
  id: string;
  entries: ShownEntry[];
  warnings: { code: string; path?: string; message: string }[];
}

/** What a restore of source `source` of a point must hold, as snapshotTree sees a tree. */
function expectedTree(shown: Shown, source: string): Map<string, SnapshotEntry> {
  const out = new Map<string, SnapshotEntry>();
  for (const e of shown.entries) {
    if (e.source !== source) continue;
    if (e.type === 'symlink') out.set(e.path, { type: 'symlink', mode: 0, size: 0, target: e.target!, mtimeMs: 0 });
    else out.set(e.path, { type: e.type, mode: e.mode, size: e.type === 'file' ? e.size : 0, ...(e.type === 'file' ? { sha256: e.sha256! } : {}), mtimeMs: Date.parse(e.mtime) });
  }
  return out;
}

/** The transactions a copy of a registry holds: each must be whole, and they must be 1..n. */
function committedIn(db: string): number {
  assert.equal(integrityCheck(db), 'ok', `${db} passes integrity_check`);
  const conn = new Database(db, { readonly: true });
  try {
    const groups = conn.prepare('SELECT txn, count(*) AS n FROM t GROUP BY txn ORDER BY txn').all() as { txn: number; n: number }[];
    groups.forEach((g, i) => {
      assert.equal(g.txn, i + 1, `${db}: transaction ${i + 1} is missing while ${g.txn} is there`);
      assert.equal(g.n, ROWS_PER_TXN, `${db}: transaction ${g.txn} holds ${g.n} rows of ${ROWS_PER_TXN}`);
    });
    return groups.length;
  } finally {
    conn.close();
  }
}

test('backups taken while writers change the deployment hold only states that existed, restore as their manifests say, and an incremental after the writers stop restores the tree as it is', { timeout: 30 * 60_000 }, async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed} (replay with LIFEBOAT_TEST_SEED=${seed}; more backups with LIFEBOAT_TEST_STEPS, now ${STEPS})`);
  console.log(`# hot-random: seed ${seed}, ${STEPS} backups`);
  const rand = prng(seed);
  const work = await tempDir();
  const log = path.join(work, 'writer.log');
  await fsp.mkdir(path.join(work, 'db'));
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    ['sources:', '  models: ./models', '  live: ./models/current', '  registry: { sqlite: ./db/wal.db }', '  ledger: { sqlite: ./db/journal.db }', '  counter: { command: "cat state/counter.txt" }', ''].join('\n'),
  );
  const repos = { plain: path.join(work, 'repo-plain'), encrypted: path.join(work, 'repo-encrypted') };
  const envOf = (repo: string) => (repo === repos.encrypted ? PASSWORD : {});
  const run = (repo: string, args: string[]): Promise<CliRun> => runChild(['--repo', repo, ...args], { cwd: work, env: envOf(repo) });
  assert.equal((await run(repos.plain, ['init'])).code, 0);
  assert.equal((await run(repos.encrypted, ['init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10'])).code, 0);

  const files = startFileWriter(work, seed, log);
  const registries: Record<'registry' | 'ledger', Writer> = {
    registry: startWriter(path.join(work, 'db', 'wal.db'), 'wal', { checkpointEvery: rand() < 0.5 ? 0 : 3 + Math.floor(rand() * 20), pauseMs: 10 }),
    ledger: startWriter(path.join(work, 'db', 'journal.db'), 'delete', { pauseMs: 10 }),
  };
  const points: { repo: string; id: string; from: number; to: number; committed: Record<string, number>; shown: Shown }[] = [];
  let writersStopped = false;
  const stopWriters = async () => {
    if (writersStopped) return;
    writersStopped = true;
    await Promise.all([files.stop(), registries.registry.stop(), registries.ledger.stop()]);
  };
  t.after(stopWriters);
  try {
    await Promise.all([files.ready, registries.registry.ready, registries.ledger.ready]);
    for (let step = 0; step < STEPS; step++) {
      const repo = rand() < 0.5 ? repos.plain : repos.encrypted;
      const type = (['full', 'diff', 'incr', 'incr'] as const)[Math.floor(rand() * 4)]!;
      const strict = rand() < 0.3;
      const committed = { registry: registries.registry.committed(), ledger: registries.ledger.committed() };
      const from = Date.now();
      const r = await run(repo, ['--json', 'backup', '--type', type, ...(strict ? ['--strict'] : [])]);
      const to = Date.now();
      const what = `step ${step}: ${type}${strict ? ' --strict' : ''} to ${path.basename(repo)}`;
      const warned = r.code === 0 ? ` (${r.json().warnings.map((w: { code: string }) => w.code).join(', ') || 'no warnings'})` : '';
      const refused = r.code === 0 ? '' : `: ${r.stderr.split('\n').find((l) => /strict|error/.test(l))}`;
      t.diagnostic(`${what}: exit ${r.code} in ${to - from} ms${warned}${refused}`);
      if (strict && r.code === 3) {
        assert.match(r.stderr, /--strict/, `${what}: refused for its warnings: ${r.stderr}`);
        continue;
      }
      assert.equal(r.code, 0, `${what}: ${r.stderr}`);
      const result = r.json();
      for (const w of result.warnings) assert.ok(CHANGE_WARNINGS.has(w.code), `${what}: a warning no change explains: ${JSON.stringify(w)}`);
      if (strict) assert.deepEqual(result.warnings, [], `${what}: --strict took a point with warnings`);
      const shown = await run(repo, ['--json', 'show', result.id]);
      assert.equal(shown.code, 0, shown.stderr);
      points.push({ repo, id: result.id, from, to, committed, shown: shown.json() });
    }
    await stopWriters();
    const states = await readLog(log);
    const finalCommitted = { registry: registries.registry.committed(), ledger: registries.ledger.committed() };

    for (const p of points) {
      const what = `point ${p.id} in ${path.basename(p.repo)}`;
      const changedWhileRead = new Set(p.shown.warnings.filter((w) => w.code === 'file-changed-during-read').map((w) => w.path));
      const inPoint = new Map(p.shown.entries.filter((e) => e.source === 'models').map((e) => [e.path, e]));
      for (const e of inPoint.values()) {
        const name = `models/${e.path}`;
        if (e.type === 'file' && !changedWhileRead.has(name)) {
          const held = heldDuring(states.get(name), (s) => s.h === e.sha256 && s.s === e.size, p.from, p.to);
          const from = e.storedIn === p.shown.id ? 'stored' : `taken unchanged from ${e.storedIn}`;
          assert.ok(held, `${what}: ${name} (${from}) holds ${e.size} bytes that it never held while the point was taken`);
        }
        if (e.type === 'symlink') {
          assert.ok(heldDuring(states.get(name), (s) => s.link === e.target, p.from, p.to), `${what}: ${name} -> ${e.target}, a link it never was then`);
          assert.equal(inPoint.get(path.posix.join(path.posix.dirname(e.path), e.target!))?.type, 'dir', `${what}: ${name} -> ${e.target}, which the point lacks`);
        }
      }
      assert.equal(inPoint.get('current')?.type, 'symlink', `${what}: the live-version link is in the point`);
      // The source under the link is read from one version, all of it: one the link named while the backup ran.
      const liveFiles = p.shown.entries.filter((x) => x.source === 'live' && x.type === 'file' && !changedWhileRead.has(`live/${x.path}`));
      const named = (states.get('models/current') ?? []).filter((s, i, all) => s.t0 <= p.to && (i + 1 === all.length || all[i + 1]!.t1 >= p.from));
      const readFrom = named.find((s) => liveFiles.every((e) => heldDuring(states.get(`models/${s.link}/${e.path}`), (v) => v.h === e.sha256 && v.s === e.size, p.from, p.to)));
      assert.ok(readFrom, `${what}: live holds files of no one version the link named then (${named.map((s) => s.link).join(', ')})`);
      const target = path.join(work, 'restored');
      await fsp.rm(target, { recursive: true, force: true });
      const restored = await run(p.repo, ['restore', p.id, '--target', target]);
      assert.equal(restored.code, 0, `${what}: ${restored.stderr}`);
      for (const source of ['models', 'live']) {
        assert.equal(compareSnapshots(expectedTree(p.shown, source), await snapshotTree(path.join(target, source))), undefined, `${what}: the restore of ${source} is not the point's manifest`);
      }
      for (const [name, file] of [['registry', 'wal.db'], ['ledger', 'journal.db']] as const) {
        const n = committedIn(path.join(target, name, file));
        assert.ok(n >= p.committed[name]! && n <= finalCommitted[name], `${what}: ${name} holds ${n} transactions, ${p.committed[name]} were committed before it began`);
      }
      const counter = await fsp.readFile(path.join(target, 'counter', 'stdout'));
      const digest = createHash('sha256').update(counter).digest('hex');
      assert.ok(heldDuring(states.get('state/counter.txt'), (s) => s.h === digest, p.from, p.to), `${what}: the command's output (${counter.toString().trim()}) was never the counter then`);
    }
    for (const repo of Object.values(repos)) {
      const verified = await run(repo, ['--json', 'verify', '--read-data']);
      assert.equal(verified.code, 0, `${path.basename(repo)}: ${verified.stdout}`);
    }

    // At rest, an incremental of each repository restores the tree byte for byte, and the registries as they are.
    const final = await snapshotTree(path.join(work, 'models'));
    const finalLive = await snapshotTree(await fsp.realpath(path.join(work, 'models', 'current')));
    const counter = await fsp.readFile(path.join(work, 'state', 'counter.txt'));
    for (const repo of Object.values(repos)) {
      const r = await run(repo, ['--json', 'backup', '--type', 'incr']);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(r.json().warnings, [], 'nothing changes any more');
      const target = path.join(work, 'restored');
      await fsp.rm(target, { recursive: true, force: true });
      const restored = await run(repo, ['restore', 'latest', '--target', target]);
      assert.equal(restored.code, 0, restored.stderr);
      assert.equal(compareSnapshots(final, await snapshotTree(path.join(target, 'models'))), undefined, `${path.basename(repo)}: the restore of the last incremental is not the tree`);
      assert.equal(compareSnapshots(finalLive, await snapshotTree(path.join(target, 'live'))), undefined, `${path.basename(repo)}: the restore of the last incremental is not the live version`);
      assert.equal(committedIn(path.join(target, 'registry', 'wal.db')), finalCommitted.registry);
      assert.equal(committedIn(path.join(target, 'ledger', 'journal.db')), finalCommitted.ledger);
      assert.deepEqual(await fsp.readFile(path.join(target, 'counter', 'stdout')), counter);
    }
  } finally {
    await stopWriters();
  }
  await fsp.rm(work, { recursive: true, force: true });
});
