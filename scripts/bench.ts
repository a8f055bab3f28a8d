/**
 * `npm run bench`: lifeboat against tar on the same generated model
 * deployment (about 2 GiB: four ~400 MiB BF16 shards, a 100 MiB ONNX-like
 * model, ~2,000 small configs and logs), every step a child process timed for
 * wall time and peak RSS, inputs read once beforehand so every step starts from
 * a warm page cache. Each run of a local full backup and restore comes right
 * after a run of `tar` (and each encrypted one right after a plain one), and
 * its ratio is the median of those pairs'.
 *
 * Environment:
 *   LIFEBOAT_BENCH_SCALE=0.1        scale the large files (quick check)
 *   LIFEBOAT_BENCH_RUNS=3           times each step runs; the fastest run is reported
 *   LIFEBOAT_BENCH_KEEP=1           keep the deployment, archives and repositories in .bench/
 *   LIFEBOAT_BENCH_PROFILE=1        run lifeboat with --cpu-prof (profiles in .bench/profiles/)
 *   LIFEBOAT_BENCH_MANY_FILES=100000  files of the many-small-files deployment (0: leave it out)
 *   LIFEBOAT_BENCH_S3_REPO=s3://…   also run the lifeboat steps against this repository
 *   LIFEBOAT_BENCH_S3_ARGS="…"      extra global flags for it (e.g. --s3-endpoint URL --s3-path-style);
 *                                   credentials come from the usual AWS environment
 *
 * Results are printed as a table and written to .bench/results.json.
 */
import { spawn, spawnSync } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { compareTrees, generateDeployment, mutateDeployment } from '../fixtures/generate.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = path.join(ROOT, 'bin', 'lifeboat.js');
const MiB = 1 << 20;

// ---------------------------------------------------------------------------
// Measuring

export interface Measurement {
  seconds: number;
  peakRssMiB: number;
  /** User and system CPU seconds of the child (less skewed by a busy machine than wall time). */
  cpuUser?: number;
  cpuSystem?: number;
  stdout: string;
  stderr: string;
}

/**
 * Each step runs this many times and the fastest run is reported (with the
 * highest peak RSS of all runs): on a shared machine noise only ever adds time,
 * and one slow write burst must not decide a ratio.
 */
const RUNS = Math.max(1, Math.floor(Number(process.env.LIFEBOAT_BENCH_RUNS ?? '3')) || 1);

/** Runs of one step, each timed right before one of another's, and the ratio of each pair. */
export interface PairRuns {
  step: string;
  seconds: number[];
  ratios: number[];
  /** The other step's highest peak RSS. */
  peakRssMiB: number;
}

/** A step to time right before each run of another, and what to do (untimed) before it. */
export interface PairedStep {
  /** Named in the report, e.g. "tar -cf". */
  step: string;
  prepare: (run: number) => Promise<void>;
  run: (run: number) => Promise<Measurement>;
}

/**
 * Runs `prepare` (untimed) then `run`, `runs` times; returns the fastest run,
 * with the peak RSS of all. With `paired`, each run follows a run of that
 * step, and the ratio of each pair is returned: on a machine whose page cache
 * has slow phases lasting minutes, a pair meets the same phase, where blocks
 * of runs of one tool, then of the other, may not.
 */
