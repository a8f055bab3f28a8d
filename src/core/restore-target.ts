import * as fsp from 'node:fs/promises';
import * as fs from 'node:fs';
import { constants as fsConstants } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { CredentialsRefusedError, ExitCode, LifeboatError, LockedError, RuntimeFailure, UsageError, errorMessage, fileSystemHint } from '../errors.js';
import type { ManifestEntry } from '../format/manifest.js';
import { readRegularFile, readRegularFileStats, syncPath, writeFileSynced } from '../format/durable.js';
import { isMountPoint, mountsUnder } from '../format/mounts.js';
import { makeDirectories } from '../format/mkdirs.js';
import { formatBytes } from '../format/units.js';
import type { Notice, Reporter } from './events.js';
import { OWNER_MARK, markOwnerRuns, ownerMark, ownerRuns, parseStart, type ProcessStart } from '../format/process-alive.js';
import { removeTree } from '../format/remove-tree.js';
import { quoteName, shortenedPath } from '../format/quote.js';

/*
 * The target side of a restore: what is at the target, where the staging
 * directory goes and what earlier restores left there, whether the point fits,
 * and moving the verified tree or files into place.
 */

/**
 * What marks a staging directory's name: `.<target>.lifeboat-staging-<mark>-<random>`, or without
 * `.<target>` inside a mount point; `<mark>` (see ownerMark), `<pid>-<seconds>-<ticks>-<boot>`, tells its
 * owner from a later process given the same pid, by its start where it says, whatever the clock did.
 * Older names have no `<ticks>-<boot>` (judged by `<seconds>`), or no `<seconds>`.
 */
const STAGING_MARK = '.lifeboat-staging-';

/** The name a restore into `target` gives its staging directories, up to the owner's pid. */
export function stagingPrefix(target: string, mountPoint: boolean): string {
  return mountPoint ? STAGING_MARK : `.${path.basename(target)}${STAGING_MARK}`;
}

/** A staging directory's name for this process, beside (or, at a mount point, in) `target`. */
export function stagingPath(target: string, mountPoint: boolean): string {
  return path.join(mountPoint ? target : path.dirname(target), `${stagingPrefix(target, mountPoint)}${ownerMark()}-${randomBytes(4).toString('hex')}`);
}

/** The longest path the system takes, in bytes, with the NUL that ends it (Linux's PATH_MAX). */
export const PATH_MAX = 4096;

/** What a staging directory made short is named (`.lb` and up to 8 hex digits); an entry of the name above, a symbolic link, points to it. */
const SHORT_STAGING = /^\.lb[0-9a-f]{3,8}$/;

/**
 * Where a restore into `target` stages the point, whose longest path has
 * `longest` bytes under the target. The staging directory is named as above;
 * when a path would then be longer than the system allows, it gets a name no
 * longer than the target's (`.lb` and random digits, at least 6 bytes), and
 * `marker`, a symbolic link to it of the usual name, tells whose it is.
 */
export function stagingPlace(target: string, mountPoint: boolean, longest: number): { staging: string; marker?: string } {
  const named = stagingPath(target, mountPoint);
  if (mountPoint || Buffer.byteLength(named) + longest < PATH_MAX) return { staging: named };
  const digits = Math.min(8, Math.max(3, Buffer.byteLength(path.basename(target)) - 3));
  return { staging: path.join(path.dirname(target), `.lb${randomBytes(4).toString('hex').slice(0, digits)}`), marker: named };
}


/** The staging directory an entry of a staging name stands for: itself, or the short-named directory it links to. */
async function stagingBehind(where: string): Promise<{ dir: string; marker?: string } | undefined> {
  const st = await fsp.lstat(where).catch(() => undefined);
  if (!st?.isSymbolicLink()) return st ? { dir: where } : undefined;
  const to = await fsp.readlink(where).catch(() => '');
  return SHORT_STAGING.test(to) ? { dir: path.join(path.dirname(where), to), marker: where } : { dir: where };
}

/** Removes a staging directory and the link that names it, if any. */
export async function removeStaging(staging: string, marker?: string): Promise<void> {
  await removeTree(staging);
  if (marker) await fsp.rm(marker, { force: true });
}

/**
 * Removes a staging directory another restore left; false when this user may not (another
 * user's, in a directory such as /tmp where only its owner may remove it), which is left.
 */
async function removeLeftStaging(staging: string, marker?: string): Promise<boolean> {
  try {
    await removeStaging(staging, marker);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM') return false;
    throw err;
  }
}

/** Who left a staging directory, from what follows its prefix; `replaced`: what a --force set aside. */
function stagingOwner(rest: string): { pid: number; running: boolean; replaced: boolean } | undefined {
  const m = STAGING_OWNER.exec(rest);
  if (!m) return undefined;
  const pid = Number(m[1]);
  return { pid, running: markOwnerRuns(pid, m[2], m[3]), replaced: m[4] !== undefined };
}
const STAGING_OWNER = new RegExp(`^${OWNER_MARK}-[0-9a-f]{8}(-replaced)?$`);

/**
 * What restores killed or failed on this host left beside this target (their
 * process is gone): the newest such staging directory is returned, for this
 * restore to resume from, and older ones are removed, since they would
 * otherwise fill the disk restore after restore. What an interrupted --force
 * had set aside is the old target's content: it is left, with a warning.
 */
export async function takeInterruptedStaging(dir: string, prefix: string, reporter: Reporter, warnings: Notice[]): Promise<{ where: string; marker?: string } | undefined> {
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  const leftovers: { where: string; marker?: string; mtimeMs: number }[] = [];
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const owner = stagingOwner(name.slice(prefix.length));
    if (!owner || owner.running) continue;
    const named = path.join(dir, name);
    if (owner.replaced) {
      const where = named;
      const n: Notice = { level: 'warning', code: 'replaced-left', path: where, message: 'holds what an interrupted restore --force was replacing; remove it once it is not needed' };
      warnings.push(n);
      reporter.notice?.(n);
      continue;
    }
    const behind = await stagingBehind(named);
    if (!behind) continue;
    const { dir: where, marker } = behind;
    const st = await fsp.lstat(where).catch(() => undefined);
    // Only a directory this user made, that no one else could write into, is gone on from: one planted in a
    // shared directory (/tmp) could hold links, or be changed after its files were checked.
    const uid = process.getuid?.();
    const linkOurs = marker === undefined || (await fsp.lstat(marker)).uid === (uid ?? st?.uid);
    const ours = st !== undefined && linkOurs && st.isDirectory() && st.uid === (uid ?? st.uid) && (st.mode & 0o022) === 0;
    if (ours) leftovers.push({ where, marker, mtimeMs: st.mtimeMs });
    else if (await removeLeftStaging(st ? where : named, marker)) {
      reporter.notice?.({ level: 'info', code: 'staging-removed', path: where, message: 'removed a staging directory that another user could write to' });
    } else {
      const n: Notice = { level: 'warning', code: 'staging-left', path: where, message: `left by an interrupted restore of another user (uid ${st?.uid ?? '?'}), which this user may not remove; this restore stages beside it: remove it as its owner or as root` };
      warnings.push(n);
      reporter.notice?.(n);
    }
  }
  leftovers.sort((a, b) => b.mtimeMs - a.mtimeMs);
  for (const { where, marker } of leftovers.slice(1)) {
    await removeStaging(where, marker);
    reporter.notice?.({ level: 'info', code: 'staging-removed', path: where, message: 'removed the staging directory of an interrupted restore' });
  }
  const [newest] = leftovers;
  return newest && { where: newest.where, marker: newest.marker };
}

