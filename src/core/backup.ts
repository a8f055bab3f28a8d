import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import { createHash } from 'node:crypto';
import { IntegrityError, errorMessage, throwIfAborted } from '../errors.js';
import { makePointId, type BackupType } from '../format/ids.js';
import { keys, volumeEntryName, type Manifest, type ManifestEntry } from '../format/manifest.js';
import { checkSourceName } from '../format/paths.js';
import type { Notice, Reporter } from './events.js';
import { acquireLock } from './lock.js';
import { chooseReference, planBackup, type PlannedEntry } from './backup-plan.js';
import type { Repository } from './repository.js';
import { scanSource, type ScannedEntry, type ScannedSource, type SourceSpec } from './scan.js';
import { VolumeSink } from './volume-sink.js';
import { DEFAULT_TRANSFERS } from './pool.js';
import type { TarVolumeWriter } from '../format/tar.js';
import { UsageError } from '../errors.js';

export interface BackupOptions {
  sources: SourceSpec[];
  type: BackupType;
  excludes?: string[];
  tags?: Record<string, string>;
  dryRun?: boolean;
  /** Warnings (files changed while read, escaping links, unreadable files) fail the backup. */
  strict?: boolean;
  signal?: AbortSignal;
  reporter?: Reporter;
  /** Volume uploads in flight at once. */
  concurrency?: number;
  volumeSize?: number;
  now?: () => Date;
}

export interface BackupResult {
  id: string;
  type: BackupType;
  requestedType: BackupType;
  parent: string | null;
  files: number;
  bytes: number;
  added: number;
  changed: number;
  removed: number;
  storedBytes: number;
  durationMs: number;
  dryRun: boolean;
  warnings: Notice[];
}

/** How often a file that keeps changing while it is read is read again. */
const READ_ATTEMPTS = 3;

/**
 * Takes one backup point: lock → clean leftovers → choose the reference →
 * scan → plan → store new and changed files in tar volumes → commit the
 * manifest last. Nothing is visible until that final write.
 */
