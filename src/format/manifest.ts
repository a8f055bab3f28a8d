import * as z from 'zod';
// The generator alone, by name: the namespace z.core would bring every locale of zod into the bundle.
import { compileFn } from 'zod/v4/core';
import { POINT_ID } from './ids.js';
import { NAME } from './paths.js';
import type { VolumeChecksum } from './tar.js';
import { isObjectKey } from '../storage/storage.js';

export const FORMAT_VERSION = 1;
/**
 * Format of the manifests written now. 1: a volume records the CRC-32 of all
 * its bytes; 2: of its framing only (every byte outside file bodies, which
 * their files' SHA-256 already covers). Both are read.
 */
export const MANIFEST_FORMAT = 2;

const pointId = z.string().regex(POINT_ID, 'not a backup point id');
const sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'not a SHA-256 hex digest');
const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const nsTime = z.string().regex(/^-?\d{1,30}$/, 'not a nanosecond timestamp');
/** The deployment of points taken without a name, and of points written before names existed. */
export const DEFAULT_DEPLOYMENT = 'default';
const deploymentName = z.string().regex(NAME, 'not a deployment name');

/** The deployment a point belongs to. */
export function deploymentOf(point: { deployment?: string | undefined }): string {
  return point.deployment ?? DEFAULT_DEPLOYMENT;
}

/** The deployments these points belong to, each once, sorted. */
export function deploymentsOf(points: readonly { deployment?: string | undefined }[]): string[] {
  return [...new Set(points.map(deploymentOf))].sort();
}

/** A numeric user or group id, as stat gives it. */
const ownerId = z.number().int().min(0).max(0xffffffff);

/** Where a volume is stored: a key under `data/` that both drivers can read. */
const volumeKey = z
  .string()
  .min(1)
  .max(1024)
  .refine((key) => key.startsWith('data/') && isObjectKey(key), 'not the key of a data volume');

/** Where one file's bytes live: the n-th entry of a volume of some point. */
export const refSchema = z.object({
  point: pointId,
  volume: count,
  entry: count,
  /** Byte offset of the entry's first header block, so a reader can start there. */
  offset: count.optional(),
});
export type ContentRef = z.infer<typeof refSchema>;

/** What model validation recognised in a file: its format and a summary of its tensors. */
export const modelInfoSchema = z.object({
  format: z.enum(['safetensors', 'safetensors-index', 'onnx', 'gguf', 'hf-config', 'tokenizer', 'tokenizer-config']),
  tensors: count.optional(),
  /** safetensors-index: how many shard files it names. */
  shards: count.optional(),
  /** Lower-case dtype names, most common first. */
  dtypes: z.array(z.string().max(32)).max(64).optional(),
  vocabSize: count.optional(),
  architecture: z.string().max(256).optional(),
  /** onnx: external-data files referenced. */
  externalData: count.optional(),
  version: count.optional(),
  note: z.string().max(1024).optional(),
});
export type ModelInfo = z.infer<typeof modelInfoSchema>;

export const entrySchema = z.object({
  source: z.string().min(1).max(64),
  path: z.string().min(1).max(4096),
  type: z.enum(['file', 'dir', 'symlink']),
  mode: z.number().int().min(0).max(0o7777),
  mtimeNs: nsTime,
  size: count,
  /** Owner and group (numeric), restored when the restore runs as root. Absent in manifests of older versions. */
  uid: ownerId.optional(),
  gid: ownerId.optional(),
  ino: z.string().regex(/^\d{1,30}$/).optional(),
  /** Files: the change time when read, compared by the next incremental (absent in manifests of older versions). */
  ctimeNs: nsTime.optional(),
  sha256: sha256.optional(),
  target: z.string().min(1).max(4096).optional(),
  /** A hard link: the path of an earlier file of the same source that is the same file (same content and reference). */
  link: z.string().min(1).max(4096).optional(),
  ref: refSchema.optional(),
  /**
   * Files over 1 MiB: SHA-256 (first 128 bits, hex) of the 64 KiB in the middle of the file
   * (src/format/probe.ts). A later backup reads that much of a new file of the same size
   * to find a copy of this one before reading it whole.
   */
  probe: z.string().regex(/^[0-9a-f]{32}$/).optional(),
  /** Files a model validator recognised (safetensors, ONNX, GGUF, configs). */
  model: modelInfoSchema.optional(),
});
export type ManifestEntry = z.infer<typeof entrySchema>;