/**
 * Removes what interrupted restores into other directories beside `target`
 * left (their process gone): a failover to another point will never resume
 * them, and a slots disk sized for its slots has no room for them.
 */
export async function removeOtherStaging(target: string): Promise<string[]> {
  const own = stagingPrefix(target, false);
  const removed: string[] = [];
  for (const name of await fsp.readdir(path.dirname(target)).catch(() => [] as string[])) {
    // A lock a failover killed while restoring another point into a new slot left. One beside a slot that is
    // there says that slot was left part-restored (status tells it): it goes when that slot is repaired or removed.
    const locker = name.endsWith(LOCK_MARK) && name !== `.${path.basename(target)}${LOCK_MARK}` ? lockOwner(await fsp.readlink(path.join(path.dirname(target), name)).catch(() => '')) : undefined;
    const locked = path.join(path.dirname(target), name.slice(1, -LOCK_MARK.length));
    if (locker && !ownerRuns(locker.pid, locker.since, locker.start) && !(await fsp.lstat(locked).then(() => true, () => false))) await fsp.rm(path.join(path.dirname(target), name), { force: true });
    const mark = name.indexOf(STAGING_MARK);
    if (mark <= 0 || name.startsWith(own)) continue;
    const owner = stagingOwner(name.slice(mark + STAGING_MARK.length));
    if (!owner || owner.running || owner.replaced) continue;
    const behind = await stagingBehind(path.join(path.dirname(target), name));
    if (behind && !(await removeLeftStaging(behind.dir, behind.marker))) continue;
    removed.push(name);
  }
  return removed;
}

/**
 * What restore --in-place writes beside each directory it is about to move a staged tree into
 * (`.<target>.lifeboat-moving`): the point, how far the moves are (`phase`), and for every directory
 * of the restore the device and inode of the staging directory the rename makes it (of the mount
 * point itself, for one filled entry by entry), where that staging directory is, where what the
 * directory held is set aside until every move is done (`replaced`), and for a mount point the names
 * moved into it. Written (and synced) beside every directory before the first is moved, removed once
 * all are and what they replaced is gone: a restore killed among the moves, or while it put them back
 * after one failed, leaves them, and any one tells the next restore --in-place what to put back.
 * Records of earlier versions have no `phase` nor `staging`: the next restore of their point compares
 * the directories they moved with it.
 */
const MOVING_MARK = '.lifeboat-moving';

/** Larger than any record a restore writes: anything bigger is not one. */
const MOVING_RECORD_MAX = 1 << 20;

/** One directory's move into place, as restore --in-place plans it before any is made. */
export interface PlannedMove {
  target: string;
  /** The staged tree: renamed to the target, or (a mount point) emptied into it. */
  staging: string;
  /** Where what the target held is set aside until every move is done; none for a target that was not there. */
  replaced?: string;
  /** A mount point, filled entry by entry: the names moved out of `staging` into it. */
  names?: string[];
  /** The link of the usual name to a staging directory named short (see stagingPlace), kept until every move is done. */
  marker?: string;
  /**
   * A --delta, which rewrites the target file by file, `replaced` holding what it removed or replaced and
   * the journal of its changes (see DeltaUndo), from which it is put back, by the restore that makes it
   * should another move fail, or after a kill by the next restore --in-place of any point.
   */
  delta?: true;
}

export interface RecordedMove extends PlannedMove {
  dev: string;
  ino: string;
}

/** `moving`: moves under way (none made yet, some, or all); `putting-back`: a move failed, and those made are being undone; `moved`: all made, what they replaced being removed. */
export type MovingPhase = 'moving' | 'putting-back' | 'moved';

export interface MovingRecord {
  point: string;
  phase?: MovingPhase;
  moves: RecordedMove[];
}

