import * as path from 'node:path';
import { errorMessage } from '../errors.js';
import { parseUtf8Json, readAt, readUtf8Json } from './io.js';
import { bump, clip, dtypeSummary, type FileCheck, type ModelFinding, type ModelInfo, type TreeFile } from './types.js';
import { openRegularFile } from '../format/durable.js';

/** The safetensors format caps its JSON header at 100 MB; nothing bigger is read. */
export const MAX_HEADER_BYTES = 100_000_000;

/** Bits per element of each safetensors dtype. */
const DTYPE_BITS: Record<string, number> = {
  BOOL: 8,
  U8: 8,
  I8: 8,
  F8_E5M2: 8,
  F8_E4M3: 8,
  F8_E8M0: 8,
  F6_E2M3: 6,
  F6_E3M2: 6,
  F4: 4,
  I16: 16,
  U16: 16,
  F16: 16,
  BF16: 16,
  I32: 32,
  U32: 32,
  F32: 32,
  C64: 64,
  F64: 64,
  I64: 64,
  U64: 64,
};

export interface SafetensorsCheck extends FileCheck {
  /** Tensor names of a header that parsed (used to check an index's weight map). */
  names?: Set<string>;
}

interface Tensor {
  name: string;
  dtype: string;
  begin: number;
  end: number;
}

/**
 * Checks one safetensors file from its header alone: the 8-byte length, the
 * JSON, each tensor's dtype × shape against its data_offsets, and that the
 * offsets tile the data section exactly (no gap, no overlap, nothing past the
 * end of the file, nothing after the last tensor).
 */
export async function checkSafetensors(abs: string): Promise<SafetensorsCheck> {
  const reasons: string[] = [];
  const { handle: fh, stats } = await openRegularFile(abs);
  try {
    const size = Number(stats.size);
    if (size < 8) return { reasons: [`file is ${size} bytes, shorter than the 8-byte header length`] };
    const headerLength = (await readAt(fh, 0, 8)).readBigUInt64LE(0);
    if (headerLength > BigInt(size - 8)) {
      return { reasons: [`header length ${headerLength} runs past the end of the file (${size} bytes)`] };
    }
    if (headerLength > BigInt(MAX_HEADER_BYTES)) return { reasons: [`header length ${headerLength} exceeds the format's ${MAX_HEADER_BYTES}-byte limit`] };
    const n = Number(headerLength);
    const raw = await readAt(fh, 8, n);
    let header: unknown;
    try {
      header = parseUtf8Json(raw);
    } catch (err) {
      return { reasons: [`header is not valid JSON: ${errorMessage(err)}`] };
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) return { reasons: ['header is not a JSON object'] };
    const dataBytes = size - 8 - n;
    const tensors: Tensor[] = [];
    const dtypes = new Map<string, number>();
    for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (typeof value !== 'object' || value === null || Array.isArray(value) || Object.values(value).some((v) => typeof v !== 'string')) {
          reasons.push('__metadata__ is not a map of strings');
        }
        continue;
      }
      const t = tensorOf(name, value, reasons);
      if (!t) continue;
      tensors.push(t);
      bump(dtypes, t.dtype.toLowerCase());
    }
    tensors.sort((a, b) => a.begin - b.begin || a.end - b.end);
    let at = 0;
    let previous: Tensor | undefined;
    for (const t of tensors) {
      if (t.begin < at) reasons.push(`tensor ${t.name} (bytes ${t.begin}–${t.end}) overlaps ${previous!.name} (bytes ${previous!.begin}–${previous!.end})`);
      else if (t.begin > at) reasons.push(`gap of ${t.begin - at} bytes before tensor ${t.name} at data byte ${at}`);
      if (t.end > dataBytes) {
        reasons.push(`tensor ${t.name} data_offsets end at ${t.end}, past the end of the data (${dataBytes} bytes; the file may be truncated)`);
      }
      if (t.end > at) {
        at = t.end;
        previous = t;
      }
    }
    if (at < dataBytes) reasons.push(`${dataBytes - at} bytes after the last tensor belong to no tensor`);
    const info: ModelInfo = { format: 'safetensors', tensors: tensors.length, dtypes: dtypeSummary(dtypes) };
    return { info, reasons: reasons.slice(0, 20), names: new Set(tensors.map((t) => t.name)) };
  } finally {
    await fh.close();
  }
}

/** A value from the header as JSON for a message: cut when long, named when too deeply nested to print. */
function shown(value: unknown): string {
  try {
    return clip(JSON.stringify(value) ?? String(value), 100);
  } catch {
    return Array.isArray(value) ? 'a deeply nested list' : 'a deeply nested object';
  }
}