export const volumeSchema = z.object({
  key: volumeKey,
  size: count,
  /** Manifest format 1: CRC-32 of the whole volume. */
  crc32: z.number().int().min(0).max(0xffffffff).optional(),
  /** Manifest format 2: CRC-32 of the volume's bytes outside file bodies. */
  framingCrc32: z.number().int().min(0).max(0xffffffff).optional(),
  entries: count,
  // Room for later formats: a volume says how it is encoded, so old ones keep reading.
  compression: z.enum(['none']),
  encryption: z.enum(['none', 'aes-256-gcm']),
});
export type VolumeRecord = z.infer<typeof volumeSchema>;

/** What a volume's recorded CRC-32 covers, and its value. */
export function recordedChecksum(volume: VolumeRecord): { checksum: VolumeChecksum; crc32: number } {
  return volume.framingCrc32 !== undefined ? { checksum: 'framing', crc32: volume.framingCrc32 } : { checksum: 'volume', crc32: volume.crc32 ?? 0 };
}

export const sourceSchema = z.object({
  name: z.string().min(1).max(64),
  /** files: a directory tree; sqlite: an online copy of a database; command: a command's stdout. */
  kind: z.enum(['files', 'sqlite', 'command']),
  /** Where the source lives on the backed-up host (the database file, the command line for command sources). */
  path: z.string(),
  /** command sources: the command that takes the captured state on stdin. */
  restore: z.string().optional(),
  mode: z.number().int().min(0).max(0o7777).optional(),
  mtimeNs: nsTime.optional(),
  uid: ownerId.optional(),
  gid: ownerId.optional(),
  /**
   * The exclude patterns the backup left paths of the source out with (empty when none), which a
   * --delta restore leaves alone in its target. Absent in manifests of older versions.
   */
  exclude: z.array(z.string()).optional(),
});
export type SourceRecord = z.infer<typeof sourceSchema>;

/**
 * The state sources among `sources` (a database copy, a command's output): their files are written
 * anew by every capture, so their time says when they were captured, not that the state changed.
 */
export function capturedSources(sources: readonly { name: string; kind?: SourceRecord['kind'] }[]): Set<string> {
  return new Set(sources.filter((s) => (s.kind ?? 'files') !== 'files').map((s) => s.name));
}

/** The manifest's fields, before the checks across them. */
const manifestFields = z.object({
  format: z.union([z.literal(1), z.literal(MANIFEST_FORMAT)]),
  id: pointId,
  type: z.enum(['full', 'diff', 'incr']),
  parent: pointId.nullable(),
  full: pointId,
  startedAt: z.string(),
  completedAt: z.string(),
  /**
   * Which deployment the point belongs to, when one repository holds several:
   * references and retention stay within a deployment. Absent: the default.
   */
  deployment: deploymentName.optional(),
  host: z.string(),
  tags: z.record(z.string(), z.string()),
  sources: z.array(sourceSchema).max(10_000),
  volumes: z.array(volumeSchema).max(1_000_000),
  entries: z.array(entrySchema).max(50_000_000),
  /**
   * Copies of files that changed while they were read, stored and then read
   * again: no entry refers to them, and they are listed so that verify
   * --read-data checks their bytes too (format 2, whose volume CRC-32 leaves
   * bodies out).
   */
  superseded: z.array(z.object({ volume: count, entry: count, size: count, sha256 })).max(50_000_000).optional(),
  stats: z.object({
    files: count,
    bytes: count,
    added: count,
    changed: count,
    removed: count,
    storedBytes: count,
  }),
  warnings: z.array(z.object({ code: z.string(), path: z.string().optional(), message: z.string() })),
  /** Names of the owners' uids and gids on the backed-up host, so a restore elsewhere can map them by name. */
  owners: z
    .object({
      users: z.record(z.string().regex(/^\d{1,10}$/), z.string().min(1).max(256)),
      groups: z.record(z.string().regex(/^\d{1,10}$/), z.string().min(1).max(256)),
    })
    .optional(),
});