function movingRecord(target: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}${MOVING_MARK}`);
}

/** Writes `record` durably beside each directory it moves (anew, never through what is at that name); a mount point under a directory this user may not write is skipped, told by the others. */
async function writeMovingRecord(record: MovingRecord): Promise<void> {
  const text = `${JSON.stringify(record)}\n`;
  const written = new Set<string>();
  for (const m of record.moves) {
    const file = movingRecord(m.target);
    const aside = `${file}-${randomBytes(4).toString('hex')}`;
    try {
      await writeFileSynced(aside, text, { flag: 'wx', mode: 0o600 });
    } catch (err) {
      // Only a mount point (filled entry by entry, or a --delta) is restored under a directory that cannot be written.
      if ((m.names !== undefined || m.delta) && ['EACCES', 'EPERM', 'EROFS'].includes((err as NodeJS.ErrnoException).code ?? '')) continue;
      throw err;
    }
    // Replaced at once: a kill leaves the record before or the one after, never none, never half.
    await fsp.rename(aside, file);
    written.add(path.dirname(file));
  }
  for (const dir of written) await syncPath(dir);
}

/** Records, durably, beside each target, that its staging directory is about to be moved into place there (see MOVING_MARK). */
export async function recordMoves(point: string, moves: readonly PlannedMove[]): Promise<MovingRecord> {
  const record: MovingRecord = { point, phase: 'moving', moves: [] };
  for (const m of moves) {
    const st = await fsp.stat(m.names === undefined ? m.staging : m.target, { bigint: true });
    record.moves.push({ ...m, dev: String(st.dev), ino: String(st.ino) });
  }
  await writeMovingRecord(record);
  return record;
}

/** Says, durably, that the moves of `record` have come to `phase`. */
export async function recordMovesAt(record: MovingRecord, phase: MovingPhase): Promise<void> {
  record.phase = phase;
  await writeMovingRecord(record);
}

/** Removes what recordMoves wrote beside each of `targets`, and any copy of it a kill left half-written. */
export async function removeMoveRecords(targets: readonly string[]): Promise<void> {
  for (const target of targets) {
    const record = movingRecord(target);
    await fsp.rm(record, { force: true });
    const half = `${path.basename(record)}-`;
    for (const name of await fsp.readdir(path.dirname(record)).catch(() => [] as string[])) {
      if (name.startsWith(half) && /^[0-9a-f]{8}$/.test(name.slice(half.length))) await fsp.rm(path.join(path.dirname(record), name), { force: true });
    }
  }
}

/** A directory part-way through a restore --in-place, as the record beside it tells (see MOVING_MARK). */
export interface InPlaceUnfinished {
  directory: string;
  point: string;
  /** `moving` for a record of an earlier version, which does not say. */
  phase: MovingPhase;
  /** Whether the restore that wrote it holds the directory's lock still: it is running, not left. */
  running: boolean;
  /** Whether a directory of that restore held something before it (a rerun is given --force to replace it again). */
  replacing: boolean;
  /** Whether that restore was a --delta (a rerun is given --delta). */
  delta: boolean;
}

/** Which of `directories` are part-way through a restore --in-place, running or left by one killed. */
export async function inPlaceUnfinished(directories: readonly string[]): Promise<InPlaceUnfinished[]> {
  const found: InPlaceUnfinished[] = [];
  const furthest = await recordsBeside(directories);
  for (const directory of directories) {
    const beside = await readMovingRecord(directory);
    if (!beside) continue;
    const record = furthest.get(restoreOf(beside)) ?? beside;
    const held = lockOwner(await fsp.readlink(path.join(path.dirname(directory), `.${path.basename(directory)}${LOCK_MARK}`)).catch(() => ''));
    const running = held !== undefined && ownerRuns(held.pid, held.since, held.start);
    found.push({ directory, point: record.point, phase: record.phase ?? 'moving', running, replacing: record.moves.some((m) => m.replaced !== undefined), delta: record.moves.some((m) => m.delta === true) });
  }
  return found;
}

const PHASE_ORDER: Record<MovingPhase, number> = { moving: 0, 'putting-back': 1, moved: 2 };

/** Which restore a record is of: the directories it moves, the same in every record of that restore. */
const restoreOf = (record: MovingRecord): string => JSON.stringify(record.moves.map((m) => m.target));

/**
 * The records beside `dirs`, one for each restore (the same lies beside every directory of it), by
 * restoreOf. A kill while they are rewritten for a new phase, one directory after the other, leaves
 * some at the phase before and some at the new one: the furthest is taken, as the restore had come to
 * it (`putting-back` is written before anything is put back, `moved` only once every move is made).
 */
async function recordsBeside(dirs: readonly string[]): Promise<Map<string, MovingRecord>> {
  const records = new Map<string, MovingRecord>();
  for (const dir of dirs) {
    const record = await readMovingRecord(dir);
    if (!record) continue;
    const seen = records.get(restoreOf(record));
    if (!seen || PHASE_ORDER[record.phase ?? 'moving'] > PHASE_ORDER[seen.phase ?? 'moving']) records.set(restoreOf(record), record);
  }
  return records;
}

/** The record of moves beside `target`, if one is there and reads as one. */
export async function readMovingRecord(target: string): Promise<MovingRecord | undefined> {
  let record: MovingRecord;
  try {
    record = JSON.parse(await readRegularFile(movingRecord(target), MOVING_RECORD_MAX)) as MovingRecord;
  } catch {
    // None; or one cut short by a crash as it was written (by an earlier version), when the moves had not begun; or not one at all.
    return undefined;
  }
  if (typeof record?.point !== 'string' || !Array.isArray(record.moves)) return undefined;
  // Its moves are renames a rerun makes: only one this user wrote, that no one else could have changed, names where.
  const st = await fsp.lstat(movingRecord(target)).catch(() => undefined);
  const uid = process.getuid?.();
  if (!st || (uid !== undefined && st.uid !== uid) || (st.mode & 0o022) !== 0) return undefined;
  record.moves = record.moves.filter((m) => typeof m?.target === 'string' && path.isAbsolute(m.target) && placesOfAMove(m));
  return record;
}

/** Whether the staging directory, the tree set aside and the link a move names are where a restore into its target puts them. */
function placesOfAMove(m: RecordedMove): boolean {
  const inside = m.names !== undefined;
  const prefix = path.join(inside ? m.target : path.dirname(m.target), stagingPrefix(m.target, inside));
  const short = (p: string) => path.dirname(p) === path.dirname(m.target) && SHORT_STAGING.test(path.basename(p));
  const staging = m.staging === undefined || (typeof m.staging === 'string' && (m.staging.startsWith(prefix) || short(m.staging)) && !m.staging.slice(prefix.length).includes('/'));
  const replaced = m.replaced === undefined || (typeof m.replaced === 'string' && m.replaced.startsWith(prefix) && m.replaced.endsWith('-replaced') && !m.replaced.slice(prefix.length).includes('/'));
  const marker = m.marker === undefined || (typeof m.marker === 'string' && m.marker.startsWith(prefix) && !m.marker.slice(prefix.length).includes('/'));
  const names = m.names === undefined || (Array.isArray(m.names) && m.names.every((n) => typeof n === 'string' && n !== '' && n !== '.' && n !== '..' && !n.includes('/')));
  return staging && replaced && marker && names;
}

/** Whether a record's moves can be put back: written by a version that sets what it replaces aside (it names the staging directories). */
function undoable(record: MovingRecord): boolean {
  return record.phase !== undefined && record.phase !== 'moved' && record.moves.every((m) => typeof m.staging === 'string' && path.isAbsolute(m.staging));
}

const there = (p: string) => fsp.lstat(p).then(() => true, () => false);

/**
 * Undoes one move, as far as it was made: the restored tree goes back to its staging directory (for
 * a mount point, each name moved in that is not in the staging directory any more), then what the
 * directory held comes back from where it was set aside. Each step is a rename judged by what is
 * there now, so that running it again after a kill goes on where the kill stopped it.
 */
export async function putMoveBack(m: RecordedMove): Promise<void> {
  if (m.delta) {
    if (m.replaced !== undefined) await putDeltaBack({ target: m.target, replaced: m.replaced, staging: m.staging });
    return;
  }
  if (m.names !== undefined) {
    // What it held is set aside before any entry is moved in, and given back by the move itself when it fails: with none
    // set aside (not yet, or given back), every entry there is its own, even one named as a staged one.
    if (m.replaced !== undefined && !(await there(m.replaced))) return;
    await fsp.mkdir(m.staging, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
    for (const name of m.names) {
      if ((await there(path.join(m.staging, name))) || !(await there(path.join(m.target, name)))) continue;
      await fsp.rename(path.join(m.target, name), path.join(m.staging, name));
    }
    if (m.replaced !== undefined && (await there(m.replaced))) {
      for (const name of await fsp.readdir(m.replaced)) await fsp.rename(path.join(m.replaced, name), path.join(m.target, name));
      await fsp.rmdir(m.replaced);
    }
    return;
  }
  const st = await fsp.lstat(m.target, { bigint: true }).catch(() => undefined);
  if (st?.isDirectory() && `${st.dev}:${st.ino}` === `${m.dev}:${m.ino}`) await fsp.rename(m.target, m.staging);
  if (m.replaced !== undefined && (await there(m.replaced))) await fsp.rename(m.replaced, m.target);
}

/**
 * Puts back every move of `record`, the last made first, once the record says so; the records go
 * once all are back. Returns the directories that could not be put back, with why.
 */
export async function putMovesBack(record: MovingRecord): Promise<{ target: string; err: unknown }[]> {
  if (record.phase !== 'putting-back') await recordMovesAt(record, 'putting-back');
  const failed: { target: string; err: unknown }[] = [];
  for (const m of [...record.moves].reverse()) {
    await putMoveBack(m).catch((err: unknown) => failed.push({ target: m.target, err }));
  }
  if (failed.length === 0) {
    for (const dir of new Set(record.moves.map((m) => path.dirname(m.target)))) await syncPath(dir).catch(() => undefined);
    await removeMoveRecords(record.moves.map((m) => m.target));
  }
  return failed;
}

/**
 * Once every move of `record` is made: says so, removes what the directories held (set aside until
 * then), and the records. Returns a warning for each tree that could not be removed.
 */
export async function finishMoves(record: MovingRecord): Promise<Notice[]> {
  // Written again when it says so already: a kill as it was written may have left a record beside another directory at the phase before, which must not be taken for it once what the moves replaced starts to go.
  await recordMovesAt(record, 'moved');
  const left: Notice[] = [];
  for (const m of record.moves) {
    // A --delta's staging directory is kept while its changes may be put back, and what it set aside on file systems mounted inside its directory is named by its journal.
    const aside = m.delta && m.replaced !== undefined ? [...(await deltaAsidesElsewhere({ target: m.target, replaced: m.replaced, staging: m.staging })), m.replaced] : m.replaced !== undefined ? [m.replaced] : [];
    if (m.delta) await removeTree(m.staging);
    if (m.marker !== undefined) await fsp.rm(m.marker, { force: true });
    for (const dir of aside) {
      if (!(await there(dir))) continue;
      const n = await removeReplaced(dir);
      if (n) left.push(n);
    }
  }
  await removeMoveRecords(record.moves.map((m) => m.target));
  return left;
}

/**
 * What an interrupted restore --in-place left beside `targets` (whose locks the caller holds) is
 * taken up before anything else: moves under way, or being put back, are put back (the directories
 * as they were before it, its staging directories there for this restore to go on from); moves all
 * made have what they replaced removed. The locks of other directories a record names (than `held`) are taken for
 * the while. Returns the directories that hold `point` by such a restore, to be compared with it
 * (see movedByInterruptedRestore), and what was done, to be told.
 */
export async function takeUpInterruptedMoves(targets: readonly string[], point: string, held: readonly string[] = targets): Promise<{ moved: Set<string>; putBack: { point: string; targets: string[] }[]; finished: Notice[] }> {
  // The same record lies beside every directory of its restore: it is taken up once, at the furthest phase any says.
  const records = new Map([...(await recordsBeside(targets))].filter(([, record]) => record.moves.length > 0 && (undoable(record) || record.phase === 'moved')));
  const putBack: { point: string; targets: string[] }[] = [];
  const withOthersLocked = async (record: MovingRecord, work: () => Promise<void>): Promise<void> => {
    const unlocks: (() => Promise<void>)[] = [];
    try {
      for (const t of record.moves.map((m) => m.target).filter((t) => !held.includes(t))) unlocks.push(await lockRestoreTarget(t, await isMountPoint(t).catch(() => false)));
      await work();
    } finally {
      for (const unlock of unlocks) await unlock();
    }
  };
  for (const record of records.values()) {
    if (record.phase === 'moved') continue;
    await withOthersLocked(record, async () => {
      // A --delta journals its changes (see DeltaUndo): one of an earlier version did not.
      const journaled = new Set<string>();
      for (const m of record.moves) if (m.delta && m.replaced !== undefined && (await there(path.join(m.replaced, DELTA_JOURNAL)))) journaled.add(m.target);
      const failed = await putMovesBack(record);
      if (failed.length > 0) {
        const kept = record.moves.filter((m) => m.replaced).map((m) => quoteName(m.replaced!));
        throw new RuntimeFailure(`an interrupted restore --in-place of ${record.point} could not be put back in ${failed.map((f) => `${quoteName(f.target)} (${errorMessage(f.err)})`).join(', ')}`, {
          cause: failed[0]!.err,
          hint: `correct that and run the restore again${kept.length > 0 ? `; what the directories held is kept at ${kept.join(', ')}` : ''}`,
        });
      }
      // What a --delta of an earlier version killed part-way had set aside is of a tree it was changing: the next --delta brings that tree to its point.
      for (const m of record.moves) if (m.delta && m.replaced !== undefined) await removeTree(m.replaced);
      putBack.push({ point: record.point, targets: record.moves.filter((m) => !m.delta || journaled.has(m.target)).map((m) => m.target) });
    });
  }
  // Directories whose moves were all made hold their point: found before their records go.
  const moved = await movedByInterruptedRestore(targets, point);
  const finished: Notice[] = [];
  for (const record of records.values()) if (record.phase === 'moved') await withOthersLocked(record, async () => void finished.push(...(await finishMoves(record))));
  return { moved, putBack, finished };
}

/**
 * What a restore --in-place killed part-way left beside `dirs` for the next restore into them to put
 * back first (see takeUpInterruptedMoves), found without changing anything, for a --dry-run to say:
 * for each such restore, its point, its directories, and how many changes would be undone (a
 * --delta's journaled changes not undone yet, and each directory renamed into place).
 */
export async function leftToPutBack(dirs: readonly string[]): Promise<{ point: string; directories: string[]; changes: number }[]> {
  const records = [...(await recordsBeside(dirs)).values()].filter((record) => record.moves.length > 0 && undoable(record));
  const left: { point: string; directories: string[]; changes: number }[] = [];
  for (const record of records) {
    let changes = 0;
    for (const m of record.moves) changes += await changesToPutBack(m);
    left.push({ point: record.point, directories: record.moves.map((m) => m.target), changes });
  }
  return left;
}

/** How many changes putMoveBack would undo for `m`, as far as what is there tells. */
async function changesToPutBack(m: RecordedMove): Promise<number> {
  if (m.delta) {
    const journal = m.replaced === undefined ? undefined : await readDeltaJournal({ target: m.target, replaced: m.replaced, staging: m.staging }).catch(() => undefined);
    const lines = journal?.lines ?? [];
    const undone = new Set(lines.flatMap((l) => (l && 'undone' in l ? [l.undone] : [])));
    return lines.filter((l, i) => l !== undefined && 'op' in l && l.op !== 'meta' && !undone.has(i)).length;
  }
  const st = await fsp.lstat(m.target, { bigint: true }).catch(() => undefined);
  const renamed = st?.isDirectory() === true && `${st.dev}:${st.ino}` === `${m.dev}:${m.ino}`;
  return renamed || (m.replaced !== undefined && (await there(m.replaced))) ? 1 : 0;
}

/** What a --dry-run says of what leftToPutBack found: that the restore would put it back first, and that its figures are of the directories as they are now. */
export function putBackFirstNotice(left: { point: string; directories: string[]; changes: number }): Notice {
  return {
    level: 'warning',
    code: 'put-back-first',
    message: `an interrupted restore --in-place of ${left.point} left ${left.directories.map(quoteName).join(', ')} part-way: the restore would first put back its ${left.changes} change(s), the last first, and then restore; the figures below are of the directories as that restore left them, not as they will be then, and will differ`,
  };
}

/**
 * Which of `targets` are the very directories an interrupted restore --in-place of `point` moved
 * into place (as any record it left beside one of them says, by device and inode): they hold the
 * point, unless changed since.
 */
export async function movedByInterruptedRestore(targets: readonly string[], point: string): Promise<Set<string>> {
  const recorded = new Map<string, string>();
  for (const target of targets) {
    const record = await readMovingRecord(target);
    if (record?.point !== point) continue;
    for (const m of record.moves) recorded.set(m.target, `${m.dev}:${m.ino}`);
  }
  const moved = new Set<string>();
  for (const target of targets) {
    const st = await fsp.lstat(target, { bigint: true }).catch(() => undefined);
    if (st?.isDirectory() && recorded.get(target) === `${st.dev}:${st.ino}`) moved.add(target);
  }
  return moved;
}

/**
 * What marks a restore's lock beside its target: `.<target>.lifeboat-restoring`, a symbolic link to
 * `<pid>-<seconds>-<ticks>-<boot>` (the process start, see ProcessStart), or `<pid>-<seconds>` where the
 * system does not tell a process's start, and from earlier versions.
 */
const LOCK_MARK = '.lifeboat-restoring';

/**
 * A restore into `target` stopped before it finished (killed, a power loss): the lock it left beside
 * the target, whose process is gone, and when that restore started. A restore --delta (a failover
 * repairing a slot) leaves the target then holding a mix of old and new files.
 */
export async function restoreLeftUnfinished(target: string): Promise<{ pid: number; since: string } | undefined> {
  const locks = [path.join(path.dirname(target), `.${path.basename(target)}${LOCK_MARK}`)];
  // A restore --in-place of a source in it (a slot, through the link that serves it) locks that directory, beside it inside the target.
  for (const name of await fsp.readdir(target).catch(() => [] as string[])) if (name.startsWith('.') && name.endsWith(LOCK_MARK)) locks.push(path.join(target, name));
  for (const lock of locks) {
    const owner = lockOwner(await fsp.readlink(lock).catch(() => ''));
    if (owner && !ownerRuns(owner.pid, owner.since, owner.start)) return { pid: owner.pid, since: new Date(owner.since).toISOString() };
  }
  return undefined;
}

/** The pid, time (ms) and process start a restore lock names, when it names any. */
function lockOwner(held: string): { pid: number; since: number; start?: ProcessStart } | undefined {
  const m = /^(\d+)-(\d{1,12})(?:-(\d+-[0-9a-f]+))?$/.exec(held);
  return m ? { pid: Number(m[1]), since: Number(m[2]) * 1000, start: parseStart(m[3]) } : undefined;
}

/**
 * Takes the lock of a restore target: a symbolic link beside it, made
 * atomically, that names this process (a link, so that it takes no block on
 * a full disk). Two restores into one target at once (two --delta, a cron's
 * and an operator's) would each rewrite and remove what the other wrote, and
 * report a point the target does not hold: the second exits 4 at once, naming
 * the first. A lock whose process is gone (killed) is taken over. A target
 * whose parent cannot be written (a mount point under a read-only
 * directory) is restored unlocked, as it is staged inside itself.
 */
export async function lockRestoreTarget(target: string, mountPoint: boolean): Promise<() => Promise<void>> {
  const file = path.join(path.dirname(target), `.${path.basename(target)}${LOCK_MARK}`);
  const mine = ownerMark();
  for (let attempt = 0; attempt < 50; attempt++) {
    try {
      await fsp.symlink(mine, file);
      return async () => {
        if ((await fsp.readlink(file).catch(() => '')) === mine) await fsp.rm(file, { force: true });
      };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      // No parent yet: nothing can be restoring there; the restore makes it (and says why it cannot).
      if (code === 'ENOENT' || code === 'ENOTDIR' || (mountPoint && ['EACCES', 'EPERM', 'EROFS'].includes(code))) return async () => undefined;
      if (code !== 'EEXIST') {
        throw new RuntimeFailure(`cannot take the lock of restore target ${quoteName(target)} (${quoteName(file)}): ${errorMessage(err)}`, {
          cause: err,
          hint: fileSystemHint(err, path.dirname(target)) ?? `check that ${quoteName(path.dirname(target))} can be written`,
        });
      }
    }
    const held = await fsp.readlink(file).catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? undefined : ''));
    if (held === undefined) continue;
    const owner = lockOwner(held);
    if (owner && ownerRuns(owner.pid, owner.since, owner.start)) {
      throw new LockedError(`restore target ${quoteName(target)} is being restored by another lifeboat process (pid ${owner.pid}, since ${new Date(owner.since).toISOString()})`, {
        hint: `wait for it to finish, then run this restore again; if that process is gone, remove ${quoteName(file)}`,
      });
    }
    // Left by a restore killed before it could remove it: moved aside and removed if it is still the one judged.
    const aside = `${file}-${randomBytes(4).toString('hex')}`;
    const refused = await fsp.rename(file, aside).then(() => undefined, (err: NodeJS.ErrnoException) => err);
    if (refused?.code === 'EACCES' || refused?.code === 'EPERM') {
      // Another user's, in a directory where only its owner may remove it (/tmp, sticky): taking it over cannot succeed.
      const owner = await fsp.lstat(file).then((st) => ` of uid ${st.uid}`, () => '');
      throw new RuntimeFailure(`restore target ${quoteName(target)} holds the lock ${quoteName(file)}${owner}, left by a restore that is gone, and this user may not remove it`, {
        cause: refused,
        hint: `remove it as its owner or as root, then run this restore again`,
      });
    }
    if (refused) continue;
    if ((await fsp.readlink(aside).catch(() => '')) !== held) await fsp.link(aside, file).catch(() => undefined);
    await fsp.rm(aside, { force: true });
  }
  throw new LockedError(`could not take the lock of restore target ${quoteName(target)}, ${quoteName(file)}, which kept changing hands`, { hint: 'another restore into it is starting; run this one again when it has finished' });
}

/**
 * Refuses at once a restore that cannot fit, instead of failing when the disk
 * is full. File systems that report no size (ramfs, some network ones) are
 * not judged.
 */
export async function checkFreeSpace(staging: string, target: string | readonly string[], files: readonly ManifestEntry[]): Promise<void> {
  const fsStats = await fsp.statfs(staging).catch(() => undefined);
  if (!fsStats || fsStats.blocks === 0) return;
  // Each file takes whole blocks: thousands of small files (tokenizers, configs, logs) take far more than their bytes.
  // Counted in 4 KiB at most: a network file system reports its transfer size (up to 1 MiB on NFS) as its block.
  const block = Math.min(fsStats.bsize, 4096);
  const bytes = files.reduce((n, f) => n + f.size, 0);
  const needed = files.reduce((n, f) => n + Math.ceil(f.size / block) * block, 0);
  const free = fsStats.bavail * fsStats.bsize;
  if (needed <= free) return;
  // Said when it is the blocks that do not fit: the bytes alone would.
  const inBlocks = bytes <= free ? ` (${formatBytes(bytes)} in ${files.length} files, each taking whole blocks of ${formatBytes(block)})` : '';
  // Several targets on one file system (restore --in-place) are staged at once: they need room together.
  const where = typeof target === 'string' ? quoteName(target) : target.map(quoteName).join(', ');
  throw new NotEnoughSpace(`the restore needs ${formatBytes(needed)}${inBlocks} on the file system of ${where}, and ${formatBytes(free)} is free`);
}

/** A restore refused before writing, for want of free space; callers may give their own hint. */
export class NotEnoughSpace extends RuntimeFailure {
  constructor(message: string, hint = 'free space there, restore a part with --include, or restore somewhere else (restore --target; --work-dir for drill and verify --deep)') {
    super(message, { hint });
  }
}

/**
 * Whether a restore (or a failover, a rollback) failed by being refused before it wrote anything: a
 * target or a choice it will not act on as given (exit 2: not empty, --include matching nothing, no
 * previous slot …), another process restoring or switching it (exit 4), too little free space.
 * Credentials refused part-way are a failure like the network's.
 */
export function refusedBeforeWriting(err: unknown): boolean {
  const usage = err instanceof LifeboatError && err.exitCode === ExitCode.usage && !(err instanceof CredentialsRefusedError);
  return usage || err instanceof LockedError || err instanceof NotEnoughSpace;
}

/** A failed file-system call while restoring, told as one sentence about the target (the staging directory is an internal name). */
export function asRestoreFailure(err: unknown, staging: string, target: string): unknown {
  if (err instanceof LifeboatError || (err instanceof Error && err.name === 'AbortError') || (err as NodeJS.ErrnoException).code === undefined) return err;
  const at = (err as NodeJS.ErrnoException).path;
  // Paths in the staging directory are said as where they go; what the target held, set aside beside it (`<staging>-replaced`), by its own name.
  const staged = new RegExp(`${staging.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(?!-replaced)`, 'g');
  const inTarget = (text: string) => text.replace(staged, () => target);
  let message = inTarget(errorMessage(err));
  if (at) message = message.replaceAll(inTarget(at), shortenedPath(inTarget(at)));
  const hint =
    (err as NodeJS.ErrnoException).code === 'ENAMETOOLONG'
      ? `a path of the point is longer under ${quoteName(target)} than the system allows (4,096 bytes in all); restore into a target with a shorter path, or leave that part out with --include`
      : fileSystemHint(err, target);
  return new RuntimeFailure(`cannot restore into ${quoteName(target)}: ${message}`, { cause: err, hint });
}

export type TargetState = 'absent' | 'empty' | 'non-empty' | 'not-a-directory';

/** fsck's directory at the root of an ext2/3/4 file system: at a mount point it is not part of what is restored or replaced. */
export const LOST_AND_FOUND = 'lost+found';

/** The real path of `p`, or of its nearest existing ancestor with the rest appended. */
async function realPathOfNearest(p: string): Promise<string> {
  const rest: string[] = [];
  for (let at = path.resolve(p); ; at = path.dirname(at)) {
    try {
      return path.join(await fsp.realpath(at), ...rest.reverse());
    } catch {
      if (at === path.dirname(at)) return path.resolve(p);
      rest.push(path.basename(at));
    }
  }
}

/** How a restore target and a repository on local disk overlap: the target in the repository, or the repository (at a path under the target) in the target. */
export type RepositoryOverlap = { targetInside: true } | { repositoryInside: string } | undefined;

export async function repositoryOverlap(repositoryLocation: string, target: string): Promise<RepositoryOverlap> {
  // An S3 repository (s3://…) shares nothing with a directory.
  if (!path.isAbsolute(repositoryLocation)) return undefined;
  const repo = await realPathOfNearest(repositoryLocation);
  const real = await realPathOfNearest(target);
  const within = (inner: string, outer: string) => inner === outer || inner.startsWith(outer.endsWith(path.sep) ? outer : outer + path.sep);
  if (within(real, repo)) return { targetInside: true };
  if (within(repo, real)) return { repositoryInside: path.join(path.resolve(target), path.relative(real, repo)) };
  return undefined;
}

/**
 * A --work-dir inside the repository, where a drill or verify --deep would restore: refused as the flag it is,
 * before anything is made there, rather than as a restore target the operator never named.
 */
export async function refuseWorkDirInRepository(repositoryLocation: string, workDir: string | undefined, command: string): Promise<void> {
  if (workDir === undefined || !(await repositoryOverlap(repositoryLocation, workDir).then((o) => o && 'targetInside' in o))) return;
  throw new UsageError(`--work-dir ${quoteName(workDir)} lies inside the repository ${quoteName(repositoryLocation)}`, {
    hint: `give ${command} a --work-dir outside the repository, or none to use the system temporary directory; writing in the repository would damage the backups`,
  });
}

export async function inspectTarget(target: string): Promise<{ state: TargetState; mountPoint: boolean }> {
  let st;
  try {
    st = await fsp.lstat(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { state: 'absent', mountPoint: false };
    throw err;
  }
  if (!st.isDirectory()) return { state: 'not-a-directory', mountPoint: false };
  const mountPoint = await isMountPoint(target);
  const names = (await fsp.readdir(target)).filter((n) => !(mountPoint && n === LOST_AND_FOUND));
  return { state: names.length === 0 ? 'empty' : 'non-empty', mountPoint };
}

/**
 * Moves what was restored into a target where a file system is mounted, one
 * source at a time (each is a rename within that file system). When it
 * replaces, what was there is set aside first and removed last; if a move
 * fails, everything is put back as it was. With `keepReplaced`, what was
 * there stays set aside (restore --in-place removes it once every directory is moved).
 */
export async function moveIntoMountPoint(staging: string, target: string, replace: boolean, keepReplaced = false): Promise<Notice | undefined> {
  const aside = mountPointAside(staging);
  const keep = new Set([path.basename(staging), LOST_AND_FOUND]);
  const previous = replace ? (await fsp.readdir(target)).filter((n) => !keep.has(n)) : [];
  const setAside: string[] = [];
  const placed: string[] = [];
  try {
    if (previous.length > 0) await fsp.mkdir(aside, { mode: 0o700 });
    for (const name of previous) {
      await fsp.rename(path.join(target, name), path.join(aside, name));
      setAside.push(name);
    }
    for (const name of await fsp.readdir(staging)) {
      await fsp.rename(path.join(staging, name), path.join(target, name));
      placed.push(name);
    }
  } catch (err) {
    let putBack = true;
    for (const name of placed) await fsp.rename(path.join(target, name), path.join(staging, name)).catch(() => (putBack = false));
    for (const name of setAside) await fsp.rename(path.join(aside, name), path.join(target, name)).catch(() => (putBack = false));
    // Whatever could not be put back stays set aside, not deleted.
    if (putBack) await removeTree(aside).catch(() => undefined);
    throw err;
  }
  await fsp.rmdir(staging);
  return previous.length > 0 && !keepReplaced ? removeReplaced(aside) : undefined;
}

/** Where moveIntoMountPoint sets aside what a mount point held. */
export function mountPointAside(staging: string): string {
  return `${staging}-replaced`;
}

/**
 * Renames a verified file into place; where the place is on another file
 * system (a source directory that is itself a mount point), copies it beside
 * its place (`.<file>.lifeboat-<pid>-<random>`), syncs the copy and renames
 * that instead. A copy left by a process killed meanwhile is found by leftCopy.
 */
export async function moveFile(from: string, to: string): Promise<'renamed' | 'copied'> {
  try {
    await fsp.rename(from, to);
    return 'renamed';
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
  }
  const beside = path.join(path.dirname(to), `.${path.basename(to)}.lifeboat-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await fsp.copyFile(from, beside, fsConstants.COPYFILE_EXCL);
    await syncPath(beside);
    await fsp.rename(beside, to);
  } catch (err) {
    await fsp.rm(beside, { force: true });
    throw err;
  }
  await fsp.rm(from);
  return 'copied';
}

