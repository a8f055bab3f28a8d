import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import * as http from 'node:http';
import * as net from 'node:net';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { IntegrityError, RuntimeFailure, UsageError, errorMessage } from '../src/errors.js';
import { sleep } from './helpers/processes.js';
import { S3Storage } from '../src/storage/s3.js';
import { SMALL_DOCUMENT_BYTES, type Storage } from '../src/storage/storage.js';

// Replies of a broken or hostile server: listings whose every page says there is more, and a
// document that claims to be larger than any lifeboat writes.
// The driver must give up with an error, not list forever. The timeout turns a regression
// into a failure instead of a hang.
const BOUNDED = { timeout: 30_000 };

async function endlessListingServer(markers: (page: number) => { token?: string; keyMarker?: string; uploadIdMarker?: string }): Promise<{ endpoint: string; pages: () => number; stop: () => Promise<void> }> {
  let pages = 0;
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://stub');
    const m = markers(pages++);
    res.setHeader('content-type', 'application/xml');
    if (url.searchParams.has('uploads')) {
      res.end(
        `<?xml version="1.0" encoding="UTF-8"?><ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>true</IsTruncated>` +
          (m.keyMarker === undefined ? '' : `<NextKeyMarker>${m.keyMarker}</NextKeyMarker>`) +
          (m.uploadIdMarker === undefined ? '' : `<NextUploadIdMarker>${m.uploadIdMarker}</NextUploadIdMarker>`) +
          `</ListMultipartUploadsResult>`,
      );
      return;
    }
    res.end(
      `<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name><KeyCount>1</KeyCount><IsTruncated>true</IsTruncated>` +
        (m.token === undefined ? '' : `<NextContinuationToken>${m.token}</NextContinuationToken>`) +
        `<Contents><Key>repo/points/p${pages}.json</Key><Size>1</Size></Contents></ListBucketResult>`,
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { endpoint: `http://127.0.0.1:${port}`, pages: () => pages, stop: () => new Promise((resolve) => server.close(() => resolve())) };
}

function storageAt(endpoint: string): Promise<Storage> {
  return S3Storage.create({
    bucket: 'b',
    prefix: 'repo',
    settings: { endpoint, forcePathStyle: true, region: 'us-east-1' },
    env: { AWS_ACCESS_KEY_ID: 'stub', AWS_SECRET_ACCESS_KEY: 'stub' },
    tuning: { retry: { maxAttempts: 1, baseDelayMs: 1, maxDelayMs: 1 } },
  });
}

async function drainFolders(storage: Storage, limit: number): Promise<number> {
  let n = 0;
  for await (const _ of storage.listPrefixes('data/')) if (++n > limit) break;
  return n;
}

async function drain(storage: Storage, limit: number): Promise<number> {
  let n = 0;
  for await (const _ of storage.list('points/')) if (++n > limit) break;
  return n;
}

for (const [name, markers] of [
  ['the same continuation token on every page', () => ({ token: 'again' })],
  ['tokens that come round again', (page: number) => ({ token: `t${page % 3}` })],
  ['more pages promised and no token given', () => ({})],
] as const) {
  test(`listing: ${name} is an error, not an endless listing`, BOUNDED, async (t) => {
    const stub = await endlessListingServer(markers);
    t.after(() => stub.stop());
    const storage = await storageAt(stub.endpoint);
    t.after(() => storage.close());
    await assert.rejects(drain(storage, 10_000), (err: unknown) => err instanceof RuntimeFailure && /listing|marker/.test((err as Error).message));
    assert.ok(stub.pages() <= 5, `${stub.pages()} pages were asked for`);
    // Listing folders pages the same way, and stops the same way.
    const before = stub.pages();
    await assert.rejects(drainFolders(storage, 10_000), (err: unknown) => err instanceof RuntimeFailure && /listing|marker/.test((err as Error).message));
    assert.ok(stub.pages() - before <= 5, `${stub.pages() - before} pages of folders were asked for`);
  });
}

test('incomplete uploads: a listing that never moves on is an error, not an endless loop', BOUNDED, async (t) => {
  const stub = await endlessListingServer(() => ({}));
  t.after(() => stub.stop());
  const storage = await storageAt(stub.endpoint);
  t.after(() => storage.close());
  await assert.rejects(storage.cleanupIncomplete(0), RuntimeFailure);
  assert.ok(stub.pages() <= 2, `${stub.pages()} pages were asked for`);
});

/**
 * A server that answers every request with zeros, 600 MiB of them under a Content-Length that says
 * so, or, without one (chunked), for as long as anyone reads; `sent()` counts what it sent.
 */
async function zerosServer(t: { after: (f: () => unknown) => void }, length: boolean): Promise<{ storage: Storage; sent: () => number }> {
  let sent = 0;
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', ...(length ? { 'content-length': String(600 << 20) } : {}) });
    const chunk = Buffer.alloc(64 << 10);
    const pump = () => {
      while (!res.destroyed && (!length || sent < 600 << 20)) {
        sent += chunk.length;
        if (!res.write(chunk)) return void res.once('drain', pump);
      }
      res.end();
    };
    pump();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  server.on('connection', (socket) => t.after(() => socket.destroy()));
  const storage = await storageAt(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  t.after(() => storage.close());
  return { storage, sent: () => sent };
}

test('a document the server says is larger than any lifeboat writes is refused before its body is read (exit 3)', BOUNDED, async (t) => {
  const { storage, sent } = await zerosServer(t, true);
  await assert.rejects(storage.getDocument('points/huge.json'), (err: unknown) => err instanceof IntegrityError && /larger than the 512 MiB a document may have/.test((err as Error).message));
  assert.ok(sent() < 64 << 20, `${sent() >> 20} MiB were sent before the driver gave up`);
});

test('a document sent without a length is read no further than a document of its kind may have (exit 3), not for as long as the server sends', BOUNDED, async (t) => {
  const { storage, sent } = await zerosServer(t, false);
  await assert.rejects(storage.getDocument('config.json', { maxBytes: SMALL_DOCUMENT_BYTES }), (err: unknown) => err instanceof IntegrityError && /config\.json is larger than the 1 MiB a document of its kind may have/.test((err as Error).message));
  assert.ok(sent() < 64 << 20, `${sent() >> 20} MiB were sent before the driver gave up`);
});

test('temporary credentials the server says have expired are a set-up error (exit 2) that says to renew them', BOUNDED, async (t) => {
  let requests = 0;
  const server = http.createServer((_req, res) => {
    requests++;
    res.writeHead(400, { 'content-type': 'application/xml' }).end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>ExpiredToken</Code><Message>The provided token has expired.</Message></Error>');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  server.on('connection', (socket) => t.after(() => socket.destroy()));
  const storage = await storageAt(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  t.after(() => storage.close());
  await assert.rejects(storage.getDocument('config.json'), (err: unknown) => {
    assert.ok(err instanceof UsageError, String(err));
    assert.match(err.message, /^the S3 server refused the repository's credentials: their session token has expired \(get config\.json: HTTP 400 ExpiredToken/);
    assert.match(err.hint ?? '', /temporary credentials must be renewed/);
    return true;
  });
  assert.equal(requests, 1);
});

test('a server that refuses the storage class or encryption the config asks for is a set-up error (exit 2) that names those settings, for documents and multipart volumes alike', BOUNDED, async (t) => {
  const refused: string[] = [];
  const server = http.createServer((req, res) => {
    req.resume();
    // As Ceph answers a storage class it has no placement for.
    if (req.headers['x-amz-storage-class'] === 'STANDARD_IA') {
      refused.push(`${req.method} ${new URL(req.url ?? '/', 'http://stub').searchParams.has('uploads') ? 'multipart upload' : 'object'}`);
      res.writeHead(400, { 'content-type': 'application/xml' }).end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidArgument</Code></Error>');
      return;
    }
    res.writeHead(500).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  server.on('connection', (socket) => t.after(() => socket.destroy()));
  const storage = await S3Storage.create({
    bucket: 'b',
    prefix: 'repo',
    settings: { endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, forcePathStyle: true, region: 'us-east-1', storageClass: 'STANDARD_IA' },
    env: { AWS_ACCESS_KEY_ID: 'stub', AWS_SECRET_ACCESS_KEY: 'stub' },
    tuning: { partSize: 5 * 1024 * 1024, retry: { maxAttempts: 1, baseDelayMs: 1, maxDelayMs: 1 } },
  });
  t.after(() => storage.close());
  const namesTheSetting = (key: string) => (err: unknown) => {
    assert.ok(err instanceof UsageError, String(err));
    assert.equal(err.message, `the S3 server refused to store ${key} with s3.storageClass: STANDARD_IA (HTTP 400 InvalidArgument)`);
    assert.match(err.hint ?? '', /change or remove those settings in the config/);
    return true;
  };
  await assert.rejects(storage.putDocument('config.json', Buffer.from('{}')), namesTheSetting('config.json'));
  await assert.rejects(storage.put('data/v1.tar', Readable.from([Buffer.alloc(12 * 1024 * 1024)])), namesTheSetting('data/v1.tar'));
  assert.deepEqual(refused, ['PUT object', 'POST multipart upload'], 'a document and a multipart upload were refused, each once');
});

test('a server whose clock is hours off: the driver sets its clock by the server\'s answer and goes on; when it cannot, the hint says how far off the clock is', BOUNDED, async (t) => {
  const serverAhead = 2 * 3600_000;
  let refused = 0;
  let sendDate = true;
  const sizes = new Map<string, number>();
  const parts = new Map<string, number>();
  const server = http.createServer(async (req, res) => {
    let received = 0;
    for await (const chunk of req) received += (chunk as Buffer).length;
    const now = Date.now() + serverAhead;
    const signed = /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/.exec(String(req.headers['x-amz-date']));
    const signedAt = signed ? Date.UTC(+signed[1]!, +signed[2]! - 1, +signed[3]!, +signed[4]!, +signed[5]!, +signed[6]!) : NaN;
    // As S3 answers a request signed more than 15 minutes away from its own time.
    if (!(Math.abs(signedAt - now) <= 15 * 60_000)) {
      refused++;
      res.sendDate = false;
      res.writeHead(403, { 'content-type': 'application/xml', ...(sendDate ? { date: new Date(now).toUTCString() } : {}) });
      res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>RequestTimeTooSkewed</Code><Message>The difference between the request time and the current time is too large.</Message></Error>');
      return;
    }
    const url = new URL(req.url ?? '/', 'http://stub');
    res.setHeader('date', new Date(now).toUTCString());
    if (req.method === 'POST' && url.searchParams.has('uploads')) {
      res.writeHead(200, { 'content-type': 'application/xml' }).end('<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>u1</UploadId></InitiateMultipartUploadResult>');
    } else if (req.method === 'POST') {
      sizes.set(url.pathname, parts.get(url.pathname) ?? 0);
      res.writeHead(200, { 'content-type': 'application/xml' }).end('<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><ETag>"e"</ETag></CompleteMultipartUploadResult>');
    } else if (req.method === 'PUT') {
      if (url.searchParams.has('partNumber')) parts.set(url.pathname, (parts.get(url.pathname) ?? 0) + received);
      else sizes.set(url.pathname, received);
      res.writeHead(200, { etag: '"e"' }).end();
    } else if (req.method === 'HEAD') {
      res.writeHead(200, { 'content-length': String(sizes.get(url.pathname) ?? 0), etag: '"e"' }).end();
    } else {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '2' }).end('{}');
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  server.on('connection', (socket) => t.after(() => socket.destroy()));
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const open = (maxAttempts: number) =>
    S3Storage.create({
      bucket: 'b',
      prefix: 'repo',
      settings: { endpoint, forcePathStyle: true, region: 'us-east-1' },
      env: { AWS_ACCESS_KEY_ID: 'stub', AWS_SECRET_ACCESS_KEY: 'stub' },
      tuning: { partSize: 5 * 1024 * 1024, retry: { maxAttempts, baseDelayMs: 1, maxDelayMs: 1 } },
    });

  const storage = await open(3);
  t.after(() => storage.close());
  assert.equal((await storage.getDocument('config.json'))?.toString(), '{}');
  assert.equal(refused, 1, 'the first request was refused, and signed again with the server\'s time');
  await storage.putDocument('points/p.json', Buffer.from('{}'));
  await storage.put('data/v1.tar', Readable.from([Buffer.alloc(12 * 1024 * 1024)]));
  assert.equal(refused, 1, 'later requests, multipart parts too, carry the corrected time');

  // One attempt (or no time in the answer): the error says what to do about the clock.
  for (const [attempts, withDate, howFar] of [[1, true, /this host's clock is 120 minutes behind the server's/], [3, false, /15 minutes S3 allows: set/]] as const) {
    sendDate = withDate;
    const fresh = await open(attempts);
    t.after(() => fresh.close());
    await assert.rejects(fresh.getDocument('config.json'), (err: unknown) => {
      assert.ok(err instanceof RuntimeFailure, String(err));
      assert.match(err.message, /RequestTimeTooSkewed/);
      assert.match(err.hint ?? '', /clocks of this host and the S3 server differ/);
      assert.match(err.hint ?? '', howFar);
      assert.match(err.hint ?? '', /timedatectl set-ntp true/);
      return true;
    });
  }
});

test('a server that does not accept the connection: the error and each retry name the endpoint and what to check, not the SDK\'s words', BOUNDED, async (t) => {
  // A listener whose process stops accepting (its event loop blocked) with a backlog of 1: once the
  // kernel's queue is full, further connections hang, as they do on a port a firewall drops.
  const listener = spawn(process.execPath, ['-e', `
    const server = require('node:net').createServer().listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
      process.stdout.write(server.address().port + '\\n');
      setTimeout(() => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60_000), 50);
    });`], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => listener.kill('SIGKILL'));
  const port = Number((await once(listener.stdout!, 'data'))[0].toString().trim());
  await sleep(200);
  const fillers: net.Socket[] = [];
  t.after(() => fillers.forEach((s) => s.destroy()));
  for (let i = 0; i < 4; i++) fillers.push(net.connect(port, '127.0.0.1').on('error', () => undefined));
  await sleep(200);
  const retries: string[] = [];
  const storage = await S3Storage.create({
    bucket: 'b',
    prefix: 'repo',
    settings: { endpoint: `http://127.0.0.1:${port}`, forcePathStyle: true, region: 'us-east-1' },
    env: { AWS_ACCESS_KEY_ID: 'stub', AWS_SECRET_ACCESS_KEY: 'stub' },
    tuning: { connectionTimeoutMs: 300, retry: { maxAttempts: 2, baseDelayMs: 1, maxDelayMs: 1, onRetry: ({ error }) => retries.push(errorMessage(error)) } },
  });
  t.after(() => storage.close());
  await assert.rejects(storage.getDocument('config.json'), (err: unknown) => {
    assert.ok(err instanceof RuntimeFailure, String(err));
    assert.equal(err.message, `get config.json failed after 2 attempts: the server at http://127.0.0.1:${port} did not accept a connection within 300 ms`);
    assert.match(err.hint ?? '', /check the endpoint's host and port .* and that no firewall drops this host's connections to it/);
    return true;
  });
  assert.deepEqual(retries, [`the server at http://127.0.0.1:${port} did not accept a connection within 300 ms`]);
});

test('a download that stalls partway through its body: each retry and the error say that nothing moved for s3.idleTimeout, and a retry goes on from where it stopped', BOUNDED, async (t) => {
  const object = Buffer.alloc(1 << 20, 7);
  let stallEvery = false;
  const ranges: string[] = [];
  const server = http.createServer((req, res) => {
    req.resume();
    const range = /^bytes=(\d+)-/.exec(String(req.headers.range ?? ''));
    const from = range ? Number(range[1]) : 0;
    ranges.push(String(from));
    const headers = { etag: '"e"', 'content-type': 'application/octet-stream', 'content-length': String(object.length - from) };
    res.writeHead(range ? 206 : 200, range ? { ...headers, 'content-range': `bytes ${from}-${object.length - 1}/${object.length}` } : headers);
    // The first answer stops after 64 KiB and keeps the connection open, as a stalled link does.
    if (from === 0 || stallEvery) res.write(object.subarray(from, from + (64 << 10)));
    else res.end(object.subarray(from));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  server.on('connection', (socket) => t.after(() => socket.destroy()));
  const retries: string[] = [];
  const open = (maxAttempts: number) =>
    S3Storage.create({
      bucket: 'b',
      prefix: 'repo',
      settings: { endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, forcePathStyle: true, region: 'us-east-1' },
      env: { AWS_ACCESS_KEY_ID: 'stub', AWS_SECRET_ACCESS_KEY: 'stub' },
      tuning: { socketTimeoutMs: 1000, retry: { maxAttempts, baseDelayMs: 1, maxDelayMs: 1, onRetry: ({ error }) => retries.push(errorMessage(error)) } },
    });
  const read = async (storage: Storage) => {
    const chunks: Buffer[] = [];
    for await (const chunk of await storage.get('data/p/v000001.tar')) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  };

  const patient = await open(3);
  t.after(() => patient.close());
  assert.ok((await read(patient)).equals(object), 'the retry went on from the byte where the stall was');
  assert.deepEqual(ranges, ['0', String(64 << 10)]);
  assert.deepEqual(retries, ['nothing moved between this host and the S3 server for 1 s (s3.idleTimeout)']);

  retries.length = 0;
  stallEvery = true;
  const hasty = await open(2);
  t.after(() => hasty.close());
  // Each attempt brings 64 KiB: less than a MiB of progress does not reset the count of attempts.
  await assert.rejects(read(hasty), (err: unknown) => {
    assert.ok(err instanceof RuntimeFailure, String(err));
    assert.equal(err.message, 'get data/p/v000001.tar failed after 2 attempts: nothing moved between this host and the S3 server for 1 s (s3.idleTimeout)');
    assert.match(err.hint ?? '', /needs a longer s3\.idleTimeout/);
    return true;
  });
  assert.equal(retries.length, 1);
});
