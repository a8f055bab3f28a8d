import { PathIndex } from './path-index.js';
import { ownerChanged, relinkedPaths } from './diff.js';
import type { BackupType } from '../format/ids.js';
import type { ContentRef, Manifest, ManifestEntry, PointSummary } from '../format/manifest.js';
import type { ScannedEntry, ScannedSource } from './scan.js';

export interface ReferenceChoice {
  type: BackupType;
  /** Id of the point unchanged files are compared with (and whose refs they reuse). */
  referenceId?: string;
  /** Set when the requested type could not be honoured. */
  fallbackReason?: string;
}

/** Sources of files that hold no file or link now (directories at most). */
export function emptySources(scanned: readonly ScannedSource[]): ScannedSource[] {
  return scanned.filter((s) => (s.spec.kind ?? 'files') === 'files' && !s.entries.some((e) => e.type !== 'dir'));
}

/** Of `empty` sources, those `latest` held files or links in, with how many. */
export function emptiedSince(empty: readonly ScannedSource[], latest: Manifest): { source: ScannedSource; held: number }[] {
  const held = new Map<string, number>();
  for (const e of latest.entries) if (e.type !== 'dir') held.set(e.source, (held.get(e.source) ?? 0) + 1);
  return empty.filter((s) => held.get(s.spec.name)).map((source) => ({ source, held: held.get(source.spec.name)! }));
}

/**
 * diff compares with the newest full of its deployment; incr with the newest
 * point of any type of it; with no point of the deployment yet, every backup
 * is a full. `otherNames`: the deployments the repository holds points of, when known. The newest point's full is the newest full, so the newest
 * point's summary alone decides.
 */
export function chooseReference(newest: Pick<PointSummary, 'id' | 'full'> | undefined, requested: BackupType, deployment: string, othersExist: boolean, otherNames: readonly string[] = []): ReferenceChoice {
  if (requested === 'full') return { type: 'full' };
  if (!newest) {
    // The deployments there are named: a name mistyped in a cron line starts a new chain of fulls, night after night.
    const names = otherNames.length > 0 ? ` (its deployments: ${otherNames.join(', ')})` : '';
    const why = othersExist ? `deployment ${deployment} has no backup in this repository yet${names}` : 'no full backup exists yet';
    return { type: 'full', fallbackReason: `${why}, so this ${requested} backup is taken as a full` };
  }
  if (requested === 'diff') return { type: 'diff', referenceId: newest.full };
  return { type: 'incr', referenceId: newest.id };
}

export type ContentAction =
  /** Not a file, or a file whose recorded checksum and reference are reused unread. */
  | 'reuse'
  /** Read, hash and store (new or changed). */
  | 'store'
  /** Read and hash; reuse the reference when the content is unchanged, store it otherwise. */
  | 'verify';

export interface PlannedEntry {
  scanned: ScannedEntry;
  /**
   * Files: the reference's entry whose recorded content this file is expected
   * to have, reused unread ('reuse') or after a comparison ('verify'): the
   * entry at the same path, or for a file moved or renamed since, the entry
   * of the same inode, size and mtime at its old path.
   */
  basis?: ManifestEntry;
  action: ContentAction;
  /** A tar header is written for it (dirs and links that are new or changed). */
  inVolume: boolean;
}

export interface BackupPlan {
  entries: PlannedEntry[];
  /** Bytes that will (or may, for 'verify') be read. */
  bytesToRead: number;
  filesToRead: number;
  /** The reference's entries by source and path (countChanges looks them up again). */
  referenceByPath: PathIndex<ManifestEntry>;
}

export const entryKey = (source: string, path: string) => `${source}\u0000${path}`;

/** Coarse filesystem timestamps (FAT: 2 s) set the window. */
export const RACY_WINDOW_MS = 2000;

/**
 * Decides what to read. A file keeps its recorded SHA-256 and content
 * reference without being read when its size, mtime (ns), inode and ctime all
 * match the reference; when only the inode or the ctime moved, it is read and
 * stored only if its bytes differ. A file modified within the timestamp granularity of the
 * reference's scan may have changed again without its mtime moving ("racy",
 * as git calls it): it is read and hashed, and stored only if it differs.
 */
