import { PassThrough, type Readable } from 'node:stream';
import type { ObjectInfo, ObjectWriter } from './storage.js';

/**
 * An ObjectWriter for a driver that consumes a stream (`put`). Each chunk is
 * copied before it is queued, since such a driver may hold on to what it reads
 * (the S3 driver keeps whole parts for resending).
 */
export function writerOverPut(put: (body: PassThrough) => Promise<ObjectInfo>): ObjectWriter {
  const body = new PassThrough({ highWaterMark: 1 << 20 });
  const stored = put(body);
  stored.catch(() => undefined);
  return {
    async write(chunk: Uint8Array): Promise<void> {
      if (body.destroyed) await stored;
      if (!body.write(Buffer.from(chunk))) await drained(body, stored);
    },
    async end(): Promise<ObjectInfo> {
      body.end();
      return stored;
    },
    async abort(reason: Error): Promise<void> {
      body.destroy(reason);
      await stored.catch(() => undefined);
    },
  };
}

/** Resolves when the stream wants more; rejects with the put's error if it fails first. */
function drained(body: PassThrough, stored: Promise<ObjectInfo>): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const done = (): void => {
      body.off('drain', done);
      body.off('close', closed);
      resolve();
    };
    const closed = (): void => {
      body.off('drain', done);
      stored.then(() => reject(new Error('the object stream closed early')), reject);
    };
    body.on('drain', done);
    body.on('close', closed);
  });
}

/** Streams `body` into a writer: put() for a driver whose native way to write is a writer. */
export async function putThroughWriter(writer: ObjectWriter, body: Readable): Promise<ObjectInfo> {
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) await writer.write(chunk);
    return await writer.end();
  } catch (err) {
    await writer.abort(err as Error);
    throw err;
  }
}