export async function backup(repo: Repository, options: BackupOptions): Promise<BackupResult> {
  const started = Date.now();
  const now = options.now ?? (() => new Date());
  const reporter = options.reporter ?? {};
  const warnings: Notice[] = [];
  const warn = (n: Omit<Notice, 'level'>) => {
    const notice: Notice = { level: 'warning', ...n };
    warnings.push(notice);
    reporter.notice?.(notice);
  };
  const seenNames = new Set<string>();
  for (const s of options.sources) {
    checkSourceName(s.name);
    if (seenNames.has(s.name)) throw new UsageError(`source name ${s.name} is given twice; name sources with --source NAME=PATH`);
    seenNames.add(s.name);
  }
  if (options.sources.length === 0) {
    throw new UsageError('nothing to back up: give paths, --source NAME=PATH, or sources in the config file');
  }

  const startedAt = now();
  const lock = options.dryRun ? undefined : await acquireLock(repo.storage, 'backup');
  let sink: VolumeSink | undefined;
  let id: string | undefined;
  try {
    if (lock?.tookOver) {
      reporter.notice?.({ level: 'warning', code: 'stale-lock', message: `took over a stale lock (${lock.tookOver.reason})` });
    }
    if (!options.dryRun) await removeLeftovers(repo, reporter);

    const history = await repo.allManifests();
    const choice = chooseReference(history, options.type);
    if (choice.fallbackReason) reporter.notice?.({ level: 'info', code: 'type-fallback', message: choice.fallbackReason });

    const scanned: ScannedSource[] = [];
    for (const spec of options.sources) {
      scanned.push(await scanSource(spec, options.excludes ?? [], { ...reporter, notice: (n) => (n.level === 'warning' ? warn(n) : reporter.notice?.(n)) }, options.signal));
    }
    const allEntries = scanned.flatMap((s) => s.entries);
    const plan = planBackup(allEntries, choice.reference);
    const totalBytes = allEntries.reduce((n, e) => n + (e.type === 'file' ? e.size : 0), 0);
    const fileCount = allEntries.filter((e) => e.type === 'file').length;

    id = await uniquePointId(repo, startedAt, choice.type);
    const result: BackupResult = {
      id,
      type: choice.type,
      requestedType: options.type,
      parent: choice.reference?.id ?? null,
      files: fileCount,
      bytes: totalBytes,
      added: plan.added,
      changed: plan.changed,
      removed: plan.removed,
      storedBytes: 0,
      durationMs: 0,
      dryRun: options.dryRun === true,
      warnings,
    };
    if (options.dryRun) {
      result.storedBytes = plan.bytesToStore;
      result.durationMs = Date.now() - started;
      return result;
    }

    sink = new VolumeSink(repo.storage, id, options.volumeSize ?? repo.config.volumeSize, options.concurrency ?? DEFAULT_TRANSFERS, options.signal);
    const entries: ManifestEntry[] = [];
    const progress = { phase: 'backup' as const, filesDone: 0, filesTotal: plan.filesToStore, bytesDone: 0, bytesTotal: plan.bytesToStore };
    for (const planned of plan.entries) {
      throwIfAborted(options.signal);
      const entry = await storeEntry(planned, id, sink, progress, reporter, warn, options.signal);
      if (entry) entries.push(entry);
    }
    const volumes = await sink.finish();
    throwIfAborted(options.signal);

    if (options.strict && warnings.length > 0) {
      throw new IntegrityError(`backup refused by --strict: ${warnings.length} warning(s), first: ${warnings[0]!.path ?? ''} ${warnings[0]!.message}`);
    }
    const storedBytes = volumes.reduce((n, v) => n + v.size, 0);
    const manifest: Manifest = {
      format: 1,
      id,
      type: choice.type,
      parent: choice.reference?.id ?? null,
      full: choice.reference ? choice.reference.full : id,
      startedAt: startedAt.toISOString(),
      completedAt: now().toISOString(),
      host: os.hostname(),
      tags: options.tags ?? {},
      sources: scanned.map((s) => ({
        name: s.spec.name,
        kind: s.spec.kind ?? 'files',
        path: s.spec.origin ?? s.root,
        ...(s.spec.restore ? { restore: s.spec.restore } : {}),
        mode: s.mode,
        mtimeNs: s.mtimeNs,
      })),
      volumes,
      entries,
      stats: { files: fileCount, bytes: totalBytes, added: plan.added, changed: plan.changed, removed: plan.removed, storedBytes },
      warnings: warnings.map((w) => ({ code: w.code, path: w.path, message: w.message })),
    };
    await repo.commitManifest(manifest);
    result.storedBytes = storedBytes;
    result.durationMs = Date.now() - started;
    return result;
  } catch (err) {
    if (sink && id) {
      sink.abort(err instanceof Error ? err : new Error(String(err)));
      await sink.settle();
      // Leftovers the deletion misses are found and removed by the next backup.
      await deletePrefix(repo, keys.pointData(id)).catch(() => undefined);
    }
    throw err;
  } finally {
    await lock?.release();
  }
}

async function uniquePointId(repo: Repository, at: Date, type: BackupType): Promise<string> {
  const taken = new Set(await repo.pointIds());
  let t = at.getTime();
  // Two backups in the same millisecond (tests, scripts) get distinct ids.
  while (taken.has(makePointId(new Date(t), type)) || (await repo.storage.head(`${keys.pointData(makePointId(new Date(t), type))}v000001.tar`))) t++;
  return makePointId(new Date(t), type);
}

async function deletePrefix(repo: Repository, prefix: string): Promise<void> {
  const found: string[] = [];
  for await (const { key } of repo.storage.list(prefix)) found.push(key);
  if (found.length) await repo.storage.delete(found);
}

/** Removes the data of backups that never committed (killed, crashed). Needs the lock. */
export async function removeLeftovers(repo: Repository, reporter: Reporter): Promise<void> {
  for (const orphan of await repo.orphanDataPrefixes()) {
    await repo.storage.delete(orphan.keys);
    reporter.notice?.({
      level: 'info',
      code: 'leftovers-removed',
      message: `removed ${orphan.keys.length} object(s), ${orphan.bytes} bytes, left by an aborted backup under ${orphan.prefix}`,
    });
  }
  await repo.storage.cleanupIncomplete(0);
}

function mtimeDate(ns: string): Date {
  return new Date(Number(BigInt(ns) / 1_000_000n));
}

