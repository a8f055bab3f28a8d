import { capturedSources, type Manifest, type ManifestEntry } from '../format/manifest.js';
import { sortByPath } from '../format/paths.js';

export interface DiffCounts {
  added: number;
  changed: number;
  removed: number;
}

export interface PointDiff {
  added: string[];
  changed: { path: string; what: string[] }[];
  removed: string[];
  /**
   * Counted as a backup counts its changes: files and links here, directories apart. A path that
   * became a directory, or stopped being one, is what it was removed and what it is added: a file
   * replaced by a directory is a file removed and a directory added.
   */
  counts: DiffCounts;
  directories: DiffCounts;
}

/** What differs between two points, by `<source>/<path>`. Pure. */
export function diffPoints(from: Manifest, to: Manifest): PointDiff {
  const key = (e: ManifestEntry) => `${e.source}/${e.path}`;
  const before = new Map(from.entries.map((e) => [key(e), e]));
  const after = new Map(to.entries.map((e) => [key(e), e]));
  const captured = capturedSources(to.sources);
  const relinked = relinkedPaths(from.entries, to.entries);
  const result: PointDiff = { added: [], changed: [], removed: [], counts: { added: 0, changed: 0, removed: 0 }, directories: { added: 0, changed: 0, removed: 0 } };
  const tally = (e: ManifestEntry) => (e.type === 'dir' ? result.directories : result.counts);
  for (const [k, e] of after) {
    const old = before.get(k);
    if (!old) {
      result.added.push(k);
      tally(e).added++;
      continue;
    }
    const what: string[] = [];
    if (old.type !== e.type) what.push('type');
    else {
      if (old.sha256 !== e.sha256 || old.size !== e.size) what.push('content');
      if (old.target !== e.target) what.push('target');
      if (old.mode !== e.mode) what.push('mode');
      if (ownerChanged(old, e)) what.push('owner');
      if (relinked.has(k)) what.push('hard-link');
      if (old.mtimeNs !== e.mtimeNs && e.type === 'file' && !captured.has(e.source)) what.push('mtime');
    }
    if (what.length === 0) continue;
    result.changed.push({ path: k, what });
    if (tally(old) === tally(e)) tally(e).changed++;
    else {
      tally(old).removed++;
      tally(e).added++;
    }
  }
  for (const [k, old] of before) {
    if (after.has(k)) continue;
    result.removed.push(k);
    tally(old).removed++;
  }
  sortByPath(result.added, (p) => p);
  sortByPath(result.removed, (p) => p);
  sortByPath(result.changed, (c) => c.path);
  return result;
}

/**
 * Whether an entry's owner or group differs from what it was: a restore gives it the new one. A
 * point of an earlier version that recorded no owners has nothing to compare.
 */
export function ownerChanged(old: ManifestEntry, e: ManifestEntry): boolean {
  if (old.uid === undefined || e.uid === undefined) return false;
  return old.uid !== e.uid || old.gid !== e.gid;
}

/**
 * The paths, in both lists of entries, whose hard links differ: a file that became a hard link of
 * another, or a copy of its own, restores differently though its content and time are the same.
 * For each path, the names in both lists it is one file with are compared, so that a group's first
 * name changing (the name it was linked to removed) changes nothing here.
 */
export function relinkedPaths(from: readonly ManifestEntry[], to: readonly ManifestEntry[]): Set<string> {
  const relinked = new Set<string>();
  // Most trees have no hard links: nothing to index then.
  if (!from.some((e) => e.link !== undefined) && !to.some((e) => e.link !== undefined)) return relinked;
  const key = (e: ManifestEntry) => `${e.source}/${e.path}`;
  const inFrom = new Set(from.map(key));
  const inTo = new Set(to.map(key));
  const side = (entries: readonly ManifestEntry[], other: Set<string>) => {
    const groups = new Map<string, string[]>();
    for (const e of entries) {
      if (e.type !== 'file' || !other.has(key(e))) continue;
      const group = `${e.source}/${e.link ?? e.path}`;
      const names = groups.get(group);
      if (names) names.push(key(e));
      else groups.set(group, [key(e)]);
    }
    const shared = new Map<string, string>();
    for (const names of groups.values()) {
      if (names.length < 2) continue;
      const joined = [...names].sort().join('\0');
      for (const n of names) shared.set(n, joined);
    }
    return shared;
  };
  const before = side(from, inTo);
  const after = side(to, inFrom);
  for (const k of inTo) if (inFrom.has(k) && before.get(k) !== after.get(k)) relinked.add(k);
  return relinked;
}
