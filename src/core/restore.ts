import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { Sha256Offload, type StreamDigest } from './hash-offload.js';
import { SMALL_FILE } from './file-reader.js';
import { CredentialsRefusedError, IntegrityError, LifeboatError, RuntimeFailure, UsageError, errorMessage, fileSystemHint, throwIfAborted } from '../errors.js';
import { firstFew, formatBytes } from '../format/units.js';
import { recordedChecksum, volumeEntryName, type Manifest, type ManifestEntry } from '../format/manifest.js';
import { unsafePathReason } from '../format/paths.js';
import { sha256OfFile } from '../format/checksum.js';
import { syncFileSystem, syncPath, writeFileSynced } from '../format/durable.js';
import { createFileSink } from '../format/file-sink.js';
import { readVolume, type VolumeEntry } from '../format/tar.js';
import { type Notice, type Progress, type Reporter, progressAt } from './events.js';
import type { Repository } from './repository.js';
import { planRestore, type RestorePlan } from './restore-plan.js';
import { DEFAULT_TRANSFERS, runPool } from './pool.js';
import { danglingLinkTarget, makeDirectories, notADirectoryOnTheWay } from '../format/mkdirs.js';
import { idMapper, localAccounts } from '../format/accounts.js';
import { mountsUnder } from '../format/mounts.js';
import { readerLockOptions, whileReading, type ReaderLockOptions } from './lock.js';
import {
  LOST_AND_FOUND,
  asRestoreFailure,
  checkFreeSpace,
  DeltaUndo,
  inspectTarget,
  leftCopy,
  lockRestoreTarget,
  moveFile,
  moveIntoMountPoint,
  moveIntoPlace,
  mountPointAside,
  PATH_MAX,
  type PlannedMove,
  removeStaging,
  repositoryOverlap,
  stagingPlace,
  stagingPrefix,
  takeInterruptedStaging,
  takeUpInterruptedMoves,
  leftToPutBack,
  putBackFirstNotice,
  type TargetState,
} from './restore-target.js';
import { directoriesNeedOpening, openDirectories, removeTree } from '../format/remove-tree.js';
import { ArchivedObjectError, isNotFound } from '../storage/storage.js';
import { excludeMatcher } from './scan.js';
import { quoteName, shortenedPath } from '../format/quote.js';

export interface RestoreOptions extends ReaderLockOptions {
  target: string;
  /** Rewrite only what differs in an existing target, and remove what the point lacks but did not leave out. */
  delta?: boolean;
  /** With delta: remove what the point's exclude patterns left out too, as rsync --delete-excluded does. */
  deleteExcluded?: boolean;
  /** With delta: the patterns to take for a source whose point does not record its own (taken by an older version). */
  excludesWhenUnrecorded?: readonly string[];
  /** Replace a non-empty target. */
  force?: boolean;
  include?: string[];
  /** Volumes streamed at once (they hold disjoint files). */
  concurrency?: number;
  /**
   * Write large files through the page cache instead of past it: for a server
   * about to load them (a failover), which then reads them from memory.
   */
  pageCache?: boolean;
  /** As root, give files the recorded uid and gid numbers, not the local ids of the recorded names. */
  numericOwner?: boolean;
  /** Restore only this source, its tree as the target itself (not `<target>/<source>`): a restore to where it was backed up from. */
  asTarget?: string;
  /** Check and plan, and with --delta compare, but write nothing: say what a restore would do. */
  dryRun?: boolean;
  /** The target is thrown away after use (a drill, verify --deep): a failed restore keeps nothing for a next one to go on from. */
  disposable?: boolean;
  /** The caller is registered as a reader of this point already (verify --deep, a failover): the restore registers no second time. */
  registered?: boolean;
  /** The caller holds the target's lock already (restore --in-place takes every source's before writing any). */
  targetLocked?: boolean;
  signal?: AbortSignal;
  reporter?: Reporter;
}

export interface RestoreResult {
  point: string;
  target: string;
  files: number;
  bytes: number;
  durationMs: number;
  /** With --delta: files rewritten, left alone, and removed. */
  rewritten?: number;
  unchanged?: number;
  removed?: number;
  /** With --delta: paths the point lacks because its backup left them out (exclude patterns, sockets), kept (or, with --dry-run, that would be). */
  keptExcluded?: number;
  /** With --dry-run: nothing was written; `replaced` says whether a non-empty target would be replaced (--force). */
  dryRun?: boolean;
  replaced?: boolean;
  /** With --dry-run --delta: the first paths that would be removed, relative to the target. */
  removals?: string[];
  warnings: Notice[];
}

/**
 * Restores a point: plan (validate everything) → stream the volumes of the
 * chain into a staging directory beside the target, checking every file's
 * SHA-256 as it is written → set links, modes and times → move into place.
 * A failure at any step removes the staging directory and leaves the target
 * as it was. A target where a file system is mounted cannot be renamed: the
 * staging directory is made inside it, and its sources are moved in one by one.
 */
export async function restore(repo: Repository, manifest: Manifest, options: RestoreOptions): Promise<RestoreResult> {
  const started = Date.now();
  const reporter = options.reporter ?? {};
  const warnings: Notice[] = [];
  const target = path.resolve(options.target);
  const { targetState, mountPoint, repositoryInside } = await checkRestoreTarget(target, options, repo.storage.location).catch(async (err: unknown) => {
    throw await refusedOverLeftovers(err, manifest, target, options);
  });
  const setting: RestoreSetting = { target, targetState, mountPoint, repositoryInside, reporter, warnings, started };
  if (options.dryRun) return plannedRestore(repo, manifest, options, setting);
  const unlock = options.targetLocked ? async () => undefined : await lockRestoreTarget(target, mountPoint);
  try {
    // restore --in-place, which holds the locks of its directories, has taken up what such a restore left before.
    const taken = options.targetLocked ? setting : await takeUpInPlaceAround(manifest, options, setting, repo.storage.location);
    if (options.registered) return await restoreLocked(repo, manifest, options, taken);
    return await whileReading(repo.storage, options.readingFor ?? 'restore', { ...readerLockOptions(options), reporter, warnings, reads: [manifest.id] }, () => restoreLocked(repo, manifest, options, taken));
  } finally {
    await unlock();
  }
}

/**
 * The directories a restore into `target` writes in or under, beside which a restore --in-place killed
 * part-way may have left its record of moves (a --delta's journal): the target, the directory of each
 * source of the point in it, and every directory above it.
 */
function directoriesAround(manifest: Manifest, target: string, asTarget: string | undefined): string[] {
  const around = [target, ...(asTarget === undefined ? manifest.sources.map((s) => path.join(target, s.name)) : [])];
  for (let at = path.dirname(target); at !== path.dirname(at); at = path.dirname(at)) around.push(at);
  return around;
}

/**
 * A restore refused for a target that is not empty (no --delta nor --force), where a restore --in-place
 * killed part-way left a directory in or around it half-changed: the error says so, and what puts it back.
 */
async function refusedOverLeftovers(err: unknown, manifest: Manifest, target: string, options: RestoreOptions): Promise<unknown> {
  if (!(err instanceof UsageError) || options.delta || options.force || options.targetLocked) return err;
  if ((await inspectTarget(target).catch(() => undefined))?.state !== 'non-empty') return err;
  const [left] = await leftToPutBack(directoriesAround(manifest, target, options.asTarget));
  if (!left) return err;
  return new UsageError(`${err.message}, and an interrupted restore --in-place of ${left.point} left ${left.directories.map(quoteName).join(', ')} part-way`, {
    cause: err,
    hint: `restore with --delta or --force, which first put ${left.directories.length === 1 ? 'it' : 'them'} back as ${left.directories.length === 1 ? 'it was' : 'they were'}, or run lifeboat restore ${left.point} --in-place --delta`,
  });
}

/**
 * Before a restore into a target whose lock it holds: what a restore --in-place killed part-way left in
 * or around it (see directoriesAround) is put back as it was, or, its moves all made, finished (see
 * takeUpInterruptedMoves), as the next restore --in-place does; else this restore would change a
 * directory that the next restore --in-place puts back over it, and what the killed one had set aside
 * would stay. Returns the setting, the target judged again when anything was done.
 */
async function takeUpInPlaceAround(manifest: Manifest, options: RestoreOptions, setting: RestoreSetting, repositoryLocation: string): Promise<RestoreSetting> {
  const { target, reporter } = setting;
  const { putBack, finished } = await takeUpInterruptedMoves(directoriesAround(manifest, target, options.asTarget), manifest.id, [target]);
  for (const r of putBack.filter((r) => r.targets.length > 0)) {
    reporter.notice?.({ level: 'info', code: 'in-place-put-back', message: `put back ${r.targets.map(quoteName).join(', ')} as they were before an interrupted restore --in-place of ${r.point}, before restoring into ${quoteName(target)}` });
  }
  for (const n of finished) reporter.notice?.(n);
  if (putBack.length === 0 && finished.length === 0) return setting;
  return { ...setting, ...(await checkRestoreTarget(target, options, repositoryLocation)) };
}

/**
 * What a target is, refusing one a restore must not write into with these
 * options: a link, a file, a non-empty directory without --delta or --force,
 * one holding mount points with --force, one inside the repository, or one
 * holding the repository with --force. Nothing is written.
 */