export const manifestSchema = manifestFields.superRefine((m, ctx) => {
  const field = m.format === 1 ? 'crc32' : 'framingCrc32';
  const other = m.format === 1 ? 'framingCrc32' : 'crc32';
  m.volumes.forEach((v, i) => {
    if (v[field] === undefined || v[other] !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['volumes', i, field], message: `a volume of manifest format ${m.format} records ${field} (and not ${other})` });
    }
  });
});
export type Manifest = z.infer<typeof manifestSchema>;

let compiledManifestSchema: typeof manifestSchema | undefined;
let compiledEntrySchema: typeof entrySchema | undefined;

/**
 * manifestSchema with zod's compiled fast path (as z.compile makes it; input it
 * rejects goes through the regular parser, for the same errors). In a fresh
 * process a manifest of 2,000 entries validates in about 20 ms instead of 45,
 * and it is about three times faster once warm. Compiled at first use (about
 * 8 ms), so that commands reading no manifest do not pay for it. Only the
 * parser is generated: z.compile also generates an assert-only validator,
 * which nothing here calls (about 4 ms more in every backup and restore).
 */
export function manifestValidator(): typeof manifestSchema {
  return (compiledManifestSchema ??= compiled(manifestSchema));
}

/** entrySchema compiled as manifestValidator is: a manifest's entries are checked one at a time as they are read (manifest-read.ts). */
export function entryValidator(): typeof entrySchema {
  return (compiledEntrySchema ??= compiled(entrySchema));
}

function compiled<T extends typeof manifestSchema | typeof entrySchema>(schema: T): T {
  try {
    return z.withParser(schema, compileFn(schema)) as T;
  } catch {
    // As z.compile: a schema the generated code cannot express keeps the regular parser.
    return schema;
  }
}

/**
 * What listing, choosing and pruning points need from a manifest, in a small
 * document of its own (`summaries/<id>.json`), written just before the
 * manifest is committed: `list`, `prune` and time selectors read these instead
 * of every manifest, whose size grows with the number of files.
 */
export const summarySchema = manifestFields.pick({ id: true, type: true, parent: true, full: true, startedAt: true, completedAt: true, deployment: true, tags: true }).extend({
  format: z.literal(1),
  stats: z.object({ files: count, bytes: count, storedBytes: count }),
  /** This point's own volumes, in order. */
  volumes: z.array(volumeKey).max(1_000_000),
  /** Volumes of other points that hold some of this point's files. */
  uses: z.array(z.object({ point: pointId, volume: count })).max(50_000_000),
});
export type PointSummary = z.infer<typeof summarySchema>;

export function summarize(m: Manifest): PointSummary {
  const uses = new Map<string, { point: string; volume: number }>();
  for (const e of m.entries) {
    if (e.ref && e.ref.point !== m.id) uses.set(`${e.ref.point}/${e.ref.volume}`, { point: e.ref.point, volume: e.ref.volume });
  }
  return {
    format: 1,
    id: m.id,
    type: m.type,
    parent: m.parent,
    full: m.full,
    startedAt: m.startedAt,
    completedAt: m.completedAt,
    ...(m.deployment !== undefined ? { deployment: m.deployment } : {}),
    tags: m.tags,
    stats: { files: m.stats.files, bytes: m.stats.bytes, storedBytes: m.stats.storedBytes },
    volumes: m.volumes.map((v) => v.key),
    uses: [...uses.values()].sort((a, b) => (a.point < b.point ? -1 : a.point > b.point ? 1 : a.volume - b.volume)),
  };
}

