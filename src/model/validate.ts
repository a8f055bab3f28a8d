import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { errorMessage, throwIfAborted } from '../errors.js';
import { checkGguf } from './gguf.js';
import { checkHfFile, checkVocabulary, hfKind, type HfCheck, type HfKind } from './hf-config.js';
import { isGoneAsFile } from '../format/durable.js';
import { checkOnnx } from './onnx.js';
import { checkSafetensors, checkSafetensorsIndex, isSafetensorsIndex, type SafetensorsCheck } from './safetensors.js';
import { clip, type FileCheck, type ModelFinding, type ModelFormat, type ModelInfo, type TreeFile } from './types.js';

export type { ModelFinding, ModelInfo, TreeFile } from './types.js';

export interface ValidationResult {
  findings: ModelFinding[];
  /** What was recognised, by tree-relative name. */
  recognised: Map<string, ModelInfo>;
}

export interface ValidateOptions {
  signal?: AbortSignal;
  /**
   * Results to take as they are instead of reading the file again, by tree
   * name: what a file that has not changed since it was last checked gave.
   */
  known?: ReadonlyMap<string, KnownCheck>;
}

/** A file's check result kept from an earlier validation. */
export interface KnownCheck extends FileCheck {
  format: ModelFormat;
  /** config.json: vocab_size; tokenizer.json: the number of token ids it uses. */
  vocab?: number;
}

export function formatOf(name: string): ModelFormat | undefined {
  const base = path.posix.basename(name);
  if (isSafetensorsIndex(base)) return 'safetensors-index';
  if (base.endsWith('.safetensors')) return 'safetensors';
  if (base.endsWith('.onnx')) return 'onnx';
  if (base.endsWith('.gguf')) return 'gguf';
  return hfKind(base);
}

/**
 * Validates the model files of a tree from their headers and tables, never
 * reading weights: safetensors files and sharded indexes, ONNX models and
 * their external data, GGUF files, Hugging Face configs and tokenizers (and
 * that the vocabularies of a directory agree). Files are recognised by name;
 * everything else is left alone. Symlinks are followed only to files in the
 * tree, and checked there.
 */
export async function validateTree(files: readonly TreeFile[], options: ValidateOptions = {}): Promise<ValidationResult> {
  const byName = new Map(files.map((f) => [f.name, f]));
  const findings: ModelFinding[] = [];
  const recognised = new Map<string, ModelInfo>();
  const safetensors = new Map<string, SafetensorsCheck>();
  const hf = new Map<string, { kind: HfKind; check: HfCheck }>();
  const indexes: TreeFile[] = [];

  const record = (f: TreeFile, format: ModelFormat, check: FileCheck) => {
    if (check.info) recognised.set(f.name, check.info);
    for (const reason of check.reasons) findings.push({ path: f.name, format, reason });
  };
  const guarded = async <T extends FileCheck>(f: TreeFile, format: ModelFormat, run: () => Promise<T>): Promise<T | undefined> => {
    try {
      const check = await run();
      record(f, format, check);
      return check;
    } catch (err) {
      // Gone since the tree was listed (an old version removed while a backup runs): there is no model
      // to judge, and the backup says the file vanished when it comes to read it.
      if (!isGoneAsFile(err)) findings.push({ path: f.name, format, reason: `cannot be read: ${errorMessage(err)}` });
      return undefined;
    }
  };

  for (const f of files) {
    if (f.symlink) continue;
    const format = formatOf(f.name);
    if (!format) continue;
    throwIfAborted(options.signal);
    const known = options.known?.get(f.name);
    if (known && known.format === format) {
      record(f, format, known);
      if (format === 'hf-config' || format === 'tokenizer' || format === 'tokenizer-config') hf.set(f.name, { kind: format, check: known });
    } else if (format === 'safetensors') {
      const check = await guarded(f, format, () => checkSafetensors(f.abs));
      if (check) safetensors.set(f.name, check);
    } else if (format === 'safetensors-index') {
      indexes.push(f);
    } else if (format === 'onnx') {
      await guarded(f, format, () => checkOnnx(f, byName));
    } else if (format === 'gguf') {
      await guarded(f, format, () => checkGguf(f.abs));
    } else {
      const check = await guarded(f, format, () => checkHfFile(f.abs, f.size, format));
      if (check) hf.set(f.name, { kind: format, check });
    }
  }

  for (const f of indexes) {
    throwIfAborted(options.signal);
    try {
      const { info, findings: found } = await checkSafetensorsIndex(f, byName, safetensors);
      if (info) recognised.set(f.name, info);
      findings.push(...found);
    } catch (err) {
      findings.push({ path: f.name, format: 'safetensors-index', reason: `cannot be read: ${errorMessage(err)}` });
    }
  }

  // Vocabulary agreement, directory by directory.
  const byDir = new Map<string, { config?: { name: string; vocab?: number }; tokenizers: { name: string; kind: HfKind; vocab?: number }[] }>();
  for (const [name, { kind, check }] of hf) {
    const dir = path.posix.dirname(name);
    const slot = byDir.get(dir) ?? { tokenizers: [] };
    if (kind === 'hf-config') slot.config = { name: path.posix.basename(name), vocab: check.vocab };
    else slot.tokenizers.push({ name, kind, vocab: check.vocab });
    byDir.set(dir, slot);
  }
  for (const slot of byDir.values()) if (slot.config) findings.push(...checkVocabulary(slot.config, slot.tokenizers));

  findings.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return { findings: findings.map((f) => ({ ...f, reason: clip(f.reason) })), recognised };
}

