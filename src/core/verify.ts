import { createHash } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import { IntegrityError, LifeboatError, errorMessage, throwIfAborted } from '../errors.js';
import { deploymentOf, keys, recordedChecksum, summarize, summaryIdOf, volumeEntryName, type Manifest, type ManifestEntry, type VolumeRecord } from '../format/manifest.js';
import { unsafePathReason } from '../format/paths.js';
import { readVolume } from '../format/tar.js';
import { type Notice, type Progress, type Reporter, progressAt } from './events.js';
import { checkEntries, refuseEscapingLinks } from './restore-plan.js';
import type { Repository } from './repository.js';
import { DEFAULT_TRANSFERS, runPool } from './pool.js';
import { deepCheck } from './verify-deep.js';
import { describeLock, readerLockOptions, whileReading, type ReaderLockOptions } from './lock.js';
import { describeAbortedBackups, describeLeftover, describeLeftovers, incompleteWritesUnlisted, pointBeingWritten, unfinishedWrites, type UnfinishedWrites } from './leftovers.js';
import * as ledgers from './verify-ledger.js';
import { isNotFound } from '../storage/storage.js';
import { keyNotices, readKeys } from './keys.js';

export type ProblemKind =
  | 'manifest-unreadable'
  | 'summary-mismatch'
  | 'chain-broken'
  | 'missing-volume'
  | 'size-mismatch'
  | 'checksum-mismatch'
  | 'volume-damaged'
  | 'missing-entry'
  | 'unsafe-entry'
  | 'model-invalid'
  | 'restore-failed'
  | 'volume-archived'
  | 'deployments-record';

export interface Problem {
  point: string;
  path: string;
  kind: ProblemKind;
  detail: string;
}

export interface VerifyOptions extends ReaderLockOptions {
  /** Only this point and the chain it depends on. */
  point?: Manifest;
  readData?: boolean;
  /** With readData: read only volumes the ledger has never seen verified, plus a rotating sample of the rest. */
  sinceVerified?: boolean;
  /** The sample's share of verified volumes, in percent (default 5): each is re-read within ceil(100 / PERCENT) runs. */
  samplePercent?: number;
  /** With readData: read a random share of the volumes, in percent. */
  subsetPercent?: number;
  /** Restore the point(s) into a temporary directory and validate the model files there. */
  deep?: boolean;
  /** Where --deep restores (default: the system's temporary directory). */
  tmpDir?: string;
  now?: () => Date;
  /** Volumes read at once. */
  concurrency?: number;
  signal?: AbortSignal;
  reporter?: Reporter;
}

export interface VerifyResult {
  ok: boolean;
  backups: number;
  files: number;
  bytesRead: number;
  problems: Problem[];
  warnings: Notice[];
  /** With readData: the oldest recorded verification of the checked points' volumes (null when one was never verified), as the repository's record now says. */
  oldestVerifiedAt?: string | null;
  /**
   * With readData: which volumes were read, and why; `recorded` is false when this run's reads could not be
   * written to the record (then `oldestVerifiedAt` and `neverVerified` are the record's as it was).
   */
  volumes?: { total: number; read: number; fresh?: number; sampled?: number; skipped: number; neverVerified: number; run?: number; buckets?: number; recorded?: boolean };
}

/**
 * Checks the repository: every point's manifest reads and its chain is
 * complete, every referenced volume exists with its recorded size; with
 * `readData`, every volume is read back and every file's SHA-256 and every
 * volume's CRC-32 checked. Leftovers of aborted backups are warnings.
 */
export async function verify(repo: Repository, options: VerifyOptions = {}): Promise<VerifyResult> {
  const reporter = options.reporter ?? {};
  const warnings: Notice[] = [];
  // Verifying every point reads those a running prune removes: only a verify of one point goes on beside it.
  const reads = options.point ? [options.point.id] : undefined;
  return whileReading(repo.storage, 'verify', { ...readerLockOptions(options), reporter, warnings, reads }, () => verifyLocked(repo, options, reporter, warnings));
}

