// Runs in a worker thread: seals and opens batches of encrypted segments for the
// streams of src/crypto/segments.ts, so AES-GCM runs beside the reading,
// archiving and writing instead of between them. Each input buffer is moved
// back with the result, to be filled again.
import { parentPort } from 'node:worker_threads';
import v8 from 'node:v8';
import vm from 'node:vm';
import { TAG_SIZE, openInto, sealInto } from './gcm.js';
import type { CipherReply, CipherRequest } from './cipher-thread.js';

/**
 * Each segment AES seals or opens comes back in a new buffer of Node's (there is
 * no way to have it write into ours), garbage as soon as it is copied out. This
 * thread allocates almost nothing else, so V8 would only collect them once 64 MiB
 * of them had piled up: a young-generation collection after each batch frees
 * them while they are still young, for a fraction of a millisecond.
 */
const collectYoung = youngCollector();

function youngCollector(): () => void {
  v8.setFlagsFromString('--expose-gc');
  const gc: unknown = vm.runInNewContext('gc');
  v8.setFlagsFromString('--no-expose-gc');
  return typeof gc === 'function' ? () => (gc as (options: { type: string }) => void)({ type: 'minor' }) : () => undefined;
}

parentPort!.on('message', (m: CipherRequest) => {
  const input = new Uint8Array(m.input, 0, m.length);
  const reply = m.op === 'seal' ? seal(m, input) : open(m, input);
  const transfer: ArrayBuffer[] = [m.input];
  if (reply.output) transfer.push(reply.output);
  parentPort!.postMessage(reply, transfer);
  collectYoung();
});

function seal(m: CipherRequest, input: Uint8Array): CipherReply {
  const size = m.segmentSize;
  const segments = Math.max(1, Math.ceil(input.length / size));
  const needed = input.length + segments * TAG_SIZE;
  const output = m.output && m.output.byteLength >= needed ? m.output : new ArrayBuffer(needed);
  const out = new Uint8Array(output);
  let at = 0;
  for (let i = 0; i < segments; i++) {
    const index = m.firstIndex + i;
    at += sealInto(m.key, m.header, index, index === m.finalIndex, input.subarray(i * size, (i + 1) * size), out, at);
  }
  return { req: m.req, input: m.input, output, length: at };
}

function open(m: CipherRequest, input: Uint8Array): CipherReply {
  const size = m.segmentSize + TAG_SIZE;
  const segments = Math.ceil(input.length / size);
  const needed = Math.max(0, input.length - segments * TAG_SIZE);
  const output = m.output && m.output.byteLength >= needed ? m.output : new ArrayBuffer(needed);
  const out = new Uint8Array(output);
  let at = 0;
  for (let i = 0; i < segments; i++) {
    const index = m.firstIndex + i;
    const n = openInto(m.key, m.header, index, index === m.finalIndex, input.subarray(i * size, (i + 1) * size), out, at);
    if (n < 0) return { req: m.req, input: m.input, failedIndex: index };
    at += n;
  }
  return { req: m.req, input: m.input, output, length: at };
}