/** The pid in the name of a copy moveFile makes beside a file's place. */
const COPY_NAME = /^\..+\.lifeboat-([1-9][0-9]*)-[0-9a-f]{8}$/;

/**
 * Whether `name` in `dir` is a copy moveFile made: `left` when the process that made it is gone (killed
 * while it copied), `running` when it may still run (never to be removed); undefined for anything else.
 */
export async function leftCopy(dir: string, name: string): Promise<'left' | 'running' | undefined> {
  const pid = COPY_NAME.exec(name)?.[1];
  if (pid === undefined) return undefined;
  const st = await fsp.lstat(path.join(dir, name)).catch(() => undefined);
  if (!st?.isFile()) return undefined;
  // Its time is when it was written: a process given the pid since is not its maker.
  return ownerRuns(Number(pid), st.mtimeMs) ? 'running' : 'left';
}

/**
 * Removes the copies (see leftCopy) whose process is gone anywhere under `root`, links not followed;
 * returns their paths. A slot switched to without being restored again is cleaned so.
 */
export async function removeLeftCopies(root: string): Promise<string[]> {
  const removed: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const d of await fsp.readdir(dir, { withFileTypes: true }).catch(() => [])) {
      if (d.isDirectory()) await walk(path.join(dir, d.name));
      else if (d.isFile() && (await leftCopy(dir, d.name)) === 'left') {
        await fsp.rm(path.join(dir, d.name), { force: true });
        removed.push(path.join(dir, d.name));
      }
    }
  };
  await walk(root);
  return removed;
}

