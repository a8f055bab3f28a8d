import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import { IntegrityError, InterruptedError, RuntimeFailure, UsageError, errorMessage, throwIfAborted } from '../errors.js';
import { makePointId, pointTime, type BackupType } from '../format/ids.js';
import { DEFAULT_DEPLOYMENT, MANIFEST_FORMAT, capturedSources, MAX_MANIFEST_CHARS, deploymentOf, type PointSummary, estimateManifestChars, keys, volumeEntryName, type ContentRef, type Manifest, type ManifestEntry } from '../format/manifest.js';
import { checkDeploymentName, checkSourceName } from '../format/paths.js';
import { localAccounts, namesOf } from '../format/accounts.js';
import { formatBytes } from '../format/units.js';
import { quoteName } from '../format/quote.js';
import { type Notice, type Progress, type Reporter, progressAt } from './events.js';
import { LockLostError, acquireWriterLock, releaseAfter, type HeldLock } from './lock.js';
import { describeAbortedBackups, removeUnfinishedWrites } from './leftovers.js';
import { isPermissionRefused } from '../storage/storage.js';
import { RACY_WINDOW_MS, chooseReference, type ReferenceChoice, countChanges, emptiedSince, emptySources, planBackup, type BackupPlan, type PlannedEntry } from './backup-plan.js';
import { SMALL_FILE, SmallFileReader, type WholeFile } from './file-reader.js';
import { Sha256Offload, type OffloadedDigest } from './hash-offload.js';
import type { Repository } from './repository.js';
import { scanSource, type ScannedEntry, type ScannedSource, type SourceSpec } from './scan.js';
import { VolumeSink } from './volume-sink.js';
import { DEFAULT_TRANSFERS } from './pool.js';
import { ZERO_FILL, type TarVolumeWriter } from '../format/tar.js';
import { ContentTwins } from './content-twins.js';
import { ProbeCollector, readProbe } from '../format/probe.js';
import { sha256OfFile } from '../format/checksum.js';
import { knownChecks, recordedFindings, validateSources, withModel } from '../model/sources.js';
import type { KnownCheck, ValidationResult } from '../model/validate.js';
import type { ModelInfo } from '../model/types.js';
import { isGoneAsFile, openRegularFile, type OpenedFile } from '../format/durable.js';

export interface BackupOptions {
  sources: SourceSpec[];
  /**
   * With dryRun: serving-state sources (SQLite, command) left uncaptured, since a dump may take an
   * hour. The result names them; their files in the reference are not counted as removed.
   */
  notCaptured?: UncapturedState[];
  type: BackupType;
  excludes?: string[];
  tags?: Record<string, string>;
  dryRun?: boolean;
  /** Warnings (files changed while read, escaping links, unreadable files) fail the backup. */
  strict?: boolean;
  /** Warnings of the capture of serving state before the backup (an empty SQLite database), already reported: counted and recorded with its own. */
  captureWarnings?: Notice[];
  /** Back up a source of files that is empty although the newest point held files in it. */
  allowEmpty?: boolean;
  /** The deployment the point belongs to (default: `default`); references are taken within it. */
  deployment?: string;
  signal?: AbortSignal;
  reporter?: Reporter;
  /** A lock not refreshed for this long is stale and taken over (default: the lock's own lease). */
  lockStaleAfterMs?: number;
  /** How long to wait for the lock while another live process holds it (default: not at all, exit 4). */
  lockRetryMs?: number;
  /**
   * The repository lock, when the caller took it first (to run the pre-backup hook and capture
   * serving state under it); the backup then neither takes nor releases it.
   */
  lock?: HeldLock;
  /** Volume uploads in flight at once. */
  concurrency?: number;
  volumeSize?: number;
  now?: () => Date;
}

/** A serving-state source a dry run would capture: `origin` is the database or the command line. */
export interface UncapturedState {
  name: string;
  kind: 'sqlite' | 'command';
  origin: string;
}

export interface BackupResult {
  id: string;
  type: BackupType;
  requestedType: BackupType;
  parent: string | null;
  deployment: string;
  files: number;
  bytes: number;
  added: number;
  changed: number;
  removed: number;
  storedBytes: number;
  durationMs: number;
  dryRun: boolean;
  warnings: Notice[];
  /** A dry run's serving-state sources, which it does not capture. */
  wouldCapture?: UncapturedState[];
}

/** How often a file that keeps changing while it is read is read again. */
const READ_ATTEMPTS = 3;
/**
 * A larger file that changed while it was read (a log being appended, a
 * checkpoint still being written) is kept as read: each further reading would
 * store its whole size again and would most likely be torn too.
 */
const READ_AGAIN_MAX_BYTES = 64 << 20;

/**
 * Takes one backup point: lock → clean leftovers → choose the reference →
 * scan → plan → store new and changed files in tar volumes → commit the
 * manifest last. Nothing is visible until that final write.
 */
