/**
 * The repository guarantees, end to end through the CLI, with the repository in
 * a bucket of a real S3 server (Ceph radosgw when installed, else s3rver):
 * bit-exact round trips over full/incr/diff, corruption found and refused,
 * kill -9 leaving nothing visible and nothing behind after the next backup,
 * the lock, listings past one page (1,000 keys), and faults between client and
 * server within and beyond the retry budget.
 */
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  DeleteObjectCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutBucketVersioningCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { Repository } from '../src/core/repository.js';
import { encodeDocument } from '../src/format/document.js';
import { makePointId } from '../src/format/ids.js';
import { S3Storage } from '../src/storage/s3.js';
import { lifeboat, runChild, spawnLifeboat, type CliRun } from './helpers/cli.js';
import { startFaultProxy, type FaultKind } from './helpers/fault-proxy.js';
import { createTestBucket, testClient, startS3Server, type S3TestServer } from './helpers/s3server.js';
import { MODES, compareSnapshots, mutateTree, pick, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile, type SnapshotEntry } from './helpers/tree.js';

const MiB = 1024 * 1024;
/** The driver's default part size: volumes larger than this go up as multipart uploads. */
const PART_SIZE = 8 * MiB;

let server: S3TestServer;
let bucket: string;
let sdk: S3Client;
let work: string;
let seed: number;

before(async () => {
  server = await startS3Server();
  bucket = await createTestBucket(server);
  sdk = testClient(server);
  work = await tempDir('lifeboat-s3repo-');
  seed = seedFromEnv();
  console.log(`# s3 repository: seed ${seed} (replay with LIFEBOAT_TEST_SEED=${seed})`);
});

after(async () => {
  sdk?.destroy();
  await server?.stop();
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

function repoUrl(prefix: string): string {
  return `s3://${bucket}/${prefix}`;
}

/** Global flags that point the CLI at a repository on the test server (or at a proxy in front of it). */
function repoArgs(prefix: string, endpoint = server.endpoint): string[] {
  return ['--repo', repoUrl(prefix), '--s3-endpoint', endpoint, '--s3-path-style'];
}

function cli(prefix: string, args: string[], endpoint?: string): Promise<CliRun> {
  return lifeboat([...repoArgs(prefix, endpoint), ...args], { env: server.env });
}

async function ok(run: Promise<CliRun>, what: string): Promise<CliRun> {
  const r = await run;
  assert.equal(r.code, 0, `${what} exited ${r.code}: ${r.stderr}`);
  return r;
}

/** Every key under a repository prefix, relative to it, by plain ListObjectsV2 pages. */
async function bucketKeys(prefix: string): Promise<string[]> {
  const out: string[] = [];
  let token: string | undefined;
  do {
    const page = await sdk.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `${prefix}/`, ContinuationToken: token }));
    for (const o of page.Contents ?? []) out.push(o.Key!.slice(prefix.length + 1));
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return out.sort();
}

/** Incomplete multipart uploads under a prefix, or undefined when the server cannot list them. */
async function incompleteUploads(prefix: string): Promise<string[] | undefined> {
  if (!server.capabilities.multipartListAndAbort) return undefined;
  const page = await sdk.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: `${prefix}/` }));
  return (page.Uploads ?? []).map((u) => u.Key!.slice(prefix.length + 1));
}

/** Creates a repository with the core API, for a volume size the CLI does not offer. */
async function initRepository(prefix: string, volumeSize: number): Promise<void> {
  const storage = await S3Storage.create({ bucket, prefix, settings: { endpoint: server.endpoint, forcePathStyle: true }, env: server.env });
  try {
    await Repository.init(storage, { volumeSize });
  } finally {
    await storage.close();
  }
}

async function getObject(key: string): Promise<Buffer> {
  const r = await sdk.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return Buffer.from(await r.Body!.transformToByteArray());
}

async function putObject(key: string, body: Buffer | string): Promise<void> {
  await sdk.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
}

async function exists(p: string): Promise<boolean> {
  return fsp.lstat(p).then(
    () => true,
    () => false,
  );
}

async function pool<T>(items: readonly T[], width: number, job: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) await job(items[next++]!);
    }),
  );
}

// ---------------------------------------------------------------------------
// Trees

function randomSize(rand: () => number): number {
  const r = rand();
  if (r < 0.15) return 0;
  if (r < 0.75) return Math.floor(rand() * 4096);
  return Math.floor(rand() * 512 * 1024);
}

/** Nested dirs, odd names, modes, links, an empty dir, and one file bigger than a multipart part. */
async function buildTree(root: string, rand: () => number, bigFile: boolean): Promise<void> {
  const dirs = [root];
  const names = (n: number) => pick(rand, [`f${n}-${Math.floor(rand() * 1e6)}`, `модель-${n}-重み`, `space name ${n}.json`, `${'x'.repeat(120)}-${n}`]);
  for (let i = 0; i < 5; i++) {
    const d = path.join(pick(rand, dirs), names(i));
    await fsp.mkdir(d, { recursive: true });
    dirs.push(d);
  }
  await fsp.mkdir(path.join(root, 'empty-dir'), { recursive: true });
  for (let i = 0; i < 20; i++) {
    const f = path.join(pick(rand, dirs), names(100 + i));
    await writeRandomFile(f, randomSize(rand), rand);
    await fsp.chmod(f, pick(rand, MODES));
  }
  if (bigFile) {
    await writeRandomFile(path.join(root, 'weights.bin'), PART_SIZE + 1 * MiB + Math.floor(rand() * MiB), rand);
    await fsp.symlink('weights.bin', path.join(root, 'current.bin'));
  }
}

