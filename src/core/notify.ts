import * as os from 'node:os';
import { errorMessage } from '../errors.js';

export const NOTIFY_TIMEOUT_MS = 5000;

/** The JSON body POSTed to a notify URL (stable; extend, never rename). */
export interface NotifyEvent {
  source: 'lifeboat';
  command: string;
  outcome: 'success' | 'failure';
  exitCode: number;
  /** The error message of a failure; null on success. */
  message: string | null;
  host: string;
  repository: string | null;
  /** The deployment the run named (--deployment, LIFEBOAT_DEPLOYMENT, deployment: in the config); null when none. */
  deployment: string | null;
  point: string | null;
  startedAt: string;
  endedAt: string;
  durationMs: number;
  /** The run's warnings (the first 20; `detail.warnings` counts them all): files left out, a file that kept changing … */
  warnings: { code: string; path?: string; message: string }[];
  /** Command figures: bytes, files, points, rtoMs, rpoMs, warnings (a count) … */
  detail: Record<string, unknown>;
}

export function makeEvent(e: Omit<NotifyEvent, 'source' | 'host'>): NotifyEvent {
  return { source: 'lifeboat', host: os.hostname(), ...e };
}

/** Hops a notification follows before it gives up. */
const MAX_REDIRECTS = 5;

/**
 * POSTs the event as JSON with a short timeout. Never throws: a notification
 * that cannot be delivered must not fail the backup it reports on. Returns
 * undefined when delivered, else why not.
 */
export async function sendNotification(url: string, event: NotifyEvent, timeoutMs = NOTIFY_TIMEOUT_MS): Promise<string | undefined> {
  const headers: Record<string, string> = { 'content-type': 'application/json', 'user-agent': 'lifeboat' };
  let target: URL;
  try {
    target = new URL(url);
  } catch {
    return 'the notify URL is not a valid URL';
  }
  // `https://user:token@host/…` means basic authentication, sent as a header, never as part of the URL.
  if (target.username || target.password) {
    const user = decodeURIComponent(target.username);
    const password = decodeURIComponent(target.password);
    headers.authorization = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
    target.username = '';
    target.password = '';
  }
  try {
    // Redirects are followed by hand: a POST must stay a POST with its body on 301, 302 and 303 too.
    const signal = AbortSignal.timeout(timeoutMs);
    const body = Buffer.from(JSON.stringify(event));
    let at = target;
    for (let hop = 0; ; hop++) {
      const res = await httpPost(at, headers, body, signal);
      if (res.status >= 300 && res.status < 400 && res.location) {
        if (hop >= MAX_REDIRECTS) return `the server redirected more than ${MAX_REDIRECTS} times`;
        const next = new URL(res.location, at);
        if (next.protocol !== 'http:' && next.protocol !== 'https:') return `the server redirected to a ${next.protocol} URL`;
        // Credentials go only where they were meant for.
        if (next.origin !== at.origin) delete headers.authorization;
        at = next;
        continue;
      }
      if (res.status < 200 || res.status >= 300) return `the server answered ${res.status} ${res.statusText}`.trim();
      break;
    }
    return undefined;
  } catch (err) {
    // Node's own words ("The operation was aborted due to timeout") say neither what nor how long.
    if ((err as { name?: unknown }).name === 'TimeoutError') return `no answer within ${timeoutMs / 1000} s`;
    const cause = (err as { cause?: unknown }).cause;
    const message = cause ? `${errorMessage(err)}: ${errorMessage(cause)}` : errorMessage(err);
    // Messages may quote the URL; its query string can hold a token.
    return message.split(url).join(redactUrl(url)).split(target.toString()).join(redactUrl(url));
  }
}

/**
 * POSTs `body` to `url` and reads the answer to its end. node:http rather than
 * fetch, which refuses ports that browsers block (6000, 6665-6669, 10080…),
 * where a webhook receiver may well listen, as curl allows.
 */
async function httpPost(url: URL, headers: Record<string, string>, body: Buffer, signal: AbortSignal): Promise<{ status: number; statusText: string; location?: string }> {
  // Loaded only when a notification is sent: node:https (with TLS) costs every other run about 10 ms to load.
  const client = url.protocol === 'https:' ? await import('node:https') : url.protocol === 'http:' ? await import('node:http') : undefined;
  if (!client) throw new Error(`the notify URL is not an http: or https: URL`);
  return new Promise((resolve, reject) => {
    const request = client.request(url, { method: 'POST', signal, agent: false, headers: { ...headers, 'content-length': String(body.length), connection: 'close' } }, (res) => {
      res.resume();
      res.on('error', reject);
      res.on('end', () => resolve({ status: res.statusCode ?? 0, statusText: res.statusMessage ?? '', ...(typeof res.headers.location === 'string' ? { location: res.headers.location } : {}) }));
    });
    request.on('error', (err) => reject(signal.aborted ? (signal.reason ?? err) : err));
    request.end(body);
  });
}

/** A URL fit for logs: no user, password or query string (tokens often live there). */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    u.username = '';
    u.password = '';
    const hadQuery = u.search !== '';
    u.search = '';
    return `${u.toString()}${hadQuery ? '?…' : ''}`;
  } catch {
    return '(invalid URL)';
  }
}
