import { spawn } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { ExitCode, IntegrityError, errorMessage, throwIfAborted, workDirectoryFailure } from '../errors.js';
import { aheadOfClock, formatDuration } from '../config/duration.js';
import type { Manifest } from '../format/manifest.js';
import { unsafePathReason } from '../format/paths.js';
import { sha256OfFile } from '../format/checksum.js';
import { keepingWarnings, leftWorkDirectory, type Notice, type Reporter } from './events.js';
import { appendEvent } from './journal.js';
import type { Repository } from './repository.js';
import { restore } from './restore.js';
import { refuseWorkDirInRepository } from './restore-target.js';
import { readerLockOptions, type ReaderLockOptions } from './lock.js';
import { validateDirectory } from '../model/validate.js';
import { runPool } from './pool.js';
import { afterDelay } from '../sleep.js';
import { KILL_GRACE_MS, commandEnv, exitAndOutput, killGroup } from '../state/command.js';
import { makeWorkDirectory } from '../format/mkdirs.js';
import { removeTree } from '../format/remove-tree.js';
import { formatBytes } from '../format/units.js';

export type CheckName = 'restore' | 'checksums' | 'model' | 'smoke' | 'rto' | 'rpo';

/** The checks of a drill, in the order it makes them. */
const CHECK_ORDER: readonly CheckName[] = ['restore', 'checksums', 'model', 'smoke', 'rto', 'rpo'];

/** One check of a drill: one JUnit testcase. */
export interface DrillCheck {
  name: CheckName;
  /** `error`: the drill stopped during this check (interrupted, a storage error), only in the report of a drill that did not finish. */
  status: 'passed' | 'failed' | 'skipped' | 'error';
  durationMs: number;
  /** Why it failed or was skipped, or what it measured. */
  message: string;
  /** Captured output (the smoke command's stdout and stderr, tail). */
  output?: string;
}

export interface Objective {
  objectiveMs: number;
  achievedMs: number;
  met: boolean;
}

export interface DrillResult {
  ok: boolean;
  point: string;
  startedAt: string;
  /** Achieved recovery time: restore + checksum verification + smoke test. */
  rtoMs: number;
  /** Age of the point when the drill started: the data a disaster now would lose. */
  rpoMs: number;
  objectives: { rto: Objective | null; rpo: Objective | null };
  files: number;
  bytes: number;
  /** `timedOut`: it ran longer than --smoke-timeout and was killed. */
  smoke: { command: string; exitCode: number | null; signal: string | null; timedOut: boolean; durationMs: number; output: string } | null;
  problems: { check: CheckName; message: string }[];
  checks: DrillCheck[];
  /** 0 passed, 3 the data did not restore intact, 5 the smoke test or an objective failed. */
  exitCode: 0 | 3 | 5;
  /** The stored volume the restore found damaged or missing, when it names one. */
  damagedVolume?: string;
  /** What the drill warned about (a journal entry that could not be written, a volume whose CRC-32 differs …). */
  warnings: Notice[];
}

export interface DrillOptions extends ReaderLockOptions {
  smoke?: string;
  smokeTimeoutMs?: number;
  rtoMs?: number;
  rpoMs?: number;
  /** Where the temporary restore directory is made (default: the system's temporary directory). */
  workDir?: string;
  /** Working directory and environment of the smoke command. */
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  concurrency?: number;
  now?: () => Date;
  signal?: AbortSignal;
  reporter?: Reporter;
  /** Told of each check as it ends, so that a drill that does not finish can still report those it made. */
  onCheck?: (check: DrillCheck) => void;
  /** Told of the output a check captured (the smoke command's) as soon as it has it, an interrupted one's too. */
  onOutput?: (check: CheckName, output: string) => void;
}

/**
 * The checks of a drill that stopped with an error (interrupted, a storage error, or before it
 * started): those it made, then the one it was making, marked with the error and with what output
 * it had captured (an interrupted smoke command's), then the rest, skipped.
 */
export function unfinishedChecks(made: readonly DrillCheck[], error: string, durationMs: number, outputs: Partial<Record<CheckName, string>> = {}): DrillCheck[] {
  const done = new Set(made.map((c) => c.name));
  const rest = CHECK_ORDER.filter((name) => !done.has(name));
  const stopped = (name: CheckName): DrillCheck => {
    const output = outputs[name];
    return { name, status: 'error', durationMs, message: error, ...(output ? { output } : {}) };
  };
  return [...made, ...rest.map((name, i): DrillCheck => (i === 0 ? stopped(name) : { name, status: 'skipped', durationMs: 0, message: 'not run: the drill did not finish' }))];
}