async function verifyLocked(repo: Repository, options: VerifyOptions, reporter: Reporter, warnings: Notice[]): Promise<VerifyResult> {
  const problems: Problem[] = [];
  const result: VerifyResult = { ok: true, backups: 0, files: 0, bytesRead: 0, problems, warnings };

  const ids = await repo.pointIds();
  const known = new Set(ids);
  // Manifests are read, checked and dropped point by point: a repository's manifests together need not fit in memory.
  const unreadable = new Set<string>();
  const read = async (id: string): Promise<Manifest | undefined> => {
    if (unreadable.has(id)) return undefined;
    try {
      return await repo.loadManifest(id);
    } catch (err) {
      if (!unreadable.has(id)) problems.push({ point: id, path: keys.point(id), kind: 'manifest-unreadable', detail: errorMessage(err) });
      unreadable.add(id);
      return undefined;
    }
  };
  /** Each checked point's volumes: what its dependents' references are checked against, and what --read-data reads. */
  const volumesOf = new Map<string, VolumeRecord[]>();
  const volumesOfHolder = async (id: string): Promise<VolumeRecord[] | undefined> => {
    if (!volumesOf.has(id) && known.has(id)) {
      const m = await read(id);
      if (m) volumesOf.set(id, m.volumes);
    }
    return volumesOf.get(id);
  };

  let selected: string[];
  if (options.point) {
    // The point and every point its chain or files reach, found from their summaries: the manifests of a chain of
    // hundreds of incrementals are then checked one at a time below, as the whole repository's are.
    const queue = [options.point.id];
    const seen = new Set<string>();
    while (queue.length) {
      const id = queue.pop()!;
      if (seen.has(id)) continue;
      seen.add(id);
      if (!known.has(id)) continue;
      // One that cannot be read is reported as its manifest is read below.
      const s = id === options.point.id ? summarize(options.point) : await repo.summary(id).catch((err: unknown) => {
        if (err instanceof IntegrityError) return undefined;
        throw err;
      });
      if (!s) continue;
      if (s.parent) queue.push(s.parent);
      for (const u of s.uses) queue.push(u.point);
    }
    selected = ids.filter((id) => seen.has(id));
  } else {
    selected = ids;
  }

  const existing = new Map<string, number>();
  // Volumes a lifecycle rule moved to an archive class (S3 Glacier): there, but not readable when a restore needs them.
  const archived = new Map<string, string>();
  for await (const { key, size, archived: storageClass } of repo.storage.list(keys.dataPrefix)) {
    existing.set(key, size);
    if (storageClass !== undefined) archived.set(key, storageClass);
  }
  const archivedDetail = (key: string) => `in the archive storage class ${archived.get(key)}: it cannot be read until it is retrieved from there`;

  // Several manifests are read ahead of the one checked (each is a round trip on S3), oldest first, so
  // the points a manifest refers to (older ones) were checked before it. Each point's summary must say what its manifest says.
  const loadChecked = async (id: string): Promise<Manifest | undefined> => {
    const m = id === options.point?.id ? options.point : await read(id);
    const mismatch = m ? await summaryMismatch(repo, m) : undefined;
    if (m && mismatch) {
      // Reported, and repaired: the summary is derived from the manifest, which has just been read and checked, and is
      // written again from it, so that the next verify passes (unless credentials are read-only, which the detail says).
      const rebuilt = await repo.writeSummary(m).then(
        () => 'written again from the manifest',
        (err: unknown) => `it could not be written again from the manifest: ${errorMessage(err)}`,
      );
      problems.push({ point: id, path: keys.summary(id), kind: 'summary-mismatch', detail: `${mismatch}; ${rebuilt}` });
    }
    return m;
  };
  const ahead: Promise<Manifest | undefined>[] = [];
  let queued = 0;
  let lastEntries: number | undefined;
  /** Each deployment's newest checked point (ids come oldest first). */
  const newestOfDeployment = new Map<string, string>();
  /** The point being checked; let go of before the next is read, so that a large manifest is not held while another is parsed. */
  let m: Manifest | undefined;
  for (const id of selected) {
    m = undefined;
    while (queued < selected.length && ahead.length < manifestsAhead(lastEntries)) {
      const loading = loadChecked(selected[queued++]!);
      loading.catch(() => undefined);
      ahead.push(loading);
    }
    m = await ahead.shift()!;
    throwIfAborted(options.signal);
    if (!m) continue;
    lastEntries = m.entries.length;
    volumesOf.set(id, m.volumes);
    newestOfDeployment.set(deploymentOf(m), id);
    result.backups++;
    result.files += m.stats.files;
    try {
      // What restore would refuse before writing anything (an unsafe name, a link out of the tree) fails verify too.
      refuseEscapingLinks(m, checkEntries(m).byPath, m.entries);
    } catch (err) {
      problems.push({ point: id, path: keys.point(id), kind: 'unsafe-entry', detail: errorMessage(err) });
    }
    // An incremental whose parent is its full depends on that one point once.
    for (const ancestor of new Set([m.parent, m.full])) {
      if (ancestor && ancestor !== id && !known.has(ancestor)) {
        problems.push({ point: id, path: keys.point(ancestor), kind: 'chain-broken', detail: `depends on ${ancestor}, which is missing` });
      }
    }
    for (const v of m.volumes) {
      const size = existing.get(v.key);
      if (size === undefined) problems.push({ point: id, path: v.key, kind: 'missing-volume', detail: 'volume object does not exist' });
      else if (size !== v.size) problems.push({ point: id, path: v.key, kind: 'size-mismatch', detail: `stored size ${size}, recorded ${v.size}` });
      else if (archived.has(v.key)) problems.push({ point: id, path: v.key, kind: 'volume-archived', detail: archivedDetail(v.key) });
    }
    // A volume of an older point that is archived, missing or cut short fails the restore of every point that needs it:
    // each of those is named, so that nobody picks one of them as the point to fall back to.
    const unusableNeeded = new Set<string>();
    for (const e of m.entries) {
      if (e.type !== 'file' || !e.ref || e.ref.point === id) continue;
      const holder = await volumesOfHolder(e.ref.point);
      const volume = holder?.[e.ref.volume];
      if (!volume) {
        problems.push({ point: id, path: `${e.source}/${e.path}`, kind: 'chain-broken', detail: `its bytes are in ${e.ref.point} volume ${e.ref.volume}, which is missing` });
        continue;
      }
      // Once per volume: every file an incremental takes unchanged from a full would otherwise be a line of its own.
      if (unusableNeeded.has(volume.key)) continue;
      const size = existing.get(volume.key);
      const needs = `this point needs ${volume.key} of ${e.ref.point}`;
      if (size === undefined) problems.push({ point: id, path: volume.key, kind: 'missing-volume', detail: `${needs}, which does not exist` });
      else if (size !== volume.size) problems.push({ point: id, path: volume.key, kind: 'size-mismatch', detail: `${needs}, stored with size ${size}, recorded ${volume.size}` });
      else if (archived.has(volume.key)) problems.push({ point: id, path: volume.key, kind: 'volume-archived', detail: `${needs}, ${archivedDetail(volume.key)}` });
      else continue;
      unusableNeeded.add(volume.key);
    }
  }

  if (options.readData) {
    const progress: Progress = { phase: 'verify', filesDone: 0, filesTotal: 0, bytesDone: 0, bytesTotal: 0 };
    const jobs: { point: string; index: number; volume: ledgers.LedgerVolume }[] = [];
    // With the points checked, any other whose volumes a checked point's files are in (a summary may have left it out).
    const checked = new Set(selected);
    for (const id of [...selected, ...[...volumesOf.keys()].filter((h) => !checked.has(h)).sort()]) {
      volumesOf.get(id)?.forEach((v, index) => {
        if (existing.has(v.key) && !archived.has(v.key)) jobs.push({ point: id, index, volume: { key: v.key, size: v.size, crc32: recordedChecksum(v).crc32 } });
      });
    }
    const manifestOf = recentlyRead(read, (options.concurrency ?? DEFAULT_TRANSFERS) + 2);
    const ledger = await ledgers.readLedger(repo.storage, (message) => {
      const n: Notice = { level: 'warning', code: 'ledger-damaged', path: ledgers.LEDGER_KEY, message };
      warnings.push(n);
      reporter.notice?.(n);
    });
    let chosen = jobs;
    if (options.sinceVerified) {
      const sel = ledgers.selectSinceVerified(jobs, ledger, options.samplePercent ?? ledgers.DEFAULT_SAMPLE_PERCENT);
      chosen = sel.read;
      result.volumes = { total: jobs.length, read: sel.read.length, fresh: sel.fresh, sampled: sel.sampled, skipped: sel.skipped, neverVerified: 0, run: sel.run, buckets: sel.buckets };
    } else if (options.subsetPercent !== undefined) {
      chosen = ledgers.selectSubset(jobs, options.subsetPercent);
    }
    for (const { volume } of chosen) progress.bytesTotal += volume.size;
    const ok: ledgers.LedgerVolume[] = [];
    const failed: string[] = [];
    await runPool(chosen, options.concurrency ?? DEFAULT_TRANSFERS, async ({ point, index, volume }) => {
      throwIfAborted(options.signal);
      const m = await manifestOf(point);
      if (!m) return;
      const found: Problem[] = [];
      await readBackVolume(repo, m, index, found, progress, reporter, options.signal);
      problems.push(...found);
      if (found.length === 0) ok.push(volume);
      else failed.push(volume.key);
    });
    result.bytesRead = progress.bytesDone;
    const at = (options.now ?? (() => new Date()))();
    let updated: ledgers.Ledger | undefined;
    try {
      updated = await ledgers.recordInLedger(repo.storage, ledger, ok, failed, new Set(existing.keys()), at, options.sinceVerified === true);
    } catch (err) {
      if (options.signal?.aborted) throw err;
      // Read-only credentials, most often: the record stays as it was, and so does what it says.
      const again = options.sinceVerified ? '; the next --since-verified run reads these volumes again, as never verified' : '';
      const n: Notice = { level: 'warning', code: 'ledger-not-written', path: ledgers.LEDGER_KEY, message: `could not record what was verified: ${errorMessage(err)}${again}` };
      warnings.push(n);
      reporter.notice?.(n);
    }
    const recorded = updated !== undefined;
    const oldest = ledgers.oldestVerification(updated ?? ledger, jobs.map((j) => j.volume));
    result.oldestVerifiedAt = oldest.oldestVerifiedAt;
    result.volumes = { ...(result.volumes ?? { total: jobs.length, read: chosen.length, skipped: jobs.length - chosen.length }), neverVerified: oldest.neverVerified, recorded };
  }

  if (options.deep) {
    for (const id of options.point ? [options.point.id] : selected) {
      const m = id === options.point?.id ? options.point : await read(id);
      if (m) problems.push(...(await deepCheck(repo, [m], { tmpDir: options.tmpDir, concurrency: options.concurrency, signal: options.signal, reporter })));
    }
  }

  if (!options.point) {
    const unrecorded = await deploymentsRecordProblem(repo, newestOfDeployment);
    if (unrecorded) problems.push(unrecorded);
    // A damaged key file loses a password, not data: said each night, not found out on the day that password is needed;
    // so is a key of another repository, which opens nothing, and an old password a killed key passwd left working.
    for (const notice of keyNotices(await readKeys(repo.storage, repo.config.id), 'this key file')) {
      const n: Notice = { level: 'warning', ...notice };
      warnings.push(n);
      reporter.notice?.(n);
    }
    const summaries = await repo.orphanSummaries(known);
    const data = await repo.orphanDataPrefixes(known);
    // Read after the listings: a backup that started while they ran holds the lock by now.
    const writing = summaries.length + data.length > 0 ? await pointBeingWritten(repo) : () => undefined;
    const inProgress = (key: string, by: string) => reporter.notice?.({ level: 'info', code: 'in-progress', path: key, message: `being written by the running ${by}` });
    const leftover = (key: string, message: string) => {
      const n: Notice = { level: 'warning', code: 'leftovers', path: key, message };
      warnings.push(n);
      reporter.notice?.(n);
    };
    /** Whether what `key` holds is left over: not being written by a running backup, nor committed since `known` was listed. */
    const leftOver = async (id: string | undefined, key: string) => {
      const backup = id === undefined ? undefined : writing(id);
      if (backup) return void inProgress(key, describeLock(backup));
      return id === undefined || !(await repo.storage.head(keys.point(id)));
    };
    for (const key of summaries) {
      if (await leftOver(summaryIdOf(key), key)) leftover(key, `a summary of no backup point, left by an aborted backup or prune; ${removedByNext('it')}`);
    }
    // Each aborted backup is a warning of the result; several are said in one line (a host that crashed night after night leaves one each night).
    const aborted: typeof data = [];
    for (const orphan of data) if (await leftOver(orphan.id, orphan.prefix)) aborted.push(orphan);
    const abortedWarnings = aborted.map((orphan): Notice => ({ level: 'warning', code: 'leftovers', path: orphan.prefix, message: `${orphan.keys.length} object(s), ${orphan.bytes} bytes, left by an aborted backup; ${removedByNext('them')}` }));
    warnings.push(...abortedWarnings);
    if (abortedWarnings.length === 1) reporter.notice?.(abortedWarnings[0]!);
    else if (abortedWarnings.length > 1) reporter.notice?.({ level: 'warning', code: 'leftovers', message: `${describeAbortedBackups(aborted)}; ${removedByNext('them')}` });
    // A volume being written when its backup was killed is a temporary file (an upload, on S3) that never became an object.
    let unfinished: UnfinishedWrites = { leftovers: [], running: [] };
    try {
      unfinished = await unfinishedWrites(repo);
    } catch (err) {
      if (options.signal?.aborted) throw err;
      // Credentials that may read the repository but not list incomplete uploads: verify goes on without them.
      reporter.notice?.(incompleteWritesUnlisted(err));
    }
    for (const { write, by } of unfinished.running) inProgress(write.key, by);
    // Each is a warning of the result; they are said in one line when there are several (a crashed backup of a large model can leave hundreds).
    const left = unfinished.leftovers.map((write): Notice => ({ level: 'warning', code: 'leftovers', path: write.key, message: `${describeLeftover(write)}; ${removedByNext('it')}` }));
    warnings.push(...left);
    if (left.length === 1) reporter.notice?.(left[0]!);
    else if (left.length > 1) reporter.notice?.({ level: 'warning', code: 'leftovers', message: `${describeLeftovers(unfinished.leftovers)}; ${removedByNext('them')}` });
  }
  result.ok = problems.length === 0;
  return result;
}

