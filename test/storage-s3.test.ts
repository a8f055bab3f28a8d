import { CreateMultipartUploadCommand, S3Client } from '@aws-sdk/client-s3';
import { after, before } from 'node:test';
import { S3Storage } from '../src/storage/s3.js';
import { createTestBucket, startS3Server, type S3TestServer } from './helpers/s3server.js';
import { runStorageContract } from './storage-contract.js';

// S3's smallest allowed part, so multipart uploads are exercised on a few MB.
const PART_SIZE = 5 * 1024 * 1024;
const PREFIX = 'repo/prod';

let server: S3TestServer;
before(async () => {
  server = await startS3Server();
});
after(async () => {
  await server?.stop();
});

const missing = (what: string) => (kind: string) => `the ${kind} test server lacks ${what}`;

runStorageContract(
  'S3',
  async () => {
    const bucket = await createTestBucket(server);
    const storage = await S3Storage.create({
      bucket,
      prefix: PREFIX,
      settings: { endpoint: server.endpoint },
      env: server.env,
      tuning: { partSize: PART_SIZE, retry: { maxAttempts: 4, baseDelayMs: 20, maxDelayMs: 200 } },
    });
    return { storage };
  },
  {
    partSize: PART_SIZE,
    get skip() {
      return {
        conditionalPut: server.capabilities.conditionalPut ? undefined : missing('conditional puts (If-None-Match)')(server.kind),
        atomicReplace: server.capabilities.conditionalReplace ? undefined : missing('conditional replaces (If-Match)')(server.kind),
        cleanupIncomplete: server.capabilities.multipartListAndAbort
          ? undefined
          : missing('ListMultipartUploads and AbortMultipartUpload')(server.kind),
        listOrder: server.capabilities.keyOrderListing ? undefined : missing('listings in key order')(server.kind),
      };
    },
    get secrets() {
      return [server.secretAccessKey, server.accessKeyId];
    },
    async leaveIncompleteWrite(storage, key) {
      // What a writer killed mid-upload leaves: a multipart upload never completed.
      const bucket = /^s3:\/\/([^/]+)/.exec(storage.location)![1]!;
      const client = new S3Client({
        endpoint: server.endpoint,
        region: server.region,
        forcePathStyle: true,
        credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
      });
      try {
        await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: `${PREFIX}/${key}` }));
      } finally {
        client.destroy();
      }
    },
  },
);
