import { spawn, type ChildProcess } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import * as path from 'node:path';
import { InterruptedError, RuntimeFailure, errorMessage, fileSystemHint } from '../errors.js';
import { afterDelay } from '../sleep.js';
import { quoteName } from '../format/quote.js';


/** How a backup's serving state is staged on another file system than the one that failed it. */
export const ELSEWHERE = 'lifeboat backup --work-dir DIR (or TMPDIR) stages serving state elsewhere';
/** How much of a command's stderr is kept for an error message. */
const STDERR_TAIL = 4000;
/** After SIGTERM on a timeout, how long a command gets before SIGKILL. */
export const KILL_GRACE_MS = 2000;

export interface CommandOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Milliseconds; the command (and its process group) is killed when it runs longer. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Each complete line the command writes on stderr (and on stdout, where stdout is not captured). */
  onOutput?: (line: string) => void;
}

export interface CommandResult {
  durationMs: number;
  /** Bytes written to the output file, for captures. */
  bytes?: number;
}

/** Calls `emit` for each complete line of a byte stream, keeping a tail for messages. */
class LineTail {
  private partial = '';
  tail = '';
  constructor(private readonly emit?: (line: string) => void) {}
  push(chunk: Buffer): void {
    const text = chunk.toString('utf8');
    this.tail = (this.tail + text).slice(-STDERR_TAIL);
    if (!this.emit) return;
    const lines = (this.partial + text).split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) if (line.trim()) this.emit(line.replace(/\r$/, ''));
  }
  end(): void {
    if (this.emit && this.partial.trim()) this.emit(this.partial);
    this.partial = '';
  }
}

/** A command stopped because it ran past its timeout (exit 1, as any command that fails). */
export class CommandTimedOut extends RuntimeFailure {}

/**
 * An interrupt that came once the command had run to its end (exit status 0), before its exit was taken in or
 * while what it left running in the background held its output open: what it was to do is done.
 */
export class InterruptedAfterCommandEnded extends InterruptedError {}

/** How a command ended, with the last lines of its stderr: what a secret manager or a dump said before it failed or hung. */
function describeEnd(what: string, how: string, tail: string): string {
  const last = tail.trim().split('\n').slice(-3).join(' | ');
  return `${what} ${how}${last ? `: ${last}` : ''}`;
}

/**
 * After a command exited, how long its output may stay quiet before lifeboat stops reading it: a
 * process it started in the background (`server &`, the daemon a resume hook starts) inherits its
 * pipes and may hold them open for as long as it runs.
 */
export const OUTPUT_GRACE_MS = 500;

/**
 * Waits for a command to exit (not for its pipes to close), then for the rest of its output: to the
 * end of its pipes, or, when a process it left running in the background holds them open, until
 * they have been quiet for OUTPUT_GRACE_MS with nothing read still waiting to be written (`busy`);
 * then they are no longer read. Resolves with how it exited, and whether its pipes were left open.
 */
export async function exitAndOutput(
  child: ChildProcess,
  options: { busy?: () => boolean; beforeClosing?: () => void } = {},
): Promise<{ code: number | null; sig: NodeJS.Signals | null; leftOpen: boolean }> {
  const pipes = [child.stdout, child.stderr].filter((p): p is NonNullable<typeof p> => p !== null);
  let lastOutput = 0;
  for (const p of pipes) p.on('data', () => (lastOutput = Date.now()));
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const { code, sig } = await new Promise<{ code: number | null; sig: NodeJS.Signals | null }>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (c, s) => resolve({ code: c, sig: s }));
  });
  const exited = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const quiet = new Promise<void>((resolve) => {
    const check = () => {
      const pending = pipes.some((p) => p.readableLength > 0) || options.busy?.() === true;
      if (!pending && Date.now() - Math.max(exited, lastOutput) >= OUTPUT_GRACE_MS) resolve();
      else timer = setTimeout(check, 50);
    };
    timer = setTimeout(check, 50);
  });
  const leftOpen = await Promise.race([closed.then(() => false), quiet.then(() => true)]);
  clearTimeout(timer);
  if (leftOpen) {
    options.beforeClosing?.();
    for (const p of pipes) p.destroy();
  }
  return { code, sig, leftOpen };
}

/** Kills the command's whole process group (it runs in its own, through `sh -c`). */
export function killGroup(child: ChildProcess, sig: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, sig);
  } catch {
    try {
      child.kill(sig);
    } catch {
      // already gone
    }
  }
}

/**
 * The environment a configured command (hook, health check, command source,
 * smoke test) runs with: lifeboat's own, without the passwords it was given,
 * which a command printing its environment would otherwise carry into logs,
 * reports and notifications. A password file's path stays: it is no secret.
 */
export function commandEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const { LIFEBOAT_PASSWORD: _password, LIFEBOAT_NEW_PASSWORD: _newPassword, ...rest } = env;
  return rest;
}

/**
 * Runs `command` through `sh -c` in its own process group, with optional
 * stdin/stdout wiring (a file, or `onStdout` for each chunk), a timeout and abort. Resolves when it exited with
 * status 0; otherwise rejects with a RuntimeFailure naming `what`, the status
 * and the last lines of its stderr.
 */
