import type { Readable } from 'node:stream';
import { CredentialsRefusedError, InterruptedError, LifeboatError, NoBucketError, PermissionRefusedError, RuntimeFailure, UsageError, errorMessage } from '../errors.js';
import { isAccessDenied, type GetDocumentOptions, type GetOptions, type IncompleteWrite, type ObjectInfo, type ObjectReader, type ObjectWriter, type PutDocumentOptions, type PutOptions, type Storage, type StorageCapabilities } from './storage.js';
import { sleep } from '../sleep.js';
import type { Reporter } from '../core/events.js';

export interface RetryPolicy {
  /** Total attempts, the first one included. */
  maxAttempts: number;
  /** Backoff before retry n is a random delay in [0, min(maxDelayMs, baseDelayMs * 2^(n-1))] ("full jitter"). */
  baseDelayMs: number;
  maxDelayMs: number;
  /** Source of randomness in [0, 1); tests pass a seeded one. */
  random?: () => number;
  /** The command's interruption: a request that fails once it is set is not tried again, so Ctrl-C does not wait out the attempts. */
  interrupt?: AbortSignal;
  /** Called before each backoff, e.g. for a debug log or a test's counter. */
  onRetry?: (event: { operation: string; key: string; attempt: number; delayMs: number; error: unknown }) => void;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = { maxAttempts: 6, baseDelayMs: 100, maxDelayMs: 5000 };

/**
 * The policy, with each retry also reported as it happens: a request that
 * hangs or fails again and again is seen then, not only minutes later when the
 * attempts are spent. Reported as information, not a warning: a retry that
 * then succeeds is no problem, so --quiet (a cron job's mail) leaves it out,
 * and a request that never succeeds ends in the command's error anyway.
 */
export function reportingRetries(policy: RetryPolicy, reporter: Reporter): RetryPolicy {
  return {
    ...policy,
    onRetry: (event) => {
      policy.onRetry?.(event);
      const problem = describeError(event.error).replace(/\.$/, '');
      reporter.notice?.({
        level: 'info',
        code: 'storage-retry',
        message: `S3 ${event.operation} ${event.key}: ${problem}; trying again (attempt ${event.attempt + 1} of ${policy.maxAttempts})`,
      });
    },
  };
}

/**
 * A request that got no answer from the server at `server`, said with the address and what to
 * check there. Its name and code are those of the underlying failure, so that retrying judges it
 * as it would that failure.
 */
export class EndpointError extends Error {
  constructor(
    message: string,
    /** `http://host:port` of the server. */
    readonly server: string,
    readonly hint: string,
    readonly code: string,
    options: { name?: string; cause?: unknown; waited?: string } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = options.name ?? 'Error';
    this.waited = options.waited;
  }