/**
 * Moves the verified staging directory to the target (opened to 0755 first,
 * unless `openUp` is false); returns a warning when what it replaced could not be removed.
 * With `keepReplaced`, what the target was (an empty directory too) stays set aside at `old`.
 */
export async function moveIntoPlace(staging: string, target: string, state: TargetState, openUp = true, old = `${staging}-replaced`, keepReplaced = false): Promise<Notice | undefined> {
  // Made 0700 so no one reads a half-restored tree; a source restored as the target has its own mode by now.
  if (openUp) await fsp.chmod(staging, 0o755);
  if (state === 'non-empty' || (state === 'empty' && keepReplaced)) {
    await fsp.rename(target, old);
    try {
      if (state === 'empty' && (await fsp.readdir(old)).length > 0) throw filledMeanwhile(target, Object.assign(new Error('directory not empty'), { code: 'ENOTEMPTY' }));
      await fsp.rename(staging, target);
    } catch (err) {
      await fsp.rename(old, target);
      throw err;
    }
    return keepReplaced ? undefined : removeReplaced(old);
  }
  // rename() replaces an empty directory atomically.
  await fsp.rename(staging, target).catch((err: unknown) => {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
    throw filledMeanwhile(target, err);
  });
  return undefined;
}

/** Another restore into the same target (or anything else) filled it while this one ran. */
function filledMeanwhile(target: string, err: unknown): RuntimeFailure {
  return new RuntimeFailure(`restore target ${quoteName(target)} was filled by another process while this restore ran; nothing in it was replaced`, {
    cause: err,
    hint: 'run the restore again, with --delta to update what is there now or --force to replace it; it goes on from the files this one verified',
  });
}