const OUTPUT_TAIL = 64 * 1024;
export const DEFAULT_SMOKE_TIMEOUT_MS = 15 * 60 * 1000;

/**
 * A restore drill: restore the point into a temporary directory (every file's
 * SHA-256 checked as written) → read every restored file back and check it
 * against the manifest → run the smoke command on it → measure RTO and RPO
 * against the objectives → record it in the journal → remove the directory.
 * Check failures are results, not exceptions; usage and storage errors throw.
 */
export async function drill(repo: Repository, point: Manifest, options: DrillOptions = {}): Promise<DrillResult> {
  const now = options.now ?? (() => new Date());
  // Every warning told on the way is kept for the result too, as a backup's are: monitoring counts them.
  const warnings: Notice[] = [];
  const reporter = keepingWarnings(options.reporter, warnings);
  const started = now();
  const rpoMs = Math.max(0, started.getTime() - Date.parse(point.completedAt));
  // A point completed ahead of this host's clock has no age to measure: an RPO of 0 would meet any objective.
  const aheadMs = aheadOfClock(point.completedAt, started.getTime());
  const checks: DrillCheck[] = [];
  const problems: DrillResult['problems'] = [];
  const fail = (c: DrillCheck) => {
    checks.push(c);
    options.onCheck?.(c);
    if (c.status === 'failed') problems.push({ check: c.name, message: c.message });
  };
  await refuseWorkDirInRepository(repo.storage.location, options.workDir, 'the drill');
  const base = await makeWorkDirectory(options.workDir, 'lifeboat-drill-', (dir) => reporter.notice?.(leftWorkDirectory(dir))).catch((err: unknown) => {
    throw workDirectoryFailure(err, options.workDir, 'restore the point into for the drill');
  });
  const target = path.join(base, 'restore');
  let integrity = false;
  let damagedVolume: string | undefined;
  let smoke: DrillResult['smoke'] = null;
  let files = 0;
  let bytes = 0;
  const t0 = Date.now();
  try {
    // 1. Restore.
    let restored = false;
    try {
      // Through the page cache, as a failover restores: the read-back check and the smoke test then find the files in memory.
      const r = await restore(repo, point, { target, concurrency: options.concurrency, pageCache: true, disposable: true, ...readerLockOptions(options), readingFor: 'drill', reporter });
      files = r.files;
      bytes = r.bytes;
      restored = true;
      fail({ name: 'restore', status: 'passed', durationMs: Date.now() - t0, message: `restored ${r.files} file${r.files === 1 ? '' : 's'}, ${formatBytes(r.bytes)}` });
    } catch (err) {
      throwIfAborted(options.signal);
      // Damaged data is what a drill is there to find; a restore that could not run (no room in the work
      // directory, a storage error) says nothing of the point, and ends the drill with its own error and hint.
      if (!(err instanceof IntegrityError)) throw err;
      integrity = true;
      damagedVolume = err.volume;
      fail({ name: 'restore', status: 'failed', durationMs: Date.now() - t0, message: errorMessage(err) });
      fail({ name: 'checksums', status: 'failed', durationMs: 0, message: `the restore refused damaged data: ${errorMessage(err)}` });
    }

    // 2. Checksums, read back from what landed on disk.
    if (restored) {
      const t1 = Date.now();
      const { bad, closed } = await checkRestoredTree(point, target, options.signal);
      integrity = bad.length > 0;
      const unread = closed === 0 ? '' : `; ${closed} this user may not read back (closed to it by the modes the point records) were checked as they were written`;
      fail(
        bad.length === 0
          ? { name: 'checksums', status: 'passed', durationMs: Date.now() - t1, message: `${files - closed} files read back, every SHA-256 matches the manifest${unread}` }
          : { name: 'checksums', status: 'failed', durationMs: Date.now() - t1, message: `${bad.length} file(s) differ from the manifest: ${bad.slice(0, 5).join('; ')}` },
      );
    }

    // 3. The restored models load: headers, shards and vocabularies agree (bit-exact bytes can still be a model that will not load).
    let notRun = 'not run: the restored data is not intact';
    if (!restored || integrity) fail({ name: 'model', status: 'skipped', durationMs: 0, message: notRun });
    else {
      const t2 = Date.now();
      const models = await validateDirectory(target, { signal: options.signal });
      integrity = models.findings.length > 0;
      // Every byte restored as it was backed up: what fails is the model as it was then, not the data.
      if (integrity) notRun = 'not run: the restored models would not load';
      fail(
        models.findings.length === 0
          ? { name: 'model', status: 'passed', durationMs: Date.now() - t2, message: `${models.recognised.size} model file(s) recognised, all consistent` }
          : { name: 'model', status: 'failed', durationMs: Date.now() - t2, message: models.findings.slice(0, 5).map((f) => `${f.path}: ${f.reason}`).join('; ') },
      );
    }

    // 4. Smoke test on the restored deployment.
    if (!options.smoke) fail({ name: 'smoke', status: 'skipped', durationMs: 0, message: 'no smoke command given (--smoke)' });
    else if (!restored || integrity) fail({ name: 'smoke', status: 'skipped', durationMs: 0, message: notRun });
    else {
      smoke = await runSmoke(options.smoke, target, point, options);
      // Before an interruption ends the drill: what the command printed until then says how far it got.
      options.onOutput?.('smoke', smoke.output);
      throwIfAborted(options.signal);
      const limit = formatDuration(options.smokeTimeoutMs ?? DEFAULT_SMOKE_TIMEOUT_MS);
      const how = smoke.timedOut ? `ran longer than ${limit} (--smoke-timeout) and was killed` : smoke.signal ? `was killed by ${smoke.signal}` : `exited with ${smoke.exitCode}`;
      fail({
        name: 'smoke',
        status: smoke.exitCode === 0 ? 'passed' : 'failed',
        durationMs: smoke.durationMs,
        message: smoke.exitCode === 0 ? 'the smoke command passed' : `the smoke command ${how}`,
        output: smoke.output,
      });
    }
    const rtoMs = Date.now() - t0;

    // 4. Objectives.
    const objective = (name: 'rto' | 'rpo', limit: number | undefined, achieved: number, label: string): Objective | null => {
      const unknown = name === 'rpo' && aheadMs !== undefined ? `the point completed ${point.completedAt}, ${formatDuration(aheadMs)} ahead of this host's clock, so its age, the RPO, is not known: check the clocks` : undefined;
      if (limit === undefined) {
        fail({ name, status: 'skipped', durationMs: 0, message: `${unknown ?? `achieved ${label} ${formatDuration(achieved)}`}; no objective given (--${name})` });
        return null;
      }
      if (unknown !== undefined) {
        fail({ name, status: 'failed', durationMs: 0, message: unknown });
        return { objectiveMs: limit, achievedMs: achieved, met: false };
      }
      const met = achieved <= limit && (name === 'rpo' || problems.length === 0);
      const [got, allowed] = [formatDuration(achieved), formatDuration(limit)];
      const why = achieved > limit ? `achieved ${label} ${got} exceeds the objective of ${allowed}` : `achieved ${label} ${got}, but the recovery did not succeed`;
      fail({ name, status: met ? 'passed' : 'failed', durationMs: 0, message: met ? `achieved ${label} ${got} within the objective of ${allowed}` : why });
      return { objectiveMs: limit, achievedMs: achieved, met };
    };
    const rto = objective('rto', options.rtoMs, rtoMs, 'RTO');
    const rpo = objective('rpo', options.rpoMs, rpoMs, 'RPO');

    const exitCode = integrity ? ExitCode.integrity : problems.length > 0 ? ExitCode.health : ExitCode.ok;
    const result: DrillResult = {
      ok: problems.length === 0,
      point: point.id,
      startedAt: started.toISOString(),
      rtoMs,
      rpoMs,
      objectives: { rto, rpo },
      files,
      bytes,
      smoke,
      problems,
      checks,
      exitCode: exitCode as 0 | 3 | 5,
      ...(damagedVolume !== undefined ? { damagedVolume } : {}),
      warnings,
    };
    try {
      await appendEvent(repo.storage, {
        type: 'drill',
        point: point.id,
        outcome: result.ok ? 'ok' : 'failed',
        durationMs: rtoMs,
        detail: { rtoMs, rpoMs, objectives: result.objectives, smokeExitCode: smoke?.exitCode ?? null, problems },
      });
    } catch (err) {
      reporter.notice?.({ level: 'warning', code: 'journal-failed', message: `could not record the drill in the journal: ${errorMessage(err)}` });
    }
    return result;
  } catch (err) {
    // A drill that did not finish is in the journal too, with why: status would otherwise show the last one that did.
    await appendEvent(repo.storage, { type: 'drill', point: point.id, outcome: 'failed', durationMs: Date.now() - t0, detail: { reason: errorMessage(err) } }).catch(() => undefined);
    throw err;
  } finally {
    await removeTree(base).catch(() => undefined);
  }
}

