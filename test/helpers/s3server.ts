/**
 * Starts a real S3 server on 127.0.0.1 for a test file: Ceph radosgw when its
 * binaries are installed (a production S3 implementation), else s3rver (a fast
 * development stand-in with known gaps, listed in its capabilities).
 * LIFEBOAT_TEST_S3=ceph|s3rver forces one.
 */
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before } from 'node:test';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { cephAvailable, startCephS3 } from './ceph.js';
import { ProcessGroup } from './processes.js';

// The SDK's warning about its future Node requirement is noise in test output.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

export interface S3ServerCapabilities {
  /** PutObject with If-None-Match: * refuses to overwrite (412). */
  conditionalPut: boolean;
  /** PutObject with If-Match refuses to replace an object whose ETag changed (412). */
  conditionalReplace: boolean;
  /** ListMultipartUploads and AbortMultipartUpload work. */
  multipartListAndAbort: boolean;
  /** A wrong Content-MD5 is refused (BadDigest). */
  contentMd5Check: boolean;
  /** ListObjectsV2 returns keys in byte order (s3rver walks its directories instead). */
  keyOrderListing: boolean;
  /** A request signed with an unknown key id or a wrong secret is refused (403). */
  checksCredentials: boolean;
}

export interface S3TestServer {
  kind: 'ceph' | 's3rver';
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  capabilities: S3ServerCapabilities;
  /** Environment for the driver: the credentials as the AWS chain reads them. */
  env: NodeJS.ProcessEnv;
  /**
   * Makes another user of the server, who owns no bucket and may do only what a
   * bucket policy grants it (set by the bucket's owner, through testClient).
   * Ceph only: s3rver has no users.
   */
  createUser?: (uid: string) => Promise<{ accessKeyId: string; secretAccessKey: string }>;
  stop(): Promise<void>;
}

export async function startS3Server(options: { memstoreBytes?: number } = {}): Promise<S3TestServer> {
  const forced = process.env.LIFEBOAT_TEST_S3;
  if (forced !== undefined && forced !== '' && forced !== 'ceph' && forced !== 's3rver') {
    throw new Error(`LIFEBOAT_TEST_S3 must be ceph or s3rver, not ${forced}`);
  }
  const useCeph = forced === 'ceph' || (forced !== 's3rver' && (await cephAvailable()));
  const server = useCeph ? await startCeph(options.memstoreBytes) : await startS3rver();
  console.log(`# S3 test server: ${server.kind} at ${server.endpoint}`);
  return server;
}

async function startCeph(memstoreBytes?: number): Promise<S3TestServer> {
  const ceph = await startCephS3({ memstoreBytes });
  return withEnv({
    kind: 'ceph',
    endpoint: ceph.endpoint,
    accessKeyId: ceph.accessKeyId,
    secretAccessKey: ceph.secretAccessKey,
    region: 'us-east-1',
    capabilities: { conditionalPut: true, conditionalReplace: true, multipartListAndAbort: true, contentMd5Check: true, keyOrderListing: true, checksCredentials: true },
    createUser: (uid) => ceph.createUser(uid),
    stop: () => ceph.stop(),
  });
}

async function startS3rver(): Promise<S3TestServer> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'lifeboat-s3rver-'));
  const processes = new ProcessGroup(dir);
  const script = createRequire(import.meta.url).resolve('s3rver/bin/s3rver.js');
  // --openssl-legacy-provider: s3rver builds continuation tokens with DES; without
  // it every truncated ListObjectsV2 page is an HTTP 500.
  const child = processes.spawn(
    process.execPath,
    ['--openssl-legacy-provider', script, '-d', dir, '-a', '127.0.0.1', '-p', '0', '--silent'],
    { captureStdout: true },
  );
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`s3rver did not start: ${out}`)), 20_000);
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const match = /listening on 127\.0\.0\.1:(\d+)/.exec(out);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`s3rver exited with ${code}: ${out}`));
    });
  });
  return withEnv({
    kind: 's3rver',
    endpoint: `http://127.0.0.1:${port}`,
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    region: 'us-east-1',
    capabilities: { conditionalPut: false, conditionalReplace: false, multipartListAndAbort: false, contentMd5Check: false, keyOrderListing: false, checksCredentials: false },
    async stop() {
      await processes.stop(1000);
      await fsp.rm(dir, { recursive: true, force: true });
    },
  });
}

function withEnv(server: Omit<S3TestServer, 'env'>): S3TestServer {
  return {
    ...server,
    env: {
      AWS_ACCESS_KEY_ID: server.accessKeyId,
      AWS_SECRET_ACCESS_KEY: server.secretAccessKey,
      AWS_REGION: server.region,
    },
  };
}

/** An SDK client for tests that look at the bucket directly, with the settings non-AWS servers need. */
export function testClient(server: S3TestServer, endpoint = server.endpoint): S3Client {
  return new S3Client({
    endpoint,
    region: server.region,
    forcePathStyle: true,
    credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

/** Creates a bucket with a fresh random name and returns the name. */
export async function createTestBucket(server: S3TestServer, endpoint = server.endpoint): Promise<string> {
  const bucket = `lifeboat-test-${randomBytes(6).toString('hex')}`;
  const client = testClient(server, endpoint);
  try {
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
  } finally {
    client.destroy();
  }
  return bucket;
}

/** A server and a bucket of its for the suite this is called in: started before its tests, stopped after them. */
export function s3ServerForSuite(): { readonly server: S3TestServer; readonly bucket: string } {
  const held = {} as { server: S3TestServer; bucket: string };
  before(async () => {
    held.server = await startS3Server();
    held.bucket = await createTestBucket(held.server);
  });
  after(async () => {
    await held.server?.stop();
  });
  return held;
}