export async function checkRestoreTarget(
  target: string,
  options: Pick<RestoreOptions, 'delta' | 'force'> & { inPlace?: boolean },
  repositoryLocation?: string,
): Promise<{ targetState: TargetState; mountPoint: boolean; repositoryInside?: string }> {
  const overlap = repositoryLocation === undefined ? undefined : await repositoryOverlap(repositoryLocation, target);
  if (overlap && 'targetInside' in overlap) {
    throw new UsageError(`restore target ${quoteName(target)} lies inside the repository ${quoteName(repositoryLocation!)}`, { hint: 'restore outside the repository; writing there would damage the backups' });
  }
  const { state: targetState, mountPoint } = await inspectTarget(target).catch(async (err: unknown) => {
    const code = (err as NodeJS.ErrnoException).code;
    // A directory above the target this user may not enter, or a target of another user it may not list.
    if (code === 'EACCES' || code === 'EPERM') {
      throw new RuntimeFailure(`cannot look into restore target ${quoteName(target)}: ${errorMessage(err)}`, {
        cause: err,
        hint: `check that this user may enter every directory above ${quoteName(target)}, and read and write it; or restore somewhere else`,
      });
    }
    const blocker = code === 'ENOTDIR' ? await notADirectoryOnTheWay(target) : undefined;
    if (blocker === undefined) throw err;
    throw new UsageError(`restore target ${quoteName(target)} cannot be made: ${quoteName(blocker)} is not a directory`, { cause: err });
  });
  if (targetState === 'not-a-directory') {
    const link = await fsp.readlink(target).catch(() => undefined);
    if (link !== undefined) {
      // Replacing a live link is failover's job, with a health check and a way back.
      throw new UsageError(`restore target ${quoteName(target)} is a symbolic link (to ${quoteName(link)})`, {
        hint: `restore into the directory it points to, or let \`lifeboat failover\` restore beside it and switch the link`,
      });
    }
    throw new UsageError(`restore target ${quoteName(target)} exists and is not a directory`);
  }
  if (targetState === 'non-empty' && !options.delta && !options.force) {
    throw new UsageError(`restore target ${quoteName(target)} is not empty`, {
      // In place, the directory is where the source was backed up from: there is no other one to choose.
      hint: options.inPlace ? 'use --delta to rewrite only what differs from the point, or --force to replace it' : 'use --delta to update it in place, --force to replace it, or choose an empty directory',
    });
  }
  const repositoryInside = overlap?.repositoryInside;
  if (repositoryInside !== undefined && targetState === 'non-empty' && !options.delta) {
    throw new UsageError(`restore target ${quoteName(target)} holds the repository (${quoteName(repositoryInside)}); --force would delete it with the rest of the tree`, {
      hint: 'use --delta, which leaves the repository alone, or restore elsewhere',
    });
  }
  if (targetState === 'non-empty' && !options.delta) {
    // Replacing the tree would carry those file systems away with the old one and then delete what is on them.
    const mounts = await mountsUnder(target);
    if (mounts.length > 0) {
      throw new UsageError(`restore target ${quoteName(target)} holds file systems mounted at ${firstFew(mounts)}; --force will not replace it`, {
        hint: 'use --delta to update it in place, or restore into each mount point on its own',
      });
    }
  }
  return { targetState, mountPoint, ...(repositoryInside === undefined ? {} : { repositoryInside }) };
}

/**
 * A --delta into a tree that holds the repository leaves the repository, and
 * the directories that lead to it, alone: refuses a point that has anything
 * but directories there, which the restore would put in its place.
 */
function pathsToKeepForRepository(plan: RestorePlan, target: string, repositoryInside: string | undefined): string[] {
  if (repositoryInside === undefined) return [];
  const keep: string[] = [];
  for (let at = repositoryInside; at.startsWith(target + path.sep); at = path.dirname(at)) keep.push(at);
  const kept = new Set(keep);
  for (const e of plan.entries) {
    const p = pathIn(plan, target, e);
    if ((kept.has(p) && e.type !== 'dir') || p === repositoryInside || p.startsWith(repositoryInside + path.sep)) {
      throw new UsageError(`${quoteName(`${e.source}/${e.path}`)} of ${plan.manifest.id} would be restored where the repository is (${quoteName(repositoryInside)})`, {
        hint: 'restore into another directory',
      });
    }
  }
  return keep;
}

/** Removals a dry run lists by name; it counts them all. */
const DRY_RUN_REMOVALS = 20;

/**
 * restore --dry-run: what a restore would write, replace and remove, found as
 * the restore finds it (the point's chain checked, a --delta target read back
 * and compared), with nothing written to the target or the repository.
 */
async function plannedRestore(repo: Repository, manifest: Manifest, options: RestoreOptions, { target, targetState, mountPoint, repositoryInside, warnings, reporter, started }: RestoreSetting): Promise<RestoreResult> {
  const delta = options.delta === true && targetState === 'non-empty';
  const plan = await planRestore(repo, manifest, options.include, { hardLinks: !delta, asTarget: options.asTarget });
  const keep = pathsToKeepForRepository(plan, target, repositoryInside);
  const result: RestoreResult = { point: manifest.id, target, files: plan.files.length, bytes: plan.bytes, durationMs: 0, dryRun: true, warnings };
  // restore --in-place finds these for all its directories at once.
  if (!options.targetLocked) {
    for (const left of await leftToPutBack(directoriesAround(manifest, target, options.asTarget))) {
      const n = putBackFirstNotice(left);
      warnings.push(n);
      reporter.notice?.(n);
    }
  }
  if (delta) {
    const unchanged = await filesAlreadyRight(plan, target, plan.files, options.signal, reporter);
    result.unchanged = unchanged.size;
    result.rewritten = plan.files.length - unchanged.size;
    const { extras: removals, kept } = await extrasInTarget(plan, target, { mountPoint, include: options.include ?? [], keep, leftOut: leftOutByBackup(plan, options) });
    result.removed = removals.length;
    result.keptExcluded = kept;
    result.removals = removals.slice(0, DRY_RUN_REMOVALS).map((p) => path.relative(target, p));
  } else {
    result.replaced = targetState === 'non-empty';
  }
  result.durationMs = Date.now() - started;
  return result;
}

interface RestoreSetting {
  target: string;
  targetState: TargetState;
  mountPoint: boolean;
  /** Where a local repository lies under the target, which a --delta leaves alone. */
  repositoryInside?: string;
  reporter: Reporter;
  warnings: Notice[];
  started: number;
}

/**
 * A restore planned and given its staging directory beside the target (a
 * leftover of an interrupted restore taken over, a --delta target compared),
 * with nothing fetched yet: `toFetch` is what its room is checked for.
 */
export interface PreparedRestore {
  readonly target: string;
  readonly staging: string;
  readonly toFetch: readonly ManifestEntry[];
  /** Fetches and verifies every file into the staging directory (and, but for a --delta, gives the tree its links, modes and times); the target is not touched. */
  stage(): Promise<StagedRestore>;
  /** Gives the restore up for `err`, another restore's failure: see StagedRestore.abandon. */
  abandon(err: unknown): Promise<unknown>;
}

/** A restore whose files are all staged and verified, ready to be moved into its target. */
export interface StagedRestore {
  readonly target: string;
  /**
   * Whether commit() moves the staging directory into place by renaming it as a whole (it then becomes
   * the target, same inode); false for a --delta, which moves files one by one, and for a mount point.
   */
  readonly renamedWhole: boolean;
  readonly staging: string;
  /**
   * How commit() will move the staged tree into place, for restore --in-place to record and, if need
   * be, put back (see putMoveBack; a --delta, which rewrites the target file by file, is put back from its journal, see DeltaUndo).
   */
  plannedMove(): Promise<PlannedMove>;
  /**
   * Moves the staged tree into place (a --delta: the staged files, and removes what the point lacks).
   * With `keepReplaced`, what the target held stays set aside where plannedMove() says.
   */
  commit(keepReplaced?: boolean): Promise<RestoreResult>;
  /** For a --delta committed (or failed) with `keepReplaced`: what journaled its changes (put back with the other moves, see putMoveBack). */
  deltaUndo(): DeltaUndo | undefined;
  /**
   * Gives the restore up for `err` (its own failure, or another's in the same restore --in-place): what
   * verified is kept for the next restore into the target when a restore that failed so would keep it,
   * else removed. Returns the error to throw. `putBack`: it had been committed, and its move was put back.
   */
  abandon(err: unknown, putBack?: boolean): Promise<unknown>;
}

/**
 * Plans a restore into a target whose lock the caller holds, as a reader of the point already
 * (`targetLocked` and `registered`), and makes its staging directory: the first step of
 * restore(), which restore --in-place takes for every source before it fetches any.
 */
export async function prepareRestore(repo: Repository, manifest: Manifest, options: RestoreOptions): Promise<PreparedRestore> {
  const target = path.resolve(options.target);
  const { targetState, mountPoint, repositoryInside } = await checkRestoreTarget(target, options, repo.storage.location);
  const reporter = options.reporter ?? {};
  return prepareLocked(repo, manifest, options, { target, targetState, mountPoint, repositoryInside, reporter, warnings: [], started: Date.now() });
}

