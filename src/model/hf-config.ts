import { errorMessage } from '../errors.js';
import type { FileCheck, ModelFinding, ModelInfo } from './types.js';
import { readUtf8Json } from './io.js';
import { isGoneAsFile } from '../format/durable.js';

/** Config and tokenizer files are parsed whole; anything bigger than this is not read. */
export const MAX_JSON_BYTES = 256 << 20;

export type HfKind = 'hf-config' | 'tokenizer' | 'tokenizer-config';

export function hfKind(basename: string): HfKind | undefined {
  if (basename === 'config.json') return 'hf-config';
  if (basename === 'tokenizer.json') return 'tokenizer';
  if (basename === 'tokenizer_config.json') return 'tokenizer-config';
  return undefined;
}

async function readJson(abs: string, size: number): Promise<{ value?: Record<string, unknown>; reason?: string }> {
  if (size > MAX_JSON_BYTES) return { reason: `is ${size} bytes; more than ${MAX_JSON_BYTES} is not read` };
  let parsed: unknown;
  try {
    parsed = await readUtf8Json(abs);
  } catch (err) {
    // A file that is gone is no file to judge: the caller says so, or leaves it out.
    if (isGoneAsFile(err)) throw err;
    return { reason: `is not valid JSON: ${errorMessage(err)}` };
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return { reason: 'is not a JSON object' };
  return { value: parsed as Record<string, unknown> };
}

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) > 0;

/**
 * How many token ids a tokenizer uses: one more than the largest id in its
 * vocabulary and added tokens (what an embedding table must cover).
 */
function tokenizerIds(t: Record<string, unknown>, kind: HfKind): { ids?: number; reason?: string } {
  let max = -1;
  const see = (id: unknown) => {
    if (Number.isSafeInteger(id) && (id as number) > max) max = id as number;
  };
  if (kind === 'tokenizer') {
    const model = t.model as { vocab?: unknown } | undefined;
    if (typeof model !== 'object' || model === null) return { reason: 'has no model section' };
    const vocab = model.vocab;
    if (Array.isArray(vocab)) max = vocab.length - 1; // Unigram: [[piece, score], …], ids are positions
    else if (typeof vocab === 'object' && vocab !== null) for (const id of Object.values(vocab)) see(id);
    for (const a of Array.isArray(t.added_tokens) ? t.added_tokens : []) see((a as { id?: unknown })?.id);
  } else {
    const decoder = t.added_tokens_decoder;
    if (typeof decoder === 'object' && decoder !== null) for (const id of Object.keys(decoder)) see(Number(id));
  }
  return max >= 0 ? { ids: max + 1 } : {};
}

export interface HfCheck extends FileCheck {
  /** config.json: vocab_size; tokenizers: the number of token ids they use. */
  vocab?: number;
}

/** Parses a config.json, tokenizer.json or tokenizer_config.json and notes what it says about the vocabulary. */
export async function checkHfFile(abs: string, size: number, kind: HfKind): Promise<HfCheck> {
  const { value, reason } = await readJson(abs, size);
  if (!value) return { reasons: [reason!] };
  const info: ModelInfo = { format: kind };
  if (kind === 'hf-config') {
    const text = value.text_config as Record<string, unknown> | undefined;
    const vocab = isCount(value.vocab_size) ? value.vocab_size : isCount(text?.vocab_size) ? text!.vocab_size : undefined;
    const arch = Array.isArray(value.architectures) && typeof value.architectures[0] === 'string' ? value.architectures[0] : typeof value.model_type === 'string' ? value.model_type : undefined;
    if (vocab !== undefined) info.vocabSize = vocab;
    if (arch) info.architecture = arch.slice(0, 256);
    // A config.json that is not a model's (a server's, a tool's) parses, and that is all.
    const isModel = vocab !== undefined || arch !== undefined || 'model_type' in value;
    return { ...(isModel ? { info } : {}), reasons: [], vocab };
  }
  const { ids, reason: why } = tokenizerIds(value, kind);
  if (why) return { info, reasons: [why] };
  // tokenizer_config.json only lists added tokens: its largest id is checked, not shown as a vocabulary size.
  if (ids !== undefined && kind === 'tokenizer') info.vocabSize = ids;
  return { info, reasons: [], vocab: ids };
}

/**
 * The vocabulary agreement of one directory: every token id a tokenizer uses
 * must be below the config's vocab_size. A config larger than its tokenizer is
 * normal (embeddings are padded), but not by more than a few percent: a
 * tokenizer far smaller than the config belongs to another model.
 */
export function checkVocabulary(config: { name: string; vocab?: number }, tokenizers: { name: string; kind: HfKind; vocab?: number }[]): ModelFinding[] {
  const findings: ModelFinding[] = [];
  if (config.vocab === undefined) return findings;
  for (const t of tokenizers) {
    if (t.vocab === undefined) continue;
    if (t.vocab > config.vocab) {
      findings.push({ path: t.name, format: t.kind, reason: `uses token ids up to ${t.vocab - 1}, but ${config.name} has vocab_size ${config.vocab}` });
    } else if (t.kind === 'tokenizer' && config.vocab - t.vocab > Math.max(1024, Math.ceil(config.vocab * 0.01))) {
      findings.push({ path: t.name, format: t.kind, reason: `has ${t.vocab} token ids, far fewer than vocab_size ${config.vocab} in ${config.name}: is it the tokenizer of another model?` });
    }
  }
  return findings;
}