/** Files read back at once: a round trip per small file costs more than hashing it. */
const CHECKS_IN_FLIGHT = 8;

/**
 * Reads every restored file and link back and compares it with the manifest. A file this user may not
 * read back (closed to it by the modes the point records: a point of root's) is
 * counted apart, in `closed` (a link or directory there is passed over): it is no mismatch, and its
 * SHA-256 was checked as it was written.
 */
async function checkRestoredTree(point: Manifest, target: string, signal?: AbortSignal): Promise<{ bad: string[]; closed: number }> {
  const found: (string | undefined)[] = new Array(point.entries.length);
  let closed = 0;
  await runPool(point.entries, CHECKS_IN_FLIGHT, async (e, i) => {
    throwIfAborted(signal);
    if (unsafePathReason(e.path) !== undefined) return;
    const file = path.join(target, e.source, e.path);
    const name = `${e.source}/${e.path}`;
    try {
      const st = await fsp.lstat(file);
      if (e.type === 'file') {
        if (!st.isFile()) found[i] = `${name}: not a regular file`;
        else if (st.size !== e.size) found[i] = `${name}: ${st.size} bytes, expected ${e.size}`;
        else if (e.sha256 && (await sha256OfFile(file)) !== e.sha256) found[i] = `${name}: SHA-256 mismatch`;
      } else if (e.type === 'symlink') {
        if (!st.isSymbolicLink() || (await fsp.readlink(file)) !== e.target) found[i] = `${name}: link differs`;
      } else if (!st.isDirectory()) found[i] = `${name}: not a directory`;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EACCES' && process.geteuid?.() !== 0) {
        if (e.type === 'file') closed++;
      } else found[i] = `${name}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : errorMessage(err)}`;
    }
  });
  // In the manifest's order, whatever order the reads finished in.
  return { bad: found.filter((f): f is string => f !== undefined), closed };
}

