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
import { ListObjectsV2Command, PutBucketPolicyCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { lifeboat, runChild, type CliRun } from './helpers/cli.js';
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
  /** Runs the CLI on the repository with the grantee's credentials (and `extra` in its environment). */
  cli(args: string[], extra?: NodeJS.ProcessEnv): Promise<CliRun>;
  /** The same in a child process, whose lock (one it could not release) is then a gone process's. */
  child(args: string[]): Promise<CliRun>;
  /** Runs the CLI on the repository as the bucket's owner. */
  owner(args: string[]): Promise<CliRun>;
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
  const repoArgs = ['--repo', `s3://${bucket}/${prefix}`, '--s3-endpoint', server.endpoint, '--s3-path-style'];
  return {
    bucket,
    prefix,
    cli: (args, extra = {}) => lifeboat([...repoArgs, ...args], { env: { ...env, ...extra } }),
    child: (args) => runChild([...repoArgs, ...args], { env }),
    owner: (args) => lifeboat([...repoArgs, ...args], { env: server.env }),
  };
}

/** The Ceph bucket policy of docs/S3.md whose paragraph starts with `lead`, for another bucket, prefix and user. */
function documentedCephPolicy(lead: string): (bucket: string, prefix: string, user: string) => Promise<object> {
  return async (bucket, prefix, user) => {
    const doc = await fsp.readFile(S3_DOC, 'utf8');
    const at = doc.indexOf(lead);
    assert.ok(at >= 0, `docs/S3.md has a paragraph starting "${lead}"`);
    const json = /```json\n([\s\S]*?)```/.exec(doc.slice(at))?.[1];
    assert.ok(json, `docs/S3.md has a bucket policy after "${lead}"`);
    return JSON.parse(
      json
        .replace(/arn:aws:iam:::user\/[\w-]+/g, user)
        .replaceAll('arn:aws:s3:::ml-backups/fraud-detector/', `arn:aws:s3:::${bucket}/${prefix}/`)
        .replaceAll('arn:aws:s3:::ml-backups"', `arn:aws:s3:::${bucket}"`),
    ) as object;
  };
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
    const g = await grantee(t, 'lifeboat-documented', documentedCephPolicy('For Ceph RGW, give the two S3 statements as a bucket policy'));
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

  it('credentials that may not delete at all: each backup stores its point and exits 2 saying the credentials may not delete its lock, the next takes it over, and a reader warns that its registration stays', async (t) => {
    const g = await grantee(t, 'lifeboat-no-delete', (bucket, prefix, user) => ({
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Principal: { AWS: [user] }, Action: ['s3:ListBucket', 's3:ListBucketMultipartUploads'], Resource: `arn:aws:s3:::${bucket}` },
        { Effect: 'Allow', Principal: { AWS: [user] }, Action: ['s3:GetObject', 's3:PutObject', 's3:AbortMultipartUpload'], Resource: `arn:aws:s3:::${bucket}/${prefix}/*` },
      ],
    }));
    if (!g) return;
    await ok(g.cli(['init']), 'init');
    for (const round of [1, 2]) {
      const r = await g.child(['backup', models]);
      // A permission refused is a matter of configuration, as refused credentials are: running again changes nothing.
      assert.equal(r.code, 2, `backup ${round}: ${r.stderr}`);
      assert.match(r.stdout, /took (full|incr) backup/);
      assert.match(r.stderr, /backup could not release the repository lock: delete locks\/lock\.json failed: HTTP 403 AccessDenied\n/);
      assert.match(r.stderr, /the storage does not let this user or these credentials delete in the repository \(on S3, s3:DeleteObject on its locks\/: see docs\/S3\.md\)/);
      assert.doesNotMatch(r.stderr, /once the repository can be reached/, 'these credentials never may');
    }
    const list = (await ok(g.cli(['list', '--json']), 'list')).json<unknown[]>();
    assert.equal(list.length, 2);
    const verified = await ok(g.child(['verify']), 'verify');
    assert.match(
      verified.stderr,
      /warning: could not remove this verify's registration as a reader \(delete locks\/readers\/.*AccessDenied\): a prune on another host takes it for a running reader and refuses to run \(exit 4\) until it is stale/,
    );
  });

  it('the append-only Ceph policy of docs/S3.md: backups go on past leftovers they may not remove, and release their lock; prune fails with exit 2 naming the permission and removes nothing', async (t) => {
    const g = await grantee(t, 'lifeboat-append', documentedCephPolicy('For a backup host that may not delete backups, the Ceph bucket policy'));
    if (!g) return;
    await ok(g.cli(['init']), 'init');
    await ok(g.child(['backup', models, '--type', 'full']), 'the first backup');
    // What a backup killed before its manifest leaves.
    const leftover = `${g.prefix}/data/20250101-000000-000F/v000001.tar`;
    await sdk.send(new PutObjectCommand({ Bucket: g.bucket, Key: leftover, Body: Buffer.alloc(1024) }));
    const metrics = path.join(work, 'append.prom');
    for (const round of [1, 2]) {
      const r = await ok(g.child(['--json', 'backup', models, '--type', 'full', '--strict', '--metrics-file', metrics]), `backup ${round} past a leftover`);
      const kept = /could not remove 1 object\(s\), 1024 bytes, left by an aborted backup under data\/20250101-000000-000F\/ \(.*AccessDenied.*\): the storage does not let this backup delete; they stay until a backup or prune that may delete/;
      assert.match(r.stderr, new RegExp(`warning: ${kept.source}`));
      // A warning of the run like any other (--json, metrics, notifications), though not one of the point: --strict keeps the point.
      const warnings = r.json<{ warnings: { code: string; path?: string; message: string }[] }>().warnings;
      assert.deepEqual(warnings.map((w) => w.code), ['leftovers-kept']);
      assert.match(warnings[0]!.message, kept);
      assert.match(await fsp.readFile(metrics, 'utf8'), /^lifeboat_last_run_warnings\{command="backup"[^}]*\} 1$/m);
      const shown: { warnings: unknown[] } = (await ok(g.cli(['--json', 'show', 'latest']), 'show')).json();
      assert.deepEqual(shown.warnings, [], 'the point itself has nothing to warn about');
    }
    assert.ok((await keysUnder(g.bucket, g.prefix)).includes(leftover.slice(g.prefix.length + 1)));
    const verified = await ok(g.cli(['verify', '--read-data']), 'verify --read-data');
    // Not "the next backup removes them": the next backup from this host does not.
    assert.match(
      verified.stderr,
      /warning: data\/20250101-000000-000F\/: 1 object\(s\), 1024 bytes, left by an aborted backup; the next backup or prune removes them if its credentials may delete \(on S3, s3:DeleteObject and s3:AbortMultipartUpload\); where they may not, run one with credentials that may\n/,
    );
    const pruned = await g.child(['prune', '--keep-full', '1']);
    assert.equal(pruned.code, 2, pruned.stderr);
    assert.match(
      pruned.stderr,
      new RegExp(`lifeboat: delete points/.*failed: .*AccessDenied.*\\n {2}grant s3:DeleteObject on arn:aws:s3:::${g.bucket}/${g.prefix}/\\* to these credentials \\(\`aws sts get-caller-identity\` says whose they are\\), or use credentials that have it; docs/S3\\.md \\("IAM policy"\\) lists what lifeboat needs\\n$`),
    );
    const list = (await ok(g.cli(['list', '--json']), 'list')).json<unknown[]>();
    assert.equal(list.length, 3, 'prune removed nothing');
    await ok(g.cli(['unlock']), 'unlock');
    assert.deepEqual((await keysUnder(g.bucket, g.prefix)).filter((k) => k.startsWith('locks/')), [], 'no lock or reader registration is left');
  });

  it('key passwd under the append-only policy: the new key is stored and the old one may not be deleted; it says both passwords work and how to remove the old key, not just that a delete failed', async (t) => {
    const g = await grantee(t, 'lifeboat-append-keys', documentedCephPolicy('For a backup host that may not delete backups, the Ceph bucket policy'));
    if (!g) return;
    const as = (password: string, args: string[], extra: NodeJS.ProcessEnv = {}) => g.cli(args, { LIFEBOAT_PASSWORD: password, ...extra });
    await ok(as('old password', ['init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10']), 'init');
    const old = (await ok(as('old password', ['--json', 'key', 'list']), 'key list')).json<{ id: string }[]>()[0]!.id;
    const changed = await as('old password', ['--json', 'key', 'passwd'], { LIFEBOAT_NEW_PASSWORD: 'new password' });
    assert.equal(changed.code, 2, changed.stderr);
    const doc = changed.json<{ id: string; removed: null; ok: boolean; error: { message: string; hint: string } }>();
    assert.equal(doc.ok, false);
    assert.equal(doc.removed, null);
    assert.match(doc.error.message, new RegExp(`^added key ${doc.id} with the new password, but could not remove key ${old}: delete keys/${old}\\.json failed: .*AccessDenied`));
    assert.match(doc.error.hint, new RegExp(`^both passwords open the repository until key ${old} is removed; .*s3:DeleteObject.*; then run \`lifeboat key remove ${old}\` with the new password, not key passwd again`));
    assert.match(changed.stderr, new RegExp(`^lifeboat: added key ${doc.id} with the new password, but could not remove key ${old}`));
    // As it says: both open it, and nothing else was added.
    await ok(as('old password', ['list']), 'list with the old password');
    const keys = (await ok(as('new password', ['--json', 'key', 'list']), 'key list with the new password')).json<{ id: string }[]>();
    assert.deepEqual(keys.map((k) => k.id).sort(), [old, doc.id].sort());
    assert.deepEqual((await keysUnder(g.bucket, g.prefix)).filter((k) => k.startsWith('locks/')), [], 'the lock was released');
  });

  it('read-only credentials: verify --read-data checks everything and says its reads could not be recorded, reporting the record as it stands, not as if they had been', async (t) => {
    const g = await grantee(t, 'lifeboat-read-only', (bucket, prefix, user) => ({
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Principal: { AWS: [user] }, Action: ['s3:ListBucket'], Resource: `arn:aws:s3:::${bucket}` },
        { Effect: 'Allow', Principal: { AWS: [user] }, Action: ['s3:GetObject'], Resource: `arn:aws:s3:::${bucket}/${prefix}/*` },
      ],
    }));
    if (!g) return;
    await ok(g.owner(['init']), 'init');
    await ok(g.owner(['backup', models, '--type', 'full']), 'backup');
    const first = await ok(g.cli(['verify', '--read-data']), 'verify --read-data');
    assert.match(first.stderr, /warning: ledger\/verified\.json: could not record what was verified: put ledger\/verified\.json failed: .*AccessDenied/);
    assert.match(first.stdout, /^this run's reads could not be recorded in ledger\/verified\.json, which still says: 1 volume\(s\) never verified$/m);
    assert.doesNotMatch(first.stdout, /oldest verification/);
    const since = await ok(g.cli(['verify', '--read-data', '--since-verified']), 'verify --since-verified');
    assert.match(since.stderr, /could not record what was verified: .*AccessDenied.*; the next --since-verified run reads these volumes again, as never verified/);
    // Once a host that may write has recorded a verification, that record is what a read-only host reports.
    const recorded = (await ok(g.owner(['--json', 'verify', '--read-data']), 'verify --read-data as the owner')).json<{ oldestVerifiedAt: string }>().oldestVerifiedAt;
    assert.ok(recorded);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const doc = (await ok(g.cli(['--json', 'verify', '--read-data']), 'verify --read-data --json')).json<{ ok: boolean; oldestVerifiedAt: string; volumes: { read: number; neverVerified: number; recorded: boolean }; warnings: { code: string }[] }>();
    assert.equal(doc.ok, true);
    assert.equal(doc.oldestVerifiedAt, recorded, "the record's time, not this run's");
    assert.deepEqual([doc.volumes.read, doc.volumes.neverVerified, doc.volumes.recorded], [1, 0, false]);
    assert.ok(doc.warnings.some((w) => w.code === 'ledger-not-written'));
    const text = await ok(g.cli(['verify', '--read-data']), 'verify --read-data');
    assert.ok(text.stdout.includes(`this run's reads could not be recorded in ledger/verified.json, which still says: oldest verification: ${recorded} (`), text.stdout);
    // verify --deep restores each point under verify's own registration: one warning that it could not be made, not one per point.
    const deep = await ok(g.cli(['verify', '--deep']), 'verify --deep');
    assert.equal(deep.stderr.match(/could not register as a reader/g)?.length, 1, deep.stderr);
    // What such a host may not do is refused as the set-up mistake it is (exit 2), naming the request, the permission and where.
    for (const [args, request, action] of [
      [['backup', models], 'put locks/lock.json', 's3:PutObject'],
      [['pin', 'latest', '--reason', 'release'], 'put pins/', 's3:PutObject'],
    ] as const) {
      const refused = await g.cli(['--json', ...args]);
      assert.equal(refused.code, 2, refused.stderr);
      const error = refused.json<{ error: { message: string; exitCode: number; hint: string } }>().error;
      assert.ok(error.message.startsWith(`${request}`) && error.message.includes('failed: HTTP 403 AccessDenied'), error.message);
      assert.equal(error.exitCode, 2);
      assert.ok(error.hint.startsWith(`grant ${action} on arn:aws:s3:::${g.bucket}/${g.prefix}/* to these credentials`), error.hint);
    }
  });

  it('credentials without s3:ListBucket: every command says, with exit 2, that listing the bucket was refused and what to grant', async (t) => {
    const g = await grantee(t, 'lifeboat-no-list', (bucket, prefix, user) => ({
      Version: '2012-10-17',
      Statement: [{ Effect: 'Allow', Principal: { AWS: [user] }, Action: ['s3:GetObject', 's3:PutObject', 's3:DeleteObject', 's3:AbortMultipartUpload'], Resource: [`arn:aws:s3:::${bucket}/${prefix}/*`, `arn:aws:s3:::${bucket}`] }],
    }));
    if (!g) return;
    await ok(g.owner(['init']), 'init');
    await ok(g.owner(['backup', models, '--type', 'full']), 'backup');
    for (const args of [['list'], ['backup', models], ['verify'], ['restore', 'latest', '--target', path.join(work, 'no-list')], ['prune', '--keep-full', '1']]) {
      const r = await g.cli(args);
      assert.equal(r.code, 2, `${args[0]}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`lifeboat: list [a-z]+/ failed: HTTP 403 AccessDenied\\n {2}grant s3:ListBucket on arn:aws:s3:::${g.bucket} to these credentials`), args[0]);
    }
    await assert.rejects(fsp.access(path.join(work, 'no-list')), 'no restore target');
  });

  it('listing limited to the prefix (an s3:prefix condition): a missing object is refused rather than not found, and the refusal says why', async (t) => {
    const g = await grantee(t, 'lifeboat-prefix-list', (bucket, prefix, user) => ({
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Principal: { AWS: [user] }, Action: ['s3:ListBucket', 's3:ListBucketMultipartUploads'], Resource: `arn:aws:s3:::${bucket}`, Condition: { StringLike: { 's3:prefix': [`${prefix}/*`] } } },
        { Effect: 'Allow', Principal: { AWS: [user] }, Action: ['s3:GetObject', 's3:PutObject', 's3:DeleteObject', 's3:AbortMultipartUpload'], Resource: [`arn:aws:s3:::${bucket}/${prefix}/*`, `arn:aws:s3:::${bucket}`] },
      ],
    }));
    if (!g) return;
    const r = await g.cli(['init']);
    assert.equal(r.code, 2, r.stderr);
    // The HEAD that looks for an existing config before writing one: its 403 has no body, and no name beyond its status.
    assert.match(
      r.stderr,
      new RegExp(`^lifeboat: put config\\.json failed: HTTP 403\\n {2}grant s3:GetObject on arn:aws:s3:::${g.bucket}/${g.prefix}/\\* to these credentials .*; without s3:ListBucket, S3 answers so for a missing object too; docs/S3\\.md \\("IAM policy"\\) lists what lifeboat needs\\n$`),
    );
  });

  it('credentials without s3:ListBucketMultipartUploads: backups and prune say in one line that they could not look for unfinished uploads, and succeed', async (t) => {
    const g = await grantee(t, 'lifeboat-no-uploads-list', (bucket, prefix, user) => ({
      Version: '2012-10-17',
      Statement: [
        { Effect: 'Allow', Principal: { AWS: [user] }, Action: ['s3:ListBucket', 's3:DeleteObject'], Resource: `arn:aws:s3:::${bucket}` },
        { Effect: 'Allow', Principal: { AWS: [user] }, Action: ['s3:GetObject', 's3:PutObject', 's3:DeleteObject', 's3:AbortMultipartUpload'], Resource: `arn:aws:s3:::${bucket}/${prefix}/*` },
      ],
    }));
    if (!g) return;
    await ok(g.cli(['init']), 'init');
    const unlisted = /could not look for writes that never finished: list incomplete uploads under data\/ failed: HTTP 403 AccessDenied\n/;
    for (const round of [1, 2]) {
      const r = await ok(g.cli(['--json', 'backup', models, '--type', 'full']), `backup ${round}`);
      assert.match(r.stderr, unlisted);
      assert.doesNotMatch(r.stderr, /warning/);
      assert.deepEqual(r.json<{ warnings: unknown[] }>().warnings, []);
    }
    const pruned = await ok(g.cli(['prune', '--keep-full', '1']), 'prune');
    assert.match(pruned.stdout, /removed 1 point/);
    assert.match(pruned.stderr, unlisted);
    assert.equal((await ok(g.cli(['list', '--json']), 'list')).json<unknown[]>().length, 1);
  });
});