async function fastest(
  runs: number,
  prepare: (run: number) => Promise<void>,
  run: (run: number) => Promise<Measurement>,
  paired?: PairedStep,
): Promise<Measurement & { allSeconds: number[]; pairs?: PairRuns }> {
  let best: Measurement | undefined;
  let peak = 0;
  const allSeconds: number[] = [];
  const pairs: PairRuns | undefined = paired ? { step: paired.step, seconds: [], ratios: [], peakRssMiB: 0 } : undefined;
  for (let i = 0; i < runs; i++) {
    let before: Measurement | undefined;
    if (paired) {
      await paired.prepare(i);
      before = await paired.run(i);
    }
    await prepare(i);
    const m = await run(i);
    allSeconds.push(m.seconds);
    if (pairs && before) {
      pairs.seconds.push(before.seconds);
      pairs.ratios.push(m.seconds / before.seconds);
      pairs.peakRssMiB = Math.max(pairs.peakRssMiB, before.peakRssMiB);
    }
    peak = Math.max(peak, m.peakRssMiB);
    if (!best || m.seconds < best.seconds) best = m;
  }
  return { ...best!, peakRssMiB: peak, allSeconds, pairs };
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** The fields of a step's result that come straight from its measurement. */
function timing(
  m: Measurement & { allSeconds?: number[]; pairs?: PairRuns },
): Pick<StepResult, 'seconds' | 'allSeconds' | 'cpuUser' | 'cpuSystem' | 'peakRssMiB' | 'pairs'> {
  const pairs = m.pairs ? { ...m.pairs, median: median(m.pairs.ratios) } : undefined;
  return { seconds: m.seconds, allSeconds: m.allSeconds, cpuUser: m.cpuUser, cpuSystem: m.cpuSystem, peakRssMiB: m.peakRssMiB, pairs };
}

let timeBinary: string | null | undefined;

async function findTime(): Promise<string | null> {
  if (timeBinary !== undefined) return timeBinary;
  try {
    await fsp.access('/usr/bin/time', fsConstants.X_OK);
    timeBinary = '/usr/bin/time';
  } catch {
    timeBinary = null;
  }
  return timeBinary;
}

/**
 * Runs a command, measuring its wall time and peak RSS: through GNU time when
 * it is there, else by polling the child's VmHWM in /proc.
 */
export async function measure(command: string, args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv }): Promise<Measurement> {
  const time = await findTime();
  const rssFile = path.join(os.tmpdir(), `lifeboat-bench-rss-${process.pid}-${Date.now()}`);
  const [cmd, argv] = time ? [time, ['-f', '%M %U %S', '-o', rssFile, command, ...args]] : [command, args];
  const started = performance.now();
  const child = spawn(cmd, argv, { cwd: options.cwd, env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  let polledKiB = 0;
  let polledCpu: [number, number] | undefined;
  const ticks = 100; // USER_HZ on Linux
  const poll = time
    ? undefined
    : setInterval(() => {
        fsp
          .readFile(`/proc/${child.pid}/status`, 'utf8')
          .then((s) => {
            const m = /VmHWM:\s+(\d+) kB/.exec(s);
            if (m) polledKiB = Math.max(polledKiB, Number(m[1]));
          })
          .catch(() => undefined);
        fsp
          .readFile(`/proc/${child.pid}/stat`, 'utf8')
          .then((s) => {
            const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
            polledCpu = [Number(f[11]) / ticks, Number(f[12]) / ticks];
          })
          .catch(() => undefined);
      }, 20);
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (c, signal) => resolve(signal ? null : c));
  });
  const seconds = (performance.now() - started) / 1000;
  if (poll) clearInterval(poll);
  let peakKiB = polledKiB;
  let cpu = polledCpu;
  if (time) {
    const text = await fsp.readFile(rssFile, 'utf8').catch(() => '');
    await fsp.rm(rssFile, { force: true });
    const [rss, user, sys] = (text.trim().split('\n').pop() ?? '').split(' ').map(Number);
    peakKiB = rss || 0;
    cpu = user !== undefined && sys !== undefined && !Number.isNaN(user + sys) ? [user, sys] : undefined;
  }
  if (code !== 0) {
    throw new Error(`${command} ${args.join(' ')} failed (exit ${code ?? 'by signal'}):\n${stderr.slice(-4000)}`);
  }
  return { seconds, peakRssMiB: peakKiB / 1024, cpuUser: cpu?.[0], cpuSystem: cpu?.[1], stdout, stderr };
}

async function filesUnder(dir: string, maxSize = Infinity): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    const abs = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesUnder(abs, maxSize)));
    else if (e.isFile() && (maxSize === Infinity || (await fsp.stat(abs)).size <= maxSize)) out.push(abs);
  }
  return out;
}

const warmBuffer = Buffer.allocUnsafe(4 * MiB);

/**
 * Reads every file under the given paths once, so the step that follows finds
 * them in the page cache (the machine drops cache on its own), and flushes
 * dirty pages so the previous step's writes do not land in this one.
 */
export async function warm(paths: string[], options: { maxFileSize?: number } = {}): Promise<number> {
  spawnSync('sync');
  let bytes = 0;
  for (const p of paths) {
    const st = await fsp.stat(p).catch(() => undefined);
    if (!st) continue;
    for (const file of st.isDirectory() ? await filesUnder(p, options.maxFileSize) : [p]) {
      const fh = await fsp.open(file, 'r');
      try {
        for (;;) {
          const { bytesRead } = await fh.read(warmBuffer, 0, warmBuffer.length, null);
          if (bytesRead === 0) break;
          bytes += bytesRead;
        }
      } finally {
        await fh.close();
      }
    }
  }
  return bytes;
}

