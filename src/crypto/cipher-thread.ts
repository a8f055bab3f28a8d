import { Worker } from 'node:worker_threads';

export interface CipherRequest {
  op: 'seal' | 'open';
  req: number;
  key: Uint8Array;
  header: Uint8Array;
  segmentSize: number;
  /** Index of the first segment in the batch. */
  firstIndex: number;
  /** Index of the object's final segment, or -1 when it is not in this batch. */
  finalIndex: number;
  input: ArrayBuffer;
  length: number;
  /** Where to put the result when large enough (a buffer recycled by the caller); else the thread allocates one. */
  output?: ArrayBuffer;
}

export type CipherReply =
  | { req: number; input: ArrayBuffer; output: ArrayBuffer; length: number; failedIndex?: undefined }
  | { req: number; input: ArrayBuffer; failedIndex: number; output?: undefined; length?: undefined };

type Pending = { resolve: (reply: CipherReply) => void; reject: (err: Error) => void };

/**
 * The one thread that seals and opens encrypted segments for every stream of
 * the process. Started on first use; it keeps the process alive only while a
 * batch is out, so a finished command never lingers for it.
 */
class CipherThread {
  private worker?: Worker;
  private nextReq = 1;
  private readonly pending = new Map<number, Pending>();

  private start(): Worker {
    const worker = new Worker(new URL('./cipher-worker.js', import.meta.url));
    worker.unref();
    worker.on('message', (reply: CipherReply) => {
      const p = this.pending.get(reply.req);
      this.pending.delete(reply.req);
      if (this.pending.size === 0) worker.unref();
      p?.resolve(reply);
    });
    const fail = (err: Error) => {
      if (this.worker === worker) this.worker = undefined;
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`the encryption thread stopped with code ${code}`)));
    return worker;
  }

  /** Hands a batch to the thread; `input` moves there and comes back in the reply. */
  run(request: Omit<CipherRequest, 'req'>): Promise<CipherReply> {
    const worker = (this.worker ??= this.start());
    const req = this.nextReq++;
    return new Promise<CipherReply>((resolve, reject) => {
      if (this.pending.size === 0) worker.ref();
      this.pending.set(req, { resolve, reject });
      worker.postMessage({ ...request, req }, request.output ? [request.input, request.output] : [request.input]);
    });
  }
}

export const cipherThread = new CipherThread();
