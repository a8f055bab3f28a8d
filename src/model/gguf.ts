import { errorMessage } from '../errors.js';
import { FileCursor, TruncatedError, safeNumber } from './io.js';
import { bump, dtypeSummary, type FileCheck } from './types.js';
import { openRegularFile } from '../format/durable.js';

const MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
/** Keys and tensor names longer than this are not read (the format's own limit is far lower in practice). */
const MAX_NAME = 65_536;
const MAX_DIMS = 8;

/** ggml tensor types: elements per block and bytes per block. */
const GGML_TYPES: Record<number, [string, number, number]> = {
  0: ['f32', 1, 4], 1: ['f16', 1, 2], 2: ['q4_0', 32, 18], 3: ['q4_1', 32, 20], 6: ['q5_0', 32, 22], 7: ['q5_1', 32, 24],
  8: ['q8_0', 32, 34], 9: ['q8_1', 32, 36], 10: ['q2_k', 256, 84], 11: ['q3_k', 256, 110], 12: ['q4_k', 256, 144],
  13: ['q5_k', 256, 176], 14: ['q6_k', 256, 210], 15: ['q8_k', 256, 292], 16: ['iq2_xxs', 256, 66], 17: ['iq2_xs', 256, 74],
  18: ['iq3_xxs', 256, 98], 19: ['iq1_s', 256, 50], 20: ['iq4_nl', 32, 18], 21: ['iq3_s', 256, 110], 22: ['iq2_s', 256, 82],
  23: ['iq4_xs', 256, 136], 24: ['i8', 1, 1], 25: ['i16', 1, 2], 26: ['i32', 1, 4], 27: ['i64', 1, 8], 28: ['f64', 1, 8],
  29: ['iq1_m', 256, 56], 30: ['bf16', 1, 2], 34: ['tq1_0', 256, 54], 35: ['tq2_0', 256, 66], 39: ['mxfp4', 32, 17],
};

/** Bytes of each fixed-size metadata value type; 8 (string) and 9 (array) are variable. */
const VALUE_BYTES: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

async function ggufString(c: FileCursor, v1: boolean, what: string): Promise<number> {
  return v1 ? c.u32(`${what} length`) : safeNumber(await c.u64(`${what} length`), `${what} length`);
}

async function skipValue(c: FileCursor, type: number, v1: boolean, key: string, depth = 0): Promise<void> {
  if (type in VALUE_BYTES) return c.skip(VALUE_BYTES[type]!, `value of ${key}`);
  if (type === 8) return c.skip(await ggufString(c, v1, `string value of ${key}`), `string value of ${key}`);
  if (type === 9 && depth === 0) {
    const itemType = await c.u32(`array type of ${key}`);
    const count = v1 ? await c.u32(`array length of ${key}`) : safeNumber(await c.u64(`array length of ${key}`), `array length of ${key}`);
    if (itemType in VALUE_BYTES) {
      if (count * VALUE_BYTES[itemType]! > c.remaining) throw new TruncatedError(`array ${key} of ${count} items runs past the end of the file`);
      return c.skip(count * VALUE_BYTES[itemType]!, `array ${key}`);
    }
    if (count * (v1 ? 4 : 8) > c.remaining) throw new TruncatedError(`array ${key} of ${count} items runs past the end of the file`);
    for (let i = 0; i < count; i++) await skipValue(c, itemType, v1, key, depth + 1);
    return;
  }
  throw new Error(`metadata ${key} has unknown value type ${type}`);
}

/**
 * Checks a GGUF file's header: magic, version, metadata table, and the tensor
 * info table: each tensor's type and dimensions give its size, its offset is
 * aligned, tensors do not overlap, and the data fits in the file with no more
 * than alignment padding after the last one. A wrong tensor count shows up as
 * a table that runs into the data or as unaccounted bytes at the end.
 */