  /** For a wait that ran out with no answer: how long it was, and which setting gave it ("20 s, s3.timeout"). */
  readonly waited: string | undefined;
}

/**
 * A request failed, or not sent, because the server at `server` has stopped answering: requests
 * in a row got no answer at all, none answered in between. Not retried: the server has shown it
 * does not answer, and each attempt would only wait out its time limit again.
 */
export class SilentServerError extends EndpointError {
  constructor(message: string, server: string, hint: string) {
    super(message, server, hint, 'ESILENT', { name: 'ServerSilent' });
  }
}

/** What to do about a server that stopped answering, and what becomes of what the command leaves. */
function silentServerHint(server: string): string {
  return `check that ${server} is the S3 endpoint (s3.endpoint, --s3-endpoint, AWS_ENDPOINT_URL_S3), that its server is up and that this host reaches it, then run the command again: what this run could not remove (its lock, volumes, an incomplete upload) the next one takes over and removes; a server that is only slow needs a longer s3.timeout`;
}

/**
 * The server at `server` taken for silent: `requests` requests in a row got no answer, the last
 * of them as `last` (an EndpointError from noAnswer, noConnection or noTraffic) says.
 */
export function stoppedAnswering(server: string, requests: number, last: EndpointError): SilentServerError {
  const waited = last.waited === undefined ? '' : ` (the last waited ${last.waited})`;
  return new SilentServerError(`the server at ${server} stopped answering: ${requests} requests in a row got no answer${waited}`, server, silentServerHint(server));
}

/**
 * A request not sent, since the server at `server` has stopped answering: `why` says what showed
 * it (an earlier request that got no answer within s3.timeout, after Ctrl-C; or requests in a row).
 */
export function notSent(server: string, why: string): SilentServerError {
  return new SilentServerError(`not sent, since the server at ${server} ${why}`, server, silentServerHint(server));
}

/** "20 s", or "300 ms" for a wait that is no whole number of seconds. */
function waitedFor(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}

/** A wait that ran out, said with what to check: named and coded as a timeout, so that it is retried as one. */
function timedOut(message: string, server: string, hint: string, cause: unknown, waited: string): EndpointError {
  return new EndpointError(message, server, hint, 'ETIMEDOUT', { name: 'TimeoutError', cause, waited });
}

/** The milliseconds the SDK says it waited, when `err` is its TimeoutError of the kind `pattern` (whose group 1 is the wait) matches. */
function sdkTimeoutMs(err: unknown, pattern: RegExp): number | undefined {
  const e = err as { name?: string; message?: string } | undefined;
  const waited = e?.name === 'TimeoutError' ? pattern.exec(e.message ?? '') : null;
  return waited ? Number(waited[1]) : undefined;
}

/** A request the server took and did not begin to answer in time: retried, as a timeout. */
export function noAnswer(server: string, waitedMs: number, cause: unknown): EndpointError {
  return timedOut(
    `the server at ${server} answered nothing within ${waitedFor(waitedMs)}`,
    server,
    `check that ${server} is the S3 endpoint (s3.endpoint, --s3-endpoint, AWS_ENDPOINT_URL_S3) and that its server is up: it took the connection but sent no answer; a server that is only slow needs a longer s3.timeout`,
    cause,
    `${waitedFor(waitedMs)}, s3.timeout`,
  );
}

/**
 * A connection the server did not accept in time (the SDK's connection timeout): a host or port
 * nothing answers on, a firewall that drops the packets, a server too busy to accept. Retried.
 */
export function noConnection(server: string, err: unknown): EndpointError | undefined {
  const ms = sdkTimeoutMs(err, /did not establish a connection .*within the configured timeout of (\d+) ms/);
  if (ms === undefined) return undefined;
  return timedOut(
    `the server at ${server} did not accept a connection within ${waitedFor(ms)}`,
    server,
    `check the endpoint's host and port (s3.endpoint, --s3-endpoint, AWS_ENDPOINT_URL_S3), that its server is up, and that no firewall drops this host's connections to it`,
    err,
    `${waitedFor(ms)} for a connection`,
  );
}

/**
 * A connection on which nothing moved for the idle timeout (the SDK's socket timeout): an upload
 * the server stopped reading, a download that stalled partway through its body. Retried (a
 * download goes on from where it stopped).
 */
export function noTraffic(server: string | undefined, err: unknown): EndpointError | undefined {
  const ms = sdkTimeoutMs(err, /timed out after (\d+) ms of inactivity/);
  if (ms === undefined) return undefined;
  return timedOut(
    `nothing moved between this host and ${server === undefined ? 'the S3 server' : `the server at ${server}`} for ${waitedFor(ms)} (s3.idleTimeout)`,
    server ?? '',
    'a link or a server that stalls for long stretches needs a longer s3.idleTimeout; else check the server and the network to it',
    err,
    `${waitedFor(ms)} with nothing moving, s3.idleTimeout`,
  );
}

/**
 * A failure before any answer that usually means the endpoint's scheme is wrong: an https://
 * endpoint whose server does not speak TLS (not retried: it will not start to), or an http://
 * one whose server closed the connection, as a TLS server does on a request in clear (retried,
 * since an S3 server may also drop a connection now and then).
 */
export function schemeMismatch(server: string, err: unknown): EndpointError | undefined {
  const code = (err as { code?: string } | undefined)?.code;
  if (server.startsWith('https:') && code === 'EPROTO') {
    return new EndpointError(`the server at ${server} does not speak TLS`, server, `if it serves plain HTTP, give the endpoint as ${server.replace(/^https:/, 'http:')}`, code, { cause: err });
  }
  if (server.startsWith('http:') && code === 'ECONNRESET') {
    return new EndpointError(
      `the server at ${server} closed the connection without answering`,
      server,
      `if it serves HTTPS, give the endpoint as ${server.replace(/^http:/, 'https:')}; else check that it is the S3 endpoint and that its server is up`,
      code,
      { cause: err },
    );
  }
  return undefined;
}

/**
 * A web page where an S3 answer was expected: the endpoint is a web server, a console or a
 * proxy's login page, not the S3 API. S3 answers in XML or with the bytes stored, never in HTML;
 * a proxy's page for a status worth retrying (502 while the server restarts) is left to retrying.
 */
export function webPageAnswer(server: string, status: number, contentType: string | undefined): UsageError | undefined {
  if (!contentType || !/^\s*text\/html\b/i.test(contentType) || RETRYABLE_STATUS.has(status)) return undefined;
  return new UsageError(`the server at ${server} answered with a web page (HTTP ${status}, ${contentType.split(';')[0]!.trim()}), not as an S3 server`, {
    hint: 'check that the endpoint (s3.endpoint, --s3-endpoint, AWS_ENDPOINT_URL_S3) is the address of the S3 API, not of a web console or another service on that host',
  });
}

const RETRYABLE_NAMES = new Set([
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'ThrottledException',
  'RequestThrottled',
  'RequestThrottledException',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'InternalError',
  'ServiceUnavailable',
  // A concurrent conditional write on the same key; S3 documents it as retryable.
  'ConditionalRequestConflict',
  // The Content-MD5 or the signed SHA-256 did not match what arrived: the bytes were
  // damaged in transit and a resend of the same buffered body is the cure. Bodies
  // we send are always buffered.
  'BadDigest',
  'XAmzContentSHA256Mismatch',
]);

const RETRYABLE_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'ERR_STREAM_PREMATURE_CLOSE',
  'UND_ERR_SOCKET',
]);