// ---------------------------------------------------------------------------
// Steps

export interface StepResult {
  step: string;
  group: string;
  /** Wall time of the fastest run. */
  seconds: number;
  /** Wall times of every run. */
  allSeconds?: number[];
  cpuUser?: number;
  cpuSystem?: number;
  /** Deployment bytes over wall time (what a user waits for), MiB/s. */
  mibPerSec: number;
  peakRssMiB: number;
  /** Bytes written to the repository, for backups. */
  storedBytes?: number;
  /** Time lifeboat itself reports (without process start-up), ms. */
  reportedMs?: number;
  /** The tar step this one is compared with, and the ratio of times (the median of the pairs' when paired with it). */
  vsTar?: { step: string; ratio: number };
  /** Runs of another step, each timed right before one of this step's, and each pair's ratio. */
  pairs?: PairRuns & { median: number };
  /** This step's time over its repository's full backup. */
  vsFull?: number;
  target?: { text: string; ok: boolean };
}

export interface BenchContext {
  /** The .bench directory. */
  dir: string;
  /** The deployment backed up, a directory named `deployment`. */
  deployment: string;
  deploymentBytes: number;
  steps: StepResult[];
  log: (line: string) => void;
  /** tar -cf and tar -xf, to pair with lifeboat's runs; set by benchBaselines. */
  tar?: { create: PairedStep; extract: PairedStep };
}

export interface RepositoryTarget {
  /** Name shown in the table, e.g. "local" or "s3". */
  label: string;
  /** A directory or URL, passed as --repo. */
  repo: string;
  /** Extra global flags before the command (e.g. --s3-endpoint URL --s3-path-style). */
  args?: string[];
  /** Environment of the lifeboat processes (default: this process's). */
  env?: NodeJS.ProcessEnv;
  /** A local repository directory to warm before a restore (none for object storage). */
  localDir?: string;
  /** Extra flags of `init` (e.g. --encryption aes-256-gcm). */
  initArgs?: string[];
}

function lifeboatArgs(ctx: BenchContext, target: RepositoryTarget, args: string[]): string[] {
  const node: string[] = [];
  if (process.env.LIFEBOAT_BENCH_PROFILE === '1') node.push('--cpu-prof', `--cpu-prof-dir=${path.join(ctx.dir, 'profiles')}`);
  return [...node, BIN, '--repo', target.repo, ...(target.args ?? []), ...args];
}

async function lifeboat(ctx: BenchContext, target: RepositoryTarget, args: string[]): Promise<Measurement> {
  return measure(process.execPath, lifeboatArgs(ctx, target, args), { cwd: ctx.dir, env: { ...(target.env ?? process.env), NO_COLOR: '1' } });
}

/** A full backup into a fresh repository (a local one is emptied first), as a step to time. */
function fullBackupStep(ctx: BenchContext, target: RepositoryTarget): PairedStep {
  return {
    step: `${target.label}: full backup`,
    prepare: async () => {
      if (target.localDir) await fsp.rm(target.localDir, { recursive: true, force: true });
      await lifeboat(ctx, target, ['init', ...(target.initArgs ?? [])]);
      await warm([ctx.deployment]);
    },
    run: () => lifeboat(ctx, target, ['backup', 'deployment', '--type', 'full', '--json']),
  };
}

/** A restore of the latest point into an emptied `dir`, as a step to time; unless `keep`, the restored tree is removed after each run. */
function restoreStep(ctx: BenchContext, target: RepositoryTarget, dir: string, options: { keep?: boolean } = {}): PairedStep {
  return {
    step: `${target.label}: restore latest`,
    prepare: async () => {
      await fsp.rm(dir, { recursive: true, force: true });
      await fsp.mkdir(dir);
      await warm(target.localDir ? [target.localDir] : []);
    },
    run: async () => {
      const run = await lifeboat(ctx, target, ['restore', 'latest', '--target', dir, '--json']);
      if (!options.keep) await fsp.rm(dir, { recursive: true, force: true });
      return run;
    },
  };
}

