/**
 * Starts the S3 server the tests use (Ceph radosgw when installed, else s3rver;
 * LIFEBOAT_TEST_S3=ceph|s3rver forces one) with a fresh bucket, prints how to
 * point lifeboat at it, and stops it on Ctrl-C (or after 30 minutes).
 *
 *   node dist/scripts/s3-test-server.js
 *
 * Ceph keeps the data in RAM: LIFEBOAT_S3_MEMORY_GIB (default 2) sets how much
 * it may hold (the benchmark's repository needs about 6).
 */
import { createTestBucket, startS3Server } from '../test/helpers/s3server.js';

const gib = Number(process.env.LIFEBOAT_S3_MEMORY_GIB ?? '2');
const server = await startS3Server({ memstoreBytes: Math.round(gib * 1024 ** 3) });
const bucket = await createTestBucket(server);
console.log(`export AWS_ACCESS_KEY_ID=${server.accessKeyId}`);
console.log(`export AWS_SECRET_ACCESS_KEY=${server.secretAccessKey}`);
console.log(`export AWS_REGION=${server.region}`);
console.log(`export AWS_ENDPOINT_URL_S3=${server.endpoint}`);
console.log(`export LIFEBOAT_REPO=s3://${bucket}/repo`);
console.log('# throwaway test server; Ctrl-C stops it and deletes its data');
const keepAlive = setInterval(() => {}, 1 << 30);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    clearInterval(keepAlive);
    void server.stop().then(() => process.exit(0));
  });
}
