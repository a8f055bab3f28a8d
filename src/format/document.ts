import type * as z from 'zod';
import { IntegrityError } from '../errors.js';
import { sha256Hex } from './checksum.js';

/**
 * Repository documents (config, manifests) are JSON with a trailing `checksum`
 * over the compact serialisation of everything else, so a flipped bit in a
 * manifest is caught like one in a volume.
 */
export function encodeDocument(body: Record<string, unknown>): Buffer {
  const { checksum: _ignored, ...rest } = body;
  const checksum = `sha256:${sha256Hex(JSON.stringify(rest))}`;
  return Buffer.from(`${JSON.stringify({ ...rest, checksum }, null, 1)}\n`);
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
  if (typeof checksum !== 'string' || checksum !== `sha256:${sha256Hex(JSON.stringify(rest))}`) {
    throw new IntegrityError(`${what} is damaged: its checksum does not match its content`);
  }
  const result = schema.safeParse(rest);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new IntegrityError(`${what} is malformed at ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  return result.data;
}
