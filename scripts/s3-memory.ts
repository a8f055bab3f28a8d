/**
 * Puts and gets a large generated object through the S3 driver against a
 * throwaway test server and prints the peak resident memory of this process,
 * to check that memory stays bounded whatever the object size.
 *
 *   node dist/scripts/s3-memory.js [size in MiB, default 1024]
 */
import { S3Storage } from '../src/storage/s3.js';
import { generatedStream, sha256Of } from '../test/helpers/data.js';
import { createTestBucket, startS3Server } from '../test/helpers/s3server.js';

const MiB = 1024 * 1024;
const size = Number(process.argv[2] ?? 1024) * MiB;

let peak = 0;
const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 50);

async function measure<T>(what: string, action: () => Promise<T>): Promise<T> {
  peak = process.memoryUsage.rss();
  const started = Date.now();
  const result = await action();
  const seconds = (Date.now() - started) / 1000;
  console.log(`${what}: ${(size / MiB).toFixed(0)} MiB in ${seconds.toFixed(1)} s, peak RSS ${(peak / MiB).toFixed(0)} MiB`);
  return result;
}

const server = await startS3Server();
try {
  const bucket = await createTestBucket(server);
  const storage = await S3Storage.create({ bucket, prefix: 'memory', settings: { endpoint: server.endpoint }, env: server.env });
  console.log(`baseline RSS ${(process.memoryUsage.rss() / MiB).toFixed(0)} MiB`);
  await measure('put', () => storage.put('large', generatedStream(size, 1)));
  const got = await measure('get', async () => sha256Of(await storage.get('large')));
  const expected = await sha256Of(generatedStream(size, 1));
  console.log(got.sha256 === expected.sha256 ? 'content matches' : 'CONTENT DIFFERS');
  await storage.delete(['large']);
  await storage.close();
} finally {
  clearInterval(sampler);
  await server.stop();
}
