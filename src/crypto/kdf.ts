import { createCipheriv, createDecipheriv, randomBytes, scrypt } from 'node:crypto';
import { UsageError } from '../errors.js';

/** scrypt parameters; N = 2^logN. */
export interface KdfParams {
  name: 'scrypt';
  logN: number;
  r: number;
  p: number;
}

/**
 * 2^14 × 8 × 128 bytes = 16 MiB, worked through five times (p = 5): one of
 * the settings OWASP's password storage guidance lists as equal in strength
 * to N = 2^17, r = 8, p = 1. It needs an eighth of the memory and, as the p
 * lanes run one after another, 5/8 of the work (about 0.2 s against 0.5 s,
 * page faults of the 128 MiB included, on these machines).
 */
export const DEFAULT_KDF: KdfParams = { name: 'scrypt', logN: 14, r: 8, p: 5 };

/** Bounds on parameters read from a repository, so a damaged key cannot demand unbounded memory or time. */
export const KDF_LIMITS = { logN: { min: 10, max: 22 }, r: { min: 1, max: 32 }, p: { min: 1, max: 16 } } as const;

export function checkKdf(params: KdfParams): void {
  for (const k of ['logN', 'r', 'p'] as const) {
    const v = params[k];
    if (!Number.isInteger(v) || v < KDF_LIMITS[k].min || v > KDF_LIMITS[k].max) {
      throw new UsageError(`scrypt ${k} ${v} is outside ${KDF_LIMITS[k].min}..${KDF_LIMITS[k].max}`);
    }
  }
  if (128 * params.r * 2 ** params.logN > 2 ** 30) throw new UsageError('scrypt parameters need more than 1 GiB of memory');
}

/** Derives the 256-bit key-encryption key of a password. */
export async function deriveKey(password: string, salt: Buffer, params: KdfParams): Promise<Buffer> {
  checkKdf(params);
  const N = 2 ** params.logN;
  const maxmem = 128 * params.r * (N + params.p + 2) + (1 << 20);
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFC'), salt, 32, { N, r: params.r, p: params.p, maxmem }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

export interface WrappedKey {
  nonce: Buffer;
  /** The encrypted data key followed by the GCM tag. */
  sealed: Buffer;
}

/** Encrypts the data key under a key-encryption key; `context` is bound as additional data. */
export function wrapKey(kek: Buffer, dataKey: Buffer, context: string): WrappedKey {
  const nonce = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', kek, nonce);
  cipher.setAAD(Buffer.from(context));
  const body = Buffer.concat([cipher.update(dataKey), cipher.final(), cipher.getAuthTag()]);
  return { nonce, sealed: body };
}

/** The data key, or undefined when the key-encryption key is wrong (or the wrapped key was altered). */
export function unwrapKey(kek: Buffer, wrapped: WrappedKey, context: string): Buffer | undefined {
  if (wrapped.nonce.length !== 12 || wrapped.sealed.length !== 32 + 16) return undefined;
  const decipher = createDecipheriv('aes-256-gcm', kek, wrapped.nonce);
  decipher.setAAD(Buffer.from(context));
  decipher.setAuthTag(wrapped.sealed.subarray(32));
  const body = decipher.update(wrapped.sealed.subarray(0, 32));
  try {
    decipher.final();
  } catch {
    body.fill(0);
    return undefined;
  }
  return body;
}
