import { createHash } from 'node:crypto';
import type * as z from 'zod';
import { IntegrityError } from '../errors.js';
import { sha256Hex } from './checksum.js';

/**
 * Repository documents (config, manifests) are JSON with a trailing `checksum`
 * over the compact serialisation of everything else, so a flipped bit in a
 * manifest is caught like one in a volume.
 *
 * They are written compact, the checksum last, so that the bytes before
 * `,"checksum"` (closed with `}`) are exactly what the checksum covers: a
 * reader hashes the bytes it got, instead of serialising a manifest of a
 * million entries again to hash that. Documents written indented (by older
 * versions) are checked the slow way.
 */
export function encodeDocument(body: Record<string, unknown>): Buffer {
  const { checksum: _ignored, ...rest } = body;
  const compact = JSON.stringify(rest);
  if (compact === '{}') return Buffer.from(`{"checksum":"sha256:${sha256Hex(compact)}"}\n`);
  // The JSON is written once, into the document's own buffer, and hashed there: a manifest of
  // 100,000 files is 36 MB of JSON, and building the document as a string, then converting it,
  // held two more copies of it (and hashing the string a third) at the backup's peak of memory.
  const length = Buffer.byteLength(compact);
  const document = Buffer.allocUnsafe(length + CHECKSUM_TAIL_BYTES);
  document.write(compact, 0, length);
  const checksum = createHash('sha256').update(document.subarray(0, length)).digest('hex');
  // The closing brace of the compact JSON gives way to the checksum member.
  document.write(`,"checksum":"sha256:${checksum}"}\n`, length - 1, 'latin1');
  return document;
}

const CHECKSUM_TAIL = /^,"checksum":"sha256:([0-9a-f]{64})"\}$/;
/** `,"checksum":"sha256:<64 hex digits>"}`, which replaces the closing brace of the compact JSON. */
const CHECKSUM_TAIL_BYTES = ',"checksum":"sha256:"}'.length + 64;

/** Whether the document's raw bytes carry their checksum as encodeDocument writes it, and it matches them. */
function rawChecksumMatches(data: Buffer): boolean {
  let end = data.length;
  if (data[end - 1] === 0x0a) end--;
  // An empty document, `{"checksum":…}`, has no comma before its checksum: it is checked the slow way.
  if (end < CHECKSUM_TAIL_BYTES + 1) return false;
  const tail = CHECKSUM_TAIL.exec(data.toString('latin1', end - CHECKSUM_TAIL_BYTES, end));
  if (!tail) return false;
  const hash = createHash('sha256').update(data.subarray(0, end - CHECKSUM_TAIL_BYTES)).update('}');
  return hash.digest('hex') === tail[1];
}

export function decodeDocument<T>(data: Buffer, schema: z.ZodType<T>, what: string): T {
  let parsed: unknown;
  try {
    parsed = JSON.parse(data.toString('utf8'));
  } catch (err) {
    throw new IntegrityError(`${what} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new IntegrityError(`${what} is not a JSON object`);
  }
  const { checksum, ...rest } = parsed as Record<string, unknown>;
  // The raw bytes hashed are the bytes parsed; JSON.parse keeps the last of repeated members, the checksum written last.
  if (!rawChecksumMatches(data) && (typeof checksum !== 'string' || checksum !== `sha256:${sha256Hex(JSON.stringify(rest))}`)) {
    throw new IntegrityError(`${what} is damaged: its checksum does not match its content`);
  }
  const result = schema.safeParse(rest);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new IntegrityError(`${what} is malformed at ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return result.data;
}