/** What starts a line of lifeboat's own after the smoke command's output: nothing after a whole line, which left an empty line in its tail. */
const newLine = (output: string) => (output === '' || output.endsWith('\n') ? '' : '\n');

/** Runs the smoke command through the shell with LIFEBOAT_RESTORE_DIR set; keeps the tail of its output. */
function runSmoke(command: string, target: string, point: Manifest, options: DrillOptions): Promise<NonNullable<DrillResult['smoke']>> {
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(command, {
      shell: true,
      cwd: options.cwd,
      env: { ...commandEnv(options.env ?? process.env), LIFEBOAT_RESTORE_DIR: target, LIFEBOAT_POINT: point.id },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: process.platform !== 'win32',
    });
    let output = '';
    const keep = (chunk: string) => {
      output += chunk;
      if (output.length > 2 * OUTPUT_TAIL) output = output.slice(-OUTPUT_TAIL);
    };
    // Decoded per stream, so that a character whose bytes arrive in two reads (a model's non-English output) stays whole.
    for (const stream of [child.stdout!, child.stderr!]) stream.setEncoding('utf8').on('data', keep);
    // SIGTERM first, so a model server the smoke test started can shut down; SIGKILL for what is left after the grace.
    const kill = () => {
      killGroup(child, 'SIGTERM');
      setTimeout(() => killGroup(child, 'SIGKILL'), KILL_GRACE_MS).unref();
    };
    let timedOut = false;
    const limit = options.smokeTimeoutMs ?? DEFAULT_SMOKE_TIMEOUT_MS;
    const cancelTimeout = afterDelay(limit, () => {
      timedOut = true;
      output += `${newLine(output)}[lifeboat: the smoke command ran longer than ${formatDuration(limit)} and was killed]\n`;
      kill();
    });
    const onAbort = () => kill();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    const done = (exitCode: number | null, signal: string | null) => {
      cancelTimeout();
      options.signal?.removeEventListener('abort', onAbort);
      resolve({ command, exitCode, signal, timedOut, durationMs: Date.now() - started, output: output.slice(-OUTPUT_TAIL) });
    };
    // A smoke test may start a server in the background, which keeps the output pipes open: its exit decides.
    exitAndOutput(child).then(
      ({ code, sig }) => done(code, sig),
      (err: Error) => {
        output += `${newLine(output)}[lifeboat: could not start the smoke command: ${err.message}]\n`;
        done(127, null);
      },
    );
  });
}
