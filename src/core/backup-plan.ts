import type { BackupType } from '../format/ids.js';
import type { Manifest, ManifestEntry } from '../format/manifest.js';
import type { ScannedEntry } from './scan.js';

export interface ReferenceChoice {
  type: BackupType;
  /** The manifest unchanged files are compared with (and whose refs they reuse). */
  reference?: Manifest;
  /** Set when the requested type could not be honoured. */
  fallbackReason?: string;
}

/**
 * diff compares with the newest full; incr with the newest point of any type;
 * with no full yet, every backup is a full.
 */
export function chooseReference(history: readonly Manifest[], requested: BackupType): ReferenceChoice {
  if (requested === 'full') return { type: 'full' };
  const lastFull = [...history].reverse().find((m) => m.type === 'full');
  if (!lastFull) return { type: 'full', fallbackReason: `no full backup exists yet, so this ${requested} backup is taken as a full` };
  if (requested === 'diff') return { type: 'diff', reference: lastFull };
  return { type: 'incr', reference: history[history.length - 1] };
}

export interface PlannedEntry {
  scanned: ScannedEntry;
  /** The reference's entry for the same path, when there is one. */
  previous?: ManifestEntry;
  /** File bytes must be read and stored (new or changed content). */
  storeData: boolean;
  /** A tar header is written for it (files, and new or changed dirs and links). */
  inVolume: boolean;
}

export interface BackupPlan {
  entries: PlannedEntry[];
  added: number;
  changed: number;
  removed: number;
  bytesToStore: number;
  filesToStore: number;
}

/** Coarse filesystem timestamps (FAT: 2 s) set the window. */
const RACY_WINDOW_MS = 2000;

export const entryKey = (source: string, path: string) => `${source}\u0000${path}`;

/**
 * Decides what to store. A file keeps its recorded SHA-256 and content
 * reference without being read when its size, mtime (ns) and inode all match
 * the reference; everything else is read and stored.
 */
export function planBackup(scanned: readonly ScannedEntry[], reference: Manifest | undefined): BackupPlan {
  // A file modified within the timestamp granularity of the reference's scan may
  // have changed again without its mtime moving ("racy" files, as git calls them):
  // such files are read again rather than trusted.
  const racyAfterNs = reference ? BigInt(Date.parse(reference.startedAt) - RACY_WINDOW_MS) * 1_000_000n : 0n;
  const previous = new Map<string, ManifestEntry>();
  for (const e of reference?.entries ?? []) previous.set(entryKey(e.source, e.path), e);
  const seen = new Set<string>();
  const plan: BackupPlan = { entries: [], added: 0, changed: 0, removed: 0, bytesToStore: 0, filesToStore: 0 };
  for (const s of scanned) {
    const key = entryKey(s.source, s.path);
    seen.add(key);
    const prev = previous.get(key);
    let storeData = false;
    let same = false;
    if (prev && prev.type === s.type) {
      if (s.type === 'file') {
        const contentSame =
          prev.size === s.size &&
          prev.mtimeNs === s.mtimeNs &&
          prev.ino === s.ino &&
          prev.sha256 !== undefined &&
          prev.ref !== undefined &&
          BigInt(prev.mtimeNs) < racyAfterNs;
        storeData = !contentSame;
        same = contentSame && prev.mode === s.mode;
      } else {
        same = prev.mode === s.mode && prev.mtimeNs === s.mtimeNs && prev.target === s.target;
      }
    } else {
      storeData = s.type === 'file';
    }
    if (!prev) plan.added++;
    else if (!same) plan.changed++;
    if (storeData) {
      plan.bytesToStore += s.size;
      plan.filesToStore++;
    }
    plan.entries.push({ scanned: s, previous: prev, storeData, inVolume: s.type === 'file' ? storeData : !same });
  }
  for (const key of previous.keys()) if (!seen.has(key)) plan.removed++;
  return plan;
}