async function restoreLocked(repo: Repository, manifest: Manifest, options: RestoreOptions, setting: RestoreSetting): Promise<RestoreResult> {
  const prepared = await prepareLocked(repo, manifest, options, setting);
  await checkFreeSpace(prepared.staging, setting.target, prepared.toFetch).catch(async (err: unknown) => {
    throw await prepared.abandon(err);
  });
  return (await prepared.stage()).commit();
}

async function prepareLocked(repo: Repository, manifest: Manifest, options: RestoreOptions, { target, targetState, mountPoint, repositoryInside, reporter, warnings, started }: RestoreSetting): Promise<PreparedRestore> {
  const delta = options.delta === true && targetState === 'non-empty';
  // A delta restore compares and rewrites each name on its own, so hard links are written as copies there.
  const plan = await planRestore(repo, manifest, options.include, { hardLinks: !delta, asTarget: options.asTarget });
  const keep = pathsToKeepForRepository(plan, target, repositoryInside);
  const leftOut = leftOutByBackup(plan, options);
  const owners = ownerMapping(manifest, options.numericOwner === true);
  const longest = longestPathUnder(plan, target);
  // Staged on the target's file system, so that moving the restored files into place is a rename; under a
  // name no longer than the target's when the point's longest path would not fit under the usual one.
  const { staging, marker } = stagingPlace(target, mountPoint, longest);
  const leftover = await takeInterruptedStaging(mountPoint ? target : path.dirname(target), stagingPrefix(target, mountPoint), reporter, warnings);
  try {
    await makeDirectories(path.dirname(target));
    // A restore killed or failed before left its verified files there: this one goes on from them.
    if (leftover) await fsp.rename(leftover.where, staging);
    else await fsp.mkdir(staging, { mode: 0o700 });
    if (leftover?.marker) await fsp.rm(leftover.marker, { force: true });
    if (marker) await fsp.symlink(path.basename(staging), marker);
  } catch (err) {
    // A file, or a link to nothing (a volume not mounted), on the way to the target is the user's to correct.
    const blocker = (err as NodeJS.ErrnoException).code === 'ENOTDIR' || (err as NodeJS.ErrnoException).code === 'EEXIST' ? await notADirectoryOnTheWay(path.dirname(target)) : undefined;
    if (blocker !== undefined) {
      const to = await danglingLinkTarget(blocker);
      throw new UsageError(`restore target ${quoteName(target)} cannot be made: ${quoteName(blocker)} ${to === undefined ? 'is not a directory' : `is a symbolic link to ${quoteName(to)}, which does not exist`}`, {
        cause: err,
        // In place, the directory is where the source was backed up from: no --target can be given instead.
        hint:
          to === undefined
            ? options.asTarget === undefined
              ? 'give a --target whose parents are directories'
              : `move ${blocker} aside, so that the directory can be made again where it was backed up from`
            : `make the directory it points to first (or mount what should be there)${options.asTarget === undefined ? ', or give another --target' : ''}`,
      });
    }
    throw new RuntimeFailure(`cannot create ${quoteName(staging)} to restore into: ${errorMessage(err)}`, {
      cause: err,
      hint: fileSystemHint(err, path.dirname(target)) ?? 'check the --target path and that it is writable',
    });
  }
  // Once files are written (or were taken over), what verified is kept for a next restore when this one fails.
  let worthKeeping = leftover !== undefined;
  let settledAs: 'committed' | 'abandoned' | undefined;
  const abandon = async (err: unknown, putBack = false): Promise<unknown> => {
    if (settledAs !== undefined && !(putBack && settledAs === 'committed')) return err;
    settledAs = 'abandoned';
    // Data that did not verify is not worth keeping, nor is a staging directory nothing was written into, nor
    // one that filled the disk, nor one holding a file larger than the file system or the file-size limit allows,
    // nor one where a path was too long (the next restore into that target would fail the same way). Otherwise
    // (the network, storage, an interrupt, credentials that ran out part-way) what verified stays for the next
    // restore to resume from.
    // Another source's failure, given by restore --in-place, comes told as one sentence: its cause has the code.
    const code = (err as NodeJS.ErrnoException).code ?? ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code;
    const failsAgain = ['ENOSPC', 'EDQUOT', 'EFBIG', 'ENAMETOOLONG'].includes(code ?? '');
    const usage = err instanceof UsageError && !(err instanceof CredentialsRefusedError);
    if (worthKeeping && !options.disposable && !failsAgain && !(err instanceof IntegrityError) && !usage) {
      reporter.notice?.({ level: 'warning', code: 'restore-kept', path: staging, message: `the files restored so far are kept there; the next restore into ${quoteName(target)} goes on from them (remove it if there will be none)` });
    } else {
      await removeStaging(staging, marker).catch(() => undefined);
    }
    return asRestoreFailure(err, staging, target);
  };
  /** Runs a step; a failure gives the restore up (as abandon does) and throws the error to show. */
  const step = async <T>(work: () => Promise<T>): Promise<T> => {
    try {
      return await work();
    } catch (err) {
      throw await abandon(err);
    }
  };
  const result: RestoreResult = { point: manifest.id, target, files: plan.files.length, bytes: plan.bytes, durationMs: 0, warnings };
  const linked = new Set(plan.links.map((l) => l.entry));
  let wanted = plan.files.filter((f) => !linked.has(f));
  const toFetch = await step(async () => {
    if (delta) {
      const unchanged = await filesAlreadyRight(plan, target, plan.files, options.signal, reporter);
      wanted = plan.files.filter((f) => !unchanged.has(f));
      result.unchanged = unchanged.size;
      result.rewritten = wanted.length;
    }
    if (!leftover) return wanted;
    const reused = await keepVerifiedFiles(staging, plan, wanted, options.signal, reporter);
    const bytes = [...reused].reduce((n, f) => n + f.size, 0);
    reporter.notice?.({ level: 'info', code: 'restore-resumed', path: leftover.marker ?? leftover.where, message: `resuming an interrupted restore: ${reused.size} file(s), ${formatBytes(bytes)}, already there and verified` });
    return wanted.filter((f) => !reused.has(f));
  });

  const replaced = `${marker ?? staging}-replaced`;
  let deltaUndo: DeltaUndo | undefined;
  const commit = (keepReplaced = false) =>
    step(async () => {
      if (settledAs !== undefined) throw new Error(`restore into ${target} committed or given up already`);
      if (delta) {
        if (keepReplaced) deltaUndo = new DeltaUndo(target, replaced);
        try {
          ({ removed: result.removed, kept: result.keptExcluded } = await applyDelta(plan, staging, target, new Set(wanted), { mountPoint, include: options.include ?? [], keep, leftOut }, owners, settled, deltaUndo));
        } catch (err) {
          // What this one changed before it failed goes back at once, its rewritten files into the staging directory before that is kept
          // or removed; what cannot is tried again, and told, with the other moves (see putMoveBack).
          await deltaUndo?.putBack(staging).catch(() => undefined);
          throw err;
        } finally {
          deltaUndo?.end();
        }
        await syncDirectories(plan, target);
        // Kept while the changes may be put back, for the rewritten files to go back into (see finishMoves).
        if (!keepReplaced) await removeStaging(staging, marker);
      } else {
        const left = mountPoint
          ? await moveIntoMountPoint(staging, target, targetState === 'non-empty', keepReplaced)
          : await moveIntoPlace(staging, target, targetState, plan.asTarget === undefined, replaced, keepReplaced);
        // Kept while the move may be put back: it names the staging directory for the next restore.
        if (marker && !keepReplaced) await fsp.rm(marker, { force: true });
        await syncPath(mountPoint ? target : path.dirname(target));
        if (left) {
          warnings.push(left);
          reporter.notice?.(left);
        }
      }
      settledAs = 'committed';
      if (owners?.refused) {
        const who = `${process.getuid?.() ?? '?'}:${process.getgid?.() ?? '?'}`;
        const n: Notice = {
          level: 'warning',
          code: 'owners-not-set',
          path: owners.refused.path?.replaceAll(staging, target),
          message: `the files could not be given their owners (${owners.refused.code}: the file system, such as NFS with root_squash or FAT, or a user namespace does not allow it); they belong to ${who}`,
        };
        warnings.push(n);
        reporter.notice?.(n);
      }
      // A drill's or verify --deep's restore, removed once checked, lends nothing.
      if (owners.withheld.count > 0 && !options.disposable) {
        const n: Notice = {
          level: 'warning',
          code: 'set-id-withheld',
          path: owners.withheld.first?.replaceAll(staging, target),
          message: `${owners.withheld.count} file(s) restored without the set-user-ID or set-group-ID bit they had: they do not have here the owner or group the point recorded, whose rights the bit would lend (run as root, with owners restored, to keep it)`,
        };
        warnings.push(n);
        reporter.notice?.(n);
      }
      result.durationMs = Date.now() - started;
      return result;
    });

  let settled: ReadonlySet<ManifestEntry> = new Set();
  const plannedMove = async (): Promise<PlannedMove> => {
    if (delta) return { target, staging, replaced, delta: true, ...(marker ? { marker } : {}) };
    if (mountPoint) return { target, staging, ...(targetState === 'non-empty' ? { replaced: mountPointAside(staging) } : {}), names: await fsp.readdir(staging) };
    return { target, staging, ...(targetState === 'absent' ? {} : { replaced }), ...(marker ? { marker } : {}) };
  };
  const staged: StagedRestore = { target, staging, renamedWhole: !delta && !mountPoint, plannedMove, commit, abandon, deltaUndo: () => deltaUndo };
  const stage = () =>
    step(async () => {
      worthKeeping = true;
      settled = await fetchFiles({
        repo,
        plan,
        wanted: new Set(toFetch),
        staging,
        reporter,
        warnings,
        concurrency: options.concurrency ?? DEFAULT_TRANSFERS,
        pageCache: options.pageCache,
        signal: options.signal,
        owners,
      });
      throwIfAborted(options.signal);
      if (!delta) {
        await makeHardLinks(plan, staging);
        await finishTree(plan, staging, owners, settled);
        await syncDirectories(plan, staging);
      }
      return staged;
    });
  return { target, staging, toFetch, stage, abandon };
}

