/**
 * The S3 driver under network and server faults, injected by a proxy between
 * it and a real S3 server: within the retry budget every transfer completes
 * bit-exact; beyond it the operation fails cleanly and leaves nothing visible.
 */
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { ListMultipartUploadsCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { InterruptedError, RuntimeFailure } from '../src/errors.js';
import { describeError, type RetryPolicy } from '../src/storage/retry.js';
import { S3Storage } from '../src/storage/s3.js';
import { Repository } from '../src/core/repository.js';
import { listAll, type Storage } from '../src/storage/storage.js';
import { generatedStream, readAll, seededRandom, sha256Of, testSeed } from './helpers/data.js';
import { startFaultProxy, type FaultProxy } from './helpers/fault-proxy.js';
import { createTestBucket, startS3Server, testClient, type S3TestServer } from './helpers/s3server.js';
import { lifeboat, runChild } from './helpers/cli.js';
import { smallDeployment } from './helpers/repo.js';
import { prng, tempDir, writeRandomFile } from './helpers/tree.js';

const MiB = 1024 * 1024;
const PART_SIZE = 5 * MiB;

let server: S3TestServer;
let proxy: FaultProxy;
let bucket: string;
let seed: number;
/** What the driver retried, by error, for the log. */
const retried = new Map<string, number>();

before(async () => {
  server = await startS3Server();
  bucket = await createTestBucket(server);
  seed = testSeed('s3 faults');
  proxy = await startFaultProxy({ upstream: server.endpoint, seed, delayMs: 1500 });
});
after(async () => {
  await proxy?.stop();
  await server?.stop();
});

function storageThroughProxy(prefix: string, retry: Partial<RetryPolicy> = {}): Promise<Storage> {
  return S3Storage.create({
    bucket,
    prefix,
    settings: { endpoint: proxy.endpoint },
    env: server.env,
    tuning: {
      partSize: PART_SIZE,
      // Shorter than the proxy's delay faults, so those become timeouts.
      socketTimeoutMs: 1000,
      connectionTimeoutMs: 1000,
      retry: {
        maxAttempts: 10,
        baseDelayMs: 5,
        maxDelayMs: 50,
        random: seededRandom(seed + 1),
        onRetry: ({ error }) => {
          const what = describeError(error);
          retried.set(what, (retried.get(what) ?? 0) + 1);
        },
        ...retry,
      },
    },
  });
}

/**
 * Storage through the proxy whose command is interrupted `afterMs` after its first retry, with a
 * pause of `pauseMs` before each retry; `interrupted()` tells when.
 */
async function interruptedOnRetry(prefix: string, pauseMs: number, afterMs: number): Promise<{ storage: Storage; signal: AbortSignal; interrupted: () => number }> {
  const stop = new AbortController();
  let at = 0;
  const storage = await S3Storage.create({
    bucket,
    prefix,
    settings: { endpoint: proxy.endpoint },
    env: server.env,
    interrupt: stop.signal,
    tuning: {
      retry: {
        maxAttempts: 10,
        baseDelayMs: pauseMs,
        maxDelayMs: pauseMs,
        random: () => 0.99,
        onRetry: () => void setTimeout(() => ((at = Date.now()), stop.abort()), afterMs),
      },
    },
  });
  return { storage, signal: stop.signal, interrupted: () => at };
}

/** Asserts that `run` fails as interrupted, within a second of the interruption. */
async function assertInterrupted(run: () => Promise<unknown>, interrupted: () => number, what: string): Promise<void> {
  await assert.rejects(run, (err: unknown) => {
    assert.ok(err instanceof InterruptedError, `${what}: an InterruptedError, not ${String(err)}`);
    return true;
  });
  assert.ok(Date.now() - interrupted() < 1000, `${what}: stopped ${Date.now() - interrupted()} ms after the interruption`);
}

/** A models directory holding one random file of `bytes`, and a repository initialised under `prefix`, reached through the proxy. */
async function modelsAndRepository(t: TestContext, prefix: string, bytes: number): Promise<{ work: string; models: string; repo: string[] }> {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const models = path.join(work, 'models');
  await fsp.mkdir(models);
  await writeRandomFile(path.join(models, 'weights.bin'), bytes, prng(seed));
  const repo = ['--repo', `s3://${bucket}/${prefix}`, '--s3-endpoint', proxy.endpoint];
  assert.equal((await lifeboat([...repo, 'init'], { env: server.env })).code, 0);
  return { work, models, repo };
}

/** How many objects the server holds under `prefix`. */
async function objectsUnder(sdk: S3Client, prefix: string): Promise<number> {
  return ((await sdk.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }))).Contents ?? []).length;
}