/**
 * Removes what a restore replaced, once the restored tree is in place. The
 * restore has then succeeded: a failure here (files of another user, say)
 * leaves it set aside, named in a warning, rather than failing the restore.
 */
export async function removeReplaced(aside: string): Promise<Notice | undefined> {
  try {
    await removeTree(aside);
    return undefined;
  } catch (err) {
    return { level: 'warning', code: 'replaced-left', path: aside, message: `holds what was replaced, which could not be removed (${errorMessage(err)}); remove it by hand` };
  }
}

/**
 * The journal of a --delta restore --in-place (`journal` in the directory its changes set aside, the
 * move's `replaced`): one JSON line per change, written before the change is made, so that the
 * restore itself, should another directory's move fail, or the next restore --in-place of any point,
 * after a kill, can undo them, the last first. A line is judged by what is there when it is undone,
 * so one whose change was not made (killed between the two) undoes nothing; each change undone is
 * followed by a line `{"undone": <line>}`, so that a kill while changes are undone goes on from there.
 */
const DELTA_JOURNAL = 'journal';

/** Larger than the journal of a --delta of millions of changes: anything bigger is not one. */
const DELTA_JOURNAL_MAX = 1 << 30;

/** One change of a --delta, as its journal records it. */
type DeltaStep =
  /** What was at `p` (what the point lacks, or has as something else) renamed to `to`. */
  | { op: 'aside'; p: string; to: string }
  /** The staged file `from` renamed over `p`; the file there before, if any, hard-linked (or, where it cannot be, renamed) to `to` first. */
  | { op: 'rewrite'; p: string; from: string; to?: string }
  /** A symbolic link made at `p`. */
  | { op: 'link'; p: string }
  /** Directories made, the deepest first. */
  | { op: 'mkdir'; dirs: string[] }
  /** The mode, owner and times of what a --delta may change, as they were before it: [path, mode, uid, gid, atime ns, mtime ns]. */
  | { op: 'meta'; noted: NotedMetadata[] };