/**
 * Keeps, in a staging directory taken over from an interrupted restore, the
 * wanted files that are there whole and verify against their SHA-256, and
 * removes everything else (partial files, other points' files, links,
 * directories the point does not have), so that the tree moved into place
 * holds nothing but the point.
 */
async function keepVerifiedFiles(staging: string, plan: RestorePlan, wanted: readonly ManifestEntry[], signal: AbortSignal | undefined, reporter: Reporter): Promise<Set<ManifestEntry>> {
  // A restore that failed after setting the point's modes may have left read-only directories.
  if (directoriesNeedOpening()) await openDirectories(staging);
  const kept = await filesAlreadyRight(plan, staging, [...wanted], signal, reporter);
  const keptPaths = new Set([...kept].map((f) => pathIn(plan, staging, f)));
  const dirs = new Set<string>();
  for (const e of plan.entries) {
    let dir = e.type === 'dir' ? pathIn(plan, staging, e) : path.dirname(pathIn(plan, staging, e));
    while (dir.length > staging.length && !dirs.has(dir)) {
      dirs.add(dir);
      dir = path.dirname(dir);
    }
  }
  const sweep = async (dir: string): Promise<void> => {
    for (const d of await fsp.readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, d.name);
      if (d.isDirectory() && dirs.has(p)) await sweep(p);
      else if (!keptPaths.has(p)) await removeTree(p);
    }
  };
  await sweep(staging);
  return kept;
}

/** Where a source's tree goes under `root`: `<root>/<source>`, or `root` itself for the source restored as the target. */
function sourceDir(plan: RestorePlan, root: string, source: string): string {
  return plan.asTarget === source ? root : path.join(root, source);
}

/**
 * The bytes the point's longest path adds to `target`, refused at once (exit
 * 2) when the target is too long for it: the system takes no path of more
 * than 4,095 bytes.
 */
function longestPathUnder(plan: RestorePlan, target: string): number {
  const base = Buffer.byteLength(target);
  let longest = plan.entries[0];
  let bytes = 0;
  for (const e of plan.entries) {
    const n = Buffer.byteLength(pathIn(plan, target, e)) - base;
    if (n > bytes) [longest, bytes] = [e, n];
  }
  const over = base + bytes + 1 - PATH_MAX;
  if (longest !== undefined && over > 0) {
    throw new UsageError(`restore target ${shortenedPath(target)} is ${over} byte(s) too long for this point: under it, ${shortenedPath(pathIn(plan, target, longest))} would be longer than the system allows (4,096 bytes in all)`, {
      hint: `restore into a target whose path is at least ${over} byte(s) shorter, or leave that part out with --include`,
    });
  }
  return bytes;
}

function pathIn(plan: RestorePlan, root: string, e: { source: string; path: string }): string {
  const dir = sourceDir(plan, root, e.source);
  // The plan checked every path (relative, no empty, '.' or '..' segment): joining is appending, at a
  // tenth of path.join's cost, which counted for 100,000 files.
  return dir.endsWith(path.sep) ? dir + e.path : dir + path.sep + e.path;
}

interface FetchContext {
  repo: Repository;
  plan: RestorePlan;
  wanted: ReadonlySet<ManifestEntry>;
  staging: string;
  reporter: Reporter;
  warnings: Notice[];
  concurrency: number;
  progress: Progress;
  /** Hashes large files on a second core. */
  hasher?: Sha256Offload;
  pageCache?: boolean;
  signal?: AbortSignal;
  owners: OwnerMapping | undefined;
  /** Small files written without a sync of their own, their owner, mode and time set then. */
  settled: Set<ManifestEntry>;
}

/**
 * Streams every volume that holds a wanted file and writes those files under
 * `staging`, then makes them durable. Returns the entries whose metadata was
 * set as they were written.
 */
async function fetchFiles(context: Omit<FetchContext, 'progress' | 'hasher' | 'settled'>): Promise<ReadonlySet<ManifestEntry>> {
  const progress: Progress = { phase: 'restore', filesDone: 0, filesTotal: context.wanted.size, bytesDone: 0, bytesTotal: 0 };
  for (const f of context.wanted) progress.bytesTotal += f.size;
  const hasher = [...context.wanted].some((f) => f.size > SMALL_FILE) ? new Sha256Offload() : undefined;
  const settled = new Set<ManifestEntry>();
  try {
    await fetchVolumes({ ...context, progress, hasher, settled });
  } finally {
    await hasher?.close();
  }
  await syncSmallFiles(context.staging, [...settled].map((e) => pathIn(context.plan, context.staging, e)), context.signal);
  return settled;
}

/**
 * An fsync of each small file as it is written costs a journal commit each: a
 * restore of 100,000 files spent most of its time waiting for them. They are
 * written first, then made durable at once by syncfs(2) (`sync -f`, Linux),
 * which writes back what is dirty on the staging directory's file system;
 * where that is not to be had, each file is synced in turn.
 */
async function syncSmallFiles(staging: string, files: readonly string[], signal: AbortSignal | undefined): Promise<void> {
  if (files.length === 0 || (await syncFileSystem(staging))) return;
  await runPool(files, METADATA_IN_FLIGHT, async (file) => {
    throwIfAborted(signal);
    await syncPath(file, { dataOnly: true });
  });
}

async function fetchVolumes({ repo, plan, wanted, staging, reporter, warnings, concurrency, progress, hasher, pageCache, signal, owners, settled }: FetchContext): Promise<void> {
  let smallFiles = 0;
  for (const f of wanted) if (f.size <= SMALL_FILE) smallFiles++;
  const manySmallFiles = smallFiles >= MANY_SMALL_FILES;
  const made = new Map<string, Promise<void>>();
  // The promise is kept, so files written at once into one new directory create it once.
  const ensureDir = (dir: string): Promise<void> => {
    let making = made.get(dir);
    if (!making) {
      making = makeDirectories(dir, 0o700);
      made.set(dir, making);
      making.catch(() => made.delete(dir));
    }
    return making;
  };
  await runPool(plan.volumes, concurrency, async (job) => {
    throwIfAborted(signal);
    const jobWanted = new Map<number, ManifestEntry[]>();
    for (const [index, list] of job.wanted) {
      const mine = list.filter((e) => wanted.has(e));
      if (mine.length) jobWanted.set(index, mine);
    }
    if (jobWanted.size === 0) return;
    const found = new Set<number>();
    const what = `volume ${job.record.key}`;
    const writes = new PendingWrites();
    // Small files written at once, one at a time, are each read into this buffer in turn: a buffer of
    // their own apiece made 100,000 of them (242 MiB) that waited for the collector, and the peak of memory.
    let scratch: Buffer | undefined;
    const onEntry = async (entry: VolumeEntry) => {
      checkArchiveEntry(entry, what);
      const targets = jobWanted.get(entry.index);
      if (!targets) return;
      found.add(entry.index);
      const first = targets[0]!;
      const expectedName = volumeEntryName(first.source, first.path);
      if (entry.type !== 'File' && entry.type !== 'OldFile' && entry.type !== 'ContiguousFile') {
        throw new IntegrityError(`${what}: entry ${entry.index} is a ${entry.type}, but ${expectedName} is a file`);
      }
      if (entry.size !== first.size) {
        throw new IntegrityError(`${what}: entry ${entry.index} (${entry.name}) has ${entry.size} bytes, the manifest says ${first.size} for ${expectedName}`);
      }
      const file = pathIn(plan, staging, first);
      if (first.size <= SMALL_FILE) {
        // Small files are read whole and checked here, then written.
        if (manySmallFiles) scratch ??= Buffer.allocUnsafe(SMALL_FILE);
        const data = await readVerified(entry, first, what, progress, manySmallFiles ? scratch : undefined);
        if (manySmallFiles) {
          for (const t of targets) {
            const p = pathIn(plan, staging, t);
            await ensureDir(path.dirname(p));
            writeSmallFile(p, data, t, owners);
            settled.add(t);
          }
        } else {
          // Their writes and syncs overlap the parsing of what follows.
          writes.add(
            (async () => {
              for (const t of targets) {
                const p = pathIn(plan, staging, t);
                await ensureDir(path.dirname(p));
                await writeFileSynced(p, data, { flag: 'wx', mode: 0o600, dataOnly: true });
              }
            })(),
          );
          if (writes.size >= SMALL_WRITES_IN_FLIGHT) await writes.drain(SMALL_WRITES_IN_FLIGHT / 2);
        }
      } else {
        await ensureDir(path.dirname(file));
        await writeVerified(entry, file, first, what, progress, reporter, hasher, pageCache === true, signal);
        for (const copy of targets.slice(1)) {
          const other = pathIn(plan, staging, copy);
          await ensureDir(path.dirname(other));
          await fsp.copyFile(file, other);
          await syncPath(other, { dataOnly: true });
        }
      }
      progress.filesDone += targets.length;
      // A large file reports as its bytes come; thousands of small ones would otherwise show none for minutes.
      if (first.size <= SMALL_FILE) reporter.progress?.(progressAt(progress, expectedName));
    };
    try {
      for (const run of planReads(jobWanted, job.record.size)) {
        throwIfAborted(signal);
        let body;
        try {
          body = await repo.storage.openReader(job.record.key, { signal, offset: run.offset });
        } catch (err) {
          // An archived volume's own error says what to do about it; so do a storage that could not be
          // reached or would not serve it after its retries, refused credentials and an interruption:
          // only a volume that is not there is the repository's fault.
          if (err instanceof ArchivedObjectError) throw err;
          if (err instanceof LifeboatError && !isNotFound(err)) throw err;
          throw new IntegrityError(`${what} of point ${job.point} cannot be read: ${errorMessage(err)}`, { cause: err });
        }
        const last = run.lastIndex;
        const recorded = recordedChecksum(job.record);
        const read = await readVolume(
          body,
          what,
          // Past the run's last wanted entry the stream is cut short: nothing there is looked at.
          async (entry) => (last === undefined || entry.index <= last ? onEntry(entry) : undefined),
          { signal, firstIndex: run.firstIndex, lastIndex: last, checksum: recorded.checksum, maxSize: job.record.size - run.offset },
        );
        throwIfAborted(signal);
        if (last === undefined && (read.size !== job.record.size || read.crc32 !== recorded.crc32)) {
          // Every file taken from it verified, so the restore stands; verify will name the damage.
          const notice: Notice = { level: 'warning', code: 'volume-checksum', message: `${what} does not match its recorded size or CRC-32; run \`lifeboat verify --read-data\`` };
          warnings.push(notice);
          reporter.notice?.(notice);
        }
      }
    } catch (err) {
      // No write may land in the staging directory after it is removed.
      await writes.drain(0).catch(() => undefined);
      // Named, so that the command can say which points do without it.
      if (err instanceof IntegrityError) err.volume ??= job.record.key;
      throw err;
    }
    await writes.drain(0);
    for (const [index, list] of jobWanted) {
      if (!found.has(index)) {
        throw new IntegrityError(`${what} of point ${job.point} lacks entry ${index}, which holds ${list[0]!.source}/${list[0]!.path}`, { volume: job.record.key });
      }
    }
  });
}