export function planBackup(scanned: readonly ScannedEntry[], reference: Manifest | undefined): BackupPlan {
  const racyAfterNs = reference ? BigInt(Date.parse(reference.startedAt) - RACY_WINDOW_MS) * 1_000_000n : 0n;
  const previous = byPath(reference);
  // Built when a file first does not match its path's entry: an unchanged incremental never needs it.
  let byInode: Map<string, ManifestEntry> | undefined;
  const movedFrom = (s: ScannedEntry): ManifestEntry | undefined => {
    if (!byInode) {
      byInode = new Map();
      for (const e of reference?.entries ?? []) if (reusable(e) && e.ino !== undefined) byInode.set(inodeKey(e.ino, e.size, e.mtimeNs), e);
    }
    return byInode.get(inodeKey(s.ino, s.size, s.mtimeNs));
  };
  const plan: BackupPlan = { entries: [], bytesToRead: 0, filesToRead: 0, referenceByPath: previous };
  for (const s of scanned) {
    const atPath = previous.get(s.source, s.path);
    let basis: ManifestEntry | undefined;
    let action: ContentAction = 'reuse';
    let inVolume = false;
    if (s.type === 'file') {
      const timesAtPath = reusable(atPath) && atPath.size === s.size && atPath.mtimeNs === s.mtimeNs;
      // Moved or renamed since (a model directory rotated from current/ to previous/): the inode
      // still holds the old path's content, so it is compared with that instead of stored again.
      const prev = timesAtPath ? atPath : (movedFrom(s) ?? atPath);
      const timesSame = reusable(prev) && prev.size === s.size && prev.mtimeNs === s.mtimeNs;
      // Same size and mtime under another inode: copied with its times kept (a failover's new slot,
      // cp -a, rsync -a, a FUSE remount), most likely the same bytes. Same inode too, but a new change
      // time: written in place with its mtime set back, or only chmod'ed. Either is read and compared,
      // as borg and restic do, and stored only if it differs.
      const statSame = timesSame && prev === atPath && prev.ino === s.ino;
      const ctimeMoved = statSame && prev.ctimeNs !== undefined && prev.ctimeNs !== s.ctimeNs;
      action = !timesSame ? 'store' : !statSame || ctimeMoved || BigInt(prev.mtimeNs) >= racyAfterNs ? 'verify' : 'reuse';
      if (timesSame) basis = prev;
      if (action !== 'reuse') {
        plan.bytesToRead += s.size;
        plan.filesToRead++;
      }
    } else {
      inVolume = !atPath || atPath.type !== s.type || atPath.mode !== s.mode || atPath.mtimeNs !== s.mtimeNs || atPath.target !== s.target || atPath.uid !== s.uid || atPath.gid !== s.gid;
    }
    plan.entries.push({ scanned: s, ...(basis ? { basis } : {}), action, inVolume });
  }
  return plan;
}

/** A file entry whose content can be taken over: it has a checksum and a place in some volume. */
function reusable(e: ManifestEntry | undefined): e is ManifestEntry & { size: number; sha256: string; ref: ContentRef } {
  return e?.type === 'file' && e.size !== undefined && e.sha256 !== undefined && e.ref !== undefined;
}

const inodeKey = (ino: string, size: number, mtimeNs: string) => `${ino}:${size}:${mtimeNs}`;

export interface ChangeCounts {
  added: number;
  changed: number;
  removed: number;
}

/**
 * Files and links added, changed (content, mode, owner, link target or mtime) and
 * removed against the reference; directories are not counted, as in `diff`,
 * nor, as there, the time of a file of a state source (`captured`).
 */
export function countChanges(entries: readonly ManifestEntry[], reference: Manifest | undefined, previous: PathIndex<ManifestEntry>, captured: ReadonlySet<string>): ChangeCounts {
  const counts: ChangeCounts = { added: 0, changed: 0, removed: 0 };
  // A point lists each path once, so the reference's files and links not matched are the ones removed.
  let matched = 0;
  const relinked = relinkedPaths(reference?.entries ?? [], entries);
  for (const e of entries) {
    if (e.type === 'dir') continue;
    const prev = previous.get(e.source, e.path);
    if (!prev || prev.type === 'dir') {
      counts.added++;
      continue;
    }
    matched++;
    if (
      prev.type !== e.type ||
      prev.sha256 !== e.sha256 ||
      prev.size !== e.size ||
      prev.mode !== e.mode ||
      prev.target !== e.target ||
      ownerChanged(prev, e) ||
      relinked.has(`${e.source}/${e.path}`) ||
      (e.type === 'file' && prev.mtimeNs !== e.mtimeNs && !captured.has(e.source))
    ) {
      counts.changed++;
    }
  }
  let files = 0;
  for (const e of reference?.entries ?? []) if (e.type !== 'dir') files++;
  counts.removed = files - matched;
  return counts;
}

function byPath(reference: Manifest | undefined): PathIndex<ManifestEntry> {
  const index = new PathIndex<ManifestEntry>();
  for (const e of reference?.entries ?? []) index.set(e.source, e.path, e);
  return index;
}
