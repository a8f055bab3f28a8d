/** Runs test/helpers/lock-worker.ts as a child process and reads what it says, for tests of several processes at once. */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const WORKER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'lock-worker.js');

export interface Worker {
  child: ChildProcess;
  /** Each line of JSON it printed, as they come. */
  lines: unknown[];
  /** The next line it prints (or has printed beyond those already taken). */
  next(): Promise<Record<string, unknown>>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

/** Whether the process is stopped (state T in /proc/PID/stat; the name before it may hold spaces and parentheses). */
async function isStopped(pid: number): Promise<boolean> {
  const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return /^[Tt]$/.test(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] ?? '');
}

/**
 * A worker says it pauses just before it stops itself: on a loaded machine it may be scheduled out between the two,
 * and a SIGCONT sent in that gap is lost, leaving it stopped for good. What it says is taken once it is stopped.
 */
async function stoppedIfPaused(child: ChildProcess, line: Record<string, unknown>): Promise<Record<string, unknown>> {
  if (!('paused' in line)) return line;
  for (let i = 0; i < 3000 && !(await isStopped(child.pid!)); i++) await new Promise((resolve) => setTimeout(resolve, 10));
  assert.ok(await isStopped(child.pid!), `the worker said ${JSON.stringify(line)} but did not stop within 30 s`);
  return line;
}

export function worker(t: { after(fn: () => void): void }, ...args: string[]): Worker {
  const child = spawn(process.execPath, [WORKER, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  t.after(() => {
    child.kill('SIGCONT');
    child.kill('SIGKILL');
  });
  const lines: unknown[] = [];
  const waiting: ((line: Record<string, unknown>) => void)[] = [];
  let taken = 0;
  let partial = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    partial += chunk.toString();
    for (let nl = partial.indexOf('\n'); nl >= 0; nl = partial.indexOf('\n')) {
      lines.push(JSON.parse(partial.slice(0, nl)));
      partial = partial.slice(nl + 1);
      if (waiting.length > 0) waiting.shift()!(lines[taken++] as Record<string, unknown>);
    }
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stderr })));
  return {
    child,
    lines,
    next: async () =>
      stoppedIfPaused(
        child,
        taken < lines.length
          ? (lines[taken++] as Record<string, unknown>)
          : await Promise.race([
              new Promise<Record<string, unknown>>((resolve) => waiting.push(resolve)),
              exited.then(({ code, signal, stderr: err }) => assert.fail(`the worker ${args[0]} ended (${code ?? signal}) before saying more: ${err}`)),
            ]),
      ),
    exited,
  };
}

export async function finished(w: Worker): Promise<void> {
  const { code, signal, stderr } = await w.exited;
  assert.equal(code, 0, `the worker ended with ${code ?? signal}: ${stderr}`);
}
