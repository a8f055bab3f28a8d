import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import * as zlib from 'node:zlib';

/** SHA-256 of a file's content, streamed. */
export async function sha256OfFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export function sha256Hex(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

type Crc32 = (data: Uint8Array, value?: number) => number;

// zlib.crc32 exists from Node 20.15 / 22.2; older 20.x releases get the table version.
const nativeCrc32 = (zlib as unknown as { crc32?: Crc32 }).crc32;

let table: Uint32Array | undefined;
function tableCrc32(data: Uint8Array, value = 0): number {
  if (!table) {
    table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
  }
  let crc = ~value >>> 0;
  for (let i = 0; i < data.length; i++) crc = table[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8);
  return ~crc >>> 0;
}

/** CRC-32 (IEEE) of data, continuing from `value`; covers whole volumes cheaply. */
export const crc32: Crc32 = nativeCrc32 ?? tableCrc32;

const CRC_POLY = 0xedb88320;

/** a(x)·b(x) modulo the CRC-32 polynomial, in the reflected bit order zlib uses; `a` must not be 0. */
function multModP(a: number, b: number): number {
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if ((a & m) >>> 0 !== 0) {
      p ^= b;
      if ((a & (m - 1)) >>> 0 === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ CRC_POLY : b >>> 1;
  }
  return p >>> 0;
}

let powersOfX: Uint32Array | undefined;

/** x^(n·2^k) modulo the polynomial. */
function xPowModP(n: number, k: number): number {
  if (!powersOfX) {
    powersOfX = new Uint32Array(32);
    let p = 0x40000000; // x^1
    powersOfX[0] = p;
    for (let i = 1; i < 32; i++) powersOfX[i] = p = multModP(p, p);
  }
  let p = 0x80000000; // x^0
  // Arithmetic rather than bit operators: lengths pass 2^32 bytes.
  for (; n > 0; n = Math.floor(n / 2), k++) if (n % 2 === 1) p = multModP(powersOfX[k & 31]!, p);
  return p;
}

/**
 * The CRC-32 of A followed by B, from the CRC-32s of A and B and the length
 * of B (zlib's crc32_combine), so parts of a stream can be checksummed apart.
 */
export function crc32Combine(crcA: number, crcB: number, lengthB: number): number {
  if (lengthB === 0) return crcA >>> 0;
  return (multModP(xPowModP(lengthB, 3), crcA) ^ crcB) >>> 0;
}