export async function backup(repo: Repository, options: BackupOptions): Promise<BackupResult> {
  const started = Date.now();
  const now = options.now ?? (() => new Date());
  const reporter = options.reporter ?? {};
  const warnings: Notice[] = [...(options.captureWarnings ?? [])];
  const warn = (n: Omit<Notice, 'level'>) => {
    const notice: Notice = { level: 'warning', ...n };
    warnings.push(notice);
    reporter.notice?.(notice);
  };
  // Leftovers of aborted backups this one may not remove: warnings of the run, not of the point (not recorded in
  // its manifest, nor refused by --strict), since the point is whole.
  const kept: Notice[] = [];
  const deployment = options.deployment ?? DEFAULT_DEPLOYMENT;
  checkDeploymentName(deployment);
  const notCaptured = options.dryRun ? (options.notCaptured ?? []) : [];
  checkBackupSources([...options.sources, ...notCaptured]);

  const startedAt = now();
  const lock = options.dryRun ? undefined : (options.lock ?? (await acquireWriterLock(repo.storage, 'backup', options, reporter)));
  const run: BackupRun = { repo, options, reporter, warnings, warn, deployment, notCaptured, started, startedAt, now, lock, leftoversRemoved: Promise.resolve() };
  let failed = true;
  try {
    // Leftovers of aborted backups are listed and removed while this one scans; they must be gone
    // before it writes, since its own volumes have no manifest yet either.
    if (lock) run.leftoversRemoved = removeLeftovers(repo, reporter, lock, (n) => kept.push(n));
    run.leftoversRemoved.catch(() => undefined);

    const taken = await takePoint(run);
    if (!taken.manifest) return taken.result;
    const { result, manifest, deploymentsRecorded, storedBytes } = taken;
    // A backup whose lock was taken over (it was paused for longer than the other's staleness threshold) may have had
    // its volumes removed as leftovers by the new holder: it commits nothing. The last look is taken once the manifest
    // is stored, just before it becomes visible.
    await lock!.check();
    try {
      // Recorded before the point exists, so the record never lacks a deployment that has points.
      await repo.recordDeployments({ adding: deployment }, deploymentsRecorded);
      await repo.commitManifest(manifest, { beforeVisible: () => lock!.check() });
    } catch (err) {
      // Past the estimate (very long names): the document would be longer than a string can be, and could not be read.
      if (err instanceof RangeError) throw manifestTooLarge(manifest.entries.length);
      throw err;
    }
    await committedUnderLock(lock!, manifest.id);
    warnings.push(...kept);
    result.storedBytes = storedBytes;
    result.durationMs = Date.now() - started;
    failed = false;
    return result;
  } catch (err) {
    const { sink, id } = run;
    if (sink && id) {
      sink.abort(err instanceof Error ? err : new Error(String(err)));
      await sink.settle();
      // Leftovers the deletion misses are found and removed by the next backup.
      await deletePrefix(repo, keys.pointData(id)).catch(() => undefined);
    }
    // A new holder removes the writes in progress of the one it took over from, which then fail: the lost lock is the cause to report.
    if (lock && !(err instanceof LockLostError) && !(err instanceof InterruptedError)) throw (await lostLock(lock)) ?? err;
    throw err;
  } finally {
    await run.hasher?.close();
    // The lock covers the removal too, even when the backup failed before waiting for it.
    await run.leftoversRemoved.catch(() => undefined);
    if (lock !== options.lock) await releaseAfter(lock, failed);
  }
}

/** What a backup's steps share, and what its end (committing, or cleaning up after a failure) needs of them. */
interface BackupRun {
  repo: Repository;
  options: BackupOptions;
  reporter: Reporter;
  warnings: Notice[];
  warn: (n: Omit<Notice, 'level'>) => void;
  deployment: string;
  notCaptured: UncapturedState[];
  started: number;
  startedAt: Date;
  now: () => Date;
  lock: HeldLock | undefined;
  leftoversRemoved: Promise<void>;
  sink?: VolumeSink;
  hasher?: Sha256Offload;
  id?: string;
}

/**
 * Everything of a backup up to its manifest: the reference, the scan, the plan, the
 * files stored. A dry run ends here, with its result. The scan, the plan and the
 * reference are the most memory a point of many files takes (100,000 files: some
 * 70 MB): they go with this function's return, before the manifest is serialised.
 */
