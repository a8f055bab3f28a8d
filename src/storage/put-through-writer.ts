import type { Readable } from 'node:stream';
import type { ObjectInfo, ObjectWriter } from './storage.js';

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
