import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lstatSync, readdirSync, readlinkSync, statSync, type BigIntStats } from 'node:fs';
import { Minimatch } from 'minimatch';
import { UsageError, errorMessage, throwIfAborted } from '../errors.js';
import { firstFew } from '../format/units.js';
import { danglingLinkTarget } from '../format/mkdirs.js';
import { isAbsentPath } from '../format/durable.js';
import { linkEscapes, linkStaysInside, nameFromBytes, relativeTargetInside, sortByPath, sourceNameFor } from '../format/paths.js';
import type { Reporter } from './events.js';
import { quoteName, shellWord } from '../format/quote.js';

export interface SourceSpec {
  name: string;
  /** The directory that is scanned. */
  path: string;
  /** What it captures; serving-state providers materialise their state into `path` first. Default files. */
  kind?: 'files' | 'sqlite' | 'command';
  /** Recorded in the manifest instead of `path` (the database file, or the command line). */
  origin?: string;
  /** command sources: the command that restores the state from stdin. */
  restore?: string;
}

/** One filesystem entry of a source, as found by the scan. */
export interface ScannedEntry {
  source: string;
  /** '/'-separated, relative to the source root. */
  path: string;
  type: 'file' | 'dir' | 'symlink';
  mode: number;
  mtimeNs: string;
  /** Change time: moves on any write or change of metadata, and cannot be set back, as mtime can. */
  ctimeNs: string;
  size: number;
  ino: string;
  /** Device and link count: files with the same device and inode are one file under several names (hard links). */
  dev: string;
  nlink: number;
  uid: number;
  gid: number;
  target?: string;
  /** Absolute path on disk. */
  abs: string;
}

export interface ScannedSource {
  spec: SourceSpec;
  /** The source's directory as given (it is read with its symbolic links resolved when the scan began). */
  root: string;
  mode: number;
  mtimeNs: string;
  uid: number;
  gid: number;
  entries: ScannedEntry[];
}

/**
 * The error for a path given with bytes that are not UTF-8: it arrives with U+FFFD in their place,
 * and names nothing, though the directory is there.
 */
export function notUtf8Path(what: string): UsageError {
  return new UsageError(`${what} cannot be read: a path that is not valid UTF-8 reaches lifeboat with U+FFFD in place of those bytes, and names nothing`, {
    hint: 'rename the directory (or the one it is in) to a UTF-8 name',
  });
}

/**
 * The names in a directory, read again as bytes because one came back with U+FFFD in it: a name
 * that is not UTF-8 does, and names no file, but so does one that holds U+FFFD itself. Those that
 * are not UTF-8 are left out with a warning; read as text they could be taken for another file
 * of the directory (`a\xff` for `a\uFFFD`), and the point would list that file twice. The warning
 * names each of them with the bytes that are not UTF-8 kept (see nameFromBytes), not as U+FFFD.
 */
function utf8Names(absDir: string, relDir: string, source: string, reporter: Reporter): string[] {
  const names: string[] = [];
  for (const raw of readdirSync(absDir, { encoding: 'buffer' })) {
    const name = raw.toString('utf8');
    if (Buffer.from(name).equals(raw)) {
      names.push(name);
      continue;
    }
    reporter.notice?.({
      level: 'warning',
      code: 'name-not-utf8',
      path: `${source}/${relDir === '' ? '' : `${relDir}/`}${nameFromBytes(raw)}`,
      message: 'its name is not valid UTF-8, which lifeboat cannot store; rename it to back it up',
    });
  }
  return names;
}

/**
 * Whether a path relative to its source's root is left out. As in tar, rsync,
 * restic and .gitignore: a pattern without a slash (`*.tmp`, `__pycache__`)
 * matches a name at any depth; one with a slash matches the whole relative
 * path; a leading slash anchors it at the source's root (`/logs`); a trailing
 * slash matches directories only (`cache/`). A directory left out is not read.
 * A leading `!` is refused (see excludePatternProblem); `\!` stands for a literal one.
 */
export function isExcluded(relPath: string, isDir: boolean, patterns: readonly string[]): boolean {
  return excludeMatcher(patterns)(relPath, isDir);
}

/**
 * Why a pattern cannot be an exclude pattern, and what to write instead; undefined when it can be.
 * A leading `!` is refused: .gitignore reads it as putting back what an earlier pattern left out,
 * the glob matcher as leaving out everything else, and neither reading is safe to guess in a backup
 * (a file that a re-include cannot reach, inside a directory left out, would be silently missing).
 */
