// Runs in a worker thread: seals and opens batches of encrypted segments for the
// streams of src/crypto/segments.ts, so AES-GCM runs beside the reading,
// archiving and writing instead of between them. Each input buffer is moved
// back with the result, to be filled again.
import { parentPort } from 'node:worker_threads';
import { TAG_SIZE, openInto, sealInto } from './gcm.js';
import type { CipherReply, CipherRequest } from './cipher-thread.js';

parentPort!.on('message', (m: CipherRequest) => {
  const input = new Uint8Array(m.input, 0, m.length);
  const reply = m.op === 'seal' ? seal(m, input) : open(m, input);
  const transfer: ArrayBuffer[] = [m.input];
  if (reply.output) transfer.push(reply.output);
  parentPort!.postMessage(reply, transfer);
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