async function takePoint(run: BackupRun): Promise<{ result: BackupResult; manifest?: undefined } | { result: BackupResult; manifest: Manifest; deploymentsRecorded: Promise<string[] | undefined>; storedBytes: number }> {
  const { repo, options, reporter, warnings, warn, deployment, notCaptured, started, startedAt, now } = run;
  const ids = await repo.pointIds();
  // The record of deployments, which the commit may extend, is read while the sources are scanned.
  const deploymentsRecorded = repo.recordedDeployments();
  deploymentsRecorded.catch(() => undefined);
  // So is the reference chosen, and its manifest read and checked: one waits on the disk while the other computes.
  const referenceRead = readReference(repo, ids, options.type, deployment, deploymentsRecorded);
  referenceRead.catch(() => undefined);

  const scanned: ScannedSource[] = [];
  // A local repository inside a source would be backed up into itself, growing with every backup.
  const leaveOut = new Set<string>();
  const repoDir = path.isAbsolute(repo.storage.location) ? await fsp.stat(repo.storage.location).catch(() => undefined) : undefined;
  if (repoDir) leaveOut.add(`${repoDir.dev}:${repoDir.ino}`);
  for (const spec of options.sources) {
    scanned.push(await scanSource(spec, excludesOf(spec, options), { ...reporter, notice: (n) => (n.level === 'warning' ? warn(n) : reporter.notice?.(n)) }, options.signal, leaveOut));
  }
  const { choice, newest, reference, after = newest?.id } = await referenceRead;
  // Against this deployment's newest point: another deployment's host whose clock runs ahead is no reason to move this one's ids.
  const clockBehind = clockBehindNotice(after, startedAt);
  if (clockBehind) warn(clockBehind);
  if (choice.fallbackReason) reporter.notice?.({ level: 'info', code: 'type-fallback', message: choice.fallbackReason });
  if (reference && options.deployment === undefined && reference.host !== os.hostname()) {
    // Most often a host that took over after a failover; but two hosts sharing a repository unnamed build on each other's points.
    reporter.notice?.({
      level: 'info',
      code: 'other-host',
      message: `this ${choice.type} builds on ${reference.id}, taken on host ${reference.host}; if this host backs up another deployment, name each with --deployment so their backups stay apart`,
    });
  }
  if (!options.allowEmpty) await refuseEmptied(repo, scanned, newest?.id, reference);
  const allEntries = scanned.flatMap((s) => s.entries);
  const captured = capturedSources(scanned.map((s) => ({ name: s.spec.name, kind: s.spec.kind })));
  const plan = planBackup(allEntries, reference);
  if (estimateManifestChars(allEntries) > MAX_MANIFEST_CHARS) throw manifestTooLarge(allEntries.length);
  // The hashing thread takes tens of milliseconds to start: started now, it is ready when the first large file is read.
  if (!options.dryRun && plan.entries.some((p) => p.action !== 'reuse' && p.scanned.type === 'file' && p.scanned.size > SMALL_FILE)) {
    run.hasher = new Sha256Offload();
  }
  // Model files are checked on the source (headers only): a model that would not load is a warning, a failure with --strict.
  // The checks mostly wait on small reads, so they run beside the storing unless --strict must refuse before it.
  const modelCheck = unchangedFiles(plan, reference) ? Promise.resolve(modelsOf(reference!)) : validateSources(scanned, options.signal, reusableChecks(plan, reference));
  modelCheck.catch(() => undefined);
  const modelsChecked = async (): Promise<ValidationResult> => {
    const models = await modelCheck;
    for (const f of models.findings) warn({ code: 'model-invalid', path: f.path, message: `${f.format}: ${f.reason}` });
    return models;
  };
  let models: ValidationResult | undefined;
  if (options.strict || options.dryRun) {
    models = await modelsChecked();
    if (options.strict && models.findings.length > 0) {
      throw new IntegrityError(`backup refused by --strict: ${models.findings.length} model problem(s), first: ${models.findings[0]!.path}: ${models.findings[0]!.reason}`);
    }
  }
  const totalBytes = allEntries.reduce((n, e) => n + (e.type === 'file' ? e.size : 0), 0);
  const fileCount = allEntries.filter((e) => e.type === 'file').length;

  const id = (run.id = await uniquePointId(repo, ids, after, startedAt, choice.type));
  const result: BackupResult = {
    id,
    type: choice.type,
    requestedType: options.type,
    parent: reference?.id ?? null,
    deployment,
    files: fileCount,
    bytes: totalBytes,
    added: 0,
    changed: 0,
    removed: 0,
    storedBytes: 0,
    durationMs: 0,
    dryRun: options.dryRun === true,
    warnings,
  };
  if (options.dryRun) {
    // A file its stat alone cannot clear (racy, copied, its change time moved) is read and compared,
    // as the backup would: else a dry run right after a backup reports what the backup then does not store.
    const guessed: ManifestEntry[] = [];
    let wouldStore = 0;
    // Other names of one file are links to its first, as the backup records them: else each would count as changed.
    const names = new Map<string, ManifestEntry>();
    for (const p of plan.entries) {
      throwIfAborted(options.signal);
      const first = earlierName(p.scanned, names);
      if (first) {
        guessed.push(linkedTo(first, p.scanned));
        continue;
      }
      const entry = plannedAsEntry(p);
      if (p.action === 'verify' && (await sameContent(p.scanned.abs, p.basis!))) withContent(entry, p.basis!.sha256!, p.basis!.ref!);
      else if (p.action !== 'reuse') wouldStore += p.scanned.size;
      remember(p.scanned, entry, names);
      guessed.push(entry);
    }
    Object.assign(result, countChanges(guessed, reference, plan.referenceByPath, captured));
    // State that is not captured is not known to be gone.
    const uncaptured = new Set(notCaptured.map((s) => s.name));
    for (const e of reference?.entries ?? []) if (e.type !== 'dir' && uncaptured.has(e.source)) result.removed--;
    result.wouldCapture = notCaptured;
    result.storedBytes = wouldStore;
    result.durationMs = Date.now() - started;
    return { result };
  }

  await run.leftoversRemoved;
  const sink = (run.sink = new VolumeSink(repo.storage, id, options.volumeSize ?? repo.config.volumeSize, options.concurrency ?? DEFAULT_TRANSFERS, options.signal));
  const small = plan.entries.flatMap((p, position) =>
    p.scanned.type === 'file' && p.action !== 'reuse' && p.scanned.size <= SMALL_FILE ? [{ position, path: p.scanned.abs, size: p.scanned.size }] : [],
  );
  const context: StoreContext = {
    pointId: id,
    // Started on first use: a backup that reads no large file (most incrementals) never waits for the thread.
    hasher: () => (run.hasher ??= new Sha256Offload()),
    sink,
    smallFiles: new SmallFileReader(small),
    progress: { phase: 'backup', filesDone: 0, filesTotal: plan.filesToRead, bytesDone: 0, bytesTotal: plan.bytesToRead },
    reporter,
    warn,
    superseded: [],
    hardLinks: new Map(),
    twins: new ContentTwins(reference),
    signal: options.signal,
  };
  const stored: ManifestEntry[] = [];
  for (const [position, planned] of plan.entries.entries()) {
    throwIfAborted(options.signal);
    run.lock?.throwIfLost();
    const entry = await storeEntry(planned, position, context);
    if (entry) stored.push(entry);
  }
  const volumes = await sink.finish();
  throwIfAborted(options.signal);
  const { recognised } = models ?? (await modelsChecked());
  const entries = stored.map((entry) => withModel(entry, recognised));

  if (options.strict && warnings.length > 0) {
    throw new IntegrityError(`backup refused by --strict: ${warnings.length} warning(s), first: ${warnings[0]!.path ?? ''} ${warnings[0]!.message}`);
  }
  const storedBytes = volumes.reduce((n, v) => n + v.size, 0);
  const counts = countChanges(entries, reference, plan.referenceByPath, captured);
  // As stored: files that vanished, or could not be read, since the scan are not in the point; others changed size.
  const files = entries.filter((e) => e.type === 'file');
  const storedFiles = { files: files.length, bytes: files.reduce((n, e) => n + e.size, 0) };
  Object.assign(result, counts, storedFiles);
  const manifest: Manifest = {
    format: MANIFEST_FORMAT,
    id,
    type: choice.type,
    parent: reference?.id ?? null,
    full: reference ? reference.full : id,
    startedAt: startedAt.toISOString(),
    completedAt: now().toISOString(),
    ...(options.deployment !== undefined ? { deployment: options.deployment } : {}),
    host: os.hostname(),
    tags: options.tags ?? {},
    sources: scanned.map((s) => ({
      name: s.spec.name,
      kind: s.spec.kind ?? 'files',
      path: s.spec.origin ?? s.root,
      ...(s.spec.restore ? { restore: s.spec.restore } : {}),
      mode: s.mode,
      mtimeNs: s.mtimeNs,
      uid: s.uid,
      gid: s.gid,
      exclude: [...excludesOf(s.spec, options)],
    })),
    volumes,
    entries,
    ...(context.superseded.length > 0 ? { superseded: context.superseded } : {}),
    stats: { ...storedFiles, ...counts, storedBytes },
    warnings: warnings.map((w) => ({ code: w.code, path: w.path, message: w.message })),
    owners: ownerNames(scanned),
  };
  return { result, manifest, deploymentsRecorded, storedBytes };
}

/**
 * Exclude patterns leave out paths of directory sources only: a captured SQLite copy or command
 * output (named after its source, `registry.db`) left out by a pattern such as `*.db` would make
 * a point without the serving state it was configured to hold.
 */
function excludesOf(spec: SourceSpec, options: BackupOptions): readonly string[] {
  return (spec.kind ?? 'files') === 'files' ? (options.excludes ?? []) : [];
}