/**
 * The deployments that have points in the repository (`deployments.json`),
 * kept by the writers under the repository lock: a backup adds its own before
 * it commits, a prune rewrites it from the points it keeps. It may name a
 * deployment whose only backup failed, never miss one, so one name is proof
 * that `latest` needs no deployment, without reading every point's summary.
 */
export const deploymentsSchema = z.object({
  format: z.literal(1),
  names: z.array(deploymentName).max(100_000),
});
export type DeploymentsRecord = z.infer<typeof deploymentsSchema>;

/** Volume keys a point's restore reads: its own, and those of the points its files' bytes live in (`byId`: every point's summary). */
export function volumesNeeded(m: PointSummary, byId: ReadonlyMap<string, PointSummary>): string[] {
  const out = [...m.volumes];
  for (const use of m.uses) out.push(byId.get(use.point)?.volumes[use.volume] ?? keys.volume(use.point, use.volume));
  return out;
}

/** An encrypted repository's settings (docs/SECURITY.md); the keys themselves are under keys/. */
export const encryptionConfigSchema = z.object({
  algorithm: z.literal('aes-256-gcm'),
  /** Plaintext bytes per encrypted segment. */
  segmentSize: count,
  /** scrypt parameters the first key was made with (each key records its own). */
  kdf: z.object({ name: z.literal('scrypt'), logN: count, r: count, p: count }),
});
export type EncryptionConfig = z.infer<typeof encryptionConfigSchema>;

export const repositoryConfigSchema = z.object({
  format: z.literal('lifeboat-repository'),
  version: z.literal(FORMAT_VERSION),
  id: z.string().regex(/^[0-9a-f]{32}$/),
  createdAt: z.string(),
  encryption: encryptionConfigSchema.nullable(),
  volumeSize: count,
});
export type RepositoryConfig = z.infer<typeof repositoryConfigSchema>;

/**
 * The most a manifest may take: what a document may be (MAX_DOCUMENT_BYTES),
 * which is also about the longest string V8 builds (2^29 - 24 characters).
 */
export const MAX_MANIFEST_CHARS = 2 ** 29 - 24;

/** What an entry's JSON takes besides its names: type, mode, times, size, owner, inode, SHA-256, reference, indentation. */
const ENTRY_CHARS = 455;

/**
 * About how large the manifest of these entries will be, from their count and
 * the length of their names, so that a point too large for one manifest
 * (over a million files) is refused before anything is stored.
 */
export function estimateManifestChars(entries: readonly { source: string; path: string; target?: string }[]): number {
  let chars = 0;
  for (const e of entries) chars += ENTRY_CHARS + e.source.length + e.path.length + (e.target?.length ?? 0);
  return chars;
}

/** Object keys of the repository layout (docs/FORMAT.md). */
export const keys = {
  config: 'config.json',
  pointsPrefix: 'points/',
  point: (id: string) => `points/${id}.json`,
  deployments: 'deployments.json',
  summariesPrefix: 'summaries/',
  summary: (id: string) => `summaries/${id}.json`,
  dataPrefix: 'data/',
  pointData: (id: string) => `data/${id}/`,
  volume: (id: string, n: number) => `data/${id}/v${String(n + 1).padStart(6, '0')}.tar`,
  lock: 'locks/lock.json',
  readersPrefix: 'locks/readers/',
  reader: (name: string) => `locks/readers/${name}.json`,
} as const;

/** The point a summary key (`summaries/<id>.json`) names; undefined for any other key. */
export function summaryIdOf(key: string): string | undefined {
  return /^summaries\/(.+)\.json$/.exec(key)?.[1];
}

/** Name of a file's entry inside a tar volume: `<source>/<path>`. */
export function volumeEntryName(source: string, path: string): string {
  return `${source}/${path}`;
}
