import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { connect } from 'node:net';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** A port that was free a moment ago on 127.0.0.1 (the kernel picks it). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export async function waitForPort(port: number, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`${what} did not listen on 127.0.0.1:${port} within ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** Polls `cond` until it holds (true) or `timeoutMs` has passed (false). */
export async function waitFor(cond: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await cond()) return true;
    await sleep(5);
  }
  return false;
}

/**
 * A process started now that lives for the test: its pid, named in a record taken minutes earlier,
 * is a pid given again after that record's owner ended (a reboot, a container run again).
 */
export function startedNow(t: { after(fn: () => void): void }): ChildProcess {
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60_000)'], { stdio: 'ignore' });
  t.after(() => child.kill());
  return child;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export async function run(command: string, args: string[], timeoutMs = 60_000): Promise<string> {
  try {
    const { stdout } = await execFileAsync(command, args, { timeout: timeoutMs, maxBuffer: 16 << 20 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${command} ${args.join(' ')} failed: ${e.stderr?.trim() || e.message}`);
  }
}

/**
 * Test servers must not outlive the test process, even when it is killed or
 * crashes before its cleanup runs. Each tracked child is killed on a normal exit,
 * and a detached watchdog shell kills it (and removes its scratch directory) once
 * the test process is gone or a hard lifetime has passed.
 */
export class ProcessGroup {
  private readonly children: ChildProcess[] = [];
  private watchdog?: ChildProcess;
  private readonly onExit = () => this.killAll();

  constructor(
    private readonly scratchDir: string,
    private readonly lifetimeSeconds = 1800,
  ) {
    process.on('exit', this.onExit);
  }

  spawn(command: string, args: string[], options: { captureStdout?: boolean } = {}): ChildProcess {
    const child = spawn(command, args, {
      stdio: ['ignore', options.captureStdout ? 'pipe' : 'ignore', 'pipe'],
    });
    this.children.push(child);
    // Keep the last error lines for a failed start's message.
    let stderrTail = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      stderrTail = (stderrTail + chunk.toString()).slice(-2000);
    });
    (child as ChildProcess & { stderrTail: () => string }).stderrTail = () => stderrTail;
    child.unref();
    (child.stdout as unknown as { unref?: () => void } | null)?.unref?.();
    (child.stderr as unknown as { unref?: () => void } | null)?.unref?.();
    this.armWatchdog();
    return child;
  }

  private armWatchdog(): void {
    this.watchdog?.kill('SIGKILL');
    const pids = this.children.map((c) => c.pid).filter((pid): pid is number => pid !== undefined);
    const script = [
      `parent=${process.pid}; deadline=$(( $(date +%s) + ${this.lifetimeSeconds} ))`,
      'while kill -0 "$parent" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 1; done',
      `kill -9 ${pids.join(' ')} 2>/dev/null`,
      `rm -rf '${this.scratchDir.replace(/'/g, `'\\''`)}'`,
    ].join('\n');
    this.watchdog = spawn('sh', ['-c', script], { detached: true, stdio: 'ignore' });
    this.watchdog.unref();
  }

  /** Stops the children in reverse start order: SIGTERM, then SIGKILL after a grace period. */
  async stop(graceMs = 3000): Promise<void> {
    for (const child of [...this.children].reverse()) {
      if (child.exitCode !== null || child.signalCode !== null) continue;
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.ref(); // an unreferenced child would not keep the process alive while we wait
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    }
    this.watchdog?.kill('SIGKILL');
    process.off('exit', this.onExit);
  }

  killAll(): void {
    for (const child of this.children) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  }
}

export function stderrTail(child: ChildProcess): string {
  return (child as ChildProcess & { stderrTail?: () => string }).stderrTail?.() ?? '';
}