/** Gaps between wanted entries smaller than this are read through rather than skipped. */
const SKIP_GAP = 8 << 20;

interface VolumeRead {
  offset: number;
  firstIndex: number;
  /** Undefined: read to the end (and check the whole volume's CRC-32). */
  lastIndex?: number;
}

/**
 * Which byte ranges of a volume to read: the whole volume when most of it is
 * wanted, else runs of wanted entries, so a restore does not stream the old
 * copy of a rewritten 400 MiB shard only to throw it away.
 */
function planReads(wanted: Map<number, ManifestEntry[]>, volumeSize: number): VolumeRead[] {
  const entries = [...wanted].map(([index, list]) => ({ index, offset: list[0]!.ref?.offset, size: list[0]!.size })).sort((a, b) => a.index - b.index);
  if (entries.some((e) => e.offset === undefined)) return [{ offset: 0, firstIndex: 0 }];
  const runs: (VolumeRead & { end: number })[] = [];
  for (const e of entries) {
    const run = runs[runs.length - 1];
    if (run && e.offset! - run.end < SKIP_GAP) {
      run.lastIndex = e.index;
      run.end = e.offset! + e.size + 4096;
    } else runs.push({ offset: e.offset!, firstIndex: e.index, lastIndex: e.index, end: e.offset! + e.size + 4096 });
  }
  const skipped = volumeSize - runs.reduce((n, r) => n + (r.end - r.offset), 0);
  if (skipped < SKIP_GAP) return [{ offset: 0, firstIndex: 0 }];
  return runs.map(({ offset, firstIndex, lastIndex }) => ({ offset, firstIndex, lastIndex }));
}

/** chmod/utimes calls in flight when a restore sets file metadata. */
const METADATA_IN_FLIGHT = 16;

/** Small-file writes in flight per volume before the parser waits for some to finish. */
const SMALL_WRITES_IN_FLIGHT = 32;

/**
 * From this many small files on, a restore writes them one at a time on the
 * main thread and syncs them together at the end; with fewer, each is
 * written and synced on the thread pool while the volumes stream on.
 *
 * A sync per file costs a journal commit each: for 100,000 files of a few KiB
 * the restore spent most of its time waiting for them (19 s; 8.7 s written
 * one at a time and synced together). But with a few thousand small files
 * beside large ones (the bench deployment: 2,010 files beside 1.7 GB), writing
 * them on the main thread held up the streaming of the large files more than
 * the syncs cost in the pool (3.8 s instead of 3.4 s, alternating runs).
 */
export const MANY_SMALL_FILES = 10_000;

/** A bounded set of writes; the first failure is thrown by the next drain. */
class PendingWrites {
  private readonly pending = new Set<Promise<void>>();
  private failure: unknown;

  get size(): number {
    return this.pending.size;
  }

  add(write: Promise<void>): void {
    const tracked = write.then(
      () => void this.pending.delete(tracked),
      (err: unknown) => {
        this.failure ??= err;
        this.pending.delete(tracked);
      },
    );
    this.pending.add(tracked);
  }

  /** Waits until at most `left` writes are in flight. */
  async drain(left: number): Promise<void> {
    while (this.pending.size > left) await Promise.race(this.pending);
    if (this.failure) throw this.failure;
  }
}

/**
 * Reads a small entry whole and checks its size and SHA-256 before anything is written; into
 * `into` when given (it must hold SMALL_FILE bytes), which the caller uses before it reads the next.
 */
async function readVerified(entry: VolumeEntry, expected: ManifestEntry, what: string, progress: Progress, into?: Buffer): Promise<Buffer> {
  // The body's chunks are views of recycled buffers: the file is copied out, since its write outlives them.
  const data = into ? into.subarray(0, expected.size) : Buffer.allocUnsafe(expected.size);
  let size = 0;
  for await (const chunk of entry.body) {
    if (size + chunk.length > expected.size) {
      size += chunk.length;
      break;
    }
    chunk.copy(data, size);
    size += chunk.length;
  }
  progress.bytesDone += Math.min(size, expected.size);
  const digest = createHash('sha256').update(data.subarray(0, Math.min(size, expected.size))).digest('hex');
  if (size !== expected.size || digest !== expected.sha256) {
    throw new IntegrityError(`${quoteName(`${expected.source}/${expected.path}`)} from ${what} does not match its checksum (SHA-256 ${digest}, expected ${expected.sha256})`);
  }
  return data;
}

/** Refuses entries no extractor should ever write: escapes, absolute names, hard links, devices. */
function checkArchiveEntry(entry: VolumeEntry, what: string): void {
  const name = entry.name.replace(/\/+$/, '');
  const reason = unsafePathReason(name);
  if (reason) throw new IntegrityError(`refusing ${what}: entry ${JSON.stringify(entry.name)} is unsafe (${reason})`);
  if (!['File', 'OldFile', 'ContiguousFile', 'Directory', 'SymbolicLink'].includes(entry.type)) {
    throw new IntegrityError(`refusing ${what}: entry ${JSON.stringify(entry.name)} has type ${entry.type}`);
  }
}

async function writeVerified(
  entry: VolumeEntry,
  file: string,
  expected: ManifestEntry,
  what: string,
  progress: Progress,
  reporter: Reporter,
  hasher: Sha256Offload | undefined,
  pageCache: boolean,
  signal?: AbortSignal,
): Promise<void> {
  const hash = hasher ? hasher.stream() : inlineDigest();
  // Never follows or replaces anything already at that path; written past the page cache where it can be, unless asked.
  const out = await createFileSink(file, 0o600, { pageCache });
  let size = 0;
  let sinceReport = 0;
  try {
    for await (const chunk of entry.body) {
      throwIfAborted(signal);
      // Hashed and written side by side, both before the next chunk is asked for: the chunk's buffer is then refilled.
      await Promise.all([hash.update(chunk), out.write(chunk)]);
      size += chunk.length;
      sinceReport += chunk.length;
      progress.bytesDone += chunk.length;
      if (sinceReport >= 8 << 20) {
        sinceReport = 0;
        reporter.progress?.(progressAt(progress, `${expected.source}/${expected.path}`));
      }
    }
    await out.finish();
  } catch (err) {
    await out.discard();
    throw err;
  }
  reporter.progress?.(progressAt(progress, `${expected.source}/${expected.path}`));
  const digest = await hash.digest();
  if (size !== expected.size || digest !== expected.sha256) {
    throw new IntegrityError(
      `${quoteName(`${expected.source}/${expected.path}`)} from ${what} does not match its checksum (SHA-256 ${digest}, expected ${expected.sha256})`,
    );
  }
}

function inlineDigest(): StreamDigest {
  const hash = createHash('sha256');
  return {
    update: async (data) => void hash.update(data),
    digest: async () => hash.digest('hex'),
  };
}