/** Refuses sources that could not make a point (none at all, a name given twice or not usable): before the lock is taken, a hook run or state captured. */
export function checkBackupSources(sources: readonly Pick<SourceSpec, 'name'>[]): void {
  const seenNames = new Set<string>();
  for (const s of sources) {
    checkSourceName(s.name);
    if (seenNames.has(s.name)) throw new UsageError(`source name ${s.name} is given twice; name sources with --source NAME=PATH`);
    seenNames.add(s.name);
  }
  if (sources.length === 0) {
    throw new UsageError('nothing to back up: give paths, --source NAME=PATH, or sources in the config file');
  }
}

/**
 * Chooses the reference and reads its manifest. In a repository of one
 * deployment an incr's reference is the newest point: its manifest is read at
 * once. Where the record of deployments names others, the newest point may be
 * another's, whose manifest (as large as its tree) is not read for nothing:
 * the summaries say which point is this deployment's newest.
 */
async function readReference(
  repo: Repository,
  ids: readonly string[],
  requested: BackupType,
  deployment: string,
  deploymentsRecorded: Promise<string[] | undefined>,
): Promise<{ choice: ReferenceChoice; newest?: Pick<PointSummary, 'id' | 'full'>; reference?: Manifest; after?: string }> {
  const newestId = ids[ids.length - 1];
  const names = requested === 'incr' && newestId ? await deploymentsRecorded.catch(() => undefined) : undefined;
  const othersRecorded = names !== undefined && names.some((name) => name !== deployment);
  if (requested === 'incr' && newestId && !othersRecorded) {
    // Another deployment's newest point, damaged or missing, is no reason to stop this one: the summaries say whose it is.
    const latest = await referenceManifest(repo, newestId, requested).catch(() => undefined);
    if (latest && deploymentOf(latest) === deployment) return { choice: chooseReference(latest, requested, deployment, true), newest: latest, reference: latest };
  }
  let newest: PointSummary | undefined;
  try {
    newest = await repo.newestOf(deployment, ids);
  } catch (err) {
    // A point whose summary and manifest both cannot be read may be this deployment's newest: an incremental or a
    // differential cannot tell what it would build on, but a full needs no earlier point and is not stopped by it.
    if (!(err instanceof IntegrityError)) throw err;
    if (requested === 'full') return { choice: chooseReference(undefined, 'full', deployment, true), after: await newestUnreadable(repo, deployment) };
    throw new IntegrityError(`this ${requested} backup cannot tell which point it builds on: ${err.message}`, { cause: err, hint: FULL_BACKUP_HINT });
  }
  // Only for the notice: a repository whose names cannot all be read is still backed up to.
  const otherNames = !newest && ids.length > 0 ? await repo.deploymentNames().catch(() => []) : [];
  const choice = chooseReference(newest, requested, deployment, ids.length > 0, otherNames);
  return { choice, newest, reference: choice.referenceId ? await referenceManifest(repo, choice.referenceId, requested) : undefined };
}

/**
 * The newest point that cannot be read and is newer than every point of `deployment`: it may be this
 * deployment's newest. A full taken on a host whose clock is behind it gets an id after it, as after any
 * newest point; with an earlier id, `latest` would still stop on the damaged point, and every backup
 * after the full that was to get past it.
 */
async function newestUnreadable(repo: Repository, deployment: string): Promise<string | undefined> {
  const { summaries, unreadable } = await repo.readSummaries();
  const ours = summaries.filter((s) => deploymentOf(s) === deployment).at(-1);
  return unreadable.filter((u) => ours === undefined || u.id > ours.id).at(-1)?.id;
}

const FULL_BACKUP_HINT = 'take a full backup, which needs no earlier point: lifeboat backup --type full; lifeboat verify shows what is damaged';

/**
 * The manifest an incremental or differential builds on. One that is damaged or missing stops it
 * (exit 3), and says what still works: a full backup needs no earlier point.
 */
async function referenceManifest(repo: Repository, id: string, requested: BackupType): Promise<Manifest> {
  try {
    // Not kept by the repository: the backup lets go of it before it writes its own manifest.
    return await repo.loadManifest(id);
  } catch (err) {
    if (!(err instanceof IntegrityError)) throw err;
    throw new IntegrityError(`this ${requested} backup builds on ${id}, whose manifest cannot be read: ${err.message}`, { cause: err, hint: FULL_BACKUP_HINT });
  }
}

/**
 * A source that held files in the newest point and holds none now is most
 * often a volume that did not mount: such a point would record the deployment
 * as gone, and retention would in time keep only points like it.
 */
async function refuseEmptied(repo: Repository, scanned: readonly ScannedSource[], latestId: string | undefined, reference: Manifest | undefined): Promise<void> {
  const empty = emptySources(scanned);
  if (!empty.length || !latestId) return;
  const latest = reference?.id === latestId ? reference : await repo.manifest(latestId);
  const emptied = emptiedSince(empty, latest);
  if (!emptied.length) return;
  const { source, held } = emptied[0]!;
  const others = emptied.length > 1 ? ` (and ${emptied.slice(1).map((e) => e.source.spec.name).join(', ')})` : '';
  throw new RuntimeFailure(`source ${source.spec.name} is empty${others}: ${quoteName(source.root)} holds no files, where the newest point ${latestId} has ${held === 1 ? '1 file' : `${held} files`}; is a volume not mounted?`, {
    hint: 'nothing was stored; if the source is meant to be empty now, run again with --allow-empty',
  });
}

/** The names this host gives the owners and groups of the scanned sources and entries. */
function ownerNames(scanned: readonly ScannedSource[]): NonNullable<Manifest['owners']> {
  const uids = new Set<number>();
  const gids = new Set<number>();
  for (const s of scanned) {
    uids.add(s.uid);
    gids.add(s.gid);
    for (const e of s.entries) {
      uids.add(e.uid);
      gids.add(e.gid);
    }
  }
  const accounts = localAccounts();
  return { users: namesOf(uids, accounts.users), groups: namesOf(gids, accounts.groups) };
}

/** Every file is the reference's, unread and unchanged: what it recognised still holds. */
function unchangedFiles(plan: BackupPlan, reference: Manifest | undefined): boolean {
  if (!reference) return false;
  const files = plan.entries.filter((p) => p.scanned.type === 'file');
  return files.every((p) => p.action === 'reuse') && files.length === reference.entries.filter((e) => e.type === 'file').length;
}