/** Edits (one of them inside the big file), appends, truncations, deletions, additions, renames, chmods. */
async function mutate(root: string, rand: () => number, round: number): Promise<string[]> {
  const did: string[] = [];
  const big = path.join(root, 'weights.bin');
  if (await exists(big)) {
    const fh = await fsp.open(big, 'r+');
    await fh.write(Buffer.from(`round ${round}`), 0, undefined, PART_SIZE + round);
    await fh.close();
    did.push('edit-big');
  }
  did.push(...(await mutateTree(root, rand, round, { operations: 6, sizeOf: randomSize, skip: (f) => f === big })).map((d) => d.split(' ')[0]!));
  return did;
}

/** A small model deployment: models/ with a config, a tokenizer and 300 kB of weights. */
async function smallModels(dir: string, rand: () => number): Promise<string> {
  const src = path.join(dir, 'models');
  await fsp.mkdir(path.join(src, 'tok'), { recursive: true });
  await fsp.writeFile(path.join(src, 'config.json'), JSON.stringify({ vocab_size: 32000, hidden: 64 }));
  await fsp.writeFile(path.join(src, 'tok', 'tokenizer.json'), JSON.stringify({ model: { vocab: { a: 0, b: 1 } } }));
  await writeRandomFile(path.join(src, 'weights.bin'), 300_000, rand);
  return src;
}

// ---------------------------------------------------------------------------