/**
 * A recorded time as utimes takes it. Node.js sets whole microseconds, cutting off the rest of
 * the seconds it is given, which a double near 1.8e9 holds only to a quarter of a microsecond:
 * the middle of the recorded microsecond lands on it, where the time itself could land on the
 * one after, and a --delta would then find the time wrong and set it again, moving the change
 * time. A negative number (a time before 1970) means "now" to Node.js, which its string does not.
 */
function fileTime(ns: string): number | string {
  const micros = BigInt(ns) / 1000n;
  const seconds = (Number(micros) + (micros < 0n ? -0.5 : 0.5)) / 1e6;
  return seconds < 0 ? String(seconds) : seconds;
}

/** Gives each written file its other names (its hard links). */
async function makeHardLinks(plan: RestorePlan, root: string): Promise<void> {
  for (const { entry, to } of plan.links) {
    const p = pathIn(plan, root, entry);
    await makeDirectories(path.dirname(p), 0o700);
    await fsp.link(pathIn(plan, root, to), p);
  }
}

/** Creates dirs and links, then applies modes and times (deepest first so parents keep theirs). */
async function finishTree(plan: RestorePlan, root: string, owners: OwnerMapping | undefined, settled: ReadonlySet<ManifestEntry>): Promise<void> {
  for (const s of plan.sources) await makeDirectories(sourceDir(plan, root, s.name), 0o700);
  for (const e of plan.entries) {
    const p = pathIn(plan, root, e);
    if (e.type === 'dir') await makeDirectories(p, 0o700);
    else if (e.type === 'symlink') {
      await makeDirectories(path.dirname(p), 0o700);
      await fsp.symlink(e.target!, p);
    }
  }
  await applyMetadata(plan, root, owners, (e) => settled.has(e));
}

/** Local owner and group of a recorded uid and gid. */
interface OwnerMapping {
  /** Whether files are given their owners: only a restore as root gives them. */
  give: boolean;
  uid(id: number): number;
  gid(id: number): number;
  /** Set when the file system refused a change of owner: no further one is tried. */
  refused?: NodeJS.ErrnoException;
  /** The files given their mode without a set-user-ID or set-group-ID bit (see modeFor), and the first of them. */
  withheld: { count: number; first?: string };
}

/**
 * Writes a small file that verified, as a new file (never through or over
 * anything at that path), and gives it its owner, mode and time through its
 * descriptor, which spares a lookup of its path for each. Synchronous: one
 * file at a time on the main thread costs less than round trips to the
 * threadpool, whose threads would also contend for the directory's lock.
 */
function writeSmallFile(file: string, data: Buffer, e: ManifestEntry, owners: OwnerMapping | undefined): void {
  const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
  try {
    for (let at = 0; at < data.length; ) at += fs.writeSync(fd, data, at, data.length - at, at);
    // Before the mode: a change of owner clears the set-user-ID and set-group-ID bits.
    if (ownerWanted(owners, e.uid, e.gid)) {
      try {
        fs.fchownSync(fd, owners.uid(e.uid!), owners.gid(e.gid!));
      } catch (err) {
        keepRefusal(owners, err, file);
      }
    }
    fs.fchmodSync(fd, (e.mode & SET_ID) === 0 ? e.mode : modeGiven(e, owners, fs.fstatSync(fd), file));
    const t = fileTime(e.mtimeNs);
    fs.futimesSync(fd, t, t);
  } finally {
    fs.closeSync(fd);
  }
}

function ownerWanted(owners: OwnerMapping | undefined, uid: number | undefined, gid: number | undefined): owners is OwnerMapping {
  return owners !== undefined && owners.give && !owners.refused && uid !== undefined && gid !== undefined;
}

const SET_ID = 0o6000;

/**
 * The mode for a file that `owner` owns: its recorded mode, less a set-user-ID
 * (set-group-ID) bit when its recorded owner (group) is not the one it has
 * here, as cp does when it cannot keep owners. Such a bit lends whoever runs
 * the file its owner's rights: a program of another user, restored as this
 * user's (or as root's, where owners cannot be set), would lend this user's.
 * A directory keeps its bits, which lend nothing.
 */
function modeFor(e: ManifestEntry, owners: OwnerMapping | undefined, owner: { uid: number | bigint; gid: number | bigint }): number {
  if (e.type === 'dir' || (e.mode & SET_ID) === 0) return e.mode;
  let mode = e.mode;
  if (e.uid !== undefined && (owners ? owners.uid(e.uid) : e.uid) !== Number(owner.uid)) mode &= ~0o4000;
  if (e.gid !== undefined && (owners ? owners.gid(e.gid) : e.gid) !== Number(owner.gid)) mode &= ~0o2000;
  return mode;
}

/** modeFor, counting the files it withholds a bit from, for the restore's warning. */
function modeGiven(e: ManifestEntry, owners: OwnerMapping | undefined, owner: { uid: number | bigint; gid: number | bigint }, file: string): number {
  const mode = modeFor(e, owners, owner);
  if (mode !== e.mode && owners) {
    owners.withheld.count++;
    owners.withheld.first ??= file;
  }
  return mode;
}

/** EPERM: NFS with root_squash, FAT; EINVAL: an id a user namespace does not map. tar warns and goes on too. */
function keepRefusal(owners: OwnerMapping, err: unknown, file: string): void {
  const code = (err as NodeJS.ErrnoException).code;
  if (code !== 'EPERM' && code !== 'EINVAL') throw err;
  owners.refused = err as NodeJS.ErrnoException;
  owners.refused.path ??= file;
}

/** Gives `p` its owner, unless owners are not restored or were refused before; a refusal is kept, not thrown. */
async function setOwner(owners: OwnerMapping | undefined, p: string, uid: number | undefined, gid: number | undefined, follow: boolean): Promise<void> {
  if (!ownerWanted(owners, uid, gid)) return;
  try {
    await (follow ? fsp.chown : fsp.lchown)(p, owners.uid(uid!), owners.gid(gid!));
  } catch (err) {
    keepRefusal(owners, err, p);
  }
}

/**
 * Owners are restored as tar and borg restore them, when the restore runs as
 * root (a server running as its own user must be able to read its restored
 * weights): by the name the backed-up host gave the id, where this host knows
 * that name, else by number; with `numeric`, by number only. A restore by
 * another user leaves files to that user.
 */
function ownerMapping(manifest: Manifest, numeric: boolean): OwnerMapping {
  const give = process.geteuid?.() === 0;
  if (numeric) return { give, uid: (id) => id, gid: (id) => id, withheld: { count: 0 } };
  const local = localAccounts();
  return { give, uid: idMapper(manifest.owners?.users, local.users), gid: idMapper(manifest.owners?.groups, local.groups), withheld: { count: 0 } };
}

/**
 * Whether what is at a path already has the entry's owner, mode and time, as
 * near as a restore sets a time (to the microsecond).
 */
function metadataAsRecorded(now: fs.BigIntStats, e: ManifestEntry, owners: OwnerMapping | undefined): boolean {
  const ownerRight = !ownerWanted(owners, e.uid, e.gid) || (Number(now.uid) === owners.uid(e.uid!) && Number(now.gid) === owners.gid(e.gid!));
  const modeRight = e.type === 'symlink' || Number(now.mode & 0o7777n) === modeFor(e, owners, now);
  return ownerRight && modeRight && now.mtimeNs / 1000n === BigInt(e.mtimeNs) / 1000n;
}

/**
 * Gives every entry its owner, mode and time, but those that got them as they
 * were written. With `keepWhereRight` (a --delta into a tree that may hold
 * them already), entries whose owner, mode and time are right are left alone:
 * setting them again, even to the same values, moves their change time, and
 * the next incremental backup of the tree would read every such file again.
 */
async function applyMetadata(plan: RestorePlan, root: string, owners: OwnerMapping | undefined, alreadySet: (e: ManifestEntry) => boolean, keepWhereRight = false): Promise<void> {
  const set = async (e: ManifestEntry) => {
    const p = pathIn(plan, root, e);
    if (keepWhereRight) {
      const now = await fsp.lstat(p, { bigint: true }).catch(() => undefined);
      if (now && metadataAsRecorded(now, e, owners)) return;
    }
    const t = fileTime(e.mtimeNs);
    // Before the mode: a change of owner clears the set-user-ID and set-group-ID bits.
    await setOwner(owners, p, e.uid, e.gid, false);
    if (e.type === 'symlink') {
      await fsp.lutimes(p, t, t).catch(() => undefined);
      return;
    }
    await fsp.chmod(p, (e.mode & SET_ID) === 0 ? e.mode : modeGiven(e, owners, await fsp.lstat(p), p));
    await fsp.utimes(p, t, t);
  };
  // Setting a file's mode or time leaves its directory's mtime alone, so files go in
  // parallel; directories follow, deepest first, so a parent's time is set last.
  await runPool(plan.entries.filter((e) => e.type !== 'dir' && !alreadySet(e)), METADATA_IN_FLIGHT, set);
  for (const e of [...plan.entries].reverse()) if (e.type === 'dir') await set(e);
  for (const s of plan.sources) {
    const p = sourceDir(plan, root, s.name);
    await setOwner(owners, p, s.uid, s.gid, true);
    if (s.mode !== undefined) await fsp.chmod(p, s.mode);
    if (s.mtimeNs !== undefined) await fsp.utimes(p, fileTime(s.mtimeNs), fileTime(s.mtimeNs));
  }
}

