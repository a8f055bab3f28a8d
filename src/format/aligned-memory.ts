/**
 * Alignment of a direct write's memory, file offset and length: a page,
 * which covers the logical block size of every common device.
 */
export const ALIGN = 4096;

const aligned = new WeakSet<ArrayBufferLike>();

/**
 * `bytes` (a multiple of 64 KiB) of page-aligned memory, shared between
 * threads with `shared`. WebAssembly memory is allocated in whole pages; the
 * memory of a Node Buffer is not aligned, and direct I/O refuses it.
 * Undefined where Node runs without WebAssembly (`--jitless`).
 */
export function alignedMemory(bytes: number, options: { shared?: boolean } = {}): ArrayBuffer | SharedArrayBuffer | undefined {
  if (!alignedMemoryAvailable()) return undefined;
  const pages = Math.ceil(bytes / 65536);
  const memory = new WebAssembly.Memory(options.shared ? { initial: pages, maximum: pages, shared: true } : { initial: pages });
  aligned.add(memory.buffer);
  return memory.buffer;
}

/** Whether alignedMemory can give any: not where Node runs without WebAssembly (`--jitless`). */
export function alignedMemoryAvailable(): boolean {
  return typeof WebAssembly === 'object';
}

/** Whether a direct write can take `chunk` as it is: its memory starts on a page and it holds whole pages. */
export function isAlignedChunk(chunk: Uint8Array): boolean {
  return aligned.has(chunk.buffer) && chunk.byteOffset % ALIGN === 0 && chunk.length % ALIGN === 0;
}