export const RETRYABLE_STATUS = new Set([408, 429, 500, 502, 503, 504]);

/**
 * Whether an error is worth another attempt: timeouts, dropped connections,
 * server errors and throttling. Decided from names, codes and HTTP status, never
 * from messages (some servers send none). Our own typed errors (not found,
 * integrity, interrupts) are final.
 */
export function isRetryable(err: unknown): boolean {
  if (err === null || typeof err !== 'object') return false;
  if (err instanceof LifeboatError || err instanceof SilentServerError) return false;
  const e = err as {
    name?: string;
    code?: string;
    $retryable?: unknown;
    $metadata?: { httpStatusCode?: number; clockSkewCorrected?: boolean };
    cause?: unknown;
  };
  if (e.name === 'AbortError') return false;
  // The SDK set its clock by the server's Date header on this answer: signed again, the request goes through.
  if (e.$metadata?.clockSkewCorrected === true) return true;
  const status = e.$metadata?.httpStatusCode;
  if (status !== undefined && RETRYABLE_STATUS.has(status)) return true;
  if (e.name !== undefined && RETRYABLE_NAMES.has(e.name)) return true;
  if (e.code !== undefined && RETRYABLE_CODES.has(e.code)) return true;
  if (e.$retryable) return true;
  // A response whose body could not be read or parsed (the connection dropped
  // while a small XML answer was arriving) carries no HTTP error status.
  if (status !== undefined && status < 300 && e.name !== undefined && /Deserializ|Parse/i.test(e.name)) return true;
  if (e.cause !== undefined && e.cause !== err) return isRetryable(e.cause);
  return false;
}

/** Status and name of an SDK error, for messages (radosgw's errors have no message of their own). */
export function describeError(err: unknown): string {
  if (err instanceof EndpointError) return err.message;
  const e = err as { name?: string; code?: string; $metadata?: { httpStatusCode?: number } } | undefined;
  const parts: string[] = [];
  if (e?.$metadata?.httpStatusCode !== undefined) parts.push(`HTTP ${e.$metadata.httpStatusCode}`);
  // A HEAD's error has no body to name it: the SDK calls it Unknown, which says nothing the status does not.
  if (e?.name && e.name !== 'Error' && e.name !== 'Unknown') parts.push(e.name);
  const message = errorMessage(err);
  // A system error's message names its code already (connect ECONNREFUSED 127.0.0.1:9000): once is enough.
  if (e?.code && e.code !== e.name && !message.includes(e.code)) parts.push(e.code);
  if (message && message !== 'UnknownError' && !parts.includes(message)) parts.push(message);
  return parts.join(' ') || 'unknown error';
}

