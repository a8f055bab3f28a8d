import { Worker } from 'node:worker_threads';

/** Size of the buffers that carry bytes to the hashing thread and back. */
const SLAB = 1 << 20;
/** Slabs in circulation: the bound on bytes handed over and not yet hashed. */
const SLABS = 6;

export interface StreamDigest {
  update(data: Buffer): void;
  /** The SHA-256 of everything passed to update, as hex. */
  digest(): Promise<string>;
}

/**
 * SHA-256 on a second core. Each update copies the bytes into one of a few
 * slabs (a memcpy, far cheaper than hashing them) and moves the slab to the
 * worker, which hashes it and moves it back; so the caller can go on writing
 * the original, memory stays bounded, and no garbage piles up on either side.
 */
export class Sha256Offload {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly free: ArrayBuffer[] = [];
  private slabs = 0;
  private waiting: (() => void)[] = [];
  private readonly digests = new Map<number, { resolve: (hex: string) => void; reject: (err: Error) => void }>();
  private failure?: Error;

  constructor() {
    this.worker = new Worker(new URL('./sha256-worker.js', import.meta.url));
    // Never the reason a finished command lingers.
    this.worker.unref();
    this.worker.on('message', (m: { op: 'ack'; slab: ArrayBuffer } | { op: 'digest'; id: number; hex: string }) => {
      if (m.op === 'ack') {
        this.free.push(m.slab);
        this.wake();
      } else {
        this.digests.get(m.id)?.resolve(m.hex);
        this.digests.delete(m.id);
      }
    });
    this.worker.on('error', (err) => this.fail(err));
    this.worker.on('exit', (code) => {
      if (code !== 0) this.fail(new Error(`the hashing thread stopped with code ${code}`));
    });
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const d of this.digests.values()) d.reject(err);
    this.digests.clear();
    this.wake();
  }

  private wake(): void {
    const waiting = this.waiting;
    this.waiting = [];
    for (const w of waiting) w();
  }

  /** Resolves once a slab is free for the next update. */
  async ready(): Promise<void> {
    while (this.free.length === 0 && this.slabs >= SLABS && !this.failure) await new Promise<void>((r) => this.waiting.push(r));
    if (this.failure) throw this.failure;
  }

  private slab(): ArrayBuffer {
    const slab = this.free.pop();
    if (slab) return slab;
    this.slabs++;
    return new ArrayBuffer(SLAB);
  }

  stream(): StreamDigest {
    const id = this.nextId++;
    return {
      update: (data: Buffer) => {
        for (let at = 0; at < data.length; at += SLAB) {
          const piece = data.subarray(at, Math.min(data.length, at + SLAB));
          const slab = this.slab();
          new Uint8Array(slab).set(piece);
          this.worker.postMessage({ op: 'data', id, slab, length: piece.length }, [slab]);
        }
      },
      digest: () =>
        new Promise<string>((resolve, reject) => {
          if (this.failure) return reject(this.failure);
          this.digests.set(id, { resolve, reject });
          this.worker.postMessage({ op: 'digest', id });
        }),
    };
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
