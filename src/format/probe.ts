import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';

/** Bytes a probe covers. */
export const PROBE_BYTES = 64 * 1024;

/**
 * A cheap fingerprint of a large file: where its window lies. The middle of a
 * model file is tensor data: two fine-tunes of one architecture have the same
 * size and the same header, but differ there.
 */
export function probeWindow(size: number): { start: number; end: number } {
  const start = Math.max(0, Math.floor(size / 2) - PROBE_BYTES / 2);
  return { start, end: Math.min(size, start + PROBE_BYTES) };
}

function probeOf(window: Uint8Array): string {
  return createHash('sha256').update(window).digest('hex').slice(0, 32);
}

/** Reads a file's probe with one read: undefined when the file is shorter than it was said to be. */
export async function readProbe(fh: FileHandle, size: number): Promise<string | undefined> {
  const { start, end } = probeWindow(size);
  const buffer = Buffer.alloc(end - start);
  const { bytesRead } = await fh.read(buffer, 0, buffer.length, start);
  return bytesRead === buffer.length ? probeOf(buffer) : undefined;
}

/**
 * Collects a file's probe from the chunks of a pass over it, in order: the
 * window's bytes are copied as they pass (the buffers they arrive in are read
 * into again afterwards).
 */
export class ProbeCollector {
  private readonly window: Buffer;
  private readonly start: number;
  private filled = 0;

  constructor(size: number) {
    const { start, end } = probeWindow(size);
    this.start = start;
    this.window = Buffer.alloc(end - start);
  }

  /** A chunk that begins at `position` in the file. */
  add(chunk: Uint8Array, position: number): void {
    const from = Math.max(this.start, position);
    const to = Math.min(this.start + this.window.length, position + chunk.length);
    if (from >= to) return;
    this.window.set(chunk.subarray(from - position, to - position), from - this.start);
    this.filled += to - from;
  }

  /** The probe, or undefined when the pass did not cover the whole window (a torn read). */
  digest(): string | undefined {
    return this.filled === this.window.length ? probeOf(this.window) : undefined;
  }
}