export function excludePatternProblem(pattern: string): { problem: string; hint: string } | undefined {
  if (!pattern.startsWith('!')) return undefined;
  return {
    problem: 'an exclude pattern cannot start with ! (in .gitignore, putting back what an earlier pattern left out: lifeboat has no such re-includes)',
    hint: `make the other patterns leave ${pattern.slice(1) || 'it'} in; for a name that starts with !, write \\${pattern}`,
  };
}

/** The patterns compiled once, for a scan that asks about every entry. */
export function excludeMatcher(patterns: readonly string[]): (relPath: string, isDir: boolean) => boolean {
  const rules = patterns.flatMap(compileExclude);
  return (relPath, isDir) => rules.some((r) => (isDir || !r.dirsOnly) && r.matcher.match(relPath));
}

function compileExclude(pattern: string): { matcher: Minimatch; dirsOnly: boolean }[] {
  const refused = excludePatternProblem(pattern);
  if (refused) throw new UsageError(`exclude pattern ${pattern}: ${refused.problem}`, { hint: refused.hint });
  const rules: { matcher: Minimatch; dirsOnly: boolean }[] = [];
  // `cache/**` leaves out the directory itself, not only what is under it; `cache` keeps the slash's anchoring.
  if (pattern.endsWith('/**')) {
    const parent = pattern.slice(0, -3);
    rules.push(...compileExclude(parent.includes('/') ? parent : `/${parent}`).map((r) => ({ ...r, dirsOnly: true })));
  }
  let p = pattern;
  const dirsOnly = p.endsWith('/');
  if (dirsOnly) p = p.replace(/\/+$/, '');
  const anchored = p.startsWith('/');
  if (anchored) p = p.replace(/^\/+/, '');
  if (p !== '') rules.push({ matcher: new Minimatch(p, { dot: true, matchBase: !anchored, nonegate: true }), dirsOnly });
  return rules;
}

function statOrUndefined(file: string): BigIntStats | undefined {
  try {
    return statSync(file, { bigint: true });
  } catch {
    return undefined;
  }
}

/**
 * Every entry is built by this one literal, its properties always in the same
 * order: Node 20's V8 gives an object made as `{ ...base, type }` a hidden class
 * of its own, and 100,000 of those cost about 40 MB and slowed every later read
 * of the entries.
 */
export function entryFromStat(source: string, rel: string, abs: string, st: BigIntStats, type: ScannedEntry['type'], target?: string): ScannedEntry {
  return {
    source,
    path: rel,
    type,
    mode: Number(st.mode & 0o7777n),
    mtimeNs: st.mtimeNs.toString(),
    ctimeNs: st.ctimeNs.toString(),
    size: type === 'file' ? Number(st.size) : 0,
    ino: st.ino.toString(),
    dev: st.dev.toString(),
    nlink: Number(st.nlink),
    uid: Number(st.uid),
    gid: Number(st.gid),
    target,
    abs,
  };
}

/**
 * A link that stays inside its source read on its own may still lead out of it
 * through another link (`e -> a/s/../..` with `a/s -> ../..`), and restore
 * refuses it. It gets what a link out of the source gets: the file it points
 * to stored in its place, or it is left out with a warning. Returns the bytes
 * of the files stored in place of links.
 */
function leaveOutLinksThroughLinks(entries: ScannedEntry[], source: string, followed: string[], reporter: Reporter): number {
  const links = new Map<string, string>();
  for (const e of entries) if (e.type === 'symlink') links.set(e.path, e.target!);
  if (links.size === 0) return 0;
  let bytes = 0;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    if (e.type !== 'symlink' || !linkEscapes(e.path, e.target!, (p) => links.get(p))) continue;
    const pointed = statOrUndefined(e.abs);
    if (pointed?.isFile()) {
      entries[i] = entryFromStat(source, e.path, e.abs, pointed, 'file');
      bytes += entries[i]!.size;
      followed.push(`${e.path} -> ${e.target}`);
      continue;
    }
    reporter.notice?.({
      level: 'warning',
      code: 'link-escapes',
      path: `${source}/${e.path}`,
      message: `symlink leads outside the source through another link (${e.target}), and not to a regular file; left out of the backup`,
    });
    entries.splice(i--, 1);
  }
  return bytes;
}

/** Entries listed and stated between turns of the event loop. */
const SYNC_BATCH = 256;

