/**
 * Credentials with restricted permissions on a real S3 server, through the CLI:
 * a user that may do only what a bucket policy grants it. These need users and
 * bucket policies, which Ceph radosgw has and s3rver has not.
 */
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it, type TestContext } from 'node:test';
import { ListObjectsV2Command, PutBucketPolicyCommand, S3Client } from '@aws-sdk/client-s3';
import { lifeboat, type CliRun } from './helpers/cli.js';
import { createTestBucket, testClient, startS3Server, type S3TestServer } from './helpers/s3server.js';
import { prng, tempDir, writeRandomFile } from './helpers/tree.js';

const S3_DOC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../docs/S3.md');

let server: S3TestServer;
let sdk: S3Client;
let work: string;
let models: string;

before(async () => {
  server = await startS3Server();
  sdk = testClient(server);
  work = await tempDir('lifeboat-s3perm-');
  models = path.join(work, 'models');
  await fsp.mkdir(models, { recursive: true });
  await fsp.writeFile(path.join(models, 'config.json'), JSON.stringify({ hidden: 64 }));
  await writeRandomFile(path.join(models, 'weights.bin'), 300_000, prng(7));
});

after(async () => {
  sdk?.destroy();
  await server?.stop();
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

interface Grantee {
  bucket: string;
  prefix: string;
  /** Runs the CLI on the repository with the grantee's credentials. */
  cli(args: string[]): Promise<CliRun>;
}

/** A fresh bucket, and a user of the server that may do in it what `policy` (given the bucket, the prefix and the user's ARN) grants. */
async function grantee(t: TestContext, uid: string, policy: (bucket: string, prefix: string, user: string) => object | Promise<object>): Promise<Grantee | undefined> {
  if (!server.createUser) {
    t.skip(`the ${server.kind} test server has no users or bucket policies (Ceph radosgw has)`);
    return undefined;
  }
  const bucket = await createTestBucket(server);
  const prefix = 'fraud-detector';
  const keys = await server.createUser(uid);
  await sdk.send(new PutBucketPolicyCommand({ Bucket: bucket, Policy: JSON.stringify(await policy(bucket, prefix, `arn:aws:iam:::user/${uid}`)) }));
  const env = { ...server.env, AWS_ACCESS_KEY_ID: keys.accessKeyId, AWS_SECRET_ACCESS_KEY: keys.secretAccessKey };
  return {
    bucket,
    prefix,
    cli: (args) => lifeboat(['--repo', `s3://${bucket}/${prefix}`, '--s3-endpoint', server.endpoint, '--s3-path-style', ...args], { env }),
  };
}

/** The Ceph bucket policy of docs/S3.md, for another bucket, prefix and user. */
async function documentedCephPolicy(bucket: string, prefix: string, user: string): Promise<object> {
  const doc = await fsp.readFile(S3_DOC, 'utf8');
  const section = doc.slice(doc.indexOf('For Ceph RGW, give the two S3 statements as a bucket policy'));
  const json = /```json\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(json, 'docs/S3.md has a Ceph bucket policy');
  return JSON.parse(
    json
      .replaceAll('arn:aws:iam:::user/lifeboat', user)
      .replaceAll('arn:aws:s3:::ml-backups/fraud-detector/*', `arn:aws:s3:::${bucket}/${prefix}/*`)
      .replaceAll('arn:aws:s3:::ml-backups"', `arn:aws:s3:::${bucket}"`),
  ) as object;
}

async function ok(run: Promise<CliRun>, what: string): Promise<CliRun> {
  const r = await run;
  assert.equal(r.code, 0, `${what} exited ${r.code}: ${r.stderr}`);
  return r;
}

async function keysUnder(bucket: string, prefix: string): Promise<string[]> {
  const page = await sdk.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `${prefix}/` }));
  return (page.Contents ?? []).map((o) => o.Key!.slice(prefix.length + 1)).sort();
}

describe('an S3 repository with credentials limited by a bucket policy', () => {
  it('the Ceph bucket policy of docs/S3.md is enough for every command: backups release their lock, prune, unpin and unlock delete', async (t) => {
    const g = await grantee(t, 'lifeboat-documented', documentedCephPolicy);
    if (!g) return;
    await ok(g.cli(['init']), 'init');
    await ok(g.cli(['backup', models, '--type', 'full']), 'the first backup');
    await fsp.writeFile(path.join(models, 'config.json'), JSON.stringify({ hidden: 128 }));
    await ok(g.cli(['backup', models]), 'an incremental backup');
    await ok(g.cli(['backup', models, '--type', 'full']), 'a second full backup');
    await ok(g.cli(['pin', 'latest', '--reason', 'release']), 'pin');
    await ok(g.cli(['unpin', 'latest']), 'unpin');
    const pruned = await ok(g.cli(['prune', '--keep-full', '1']), 'prune');
    assert.match(pruned.stdout, /removed 2 point/, pruned.stdout);
    await ok(g.cli(['verify', '--read-data']), 'verify --read-data');
    await ok(g.cli(['restore', 'latest', '--target', path.join(work, 'restored')]), 'restore');
    await ok(g.cli(['drill']), 'drill');
    await ok(g.cli(['unlock']), 'unlock');
    const list = (await ok(g.cli(['list', '--json']), 'list')).json<{ type: string }[]>();
    assert.deepEqual(list.map((p) => p.type), ['full']);
    const left = await keysUnder(g.bucket, g.prefix);
    assert.deepEqual(left.filter((k) => k.startsWith('locks/') || k.startsWith('pins/')), [], 'no lock, reader registration or pin is left');
  });
});
