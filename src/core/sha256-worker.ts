// Runs in a worker thread: SHA-256 of the streams the main thread feeds it
// through a ring of shared slots (src/core/hash-offload.ts), so hashing (the
// most expensive step of a backup or a restore) runs beside the reading and
// writing instead of between them. The thread blocks on the ring's counter
// between slots; it needs no event loop but to send digests back.
import { createHash, type Hash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';

const { data, control, slots, count: SLOTS, words: WORDS } = workerData as {
  data: SharedArrayBuffer;
  control: Int32Array;
  slots: Int32Array;
  count: number;
  words: number;
};
const PRODUCED = 0;
const CONSUMED = 1;
const DIGEST = -1;
const EXIT = -2;

const streams = new Map<number, Hash>();
let consumed = 0;
for (;;) {
  // Bounded, so a termination (which takes effect only while JavaScript runs) is never stuck behind the wait.
  Atomics.wait(control, PRODUCED, consumed, 50);
  const produced = Atomics.load(control, PRODUCED);
  let exit = false;
  while (consumed < produced && !exit) {
    const at = consumed % SLOTS;
    const id = slots[at * WORDS]!;
    const length = slots[at * WORDS + 1]!;
    if (length === EXIT) exit = true;
    else if (length === DIGEST) {
      const hash = streams.get(id) ?? createHash('sha256');
      streams.delete(id);
      parentPort!.postMessage({ id, hex: hash.digest('hex') });
    } else {
      let hash = streams.get(id);
      if (!hash) streams.set(id, (hash = createHash('sha256')));
      // The slot itself holds the bytes, or says where in the shared memory they were read to.
      hash.update(new Uint8Array(data, slots[at * WORDS + 2]!, length));
    }
    consumed++;
    Atomics.store(control, CONSUMED, consumed);
    Atomics.notify(control, CONSUMED);
  }
  if (exit) break;
}