type NotedMetadata = [string, number, number, number, string, string];

const metadataNoted = (p: string, st: fs.BigIntStats): NotedMetadata => [p, Number(st.mode & 0o7777n), Number(st.uid), Number(st.gid), String(st.atimeNs), String(st.mtimeNs)];

type DeltaLine = DeltaStep | { undone: number };

/** A --delta's directory, where it set aside what it changed (holding its journal), and its staging directory. */
type DeltaMove = { target: string; replaced: string; staging: string };

/**
 * What a --delta restore --in-place changes in its target, set aside and journaled so that it can be
 * put back: what it removes or replaces is renamed into `aside` (a file it rewrites hard-linked there
 * first, so that its name is never empty), each change written to the journal before it is made, the
 * modes, owners and times of what is there noted first. What is on a file system mounted inside the
 * target is set aside on its own device, in a directory of the same name at that mount's root. With
 * the target's lock held throughout, only this restore changes it.
 */
export class DeltaUndo {
  private fd: number | undefined;
  private count = 0;
  private mounts: Promise<string[]> | undefined;
  private made = new Set<string>();
  constructor(
    readonly target: string,
    readonly aside: string,
  ) {}

  /** Makes the journal and notes the metadata of `paths` (those `changes` may change): before anything is changed. */
  async begin(paths: readonly string[], changes: (p: string, st: fs.BigIntStats) => boolean): Promise<void> {
    await fsp.mkdir(this.aside, { mode: 0o700 });
    this.made.add(this.aside);
    this.fd = fs.openSync(path.join(this.aside, DELTA_JOURNAL), fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_APPEND | fs.constants.O_NOFOLLOW, 0o600);
    const noted: NotedMetadata[] = [];
    for (const p of paths) {
      const st = await fsp.lstat(p, { bigint: true }).catch(() => undefined);
      if (st && changes(p, st)) noted.push(metadataNoted(p, st));
    }
    this.write({ op: 'meta', noted });
  }

  /** Before a change of the mode of `p` that begin() did not note (a directory opened to change what is in it): its metadata as it is. */
  noteMetadata(p: string): void {
    this.write({ op: 'meta', noted: [metadataNoted(p, fs.lstatSync(p, { bigint: true }))] });
  }

  /** Closes the journal; the changes are all made (or one failed). */
  end(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }

  /** A write(2) of its own: the kernel has the line before the change is made, whatever kills the process then. */
  private write(step: DeltaStep): void {
    fs.writeSync(this.fd!, `${JSON.stringify(step)}\n`);
  }

  /** Where the next thing set aside from `p` goes: in `aside`, or (`onItsDevice`) in the directory of that name at the root of the file system mounted inside the target that holds `p`. */
  private async slot(p: string, exdev: unknown): Promise<string> {
    if (exdev === undefined) return path.join(this.aside, String(this.count++));
    const dir = await fsp.realpath(path.dirname(p));
    this.mounts ??= mountsUnder(this.target);
    const mount = (await this.mounts).filter((m) => dir === m || dir.startsWith(`${m}/`)).sort((a, b) => b.length - a.length)[0];
    if (mount === undefined) throw exdev;
    return path.join(mount, path.basename(this.aside), String(this.count++));
  }

  /** Sets `p` aside with `move`, in `aside`, or, across file systems (EXDEV), on its own device. */
  private async onSomeDevice(p: string, move: (to: string) => Promise<void>): Promise<void> {
    try {
      await move(await this.slot(p, undefined));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
      await move(await this.slot(p, err));
    }
  }

  private async makeSlot(to: string): Promise<void> {
    const dir = path.dirname(to);
    if (this.made.has(dir)) return;
    await fsp.mkdir(dir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => (err.code === 'EEXIST' ? undefined : Promise.reject(err)));
    this.made.add(dir);
  }

  /** Moves what is at `p` aside (a removal that can be put back). */
  async setAside(p: string): Promise<void> {
    await this.onSomeDevice(p, async (to) => {
      this.write({ op: 'aside', p, to });
      await this.makeSlot(to);
      await fsp.rename(p, to);
    });
  }

  /**
   * Before the staged file `from` is renamed over `p`: a second name of the file at `p`, if one, in
   * its place aside; where this user may not make one (a file of another user, with the kernel's
   * protected_hardlinks), the file itself is renamed there.
   */
  async rewrite(p: string, from: string): Promise<void> {
    if (!(await fsp.lstat(p).catch(() => undefined))?.isFile()) {
      this.write({ op: 'rewrite', p, from });
      return;
    }
    await this.onSomeDevice(p, async (to) => {
      this.write({ op: 'rewrite', p, from, to });
      await this.makeSlot(to);
      await fsp.link(p, to).catch((err: NodeJS.ErrnoException) => (err.code === 'EPERM' ? fsp.rename(p, to) : Promise.reject(err)));
    });
  }

  /** Before a symbolic link is made at `p`, where nothing is. */
  symlink(p: string): void {
    this.write({ op: 'link', p });
  }

  async makeDirectories(p: string): Promise<void> {
    const missing: string[] = [];
    for (let at = p; !(await there(at)); at = path.dirname(at)) missing.push(at);
    if (missing.length > 0) this.write({ op: 'mkdir', dirs: missing });
    await makeDirectories(p);
  }