function record(ctx: BenchContext, partial: Omit<StepResult, 'mibPerSec'>): StepResult {
  const result: StepResult = { ...partial, mibPerSec: ctx.deploymentBytes / MiB / partial.seconds };
  ctx.steps.push(result);
  const runs = result.allSeconds && result.allSeconds.length > 1 ? ` (fastest of ${result.allSeconds.map((x) => x.toFixed(2)).join(', ')})` : '';
  const extra = `${runs}${result.storedBytes !== undefined ? `, stored ${(result.storedBytes / MiB).toFixed(1)} MiB` : ''}`;
  const cpu = result.cpuUser !== undefined ? ` (CPU ${result.cpuUser.toFixed(2)} user + ${result.cpuSystem!.toFixed(2)} sys)` : '';
  ctx.log(`  ${result.step}: ${result.seconds.toFixed(2)} s${cpu}, ${result.mibPerSec.toFixed(0)} MiB/s, peak RSS ${result.peakRssMiB.toFixed(0)} MiB${extra}`);
  const p = result.pairs;
  if (p) {
    ctx.log(`    each run right after one of ${p.step} (${p.seconds.map((x) => x.toFixed(2)).join(', ')} s): ${p.ratios.map((x) => `${x.toFixed(2)}×`).join(', ')}, median ${p.median.toFixed(2)}×`);
  }
  return result;
}

function tarStep(ctx: BenchContext, name: string): StepResult | undefined {
  return ctx.steps.find((s) => s.group === 'baseline' && s.step === name);
}

/** The baselines: sha256sum of every file, tar -cf of the deployment, tar -xf of that archive, and both again followed by sync. */
export async function benchBaselines(ctx: BenchContext): Promise<void> {
  const files = (await filesUnder(ctx.deployment)).map((f) => path.relative(ctx.dir, f));
  ctx.log('sha256sum (reference: the cost of hashing everything once; one run)');
  await warm([ctx.deployment]);
  let m: Measurement & { allSeconds?: number[] } = await measure('sha256sum', files, { cwd: ctx.dir });
  record(ctx, { step: 'sha256sum', group: 'baseline', ...timing(m) });

  // The archive stays: tar -xf runs again beside each lifeboat restore.
  const archive = path.join(ctx.dir, 'deployment.tar');
  const scratch = path.join(ctx.dir, 'tar-scratch.tar');
  const out = path.join(ctx.dir, 'tar-extract');
  const create = (file: string): PairedStep => ({
    step: 'tar -cf',
    prepare: async () => {
      await fsp.rm(file, { force: true });
      await warm([ctx.deployment]);
    },
    run: () => measure('tar', ['-cf', file, 'deployment'], { cwd: ctx.dir }),
  });
  const extract: PairedStep = {
    step: 'tar -xf',
    prepare: async () => {
      await fsp.rm(out, { recursive: true, force: true });
      await fsp.mkdir(out);
      await warm([archive]);
    },
    run: async () => {
      const run = await measure('tar', ['-xf', archive, '-C', out], { cwd: ctx.dir });
      await fsp.rm(out, { recursive: true, force: true });
      return run;
    },
  };
  ctx.log('tar -cf');
  const tarCreate = create(archive);
  m = await fastest(RUNS, tarCreate.prepare, tarCreate.run);
  record(ctx, { step: 'tar -cf', group: 'baseline', ...timing(m) });
  ctx.log('tar -xf');
  m = await fastest(RUNS, extract.prepare, extract.run);
  record(ctx, { step: 'tar -xf', group: 'baseline', ...timing(m) });
  // Later runs of tar -cf write a scratch archive, so the one tar -xf reads stays as it is.
  ctx.tar = { create: create(scratch), extract };

  // tar leaves its output in the page cache; lifeboat makes every volume and restored file durable
  // before it reports success. Followed by sync, tar pays for the disk too: a reference, not a target.
  const thenSync = (step: PairedStep, tarArgs: string[]): PairedStep => ({
    step: `${step.step}, then sync`,
    prepare: step.prepare,
    run: async () => {
      const run = await measure('sh', ['-c', 'tar "$@" && sync', 'sh', ...tarArgs], { cwd: ctx.dir });
      if (step === extract) await fsp.rm(out, { recursive: true, force: true });
      return run;
    },
  });
  for (const durable of [thenSync(create(scratch), ['-cf', scratch, 'deployment']), thenSync(extract, ['-xf', archive, '-C', out])]) {
    ctx.log(durable.step);
    m = await fastest(RUNS, durable.prepare, durable.run);
    record(ctx, { step: durable.step, group: 'baseline', ...timing(m) });
  }
}

const RSS_LIMIT_MiB = 150;