/**
 * Who removes a leftover: a backup or prune, but only one whose credentials may delete (a backup host may
 * be kept from deleting on purpose, and then leaves them).
 */
function removedByNext(what: 'it' | 'them'): string {
  return `the next backup or prune removes ${what} if its credentials may delete (on S3, s3:DeleteObject and s3:AbortMultipartUpload); where they may not, run one with credentials that may`;
}

/**
 * Checks that `deployments.json` names every deployment with points: one it
 * lacks (written by a lifeboat that predates the record, or damaged) lets
 * `latest` without a deployment pick the newest point of another deployment.
 * A lacking record is written again with the names added; a missing one is
 * left for the next backup to make (until then `latest` reads every summary).
 */
async function deploymentsRecordProblem(repo: Repository, newestOfDeployment: ReadonlyMap<string, string>): Promise<Problem | undefined> {
  if (newestOfDeployment.size === 0) return undefined;
  const record = await repo.deploymentsRecord();
  if ('missing' in record) return undefined;
  const recorded: readonly string[] = 'names' in record ? record.names : [];
  const damaged = 'damaged' in record ? record.damaged : undefined;
  const lacking = [...newestOfDeployment.keys()].filter((d) => !recorded.includes(d));
  if (lacking.length === 0) return undefined;
  // Read again just before writing: a backup may have added its deployment meanwhile.
  const rewritten = await repo.recordDeployments({ names: [...((await repo.recordedDeployments()) ?? []), ...newestOfDeployment.keys()] }).then(
    () => 'written again with them',
    (err: unknown) => `it could not be written again: ${errorMessage(err)}`,
  );
  const what = damaged ? `it is damaged (${damaged}), and deployments ${lacking.join(', ')} have points` : `it does not name deployment${lacking.length === 1 ? '' : 's'} ${lacking.join(', ')}, which ${lacking.length === 1 ? 'has' : 'have'} points`;
  return {
    point: newestOfDeployment.get(lacking[0]!)!,
    path: keys.deployments,
    kind: 'deployments-record',
    detail: `${what}, so \`latest\` without --deployment could select a point of the wrong deployment; ${rewritten}`,
  };
}