export async function runShell(
  what: string,
  command: string,
  options: CommandOptions & { stdinFile?: string; stdoutFile?: string; stagedIn?: string; onStdout?: (chunk: Buffer) => void } = {},
): Promise<CommandResult> {
  const started = Date.now();
  if (options.signal?.aborted) throw new InterruptedError();
  const child = spawn('sh', ['-c', command], {
    cwd: options.cwd,
    env: commandEnv(options.env ?? process.env),
    stdio: [options.stdinFile ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const stderr = new LineTail(options.onOutput);
  child.stderr!.on('data', (c: Buffer) => stderr.push(c));
  let stdoutDone: Promise<unknown> = Promise.resolve();
  let bytes = 0;
  let writing = () => false;
  let stdout: LineTail | undefined;
  let stoppedReading = false;
  if (options.stdoutFile) {
    // Streamed to disk, never held in memory: a dump may be many GiB.
    child.stdout!.on('data', (c: Buffer) => {
      bytes += c.length;
    });
    const file = options.stdoutFile;
    const place = options.stagedIn ?? path.dirname(file);
    const out = createWriteStream(file, { mode: 0o600 });
    writing = () => out.writableLength > 0;
    stdoutDone = pipeline(child.stdout!, out).catch((err: NodeJS.ErrnoException) => {
      // What a process left running in the background would write after the command exited is not its output.
      if (stoppedReading && err.code === 'ERR_STREAM_PREMATURE_CLOSE') return;
      // The command did not fail: keeping its output did (a full temporary file system, most often).
      throw new RuntimeFailure(`could not keep the output of the ${what} in ${quoteName(place)}: ${errorMessage(err)}`, {
        cause: err,
        hint: `${fileSystemHint(err, place) ?? 'check that place'}; ${ELSEWHERE}`,
      });
    });
  } else if (options.onStdout) {
    child.stdout!.on('data', options.onStdout);
  } else {
    stdout = new LineTail(options.onOutput);
    child.stdout!.on('data', (c: Buffer) => stdout!.push(c));
  }
  let stdinDone: Promise<unknown> = Promise.resolve();
  if (options.stdinFile) {
    stdinDone = pipeline(createReadStream(options.stdinFile), child.stdin!).catch((err: NodeJS.ErrnoException) => {
      // A command may exit without reading all of its input; its status decides.
      if (err.code !== 'EPIPE' && err.code !== 'ERR_STREAM_PREMATURE_CLOSE') throw err;
    });
  }

  let timedOut = false;
  let aborted = false;
  let killTimer: NodeJS.Timeout | undefined;
  const stop = () => {
    killGroup(child, 'SIGTERM');
    killTimer = setTimeout(() => killGroup(child, 'SIGKILL'), KILL_GRACE_MS);
  };
  const cancelTimeout = options.timeoutMs !== undefined ? afterDelay(options.timeoutMs, () => ((timedOut = true), stop())) : undefined;
  const onAbort = () => ((aborted = true), stop());
  options.signal?.addEventListener('abort', onAbort, { once: true });

  try {
    const exited = exitAndOutput(child, { busy: writing, beforeClosing: () => (stoppedReading = true) }).then((exit) => {
      // What it has not read of its input, it never will.
      child.stdin?.destroy();
      return exit;
    });
    // Output that cannot be kept fails the command at once.
    const [{ code, sig }] = await Promise.all([exited, stdoutDone, stdinDone]);
    stdout?.end();
    stderr.end();
    if (aborted) throw code === 0 && sig === null ? new InterruptedAfterCommandEnded() : new InterruptedError();
    if (timedOut) throw new CommandTimedOut(describeEnd(what, `timed out after ${options.timeoutMs} ms and was stopped`, stderr.tail));
    if (code !== 0) throw new RuntimeFailure(describeEnd(what, sig ? `was killed by ${sig}` : `exited with status ${code}`, stderr.tail));
    return { durationMs: Date.now() - started, ...(options.stdoutFile ? { bytes } : {}) };
  } catch (err) {
    killGroup(child, 'SIGKILL');
    if (err instanceof RuntimeFailure || err instanceof InterruptedError) throw err;
    if (aborted) throw new InterruptedError();
    throw new RuntimeFailure(`${what} failed: ${errorMessage(err)}`, { cause: err });
  } finally {
    cancelTimeout?.();
    if (killTimer) clearTimeout(killTimer);
    options.signal?.removeEventListener('abort', onAbort);
  }
}

/** The file a command source's output is kept in, inside its source directory. */
export const COMMAND_OUTPUT_FILE = 'stdout';

/**
 * Captures a command's stdout as state: streamed into `file`; a non-zero exit,
 * a timeout or a failure to start fails the capture.
 */
export async function captureCommand(name: string, command: string, file: string, options: CommandOptions & { stagedIn?: string } = {}): Promise<CommandResult> {
  return runShell(`command of source ${name}`, command, { ...options, stdoutFile: file });
}

/** Runs a command source's restore command with the captured state on its stdin. */
export async function restoreCommand(name: string, command: string, file: string, options: CommandOptions = {}): Promise<CommandResult> {
  return runShell(`restore command of source ${name}`, command, { ...options, stdinFile: file });
}
