import { errorMessage, throwIfAborted } from '../errors.js';
import { CommandTimedOut, runShell } from '../state/command.js';
import { sleep } from '../sleep.js';

export const DEFAULT_HEALTH_TIMEOUT_MS = 60_000;
export const DEFAULT_HEALTH_INTERVAL_MS = 1_000;
/**
 * One attempt never waits longer than this, nor longer than half the timeout, so a server that hangs
 * once still gets retried: with a timeout of 10 s or less, an attempt given it all left no time for another.
 */
const MAX_ATTEMPT_MS = 10_000;

/** How long one attempt may take: the whole timeout only when no retry is allowed. */
function attemptLimitMs(spec: HealthSpec, timeoutMs: number): number {
  return spec.retries === 0 ? timeoutMs : Math.min(MAX_ATTEMPT_MS, Math.ceil(timeoutMs / 2));
}

/**
 * What a check whose attempts were stopped at the limit each one has (HealthResult.attemptLimitMs) says: in its
 * reason, that limit; in the hint, the ways out, for the health check configured at `key` (`targets.prod.health`).
 */
export function attemptLimitAdvice(limitMs: number, key: string): { reason: string; hint: string } {
  const half = limitMs < MAX_ATTEMPT_MS;
  const single = `set ${key}.retries: 0, which gives the one check the whole timeout`;
  return {
    reason: `each attempt may take at most ${limitMs} ms (${half ? 'half the health timeout' : 'the most one attempt is given'}), so a check that needs longer never passes`,
    hint: half ? `raise ${key}.timeout to more than twice what one check needs, or ${single}` : single,
  };
}

export interface HealthSpec {
  /** Healthy when it answers 2xx. */
  url?: string;
  /** Healthy when it exits 0. */
  command?: string;
  /**
   * Run against the new slot before the link is switched (LIFEBOAT_SLOT names
   * it); a failure stops the failover with nothing changed.
   */
  preActivate?: string;
  /** How long the target has to become healthy. */
  timeoutMs?: number;
  /** Pause between attempts. */
  intervalMs?: number;
  /** Failed attempts allowed before giving up early (default: as many as fit in the timeout). */
  retries?: number;
}

export interface HealthAttempt {
  ok: boolean;
  /** HTTP status, or the command's outcome. */
  detail: string;
  ms: number;
  /** Stopped at its time limit: no answer, or no exit, by then. */
  timedOut?: true;
}

export interface HealthResult {
  ok: boolean;
  attempts: number;
  /** From the first attempt to the verdict. */
  ms: number;
  /** The last attempt's detail. */
  detail: string;
  /** No check configured: healthy by assumption. */
  unchecked?: boolean;
  /**
   * Set when it failed because its attempts were stopped at the limit each one has, less than the timeout so
   * that a hang is retried (see attemptLimitMs): that limit. A check that needs longer never passes.
   */
  attemptLimitMs?: number;
}

export interface HealthRunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  signal?: AbortSignal;
  onAttempt?: (attempt: HealthAttempt, n: number) => void;
  /** What a failing command is called in its detail: the config key it came from (default `health check`). */
  commandName?: string;
}

/**
 * The status of a GET of `url`, its body read and dropped. node:http rather
 * than fetch, which refuses ports that browsers block (6000, 6665-6669, 10080…)
 * where a model server may well listen, as curl and a Kubernetes probe allow.
 */
async function httpGet(url: string, signal: AbortSignal): Promise<{ status: number; location?: string }> {
  // Loaded when a URL is checked: node:http and node:https (with TLS) cost every other command about 10 ms to load.
  const client = url.startsWith('https:') ? await import('node:https') : url.startsWith('http:') ? await import('node:http') : undefined;
  if (!client) throw new Error(`${url} is not an http: or https: URL`);
  return new Promise((resolve, reject) => {
    // No keep-alive agent: each attempt is a new connection, as the server's first client after a switch makes.
    const request = client.get(url, { signal, agent: false, headers: { connection: 'close' } }, (res) => {
      res.resume();
      res.on('error', reject);
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ...(res.statusCode && res.statusCode >= 300 && res.statusCode < 400 && res.headers.location ? { location: res.headers.location } : {}) }));
    });
    request.on('error', (err) => reject(signal.aborted ? (signal.reason ?? err) : err));
  });
}

/**
 * One health check attempt, within `timeoutMs`: the URL must answer 2xx, and the command exit 0. A
 * target given both needs both: the URL can say the server is up while the command checks that it
 * serves the new model, and neither is left out.
 */
