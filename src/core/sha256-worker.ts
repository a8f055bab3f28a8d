// Runs in a worker thread: SHA-256 of the streams the main thread feeds it, so
// hashing (the most expensive step of a backup or a restore) runs beside the
// reading and writing instead of between them. Each slab is moved back once
// hashed, to be filled again.
import { createHash, type Hash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';

type Message = { op: 'data'; id: number; slab: ArrayBuffer; length: number } | { op: 'digest'; id: number };

const streams = new Map<number, Hash>();

parentPort!.on('message', (m: Message) => {
  if (m.op === 'data') {
    let hash = streams.get(m.id);
    if (!hash) streams.set(m.id, (hash = createHash('sha256')));
    hash.update(new Uint8Array(m.slab, 0, m.length));
    parentPort!.postMessage({ op: 'ack', slab: m.slab }, [m.slab]);
  } else {
    const hash = streams.get(m.id) ?? createHash('sha256');
    streams.delete(m.id);
    parentPort!.postMessage({ op: 'digest', id: m.id, hex: hash.digest('hex') });
  }
});