export function backoffDelay(policy: RetryPolicy, attempt: number): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  return Math.floor((policy.random ?? Math.random)() * ceiling);
}

/**
 * Runs `fn` until it succeeds, a non-retryable error occurs, or the attempts are
 * spent. Typed errors pass through unchanged; any other final error becomes a
 * RuntimeFailure that names the operation and the key.
 */
export async function retrying<T>(
  policy: RetryPolicy,
  operation: string,
  key: string,
  fn: (attempt: number) => Promise<T>,
  signal?: AbortSignal,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      // The SDK answers an interruption with its own AbortError, which would read as an unexpected failure.
      if (policy.interrupt?.aborted && (err as { name?: string } | undefined)?.name === 'AbortError') throw new InterruptedError();
      if (!isRetryable(err) || signal?.aborted || policy.interrupt?.aborted) throw asFailure(operation, key, err, attempt);
      if (attempt >= policy.maxAttempts) throw asFailure(operation, key, err, attempt);
      const delayMs = backoffDelay(policy, attempt);
      policy.onRetry?.({ operation, key, attempt, delayMs, error: err });
      await pauseBeforeRetry(policy, delayMs, signal);
    }
  }
}

/**
 * The pause before a request is tried again. Ctrl-C ends it at once, with the InterruptedError a
 * request under way gets, and no attempt follows: the S3 handler lets a request made after an
 * interruption run (a clean-up's), so the attempt would go out and the command carry on.
 */
export async function pauseBeforeRetry(policy: RetryPolicy, delayMs: number, signal?: AbortSignal): Promise<void> {
  const stops = [signal, policy.interrupt].filter((s): s is AbortSignal => s !== undefined);
  await sleep(delayMs, stops.length > 0 ? AbortSignal.any(stops) : undefined);
  if (policy.interrupt?.aborted) throw new InterruptedError();
}

/** Errors that say the server could not be reached at all, as opposed to answering with an error. */
const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

/** The first error code along `err`'s causes that `wanted` holds. */
function codeAlong(err: unknown, wanted: (code: string) => boolean): string | undefined {
  for (let e = err as { code?: string; cause?: unknown } | undefined, depth = 0; e && depth < 4; e = e.cause as typeof e, depth++) {
    if (e.code !== undefined && wanted(e.code)) return e.code;
  }
  return undefined;
}

function unreachable(err: unknown): boolean {
  return codeAlong(err, (code) => UNREACHABLE_CODES.has(code)) !== undefined;
}

/** What to do about an endpoint whose TLS certificate this host does not accept (an on-premises MinIO or Ceph, most often). */
function certificateHint(err: unknown): string | undefined {
  const code = codeAlong(err, (c) => c.includes('CERT') || c.includes('SELF_SIGNED') || c === 'UNABLE_TO_VERIFY_LEAF_SIGNATURE');
  if (code === undefined) return undefined;
  if (code === 'CERT_HAS_EXPIRED') return "the endpoint's TLS certificate has expired: renew it on the server";
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return "the endpoint's TLS certificate is for another host name: use the name it was issued for in the endpoint";
  return "this host does not trust the endpoint's TLS certificate: give the CA that signed it with NODE_EXTRA_CA_CERTS=/path/to/ca.pem";
}

/** What an S3 driver knows of a request the server refused for want of permission: the action, and where to grant it. */
export interface RefusedPermission {
  /** `s3:GetObject`, `s3:ListBucket`, … */
  action: string;
  /** The ARN to grant it on: the repository's objects (`arn:aws:s3:::bucket/prefix/*`) or the bucket. */
  on: string;
  /** Something else a server may check the request against (Ceph checks a multi-object delete against the bucket too). */
  also?: string;
}

/** Marks a refused request with what it needed, for permissionHint. */
export function refusedPermission(err: unknown, refused: RefusedPermission): void {
  if (err !== null && typeof err === 'object') Object.assign(err, { lifeboatRefused: refused });
}