  /** Undoes every change, the last first, and gives back the noted metadata; throws the first failure, having tried every step. */
  async putBack(staging: string): Promise<void> {
    this.end();
    await putDeltaBack({ target: this.target, replaced: this.aside, staging });
  }
}

const within = (p: unknown, dir: string): p is string => typeof p === 'string' && (p === dir || p.startsWith(`${dir}/`)) && !p.split('/').includes('..');

/** Whether a line of a journal names only what a --delta of `m` may touch (see DeltaUndo). */
function validStep(s: DeltaStep, m: DeltaMove): boolean {
  const aside = (to: unknown) => typeof to === 'string' && path.isAbsolute(to) && path.basename(path.dirname(to)) === path.basename(m.replaced) && /^\d+$/.test(path.basename(to)) && !to.split('/').includes('..');
  switch (s.op) {
    case 'aside':
      return within(s.p, m.target) && aside(s.to);
    case 'rewrite':
      return within(s.p, m.target) && within(s.from, m.staging) && (s.to === undefined || aside(s.to));
    case 'link':
      return within(s.p, m.target);
    case 'mkdir':
      return Array.isArray(s.dirs) && s.dirs.every((d) => within(d, m.target));
    case 'meta':
      return Array.isArray(s.noted) && s.noted.every((n) => Array.isArray(n) && within(n[0], m.target) && n.slice(1, 4).every((x) => Number.isInteger(x)) && n.slice(4).every((x) => typeof x === 'string' && /^-?\d+$/.test(x)));
    default:
      return false;
  }
}

/** The lines of the journal of a --delta of `m` that read as such (the last may have been cut short by a crash), or undefined when there is none. */
async function readDeltaJournal(m: DeltaMove): Promise<{ file: string; lines: (DeltaLine | undefined)[] } | undefined> {
  const file = path.join(m.replaced, DELTA_JOURNAL);
  let text: string;
  let stats: fs.BigIntStats;
  try {
    ({ text, stats } = await readRegularFileStats(file, DELTA_JOURNAL_MAX));
  } catch (err) {
    if (isMissing(err)) return undefined;
    throw err;
  }
  // Its lines are renames: only one this user wrote, that no one else could have changed, names where.
  const uid = process.getuid?.();
  if ((uid !== undefined && Number(stats.uid) !== uid) || (stats.mode & 0o022n) !== 0n) return undefined;
  const lines = text.split('\n').map((line): DeltaLine | undefined => {
    try {
      const l = JSON.parse(line) as DeltaLine;
      return 'undone' in l ? (Number.isInteger(l.undone) ? l : undefined) : validStep(l, m) ? l : undefined;
    } catch {
      return undefined;
    }
  });
  return { file, lines };
}

const isMissing = (err: unknown) => ['ENOENT', 'ENOTDIR'].includes((err as NodeJS.ErrnoException).code ?? '');

/** The directories a --delta of `m` set things aside in on file systems mounted inside its target (see DeltaUndo). */
async function deltaAsidesElsewhere(m: DeltaMove): Promise<string[]> {
  const journal = await readDeltaJournal(m).catch(() => undefined);
  return asidesElsewhere(journal?.lines ?? [], m.replaced);
}

/** The directories other than `replaced` that the lines of a journal set things aside in. */
function asidesElsewhere(lines: readonly (DeltaLine | undefined)[], replaced: string): string[] {
  const dirs = new Set<string>();
  for (const l of lines) if (l && 'op' in l && (l.op === 'aside' || l.op === 'rewrite') && l.to !== undefined) dirs.add(path.dirname(l.to));
  dirs.delete(replaced);
  return [...dirs];
}

/**
 * Undoes the changes the journal of a --delta of `m` records and were not undone yet, the last first,
 * and gives back the noted metadata; a rewritten file taken out goes back into the staging directory,
 * for the next restore to go on from. Then removes the journal and the directories things were set
 * aside in. Throws the first failure, having tried every step. Returns false when there is no journal
 * (none was begun, or an earlier version's --delta, which kept none).
 */
export async function putDeltaBack(m: DeltaMove): Promise<boolean> {
  const journal = await readDeltaJournal(m);
  if (!journal) return false;
  const undone = new Set(journal.lines.flatMap((l) => (l && 'undone' in l ? [l.undone] : [])));
  let first: unknown;
  for (let i = journal.lines.length - 1; i >= 0; i--) {
    const s = journal.lines[i];
    if (!s || 'undone' in s || undone.has(i)) continue;
    try {
      await undoStep(s);
      await fsp.appendFile(journal.file, `${JSON.stringify({ undone: i })}\n`);
    } catch (err) {
      first ??= err;
    }
  }
  if (first !== undefined) throw first;
  // Named by the journal already read: it is about to go.
  for (const dir of asidesElsewhere(journal.lines, m.replaced)) await fsp.rmdir(dir).catch((err: unknown) => (isMissing(err) ? undefined : Promise.reject(err)));
  await fsp.rm(journal.file, { force: true });
  await fsp.rmdir(m.replaced);
  return true;
}

async function undoStep(s: DeltaStep): Promise<void> {
  switch (s.op) {
    case 'aside':
      if (await there(s.to)) await fsp.rename(s.to, s.p);
      return;
    case 'rewrite': {
      const kept = s.to === undefined ? undefined : await fsp.lstat(s.to).catch(() => undefined);
      // The file there before was not set aside yet: nothing was changed.
      if (s.to !== undefined && !kept) return;
      const now = await fsp.lstat(s.p).catch(() => undefined);
      const same = kept !== undefined && now?.ino === kept.ino && now.dev === kept.dev;
      if (now?.isFile() && !same) await returnToStaging(s.p, s.from);
      // Two names of one file: a rename of one over the other does nothing.
      if (same) await fsp.unlink(s.to!);
      else if (kept) await fsp.rename(s.to!, s.p);
      return;
    }
    case 'link':
      if ((await fsp.lstat(s.p).catch(() => undefined))?.isSymbolicLink()) await fsp.unlink(s.p);
      return;
    case 'mkdir':
      for (const d of s.dirs) await fsp.rmdir(d).catch((err: unknown) => (isMissing(err) ? undefined : Promise.reject(err)));
      return;
    case 'meta': {
      let first: unknown;
      for (const [p, mode, uid, gid, atimeNs, mtimeNs] of [...s.noted].reverse()) {
        const now = await fsp.lstat(p, { bigint: true }).catch(() => undefined);
        // Only what changed is set: a directory that could not be written (immutable) is left alone.
        if (!now || (Number(now.mode & 0o7777n) === mode && Number(now.uid) === uid && Number(now.gid) === gid && String(now.mtimeNs) === mtimeNs)) continue;
        await fsp.lchown(p, uid, gid).catch(() => undefined);
        if (!now.isSymbolicLink()) await fsp.chmod(p, mode).catch((err: unknown) => (first ??= err));
        await fsp.lutimes(p, Number(BigInt(atimeNs) / 1000n) / 1e6, Number(BigInt(mtimeNs) / 1000n) / 1e6).catch((err: unknown) => (first ??= err));
      }
      if (first !== undefined) throw first;
    }
  }
}

/** A rewritten file a --delta had moved in goes back to where it was staged, if that is still there, else is removed. */
async function returnToStaging(p: string, from: string): Promise<void> {
  const staged = (await fsp.lstat(path.dirname(from)).catch(() => undefined))?.isDirectory() && !(await there(from));
  if (staged && (await fsp.rename(p, from).then(() => true, () => false))) return;
  await fsp.rm(p, { force: true });
}
