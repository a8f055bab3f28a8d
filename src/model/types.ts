import type { ModelInfo } from '../format/manifest.js';

export type { ModelInfo };
export type ModelFormat = ModelInfo['format'];

/** One problem a validator found: the file (tree-relative name), its format, and why it would not load. */
export interface ModelFinding {
  path: string;
  format: ModelFormat;
  reason: string;
}

/** A file of the tree being validated. */
export interface TreeFile {
  /** '/'-separated name relative to the tree (`models/llama/model-00001-of-00004.safetensors`). */
  name: string;
  /** Absolute path to read it from. */
  abs: string;
  size: number;
  /** A symlink: the tree-relative name of the file it resolves to, when that is in the tree. */
  linkTo?: string;
  /** A symlink (whether or not its target is in the tree). */
  symlink?: boolean;
}

/** What one file validator returns. */
export interface FileCheck {
  info?: ModelInfo;
  reasons: string[];
}

/** Orders dtype names by how many tensors use them (most first), then by name. */
export function dtypeSummary(counts: ReadonlyMap<string, number>): string[] {
  return [...counts]
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
    .map(([d]) => d)
    .slice(0, 64);
}

export function bump(map: Map<string, number>, key: string, by = 1): void {
  map.set(key, (map.get(key) ?? 0) + by);
}

/** The longest finding kept: a name or value a hostile file makes megabytes long is cut, not printed and stored whole. */
export const MAX_REASON_CHARS = 500;

export function clip(text: string, max = MAX_REASON_CHARS): string {
  return text.length > max ? `${text.slice(0, max)}… (${text.length - max} more characters)` : text;
}
