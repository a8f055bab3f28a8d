import * as path from 'node:path';
import { volumeEntryName, type ManifestEntry, type ModelInfo } from '../format/manifest.js';
import { describeModel } from './validate.js';

export interface ModelSummary extends ModelInfo {
  /** `<source>/<path>` of the file that describes the model (an index, a single file). */
  path: string;
  /** "4 shards, 291 tensors, bf16". */
  summary: string;
}

/**
 * The models of a point, one line each: a sharded checkpoint by its index
 * (its shards are not listed again), single safetensors, ONNX and GGUF files,
 * and the config of each model directory.
 */
export function summariseModels(entries: readonly ManifestEntry[]): ModelSummary[] {
  const withModel = entries.filter((e) => e.model).map((e) => ({ name: volumeEntryName(e.source, e.path), model: e.model! }));
  const indexedDirs = new Set(withModel.filter((e) => e.model.format === 'safetensors-index').map((e) => path.posix.dirname(e.name)));
  const out: ModelSummary[] = [];
  for (const { name, model } of withModel) {
    if (model.format === 'tokenizer' || model.format === 'tokenizer-config') continue;
    if (model.format === 'safetensors' && indexedDirs.has(path.posix.dirname(name))) continue;
    out.push({ ...model, path: name, summary: describeModel(model) });
  }
  return out;
}