/** What to grant, and to whom, for a request refused with 403. */
function permissionHint(err: unknown): string {
  const refused = (err as { lifeboatRefused?: RefusedPermission } | undefined)?.lifeboatRefused;
  const whose = 'these credentials (`aws sts get-caller-identity` says whose they are)';
  const where = 'docs/S3.md ("IAM policy") lists what lifeboat needs';
  // With SSE-KMS the refusal may be the key's: AWS names the KMS action in its message.
  const kms = /\bkms:[A-Za-z]+/.exec(errorMessage(err))?.[0];
  if (kms) return `grant ${kms} on the repository's KMS key (s3.kmsKeyId) to ${whose}; ${where}`;
  if (!refused) return `check the policies that apply to ${whose}; ${where}`;
  const also = refused.also ? ` (and on ${refused.also}, which Ceph checks too)` : '';
  const missing = refused.action === 's3:GetObject' ? '; without s3:ListBucket, S3 answers so for a missing object too' : '';
  return `grant ${refused.action} on ${refused.on}${also} to ${whose}, or use credentials that have it${missing}; ${where}`;
}

export function asFailure(operation: string, key: string, err: unknown, attempts = 1): Error {
  if (err instanceof LifeboatError) return err;
  if (err instanceof Error && err.name === 'AbortError') return err;
  // A wrong bucket name, or a bucket not made yet (init does not create buckets): a set-up mistake too.
  if ((err as { name?: string })?.name === 'NoSuchBucket') {
    return new NoBucketError(`the repository's bucket does not exist (${operation} ${key}: ${describeError(err)})`, {
      cause: err,
      hint: 'check the bucket name in the repository URL and the endpoint; lifeboat does not create buckets (aws s3 mb s3://BUCKET)',
    });
  }
  // A key the server does not know, or a secret that does not match it: the credentials given are wrong, not the storage.
  const rejected = (err as { name?: string })?.name;
  const why: Record<string, string> = {
    InvalidAccessKeyId: 'its access key id is unknown to the server',
    SignatureDoesNotMatch: 'the secret key does not match the access key id',
    ExpiredToken: 'their session token has expired',
    TokenRefreshRequired: 'their session token has expired',
    InvalidToken: 'their session token is malformed or invalid',
  };
  if (rejected !== undefined && Object.hasOwn(why, rejected)) {
    const which = why[rejected]!;
    return new CredentialsRefusedError(`the S3 server refused the repository's credentials: ${which} (${operation} ${key}: ${describeError(err)})`, {
      cause: err,
      hint: rejected.includes('Token')
        ? 'temporary credentials must be renewed: get new ones (aws sso login, aws sts assume-role) or unset a stale AWS_SESSION_TOKEN'
        : 'check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the profile AWS_PROFILE names, and that they belong to the endpoint of the repository',
    });
  }
  const status = (err as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
  const tries = attempts > 1 ? ` after ${attempts} attempts` : '';
  if (isAccessDenied(err)) {
    return new PermissionRefusedError(`${operation} ${key} failed${tries}: ${describeError(err)}`, { cause: err, hint: permissionHint(err) });
  }
  const hint =
    status === 301 || (err as { name?: string })?.name === 'PermanentRedirect'
        ? 'check the region (s3.region) or the endpoint of the repository'
        : (err as { name?: string })?.name === 'RequestTimeTooSkewed'
          ? `the clocks of this host and the S3 server differ by more than the 15 minutes S3 allows${clockSkewOf(err)}: set this host's clock right (timedatectl set-ntp true, chronyc makestep) and run again`
        : unreachable(err)
          ? 'check the endpoint (s3.endpoint, --s3-endpoint) and that this host can reach it'
          : err instanceof EndpointError
            ? err.hint
            : certificateHint(err);
  return new RuntimeFailure(`${operation} ${key} failed${tries}: ${describeError(err)}`, { cause: err, hint });
}

/** " (this host's clock is N minutes ahead of the server's)" when the server's answer gave its time (its Date header), else nothing. */
function clockSkewOf(err: unknown): string {
  const date = (err as { $response?: { headers?: Record<string, string | undefined> } })?.$response?.headers?.date;
  const serverTime = date === undefined ? NaN : Date.parse(date);
  if (Number.isNaN(serverTime)) return '';
  const minutes = Math.round((Date.now() - serverTime) / 60_000);
  return ` (this host's clock is ${Math.abs(minutes)} minutes ${minutes > 0 ? 'ahead of' : 'behind'} the server's)`;
}

/**
 * Retries every storage operation that can be repeated safely.
 *
 * `put` is passed through: its body is a one-shot stream that cannot be rewound,
 * so a driver retries below it, on pieces it holds in memory (the S3 driver
 * resends buffered multipart parts and buffered small objects). Likewise a `get`
 * stream that breaks mid-body is resumed by the driver; here only opening it is
 * retried. A listing is retried by the driver page by page, since only the
 * driver can continue from where a failed page left off.
 */
export function withRetry(storage: Storage, policy: RetryPolicy = DEFAULT_RETRY_POLICY): Storage {
  return new RetryingStorage(storage, policy);
}

class RetryingStorage implements Storage {
  constructor(
    private readonly inner: Storage,
    private readonly policy: RetryPolicy,
  ) {}

  get location(): string {
    return this.inner.location;
  }

  get capabilities(): StorageCapabilities {
    return this.inner.capabilities;
  }

  async put(key: string, body: Readable, options?: PutOptions): Promise<ObjectInfo> {
    try {
      return await this.inner.put(key, body, options);
    } catch (err) {
      throw asFailure('put', key, err);
    }
  }

  async openWriter(key: string, options?: PutOptions): Promise<ObjectWriter> {
    const fail = (err: unknown): never => {
      throw asFailure('put', key, err);
    };
    const writer = await this.inner.openWriter(key, options).catch(fail);
    return {
      write: (chunk) => writer.write(chunk).catch(fail),
      end: () => writer.end().catch(fail),
      abort: (reason) => writer.abort(reason),
    };
  }

  async putDocument(key: string, data: Uint8Array, options?: PutDocumentOptions): Promise<boolean> {
    let retried = false;
    const created = await retrying(this.policy, 'put', key, async (attempt) => {
      retried = attempt > 1;
      return this.inner.putDocument(key, data, options);
    });
    if (created || !retried) return created;
    // A conditional write that was retried may have succeeded on an attempt whose
    // answer was lost: then the object exists with exactly our bytes.
    const stored = await this.getDocument(key).catch(() => undefined);
    return stored !== undefined && Buffer.compare(stored, Buffer.from(data)) === 0;
  }

  getDocument(key: string, options?: GetDocumentOptions): Promise<Buffer> {
    return retrying(this.policy, 'get', key, () => this.inner.getDocument(key, options));
  }

  get(key: string, options?: GetOptions): Promise<Readable> {
    return retrying(this.policy, 'get', key, () => this.inner.get(key, options), options?.signal);
  }

  openReader(key: string, options?: GetOptions): Promise<ObjectReader> {
    return retrying(this.policy, 'get', key, () => this.inner.openReader(key, options), options?.signal);
  }

  head(key: string): Promise<ObjectInfo | undefined> {
    return retrying(this.policy, 'head', key, () => this.inner.head(key));
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    try {
      yield* this.inner.list(prefix);
    } catch (err) {
      throw asFailure('list', prefix === '' ? '/' : prefix, err);
    }
  }

  async *listPrefixes(prefix: string): AsyncIterable<string> {
    try {
      yield* this.inner.listPrefixes(prefix);
    } catch (err) {
      throw asFailure('list', prefix === '' ? '/' : prefix, err);
    }
  }

  delete(keys: readonly string[]): Promise<void> {
    const what = keys.length === 1 ? keys[0]! : `${keys.length} objects`;
    return retrying(this.policy, 'delete', what, () => this.inner.delete(keys));
  }

  async *incompleteWrites(prefix?: string): AsyncIterable<IncompleteWrite> {
    try {
      yield* this.inner.incompleteWrites(prefix);
    } catch (err) {
      throw asFailure('list', 'incomplete uploads', err);
    }
  }

  removeIncomplete(writes: readonly IncompleteWrite[]): Promise<void> {
    const what = writes.length === 1 ? writes[0]!.key : `${writes.length} incomplete writes`;
    return retrying(this.policy, 'remove', what, () => this.inner.removeIncomplete(writes));
  }

  cleanupIncomplete(olderThanMs: number, prefix?: string): Promise<number> {
    return retrying(this.policy, 'clean up', 'incomplete uploads', () => this.inner.cleanupIncomplete(olderThanMs, prefix));
  }

  keepReserve(): Promise<void> {
    return this.inner.keepReserve();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