/**
 * Makes the restored tree's names (and, on journaling filesystems, the modes
 * and times just set) durable, deepest directory first. Every file's data was
 * synced as it was written: a restore that reported success survives a power
 * loss, which matters most when a failover switches traffic to it at once.
 */
async function syncDirectories(plan: RestorePlan, root: string): Promise<void> {
  const found = new Set<string>();
  // Parents too: with --include they may have been made for a file without an entry of their own.
  for (const e of plan.entries) {
    const p = pathIn(plan, root, e);
    if (e.type === 'dir') found.add(p);
    found.add(path.dirname(p));
  }
  found.delete(root);
  const dirs = [...found].sort((a, b) => b.length - a.length);
  await runPool(dirs, METADATA_IN_FLIGHT, (dir) => syncDirectory(dir));
  // Last, once every directory in it is durable.
  await syncDirectory(root);
}

/**
 * Syncs a directory that may have been given a mode without read permission
 * (a directory the backup could not read is recorded, empty, with its mode
 * 000): opening it to sync it would fail for its owner unless root, and every
 * restore of the point would fail the same way. Its owner lends itself read
 * permission for the sync and gives the recorded mode back.
 */
async function syncDirectory(dir: string): Promise<void> {
  try {
    await syncPath(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EACCES') throw err;
    const { mode } = await fsp.stat(dir);
    if ((mode & 0o400) !== 0) throw err;
    await fsp.chmod(dir, (mode | 0o400) & 0o7777).catch(() => {
      throw err;
    });
    try {
      await syncPath(dir);
    } finally {
      await fsp.chmod(dir, mode & 0o7777);
    }
  }
}

/**
 * Files in the target whose size and SHA-256 already match the point. Reading
 * a large target back takes minutes: it is reported as it goes.
 */
async function filesAlreadyRight(plan: RestorePlan, target: string, files: ManifestEntry[], signal: AbortSignal | undefined, reporter: Reporter): Promise<Set<ManifestEntry>> {
  const right = new Set<ManifestEntry>();
  const progress: Progress = { phase: 'compare', filesDone: 0, filesTotal: files.length, bytesDone: 0, bytesTotal: files.reduce((n, f) => n + f.size, 0) };
  // A file reached through a link to a directory (or one outside the tree) is not at its path in the tree:
  // the link is replaced by a directory, and the file must be written into it.
  const isDirectory = directoriesOnlyUnder(target);
  const names = new Map<string, { entries: ManifestEntry[]; nlink: number }>();
  // Several at a time: a round trip per small file costs more than hashing it.
  await runPool(files, FILES_COMPARED_AT_ONCE, async (f) => {
    throwIfAborted(signal);
    const p = pathIn(plan, target, f);
    const st = (await isDirectory(path.dirname(p))) ? await fsp.lstat(p, { bigint: true }).catch(() => undefined) : undefined;
    if (st?.isFile() && st.size === BigInt(f.size) && canBeMadeRight(st, f) && (await sha256OrUnreadable(p)) === f.sha256) {
      right.add(f);
      if (st.nlink > 1n) {
        const key = `${st.dev}:${st.ino}`;
        const found = names.get(key) ?? { entries: [], nlink: Number(st.nlink) };
        found.entries.push(f);
        names.set(key, found);
      }
    }
    progress.filesDone++;
    progress.bytesDone += f.size;
    reporter.progress?.(progressAt(progress, `${f.source}/${f.path}`));
  });
  // One file under several names (hard links) takes one owner, mode and time: it is left as it is only when
  // every name is one of these files and they all want the same. Else each name gets a file of its own, so
  // that setting one's mode does not change another's, nor a file's outside the tree.
  for (const { entries, nlink } of names.values()) {
    const [one] = entries;
    const alike = entries.every((e) => e.mode === one!.mode && e.uid === one!.uid && e.gid === one!.gid && BigInt(e.mtimeNs) / 1000n === BigInt(one!.mtimeNs) / 1000n);
    if (entries.length !== nlink || !alike) for (const e of entries) right.delete(e);
  }
  return right;
}

/**
 * Whether this user can give a file its recorded mode and time: as another
 * user than root, only in a file of its own. One of another user's (left by
 * root, say) that is not as recorded is written anew, as this user's.
 */
function canBeMadeRight(st: fs.BigIntStats, f: ManifestEntry): boolean {
  const me = process.geteuid?.();
  return me === undefined || me === 0 || Number(st.uid) === me || metadataAsRecorded(st, f, undefined);
}

/** A file's SHA-256, or undefined when this user may not read it (another user's): it is then written anew. */
async function sha256OrUnreadable(file: string): Promise<string | undefined> {
  try {
    return await sha256OfFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EACCES') return undefined;
    throw err;
  }
}

/**
 * Whether a directory under `root` is one, and so is every directory on the way to it from `root` (none
 * a link, which would lead elsewhere). Each is looked at once.
 */
function directoriesOnlyUnder(root: string): (dir: string) => Promise<boolean> {
  const known = new Map<string, Promise<boolean>>();
  const check = (dir: string): Promise<boolean> => {
    if (dir.length <= root.length) return Promise.resolve(true);
    let answer = known.get(dir);
    if (!answer) {
      answer = check(path.dirname(dir)).then((up) => up && fsp.lstat(dir).then((st) => st.isDirectory(), () => false));
      known.set(dir, answer);
    }
    return answer;
  };
  return check;
}

const FILES_COMPARED_AT_ONCE = 8;

/**
 * Brings an existing target to the point: verified files from staging are
 * renamed over whatever is there, anything the point lacks under its sources
 * is removed (but what its backup left out, unless --delete-excluded), and
 * links, modes and times are set. Returns how many paths were removed, and how many kept as left out.
 */
async function applyDelta(
  plan: RestorePlan,
  staging: string,
  target: string,
  rewritten: ReadonlySet<ManifestEntry>,
  layout: DeltaLayout,
  owners: OwnerMapping | undefined,
  settled: ReadonlySet<ManifestEntry>,
  undo?: DeltaUndo,
): Promise<{ removed: number; kept: number }> {
  if (undo) {
    // What stays in place and is as recorded keeps its metadata: only the rest is noted, and directories, which the changes in them touch.
    const byPath = new Map(plan.entries.map((e) => [pathIn(plan, target, e), e]));
    const noted = [...plan.sources.map((s) => sourceDir(plan, target, s.name)), ...byPath.keys()];
    await undo.begin(noted, (p, st) => {
      const e = byPath.get(p);
      return e === undefined || e.type === 'dir' || st.isDirectory() || (!rewritten.has(e) && !metadataAsRecorded(st, e, owners));
    });
  }
  // Read-only directories the point restored before get their modes back from the point below; the others (what the
  // point lacks, what its backup left out) theirs as they were, noted before they are opened.
  const opened: { dir: string; mode: number }[] = [];
  const opening = (dir: string, mode: number) => {
    undo?.noteMetadata(dir);
    opened.push({ dir, mode });
  };
  if (directoriesNeedOpening()) for (const s of plan.sources) await openDirectories(sourceDir(plan, target, s.name), opening);
  const copied = new Set<ManifestEntry>();
  // Remove what the point does not have, or has with another type (a source that is a file or a link, too).
  const { extras, kept } = await extrasInTarget(plan, target, { ...layout, staging });
  for (const p of extras) await (undo ? undo.setAside(p) : removeTree(p));
  const makeDir = (p: string) => (undo ? undo.makeDirectories(p) : makeDirectories(p));
  for (const s of plan.sources) await makeDir(sourceDir(plan, target, s.name));
  for (const e of plan.entries) {
    const p = pathIn(plan, target, e);
    if (e.type === 'dir') {
      await makeDir(p);
    } else if (e.type === 'symlink') {
      const current = await fsp.readlink(p).catch(() => undefined);
      if (current !== e.target) {
        if (!undo) await removeTree(p);
        else if (await fsp.lstat(p).then(() => true, () => false)) await undo.setAside(p);
        undo?.symlink(p);
        await fsp.symlink(e.target!, p);
      }
    } else if (rewritten.has(e)) {
      const from = pathIn(plan, staging, e);
      await undo?.rewrite(p, from);
      // A copy to another file system has a new owner and time.
      if ((await moveFile(from, p)) === 'copied') copied.add(e);
    }
  }
  await applyMetadata(plan, target, owners, (e) => settled.has(e) && !copied.has(e), true);
  await closeDirectories(plan, target, opened);
  return { removed: extras.length, kept };
}

/**
 * Gives the directories a --delta opened and the point gives no mode (kept as its backup left them out, or
 * above what --include chose) their modes back, those in a directory before it.
 */
async function closeDirectories(plan: RestorePlan, target: string, opened: readonly { dir: string; mode: number }[]): Promise<void> {
  if (opened.length === 0) return;
  const given = new Set(plan.entries.filter((e) => e.type === 'dir').map((e) => pathIn(plan, target, e)));
  for (const s of plan.sources) if (s.mode !== undefined) given.add(sourceDir(plan, target, s.name));
  for (const { dir, mode } of [...opened].reverse()) {
    if (given.has(dir) || !(await fsp.lstat(dir).then((st) => st.isDirectory(), () => false))) continue;
    await fsp.chmod(dir, mode);
  }
}

/**
 * Whether a path the point lacks was left out of it by its backup, by choice
 * (`source`, and the path relative to it): undefined when such paths are
 * removed too (--delete-excluded).
 */
type LeftOut = ((source: string, relPath: string, isDir: boolean) => boolean) | undefined;

interface DeltaLayout {
  mountPoint: boolean;
  include: readonly string[];
  keep: readonly string[];
  leftOut: LeftOut;
}

/**
 * What is said once before a --delta (`by`), or a failover's check of a slot it reuses, from a point taken by an
 * earlier version, which did not record the exclude patterns of its backup: the config's (`patterns`) stand in
 * for them, or, without any, what the backup left out is removed with the rest, as before. Undefined for a point
 * that records them.
 */
export function unrecordedExcludes(point: Manifest, patterns: readonly string[], by: string): Notice | undefined {
  if (point.sources.every((s) => s.exclude !== undefined)) return undefined;
  const taken = `${point.id} does not record the exclude patterns its backup left files out with (an earlier version took it)`;
  return patterns.length > 0
    ? { level: 'info', code: 'excludes-unrecorded', message: `${taken}: ${by} keeps what the config's exclude patterns match (${patterns.join(' ')})` }
    : { level: 'warning', code: 'excludes-unrecorded', message: `${taken}, and the config has none: ${by} removes everything the point lacks, what its backup left out included` };
}

/**
 * What the point's backup left out of each source with its exclude patterns,
 * matched as the backup matched them, as rsync --delete spares excluded
 * files: a --delta keeps it. A source whose point does not record its patterns
 * (taken by an older version) takes `excludesWhenUnrecorded`, if any.
 */
function leftOutByBackup(plan: RestorePlan, options: Pick<RestoreOptions, 'deleteExcluded' | 'excludesWhenUnrecorded'>): LeftOut {
  if (options.deleteExcluded) return undefined;
  const matchers = new Map<string, (relPath: string, isDir: boolean) => boolean>();
  for (const s of plan.sources) {
    try {
      // The backup applies exclude patterns to directory sources only, never to captured state.
      const unrecorded = s.kind === 'files' ? (options.excludesWhenUnrecorded ?? []) : [];
      matchers.set(s.name, excludeMatcher(s.exclude ?? unrecorded));
    } catch (err) {
      // The backup refuses such a pattern: one recorded was written by hand.
      throw new IntegrityError(`manifest of ${plan.manifest.id}: source ${s.name} records an exclude pattern no backup takes (${errorMessage(err)})`);
    }
  }
  return (source, relPath, isDir) => matchers.get(source)?.(relPath, isDir) ?? false;
}

/**
 * What a --delta removes from the target: each path under the point's
 * sources that the point lacks, or has with another type (not what is under
 * it). With --include only part of the point is wanted, so nothing is judged
 * extra. A source restored in place as a mount point holds the staging
 * directory, and fsck's lost+found: neither is extra. What the backup left
 * out (`leftOut`), and sockets, pipes and devices, which no backup stores, are
 * not extra either, but counted as `kept`.
 */
async function extrasInTarget(plan: RestorePlan, target: string, layout: DeltaLayout & { staging?: string }): Promise<{ extras: string[]; kept: number }> {
  // A source that is there as something else than a directory (a file, a link to a directory elsewhere) is replaced by one.
  const notDirectories: string[] = [];
  for (const s of plan.sources) {
    const root = sourceDir(plan, target, s.name);
    if (await fsp.lstat(root).then((st) => !st.isDirectory(), () => false)) notDirectories.push(root);
  }
  if (layout.include.length > 0) {
    const inTheWay = [...notDirectories, ...(await inTheWayOfChosen(plan, target, layout.keep)), ...(await copiesLeftBeside(plan, target))];
    return { extras: await refuseMountedExtras(target, inTheWay), kept: 0 };
  }
  const wanted = new Map(plan.entries.map((e) => [path.join(e.source, ...e.path.split('/')), e]));
  // At a mount point, the staging directory and where a --delta sets aside what it replaces are inside the target.
  const keep = new Set([...(layout.staging ? [layout.staging, mountPointAside(layout.staging)] : []), ...(layout.mountPoint ? [path.join(target, LOST_AND_FOUND)] : []), ...layout.keep]);
  const found = { extras: notDirectories, kept: 0 };
  for (const s of plan.sources) {
    const root = sourceDir(plan, target, s.name);
    const { leftOut } = layout;
    const spared = leftOut && ((relPath: string, isDir: boolean) => leftOut(s.name, relPath, isDir));
    if (await fsp.lstat(root).then((st) => st.isDirectory(), () => false)) await extrasIn(root, s.name, '', wanted, keep, spared, found);
  }
  await refuseMountedExtras(target, found.extras);
  return found;
}

/**
 * With --include, the copies that restores killed while they copied a file across file systems left in
 * the directories of the files chosen (their process gone).
 */
async function copiesLeftBeside(plan: RestorePlan, target: string): Promise<string[]> {
  const files = plan.entries.filter((e) => e.type === 'file').map((e) => pathIn(plan, target, e));
  const chosen = new Set(files);
  const left: string[] = [];
  for (const dir of new Set(files.map((f) => path.dirname(f)))) {
    for (const name of await fsp.readdir(dir).catch(() => [] as string[])) {
      const p = path.join(dir, name);
      if (!chosen.has(p) && (await leftCopy(dir, name)) === 'left') left.push(p);
    }
  }
  return left;
}

/**
 * Refuses (exit 2, before anything is written) a --delta that would remove a
 * directory where a file system is mounted, or one holding such a directory:
 * it would empty that file system and then fail, since a mount point cannot be
 * removed. Returns `extras`.
 */
async function refuseMountedExtras(target: string, extras: string[]): Promise<string[]> {
  if (extras.length === 0) return extras;
  const real = await fsp.realpath(target);
  const mounts = await mountsUnder(target);
  for (const extra of extras) {
    const at = real + extra.slice(target.length);
    const mounted = mounts.find((m) => m === at || m.startsWith(at + path.sep));
    if (mounted !== undefined) {
      throw new UsageError(`restore target ${quoteName(target)}: --delta would remove ${extra}, which the point lacks or has as something else, but a file system is mounted at ${mounted}`, {
        hint: 'unmount it (or move what is mounted there to where the point has a directory), or restore into another directory',
      });
    }
  }
  return extras;
}

/**
 * With --include, what is in the way of the chosen entries: what is at one's
 * path with another type, and what is not a directory on the way to one from
 * its source (a link to a directory elsewhere, which would have the files
 * written through it, outside the target).
 */
async function inTheWayOfChosen(plan: RestorePlan, target: string, keep: readonly string[]): Promise<string[]> {
  const found = new Set<string>();
  const kinds = new Map<string, Promise<string | undefined>>();
  const kindAt = (p: string): Promise<string | undefined> => {
    let kind = kinds.get(p);
    if (!kind) {
      kind = fsp.lstat(p).then((st) => (st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : st.isFile() ? 'file' : 'other'), () => undefined);
      kinds.set(p, kind);
    }
    return kind;
  };
  for (const e of plan.entries) {
    const root = sourceDir(plan, target, e.source);
    const names = e.path.split('/');
    let at = root;
    for (const [i, name] of names.entries()) {
      at = path.join(at, name);
      const kind = await kindAt(at);
      const want = i === names.length - 1 ? e.type : 'dir';
      if (kind === undefined) break;
      if (kind !== want && !keep.includes(at)) {
        found.add(at);
        break;
      }
    }
  }
  return [...found];
}

/**
 * Adds to `found` each path under `dir` (at `rel` in the point, `inSource` in its source) the point does not
 * have, or has with another type; what `spared` keeps is counted instead.
 */
async function extrasIn(
  dir: string,
  rel: string,
  inSource: string,
  wanted: Map<string, ManifestEntry>,
  keep: ReadonlySet<string>,
  spared: ((relInSource: string, isDir: boolean) => boolean) | undefined,
  found: { extras: string[]; kept: number },
): Promise<void> {
  for (const d of await fsp.readdir(dir, { withFileTypes: true })) {
    const relPath = path.join(rel, d.name);
    const relInSource = inSource === '' ? d.name : `${inSource}/${d.name}`;
    const abs = path.join(dir, d.name);
    if (keep.has(abs)) continue;
    const want = wanted.get(relPath);
    const copy = want || !d.isFile() ? undefined : await leftCopy(dir, d.name);
    // A copy a restore killed while it copied a file across file systems left goes, whatever the excludes say; one being made is left alone.
    if (copy === 'running') continue;
    if (copy === 'left') {
      found.extras.push(abs);
      continue;
    }
    const kind = d.isDirectory() ? 'dir' : d.isSymbolicLink() ? 'symlink' : d.isFile() ? 'file' : 'other';
    // Where the point has something, it wins; what it lacks because its backup left it out stays.
    if (!want && spared && (kind === 'other' || spared(relInSource, kind === 'dir'))) found.kept++;
    else if (!want || want.type !== kind) found.extras.push(abs);
    else if (kind === 'dir') await extrasIn(abs, relPath, relInSource, wanted, keep, spared, found);
  }
}
