import { Readable } from 'node:stream';
import { streamChunks } from '../format/stream-chunks.js';
import type { ObjectReader } from './storage.js';

/**
 * An ObjectReader over a byte stream, for drivers whose bytes arrive as one
 * (a response body, a decrypting transform): each read copies from the chunks
 * the stream pushed.
 */
export function readerOverStream(source: Readable): ObjectReader {
  const chunks = streamChunks(source);
  let pending: Buffer | undefined;
  let done = false;
  return {
    async read(into: Uint8Array): Promise<number> {
      if (into.length === 0) return 0;
      while (!pending || pending.length === 0) {
        if (done) return 0;
        const next = await chunks.next();
        if (next.done) {
          done = true;
          return 0;
        }
        pending = next.value;
      }
      const n = Math.min(pending.length, into.length);
      into.set(pending.subarray(0, n));
      pending = pending.subarray(n);
      return n;
    },
    async close(): Promise<void> {
      done = true;
      pending = undefined;
      await chunks.return(undefined);
    },
  };
}

/** A reader of an empty object. */
export const EMPTY_READER: ObjectReader = { read: async () => 0, close: async () => undefined };

/** A byte stream over an ObjectReader, for callers that want one; each chunk is a buffer of its own. */
export function streamOverReader(reader: ObjectReader, chunkSize = 1 << 20): Readable {
  return new Readable({
    read() {
      const chunk = Buffer.allocUnsafe(chunkSize);
      reader.read(chunk).then(
        (n) => this.push(n === 0 ? null : chunk.subarray(0, n)),
        (err: Error) => this.destroy(err),
      );
    },
    destroy(err, callback) {
      reader.close().then(
        () => callback(err),
        (closeErr: Error) => callback(err ?? closeErr),
      );
    },
  });
}