export async function checkGguf(abs: string): Promise<FileCheck> {
  const { handle: fh, stats } = await openRegularFile(abs);
  try {
    const size = Number(stats.size);
    const c = new FileCursor(fh, size);
    const reasons: string[] = [];
    try {
      if (size < 8 || (await c.u32('magic')) !== MAGIC) return { reasons: ['does not start with the GGUF magic'] };
      const version = await c.u32('version');
      if (version < 1 || version > 3) return { reasons: [`unsupported GGUF version ${version}`] };
      const v1 = version === 1;
      const tensorCount = v1 ? await c.u32('tensor count') : safeNumber(await c.u64('tensor count'), 'tensor count');
      const kvCount = v1 ? await c.u32('metadata count') : safeNumber(await c.u64('metadata count'), 'metadata count');
      // Each tensor info takes at least 8+4+8+4+8 bytes and each key/value at least 8+4+1: bound the counts by the file.
      if (tensorCount * 32 > c.remaining) return { reasons: [`tensor count ${tensorCount} cannot fit in a ${size}-byte file`] };
      if (kvCount * 13 > c.remaining) return { reasons: [`metadata count ${kvCount} cannot fit in a ${size}-byte file`] };
      let alignment = 32;
      let architecture: string | undefined;
      for (let i = 0; i < kvCount; i++) {
        const keyLength = await ggufString(c, v1, `metadata key ${i}`);
        if (keyLength > MAX_NAME) throw new TruncatedError(`metadata key ${i} claims ${keyLength} bytes`);
        const key = (await c.bytes(keyLength, `metadata key ${i}`)).toString('utf8');
        const type = await c.u32(`type of ${key}`);
        if (key === 'general.alignment' && type === 4) {
          alignment = await c.u32(key);
          // With an alignment of 0 no tensor has a place to be checked against.
          if (alignment === 0) return { reasons: ['general.alignment is 0, not a positive multiple of 8'] };
          if (alignment % 8 !== 0) reasons.push(`general.alignment ${alignment} is not a positive multiple of 8`);
        } else if (key === 'general.architecture' && type === 8) {
          const n = await ggufString(c, v1, key);
          if (n > MAX_NAME) throw new TruncatedError(`${key} claims ${n} bytes`);
          architecture = (await c.bytes(n, key)).toString('utf8');
        } else {
          await skipValue(c, type, v1, key);
        }
      }
      const tensors: { name: string; offset: number; bytes: number }[] = [];
      const dtypes = new Map<string, number>();
      for (let i = 0; i < tensorCount; i++) {
        const what = `tensor info ${i + 1} of ${tensorCount}`;
        const nameLength = await ggufString(c, v1, what);
        if (nameLength > MAX_NAME) throw new TruncatedError(`${what}: name length ${nameLength} is impossible (is the tensor count right?)`);
        const name = (await c.bytes(nameLength, what)).toString('utf8');
        const dims = await c.u32(`${what} (${name}) dimensions`);
        if (dims > MAX_DIMS) throw new TruncatedError(`${what} (${name}): ${dims} dimensions is impossible (is the tensor count right?)`);
        let elements = 1n;
        for (let d = 0; d < dims; d++) elements *= v1 ? BigInt(await c.u32(what)) : await c.u64(what);
        const type = await c.u32(`${what} type`);
        const offset = safeNumber(await c.u64(`${what} offset`), `${what} offset`);
        const known = GGML_TYPES[type];
        if (!known) {
          reasons.push(`tensor ${name} has unknown ggml type ${type}`);
          continue;
        }
        const [dtype, block, blockBytes] = known;
        bump(dtypes, dtype);
        if (elements % BigInt(block) !== 0n) reasons.push(`tensor ${name}: ${elements} elements is not a whole number of ${dtype} blocks of ${block}`);
        if (offset % alignment !== 0) reasons.push(`tensor ${name}: offset ${offset} is not aligned to ${alignment}`);
        tensors.push({ name, offset, bytes: safeNumber((elements / BigInt(block)) * BigInt(blockBytes), `tensor ${name} size`) });
      }
      const dataStart = Math.ceil(c.pos / alignment) * alignment;
      const dataBytes = size - dataStart;
      if (dataBytes < 0) return { reasons: [`the tensor info table ends at byte ${c.pos}, past the end of the file`] };
      tensors.sort((a, b) => a.offset - b.offset);
      let at = 0;
      for (const t of tensors) {
        if (t.offset < at) reasons.push(`tensor ${t.name} at data offset ${t.offset} overlaps the tensor before it (which ends at ${at})`);
        if (t.offset + t.bytes > dataBytes) reasons.push(`tensor ${t.name} (data bytes ${t.offset}–${t.offset + t.bytes}) runs past the end of the file (${dataBytes} data bytes; truncated?)`);
        at = Math.max(at, t.offset + t.bytes);
      }
      if (dataBytes - at >= alignment) {
        reasons.push(`${dataBytes - at} bytes after the last tensor belong to no tensor (does the header count all ${tensorCount} tensors?)`);
      }
      return {
        info: { format: 'gguf', version, tensors: tensorCount, dtypes: dtypeSummary(dtypes), ...(architecture ? { architecture: architecture.slice(0, 256) } : {}) },
        reasons: reasons.slice(0, 20),
      };
    } catch (err) {
      return { reasons: [`header does not read: ${errorMessage(err)}`] };
    }
  } finally {
    await fh.close();
  }
}