/**
 * The model validation result recorded by a point: what its entries were
 * recognised as, and the problems it warned about, so an incremental backup of
 * an unchanged deployment costs one stat per file and no header reads.
 */
function modelsOf(reference: Manifest): ValidationResult {
  const recognised = new Map<string, ModelInfo>();
  for (const e of reference.entries) if (e.model) recognised.set(volumeEntryName(e.source, e.path), e.model as ModelInfo);
  return { findings: recordedFindings(reference.warnings), recognised };
}

/**
 * Model checks of the reference that still hold: for files the plan reuses
 * unread, given every file that is new, changed or gone since.
 */
function reusableChecks(plan: BackupPlan, reference: Manifest | undefined): Map<string, KnownCheck> | undefined {
  if (!reference) return undefined;
  const unchanged = new Set<string>();
  const changed: string[] = [];
  const present = new Set<string>();
  for (const p of plan.entries) {
    const name = volumeEntryName(p.scanned.source, p.scanned.path);
    present.add(name);
    if (p.scanned.type === 'file' && p.action === 'reuse') unchanged.add(name);
    else if (p.scanned.type !== 'dir') changed.push(name);
  }
  for (const e of reference.entries) {
    const name = volumeEntryName(e.source, e.path);
    if (e.type !== 'dir' && !present.has(name)) changed.push(name);
  }
  return knownChecks(reference, unchanged, changed);
}

/**
 * Points are ordered by the time in their ids. A clock behind the newest
 * point's of the deployment (a host restored from a snapshot, NTP not yet synced; or the newest
 * point's host ran ahead) would give the new point an earlier id: it would not
 * be the latest, and the next incr would build on the wrong point. Its id is
 * set just after the newest instead (uniquePointId), with this warning.
 * Other deployments' points are not ordered with this one's: `latest`, references and retention stay within one.
 */
function clockBehindNotice(newest: string | undefined, now: Date): Omit<Notice, 'level'> | undefined {
  if (!newest || pointTime(newest) <= now.getTime()) return undefined;
  return {
    code: 'clock-behind',
    message: `this host's clock says ${now.toISOString()}, before the newest point ${newest} (started ${new Date(pointTime(newest)).toISOString()}); the new point's id is set just after it, to keep points in the order they were taken. Check the clocks (timedatectl, NTP)`,
  };
}

/** An id at `at`, or just after `newest` (the deployment's newest point) when that is later, and no other point's. */
async function uniquePointId(repo: Repository, ids: readonly string[], newest: string | undefined, at: Date, type: BackupType): Promise<string> {
  const taken = new Set(ids);
  let t = Math.max(at.getTime(), newest ? pointTime(newest) + 1 : 0);
  // Two backups in the same millisecond (tests, scripts) get distinct ids.
  while (taken.has(makePointId(new Date(t), type)) || (await repo.storage.head(keys.volume(makePointId(new Date(t), type), 0)))) t++;
  return makePointId(new Date(t), type);
}

async function deletePrefix(repo: Repository, prefix: string): Promise<void> {
  const found: string[] = [];
  for await (const { key } of repo.storage.list(prefix)) found.push(key);
  if (found.length) await repo.storage.delete(found);
}

function manifestTooLarge(entries: number): UsageError {
  return new UsageError(`a point of ${entries} files and directories needs a larger manifest than one can be (about 1.2 million entries)`, {
    hint: 'leave out what need not be restored (--exclude, e.g. logs), or back the sources up as points of their own, each in its repository',
  });
}

/**
 * The lock was still this backup's after its manifest went up; if it was taken
 * over in the instant before, the new holder may have removed the volumes as
 * leftovers of an aborted backup while it listed the points, so the point is
 * reported rather than trusted. A look that cannot be taken changes nothing.
 */
async function committedUnderLock(lock: HeldLock, id: string): Promise<void> {
  const lost = await lostLock(lock);
  if (lost) {
    throw new LockLostError(`backup point ${id} was committed, but ${lost.message}`, {
      hint: `another writer may have removed its data as leftovers meanwhile: check it with \`lifeboat verify ${id}\``,
    });
  }
}

/** The error that says the lock was lost, when it was; undefined when it is still held or cannot be read. */
async function lostLock(lock: HeldLock): Promise<LockLostError | undefined> {
  return lock.check().then(
    () => undefined,
    (err: unknown) => (err instanceof LockLostError ? err : undefined),
  );
}

/**
 * Removes what backups that never committed left (killed, crashed), and
 * writes summaries older points lack. Needs the lock, and looks again that it
 * still has it before each deletion: a backup that lost its lock while it was
 * paused must not take the new holder's volumes for leftovers.
 */
export async function removeLeftovers(repo: Repository, reporter: Reporter, lock: HeldLock, onKept: (warning: Notice) => void): Promise<void> {
  // Listed once for both kinds of leftovers: on S3 each listing is a request.
  const committed = new Set(await repo.pointIds());
  // Credentials that may not delete (kept from deleting backups on purpose) leave the leftovers where they are,
  // and this backup goes on: its own volumes are under a new point's prefix, which no leftover shares.
  let refused = false;
  const removing = async (what: string, remove: () => Promise<unknown>): Promise<boolean> => {
    await lock.check();
    try {
      await remove();
      return true;
    } catch (err) {
      if (!isPermissionRefused(err)) throw err;
      refused = true;
      const warning: Notice = {
        level: 'warning',
        code: 'leftovers-kept',
        message: `could not remove ${what} (${errorMessage(err)}): the storage does not let this backup delete; they stay until a backup or prune that may delete (on S3, s3:DeleteObject and s3:AbortMultipartUpload) removes them`,
      };
      onKept(warning);
      reporter.notice?.(warning);
      return false;
    }
  };
  // Removed one aborted backup at a time (the lock looked at before each), said in one line however many there were.
  const removed: Awaited<ReturnType<Repository['orphanDataPrefixes']>> = [];
  for (const orphan of await repo.orphanDataPrefixes(committed)) {
    if (refused) break;
    if (await removing(describeAbortedBackups([orphan]), () => repo.storage.delete(orphan.keys))) removed.push(orphan);
  }
  if (removed.length > 0) reporter.notice?.({ level: 'info', code: 'leftovers-removed', message: `removed ${describeAbortedBackups(removed)}` });
  const summaries = await repo.summaryGaps(committed);
  if (summaries.orphans.length > 0 && !refused) await removing(`the summaries of ${summaries.orphans.length} removed point(s)`, () => repo.storage.delete(summaries.orphans));
  // Points written before summaries existed get theirs, once, so that list and prune need not read their manifests again.
  for (const id of summaries.missing) {
    const manifest = await repo.loadManifest(id).catch(() => undefined);
    if (manifest) await repo.writeSummary(manifest);
  }
  await removing('writes that never finished', () => removeUnfinishedWrites(repo, reporter));
}