/** An interruption that comes once `stored` finds, looking at the server directly, that it has done what was asked. */
function interruptOnceServerHas(t: TestContext, stored: (sdk: S3Client) => Promise<boolean>): AbortController {
  const stop = new AbortController();
  const sdk = testClient(server);
  t.after(() => sdk.destroy());
  const look = async (): Promise<void> => {
    if (await stored(sdk)) stop.abort();
    else setTimeout(() => void look(), 20);
  };
  void look();
  return stop;
}

describe('S3 driver under faults', () => {
  it('puts and gets multi-MB objects bit-exact through faults within the retry budget', async () => {
    const storage = await storageThroughProxy('within-budget');
    proxy.setRates({ slowDown: 0.08, internalError: 0.05, dropRequest: 0.06, dropResponse: 0.06, delay: 0.02 });
    // Whatever the seed draws, every kind of fault happens at least once.
    for (const kind of ['slowDown', 'internalError', 'dropRequest', 'dropResponse', 'delay'] as const) proxy.inject(kind, { method: 'PUT' });
    proxy.inject('dropResponse', { method: 'GET' });
    try {
      const sizes = [0, 300 * 1024, 3 * MiB, 12 * MiB + 12345, 17 * MiB];
      for (const [i, size] of sizes.entries()) {
        const key = `objects/${i}`;
        assert.deepEqual(await storage.put(key, generatedStream(size, seed + i, { irregularChunks: true })), { key, size });
      }
      for (const [i, size] of sizes.entries()) {
        assert.deepEqual(await sha256Of(await storage.get(`objects/${i}`)), await sha256Of(generatedStream(size, seed + i)), `object ${i}`);
        assert.deepEqual(await storage.head(`objects/${i}`), { key: `objects/${i}`, size });
      }
      const ranged = await readAll(await storage.get('objects/3', { offset: PART_SIZE - 100, length: 200 }));
      const whole = await readAll(generatedStream(sizes[3]!, seed + 3));
      assert.ok(ranged.equals(whole.subarray(PART_SIZE - 100, PART_SIZE + 100)));
      for (let i = 0; i < 20; i++) await storage.putDocument(`docs/${i}`, Buffer.from(`document ${i}`));
      for (let i = 0; i < 20; i++) assert.equal((await storage.getDocument(`docs/${i}`)).toString(), `document ${i}`);
      assert.equal((await listAll(storage, 'docs/')).length, 20);
      await storage.delete(Array.from({ length: 20 }, (_, i) => `docs/${i}`));
      assert.deepEqual(await listAll(storage, 'docs/'), []);
    } finally {
      proxy.setRates({});
      await storage.close();
    }
    const faults = Object.values(proxy.injected).reduce((a, b) => a + b, 0);
    console.log(`# faults injected: ${JSON.stringify(proxy.injected)} over ${proxy.requests.length} requests`);
    console.log(`# retried: ${JSON.stringify(Object.fromEntries(retried))}`);
    assert.ok(faults >= 6, 'the proxy injected faults');
  });

  it('fails a put cleanly with a RuntimeFailure when faults outlast the retry budget', async () => {
    const storage = await storageThroughProxy('beyond-budget', { maxAttempts: 3 });
    try {
      for (const [key, size] of [
        ['big/object', 12 * MiB],
        ['small/object', 100 * 1024],
      ] as const) {
        // Every upload request fails; creating and aborting the multipart upload work.
        proxy.setRates({ slowDown: 0.5, internalError: 0.5 }, ['PUT']);
        await assert.rejects(storage.put(key, generatedStream(size, seed)), (err: unknown) => {
          assert.ok(err instanceof RuntimeFailure, `a RuntimeFailure, not ${String(err)}`);
          assert.equal(err.exitCode, 1);
          assert.match(err.message, /\bput\b/);
          assert.ok(err.message.includes(key), `the message names the key: ${err.message}`);
          assert.match(err.message, /after 3 attempts/);
          return true;
        });
        proxy.setRates({});
        assert.equal(await storage.head(key), undefined);
      }
      assert.deepEqual(await listAll(storage, ''), []);
      if (server.capabilities.multipartListAndAbort) {
        assert.equal(await storage.cleanupIncomplete(0), 0, 'the failed put aborted its multipart upload');
      }
    } finally {
      proxy.setRates({});
      await storage.close();
    }
  });

  it('fails a get cleanly when every download breaks', async () => {
    const storage = await storageThroughProxy('get-beyond-budget', { maxAttempts: 3 });
    try {
      await storage.put('object', generatedStream(2 * MiB, seed));
      proxy.setRates({ slowDown: 1 }, ['GET']);
      await assert.rejects(storage.get('object'), (err: unknown) => {
        assert.ok(err instanceof RuntimeFailure);
        assert.match(err.message, /get object failed after 3 attempts: HTTP 503 SlowDown/);
        return true;
      });
      await assert.rejects(storage.getDocument('object'), RuntimeFailure);
    } finally {
      proxy.setRates({});
      await storage.close();
    }
  });

  it('resumes an interrupted download with a ranged GET', async () => {
    const storage = await storageThroughProxy('resume');
    try {
      const size = 12 * MiB + 7;
      await storage.put('object', generatedStream(size, seed + 7));
      const before = proxy.requests.length;
      proxy.inject('dropResponse', { method: 'GET', times: 2 });
      assert.deepEqual(await sha256Of(await storage.get('object')), await sha256Of(generatedStream(size, seed + 7)));
      const gets = proxy.requests.slice(before).filter((r) => r.method === 'GET');
      assert.equal(gets[0]?.range, undefined, 'the first request reads the whole object');
      const resumed = gets.slice(1).map((r) => r.range);
      assert.ok(resumed.length >= 2, `resumed twice: ${JSON.stringify(resumed)}`);
      for (const range of resumed) assert.match(range ?? '', /^bytes=[1-9]\d*-$/, 'resumed from where it stopped');

      // A ranged read resumes inside its own range.
      const before2 = proxy.requests.length;
      proxy.inject('dropResponse', { method: 'GET' });
      const part = await readAll(await storage.get('object', { offset: MiB, length: 4 * MiB }));
      const whole = await readAll(generatedStream(size, seed + 7));
      assert.ok(part.equals(whole.subarray(MiB, 5 * MiB)));
      const ranges = proxy.requests.slice(before2).map((r) => r.range);
      assert.equal(ranges[0], `bytes=${MiB}-${5 * MiB - 1}`);
      assert.match(ranges[1] ?? '', new RegExp(`^bytes=\\d+-${5 * MiB - 1}$`));
    } finally {
      await storage.close();
    }
  });

  it('resends an upload whose body was damaged in transit; every upload carries Content-MD5', async (t) => {
    if (!server.capabilities.contentMd5Check) return t.skip(`the ${server.kind} test server does not check Content-MD5 or the payload hash`);
    const storage = await storageThroughProxy('damaged');
    try {
      const before = proxy.requests.length;
      const size = 2 * PART_SIZE + 1000;
      // Damage the single PutObject, then the first two multipart parts.
      proxy.inject('corruptRequest', { method: 'PUT', times: 3 });
      await storage.put('small', generatedStream(1000, seed + 8));
      await storage.put('large', generatedStream(size, seed + 9));
      assert.deepEqual(await sha256Of(await storage.get('small')), await sha256Of(generatedStream(1000, seed + 8)));
      assert.deepEqual(await sha256Of(await storage.get('large')), await sha256Of(generatedStream(size, seed + 9)));
      const puts = proxy.requests.slice(before).filter((r) => r.method === 'PUT');
      assert.equal(puts.filter((r) => r.fault === 'corruptRequest').length, 3);
      assert.ok(puts.every((r) => r.contentMd5), 'every PUT carried Content-MD5');
    } finally {
      await storage.close();
    }
  });

  it('keeps at most `concurrency` transfers in flight', async () => {
    // Every answer is held back a while, so requests pile up unless the driver limits them.
    const slow = await startFaultProxy({ upstream: server.endpoint, seed, rates: { delay: 1 }, delayMs: 100 });
    const throughSlow = await S3Storage.create({
      bucket,
      prefix: 'concurrency',
      settings: { endpoint: slow.endpoint, concurrency: 2 },
      env: server.env,
    });
    try {
      await Promise.all(Array.from({ length: 8 }, (_, i) => throughSlow.putDocument(`doc-${i}`, Buffer.from(`${i}`))));
      await Promise.all(Array.from({ length: 8 }, (_, i) => throughSlow.getDocument(`doc-${i}`)));
      assert.equal(slow.maxConcurrent, 2);
    } finally {
      await throughSlow.close();
      await slow.stop();
    }
  });

  it('reports a create-if-absent as won when its answer was lost and the retry finds its own document', async (t) => {
    if (!server.capabilities.conditionalPut) return t.skip(`the ${server.kind} test server lacks conditional puts (If-None-Match)`);
    const storage = await storageThroughProxy('lost-answer');
    try {
      proxy.inject('dropResponse', { method: 'PUT' });
      assert.equal(await storage.putDocument('lock', Buffer.from('holder 1'), { ifAbsent: true }), true);
      assert.equal(await storage.putDocument('lock', Buffer.from('holder 2'), { ifAbsent: true }), false);
      assert.equal((await storage.getDocument('lock')).toString(), 'holder 1');
    } finally {
      await storage.close();
    }
  });

  it('a Ctrl-C while a broken download is resumed ends it as interrupted, in the pause before the resume and while the resume waits for its answer', async () => {
    let written = false;
    for (const when of ['pause', 'answer'] as const) {
      // A read that names the command's signal (a restore's) and one that does not.
      for (const withSignal of [true, false]) {
        // A long pause before the resume, or none, and then an answer the proxy holds back 1.5 s.
        const { storage, signal, interrupted } = await interruptedOnRetry('interrupted-resume', when === 'pause' ? 10_000 : 1, when === 'pause' ? 100 : 300);
        try {
          if (!written) await storage.put('object', generatedStream(6 * MiB, seed + 11));
          written = true;
          proxy.inject('dropResponse', { method: 'GET', path: /interrupted-resume\/object/ });
          if (when === 'answer') proxy.inject('delay', { method: 'GET', path: /interrupted-resume\/object/ });
          const read = async () => readAll(await storage.get('object', withSignal ? { signal } : {}));
          await assertInterrupted(read, interrupted, `${when}, ${withSignal ? 'with' : 'without'} a signal`);
        } finally {
          proxy.cancelInjections();
          await storage.close();
        }
      }
    }
  });

  it('a Ctrl-C in the pause before a request is tried again ends it as interrupted at once; the request is not sent again', async () => {
    const { storage, interrupted } = await interruptedOnRetry('interrupted-retry', 10_000, 100);
    try {
      await storage.putDocument('doc', Buffer.from('document'));
      const before = proxy.requests.length;
      proxy.inject('slowDown', { method: 'GET', path: /interrupted-retry\/doc/ });
      await assertInterrupted(() => storage.getDocument('doc'), interrupted, 'a document');
      assert.equal(proxy.requests.slice(before).length, 1, 'the request was not sent again');
    } finally {
      proxy.cancelInjections();
      await storage.close();
    }
  });

  it('a restore interrupted while it resumes a broken download says "interrupted" (exit 130), not the words of an aborted stream', async (t) => {
    const { work, models, repo } = await modelsAndRepository(t, 'interrupted-restore', 6 * MiB);
    assert.equal((await lifeboat([...repo, 'backup', models], { env: server.env })).code, 0);
    // The volume's download breaks; its resume is answered late, and Ctrl-C comes meanwhile.
    proxy.inject('dropResponse', { method: 'GET', path: /\/data\// });
    proxy.inject('delay', { method: 'GET', path: /\/data\// });
    t.after(() => proxy.cancelInjections());
    const stop = new AbortController();
    const resumed = setInterval(() => {
      if (proxy.requests.some((r) => r.path.includes('/interrupted-restore/data/') && r.fault === 'delay')) setTimeout(() => stop.abort(), 200);
    }, 20);
    t.after(() => clearInterval(resumed));
    const r = await lifeboat([...repo, 'restore', 'latest', '--target', path.join(work, 'out')], { env: server.env, signal: stop.signal });
    assert.ok(stop.signal.aborted, 'interrupted');
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stderr, /\nlifeboat: interrupted\n$/);
    assert.doesNotMatch(r.stderr, /operation was aborted|unexpected/i);
  });

  it('a backup interrupted while the server starts its multipart upload leaves no upload behind, as one on a local disk leaves no temporary file', async (t) => {
    // Past the driver's 8 MiB part size: stored as a multipart upload.
    const { models, repo } = await modelsAndRepository(t, 'interrupted-create', 9 * MiB);
    // The server starts the upload; its answer, with the upload's id, is held back, and Ctrl-C comes meanwhile.
    proxy.inject('delay', { method: 'POST', path: /\/interrupted-create\/data\/.*\?uploads/ });
    t.after(() => proxy.cancelInjections());
    // Once the server lists the upload, its answer still on the way.
    const stop = interruptOnceServerHas(t, async (sdk) => ((await sdk.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: 'interrupted-create/data/' }))).Uploads ?? []).length > 0);
    const r = await lifeboat([...repo, 'backup', models], { env: server.env, signal: stop.signal });
    assert.ok(stop.signal.aborted, 'interrupted');
    assert.equal(r.code, 130, r.stderr);
    const verify = await lifeboat([...repo, '--json', 'verify'], { env: server.env });
    assert.equal(verify.code, 0, verify.stderr);
    assert.deepEqual(verify.json().warnings, [], 'the interrupted backup cleaned up after itself');
  });

  it('a backup interrupted while the server takes the repository lock leaves no lock behind, which would keep other hosts out', async (t) => {
    const { models, repo } = await modelsAndRepository(t, 'interrupted-lock', MiB);
    // The server takes the lock; its answer is held back, and Ctrl-C comes meanwhile.
    proxy.inject('delay', { method: 'PUT', path: /\/interrupted-lock\/locks\/lock\.json/ });
    t.after(() => proxy.cancelInjections());
    // Once the server holds the lock, its answer still on the way.
    const stop = interruptOnceServerHas(t, async (sdk) => (await objectsUnder(sdk, 'interrupted-lock/locks/lock.json')) > 0);
    const r = await lifeboat([...repo, 'backup', models], { env: server.env, signal: stop.signal });
    assert.ok(stop.signal.aborted, 'interrupted');
    assert.equal(r.code, 130, r.stderr);
    // This process still runs: a lock of its own left behind would read as a live holder's.
    const unlock = await lifeboat([...repo, '--json', 'unlock'], { env: server.env });
    assert.equal(unlock.code, 0, unlock.stderr);
    assert.equal(unlock.json().lock, null, 'no lock is left');
  });

  it('a verify interrupted while the server registers it as a reader leaves no registration behind, which would keep prunes out', async (t) => {
    const d = await smallDeployment();
    t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
    const repo = ['--repo', `s3://${bucket}/interrupted-reader`, '--s3-endpoint', proxy.endpoint];
    assert.equal((await lifeboat([...repo, 'init'], { env: server.env })).code, 0);
    assert.equal((await lifeboat([...repo, 'backup', d.src], { env: server.env })).code, 0);
    // The server stores the registration; its answer is held back, and Ctrl-C comes meanwhile.
    proxy.inject('delay', { method: 'PUT', path: /\/interrupted-reader\/locks\/readers\// });
    t.after(() => proxy.cancelInjections());
    const stop = interruptOnceServerHas(t, async (sdk) => (await objectsUnder(sdk, 'interrupted-reader/locks/readers/')) > 0);
    const r = await lifeboat([...repo, 'verify', '--read-data'], { env: server.env, signal: stop.signal });
    assert.ok(stop.signal.aborted, 'interrupted');
    assert.equal(r.code, 130, r.stderr);
    // This process still runs: a registration of its own left behind would read as a live reader's.
    const prune = await lifeboat([...repo, 'prune', '--keep-full', '1'], { env: server.env });
    assert.equal(prune.code, 0, prune.stderr);
  });

  it('a backup interrupted while the server stores its manifest keeps the point whole: its data is not removed under a point that is there', async (t) => {
    const d = await smallDeployment();
    t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
    const repo = ['--repo', `s3://${bucket}/interrupted-commit`, '--s3-endpoint', proxy.endpoint];
    assert.equal((await lifeboat([...repo, 'init'], { env: server.env })).code, 0);
    // The server stores the manifest; its answer is held back, and Ctrl-C comes meanwhile.
    proxy.inject('delay', { method: 'PUT', path: /\/interrupted-commit\/points\// });
    t.after(() => proxy.cancelInjections());
    const stop = interruptOnceServerHas(t, async (sdk) => (await objectsUnder(sdk, 'interrupted-commit/points/')) > 0);
    const r = await lifeboat([...repo, '--json', 'backup', d.src], { env: server.env, signal: stop.signal });
    assert.ok(stop.signal.aborted, 'interrupted');
    const verify = await lifeboat([...repo, '--json', 'verify', '--read-data'], { env: server.env });
    assert.equal(verify.code, 0, verify.stdout);
    assert.deepEqual([verify.json().backups, verify.json().problems, verify.json().warnings], [1, [], []]);
    // Committed before the interrupt was seen, as a backup on a local disk whose manifest is in place.
    assert.equal(r.code, 0, r.stderr);
    const target = path.join(d.work, 'restored');
    assert.equal((await lifeboat([...repo, 'restore', r.json().id, '--target', target], { env: server.env })).code, 0);
  });

  it('a restore or verify --read-data whose volumes the server will not serve fails as a storage failure (exit 1), not as damaged data', async (t) => {
    const d = await smallDeployment();
    t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
    const repo = ['--repo', `s3://${bucket}/outage`, '--s3-endpoint', proxy.endpoint];
    const run = (args: string[]) => lifeboat([...repo, ...args], { env: server.env });
    assert.equal((await run(['init'])).code, 0);
    const backup = await run(['backup', d.src]);
    assert.equal(backup.code, 0, backup.stderr);
    // Every read of a volume fails as a server in trouble does, past the attempts; the manifests still come.
    proxy.inject('internalError', { method: 'GET', path: /\/data\//, times: 1000 });
    t.after(() => proxy.cancelInjections());
    const restore = await run(['restore', 'latest', '--target', path.join(d.work, 'out')]);
    assert.equal(restore.code, 1, restore.stderr);
    assert.match(restore.stderr, /failed after 6 attempts: HTTP 500 InternalError/);
    assert.doesNotMatch(restore.stderr, /intact|damaged|cannot be read|integrity/i);
    const verify = await run(['verify', '--read-data']);
    assert.equal(verify.code, 1, verify.stderr);
    assert.match(verify.stderr, /failed after 6 attempts: HTTP 500 InternalError/);
    assert.doesNotMatch(verify.stderr, /damaged|problem/i);
  });

  for (const [fault, exitCode, says] of [
    ['expiredToken', 2, /the S3 server refused the repository's credentials: their session token has expired/],
    ['accessDenied', 2, /get data\/.*failed: HTTP 403 AccessDenied.*\n {2}grant s3:GetObject on /],
  ] as const) {
    it(`a restore whose credentials are refused part-way (${fault}) keeps what it verified, and the next one goes on from there`, async (t) => {
      const work = await tempDir();
      t.after(() => fsp.rm(work, { recursive: true, force: true }));
      const models = path.join(work, 'models');
      await fsp.mkdir(models);
      for (let i = 0; i < 4; i++) await writeRandomFile(path.join(models, `shard-${i}.bin`), 2 * MiB, prng(seed + i));
      const prefix = `refused-${fault}`;
      const storage = await storageThroughProxy(prefix);
      t.after(() => storage.close());
      await Repository.init(storage, { volumeSize: 1 << 20 });
      const repo = ['--repo', `s3://${bucket}/${prefix}`, '--s3-endpoint', proxy.endpoint];
      const backup = await lifeboat([...repo, 'backup', models], { env: server.env });
      assert.equal(backup.code, 0, backup.stderr);
      const volumes = (await listAll(storage, 'data/')).map((o) => o.key).sort();
      assert.ok(volumes.length >= 4, `several volumes: ${volumes.join(', ')}`);
      // Long restores outlive temporary credentials (an hour, often): the last volume is refused.
      proxy.inject(fault, { method: 'GET', path: new RegExp(`/${prefix}/${volumes.at(-1)!.replace(/\./g, '\\.')}`) });
      t.after(() => proxy.cancelInjections());
      const target = path.join(work, 'out');
      // In a child: a staging directory of this process would be taken for a restore still running.
      const refused = await runChild([...repo, 'restore', 'latest', '--target', target], { env: server.env });
      assert.equal(refused.code, exitCode, refused.stderr);
      assert.match(refused.stderr, says);
      assert.match(refused.stderr, /the files restored so far are kept there; the next restore into .* goes on from them/);
      const again = await lifeboat([...repo, 'restore', 'latest', '--target', target], { env: server.env });
      assert.equal(again.code, 0, again.stderr);
      assert.match(again.stderr, /resuming an interrupted restore: [1-9]\d* file\(s\)/);
    });
  }

  it('a failover whose credentials run out while it restores says that nothing was switched and what is still served', async (t) => {
    const work = await tempDir();
    t.after(() => fsp.rm(work, { recursive: true, force: true }));
    await fsp.mkdir(path.join(work, 'models'));
    await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights A');
    const prefix = 'failover-expired';
    await fsp.writeFile(
      path.join(work, 'lifeboat.yaml'),
      `repository: s3://${bucket}/${prefix}\ns3:\n  endpoint: ${proxy.endpoint}\nsources:\n  models: ./models\ntargets:\n  prod:\n    slots: ./slots\n    active: ./current\n`,
    );
    const run = (args: string[]) => lifeboat(args, { cwd: work, env: server.env });
    assert.equal((await run(['init'])).code, 0);
    const first = (await run(['--json', 'backup'])).json<{ id: string }>().id;
    await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights B');
    const second = (await run(['--json', 'backup'])).json<{ id: string }>().id;
    assert.equal((await run(['failover', first])).code, 0);
    proxy.inject('expiredToken', { method: 'GET', path: new RegExp(`/${prefix}/data/${second}/`) });
    t.after(() => proxy.cancelInjections());
    const r = await run(['failover', second]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`lifeboat: failover of prod to ${second} failed before the switch: the S3 server refused the repository's credentials: their session token has expired .*; prod still serves ${first}, nothing was switched\\n {2}temporary credentials must be renewed`));
  });
});