/** Lists a directory as a tree (regular files, and symlinks resolved within it), for validating restored data. */
export async function treeOf(root: string, signal?: AbortSignal): Promise<TreeFile[]> {
  const out: TreeFile[] = [];
  const base = path.resolve(root);
  const walk = async (dir: string, rel: string) => {
    throwIfAborted(signal);
    // A directory this user may not read (restored with its mode 000) holds nothing a server running as this user could load.
    const entries = await fsp.readdir(dir, { withFileTypes: true }).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'EACCES' && dir !== base) return [];
      throw err;
    });
    entries.sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const e of entries) {
      const abs = path.join(dir, e.name);
      const name = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(abs, name);
      else if (e.isFile()) {
        // Nor does one it may list but not enter (restored with its mode 0644, say): its files cannot be opened.
        const st = await fsp.stat(abs).catch((err: NodeJS.ErrnoException) => {
          if (err.code === 'EACCES') return undefined;
          throw err;
        });
        if (st) out.push({ name, abs, size: st.size });
      }
      else if (e.isSymbolicLink()) {
        const target = path.resolve(dir, await fsp.readlink(abs));
        const inside = path.relative(base, target);
        const linkTo = inside && !inside.startsWith('..') && !path.isAbsolute(inside) ? inside.split(path.sep).join('/') : undefined;
        const size = await fsp.stat(abs).then((s) => (s.isFile() ? s.size : undefined), () => undefined);
        if (size !== undefined) out.push({ name, abs, size, symlink: true, ...(linkTo ? { linkTo } : {}) });
      }
    }
  };
  await walk(base, '');
  return out;
}

/** Validates every model file under a directory (a restored point, a slot). */
export async function validateDirectory(root: string, options: ValidateOptions = {}): Promise<ValidationResult> {
  return validateTree(await treeOf(root, options.signal), options);
}

/** One line for people: "4 shards, 291 tensors, bf16". */
export function describeModel(info: ModelInfo): string {
  const parts: string[] = [];
  const n = (count: number, one: string) => `${count} ${one}${count === 1 ? '' : 's'}`;
  if (info.format === 'safetensors-index') parts.push(n(info.shards ?? 0, 'shard'));
  if (info.tensors !== undefined) parts.push(n(info.tensors, 'tensor'));
  if (info.dtypes?.length) parts.push(info.dtypes.join('/'));
  if (info.externalData) parts.push(`${n(info.externalData, 'external data file')}`);
  if (info.architecture) parts.push(info.architecture);
  if (info.vocabSize !== undefined) parts.push(`vocab ${info.vocabSize}`);
  return parts.join(', ');
}
