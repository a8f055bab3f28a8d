import * as path from 'node:path';
import { volumeEntryName, type Manifest, type ManifestEntry } from '../format/manifest.js';
import type { ScannedSource } from '../core/scan.js';
import type { TreeFile } from './types.js';
import { formatOf, validateTree, type KnownCheck, type ValidationResult } from './validate.js';
import type { ModelFinding } from './types.js';

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

/**
 * Validates the model files of scanned sources (on the source files, before
 * they are stored). `known` are results to take as they are for files that
 * have not changed (see knownChecks).
 */
export function validateSources(scanned: readonly ScannedSource[], signal?: AbortSignal, known?: ReadonlyMap<string, KnownCheck>): Promise<ValidationResult> {
  return validateTree(treeOfSources(scanned), { signal, known });
}

/**
 * What a reference point recorded for its model files, for those a new
 * validation need not read again: configs, tokenizers and GGUF files whose
 * own bytes are unchanged (`unchanged`, by tree name), and ONNX models whose
 * whole directory is (their external data lives there). Safetensors files and
 * indexes are always read again: an index is checked against its shards'
 * tensor tables, which a point does not record; and a tokenizer_config.json
 * records no vocabulary to check.
 */
export function knownChecks(
  reference: Pick<Manifest, 'entries' | 'warnings'>,
  unchanged: ReadonlySet<string>,
  changedNames: readonly string[],
): Map<string, KnownCheck> {
  const findings = new Map<string, ModelFinding[]>();
  for (const f of recordedFindings(reference.warnings)) findings.set(f.path, [...(findings.get(f.path) ?? []), f]);
  const known = new Map<string, KnownCheck>();
  for (const e of reference.entries) {
    if (e.type !== 'file') continue;
    const name = volumeEntryName(e.source, e.path);
    const format = formatOf(name);
    if (!format || !unchanged.has(name)) continue;
    if (format === 'safetensors' || format === 'safetensors-index' || format === 'tokenizer-config') continue;
    if (format === 'onnx') {
      const dir = `${path.posix.dirname(name)}/`;
      if (changedNames.some((n) => n.startsWith(dir))) continue;
    }
    const info = e.model;
    known.set(name, {
      format,
      ...(info ? { info } : {}),
      reasons: (findings.get(name) ?? []).filter((f) => f.format === format).map((f) => f.reason),
      ...(info?.vocabSize !== undefined && (format === 'hf-config' || format === 'tokenizer') ? { vocab: info.vocabSize } : {}),
    });
  }
  return known;
}

/** The model findings a point recorded as warnings ("<format>: <reason>"). */
export function recordedFindings(warnings: Manifest['warnings']): ModelFinding[] {
  return warnings
    .filter((w) => w.code === 'model-invalid' && w.path !== undefined)
    .map((w) => {
      const colon = w.message.indexOf(': ');
      return { path: w.path!, format: colon > 0 ? w.message.slice(0, colon) : 'model', reason: colon > 0 ? w.message.slice(colon + 2) : w.message } as ModelFinding;
    });
}

/** The entry with what validation recognised in its file, if anything. */
export function withModel(entry: ManifestEntry, recognised: ReadonlyMap<string, ManifestEntry['model']>): ManifestEntry {
  const model = entry.type === 'file' ? recognised.get(volumeEntryName(entry.source, entry.path)) : undefined;
  return model ? { ...entry, model } : entry;
}
