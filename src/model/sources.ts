import * as path from 'node:path';
import { volumeEntryName, type ManifestEntry } from '../format/manifest.js';
import type { ScannedSource } from '../core/scan.js';
import type { TreeFile } from './types.js';
import { validateTree, type ValidationResult } from './validate.js';

/**
 * The files of scanned sources as one tree named like volume entries
 * (`<source>/<path>`), as a restore lays them out. Only file sources: state
 * captured from databases and commands holds no models.
 */
export function treeOfSources(scanned: readonly ScannedSource[]): TreeFile[] {
  const out: TreeFile[] = [];
  for (const s of scanned) {
    if ((s.spec.kind ?? 'files') !== 'files') continue;
    const files = new Map(s.entries.filter((e) => e.type === 'file').map((e) => [e.path, e]));
    for (const e of s.entries) {
      const name = volumeEntryName(e.source, e.path);
      if (e.type === 'file') out.push({ name, abs: e.abs, size: e.size });
      else if (e.type === 'symlink' && e.target !== undefined) {
        const resolved = path.posix.normalize(path.posix.join(path.posix.dirname(e.path), e.target));
        const target = path.posix.isAbsolute(e.target) ? undefined : files.get(resolved);
        if (target) out.push({ name, abs: target.abs, size: target.size, symlink: true, linkTo: volumeEntryName(e.source, target.path) });
      }
    }
  }
  return out;
}

/** Validates the model files of scanned sources (on the source files, before they are stored). */
export function validateSources(scanned: readonly ScannedSource[], signal?: AbortSignal): Promise<ValidationResult> {
  return validateTree(treeOfSources(scanned), { signal });
}

/** The entry with what validation recognised in its file, if anything. */
export function withModel(entry: ManifestEntry, recognised: ReadonlyMap<string, ManifestEntry['model']>): ManifestEntry {
  const model = entry.type === 'file' ? recognised.get(volumeEntryName(entry.source, entry.path)) : undefined;
  return model ? { ...entry, model } : entry;
}