/**
 * Walks a source tree without following symlinks. Unreadable entries and
 * special files are reported and skipped, never fatal.
 */
export async function scanSource(
  spec: SourceSpec,
  excludes: readonly string[],
  reporter: Reporter,
  signal?: AbortSignal,
  /** Directories never to back up, by device and inode (`dev:ino`): the repository itself. */
  leaveOut: ReadonlySet<string> = new Set(),
): Promise<ScannedSource> {
  const given = path.resolve(spec.path);
  let root: string;
  let rootStat: BigIntStats;
  try {
    // Everything is read through the resolved path: a source under a target's `active` link
    // (/srv/serving/current/models) stays in one slot when a failover switches the link meanwhile.
    root = await fsp.realpath(given);
    rootStat = await fsp.stat(root, { bigint: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      // A path that is not there, or a link (or a directory on the way) to nothing: an unmounted volume, a typo.
      if (given.includes('\uFFFD')) throw notUtf8Path(`source ${spec.name}: ${given}`);
      const to = await danglingLinkTarget(given);
      throw new UsageError(`source ${spec.name}: ${quoteName(given)} ${to === undefined ? 'does not exist' : `is a symbolic link to ${quoteName(to)}, which does not exist`}`, {
        hint: 'check the path, and that its volume is mounted',
      });
    }
    throw new UsageError(`source ${spec.name}: cannot read ${quoteName(given)}: ${errorMessage(err)}`);
  }
  if (!rootStat.isDirectory()) {
    // A single-file model (a .gguf, a .onnx) is the usual case: its directory is the source.
    const parent = path.dirname(given);
    throw new UsageError(`source ${spec.name}: ${quoteName(given)} is not a directory; a source is a directory, restored as DIR/<source name>/`, {
      hint: rootStat.isFile() ? `back up the directory that holds it: --source ${sourceNameFor(path.basename(parent))}=${shellWord(parent)}, with --exclude for what else is there` : undefined,
    });
  }

  const excluded = excludeMatcher(excludes);
  const entries: ScannedEntry[] = [];
  const pending: string[] = [''];
  let bytes = 0;
  let sinceYield = 0;
  const followed: string[] = [];
  const madeRelative: string[] = [];
  const roots = [...new Set([root, given])];
  const passThrough: string[] = [];
  // Directories are listed and entries stated synchronously: a round trip through the thread pool
  // per directory or file costs more than the call itself. The event loop still runs between batches.
  const yieldNow = async (): Promise<void> => {
    sinceYield = 0;
    await new Promise<void>((resolve) => setImmediate(resolve));
    throwIfAborted(signal);
  };
  while (pending.length > 0) {
    throwIfAborted(signal);
    const relDir = pending.pop()!;
    const absDir = relDir === '' ? root : path.join(root, relDir);
    let names: string[];
    try {
      names = readdirSync(absDir);
    } catch (err) {
      if (isAbsentPath(err)) reporter.notice?.({ level: 'warning', code: 'file-vanished', path: `${spec.name}/${relDir}`, message: 'directory disappeared before it could be listed; recorded empty' });
      else reporter.notice?.({ level: 'warning', code: 'unreadable', path: `${spec.name}/${relDir}`, message: `cannot read directory: ${errorMessage(err)}` });
      continue;
    }
    if (++sinceYield >= SYNC_BATCH) await yieldNow();
    if (names.some((n) => n.includes('\uFFFD'))) names = utf8Names(absDir, relDir, spec.name, reporter);
    for (const name of names) {
      if (++sinceYield >= SYNC_BATCH) await yieldNow();
      const rel = relDir === '' ? name : `${relDir}/${name}`;
      const abs = path.join(absDir, name);
      let st: BigIntStats;
      try {
        st = lstatSync(abs, { bigint: true });
      } catch (err) {
        // Listed, then removed before it was looked at (an old version cleaned up while the backup runs).
        if (isAbsentPath(err)) reporter.notice?.({ level: 'warning', code: 'file-vanished', path: `${spec.name}/${rel}`, message: 'disappeared before it could be read; not in this point' });
        else reporter.notice?.({ level: 'warning', code: 'unreadable', path: `${spec.name}/${rel}`, message: `cannot stat: ${errorMessage(err)}` });
        continue;
      }
      const isDir = st.isDirectory();
      if (excluded(rel, isDir)) continue;
      if (isDir && leaveOut.has(`${st.dev}:${st.ino}`)) {
        reporter.notice?.({ level: 'info', code: 'repository-left-out', path: `${spec.name}/${rel}`, message: 'the repository lies inside this source; it is left out of the backup' });
        continue;
      }
      if (isDir) {
        entries.push(entryFromStat(spec.name, rel, abs, st, 'dir'));
        pending.push(rel);
      } else if (st.isFile()) {
        const entry = entryFromStat(spec.name, rel, abs, st, 'file');
        entries.push(entry);
        bytes += entry.size;
      } else if (st.isSymbolicLink()) {
        let target: string;
        try {
          const raw = readlinkSync(abs, { encoding: 'buffer' });
          target = raw.toString('utf8');
          if (!Buffer.from(target).equals(raw)) {
            // Stored as read, it would be restored leading somewhere else (U+FFFD where the bytes were).
            reporter.notice?.({ level: 'warning', code: 'name-not-utf8', path: `${spec.name}/${rel}`, message: 'symlink whose target is not valid UTF-8, which lifeboat cannot store; left out of the backup' });
            continue;
          }
        } catch (err) {
          reporter.notice?.({ level: 'warning', code: 'unreadable', path: `${spec.name}/${rel}`, message: `cannot read link: ${errorMessage(err)}` });
          continue;
        }
        if (!linkStaysInside(rel, target)) {
          // An absolute link into the source (a `current` pointing at /srv/models/v3 in /srv/models) is kept as a
          // relative one: restored anywhere, it names the restored copy, not the place it was backed up from.
          const relative = relativeTargetInside(rel, target, roots);
          if (relative !== undefined) {
            entries.push(entryFromStat(spec.name, rel, abs, st, 'symlink', relative));
            madeRelative.push(`${rel} -> ${target}`);
            continue;
          }
          // A link out of the source (a Hugging Face snapshot's links into its blobs/) stands for the file it
          // points to, which is stored in its place, as rsync --copy-unsafe-links does: the backup restores on its own.
          const pointed = statOrUndefined(abs);
          if (pointed?.isFile()) {
            entries.push(entryFromStat(spec.name, rel, abs, pointed, 'file'));
            bytes += Number(pointed.size);
            followed.push(`${rel} -> ${target}`);
            continue;
          }
          // Kept, it would make restore refuse the point: a link that leads out of the restored tree is hostile input there.
          reporter.notice?.({
            level: 'warning',
            code: 'link-escapes',
            path: `${spec.name}/${rel}`,
            message: `symlink points outside the source (${target}), and not to a regular file; left out of the backup (back up what it points to as a source of its own)`,
          });
          continue;
        }
        entries.push(entryFromStat(spec.name, rel, abs, st, 'symlink', target));
      } else if (st.isSocket() || st.isFIFO()) {
        // A server's socket or a pipe holds no data to restore (tar leaves sockets out too): not worth a warning every run.
        passThrough.push(rel);
      } else {
        reporter.notice?.({ level: 'warning', code: 'special-file', path: `${spec.name}/${rel}`, message: 'not a regular file, directory or symlink; skipped' });
      }
    }
    reporter.progress?.({ phase: 'scan', filesDone: entries.length, filesTotal: 0, bytesDone: bytes, bytesTotal: 0 });
  }
  bytes += leaveOutLinksThroughLinks(entries, spec.name, followed, reporter);
  if (followed.length > 0) {
    reporter.notice?.({
      level: 'info',
      code: 'links-followed',
      path: spec.name,
      message: `${followed.length} symlink(s) point outside the source; the files they point to are stored in their place (${firstFew(followed)})`,
    });
  }
  if (madeRelative.length > 0) {
    reporter.notice?.({
      level: 'info',
      code: 'links-made-relative',
      path: spec.name,
      message: `${madeRelative.length} absolute symlink(s) into the source are stored as relative links, which name the restored copy wherever it is restored (${firstFew(madeRelative)})`,
    });
  }
  if (passThrough.length > 0) {
    reporter.notice?.({
      level: 'info',
      code: 'sockets-left-out',
      path: spec.name,
      message: `${passThrough.length} socket(s) and named pipe(s) left out, which hold no data (${firstFew(passThrough)})`,
    });
  }
  sortByPath(entries, (e) => e.path);
  return { spec, root: given, mode: Number(rootStat.mode & 0o7777n), mtimeNs: rootStat.mtimeNs.toString(), uid: Number(rootStat.uid), gid: Number(rootStat.gid), entries };
}