function mtimeDate(ns: string): Date {
  return new Date(Number(BigInt(ns) / 1_000_000n));
}

const PROGRESS_EVERY_BYTES = 8 << 20;

interface StoreContext {
  pointId: string;
  hasher: () => Sha256Offload;
  sink: VolumeSink;
  smallFiles: SmallFileReader;
  progress: Progress;
  reporter: Reporter;
  warn: (n: Omit<Notice, 'level'>) => void;
  /** Stored copies of files read again because they changed while being read. */
  superseded: NonNullable<Manifest['superseded']>;
  /** The first entry of each file with several names in this point, by device and inode. */
  hardLinks: Map<string, ManifestEntry>;
  /** Content already stored, for files new under their name. */
  twins: ContentTwins;
  signal?: AbortSignal;
}

function baseEntry(s: ScannedEntry): ManifestEntry {
  const base: ManifestEntry = { source: s.source, path: s.path, type: s.type, mode: s.mode, mtimeNs: s.mtimeNs, size: s.size, uid: s.uid, gid: s.gid };
  if (s.type === 'file') {
    base.ino = s.ino;
    base.ctimeNs = s.ctimeNs;
  }
  if (s.type === 'symlink') base.target = s.target;
  return base;
}

/** Whether a file still holds what its recorded entry says; a file that cannot be read is taken as changed. */
async function sameContent(file: string, recorded: ManifestEntry): Promise<boolean> {
  const digest = await sha256OfFile(file).catch(() => undefined);
  return digest === recorded.sha256;
}

/** What the manifest entry would be if every file read matched its plan (for --dry-run). */
function plannedAsEntry(p: PlannedEntry): ManifestEntry {
  const base = baseEntry(p.scanned);
  if (p.scanned.type !== 'file') return base;
  if (p.action === 'reuse') withContent(base, p.basis!.sha256, p.basis!.ref);
  return base;
}

/** One file's content as read: its bytes' digest and the stat around the read. */
interface ReadOutcome {
  sha256: string;
  size: number;
  mode: number;
  mtimeNs: string;
  ctimeNs: string;
  ino: string;
  torn: boolean;
}

function outcomeOf(before: BigIntStats, after: BigIntStats, read: number, sha256: string): ReadOutcome {
  const size = Number(before.size);
  return {
    sha256,
    size,
    mode: Number(before.mode & 0o7777n),
    mtimeNs: before.mtimeNs.toString(),
    ctimeNs: before.ctimeNs.toString(),
    ino: before.ino.toString(),
    torn: read !== size || after.size !== before.size || after.mtimeNs !== before.mtimeNs,
  };
}

function unchangedFrom(prev: ManifestEntry | undefined, o: ReadOutcome): prev is ManifestEntry {
  return prev !== undefined && !o.torn && prev.sha256 === o.sha256 && prev.size === o.size && prev.ref !== undefined;
}

async function storeEntry(planned: PlannedEntry, position: number, ctx: StoreContext): Promise<ManifestEntry | undefined> {
  const s = planned.scanned;
  if (s.type !== 'file' || s.nlink < 2) return storeOwnEntry(planned, position, ctx);
  // Another name of a file already in this point is recorded as a link to it, and not read or stored again.
  const first = earlierName(s, ctx.hardLinks);
  if (first) {
    if (planned.action !== 'reuse') {
      // Counted among the files to read when the plan was made.
      ctx.progress.filesDone++;
      ctx.progress.bytesDone += s.size;
    }
    return linkedTo(first, s);
  }
  const entry = await storeOwnEntry(planned, position, ctx);
  if (entry) remember(s, entry, ctx.hardLinks);
  return entry;
}

/** The entry of this point's first name of a file that `s` is another name of (a hard link), if any. */
function earlierName(s: ScannedEntry, names: Map<string, ManifestEntry>): ManifestEntry | undefined {
  if (s.type !== 'file' || s.nlink < 2) return undefined;
  const first = names.get(`${s.dev}:${s.ino}`);
  return first && first.source === s.source && first.size === s.size && first.mtimeNs === s.mtimeNs ? first : undefined;
}

/** Keeps a file's entry as its first name, which its other names link to. */
function remember(s: ScannedEntry, entry: ManifestEntry, names: Map<string, ManifestEntry>): void {
  const inode = `${s.dev}:${s.ino}`;
  if (s.type === 'file' && s.nlink >= 2 && !names.has(inode)) names.set(inode, entry);
}

function linkedTo(first: ManifestEntry, s: ScannedEntry): ManifestEntry {
  // One file has one mode and owner: those its first name was seen with, even if a chmod or chown came between the
  // looks at its names. Restored as one file, its names could not be given two; the next backup sees the change.
  const entry = withContent({ ...baseEntry(s), mode: first.mode, uid: first.uid, gid: first.gid, ctimeNs: first.ctimeNs }, first.sha256, first.ref);
  entry.link = first.path;
  return entry;
}