function tensorOf(name: string, value: unknown, reasons: string[]): Tensor | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    reasons.push(`tensor ${name}: entry is not an object`);
    return undefined;
  }
  const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
  if (typeof dtype !== 'string' || !(dtype in DTYPE_BITS)) {
    reasons.push(`tensor ${name}: unknown dtype ${shown(dtype)}`);
    return undefined;
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    reasons.push(`tensor ${name}: shape ${shown(shape)} is not a list of non-negative integers`);
    return undefined;
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[0] > offsets[1]) {
    reasons.push(`tensor ${name}: data_offsets ${shown(offsets)} are not [begin, end] with begin ≤ end`);
    return undefined;
  }
  const [begin, end] = offsets as [number, number];
  const bits = (shape as number[]).reduce((p, d) => p * BigInt(d), 1n) * BigInt(DTYPE_BITS[dtype]!);
  if (bits % 8n !== 0n || bits / 8n !== BigInt(end - begin)) {
    reasons.push(`tensor ${name}: ${dtype} of shape [${(shape as number[]).join(', ')}] needs ${bits % 8n === 0n ? `${bits / 8n} bytes` : `${bits} bits (not whole bytes)`}, data_offsets give ${end - begin}`);
  }
  return { name, dtype, begin, end };
}

/** The weight map of an index file: tensor name → shard file name. */
async function readIndex(abs: string, size: number): Promise<{ map?: Map<string, string>; reason?: string }> {
  if (size > MAX_HEADER_BYTES) return { reason: `index is ${size} bytes; more than ${MAX_HEADER_BYTES} is not read` };
  let parsed: unknown;
  try {
    parsed = await readUtf8Json(abs);
  } catch (err) {
    return { reason: `not valid JSON: ${errorMessage(err)}` };
  }
  const weightMap = (parsed as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) return { reason: 'has no weight_map object' };
  const map = new Map<string, string>();
  for (const [tensor, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string' || shard === '') return { reason: `weight_map maps ${tensor} to ${shown(shard)}, not a file name` };
    map.set(tensor, shard);
  }
  return { map };
}

export function isSafetensorsIndex(name: string): boolean {
  return name.endsWith('.safetensors.index.json');
}

/**
 * Checks a sharded checkpoint's index against the shards: every shard it
 * names is in the tree, and every tensor it maps is in that shard's header.
 * `shards` holds the checks of the tree's safetensors files, by name.
 */
export async function checkSafetensorsIndex(
  file: TreeFile,
  byName: ReadonlyMap<string, TreeFile>,
  shards: ReadonlyMap<string, SafetensorsCheck>,
): Promise<{ info?: ModelInfo; findings: ModelFinding[] }> {
  const findings: ModelFinding[] = [];
  const report = (p: string, reason: string) => findings.push({ path: p, format: 'safetensors-index', reason });
  const { map, reason } = await readIndex(file.abs, file.size);
  if (!map) {
    report(file.name, reason!);
    return { findings };
  }
  const dir = path.posix.dirname(file.name);
  const byShard = new Map<string, string[]>();
  for (const [tensor, shard] of map) {
    const list = byShard.get(shard);
    if (list) list.push(tensor);
    else byShard.set(shard, [tensor]);
  }
  const shardNames = [...byShard.keys()];
  const checkOf = (shard: string) => {
    const present = byName.get(path.posix.join(dir, shard));
    return present && shards.get(present.linkTo ?? present.name);
  };
  const dtypes = new Map<string, number>();
  const wrong: { tensor: string; shard: string }[] = [];
  const outside: string[] = [];
  const missing: string[] = [];
  for (const [shard, mapped] of byShard) {
    const normal = path.posix.normalize(shard);
    if (path.posix.isAbsolute(shard) || normal === '..' || normal.startsWith('../')) {
      outside.push(shard);
      continue;
    }
    if (!byName.get(path.posix.join(dir, shard))) {
      missing.push(`${shard} (${mapped.length} tensor(s))`);
      continue;
    }
    const check = checkOf(shard);
    if (!check?.names) continue; // its own finding says why it does not parse
    for (const d of check.info?.dtypes ?? []) bump(dtypes, d);
    for (const tensor of mapped) if (!check.names.has(tensor)) wrong.push({ tensor, shard });
  }
  // A hostile index may name any number of shards: a few are named, the rest counted.
  const some = (list: string[], one: string, many: string) =>
    list.length === 1 ? `${one} ${list[0]}` : `${many} ${list.slice(0, 3).join(', ')}${list.length > 3 ? ` and ${list.length - 3} more` : ''}`;
  if (outside.length) report(file.name, `${some(outside, 'shard', 'shards')} ${outside.length === 1 ? 'is' : 'are'} outside the index's directory`);
  if (missing.length) report(file.name, `${some(missing, 'shard', 'shards')} ${missing.length === 1 ? 'is' : 'are'} missing from the snapshot`);
  if (wrong.length) {
    const named = wrong.slice(0, 3).map(({ tensor, shard }) => {
      const elsewhere = shardNames.find((other) => other !== shard && checkOf(other)?.names?.has(tensor));
      return `tensor ${tensor} is mapped to ${shard} but is not in it${elsewhere ? ` (it is in ${elsewhere})` : ''}`;
    });
    report(file.name, `${named.join('; ')}${wrong.length > 3 ? `; and ${wrong.length - 3} more` : ''}`);
  }
  return { info: { format: 'safetensors-index', shards: shardNames.length, tensors: map.size, dtypes: dtypeSummary(dtypes) }, findings };
}