/**
 * The lifeboat steps against one repository: full backup, incremental with
 * nothing changed, incremental after rewriting one shard and 20 small files,
 * restore of the latest point into an empty directory (then checked against
 * the deployment, untimed). Another repository kind (S3) is one more call.
 */
export async function benchRepository(
  ctx: BenchContext,
  target: RepositoryTarget,
  options: { mutateSeed?: number; pairFull?: PairedStep; pairRestore?: PairedStep } = {},
): Promise<StepResult[]> {
  const first = ctx.steps.length;
  const tarC = tarStep(ctx, 'tar -cf');
  const tarX = tarStep(ctx, 'tar -xf');
  const metadata = target.localDir ? [target.localDir] : [];
  const L = target.label;
  // Against tar's fastest run, or the median of the pairs when each run was paired with one of tar's.
  const vs = (tar: StepResult | undefined, m: { seconds: number; pairs?: PairRuns }) =>
    m.pairs?.step === tar?.step && m.pairs ? { step: m.pairs.step, ratio: median(m.pairs.ratios) } : tar ? { step: tar.step, ratio: m.seconds / tar.seconds } : undefined;

  // A full backup is repeated into a fresh repository each time; object storage is not emptied, so it runs once.
  const runs = target.localDir ? RUNS : 1;
  ctx.log(`[${L}] full backup`);
  const fullStep = fullBackupStep(ctx, target);
  let m = await fastest(runs, fullStep.prepare, fullStep.run, options.pairFull);
  const json = JSON.parse(m.stdout) as { type: string; storedBytes: number; durationMs: number; changed: number; added: number };
  if (json.type !== 'full') throw new Error(`expected a full backup, got ${json.type}`);
  const fullRatio = vs(tarC, m);
  const full = record(ctx, {
    step: fullStep.step,
    group: L,
    ...timing(m),
    storedBytes: json.storedBytes,
    reportedMs: json.durationMs,
    vsTar: fullRatio,
    vsFull: 1,
    target: fullRatio ? { text: '≤ 1.00× tar -cf', ok: fullRatio.ratio <= 1 } : undefined,
  });

  // An incremental backup, timed against the full of the same repository.
  const incremental = async (step: string, limit: number, prepare: (run: number) => Promise<void>) => {
    const run = await fastest(RUNS, prepare, () => lifeboat(ctx, target, ['backup', 'deployment', '--type', 'incr', '--json']));
    const result = JSON.parse(run.stdout) as { storedBytes: number; durationMs: number };
    const ratio = run.seconds / full.seconds;
    record(ctx, {
      step: `${L}: ${step}`,
      group: L,
      ...timing(run),
      storedBytes: result.storedBytes,
      reportedMs: result.durationMs,
      vsTar: vs(tarC, run),
      vsFull: ratio,
      target: { text: `≤ ${limit.toFixed(2)}× full`, ok: ratio <= limit },
    });
  };

  ctx.log(`[${L}] incremental, nothing changed`);
  await incremental('incr, unchanged', 0.05, () => warm([ctx.deployment, ...metadata], { maxFileSize: 16 * MiB }).then(() => undefined));

  ctx.log(`[${L}] incremental after rewriting one shard and 20 small files`);
  await incremental('incr, 1 shard + 20 files', 0.35, async (run) => {
    // A new rewrite before every run, so each one has the same work to do.
    const mutation = await mutateDeployment(ctx.deployment, { seed: (options.mutateSeed ?? 1) * 100 + run, rewriteShard: 1, touch: 20 });
    ctx.log(`  rewrote ${mutation.rewritten.join(', ')} and ${mutation.touched.length} small files`);
    await warm([ctx.deployment, ...metadata], { maxFileSize: 16 * MiB });
  });

  const restoreDir = path.join(ctx.dir, `restore-${L}`);
  ctx.log(`[${L}] restore latest`);
  // The last run's tree stays, to be checked below.
  const restoreRun = restoreStep(ctx, target, restoreDir, { keep: true });
  m = await fastest(RUNS, restoreRun.prepare, restoreRun.run, options.pairRestore);
  const restored = JSON.parse(m.stdout) as { durationMs: number };
  const restoreRatio = vs(tarX, m);
  record(ctx, {
    step: restoreRun.step,
    group: L,
    ...timing(m),
    reportedMs: restored.durationMs,
    vsTar: restoreRatio,
    vsFull: m.seconds / full.seconds,
    target: restoreRatio ? { text: '≤ 1.20× tar -xf', ok: restoreRatio.ratio <= 1.2 } : undefined,
  });
  const check = await compareTrees(ctx.deployment, path.join(restoreDir, 'deployment'));
  if (check.problems.length > 0) throw new Error(`[${L}] the restore differs from the deployment: ${check.problems.slice(0, 5).join('; ')}`);
  ctx.log(`  restore checked: ${check.files} files, ${(check.bytes / MiB).toFixed(1)} MiB identical to the deployment`);
  await fsp.rm(restoreDir, { recursive: true, force: true });

  const steps = ctx.steps.slice(first);
  for (const s of steps) {
    const memory = { text: `RSS < ${RSS_LIMIT_MiB} MiB`, ok: s.peakRssMiB < RSS_LIMIT_MiB };
    s.target = s.target ? { text: `${s.target.text}, ${memory.text}`, ok: s.target.ok && memory.ok } : memory;
  }
  return steps;
}