async function storeOwnEntry(planned: PlannedEntry, position: number, ctx: StoreContext): Promise<ManifestEntry | undefined> {
  const s = planned.scanned;
  const name = volumeEntryName(s.source, s.path);
  if (s.type !== 'file') {
    if (planned.inVolume) {
      const { writer } = await ctx.sink.current();
      await writer.header({ name, type: s.type === 'dir' ? 'Directory' : 'SymbolicLink', size: 0, mode: s.mode, mtime: mtimeDate(s.mtimeNs), uid: s.uid, gid: s.gid, linkpath: s.target });
    }
    return baseEntry(s);
  }
  if (planned.action === 'reuse') return withContent(baseEntry(s), planned.basis!.sha256, planned.basis!.ref, planned.basis!.probe);

  const whole = ctx.smallFiles.take(position);
  if (!whole && planned.action === 'store') planned = await withLargeTwin(planned, ctx);
  for (let attempt = 1; ; attempt++) {
    let stored: Stored | 'vanished' | ReadDenied;
    if (whole && attempt === 1) {
      const read = await whole.catch(deniedOrThrow);
      stored = read instanceof ReadDenied ? read : await storeWholeFile(read, planned, name, ctx);
    } else stored = await storeFileOnce(planned, name, ctx, attempt);
    if (stored === 'vanished') {
      ctx.warn({ code: 'file-vanished', path: name, message: 'file disappeared before it could be read; not in this point' });
      return undefined;
    }
    if (stored instanceof ReadDenied) {
      ctx.warn({ code: 'unreadable', path: name, message: `cannot read: ${stored.reason}; not in this point` });
      return undefined;
    }
    const entry = baseEntry(s);
    entry.size = stored.size;
    entry.mode = stored.mode;
    // The scan's strings are kept where the file is as it was scanned (as most are): the read's
    // are copies, which 100,000 files' manifest would hold besides the scan's (some 10 MB).
    if (stored.mtimeNs !== entry.mtimeNs) entry.mtimeNs = stored.mtimeNs;
    if (stored.ctimeNs !== entry.ctimeNs) entry.ctimeNs = stored.ctimeNs;
    if (stored.ino !== entry.ino) entry.ino = stored.ino;
    withContent(entry, stored.sha256, stored.ref, stored.probe);
    const tooLargeToReadAgain = stored.size > READ_AGAIN_MAX_BYTES;
    if (!stored.torn || attempt >= READ_ATTEMPTS || tooLargeToReadAgain) {
      if (stored.torn) {
        const why = attempt > 1 ? `kept changing while it was read (${attempt} attempts)` : `changed while it was read (${formatBytes(stored.size)}, too large to read again)`;
        ctx.warn({ code: 'file-changed-during-read', path: name, message: `file ${why}; the stored copy may be inconsistent` });
      } else if (stored.ref.point === ctx.pointId) {
        ctx.twins.add(entry);
      }
      ctx.progress.filesDone++;
      // A large file reported as it was read; thousands of small ones would otherwise show none for minutes.
      if (whole) ctx.reporter.progress?.(progressAt(ctx.progress, name));
      return entry;
    }
    if (stored.ref.point === ctx.pointId) ctx.superseded.push({ volume: stored.ref.volume, entry: stored.ref.entry, size: stored.size, sha256: stored.sha256 });
  }
}

type Stored = ReadOutcome & { ref: ContentRef; probe?: string };

/**
 * A file this process may not read (another user's, or of mode 000): it is
 * left out with a warning, as a file that cannot be stat'ed is, rather than
 * failing the whole backup. Only the opening and reading of the source file
 * count: a repository that refuses a write is a failure.
 */
class ReadDenied {
  constructor(readonly reason: string) {}
}

function isReadDenied(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'EACCES' || code === 'EPERM';
}

function deniedOrThrow(err: unknown): ReadDenied {
  if (isReadDenied(err)) return new ReadDenied(errorMessage(err));
  throw err;
}

function storedAs(o: ReadOutcome, ref: ContentRef, probe?: string): Stored {
  return { sha256: o.sha256, size: o.size, mode: o.mode, mtimeNs: o.mtimeNs, ctimeNs: o.ctimeNs, ino: o.ino, torn: o.torn, ref, probe };
}

/**
 * Completes a file's entry, made just before by baseEntry, with its content.
 * Properties are added to the entry rather than spread into a new one: Node 20's
 * V8 gives each object made as `{ ...entry, sha256, ref }` a hidden class of its
 * own, about 400 bytes apiece for a manifest's every file.
 */
function withContent(entry: ManifestEntry, sha256: string | undefined, ref: ContentRef | undefined, probe?: string): ManifestEntry {
  entry.sha256 = sha256;
  entry.ref = ref;
  if (probe !== undefined) entry.probe = probe;
  return entry;
}

/**
 * A large file new under its name (or changed there) whose size and probe match
 * a file already stored is read once to compare, and stored only if its bytes
 * differ: the 'verify' pass that racy files take, against that twin. One read
 * of 64 KiB settles most files, and none is read when no stored file has its size.
 */
async function withLargeTwin(planned: PlannedEntry, ctx: StoreContext): Promise<PlannedEntry> {
  const s = planned.scanned;
  if (s.size <= SMALL_FILE || !ctx.twins.mayHaveLargeTwin(s.size)) return planned;
  let probe: string | undefined;
  try {
    const { handle } = await openRegularFile(s.abs);
    try {
      probe = await readProbe(handle, s.size);
    } finally {
      await handle.close();
    }
  } catch {
    // Whatever went wrong is met again, and reported, when the file is read to be stored.
    return planned;
  }
  const twin = probe === undefined ? undefined : ctx.twins.largeCandidate(s.size, probe);
  return twin ? { ...planned, action: 'verify', basis: twin } : planned;
}

/** Archives a small file already read whole (or reuses its reference when it proves unchanged). */
async function storeWholeFile(whole: WholeFile | undefined, planned: PlannedEntry, name: string, ctx: StoreContext): Promise<Stored | 'vanished'> {
  if (!whole) return 'vanished';
  const { data, stats } = whole;
  const s = planned.scanned;
  const outcome = outcomeOf(stats, stats, data.length, createHash('sha256').update(data).digest('hex'));
  // There is no stat from just before the read: one that differs from the scan's, or a read that
  // found more than the scan saw, may mean the file changed while it was read.
  outcome.torn ||= data.length > s.size || outcome.size !== s.size || outcome.mtimeNs !== s.mtimeNs || outcome.ino !== s.ino;
  ctx.progress.bytesDone += data.length;
  if (planned.action === 'verify' && unchangedFrom(planned.basis, outcome)) return storedAs(outcome, planned.basis.ref!);
  const twin = outcome.torn ? undefined : ctx.twins.smallTwin(outcome.size, outcome.sha256);
  if (twin) return storedAs(outcome, twin.ref);
  const { writer, volume } = await ctx.sink.current();
  const { index, offset } = await writer.header({ name, type: 'File', size: outcome.size, mode: outcome.mode, mtime: mtimeDate(outcome.mtimeNs), uid: planned.scanned.uid, gid: planned.scanned.gid });
  const written = Math.min(data.length, outcome.size);
  await writer.body(data.subarray(0, written));
  await writer.endEntry(written, outcome.size);
  // A file that grew or shrank while it was read is stored cut or zero-filled to its size: the digest is of what is stored.
  if (data.length !== outcome.size) {
    outcome.sha256 = createHash('sha256').update(data.subarray(0, written)).update(Buffer.alloc(outcome.size - written)).digest('hex');
  }
  return storedAs(outcome, { point: ctx.pointId, volume, entry: index, offset });
}

