import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';

/** Chunks queued before the source is paused. */
const QUEUED = 2;

/**
 * The chunks of a byte stream one by one, as they were pushed. `for await`
 * on a stream calls read(), which joins everything buffered into one new
 * buffer: a copy of every byte and megabytes of garbage when the producer
 * runs ahead (as decryption on its own thread does). Backpressure is kept by
 * pausing the source while a few chunks wait.
 */
export async function* streamChunks(source: Readable): AsyncGenerator<Buffer> {
  const queue: Buffer[] = [];
  let ended = false;
  let failure: unknown;
  let wake: (() => void) | undefined;
  const notify = (): void => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const onData = (chunk: Buffer): void => {
    queue.push(chunk);
    if (queue.length >= QUEUED) source.pause();
    notify();
  };
  finished(source).then(
    () => {
      ended = true;
      notify();
    },
    (err: unknown) => {
      failure = err;
      ended = true;
      notify();
    },
  );
  source.on('data', onData);
  try {
    for (;;) {
      const chunk = queue.shift();
      if (chunk) {
        if (queue.length < QUEUED && source.isPaused() && !ended) source.resume();
        yield chunk;
        continue;
      }
      if (failure) throw failure;
      if (ended) return;
      await new Promise<void>((resolve) => (wake = resolve));
    }
  } finally {
    source.off('data', onData);
    if (!ended) source.destroy();
  }
}
