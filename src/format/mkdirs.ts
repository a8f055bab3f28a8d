import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import * as os from 'node:os';
import { OWNER_MARK, markOwnerRuns, ownerMark } from './process-alive.js';

/**
 * `mkdir -p`: creates a directory and any missing parents, and accepts one
 * that is already there. Node's own `mkdir(dir, { recursive: true })` loops
 * forever when a directory cannot be created although its parent exists
 * (mkdir under /proc or /sys answers ENOENT), so a mistyped repository or
 * target path would hang the command at full CPU. This climbs once to the
 * nearest existing ancestor and creates each missing level once.
 *
 * A level that another process removes while this one looks at it (a
 * repository's `locks/` emptied by a lock's release) is made again, a few
 * times at most; anything else in the way is ENOTDIR.
 */
export async function makeDirectories(dir: string, mode?: number): Promise<void> {
  const missing: string[] = [];
  for (let at = path.resolve(dir); ; ) {
    try {
      await makeLevel(at, mode);
      break;
    } catch (err) {
      const parent = path.dirname(at);
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || parent === at) throw err;
      missing.push(at);
      at = parent;
    }
  }
  for (const level of missing.reverse()) await makeLevel(level, mode);
}

/** How often a level that vanishes between a mkdir and a look at it is made again. */
const VANISHED_ATTEMPTS = 10;

/** Makes one directory, or accepts the directory (or link to one) already there. ENOENT when its parent is missing. */
async function makeLevel(at: string, mode: number | undefined): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await fsp.mkdir(at, { mode });
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      if ((await existingDirectory(at, err)) === 'directory') return;
      if (attempt >= VANISHED_ATTEMPTS) throw Object.assign(new Error(`${at} keeps vanishing while it is created`), { code: 'ENOENT', path: at, cause: err });
    }
  }
}

/**
 * Something was at `at` a moment ago: a directory (or a link to one), gone
 * since (removed by another process), or else ENOTDIR, with the mkdir's error as its cause.
 */
async function existingDirectory(at: string, mkdirError: unknown): Promise<'directory' | 'vanished'> {
  const st = await fsp.stat(at).catch(() => undefined);
  if (st?.isDirectory()) return 'directory';
  if (!st) {
    // Nothing at all: removed meanwhile (and maybe made again since); a dangling link stays in the way.
    const link = await fsp.lstat(at).catch(() => undefined);
    if (!link) return 'vanished';
    if (link.isDirectory()) return 'directory';
  }
  throw Object.assign(new Error(`${at} exists and is not a directory`), { code: 'ENOTDIR', path: at, cause: mkdirError });
}

/**
 * What keeps `dir` from being a directory or being made one: the first path on the way to it, from
 * the root, that is there and is not a directory (a file, a link to one or to nothing). Undefined
 * when nothing on the way is in it (what is missing can be made).
 */
export async function notADirectoryOnTheWay(dir: string): Promise<string | undefined> {
  const full = path.resolve(dir);
  let at = path.parse(full).root;
  for (const name of full.slice(at.length).split(path.sep).filter(Boolean)) {
    at = path.join(at, name);
    const st = await fsp.stat(at).catch(() => undefined);
    if (st?.isDirectory()) continue;
    return st || (await fsp.lstat(at).catch(() => undefined)) ? at : undefined;
  }
  return undefined;
}

/** Where `p` points when it is a symbolic link to nothing (a volume not mounted, a directory not made yet); undefined otherwise. */
export async function danglingLinkTarget(p: string): Promise<string | undefined> {
  const to = await fsp.readlink(p).catch(() => undefined);
  if (to === undefined) return undefined;
  return (await fsp.stat(p).then(() => true, () => false)) ? undefined : to;
}

/** The work directories this process made, which are not leftovers even where a killed process of the same pid left others. */
const madeHere = new Set<string>();

/**
 * Removes the work directories with `prefix` in `dir` that processes killed
 * before they could remove them left (a drill's copy of a whole point, a
 * captured database): those named for a pid that no longer runs, or that now
 * belongs to a process started after the directory was made (a reboot, a
 * container run again), or for this process's pid (a container may give every
 * run the same one) but not made by it. Directories of other live processes,
 * and any it may not remove, stay.
 */
async function removeLeftWorkDirectories(dir: string, prefix: string, removed: (dir: string) => void): Promise<void> {
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  // <prefix><pid>-<seconds since the epoch when it was made>-<ticks>-<boot>-<random> (see ownerMark); older names have no
  // <ticks>-<boot>, or no <seconds>.
  const pattern = new RegExp(`^${prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}${OWNER_MARK}-[A-Za-z0-9]{6}$`);
  for (const name of names) {
    const m = pattern.exec(name);
    const pid = Number(m?.[1]);
    if (!m || !Number.isSafeInteger(pid) || pid <= 0) continue;
    const full = path.join(dir, name);
    if (pid === process.pid ? madeHere.has(full) : markOwnerRuns(pid, m[2], m[3])) continue;
    try {
      await fsp.rm(full, { recursive: true });
      removed(full);
    } catch {
      // Another user's, or gone meanwhile: not this run's to clear.
    }
  }
}

/**
 * A new temporary directory in `parent`, made first if it is not there yet; in
 * the system's temporary directory without one. Its name carries this
 * process's pid and the time it was made, so that a later run can tell it from a live run's and remove
 * it if this one is killed first; `removed` hears of each such one removed.
 */
export async function makeWorkDirectory(parent: string | undefined, prefix: string, removed: (dir: string) => void = () => undefined): Promise<string> {
  if (parent !== undefined) await makeDirectories(parent);
  const dir = parent ?? os.tmpdir();
  await removeLeftWorkDirectories(dir, prefix, removed);
  const made = await fsp.mkdtemp(path.join(dir, `${prefix}${ownerMark()}-`));
  madeHere.add(made);
  return made;
}
