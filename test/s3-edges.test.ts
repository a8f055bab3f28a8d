/**
 * S3 repositories at the edges of what S3 and its URLs allow, against a real
 * S3 server (Ceph radosgw when installed, else s3rver): endpoints written in
 * unusual ways, prefixes that S3 keys allow but tools read otherwise, and
 * objects large enough that the part size must grow.
 */
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CreateMultipartUploadCommand, GetObjectCommand, ListObjectsV2Command, UploadPartCommand, type S3Client } from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import { Repository } from '../src/core/repository.js';
import { S3Storage } from '../src/storage/s3.js';
import { PartWriter } from '../src/storage/s3-part-writer.js';
import { lifeboat, runChild, type CliRun } from './helpers/cli.js';
import { createTestBucket, startS3Server, testClient, type S3TestServer } from './helpers/s3server.js';
import { tempDir } from './helpers/tree.js';

let server: S3TestServer;
let bucket: string;
let sdk: S3Client;
let work: string;

before(async () => {
  server = await startS3Server();
  bucket = await createTestBucket(server);
  sdk = testClient(server);
  work = await tempDir('lifeboat-s3edges-');
});

after(async () => {
  sdk?.destroy();
  await server?.stop();
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

function cli(repo: string, endpoint: string, args: string[]): Promise<CliRun> {
  return lifeboat(['--repo', repo, '--s3-endpoint', endpoint, ...args], { env: server.env });
}

async function bucketKeys(): Promise<string[]> {
  const out: string[] = [];
  let token: string | undefined;
  do {
    const page = await sdk.send(new ListObjectsV2Command({ Bucket: bucket, ContinuationToken: token }));
    for (const o of page.Contents ?? []) out.push(o.Key!);
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return out.sort();
}

describe('S3 edges', () => {
  it('an endpoint or a repository URL whose scheme is in capitals works; one that names the bucket in its path is a set-up error (exit 2), and init writes nothing', async () => {
    const upper = server.endpoint.replace(/^http/, 'HTTP');
    const made = await cli(`s3://${bucket}/caps`, upper, ['init']);
    assert.equal(made.code, 0, made.stderr);
    const listed = await cli(`s3://${bucket}/caps`, `${server.endpoint.replace(/^http/, 'Http')}/`, ['list']);
    assert.equal(listed.code, 0, listed.stderr);

    // So does the repository's: S3://bucket/prefix is s3://bucket/prefix (RFC 3986), not an unknown scheme.
    for (const repo of [`S3://${bucket}/caps`, `S3://${bucket}/caps/`]) {
      const upperRepo = await cli(repo, server.endpoint, ['--json', 'list']);
      assert.equal(upperRepo.code, 0, `${repo}: ${upperRepo.stderr}`);
      assert.deepEqual(upperRepo.json(), []);
    }

    const before = await bucketKeys();
    for (const endpoint of [`${server.endpoint}/${bucket}`, `${server.endpoint}/${bucket}/`]) {
      for (const args of [['list'], ['init']]) {
        const r = await cli(`s3://${bucket}/caps`, endpoint, args);
        assert.equal(r.code, 2, `${args[0]} with ${endpoint}: ${r.stderr}`);
        assert.match(r.stderr, new RegExp(`--s3-endpoint .* names the bucket ${bucket} in its path`));
        assert.ok(r.stderr.includes(`give the server alone as the endpoint (${server.endpoint})`), r.stderr);
        assert.doesNotMatch(r.stderr, /no lifeboat repository|\n\s+at /);
      }
    }
    assert.deepEqual(await bucketKeys(), before, 'nothing was written under a second copy of the bucket name');
  });

  it('a prefix too long for the keys below it: init refuses it (exit 2) and writes nothing; a repository made under one before fails its backup with exit 2 saying why, not with HTTP 400', async () => {
    const src = path.join(work, 'long', 'models');
    await fsp.mkdir(src, { recursive: true });
    await fsp.writeFile(path.join(src, 'weights.bin'), 'w'.repeat(10_000));

    const longest = `long-${'p'.repeat(890)}`;
    assert.equal(Buffer.byteLength(longest), 895);
    const made = await cli(`s3://${bucket}/${longest}`, server.endpoint, ['init']);
    assert.equal(made.code, 0, made.stderr);
    for (const args of [['backup', src, '--type', 'full'], ['verify', '--read-data'], ['restore', 'latest', '--target', path.join(work, 'long', 'restored')]]) {
      const r = await cli(`s3://${bucket}/${longest}`, server.endpoint, args);
      assert.equal(r.code, 0, `${args[0]} under a prefix of 895 bytes: ${r.stderr}`);
    }

    const before = await bucketKeys();
    // Counted in bytes, as S3 counts keys: 298 two-byte letters and 300 more.
    for (const prefix of [`long-${'p'.repeat(891)}`, `long-${'é'.repeat(298)}${'q'.repeat(295)}`]) {
      assert.equal(Buffer.byteLength(prefix), 896);
      const r = await cli(`s3://${bucket}/${prefix}`, server.endpoint, ['init']);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /is 896 bytes long, too long for a repository: S3 keys have at most 1024 bytes/);
      assert.match(r.stderr, /choose a prefix of at most 895 bytes/);
    }
    assert.deepEqual(await bucketKeys(), before, 'init wrote nothing');

    // What init let through before: a config short enough, every volume too long.
    const tooLong = `long-${'r'.repeat(985)}`;
    const storage = await S3Storage.create({ bucket, prefix: tooLong, settings: { endpoint: server.endpoint, forcePathStyle: true }, env: server.env });
    try {
      await Repository.init(storage);
    } finally {
      await storage.close();
    }
    const failed = await cli(`s3://${bucket}/${tooLong}`, server.endpoint, ['backup', src, '--type', 'full']);
    assert.equal(failed.code, 2, failed.stderr);
    assert.match(failed.stderr, /v000001\.tar in s3:\/\/\S+ would be an S3 key of 1028 bytes, longer than the 1024 S3 allows: the repository's prefix is too long/);
    assert.doesNotMatch(failed.stderr, /HTTP 400|\n\s+at /);
    assert.deepEqual((await bucketKeys()).filter((k) => k.startsWith(`${tooLong}/`)), [`${tooLong}/config.json`], 'the failed backup left nothing behind, its lock neither');
  });

  it('a bucket name no host name may have, addressed virtual-hosted style (AWS, or forcePathStyle: false): exit 2 naming it, without the SDK\'s stack trace; path style still reaches the server', async () => {
    const aws = { AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE', AWS_SECRET_ACCESS_KEY: 'not-a-real-secret', AWS_REGION: 'eu-west-1', AWS_ENDPOINT_URL_S3: '', AWS_ENDPOINT_URL: '' };
    const config = path.join(work, 'virtual-hosted.yaml');
    await fsp.writeFile(config, `s3:\n  endpoint: ${server.endpoint}\n  forcePathStyle: false\n`);
    // Node 24's URL parser takes a label that is not punycode as it is; Node 20 and 22 refuse it, but
    // take one that decodes to plain ASCII (xn--abc-).
    for (const [name, bucket, args, env] of [
      ['AWS', 'xn--abc', [], aws],
      ['forcePathStyle: false', 'xn--abc', ['--config', config], server.env],
      ['AWS, punycode of plain ASCII', 'xn--abc-', [], aws],
    ] as const) {
      const r = await runChild([...args, '--repo', `s3://${bucket}/prod`, 'list'], { env: { ...env }, cwd: work });
      assert.equal(r.code, 2, `${name}: ${r.stderr}`);
      assert.ok(r.stderr.includes(`the bucket name "${bucket}" cannot be part of a host name`), r.stderr);
      assert.match(r.stderr, /use --s3-path-style/);
      assert.doesNotMatch(r.stderr, /Failed to construct URL|\n\s+at /, name);
    }
    const pathStyle = await cli('s3://xn--abc/prod', server.endpoint, ['list']);
    assert.equal(pathStyle.code, 2, pathStyle.stderr);
    assert.match(pathStyle.stderr, /the repository's bucket does not exist/);
  });

  it('a prefix with a control character, which S3 listings and deletes cannot carry: init refuses it (exit 2) and writes nothing', async () => {
    const before = await bucketKeys();
    for (const [prefix, code] of [['ctl\u0001x', 'U+0001'], ['line\rbreak', 'U+000D'], ['new\nline', 'U+000A'], ['tab\tx', 'U+0009'], ['del\u007fx', 'U+007F']]) {
      const r = await cli(`s3://${bucket}/${prefix}`, server.endpoint, ['init']);
      assert.equal(r.code, 2, `${JSON.stringify(prefix)}: ${r.stderr}`);
      assert.ok(r.stderr.includes(`holds a control character (${code}), which S3's listings and deletes cannot carry`), r.stderr);
    }
    assert.deepEqual(await bucketKeys(), before, 'init wrote nothing');
  });

  it('parts that grow: the buffers of the smaller parts are let go, not kept beside the larger ones, and the object is whole', async () => {
    const MiB = 1024 * 1024;
    const key = 'growing/volume.tar';
    const writer = new PartWriter(
      {
        putWhole: async () => assert.fail('a multipart object'),
        create: async () => (await sdk.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key }))).UploadId!,
        uploadPart: async (uploadId, partNumber, data) =>
          (await sdk.send(new UploadPartCommand({ Bucket: bucket, Key: key, UploadId: uploadId, PartNumber: partNumber, Body: data, ContentLength: data.length }))).ETag!,
        complete: async (uploadId, parts) => {
          await sdk.send(new CompleteMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId, MultipartUpload: { Parts: parts } }));
        },
        abort: async (uploadId) => {
          await sdk.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId }));
        },
        abortUnanswered: async () => assert.fail('every create answered'),
      },
      // S3's smallest part, doubling with each part (as the driver's schedule does every 1,000).
      { key, partSize: (n) => 5 * MiB * 2 ** (n - 1), concurrency: 1, release: () => undefined, failure: (err) => err as Error },
    );
    const held = () => (writer as unknown as { spare: Buffer[] }).spare.map((b) => b.length / MiB);
    const sent = createHash('sha256');
    const chunk = Buffer.alloc(MiB);
    for (let i = 0; i < 5 + 10 + 20 + 1; i++) {
      chunk.fill(i);
      sent.update(chunk);
      await writer.write(chunk);
    }
    // Three parts sent, each waited for (one at a time), the fourth (40 MiB) being filled.
    assert.deepEqual(held(), [], `buffers kept of the parts already sent: ${held().join(', ')} MiB`);
    assert.equal((await writer.end()).size, 36 * MiB);
    const stored = await sdk.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    assert.equal(createHash('sha256').update(await stored.Body!.transformToByteArray()).digest('hex'), sent.digest('hex'));
  });
});
