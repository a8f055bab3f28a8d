import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { readRegularFile, writeFileSynced } from '../format/durable.js';
import { sleep } from '../sleep.js';

/**
 * Prometheus text exposition format (version 0.0.4) for node_exporter's
 * textfile collector. One file may hold the samples of several commands
 * (label `command`): writing one command's samples keeps the others'.
 */

export interface MetricSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export const METRIC_HELP: Record<string, string> = {
  lifeboat_last_run_timestamp_seconds: 'When the last run of the command ended, in seconds since the epoch.',
  lifeboat_last_success_timestamp_seconds: 'When the last successful run of the command ended, in seconds since the epoch.',
  lifeboat_last_run_duration_seconds: 'How long the last run of the command took.',
  lifeboat_last_run_exit_code: 'Exit status of the last run (0 success, 3 integrity, 4 locked, 5 objective failed, …).',
  lifeboat_last_run_success: '1 when the last run of the command succeeded, else 0.',
  lifeboat_last_run_bytes: 'Bytes the last run handled (backed up, read, restored or removed).',
  lifeboat_last_run_files: 'Files the last run handled.',
  lifeboat_last_run_warnings: 'Warnings of the last run (files left out, a file that kept changing while read …).',
  lifeboat_points: 'Backup points in the repository after the last run.',
  lifeboat_drill_rto_seconds: 'Achieved recovery time of the last drill (restore, verification and smoke test).',
  lifeboat_drill_rpo_seconds: 'Age of the drilled point when the last drill ran.',
  lifeboat_drill_objectives_met: '1 when the last drill met every objective, else 0.',
};

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

/** Renders samples grouped by metric name, each group with its HELP and TYPE lines. */
export function renderMetrics(samples: readonly MetricSample[]): string {
  const byName = new Map<string, MetricSample[]>();
  for (const s of samples) {
    if (!NAME.test(s.name)) throw new Error(`invalid metric name ${s.name}`);
    byName.set(s.name, [...(byName.get(s.name) ?? []), s]);
  }
  const lines: string[] = [];
  for (const name of [...byName.keys()].sort()) {
    lines.push(`# HELP ${name} ${(METRIC_HELP[name] ?? name).replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`);
    lines.push(`# TYPE ${name} gauge`);
    const group = byName.get(name)!.sort((a, b) => labelText(a.labels).localeCompare(labelText(b.labels)));
    for (const s of group) lines.push(`${name}${labelText(s.labels)} ${formatValue(s.value)}`);
  }
  return lines.length ? `${lines.join('\n')}\n` : '';
}

function labelText(labels: Record<string, string>): string {
  const keys = Object.keys(labels).sort();
  if (keys.length === 0) return '';
  for (const k of keys) if (!LABEL.test(k)) throw new Error(`invalid label name ${k}`);
  return `{${keys.map((k) => `${k}="${escapeLabel(labels[k]!)}"`).join(',')}}`;
}

/** Reads the samples of a file this module wrote; lines it does not understand are dropped. */
export function parseSamples(text: string): MetricSample[] {
  const out: MetricSample[] = [];
  const re = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = re.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    const lre = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/g;
    for (const l of (m[2] ?? '').matchAll(lre)) labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    const value = m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]);
    out.push({ name: m[1]!, labels, value });
  }
  return out;
}

/** Writes a file atomically: a temporary file beside it, flushed, then renamed over it. */
export async function writeFileAtomic(file: string, data: string): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}-${randomBytes(4).toString('hex')}.tmp`);
  try {
    // A write cut short (a full disk) leaves no partial temporary file behind, one more each run.
    await writeFileSynced(tmp, data, { mode: 0o644 });
    await fsp.rename(tmp, file);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
}

/**
 * Replaces the samples of one command (those labelled `command=<command>`,
 * and `deployment=<name>` when the run names one) in a metrics file, keeping
 * the others: the runs of several deployments can share one file.
 * A failed run carries `lifeboat_last_success_timestamp_seconds` and
 * `lifeboat_points` over from the file, so alerts on them keep working.
 */
export async function updateMetricsFile(file: string, run: { command: string; deployment?: string }, samples: readonly MetricSample[]): Promise<void> {
  const release = await lockMetricsFile(file);
  try {
    await replaceSamples(file, run, samples);
  } finally {
    await release();
  }
}

/** A writer holds the metrics file's lock for milliseconds; one older than this was left by a run that was killed. */
const METRICS_LOCK_STALE_MS = 10_000;
/** How long a run waits for the lock before it gives up on its metrics (with a warning). */
const METRICS_LOCK_WAIT_MS = 30_000;

/**
 * Takes a lock file beside the metrics file (made with O_EXCL; its name does not end in `.prom`,
 * so the textfile collector skips it), so that runs that end at once (several deployments, a
 * backup and a drill) each read the file after the other wrote it, and no run's samples are lost.
 */
async function lockMetricsFile(file: string): Promise<() => Promise<void>> {
  const lock = path.join(path.dirname(file), `.${path.basename(file)}.lock`);
  const started = Date.now();
  for (let attempt = 0; ; attempt++) {
    try {
      const handle = await fsp.open(lock, 'wx', 0o644);
      await handle.close();
      return () => fsp.rm(lock, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const since = await fsp.stat(lock).then((st) => st.mtimeMs, () => undefined);
    // A lock made later than now was made before the clock was set back: its age is not known, and no writer holds one for long.
    if (since !== undefined && Math.abs(Date.now() - since) > METRICS_LOCK_STALE_MS) {
      await fsp.rm(lock, { force: true });
      continue;
    }
    if (Date.now() - started > METRICS_LOCK_WAIT_MS) {
      throw new Error(`another run has held its lock ${lock} for more than ${METRICS_LOCK_WAIT_MS / 1000} s`);
    }
    await sleep(Math.min(10 + attempt * 5, 100));
  }
}

/**
 * Samples a run that does not measure them (a failed one) keeps from the file: the age of the last
 * success is what an alert watches, and a count of points that vanished would read as none to `absent()`.
 */
const CARRIED_OVER = ['lifeboat_last_success_timestamp_seconds', 'lifeboat_points'];
/** Far more than the samples of every command and deployment take (a few KiB). */
const METRICS_FILE_LIMIT = 16 * 1024 * 1024;

async function replaceSamples(file: string, run: { command: string; deployment?: string }, samples: readonly MetricSample[]): Promise<void> {
  let previous: MetricSample[] = [];
  try {
    // Not a named pipe (which blocked the open for ever), nor a file larger than lifeboat writes (read whole).
    previous = parseSamples(await readRegularFile(file, METRICS_FILE_LIMIT));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const mine = (s: MetricSample) => s.labels.command === run.command && s.labels.deployment === run.deployment;
  const next = [...samples];
  for (const name of CARRIED_OVER) {
    if (next.some((s) => s.name === name)) continue;
    const carried = previous.find((s) => s.name === name && mine(s));
    if (carried) next.push(carried);
  }
  await writeFileAtomic(file, renderMetrics([...previous.filter((s) => !mine(s)), ...next]));
}