/** Manifests read ahead of the one being checked, at most. */
const MANIFESTS_AHEAD = 8;
/**
 * Entries held in manifests read ahead, about: a manifest of 100,000 files takes
 * some 100 MB once parsed, and eight of them ahead took a verify of a chain of such
 * points to a gigabyte.
 */
const ENTRIES_AHEAD = 40_000;

/** How many manifests to read ahead, judged by the size of the last one read (the points of a chain are alike). */
export function manifestsAhead(lastEntries: number | undefined): number {
  if (lastEntries === undefined) return 1;
  return Math.max(1, Math.min(MANIFESTS_AHEAD, Math.floor(ENTRIES_AHEAD / Math.max(1, lastEntries))));
}

/**
 * Entries the manifests remembered for --read-data hold together, at most, beside the one read
 * last: a manifest of 100,000 files takes some 50 MB once parsed, and with five of them remembered
 * a verify of 14 such points (6 with volumes) peaked at 711 MiB, against 425 to 455 MiB now.
 */
const CACHED_ENTRIES = 50_000;

/**
 * `read`, remembering the last `keep` results whose entries together are at most CACHED_ENTRIES (the
 * last one whatever its size): volumes are read in point order, several at a time, and each of a
 * point's volumes needs its manifest.
 */
function recentlyRead(read: (id: string) => Promise<Manifest | undefined>, keep: number): (id: string) => Promise<Manifest | undefined> {
  const recent = new Map<string, Promise<Manifest | undefined>>();
  /** Entries of the manifests remembered that have been read. */
  const entries = new Map<string, number>();
  let held = 0;
  const forget = (id: string) => {
    recent.delete(id);
    held -= entries.get(id) ?? 0;
    entries.delete(id);
  };
  const trim = () => {
    while (recent.size > keep || (held > CACHED_ENTRIES && recent.size > 1)) forget(recent.keys().next().value!);
  };
  return (id) => {
    let known = recent.get(id);
    if (!known) {
      const reading = read(id).then((m) => {
        // Counted once read, if still remembered by then.
        if (recent.get(id) === reading && m) {
          entries.set(id, m.entries.length);
          held += m.entries.length;
          trim();
        }
        return m;
      });
      known = reading;
    }
    recent.delete(id);
    recent.set(id, known);
    trim();
    return known;
  };
}

