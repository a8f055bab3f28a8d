import { PassThrough } from 'node:stream';
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { runCli } from '../../src/cli/main.js';
import { keepingHandles } from '../../src/state/sqlite.js';

// The tests' own SQLite databases live in the process lifeboat runs in: under Node 24 one that is
// collected aborts it, so they are kept as lifeboat keeps its own.
keepingHandles(Database);

export const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/lifeboat.js');

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON (throws when it is not one document). */
  json<T = any>(): T;
}

function collect(): { stream: PassThrough; text: () => string } {
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  return { stream, text: () => Buffer.concat(chunks).toString('utf8') };
}

/** Runs the CLI in this process with captured, non-TTY streams. */
export async function lifeboat(args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv; signal?: AbortSignal } = {}): Promise<CliRun> {
  const out = collect();
  const err = collect();
  const env = { ...stripLifeboatEnv(process.env), ...(options.env ?? {}) };
  const code = await runCli(['node', 'lifeboat', ...args], { stdout: out.stream, stderr: err.stream, env, cwd: options.cwd ?? process.cwd() }, options.signal ?? new AbortController().signal);
  const stdout = out.text();
  return {
    code,
    stdout,
    stderr: err.text(),
    json() {
      return JSON.parse(stdout);
    },
  };
}

function stripLifeboatEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const copy = { ...env };
  for (const k of Object.keys(copy)) if (k.startsWith('LIFEBOAT_')) delete copy[k];
  return copy;
}

export interface ChildOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Another user to run as (the test runs as root). */
  user?: { uid: number; gid: number };
  /** A descriptor for the child's stdout or stderr instead of a pipe (`/dev/full`, a file opened read-only). */
  stdout?: number;
  stderr?: number;
  /**
   * Limits the child runs under, set by bash's `ulimit`: `f`, the most a file it writes may hold, in
   * KiB (a write past it fails with EFBIG, as on a full disk); `n`, how many files it may have open.
   */
  ulimit?: { f?: number; n?: number };
}

/** Starts the real executable as a child process. */
export function spawnLifeboat(args: string[], options: ChildOptions = {}): ChildProcess {
  const limits = Object.entries(options.ulimit ?? {}).flatMap(([flag, value]) => [`-${flag}`, String(value)]);
  const command = limits.length === 0 ? [process.execPath, BIN, ...args] : ['bash', '-c', `ulimit ${limits.join(' ')} && exec "$@"`, 'bash', process.execPath, BIN, ...args];
  return spawn(command[0]!, command.slice(1), {
    cwd: options.cwd,
    uid: options.user?.uid,
    gid: options.user?.gid,
    env: { ...stripLifeboatEnv(process.env), ...(options.env ?? {}) },
    stdio: ['ignore', options.stdout ?? 'pipe', options.stderr ?? 'pipe'],
  });
}

export async function runChild(args: string[], options: ChildOptions = {}): Promise<CliRun> {
  const child = spawnLifeboat(args, options);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout?.on('data', (c: Buffer) => out.push(c));
  child.stderr?.on('data', (c: Buffer) => err.push(c));
  const code = await new Promise<number>((resolve) => child.on('close', (c, sig) => resolve(c ?? (sig ? 128 : 1))));
  const stdout = Buffer.concat(out).toString('utf8');
  return { code, stdout, stderr: Buffer.concat(err).toString('utf8'), json: () => JSON.parse(stdout) };
}