/**
 * A deployment of many small files (100,000 by default: the configs, logs and
 * feature files of a model store that has run for a while), where the cost
 * per file, not per byte, decides: `tar -cf`, a full backup, an unchanged
 * incremental, `tar -xf` and a restore. Runs are paired with tar's as in the
 * main deployment; there are no targets, only the ratios.
 */
/** The runs of a step that was only run paired with another, as a result of its own. */
function pairedStepResult(group: string, pairs: PairRuns): Omit<StepResult, 'mibPerSec'> {
  return { step: pairs.step, group, seconds: Math.min(...pairs.seconds), allSeconds: pairs.seconds, peakRssMiB: pairs.peakRssMiB };
}

const MANY_FILES = 'many files';

export async function benchManyFiles(ctx: BenchContext, count: number): Promise<void> {
  const G = MANY_FILES;
  const dir = path.join(ctx.dir, 'many-files');
  ctx.log(`[${G}] generating a deployment of ${count} small files …`);
  const generated = await generateDeployment(path.join(dir, 'deployment'), { seed: 4, shards: 1, shardBytes: MiB, onnxBytes: MiB, smallFiles: count, mtime: new Date('2025-06-01T00:00:00Z') });
  ctx.log(`  ${generated.files} files, ${(generated.bytes / MiB).toFixed(0)} MiB`);
  const sub: BenchContext = { dir, deployment: generated.root, deploymentBytes: generated.bytes, steps: ctx.steps, log: ctx.log };
  const archive = path.join(dir, 'deployment.tar');
  // Each run extracts and restores into a directory of its own, all removed at the end: on an ext4 without
  // a journal, files created within a minute or more of the removal of 100,000 others take many times as long
  // (the allocator passes over inodes freed so recently), which had made runs take 2.6 to 57 s.
  const out = (run: number) => path.join(dir, `tar-extract-${run}`);
  const restored = (run: number) => path.join(dir, `restore-${run}`);
  const tarCreate: PairedStep = {
    step: `${G}: tar -cf`,
    prepare: async () => {
      await fsp.rm(archive, { force: true });
      await warm([generated.root]);
    },
    run: () => measure('tar', ['-cf', archive, 'deployment'], { cwd: dir }),
  };
  const tarExtract: PairedStep = {
    step: `${G}: tar -xf`,
    prepare: async (run) => {
      await fsp.mkdir(out(run));
      await warm([archive]);
    },
    run: (run) => measure('tar', ['-xf', archive, '-C', out(run)], { cwd: dir }),
  };
  const target: RepositoryTarget = { label: G, repo: path.join(dir, 'repo'), localDir: path.join(dir, 'repo') };
  const ratio = (m: { seconds: number; pairs?: PairRuns }) => (m.pairs ? { step: m.pairs.step.slice(G.length + 2), ratio: median(m.pairs.ratios) } : undefined);

  ctx.log(`[${G}] full backup, each run after tar -cf`);
  const fullStep = fullBackupStep(sub, target);
  let m = await fastest(RUNS, fullStep.prepare, fullStep.run, tarCreate);
  record(sub, pairedStepResult(G, m.pairs!));
  const full = record(sub, { step: fullStep.step, group: G, ...timing(m), vsTar: ratio(m), vsFull: 1 });

  ctx.log(`[${G}] incremental, nothing changed`);
  m = await fastest(RUNS, () => warm([generated.root]).then(() => undefined), () => lifeboat(sub, target, ['backup', 'deployment', '--type', 'incr', '--json']));
  record(sub, { step: `${G}: incr, unchanged`, group: G, ...timing(m), vsFull: m.seconds / full.seconds });

  ctx.log(`[${G}] restore latest, each run after tar -xf`);
  m = await fastest(
    RUNS,
    () => warm([target.localDir!]).then(() => undefined),
    (run) => lifeboat(sub, target, ['restore', 'latest', '--target', restored(run), '--json']),
    tarExtract,
  );
  record(sub, pairedStepResult(G, m.pairs!));
  record(sub, { step: `${G}: restore latest`, group: G, ...timing(m), vsTar: ratio(m) });
  const check = await compareTrees(generated.root, path.join(restored(RUNS - 1), 'deployment'));
  if (check.problems.length > 0) throw new Error(`[${G}] the restore differs from the deployment: ${check.problems.slice(0, 5).join('; ')}`);
  ctx.log(`  restore checked: ${check.files} files identical to the deployment`);
  await fsp.rm(dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------
// Report

function table(steps: readonly StepResult[]): string {
  const header = ['step', 'seconds', 'CPU s', 'MiB/s', 'peak RSS MiB', 'stored MiB', 'vs tar', 'vs full', 'target', 'met'];
  const rows = steps.map((s) => [
    s.step,
    s.seconds.toFixed(2),
    s.cpuUser !== undefined ? (s.cpuUser + s.cpuSystem!).toFixed(2) : '',
    s.mibPerSec.toFixed(0),
    s.peakRssMiB.toFixed(0),
    s.storedBytes !== undefined ? (s.storedBytes / MiB).toFixed(1) : '',
    s.vsTar ? `${s.vsTar.ratio.toFixed(2)}× ${s.vsTar.step}` : '',
    s.vsFull !== undefined && !s.step.endsWith('full backup') ? `${s.vsFull.toFixed(3)}×` : '',
    s.target?.text ?? '',
    s.target ? (s.target.ok ? 'yes' : 'NO') : '',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const right = new Set([1, 2, 3, 4, 5, 7]);
  const line = (cells: string[]) => `| ${cells.map((c, i) => (right.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join(' | ')} |`;
  return [line(header), `|${widths.map((w, i) => (right.has(i) ? `${'-'.repeat(w + 1)}:` : '-'.repeat(w + 2))).join('|')}|`, ...rows.map(line)].join('\n');
}

function machine() {
  const cpus = os.cpus();
  return {
    nproc: os.availableParallelism(),
    cpu: cpus[0]?.model ?? 'unknown',
    memoryMiB: Math.round(os.totalmem() / MiB),
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    node: process.version,
    tar: (spawnSync('tar', ['--version'], { encoding: 'utf8' }).stdout ?? '').split('\n')[0] ?? 'unknown',
    peakRssFrom: timeBinary ? 'GNU time %M' : '/proc VmHWM polling',
    /** Other work on the machine skews absolute times; the ratios to tar in the same run much less. */
    loadAverage: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

async function main(): Promise<void> {
  const scale = Number(process.env.LIFEBOAT_BENCH_SCALE ?? '1');
  if (!(scale > 0)) throw new Error('LIFEBOAT_BENCH_SCALE must be a positive number');
  const dir = path.join(ROOT, '.bench');
  await fsp.rm(dir, { recursive: true, force: true });
  await fsp.mkdir(dir, { recursive: true });
  const startedAt = new Date().toISOString();
  const log = (line: string) => console.log(line);
  await findTime();

  const options = { seed: 1, shards: 4, shardBytes: Math.round(400 * MiB * scale), onnxBytes: Math.round(100 * MiB * scale), smallFiles: 2000, mtime: new Date('2025-06-01T00:00:00Z') };
  const m = machine();
  log(`machine: ${m.nproc} CPUs (${m.cpu}), ${m.memoryMiB} MiB RAM, ${m.platform}, node ${m.node}, ${m.tar}, load average ${m.loadAverage.join(' ')}`);
  log(`generating the deployment (scale ${scale}) …`);
  const genStarted = performance.now();
  const deployment = await generateDeployment(path.join(dir, 'deployment'), options);
  log(
    `  ${deployment.files} files, ${(deployment.bytes / MiB).toFixed(0)} MiB (${deployment.shards.length} shards, ONNX ${(options.onnxBytes / MiB).toFixed(0)} MiB, ${deployment.smallFiles.length} small files) in ${((performance.now() - genStarted) / 1000).toFixed(1)} s`,
  );

  const ctx: BenchContext = { dir, deployment: deployment.root, deploymentBytes: deployment.bytes, steps: [], log };
  await benchBaselines(ctx);

  const local: RepositoryTarget = { label: 'local', repo: path.join(dir, 'repo'), localDir: path.join(dir, 'repo') };
  await benchRepository(ctx, local, { mutateSeed: 1, pairFull: ctx.tar!.create, pairRestore: ctx.tar!.extract });
  // The same local repository with client-side encryption: its rows against the plain ones are the cost of
  // encryption, each run paired with a plain one (a full backup into a scratch repository, a restore of the plain one).
  const scratchRepo: RepositoryTarget = { label: 'local', repo: path.join(dir, 'repo-pair'), localDir: path.join(dir, 'repo-pair') };
  await benchRepository(
    ctx,
    {
      label: 'local-encrypted',
      repo: path.join(dir, 'repo-encrypted'),
      localDir: path.join(dir, 'repo-encrypted'),
      env: { ...process.env, LIFEBOAT_PASSWORD: 'bench password' },
      initArgs: ['--encryption', 'aes-256-gcm'],
    },
    {
      mutateSeed: 2,
      pairFull: fullBackupStep(ctx, scratchRepo),
      pairRestore: restoreStep(ctx, local, path.join(dir, 'restore-pair')),
    },
  );
  await fsp.rm(scratchRepo.localDir!, { recursive: true, force: true });
  const manyFiles = Math.floor(Number(process.env.LIFEBOAT_BENCH_MANY_FILES ?? '100000'));
  if (manyFiles > 0) await benchManyFiles(ctx, manyFiles);
  if (process.env.LIFEBOAT_BENCH_S3_REPO) {
    const args = (process.env.LIFEBOAT_BENCH_S3_ARGS ?? '').split(/\s+/).filter(Boolean);
    await benchRepository(ctx, { label: 's3', repo: process.env.LIFEBOAT_BENCH_S3_REPO, args }, { mutateSeed: 3 });
  }

  log('');
  log(table(ctx.steps));
  log('');
  log('MiB/s is the deployment size over wall time; CPU s is user + system time of the process;');
  log('"vs tar" and "vs full" are ratios of wall times, "vs full" to the same repository\'s full backup.');
  // Each other repository kind against the plain local one, step by step (the cost of S3, of encryption).
  for (const group of [...new Set(ctx.steps.map((s) => s.group))].filter((g) => g !== 'local' && g !== 'baseline' && g !== MANY_FILES)) {
    const pairs = ctx.steps
      .filter((s) => s.group === group)
      .map((s) => ({ step: s.step.slice(group.length + 2), s, local: ctx.steps.find((l) => l.group === 'local' && l.step === `local: ${s.step.slice(group.length + 2)}`) }))
      .filter((p) => p.local);
    // Paired runs give the median of their ratios; otherwise the fastest runs are compared.
    const ratio = (p: (typeof pairs)[number]) => (p.s.pairs?.step === p.local!.step ? `${p.s.pairs.median.toFixed(2)}× the time (median of ${p.s.pairs.ratios.length} pairs)` : `${(p.s.seconds / p.local!.seconds).toFixed(2)}× the time`);
    log(`${group} vs local disk: ${pairs.map((p) => `${p.step} ${ratio(p)} (${p.s.mibPerSec.toFixed(0)} vs ${p.local!.mibPerSec.toFixed(0)} MiB/s)`).join('; ')}`);
  }
  const missed = ctx.steps.filter((s) => s.target && !s.target.ok);
  log(missed.length === 0 ? 'every target met' : `targets missed: ${missed.map((s) => s.step).join(', ')}`);

  const results = {
    startedAt,
    machine: m,
    scale,
    deployment: { files: deployment.files, bytes: deployment.bytes, shards: deployment.shards.length, shardBytes: options.shardBytes, onnxBytes: options.onnxBytes, smallFiles: deployment.smallFiles.length },
    steps: ctx.steps,
  };
  if (process.env.LIFEBOAT_BENCH_KEEP !== '1') {
    for (const name of await fsp.readdir(dir)) if (name !== 'profiles') await fsp.rm(path.join(dir, name), { recursive: true, force: true });
  }
  await fsp.writeFile(path.join(dir, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
  log('results written to .bench/results.json');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    console.error(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exitCode = 1;
  });
}