/** Why a point's stored summary is unusable or disagrees with its manifest; undefined when it agrees or the point has none. */
async function summaryMismatch(repo: Repository, m: Manifest): Promise<string | undefined> {
  let stored;
  try {
    stored = await repo.storedSummary(m.id);
  } catch (err) {
    if (err instanceof IntegrityError) return err.message;
    throw err;
  }
  if (stored === undefined || isDeepStrictEqual(stored, summarize(m))) return undefined;
  return 'the summary that list, prune and time selectors read does not match the manifest';
}

async function readBackVolume(
  repo: Repository,
  m: Manifest,
  volumeIndex: number,
  problems: Problem[],
  progress: Progress,
  reporter: Reporter,
  signal?: AbortSignal,
): Promise<void> {
  const record = m.volumes[volumeIndex]!;
  const recorded = recordedChecksum(record);
  const byEntry = new Map<number, ManifestEntry>();
  // A hard link shares the entry of the file it names, which is what the volume holds; so does a copy of a
  // file stored before it in this point (ContentTwins), the volume holding the bytes under the first one's name.
  for (const e of m.entries) {
    if (e.ref && e.ref.point === m.id && e.ref.volume === volumeIndex && e.link === undefined && !byEntry.has(e.ref.entry)) byEntry.set(e.ref.entry, e);
  }
  const superseded = new Map((m.superseded ?? []).filter((s) => s.volume === volumeIndex).map((s) => [s.entry, s]));
  const seen = new Set<number>();
  let counted = 0;
  try {
    const body = await repo.storage.openReader(record.key, { signal });
    const read = await readVolume(
      body,
      `volume ${record.key}`,
      async (entry) => {
        const reason = unsafePathReason(entry.name.replace(/\/+$/, ''));
        if (reason) {
          problems.push({ point: m.id, path: record.key, kind: 'unsafe-entry', detail: `entry ${JSON.stringify(entry.name)}: ${reason}` });
        }
        const expected = byEntry.get(entry.index);
        const dead = expected ? undefined : superseded.get(entry.index);
        if (dead) {
          seen.add(entry.index);
          const digest = await bodyDigest(entry.body);
          if (digest.size !== dead.size || digest.sha256 !== dead.sha256) {
            problems.push({ point: m.id, path: record.key, kind: 'checksum-mismatch', detail: `entry ${entry.index} (a copy superseded by a later read of ${entry.name}) has SHA-256 ${digest.sha256}, expected ${dead.sha256}` });
          }
          counted += digest.size;
          return;
        }
        if (!expected) return;
        seen.add(entry.index);
        const name = volumeEntryName(expected.source, expected.path);
        const { sha256: digest, size } = await bodyDigest(entry.body);
        if (entry.name !== name) {
          problems.push({ point: m.id, path: name, kind: 'missing-entry', detail: `entry ${entry.index} of ${record.key} is ${JSON.stringify(entry.name)}` });
        } else if (size !== expected.size || digest !== expected.sha256) {
          problems.push({ point: m.id, path: name, kind: 'checksum-mismatch', detail: `SHA-256 ${digest} (${size} bytes) in ${record.key}, expected ${expected.sha256} (${expected.size} bytes)` });
        }
        progress.filesDone++;
        progress.bytesDone += size;
        counted += size;
        reporter.progress?.(progressAt(progress, name));
      },
      { signal, checksum: recorded.checksum, maxSize: record.size },
    );
    progress.bytesDone += read.size - counted;
    if (read.size !== record.size || read.crc32 !== recorded.crc32) {
      problems.push({ point: m.id, path: record.key, kind: 'volume-damaged', detail: `CRC-32 or size differs from the recorded ${record.size} bytes${recorded.checksum === 'framing' ? ' (its CRC-32 covers its headers and padding)' : ''}` });
    }
  } catch (err) {
    if (signal?.aborted) throw err;
    // A storage that could not be reached or would not serve the volume after its retries (or refused the
    // credentials) says nothing about the data: the verify fails as the storage did, not with a finding.
    if (err instanceof LifeboatError && !(err instanceof IntegrityError) && !isNotFound(err)) throw err;
    problems.push({ point: m.id, path: record.key, kind: 'volume-damaged', detail: errorMessage(err) });
  }
  for (const index of superseded.keys()) {
    if (!seen.has(index)) problems.push({ point: m.id, path: record.key, kind: 'missing-entry', detail: `entry ${index} (a superseded copy) not found in ${record.key}` });
  }
  for (const [index, e] of byEntry) {
    if (!seen.has(index)) {
      problems.push({ point: m.id, path: volumeEntryName(e.source, e.path), kind: 'missing-entry', detail: `entry ${index} not found in ${record.key}` });
    }
  }
}

async function bodyDigest(body: AsyncIterable<Buffer>): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of body) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { sha256: hash.digest('hex'), size };
}