/**
 * One streaming pass over one file: read → hash → append to the volume. For a
 * racy file on its first attempt, a hash-only pass comes first, and the file
 * is stored only if it differs from the reference.
 */
async function storeFileOnce(planned: PlannedEntry, name: string, ctx: StoreContext, attempt: number): Promise<Stored | 'vanished' | ReadDenied> {
  const s = planned.scanned;
  let opened: OpenedFile;
  const openedAtMs = Date.now();
  try {
    opened = await openRegularFile(s.abs);
  } catch (err) {
    // Gone, or no longer a file (a pipe there would block the read): either way the scanned file is not there.
    if (isGoneAsFile(err)) return 'vanished';
    if (isReadDenied(err)) return new ReadDenied(errorMessage(err));
    throw new IntegrityError(`cannot read ${s.abs}: ${errorMessage(err)}`);
  }
  const fh = opened.handle;
  let before = opened.stats;
  try {
    if (planned.action === 'verify' && attempt === 1) {
      const hash = ctx.hasher().stream();
      const probe = probeCollector(Number(before.size));
      const read = await copyBody(fh, Number(before.size), hash, undefined, ctx, name, probe);
      const outcome = outcomeOf(before, await fh.stat({ bigint: true }), read, await hash.digest());
      if (unchangedFrom(planned.basis, outcome)) return storedAs(outcome, planned.basis.ref!, probe?.digest());
      // It may have changed during the pass just made: what is stored is described as it is now.
      before = await fh.stat({ bigint: true });
    }
    const size = Number(before.size);
    const { writer, volume } = await ctx.sink.current();
    const { index, offset } = await writer.header({
      name,
      type: 'File',
      size,
      mode: Number(before.mode & 0o7777n),
      mtime: mtimeDate(before.mtimeNs.toString()),
      uid: s.uid,
      gid: s.gid,
      // Its body then goes from the buffers it is read into straight to the disk (with direct I/O).
      alignBody: size > SMALL_FILE,
    });
    const hash = ctx.hasher().stream();
    const probe = probeCollector(size);
    const written = await copyBody(fh, size, hash, writer, ctx, name, probe);
    // A torn read is zero-filled to the declared size, in the volume and in the sums alike.
    for (let missing = size - written; missing > 0; missing -= ZERO_FILL.length) await hash.update(ZERO_FILL.subarray(0, Math.min(missing, ZERO_FILL.length)));
    const sha256 = await hash.digest();
    await writer.endEntry(written, size);
    const outcome = outcomeOf(before, await fh.stat({ bigint: true }), written, sha256);
    if (!outcome.torn && size <= READ_AGAIN_MAX_BYTES && before.mtimeNs >= BigInt(openedAtMs - RACY_WINDOW_MS) * 1_000_000n) {
      outcome.torn = !(await readsTheSame(fh, before, sha256, ctx, name));
    }
    return storedAs(outcome, { point: ctx.pointId, volume, entry: index, offset }, outcome.torn ? undefined : probe?.digest());
  } finally {
    await fh.close();
  }
}

/**
 * Whether a file written just before it was opened reads again as it did. A
 * write still going on then had set the file's times when it began, so the
 * stat before and after the read cannot tell that its bytes changed during
 * it (a checkpoint's one long write, slowed by the page cache's writeback):
 * what was read may be a mix of both versions, and a second read differs.
 */
async function readsTheSame(fh: fsp.FileHandle, before: BigIntStats, sha256: string, ctx: StoreContext, name: string): Promise<boolean> {
  const hash = ctx.hasher().stream();
  const read = await copyBody(fh, Number(before.size), hash, undefined, ctx, name);
  const after = await fh.stat({ bigint: true });
  return (await hash.digest()) === sha256 && read === Number(before.size) && after.size === before.size && after.mtimeNs === before.mtimeNs;
}

/** Large files get a probe, collected as they are read. */
function probeCollector(size: number): ProbeCollector | undefined {
  return size > SMALL_FILE ? new ProbeCollector(size) : undefined;
}

/**
 * Streams the first `size` bytes of a file into the hash (and the volume, when
 * given). It is read into the hasher's shared buffers in turn, hashed where it
 * is by the hashing thread, and written from there too: no byte is copied in
 * this process, and the buffers are reused for every file (files are stored
 * one at a time), so a backup allocates no memory per chunk. A buffer is read
 * into again only once its bytes are hashed and written.
 */
async function copyBody(fh: fsp.FileHandle, size: number, hash: OffloadedDigest, writer: TarVolumeWriter | undefined, ctx: StoreContext, name: string, probe?: ProbeCollector): Promise<number> {
  if (size === 0) return 0;
  const buffers = ctx.hasher().buffers;
  const hashed: Promise<void>[] = [];
  const readInto = async (turn: number, position: number): Promise<number> => {
    if (position >= size) return 0;
    await hashed[turn];
    const buffer = buffers[turn]!;
    return (await fh.read(buffer, 0, Math.min(buffer.length, size - position), position)).bytesRead;
  };
  let written = 0;
  let sinceReport = 0;
  let turn = 0;
  let next = readInto(turn, 0);
  try {
    for (;;) {
      const n = await next;
      if (n === 0) break;
      const chunk = buffers[turn]!.subarray(0, n);
      probe?.add(chunk, written);
      const current = turn;
      turn = (turn + 1) % buffers.length;
      next = readInto(turn, written + n);
      throwIfAborted(ctx.signal);
      hashed[current] = (await hash.updateInPlace(chunk)).hashed;
      await writer?.body(chunk);
      written += n;
      ctx.progress.bytesDone += n;
      sinceReport += n;
      if (sinceReport >= PROGRESS_EVERY_BYTES) {
        sinceReport = 0;
        ctx.reporter.progress?.(progressAt(ctx.progress, name));
      }
    }
  } finally {
    // Never leave a read running into a buffer, nor a buffer being hashed, when the next file uses them.
    await next.catch(() => undefined);
    await Promise.allSettled(hashed);
  }
  ctx.reporter.progress?.(progressAt(ctx.progress, name));
  return written;
}
