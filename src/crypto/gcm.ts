import { createCipheriv, createDecipheriv } from 'node:crypto';

/**
 * AES-256-GCM of one segment, shared by the main thread (small documents) and
 * the cipher thread (streams). Kept free of other imports so the thread loads
 * nothing else.
 */
export const TAG_SIZE = 16;
export const SALT_SIZE = 32;
export const HEADER_SIZE = 8 + SALT_SIZE;

function nonceAndAad(header: Uint8Array, index: number, final: boolean): { nonce: Buffer; aad: Buffer } {
  const nonce = Buffer.alloc(12);
  nonce.writeUInt32BE(Math.floor(index / 0x1_0000_0000), 0);
  nonce.writeUInt32BE(index >>> 0, 4);
  nonce[8] = final ? 1 : 0;
  const aad = Buffer.alloc(HEADER_SIZE + 9);
  aad.set(header.subarray(0, HEADER_SIZE), 0);
  nonce.copy(aad, HEADER_SIZE, 0, 9);
  return { nonce, aad };
}

/** Seals one segment into `out` at `at` (ciphertext then tag); returns the bytes written. */
export function sealInto(key: Uint8Array, header: Uint8Array, index: number, final: boolean, plain: Uint8Array, out: Uint8Array, at: number): number {
  const { nonce, aad } = nonceAndAad(header, index, final);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(aad);
  const body = cipher.update(plain);
  out.set(body, at);
  // GCM emits everything in update; final only computes the tag.
  cipher.final();
  out.set(cipher.getAuthTag(), at + body.length);
  return body.length + TAG_SIZE;
}

/**
 * Opens one sealed segment (ciphertext then tag) into `out` at `at`; returns
 * the plaintext length, or -1 when the segment does not authenticate.
 */
export function openInto(key: Uint8Array, header: Uint8Array, index: number, final: boolean, sealed: Uint8Array, out: Uint8Array, at: number): number {
  if (sealed.length < TAG_SIZE) return -1;
  const { nonce, aad } = nonceAndAad(header, index, final);
  const decipher = createDecipheriv('aes-256-gcm', key, nonce);
  decipher.setAAD(aad);
  decipher.setAuthTag(sealed.subarray(sealed.length - TAG_SIZE));
  const body = decipher.update(sealed.subarray(0, sealed.length - TAG_SIZE));
  try {
    decipher.final();
  } catch {
    return -1;
  }
  out.set(body, at);
  return body.length;
}
