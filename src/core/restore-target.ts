import * as fsp from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { CredentialsRefusedError, ExitCode, LifeboatError, LockedError, RuntimeFailure, errorMessage, fileSystemHint } from '../errors.js';
import type { ManifestEntry } from '../format/manifest.js';
import { readRegularFile, syncPath, writeFileSynced } from '../format/durable.js';
import { isMountPoint } from '../format/mounts.js';
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
 * (`.<target>.lifeboat-moving`): the point, and for every directory of the restore the device and
 * inode of the staging directory the rename makes it. Written (and synced) beside every directory
 * before the first is moved, removed once all are: a restore killed among the moves leaves them, and
 * any one tells the next restore --in-place of that point which directories it had moved already.
 */
const MOVING_MARK = '.lifeboat-moving';

/** Larger than any record a restore writes: anything bigger is not one. */
const MOVING_RECORD_MAX = 1 << 20;

interface MovingRecord {
  point: string;
  moves: { target: string; dev: string; ino: string }[];
}

function movingRecord(target: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}${MOVING_MARK}`);
}

/** Records, durably, beside each target, that its staging directory is about to be moved into place there (see MOVING_MARK). */
export async function recordMoves(point: string, moves: readonly { target: string; staging: string }[]): Promise<void> {
  const record: MovingRecord = { point, moves: [] };
  for (const m of moves) {
    const st = await fsp.stat(m.staging, { bigint: true });
    record.moves.push({ target: m.target, dev: String(st.dev), ino: String(st.ino) });
  }
  const text = `${JSON.stringify(record)}\n`;
  for (const m of moves) {
    // Written anew, never through what is at that name.
    await fsp.rm(movingRecord(m.target), { force: true });
    await writeFileSynced(movingRecord(m.target), text, { flag: 'wx', mode: 0o600 });
  }
  for (const dir of new Set(moves.map((m) => path.dirname(m.target)))) await syncPath(dir);
}

/** Removes what recordMoves wrote beside each of `targets`. */
export async function removeMoveRecords(targets: readonly string[]): Promise<void> {
  for (const target of targets) await fsp.rm(movingRecord(target), { force: true });
}

/**
 * Which of `targets` are the very directories an interrupted restore --in-place of `point` moved
 * into place (as any record it left beside one of them says, by device and inode): they hold the
 * point, unless changed since.
 */
export async function movedByInterruptedRestore(targets: readonly string[], point: string): Promise<Set<string>> {
  const recorded = new Map<string, string>();
  for (const target of targets) {
    let record: MovingRecord;
    try {
      record = JSON.parse(await readRegularFile(movingRecord(target), MOVING_RECORD_MAX)) as MovingRecord;
    } catch {
      // None; or one cut short by a crash as it was written, when the moves had not begun; or not one at all.
      continue;
    }
    if (record?.point !== point || !Array.isArray(record.moves)) continue;
    for (const m of record.moves) if (typeof m?.target === 'string') recorded.set(m.target, `${m.dev}:${m.ino}`);
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
  const held = await fsp.readlink(path.join(path.dirname(target), `.${path.basename(target)}${LOCK_MARK}`)).catch(() => '');
  const owner = lockOwner(held);
  if (!owner || ownerRuns(owner.pid, owner.since, owner.start)) return undefined;
  return { pid: owner.pid, since: new Date(owner.since).toISOString() };
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
  let message = errorMessage(err).replaceAll(staging, target);
  if (at) message = message.replaceAll(at.replaceAll(staging, target), shortenedPath(at.replaceAll(staging, target)));
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
 * fails, everything is put back as it was.
 */
export async function moveIntoMountPoint(staging: string, target: string, replace: boolean): Promise<Notice | undefined> {
  const aside = `${staging}-replaced`;
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
  return previous.length > 0 ? removeReplaced(aside) : undefined;
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
 */
export async function moveIntoPlace(staging: string, target: string, state: TargetState, openUp = true, old = `${staging}-replaced`): Promise<Notice | undefined> {
  // Made 0700 so no one reads a half-restored tree; a source restored as the target has its own mode by now.
  if (openUp) await fsp.chmod(staging, 0o755);
  if (state === 'non-empty') {
    await fsp.rename(target, old);
    try {
      await fsp.rename(staging, target);
    } catch (err) {
      await fsp.rename(old, target);
      throw err;
    }
    return removeReplaced(old);
  }
  // rename() replaces an empty directory atomically.
  await fsp.rename(staging, target).catch((err: unknown) => {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
    // Another restore into the same target (or anything else) filled it while this one ran.
    throw new RuntimeFailure(`restore target ${quoteName(target)} was filled by another process while this restore ran; nothing in it was replaced`, {
      cause: err,
      hint: 'run the restore again, with --delta to update what is there now or --force to replace it; it goes on from the files this one verified',
    });
  });
  return undefined;
}

/**
 * Removes what a restore replaced, once the restored tree is in place. The
 * restore has then succeeded: a failure here (files of another user, say)
 * leaves it set aside, named in a warning, rather than failing the restore.
 */
async function removeReplaced(aside: string): Promise<Notice | undefined> {
  try {
    await removeTree(aside);
    return undefined;
  } catch (err) {
    return { level: 'warning', code: 'replaced-left', path: aside, message: `holds what was replaced, which could not be removed (${errorMessage(err)}); remove it by hand` };
  }
}
