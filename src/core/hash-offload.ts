import { Worker } from 'node:worker_threads';
import { alignedMemory } from '../format/aligned-memory.js';

/** Size of one slot of the ring that carries bytes to the hashing thread. */
const SLOT = 1 << 20;
/** Slots in the ring: the bound on bytes handed over and not yet hashed. */
const SLOTS = 6;
/** Buffers of the same shared memory lent to a caller to read into, so their bytes are hashed where they are. */
const LENT = 4;
/** Words per slot: stream id, byte length (or DIGEST / EXIT), byte offset in the shared memory. */
const WORDS = 3;
/** Indexes into the control words: slots filled by the caller, slots hashed by the thread. */
const PRODUCED = 0;
const CONSUMED = 1;
/** Slot lengths with a meaning of their own. */
const DIGEST = -1;
const EXIT = -2;

export interface StreamDigest {
  /** Takes `data` in; resolves once its memory may be reused. */
  update(data: Uint8Array): Promise<void>;
  /** The SHA-256 (as hex) of everything passed to update. */
  digest(): Promise<string>;
}

/** A digest computed by Sha256Offload's thread. */
export interface OffloadedDigest extends StreamDigest {
  /**
   * Takes in `data`, a view of one of the hasher's `buffers`, without copying
   * it; resolves once it is queued, with a promise that settles once it is
   * hashed. Until then the buffer must not be written to.
   */
  updateInPlace(data: Uint8Array): Promise<{ hashed: Promise<void> }>;
}

type WaitAsync = (array: Int32Array, index: number, value: number, timeout?: number) => { async: boolean; value: Promise<string> | string };

/**
 * SHA-256 on a second core. Bytes are copied into a ring of slots in shared
 * memory (a memcpy, far cheaper than hashing them), or read straight into
 * buffers of that memory which the hasher lends, and the thread hashes them
 * in order; the two sides meet through two counters, so the bytes cost no
 * message and no allocation. Only digests come back as messages.
 */
export class Sha256Offload {
  private readonly worker: Worker;
  // Page-aligned, so a lent buffer can also be written to disk with direct I/O.
  private readonly data = (alignedMemory((SLOTS + LENT) * SLOT, { shared: true }) ?? new SharedArrayBuffer((SLOTS + LENT) * SLOT)) as SharedArrayBuffer;
  private readonly control = new Int32Array(new SharedArrayBuffer(8));
  private readonly slots = new Int32Array(new SharedArrayBuffer(SLOTS * WORDS * 4));
  /** Buffers to read into and pass to updateInPlace, one slot each. */
  readonly buffers: readonly Buffer[] = Array.from({ length: LENT }, (_, i) => Buffer.from(this.data, (SLOTS + i) * SLOT, SLOT));
  private produced = 0;
  private nextId = 1;
  private readonly digests = new Map<number, { resolve: (sha256: string) => void; reject: (err: Error) => void }>();
  private failure?: Error;
  private exited = false;
  /** Callers waiting on the thread: while any are, it holds the process open (neither a shared-memory wait nor an unref'd thread does). */
  private waiting = 0;