describe('an S3 repository through the CLI', () => {
  it('a bucket that does not exist is a set-up error (exit 2) that says so, for init and every other command; init does not create it', async () => {
    for (const args of [['init'], ['list'], ['backup', work], ['verify']]) {
      const r = await lifeboat(['--repo', `s3://${bucket}-missing/repo`, '--s3-endpoint', server.endpoint, '--s3-path-style', ...args], { env: server.env });
      assert.equal(r.code, 2, `${args[0]}: ${r.stderr}`);
      assert.match(r.stderr, /the repository's bucket does not exist \(.*NoSuchBucket.*\)\n {2}check the bucket name in the repository URL and the endpoint; lifeboat does not create buckets/, args[0]);
    }
  });

  it('status as a probe: a bucket gone is backups that cannot be reached (exit 1), as a repository missing is, with no advice to make a new one', async () => {
    const s3 = ['--repo', `s3://${bucket}-gone/repo`, '--s3-endpoint', server.endpoint, '--s3-path-style'];
    const text = await lifeboat([...s3, 'status'], { env: server.env });
    assert.equal(text.code, 1, text.stderr);
    assert.match(text.stdout, /^repository not read: the repository's bucket does not exist \(.*NoSuchBucket.*\)$/m);
    assert.match(text.stderr, /the repository could not be read, so the age of the newest backup is not known: the repository's bucket does not exist .*\n {2}check the bucket name in the repository URL and the endpoint, and that the bucket is still there\n$/);
    assert.doesNotMatch(text.stderr, /init|aws s3 mb/);
    const json = await lifeboat([...s3, 'status', '--json'], { env: server.env });
    assert.equal(json.code, 1, json.stderr);
    const document = json.json() as { ok: boolean; repository: { ok: boolean }; error: { exitCode: number } };
    assert.equal(document.ok, false);
    assert.equal(document.repository.ok, false);
    assert.equal(document.error.exitCode, 1);
  });

  it('credentials the server refuses are a set-up error (exit 2) that names them, for init and for a repository that exists', async (t) => {
    if (!server.capabilities.checksCredentials) return t.skip(`the ${server.kind} test server accepts any credentials`);
    const repo = `s3://${bucket}/credentials`;
    const s3 = ['--repo', repo, '--s3-endpoint', server.endpoint, '--s3-path-style'];
    const wrongSecret = { ...server.env, AWS_SECRET_ACCESS_KEY: `${server.secretAccessKey}x` };
    const unknownKey = { ...server.env, AWS_ACCESS_KEY_ID: 'LIFEBOATNOSUCHKEY001' };
    for (const env of [wrongSecret, unknownKey]) {
      const r = await lifeboat([...s3, 'init'], { env });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /the S3 server refused the repository's credentials/);
    }
    assert.equal((await lifeboat([...s3, 'init'], { env: server.env })).code, 0);
    for (const [env, why] of [[wrongSecret, /the secret key does not match the access key id/], [unknownKey, /its access key id is unknown to the server/]] as const) {
      const r = await lifeboat([...s3, 'list', '--json'], { env });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, why);
      assert.match(r.stderr, /check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/);
      assert.ok(!r.stderr.includes(server.secretAccessKey), 'the secret is not shown');
    }
  });

  it('round trip: full → incr → diff, every point restores bit-exact (with a multipart volume)', async (t) => {
    t.diagnostic(`seed ${seed}`);
    const rand = prng(seed);
    const dir = path.join(work, 'roundtrip');
    const src = path.join(dir, 'src');
    const models = path.join(src, 'models');
    const serving = path.join(src, 'serving');
    await fsp.mkdir(models, { recursive: true });
    await fsp.mkdir(serving, { recursive: true });
    await buildTree(models, rand, true);
    await buildTree(serving, rand, false);
    const prefix = 'roundtrip';
    await ok(cli(prefix, ['init']), 'init');

    const points: { id: string; type: string; snapshot: Map<string, SnapshotEntry> }[] = [];
    for (const [round, type] of (['full', 'incr', 'diff'] as const).entries()) {
      if (round > 0) t.diagnostic(`round ${round}: ${(await mutate(models, rand, round)).concat(await mutate(serving, rand, round)).join(', ')}`);
      const r = await ok(cli(prefix, ['--json', 'backup', models, serving, '--type', type]), `backup ${type}`);
      assert.equal(r.json().type, type);
      points.push({ id: r.json().id, type, snapshot: await snapshotTree(src) });
    }

    const list = (await ok(cli(prefix, ['--json', 'list']), 'list')).json();
    assert.deepEqual(list.map((p: { id: string }) => p.id), points.map((p) => p.id));
    assert.equal(list[1].parent, points[0]!.id);
    assert.equal(list[2].parent, points[0]!.id, 'a diff depends on the last full only');
    const keys = await bucketKeys(prefix);
    const fullVolumes = keys.filter((k) => k.startsWith(`data/${points[0]!.id}/`));
    assert.ok(fullVolumes.length > 0, `the full stored volumes: ${keys.join(', ')}`);
    const sizes = await Promise.all(fullVolumes.map(async (k) => (await sdk.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `${prefix}/${k}` }))).Contents![0]!.Size!));
    assert.ok(sizes.some((s) => s > PART_SIZE), `a volume larger than a part (${sizes.join(', ')}) went up as a multipart upload`);

    for (const [i, p] of points.entries()) {
      const target = path.join(dir, `restore-${i}`);
      const r = await ok(cli(prefix, ['--json', 'restore', p.id, '--target', target]), `restore ${p.type}`);
      assert.equal(r.json().point, p.id);
      const difference = compareSnapshots(p.snapshot, await snapshotTree(target));
      assert.equal(difference, undefined, `point ${i} (${p.type}) differs after restore: ${difference}`);
    }
    // --delta back from the newest restore to the full.
    const delta = await ok(cli(prefix, ['--json', 'restore', points[0]!.id, '--target', path.join(dir, 'restore-2'), '--delta']), 'delta restore');
    assert.equal(compareSnapshots(points[0]!.snapshot, await snapshotTree(path.join(dir, 'restore-2'))), undefined);
    assert.ok(delta.json().unchanged > 0, 'delta kept files whose content was already right');

    const v = await ok(cli(prefix, ['--json', 'verify', '--read-data']), 'verify --read-data');
    assert.equal(v.json().ok, true);
    assert.ok(v.json().bytesRead > PART_SIZE);
    assert.deepEqual(await incompleteUploads(prefix) ?? [], []);
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('a byte flipped in a stored volume object: verify --read-data and restore exit 3, no target', async () => {
    const dir = path.join(work, 'corrupt');
    const src = await smallModels(dir, prng(seed + 1));
    const prefix = 'corrupt';
    await ok(cli(prefix, ['init']), 'init');
    const id = (await ok(cli(prefix, ['--json', 'backup', src]), 'backup')).json().id as string;
    const volume = (await bucketKeys(prefix)).find((k) => k.startsWith(`data/${id}/`));
    assert.ok(volume, 'the backup stored a volume');
    const bytes = await getObject(`${prefix}/${volume}`);
    // The middle of the volume is inside weights.bin, its largest entry.
    bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
    await putObject(`${prefix}/${volume}`, bytes);

    assert.equal((await cli(prefix, ['verify'])).code, 0, 'a structural verify does not read data');
    const v = await cli(prefix, ['--json', 'verify', '--read-data']);
    assert.equal(v.code, 3, v.stderr);
    assert.equal(v.json().ok, false);
    assert.ok(
      v.json().problems.some((p: { point: string; path: string }) => p.point === id && p.path === 'models/weights.bin'),
      `the problem names the point and the file: ${v.stdout}`,
    );
    const human = await cli(prefix, ['verify', '--read-data']);
    assert.equal(human.code, 3);
    assert.match(human.stdout + human.stderr, new RegExp(`${id}.*models/weights\\.bin`));

    const target = path.join(dir, 'restored');
    const r = await cli(prefix, ['restore', id, '--target', target]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /models\/weights\.bin/);
    assert.equal(await exists(target), false, 'no half-restored target');
    assert.deepEqual((await fsp.readdir(dir)).filter((n) => n !== 'models'), [], 'no staging directory left beside the target');
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('volumes a lifecycle rule moved to Glacier: verify names them and the points that need them (exit 3); restore says to retrieve them', async () => {
    const dir = path.join(work, 'archived');
    const src = await smallModels(dir, prng(seed + 7));
    const prefix = 'archived';
    await ok(cli(prefix, ['init']), 'init');
    const full = (await ok(cli(prefix, ['--json', 'backup', src]), 'full')).json().id as string;
    await fsp.writeFile(path.join(src, 'config.json'), JSON.stringify({ vocab_size: 32001, hidden: 64 }));
    const incr = (await ok(cli(prefix, ['--json', 'backup', src]), 'incr')).json().id as string;
    const proxy = await startFaultProxy({ upstream: server.endpoint, seed: seed + 7 });
    try {
      // The full's volumes went to Glacier; the incremental's stayed (it is newer than the rule's age).
      proxy.archive((object) => object.startsWith(`${bucket}/${prefix}/data/${full}/`));
      const fullVolume = (await bucketKeys(prefix)).find((k) => k.startsWith(`data/${full}/`))!;
      for (const args of [['verify'], ['verify', '--read-data']]) {
        const v = await cli(prefix, ['--json', ...args], proxy.endpoint);
        assert.equal(v.code, 3, `${args.join(' ')}: ${v.stderr}`);
        const problems = v.json().problems as { point: string; path: string; kind: string; detail: string }[];
        // Once for the point that holds it and once for the point that needs it; not read, so not reported damaged.
        assert.deepEqual(problems.map((p) => [p.point, p.path, p.kind]).sort(), [[full, fullVolume, 'volume-archived'], [incr, fullVolume, 'volume-archived']].sort(), JSON.stringify(problems));
        assert.match(problems[0]!.detail, /archive storage class GLACIER/);
      }
      assert.match((await cli(prefix, ['verify'], proxy.endpoint)).stderr, /retrieve the archived volumes \(aws s3api restore-object\)/);
      const target = path.join(dir, 'restored');
      const r = await cli(prefix, ['restore', incr, '--target', target], proxy.endpoint);
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr, new RegExp(`${fullVolume} is in the archive storage class GLACIER and cannot be read until it is retrieved from there\\n {2}retrieve it first \\(aws s3api restore-object\\)`));
      assert.equal(await exists(target), false, 'no half-restored target');
    } finally {
      await proxy.stop();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });

  it('a backup killed with SIGKILL leaves no visible point; the next backup removes what it left', async (t) => {
    const rand = prng(seed + 2);
    const dir = path.join(work, 'kill');
    const src = await smallModels(dir, rand);
    for (let i = 0; i < 4; i++) await writeRandomFile(path.join(src, `shard-${i}.bin`), 12 * MiB, rand);
    const prefix = 'kill';
    // Volumes of about one shard each, each a multipart upload: a kill can leave whole
    // volumes of an uncommitted point as well as a multipart upload in progress.
    await initRepository(prefix, 8 * MiB);
    const committed = [(await ok(cli(prefix, ['--json', 'backup', src, '--type', 'full']), 'first backup')).json().id as string];
    let interrupted = 0;

    for (let round = 0; round < 4; round++) {
      const child = spawnLifeboat([...repoArgs(prefix), '--json', 'backup', src, '--type', 'full'], { env: server.env });
      child.stdout!.resume();
      child.stderr!.resume();
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      // Even rounds: any moment from start-up on. Odd rounds: once volume data is on its way.
      let when: string;
      if (round % 2 === 0) {
        const delay = 100 + Math.floor(rand() * 1500);
        await new Promise((r) => setTimeout(r, delay));
        when = `${delay} ms after start`;
      } else {
        const started = Date.now();
        while (Date.now() - started < 20_000 && !(await uploadStarted(prefix, committed))) await new Promise((r) => setTimeout(r, 10));
        // Within the upload, which takes a few hundred milliseconds here: half a second let some seeds miss it every time.
        const delay = Math.floor(rand() * 100);
        await new Promise((r) => setTimeout(r, delay));
        when = `${delay} ms after its upload started`;
      }
      child.kill('SIGKILL');
      const code = await exited;

      const list = (await ok(cli(prefix, ['--json', 'list']), 'list after a kill')).json();
      const ids = list.map((p: { id: string }) => p.id);
      // Killed after its manifest was committed: then the point is complete (verified below).
      if (ids.length === committed.length + 1) committed.push(ids[ids.length - 1]);
      assert.deepEqual(ids, committed, `after a kill ${when} only committed points are visible`);
      const stray = (await bucketKeys(prefix)).filter((k) => k.startsWith('data/') && !committed.includes(k.split('/')[1]!));
      const uploads = (await incompleteUploads(prefix)) ?? [];
      if (stray.length + uploads.length > 0) interrupted++;
      t.diagnostic(`round ${round} (killed ${when}, exit ${code}): ${stray.length} volume(s) and ${uploads.length} multipart upload(s) left behind`);
      const v = await cli(prefix, ['--json', 'verify']);
      assert.equal(v.code, 0, `verify after a kill ${when}: ${v.stdout}${v.stderr}`);
      assert.equal(v.json().ok, true);
      if (stray.length > 0) assert.ok(v.json().warnings.some((w: { code: string }) => w.code === 'leftovers'), 'verify reports the leftover volumes');
    }
    if (server.capabilities.multipartListAndAbort) assert.ok(interrupted > 0, 'at least one kill interrupted an upload');

    const next = await ok(cli(prefix, ['--json', 'backup', src, '--type', 'incr']), 'the backup after the kills');
    committed.push(next.json().id);
    const keys = await bucketKeys(prefix);
    for (const k of keys) {
      if (k.startsWith('data/')) assert.ok(committed.includes(k.split('/')[1]!), `leftover ${k} was removed`);
    }
    assert.ok(!keys.includes('locks/lock.json'), 'no lock is left behind');
    const uploads = await incompleteUploads(prefix);
    if (uploads === undefined) {
      const reason = `${server.kind} cannot list multipart uploads: not checked that none are left`;
      console.log(`# ${reason}`);
      t.diagnostic(reason);
    } else {
      assert.deepEqual(uploads, [], 'no incomplete multipart upload is left under the prefix');
    }
    const v = await ok(cli(prefix, ['--json', 'verify', '--read-data']), 'verify --read-data at the end');
    assert.deepEqual(v.json().warnings, []);
    assert.equal(v.json().backups, committed.length);
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('an incomplete multipart upload is reported by verify unless a running backup makes it; the next backup aborts it and says so', async (t) => {
    if (!server.capabilities.multipartListAndAbort) return t.skip(`${server.kind} cannot list multipart uploads`);
    const rand = prng(seed + 5);
    const dir = path.join(work, 'uploads');
    t.after(() => fsp.rm(dir, { recursive: true, force: true }));
    const src = await smallModels(dir, rand);
    for (let i = 0; i < 4; i++) await writeRandomFile(path.join(src, `shard-${i}.bin`), 12 * MiB, rand);
    const prefix = 'uploads';
    await initRepository(prefix, 8 * MiB);
    // What a backup killed an hour ago left: the first part of a volume, uploaded and never completed.
    const left = `data/${makePointId(new Date(Date.now() - 3_600_000), 'full')}/v000001.tar`;
    const upload = await sdk.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: `${prefix}/${left}` }));
    await sdk.send(new UploadPartCommand({ Bucket: bucket, Key: `${prefix}/${left}`, UploadId: upload.UploadId, PartNumber: 1, Body: Buffer.alloc(5 * MiB, 7) }));

    const v = await ok(cli(prefix, ['--json', 'verify']), 'verify with an incomplete upload');
    assert.equal(v.json().ok, true);
    assert.deepEqual(v.json().warnings.map((w: { code: string; path: string }) => [w.code, w.path]), [['leftovers', left]]);
    assert.match(v.stderr, /an incomplete multipart upload, left by a write that never finished .*; the next backup or prune removes it if its credentials may delete/);

    const child = spawnLifeboat([...repoArgs(prefix), 'backup', src, '--type', 'full'], { env: server.env });
    const stderr: Buffer[] = [];
    child.stderr!.on('data', (c: Buffer) => stderr.push(c));
    child.stdout!.resume();
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    t.after(() => void child.kill('SIGKILL'));
    // Stopped while it uploads a volume: it holds the lock, and its upload stays incomplete while verify runs.
    let running: string | undefined;
    for (let volume = 0; volume < 4 && running === undefined; volume++) {
      const uploading = async () => ((await incompleteUploads(prefix)) ?? []).find((k) => k !== left);
      const until = Date.now() + 20_000;
      let key: string | undefined;
      while (Date.now() < until && !(key = await uploading())) await new Promise((r) => setTimeout(r, 10));
      assert.ok(key, 'the backup started an upload');
      child.kill('SIGSTOP');
      if ((await uploading()) === key) running = key;
      else child.kill('SIGCONT');
    }
    assert.ok(running, 'the backup was stopped within an upload');
    const during = await cli(prefix, ['--json', 'verify']);
    child.kill('SIGCONT');
    assert.equal(during.code, 0, during.stderr);
    assert.deepEqual(during.json().warnings, [], 'the running backup aborted the old upload, and its own is no leftover');
    assert.match(during.stderr, new RegExp(`${running.replace(/[.]/g, '\\.')}: being written by the running backup on .+, pid ${child.pid}\\b`));
    assert.equal(await exited, 0, Buffer.concat(stderr).toString());
    assert.match(Buffer.concat(stderr).toString(), new RegExp(`${left.replace(/[.]/g, '\\.')}: removed an incomplete multipart upload, left by a write that never finished`));
    assert.deepEqual(await incompleteUploads(prefix), []);
  });

  it('prune aborts an incomplete multipart upload a killed backup left, and its summary line and --json count it apart from data objects', async (t) => {
    if (!server.capabilities.multipartListAndAbort) return t.skip(`${server.kind} cannot list multipart uploads`);
    const dir = path.join(work, 'prune-uploads');
    t.after(() => fsp.rm(dir, { recursive: true, force: true }));
    const src = await smallModels(dir, prng(seed + 9));
    const prefix = 'prune-uploads';
    await initRepository(prefix, 8 * MiB);
    await ok(cli(prefix, ['backup', src, '--type', 'full']), 'backup');
    // What a backup killed an hour ago left: a volume's upload begun, with one part, never completed.
    const leave = async (): Promise<string> => {
      const left = `data/${makePointId(new Date(Date.now() - 3_600_000 - Math.floor(Math.random() * 60_000)), 'full')}/v000001.tar`;
      const upload = await sdk.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: `${prefix}/${left}` }));
      await sdk.send(new UploadPartCommand({ Bucket: bucket, Key: `${prefix}/${left}`, UploadId: upload.UploadId, PartNumber: 1, Body: Buffer.alloc(5 * MiB, 7) }));
      return left;
    };
    const left = await leave();
    const line = (verb: string) => new RegExp(`^${verb} 0 point\\(s\\) and 0 data object\\(s\\), 0 B, and an incomplete multipart upload; 1 point\\(s\\) kept`, 'm');
    const dry = await ok(cli(prefix, ['prune', '--keep-full', '1', '--dry-run']), 'prune --dry-run');
    assert.match(dry.stdout, line('would remove'));
    const dryJson = (await ok(cli(prefix, ['--json', 'prune', '--keep-full', '1', '--dry-run']), 'prune --dry-run --json')).json();
    assert.deepEqual([dryJson.objects, dryJson.dataObjects, dryJson.unfinishedWrites], [[left], 0, 1]);
    const pruned = (await ok(cli(prefix, ['--json', 'prune', '--keep-full', '1']), 'prune --json')).json();
    assert.deepEqual([pruned.objects, pruned.dataObjects, pruned.unfinishedWrites], [[left], 0, 1]);
    assert.deepEqual(await incompleteUploads(prefix), []);
    await leave();
    const text = await ok(cli(prefix, ['prune', '--keep-full', '1']), 'prune');
    assert.match(text.stdout, line('removed'));
    assert.deepEqual(await incompleteUploads(prefix), []);
    // Nothing left: no count of what did not happen.
    const none = await ok(cli(prefix, ['prune', '--keep-full', '1']), 'prune with nothing to remove');
    assert.match(none.stdout, /^removed 0 point\(s\) and 0 data object\(s\), 0 B; 1 point\(s\) kept/m);
  });

  it('the lock: a live holder on this host makes a backup exit 4 naming host and pid; a stale one is taken over', async (t) => {
    if (!server.capabilities.conditionalPut) {
      t.skip(`${server.kind} ignores If-None-Match on PutObject, so a lock object cannot be created exclusively there`);
      return;
    }
    const dir = path.join(work, 'lock');
    const src = await smallModels(dir, prng(seed + 3));
    const prefix = 'lock';
    await ok(cli(prefix, ['init']), 'init');
    const now = new Date().toISOString();
    const live = { host: os.hostname(), pid: process.pid, command: 'backup', startedAt: now, refreshedAt: now, leaseMs: 1_800_000 };
    await putObject(`${prefix}/locks/lock.json`, JSON.stringify(live));
    const blocked = await cli(prefix, ['backup', src]);
    assert.equal(blocked.code, 4, blocked.stderr);
    assert.match(blocked.stderr, new RegExp(`pid ${process.pid}\\b`));
    assert.ok(blocked.stderr.includes(os.hostname()), blocked.stderr);
    assert.equal((await cli(prefix, ['unlock'])).code, 4, 'unlock refuses a live lock');
    assert.deepEqual((await cli(prefix, ['--json', 'list'])).json(), []);

    await putObject(`${prefix}/locks/lock.json`, JSON.stringify({ ...live, pid: 2 ** 22 + 12345 }));
    const took = await ok(cli(prefix, ['backup', src]), 'backup over a stale lock');
    assert.match(took.stderr, /stale lock/);
    assert.ok(!(await bucketKeys(prefix)).includes('locks/lock.json'), 'the lock is released after the backup');

    await putObject(`${prefix}/locks/lock.json`, JSON.stringify({ ...live, host: 'another-host', refreshedAt: new Date(Date.now() - 3_600_000).toISOString() }));
    const u = await ok(cli(prefix, ['--json', 'unlock']), 'unlock of an expired lease');
    assert.equal(u.json().stale, true);
    assert.ok(!(await bucketKeys(prefix)).includes('locks/lock.json'));
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('a bucket with versioning on (as object lock needs it), where a server may ignore If-None-Match and refuse If-Match: a live lock holds, documents are replaced, prune works', async (t) => {
    const versioned = await createTestBucket(server);
    try {
      await sdk.send(new PutBucketVersioningCommand({ Bucket: versioned, VersioningConfiguration: { Status: 'Enabled' } }));
    } catch (err) {
      t.skip(`${server.kind} has no bucket versioning: ${(err as Error).message}`);
      return;
    }
    const storage = await S3Storage.create({ bucket: versioned, prefix: 'driver', settings: { endpoint: server.endpoint }, env: server.env });
    try {
      assert.equal(await storage.putDocument('locks/doc', Buffer.from('first')), true);
      assert.equal(await storage.putDocument('locks/doc', Buffer.from('second'), { ifMatch: Buffer.from('first') }), true, 'replaces what it holds');
      assert.equal((await storage.getDocument('locks/doc')).toString(), 'second');
      assert.equal(await storage.putDocument('locks/doc', Buffer.from('third'), { ifMatch: Buffer.from('first') }), false, 'refuses what changed');
      assert.equal((await storage.getDocument('locks/doc')).toString(), 'second');
    } finally {
      await storage.close();
    }

    const dir = path.join(work, 'versioned');
    const src = await smallModels(dir, prng(seed + 4));
    const run = (...args: string[]) => lifeboat(['--repo', `s3://${versioned}/repo`, '--s3-endpoint', server.endpoint, '--s3-path-style', ...args], { env: server.env });
    await ok(run('init'), 'init');
    await ok(run('backup', src, '--type', 'full'), 'first full');
    await ok(run('backup', src, '--type', 'full'), 'second full');
    // A live holder's lock, which a server ignoring If-None-Match there would let a backup overwrite.
    const now = new Date().toISOString();
    const live = { host: os.hostname(), pid: process.pid, command: 'prune', startedAt: now, refreshedAt: now, leaseMs: 1_800_000 };
    await sdk.send(new PutObjectCommand({ Bucket: versioned, Key: 'repo/locks/lock.json', Body: JSON.stringify(live) }));
    const blocked = await run('backup', src);
    assert.equal(blocked.code, 4, blocked.stderr);
    const lock = await sdk.send(new GetObjectCommand({ Bucket: versioned, Key: 'repo/locks/lock.json' }));
    assert.deepEqual(JSON.parse(await lock.Body!.transformToString()), live, 'the holder keeps its lock');
    await sdk.send(new DeleteObjectCommand({ Bucket: versioned, Key: 'repo/locks/lock.json' }));
    const pruned = await ok(run('--json', 'prune', '--keep-full', '1'), 'prune');
    assert.equal(pruned.json().remove.length, 1, pruned.stdout);
    assert.equal((await run('--json', 'list')).json().length, 1);
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('init under another repository\'s prefix is refused (exit 2): its backups would be removed as an aborted backup\'s leftovers', async () => {
    await ok(cli('outer', ['init']), 'init');
    for (const inner of ['outer/data/inner', 'outer/x']) {
      const refused = await cli(inner, ['init']);
      assert.equal(refused.code, 2, refused.stderr);
      assert.ok(refused.stderr.includes(`${repoUrl(inner)} lies inside the lifeboat repository at ${repoUrl('outer')}`), refused.stderr);
    }
    assert.deepEqual((await bucketKeys('outer')).filter((k) => k.endsWith('config.json')), ['config.json'], 'no repository made inside');
    await ok(cli('outer-beside', ['init']), 'a prefix that only starts alike is beside it');
  });

  it('more than 1,000 objects: list, verify and cleanup read every listing page', async (t) => {
    const dir = path.join(work, 'many');
    const src = path.join(dir, 'models');
    const files = 1_050;
    const rand = prng(seed + 4);
    for (let d = 0; d < 10; d++) await fsp.mkdir(path.join(src, `layer-${d}`), { recursive: true });
    for (let i = 0; i < files; i++) await writeRandomFile(path.join(src, `layer-${i % 10}`, `tensor-${i}.bin`), 4_200, rand);

    // The volume size lives in the repository config: a tiny one gives one volume per file.
    const prefix = 'many';
    await initRepository(prefix, 4096);
    let started = Date.now();
    const full = (await ok(cli(prefix, ['--json', 'backup', src, '--type', 'full']), 'backup')).json();
    t.diagnostic(`backup of ${files} files in ${Date.now() - started} ms`);
    const volumes = (await bucketKeys(prefix)).filter((k) => k.startsWith(`data/${full.id}/`));
    assert.ok(volumes.length > 1_000, `more than one listing page of volumes: ${volumes.length}`);

    // A volume past the first listing page goes missing: verify must read that page to notice.
    const v = await ok(cli(prefix, ['--json', 'verify']), 'verify');
    assert.equal(v.json().ok, true);
    assert.equal(v.json().files, files);
    const last = volumes[volumes.length - 1]!;
    const kept = await getObject(`${prefix}/${last}`);
    await sdk.send(new DeleteObjectCommand({ Bucket: bucket, Key: `${prefix}/${last}` }));
    const missing = await cli(prefix, ['--json', 'verify']);
    assert.equal(missing.code, 3, missing.stderr);
    assert.deepEqual(missing.json().problems.map((p: { kind: string; path: string }) => [p.kind, p.path]), [['missing-volume', last]]);
    await putObject(`${prefix}/${last}`, kept);

    // Leftovers of an aborted backup spanning more than one listing page (and one delete batch).
    const orphan = makePointId(new Date(Date.UTC(2001, 0, 1)), 'full');
    const orphanKeys = Array.from({ length: 1_010 }, (_, i) => `data/${orphan}/v${String(i + 1).padStart(6, '0')}.tar`);
    await pool(orphanKeys, 16, (k) => putObject(`${prefix}/${k}`, 'partial volume'));
    const warned = await ok(cli(prefix, ['--json', 'verify']), 'verify with leftovers');
    assert.ok(
      warned.json().warnings.some((w: { code: string; path: string; message: string }) => w.code === 'leftovers' && w.path === `data/${orphan}/` && w.message.startsWith('1010 object(s)')),
      `verify reports every leftover object: ${JSON.stringify(warned.json().warnings)}`,
    );
    const incr = await ok(cli(prefix, ['--json', 'backup', src, '--type', 'incr']), 'backup that cleans up');
    assert.match(incr.stderr, /removed 1010 object\(s\)/);
    const after = await bucketKeys(prefix);
    assert.deepEqual(after.filter((k) => k.startsWith(`data/${orphan}/`)), [], 'every leftover was deleted');
    assert.equal(after.filter((k) => k.startsWith(`data/${full.id}/`)).length, volumes.length, 'committed volumes are untouched');

    // More than 1,000 points: hand-made incrs of a one-file full, so `list` needs several pages.
    const many = 'many-points';
    await ok(cli(many, ['init']), 'init');
    const one = path.join(dir, 'one');
    await fsp.mkdir(one);
    await fsp.writeFile(path.join(one, 'config.json'), '{"hidden": 64}');
    const base = (await ok(cli(many, ['--json', 'backup', one, '--type', 'full']), 'backup')).json().id as string;
    const manifest = JSON.parse((await getObject(`${many}/points/${base}.json`)).toString('utf8'));
    const baseTime = Date.parse(manifest.completedAt);
    const times = Array.from({ length: 1_005 }, (_, i) => new Date(baseTime + (i + 1) * 1000));
    const ids = times.map((at) => makePointId(at, 'incr'));
    // Each one an incr with no changes: every file's bytes stay in the full's volume.
    await pool(times, 16, async (at) => {
      const id = makePointId(at, 'incr');
      const copy = { ...manifest, id, type: 'incr', parent: base, full: base, startedAt: at.toISOString(), completedAt: at.toISOString(), volumes: [], stats: { ...manifest.stats, added: 0, storedBytes: 0 } };
      await putObject(`${many}/points/${id}.json`, encodeDocument(copy));
    });
    started = Date.now();
    const listed = (await ok(cli(many, ['--json', 'list']), 'list of 1,006 points')).json();
    assert.equal(listed.length, ids.length + 1);
    assert.deepEqual(listed.map((p: { id: string }) => p.id), [base, ...ids]);
    t.diagnostic(`list of ${ids.length + 1} points in ${Date.now() - started} ms`);
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('through faults: a backup and a restore within the retry budget are bit-exact; beyond it the backup fails cleanly', async (t) => {
    const rand = prng(seed + 5);
    const dir = path.join(work, 'faults');
    const src = path.join(dir, 'src');
    const models = path.join(src, 'models');
    await fsp.mkdir(models, { recursive: true });
    await buildTree(models, rand, true);
    await fsp.mkdir(path.join(models, 'shards'));
    for (let i = 0; i < 40; i++) await writeRandomFile(path.join(models, 'shards', `shard-${i}`), 40_000 + Math.floor(rand() * 40_000), rand);
    const prefix = 'faults';
    // Small volumes, so a backup makes enough requests for faults to land everywhere.
    await initRepository(prefix, 64 * 1024);
    // Within the budget: no request gets more faults in a row than half its attempts (with seed 98189825 one PUT got six).
    const proxy = await startFaultProxy({ upstream: server.endpoint, seed: seed + 6, maxFaultsInARow: 3 });
    const push = proxy.requests.push.bind(proxy.requests);
    try {
      // Besides the random ones, every kind of fault once, spread out (never back to back).
      const scripted: [FaultKind, string][] = [
        ['slowDown', 'PUT'],
        ['internalError', 'PUT'],
        ['dropRequest', 'PUT'],
        ['dropResponse', 'PUT'],
        ['delay', 'PUT'],
        ...(server.capabilities.contentMd5Check ? [['corruptRequest', 'PUT'] as [FaultKind, string]] : []),
        ['dropResponse', 'GET'],
        ['internalError', 'GET'],
      ];
      let seenRequests = 0;
      proxy.requests.push = (...items) => {
        seenRequests += items.length;
        const next = scripted[0];
        if (next && seenRequests % 3 === 0 && items.some((r) => r.method === next[1])) proxy.inject(scripted.shift()![0], { method: next[1] });
        return push(...items);
      };
      // corruptRequest only where the server checks Content-MD5: elsewhere the damage would be stored.
      proxy.setRates({
        slowDown: 0.05,
        internalError: 0.03,
        dropRequest: 0.03,
        dropResponse: 0.03,
        delay: 0.02,
        ...(server.capabilities.contentMd5Check ? { corruptRequest: 0.03 } : {}),
      });
      const b = await ok(cli(prefix, ['--json', 'backup', models, '--type', 'full'], proxy.endpoint), 'backup through faults');
      assert.ok(b.json().storedBytes > PART_SIZE);
      const id = b.json().id as string;
      const snapshot = await snapshotTree(src);
      const target = path.join(dir, 'restored');
      await ok(cli(prefix, ['restore', id, '--target', target], proxy.endpoint), 'restore through faults');
      assert.equal(compareSnapshots(snapshot, await snapshotTree(target)), undefined);
      const v = await ok(cli(prefix, ['--json', 'verify', '--read-data'], proxy.endpoint), 'verify --read-data through faults');
      assert.equal(v.json().ok, true);
      const injected = Object.entries(proxy.injected).filter(([, n]) => n > 0);
      t.diagnostic(`faults injected: ${JSON.stringify(Object.fromEntries(injected))} over ${proxy.requests.length} requests`);
      assert.ok(injected.length >= 5, 'the proxy injected every kind of fault');

      // Beyond the budget: every PUT fails once volume data starts to go up (the lock goes through).
      proxy.setRates({});
      proxy.limitFaultsInARow(undefined);
      const seen = proxy.requests.length;
      proxy.requests.push = (...items) => {
        if (items.some((r) => r.path.includes('/data/'))) proxy.setRates({ slowDown: 0.5, internalError: 0.5 }, ['PUT']);
        return push(...items);
      };
      await fsp.appendFile(path.join(models, 'weights.bin'), 'changed');
      const failed = await cli(prefix, ['--json', 'backup', models, '--type', 'full'], proxy.endpoint);
      proxy.setRates({});
      t.diagnostic(`failed backup: ${failed.stderr.trim().split('\n').join(' | ')}`);
      assert.equal(failed.code, 1, failed.stderr);
      const report = failed.json();
      assert.equal(report.ok, false, 'the JSON document reports the failure');
      assert.equal(report.error.exitCode, 1);
      assert.match(report.error.message, /\bput data\/\d{8}-\d{6}-\d{3}F\/v\d{6}\.tar\b.*after \d+ attempts/);
      assert.match(failed.stderr, /\bput data\/\d{8}-\d{6}-\d{3}F\/v\d{6}\.tar\b/, 'the message names the operation and the object');
      assert.match(failed.stderr, /after \d+ attempts/);
      assert.ok(proxy.requests.slice(seen).some((r) => r.fault), 'faults were injected into the failed backup');

      const list = (await ok(cli(prefix, ['--json', 'list']), 'list after the failure')).json();
      assert.deepEqual(list.map((p: { id: string }) => p.id), [id], 'no new point is visible');
      const keys = await bucketKeys(prefix);
      assert.deepEqual(keys.filter((k) => k.startsWith('data/') && !k.startsWith(`data/${id}/`)), [], 'the failed backup removed its volumes');
      assert.ok(!keys.includes('locks/lock.json'), 'the lock was released');
      const uploads = await incompleteUploads(prefix);
      if (uploads !== undefined) assert.deepEqual(uploads, [], 'the failed multipart upload was aborted');
      const v2 = await ok(cli(prefix, ['--json', 'verify']), 'verify after the failure');
      assert.deepEqual(v2.json().warnings, []);
    } finally {
      proxy.requests.push = push;
      await proxy.stop();
    }
    await fsp.rm(dir, { recursive: true, force: true });
  });

  it('the server goes away in the middle of a backup: exit 1 naming the upload, not exit 4 for the lock it could not release; the next backup takes over', async (t) => {
    const rand = prng(seed + 7);
    const dir = path.join(work, 'gone');
    const src = await smallModels(dir, rand);
    for (let i = 0; i < 3; i++) await writeRandomFile(path.join(src, `shard-${i}.bin`), 4 * MiB, rand);
    const prefix = 'gone';
    await initRepository(prefix, 64 * 1024 * 1024);
    const proxy = await startFaultProxy({ upstream: server.endpoint, seed: seed + 8 });
    const push = proxy.requests.push.bind(proxy.requests);
    let stopped: Promise<void> | undefined;
    // The server stops as the first volume data goes up: every request after that finds nobody listening.
    proxy.requests.push = (...items) => {
      if (items.some((r) => r.path.includes('/data/'))) stopped ??= proxy.stop();
      return push(...items);
    };
    // Another process, as a cron job is: the lock it leaves names a process that no longer runs.
    const failed = await runChild([...repoArgs(prefix, proxy.endpoint), '--json', 'backup', src, '--type', 'full'], { env: server.env });
    await stopped;
    t.diagnostic(`backup while the server went away: exit ${failed.code}: ${failed.stderr.trim().split('\n').join(' | ')}`);
    assert.ok(stopped, 'the server went away during the backup');
    assert.equal(failed.code, 1, failed.stderr);
    assert.match(failed.stderr, /\b(put|head) data\/\d{8}-\d{6}-\d{3}F\/v\d{6}\.tar\b.*failed/, 'the message names the volume whose upload failed');
    assert.doesNotMatch(failed.stderr, /release the repository lock/);
    assert.equal(failed.json().error.exitCode, 1);

    assert.ok((await bucketKeys(prefix)).includes('locks/lock.json'), 'the lock could not be released');

    // Back again: the lock left behind is taken over, and the backup goes through.
    const next = await ok(cli(prefix, ['backup', src, '--type', 'full']), 'the backup once the server is back');
    assert.match(next.stderr, /took over a stale lock of backup on .*no longer runs/);
    assert.ok(!(await bucketKeys(prefix)).includes('locks/lock.json'), 'the lock was released');
    await ok(cli(prefix, ['verify', '--read-data']), 'verify --read-data after the server came back');
    await fsp.rm(dir, { recursive: true, force: true });
  });
});

/** Whether a backup other than the committed ones has begun to upload volume data. */
async function uploadStarted(prefix: string, committed: readonly string[]): Promise<boolean> {
  const uploads = await incompleteUploads(prefix).catch(() => undefined);
  if (uploads && uploads.some((k) => k.startsWith('data/') && !committed.includes(k.split('/')[1]!))) return true;
  const page = await sdk.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `${prefix}/data/` }));
  return (page.Contents ?? []).some((o) => !committed.includes(o.Key!.slice(prefix.length + 1).split('/')[1]!));
}