async function storeEntry(
  planned: PlannedEntry,
  pointId: string,
  sink: VolumeSink,
  progress: { filesDone: number; bytesDone: number; phase: 'backup'; filesTotal: number; bytesTotal: number },
  reporter: Reporter,
  warn: (n: Omit<Notice, 'level'>) => void,
  signal?: AbortSignal,
): Promise<ManifestEntry | undefined> {
  const s = planned.scanned;
  const base: ManifestEntry = { source: s.source, path: s.path, type: s.type, mode: s.mode, mtimeNs: s.mtimeNs, size: s.size };
  if (s.type === 'file') base.ino = s.ino;
  if (s.type === 'symlink') base.target = s.target;
  const name = volumeEntryName(s.source, s.path);

  if (s.type !== 'file') {
    if (planned.inVolume) {
      const { writer } = await sink.current();
      await writer.header({
        name,
        type: s.type === 'dir' ? 'Directory' : 'SymbolicLink',
        size: 0,
        mode: s.mode,
        mtime: mtimeDate(s.mtimeNs),
        uid: s.uid,
        gid: s.gid,
        linkpath: s.target,
      });
    }
    return base;
  }
  if (!planned.storeData) {
    return { ...base, sha256: planned.previous!.sha256, ref: planned.previous!.ref };
  }

  let attempt = 0;
  for (;;) {
    attempt++;
    const stored = await storeFileOnce(s, name, pointId, sink, progress, reporter, signal);
    if (stored.missing) {
      warn({ code: 'file-vanished', path: name, message: 'file disappeared before it could be read; not in this point' });
      return undefined;
    }
    const entry: ManifestEntry = { ...base, size: stored.size, mtimeNs: stored.mtimeNs, mode: stored.mode, sha256: stored.sha256, ref: stored.ref };
    if (!stored.torn) {
      progress.filesDone++;
      return entry;
    }
    if (attempt >= READ_ATTEMPTS) {
      warn({ code: 'file-changed-during-read', path: name, message: `file kept changing while it was read (${attempt} attempts); the stored copy may be inconsistent` });
      progress.filesDone++;
      return entry;
    }
  }
}

const EMPTY_SHA256 = createHash('sha256').digest('hex');

interface StoredFile {
  size: number;
  mtimeNs: string;
  mode: number;
  sha256: string;
  ref: ManifestEntry['ref'];
  torn: boolean;
  missing?: boolean;
}

/** One pass over one file: read → hash → append to the volume. */
async function storeFileOnce(
  s: ScannedEntry,
  name: string,
  pointId: string,
  sink: VolumeSink,
  progress: { filesDone: number; bytesDone: number; phase: 'backup'; filesTotal: number; bytesTotal: number },
  reporter: Reporter,
  signal?: AbortSignal,
): Promise<StoredFile> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(s.abs, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      return { size: 0, mtimeNs: s.mtimeNs, mode: s.mode, sha256: EMPTY_SHA256, ref: undefined, torn: false, missing: true };
    }
    throw new IntegrityError(`cannot read ${s.abs}: ${errorMessage(err)}`);
  }
  try {
    const before = await fh.stat({ bigint: true });
    const size = Number(before.size);
    const mode = Number(before.mode & 0o7777n);
    const mtimeNs = before.mtimeNs.toString();
    const { writer, volume } = await sink.current();
    const entry = await writer.header({ name, type: 'File', size, mode, mtime: mtimeDate(mtimeNs), uid: s.uid, gid: s.gid });
    const hash = createHash('sha256');
    const written = await copyBody(fh, size, writer, hash, progress, reporter, name, signal);
    if (written < size) hash.update(Buffer.alloc(size - written));
    await writer.endEntry(written, size);
    const after = await fh.stat({ bigint: true });
    const torn = written !== size || after.size !== before.size || after.mtimeNs !== before.mtimeNs;
    return { size, mtimeNs, mode, sha256: hash.digest('hex'), ref: { point: pointId, volume, entry }, torn };
  } finally {
    await fh.close();
  }
}

const PROGRESS_EVERY_BYTES = 8 << 20;

async function copyBody(
  fh: fsp.FileHandle,
  size: number,
  writer: TarVolumeWriter,
  hash: ReturnType<typeof createHash>,
  progress: { filesDone: number; bytesDone: number; phase: 'backup'; filesTotal: number; bytesTotal: number },
  reporter: Reporter,
  name: string,
  signal?: AbortSignal,
): Promise<number> {
  if (size === 0) return 0;
  let written = 0;
  let sinceReport = 0;
  const stream = fh.createReadStream({ start: 0, end: size - 1, highWaterMark: 1 << 20, autoClose: false });
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    throwIfAborted(signal);
    hash.update(chunk);
    await writer.body(chunk);
    written += chunk.length;
    progress.bytesDone += chunk.length;
    sinceReport += chunk.length;
    if (sinceReport >= PROGRESS_EVERY_BYTES) {
      sinceReport = 0;
      reporter.progress?.({ ...progress, current: name });
    }
  }
  reporter.progress?.({ ...progress, current: name });
  return written;
}