  constructor() {
    this.worker = new Worker(new URL('./sha256-worker.js', import.meta.url), {
      workerData: { data: this.data, control: this.control, slots: this.slots, count: SLOTS, words: WORDS },
    });
    this.worker.on('message', (m: { id: number; hex: string }) => {
      const waiter = this.digests.get(m.id);
      if (!waiter) return;
      this.digests.delete(m.id);
      waiter.resolve(m.hex);
      this.release();
    });
    this.worker.on('error', (err) => this.fail(err));
    this.worker.on('exit', (code) => {
      this.exited = true;
      this.fail(new Error(`the hashing thread stopped${code === 0 ? '' : ` with code ${code}`}`));
    });
    // Never the reason a finished command lingers; after the listeners, which would otherwise hold it again.
    this.worker.unref();
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const d of this.digests.values()) {
      d.reject(err);
      this.release();
    }
    this.digests.clear();
  }

  private hold(): void {
    if (this.waiting++ === 0) this.worker.ref();
  }

  private release(): void {
    if (--this.waiting === 0) this.worker.unref();
  }

  private get free(): number {
    return SLOTS - (this.produced - Atomics.load(this.control, CONSUMED));
  }

  /** Waits until the thread has taken another slot (or failed); the caller checks for a free slot again. */
  private async slotTaken(): Promise<void> {
    if (this.failure) throw this.failure;
    const seen = Atomics.load(this.control, CONSUMED);
    if (this.produced - seen < SLOTS) return;
    await this.consumedChange(seen);
  }

  /** Resolves once the thread has moved past `seen` slots taken (or after a second, to look again). */
  private async consumedChange(seen: number): Promise<void> {
    // Bounded, so a thread that died (an event, which a pending wait would not notice) is found out.
    const wait = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync(this.control, CONSUMED, seen, 1000);
    if (!wait.async) return;
    this.hold();
    try {
      await wait.value;
    } finally {
      this.release();
    }
  }

  /** Resolves once the thread has taken the `sequence`-th slot published. */
  private async taken(sequence: number): Promise<void> {
    for (;;) {
      if (this.failure) throw this.failure;
      const seen = Atomics.load(this.control, CONSUMED);
      if (seen > sequence) return;
      await this.consumedChange(seen);
    }
  }

  /**
   * Fills the next slot, which the caller has just seen free: with a copy of
   * `bytes`, or (`inPlace`) with where they are in the shared memory.
   */
  private publish(id: number, length: number, bytes?: Uint8Array, inPlace = false): number {
    const slot = this.produced % SLOTS;
    let offset = slot * SLOT;
    if (bytes && inPlace) offset = bytes.byteOffset;
    else if (bytes) new Uint8Array(this.data, offset, bytes.length).set(bytes);
    this.slots[slot * WORDS] = id;
    this.slots[slot * WORDS + 1] = length;
    this.slots[slot * WORDS + 2] = offset;
    this.produced++;
    Atomics.store(this.control, PRODUCED, this.produced);
    Atomics.notify(this.control, PRODUCED);
    return this.produced - 1;
  }

  /**
   * Publishes into the next free slot, waiting for one without blocking. The
   * check and the publish run in one turn, so concurrent streams never take
   * the same slot.
   */
  private async send(id: number, length: number, bytes?: Uint8Array, inPlace = false): Promise<number> {
    while (this.free === 0 || this.failure) await this.slotTaken();
    return this.publish(id, length, bytes, inPlace);
  }

  stream(): OffloadedDigest {
    const id = this.nextId++;
    return {
      update: async (data: Uint8Array) => {
        for (let at = 0; at < data.length; at += SLOT) await this.send(id, Math.min(SLOT, data.length - at), data.subarray(at, at + SLOT));
      },
      updateInPlace: async (data: Uint8Array) => {
        if (data.buffer !== this.data || data.byteOffset < SLOTS * SLOT || data.length > SLOT) throw new Error('updateInPlace takes a view of one of the buffers the hasher lends');
        const sequence = await this.send(id, data.length, data, true);
        const hashed = this.taken(sequence);
        hashed.catch(() => undefined);
        return { hashed };
      },
      digest: async () => {
        await this.send(id, DIGEST);
        return new Promise<string>((resolve, reject) => {
          if (this.failure) return reject(this.failure);
          // The reply is an event, so it cannot arrive before this is registered.
          this.hold();
          this.digests.set(id, { resolve, reject });
        });
      },
    };
  }

  async close(): Promise<void> {
    if (!this.exited && !this.failure) {
      const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
      // Held until it has gone, or the process could end with this promise pending. A count like any
      // other wait's: a wait still pending (a lent buffer's) ends when the thread takes EXIT, and its
      // release must not let go of the thread before it has exited.
      this.hold();
      try {
        await this.send(0, EXIT).catch(() => this.worker.terminate());
        await exited;
      } finally {
        this.release();
      }
    }
    await this.worker.terminate();
  }
}
