/**
 * S3 repositories at the edges of what S3 and its URLs allow, against a real
 * S3 server (Ceph radosgw when installed, else s3rver): endpoints written in
 * unusual ways, prefixes that S3 keys allow but tools read otherwise, and
 * objects large enough that the part size must grow.
 */
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { lifeboat, type CliRun } from './helpers/cli.js';
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
  it('an endpoint whose scheme is in capitals works; one that names the bucket in its path is a set-up error (exit 2), and init writes nothing', async () => {
    const upper = server.endpoint.replace(/^http/, 'HTTP');
    const made = await cli(`s3://${bucket}/caps`, upper, ['init']);
    assert.equal(made.code, 0, made.stderr);
    const listed = await cli(`s3://${bucket}/caps`, `${server.endpoint.replace(/^http/, 'Http')}/`, ['list']);
    assert.equal(listed.code, 0, listed.stderr);

    const before = await bucketKeys();
    for (const endpoint of [`${server.endpoint}/${bucket}`, `${server.endpoint}/${bucket}/`]) {
      for (const args of [['list'], ['init']]) {
        const r = await cli(`s3://${bucket}/caps`, endpoint, args);
        assert.equal(r.code, 2, `${args[0]} with ${endpoint}: ${r.stderr}`);
        assert.match(r.stderr, new RegExp(`s3\\.endpoint .* names the bucket ${bucket} in its path`));
        assert.ok(r.stderr.includes(`give the server alone as the endpoint (${server.endpoint})`), r.stderr);
        assert.doesNotMatch(r.stderr, /no lifeboat repository|\n\s+at /);
      }
    }
    assert.deepEqual(await bucketKeys(), before, 'nothing was written under a second copy of the bucket name');
  });
});