export async function checkOnce(spec: HealthSpec, timeoutMs: number, options: HealthRunOptions = {}): Promise<HealthAttempt> {
  const started = Date.now();
  if (!spec.url && !spec.command) return { ok: true, detail: 'no health check configured', ms: 0 };
  const answered = spec.url ? await checkUrl(spec.url, timeoutMs, options) : undefined;
  if (answered && (!answered.ok || !spec.command)) return { ...answered, ms: Date.now() - started };
  const left = Math.max(100, timeoutMs - (Date.now() - started));
  const ran = await checkCommand(spec.command!, left, options);
  const detail = answered ? `${answered.detail}; ${ran.ok ? 'the command exited 0' : `the command failed: ${ran.detail}`}` : ran.detail;
  return { ok: ran.ok, detail, ms: Date.now() - started, ...(ran.timedOut ? { timedOut: true as const } : {}) };
}

type Checked = Omit<HealthAttempt, 'ms'>;

async function checkUrl(url: string, timeoutMs: number, options: HealthRunOptions): Promise<Checked> {
  try {
    const signals = [AbortSignal.timeout(timeoutMs), ...(options.signal ? [options.signal] : [])];
    const answer = await httpGet(url, AbortSignal.any(signals));
    const moved = answer.location ? ` (redirects to ${answer.location}, which is not followed)` : '';
    return { ok: answer.status >= 200 && answer.status < 300, detail: `HTTP ${answer.status}${moved}` };
  } catch (err) {
    // Interrupted, the target is not unhealthy: the command stops, as it does during a health command.
    throwIfAborted(options.signal);
    // OpenSSL's messages run over several lines; the first says it.
    if ((err as Error).name === 'TimeoutError') return { ok: false, detail: `no answer within ${timeoutMs} ms`, timedOut: true };
    return { ok: false, detail: errorMessage(err).split('\n')[0]!.trim() };
  }
}

async function checkCommand(command: string, timeoutMs: number, options: HealthRunOptions): Promise<Checked> {
  try {
    await runShell(options.commandName ?? 'health check', command, { cwd: options.cwd, env: options.env, timeoutMs, signal: options.signal });
    return { ok: true, detail: 'exit 0' };
  } catch (err) {
    throwIfAborted(options.signal);
    return { ok: false, detail: errorMessage(err), ...(err instanceof CommandTimedOut ? { timedOut: true as const } : {}) };
  }
}

/**
 * Polls until the target is healthy, the timeout has passed, or more than
 * `retries` attempts failed. The first attempt is made at once.
 */
export async function waitHealthy(spec: HealthSpec | undefined, options: HealthRunOptions = {}): Promise<HealthResult> {
  if (!spec || (!spec.url && !spec.command)) return { ok: true, attempts: 0, ms: 0, detail: 'no health check configured', unchecked: true };
  const timeoutMs = spec.timeoutMs ?? DEFAULT_HEALTH_TIMEOUT_MS;
  const intervalMs = spec.intervalMs ?? DEFAULT_HEALTH_INTERVAL_MS;
  const started = Date.now();
  const deadline = started + timeoutMs;
  const limit = attemptLimitMs(spec, timeoutMs);
  let attempts = 0;
  let last: HealthAttempt = { ok: false, detail: 'not checked', ms: 0 };
  /** An attempt was stopped at `limit`, not at the deadline: one that needs longer was never given the time. */
  let cutAtLimit = false;
  for (;;) {
    throwIfAborted(options.signal);
    attempts++;
    const budget = Math.max(100, Math.min(deadline - Date.now(), limit));
    last = await checkOnce(spec, budget, options);
    if (last.timedOut && budget === limit && limit < timeoutMs) cutAtLimit = true;
    options.onAttempt?.(last, attempts);
    if (last.ok) return { ok: true, attempts, ms: Date.now() - started, detail: last.detail };
    const failures = attempts;
    if (spec.retries !== undefined && failures > spec.retries) break;
    const left = deadline - Date.now();
    if (left <= 0) break;
    // The last check is made at the deadline, not an interval before it: a server ready within the
    // timeout passes whatever the interval (one longer than the timeout gave a single check).
    await sleep(Math.min(intervalMs, left), options.signal);
  }
  return { ok: false, attempts, ms: Date.now() - started, detail: last.detail, ...(cutAtLimit && last.timedOut ? { attemptLimitMs: limit } : {}) };
}

