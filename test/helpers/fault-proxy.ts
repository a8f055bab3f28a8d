/**
 * An HTTP proxy on 127.0.0.1 that sits between the S3 client and a real server
 * and misbehaves the way networks and busy S3 endpoints do: it drops connections
 * in the middle of a request or response body, answers 503 SlowDown and 500
 * InternalError with S3's XML error bodies, delays answers, and flips a bit of
 * an upload's body (which the server's Content-MD5 check must catch), and refuses
 * requests as AWS does when temporary credentials run out or a policy denies them. Faults are drawn
 * from a seeded PRNG at configurable rates, or scripted for the next requests.
 * The proxy stops itself after a lifetime, and injects at most `maxFaults`.
 */
import { Agent, createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { seededRandom } from './data.js';

export type FaultKind = 'slowDown' | 'internalError' | 'dropRequest' | 'dropResponse' | 'delay' | 'corruptRequest' | 'expiredToken' | 'accessDenied';

/** Probability per request of each fault; they are exclusive, their sum at most 1. */
export type FaultRates = Partial<Record<FaultKind, number>>;

export interface FaultProxyOptions {
  /** The real server, e.g. http://127.0.0.1:8000. */
  upstream: string;
  seed: number;
  rates?: FaultRates;
  /** How long a `delay` fault holds the answer back. */
  delayMs?: number;
  /** Only requests with these methods get random faults (all when absent). */
  methods?: string[];
  maxFaults?: number;
  /** At most this many faults in a row for one request (its method and URL), its retries included: a budget of attempts it then stays within. */
  maxFaultsInARow?: number;
  lifetimeMs?: number;
}

export interface ProxiedRequest {
  method: string;
  path: string;
  range?: string;
  /** Whether the request carried a Content-MD5 header. */
  contentMd5: boolean;
  fault?: FaultKind;
}

export interface FaultProxy {
  endpoint: string;
  /** Every request seen, in arrival order. */
  readonly requests: ProxiedRequest[];
  /** Faults injected so far, by kind. */
  readonly injected: Record<FaultKind, number>;
  /** The most requests that were open at the same time. */
  readonly maxConcurrent: number;
  setRates(rates: FaultRates, methods?: string[]): void;
  /** Injects `kind` into the next `times` requests with this method (any when absent), before any random fault. */
  inject(kind: FaultKind, options?: { method?: string; path?: RegExp; times?: number }): void;
  /** Sets (or, undefined, lifts) the most faults in a row one request gets. */
  limitFaultsInARow(max: number | undefined): void;
  /** Drops the injected faults not yet used. */
  cancelInjections(): void;
  /**
   * Acts as S3 does for objects a lifecycle rule moved to an archive class: listings
   * name their storage class, and reading one answers 403 InvalidObjectState.
   * `matches` gets the object's bucket and key (`bucket/key`, path-style).
   */
  archive(matches: (object: string) => boolean, storageClass?: string): void;
  stop(): Promise<void>;
}

const FAULT_KINDS: FaultKind[] = ['slowDown', 'internalError', 'dropRequest', 'dropResponse', 'delay', 'corruptRequest', 'expiredToken', 'accessDenied'];

export async function startFaultProxy(options: FaultProxyOptions): Promise<FaultProxy> {
  const upstream = new URL(options.upstream);
  const random = seededRandom(options.seed);
  const agent = new Agent({ keepAlive: true, maxSockets: 64 });
  let rates: FaultRates = options.rates ?? {};
  let methods = options.methods;
  const scripted: { kind: FaultKind; method?: string; path?: RegExp; remaining: number }[] = [];
  const maxFaults = options.maxFaults ?? 10_000;
  let maxInARow = options.maxFaultsInARow;
  /** Faults in a row of each request (method and URL) that got one last time. */
  const inARow = new Map<string, number>();
  const delayMs = options.delayMs ?? 200;
  const requests: ProxiedRequest[] = [];
  const injected = Object.fromEntries(FAULT_KINDS.map((k) => [k, 0])) as Record<FaultKind, number>;
  const sockets = new Set<Socket>();
  let archived: { matches: (object: string) => boolean; storageClass: string } | undefined;
  let requestCount = 0;
  let open = 0;
  let maxConcurrent = 0;

  function chooseFault(method: string, path: string): FaultKind | undefined {
    if (totalInjected() >= maxFaults) return undefined;
    const script = scripted.find((s) => s.remaining > 0 && (s.method === undefined || s.method === method) && (s.path === undefined || s.path.test(path)));
    if (script) {
      script.remaining--;
      return script.kind;
    }
    if (methods && !methods.includes(method)) return undefined;
    let draw = random();
    for (const kind of FAULT_KINDS) {
      const rate = rates[kind] ?? 0;
      if (draw < rate) return kind;
      draw -= rate;
    }
    return undefined;
  }

  function totalInjected(): number {
    return FAULT_KINDS.reduce((sum, k) => sum + injected[k], 0);
  }

  const server = createServer((req, res) => {
    // Connections this proxy cuts raise errors on both sides; they are the point.
    req.on('error', () => {});
    res.on('error', () => {});
    open++;
    maxConcurrent = Math.max(maxConcurrent, open);
    res.on('close', () => open--);
    const method = req.method ?? 'GET';
    const request = `${method} ${req.url ?? '/'}`;
    const fault = maxInARow !== undefined && (inARow.get(request) ?? 0) >= maxInARow ? undefined : chooseFault(method, req.url ?? '/');
    if (fault) inARow.set(request, (inARow.get(request) ?? 0) + 1);
    else inARow.delete(request);
    const id = ++requestCount;
    requests.push({ method, path: req.url ?? '/', range: header(req, 'range'), contentMd5: header(req, 'content-md5') !== undefined, fault });
    if (fault) injected[fault]++;
    const url = new URL(req.url ?? '/', 'http://proxy');
    if (archived && method === 'GET') {
      const object = decodeURIComponent(url.pathname.slice(1));
      if (url.searchParams.get('list-type') === '2') return forward(req, res, undefined, (listing) => withStorageClass(listing, url.pathname.slice(1).replace(/\/$/, ''), archived!));
      if (!url.search.includes('uploads') && archived.matches(object)) {
        return answerError(req, res, 403, 'InvalidObjectState', "The operation is not valid for the object's storage class", id, `<StorageClass>${archived.storageClass}</StorageClass>`);
      }
    }
    switch (fault) {
      case 'slowDown':
        return answerError(req, res, 503, 'SlowDown', 'Please reduce your request rate.', id);
      case 'internalError':
        return answerError(req, res, 500, 'InternalError', 'We encountered an internal error. Please try again.', id);
      // Temporary credentials that ran out, and a policy that refuses: as AWS answers them.
      case 'expiredToken':
        return answerError(req, res, 400, 'ExpiredToken', 'The provided token has expired.', id);
      case 'accessDenied':
        return answerError(req, res, 403, 'AccessDenied', 'Access Denied', id);
      default:
        return forward(req, res, fault);
    }
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  function forward(req: IncomingMessage, res: ServerResponse, fault: FaultKind | undefined, rewrite?: (body: string) => string): void {
    const upstreamRequest = httpRequest({
      agent,
      host: upstream.hostname,
      port: upstream.port,
      method: req.method,
      path: req.url,
      // The Host header is part of the request signature: pass it unchanged.
      headers: req.headers,
    });
    upstreamRequest.on('error', () => req.socket.destroy());
    upstreamRequest.on('response', (upstreamResponse) => {
      upstreamResponse.on('error', () => req.socket.destroy());
      if (rewrite) return relayRewritten(res, upstreamResponse, rewrite);
      const send = () => relayResponse(req, res, upstreamResponse, fault === 'dropResponse');
      if (fault === 'delay') setTimeout(send, delayMs);
      else send();
    });
    if (fault === 'corruptRequest') {
      const length = Number(header(req, 'content-length') ?? 0);
      const flipAt = Math.floor(length * random());
      let passed = 0;
      req.on('data', (chunk: Buffer) => {
        if (flipAt >= passed && flipAt < passed + chunk.length) {
          chunk = Buffer.from(chunk);
          chunk[flipAt - passed]! ^= 0x01;
        }
        passed += chunk.length;
        upstreamRequest.write(chunk);
      });
      req.on('end', () => upstreamRequest.end());
      return;
    }
    if (fault === 'dropRequest') {
      const length = Number(header(req, 'content-length') ?? 0);
      if (length === 0) {
        upstreamRequest.destroy();
        req.socket.destroy();
        return;
      }
      // Cut somewhere inside the body: the server sees a short body, the client a reset.
      const cutAt = Math.max(1, Math.floor(length * (0.1 + 0.8 * random())));
      let passed = 0;
      req.on('data', (chunk: Buffer) => {
        const room = cutAt - passed;
        passed += chunk.length;
        if (room > chunk.length) {
          upstreamRequest.write(chunk);
          return;
        }
        upstreamRequest.write(chunk.subarray(0, room));
        upstreamRequest.destroy();
        req.socket.destroy();
      });
      return;
    }
    req.pipe(upstreamRequest);
  }

  function relayResponse(req: IncomingMessage, res: ServerResponse, upstreamResponse: IncomingMessage, drop: boolean): void {
    const length = Number(upstreamResponse.headers['content-length'] ?? 0);
    if (drop && (length === 0 || req.method === 'HEAD')) {
      // The server did the work, but the client never hears of it.
      upstreamResponse.resume();
      req.socket.destroy();
      return;
    }
    res.writeHead(upstreamResponse.statusCode ?? 502, upstreamResponse.headers);
    if (!drop) {
      upstreamResponse.pipe(res);
      return;
    }
    const cutAt = Math.max(1, Math.floor(length * (0.1 + 0.8 * random())));
    let passed = 0;
    upstreamResponse.on('data', (chunk: Buffer) => {
      if (passed >= cutAt) return;
      const room = cutAt - passed;
      passed += chunk.length;
      if (room > chunk.length) {
        res.write(chunk);
        return;
      }
      res.write(chunk.subarray(0, room), () => {
        req.socket.destroy();
        upstreamResponse.destroy();
      });
    });
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= new Promise<void>((resolve) => {
      clearTimeout(lifetime);
      server.close(() => resolve());
      for (const socket of sockets) socket.destroy();
      agent.destroy();
    }));
  const lifetime = setTimeout(() => void stop(), options.lifetimeMs ?? 10 * 60_000);
  lifetime.unref();

  return {
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    injected,
    get maxConcurrent() {
      return maxConcurrent;
    },
    setRates(next, nextMethods) {
      rates = next;
      methods = nextMethods;
    },
    limitFaultsInARow(max) {
      maxInARow = max;
    },
    inject(kind, injectOptions = {}) {
      scripted.push({ kind, method: injectOptions.method, path: injectOptions.path, remaining: injectOptions.times ?? 1 });
    },
    cancelInjections() {
      scripted.length = 0;
    },
    archive(matches, storageClass = 'GLACIER') {
      archived = { matches, storageClass };
    },
    stop,
  };
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** Relays a (small) response whole, its body rewritten. */
function relayRewritten(res: ServerResponse, upstreamResponse: IncomingMessage, rewrite: (body: string) => string): void {
  const chunks: Buffer[] = [];
  upstreamResponse.on('data', (c: Buffer) => chunks.push(c));
  upstreamResponse.on('end', () => {
    const body = Buffer.from(rewrite(Buffer.concat(chunks).toString('utf8')));
    const { 'transfer-encoding': _chunked, ...headers } = upstreamResponse.headers;
    res.writeHead(upstreamResponse.statusCode ?? 502, { ...headers, 'content-length': String(body.length) });
    res.end(body);
  });
}

/** A ListObjectsV2 page with the archived objects' storage class; `bucket` is the listing's path (path-style). */
function withStorageClass(listing: string, bucket: string, archived: { matches: (object: string) => boolean; storageClass: string }): string {
  return listing.replace(/<Contents>([\s\S]*?)<\/Contents>/g, (whole, inner: string) => {
    const key = /<Key>([^<]*)<\/Key>/.exec(inner)?.[1];
    if (key === undefined || !archived.matches(`${bucket}/${unescapeXml(key)}`)) return whole;
    const storageClass = `<StorageClass>${archived.storageClass}</StorageClass>`;
    return `<Contents>${/<StorageClass>/.test(inner) ? inner.replace(/<StorageClass>[^<]*<\/StorageClass>/, storageClass) : inner + storageClass}</Contents>`;
  });
}

function unescapeXml(text: string): string {
  return text.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&apos;/g, "'").replace(/&amp;/g, '&');
}

/** Answers with an S3 error document, after reading the request body as a server would. */
function answerError(req: IncomingMessage, res: ServerResponse, status: number, code: string, message: string, id: number, extra = ''): void {
  req.resume();
  req.on('end', () => {
    const body =
      req.method === 'HEAD'
        ? ''
        : `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message>${extra}` +
          `<RequestId>fault-${id}</RequestId><HostId>fault-proxy</HostId></Error>`;
    res.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
}
