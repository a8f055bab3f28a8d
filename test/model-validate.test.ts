import { test } from 'node:test';
import { execFileSync } from 'node:child_process';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { generateDeployment, readSafetensorsHeader, writeSafetensors, type TensorSpec } from '../fixtures/generate.js';
import { onnxTypes } from '../src/model/onnx.js';
import { checkOnnx } from '../src/model/onnx.js';
import { treeOf, validateDirectory, type ModelFinding } from '../src/model/validate.js';
import { lifeboat } from './helpers/cli.js';
import { tempDir } from './helpers/tree.js';
import { evict, hasFincore, resident } from './helpers/page-cache.js';

async function scratch(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await tempDir('lifeboat-model-');
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

const tensors = (prefix: string, n: number): TensorSpec[] => Array.from({ length: n }, (_, i) => ({ name: `${prefix}.${i}.weight`, shape: [8, 4 + i] }));

/** A sharded BF16 checkpoint with its index, config and tokenizer, as transformers saves one. */
async function checkpoint(dir: string, shards = 3): Promise<{ shardNames: string[]; map: Record<string, string> }> {
  await fsp.mkdir(dir, { recursive: true });
  const shardNames: string[] = [];
  const map: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const name = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const list = tensors(`layers.${s}`, 3);
    await writeSafetensors(path.join(dir, name), list, 11 + s);
    for (const t of list) map[t.name] = name;
    shardNames.push(name);
  }
  await fsp.writeFile(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: map }));
  await fsp.writeFile(path.join(dir, 'config.json'), JSON.stringify({ architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: 300 }));
  const vocab: Record<string, number> = {};
  for (let i = 0; i < 290; i++) vocab[`t${i}`] = i;
  await fsp.writeFile(path.join(dir, 'tokenizer.json'), JSON.stringify({ model: { type: 'BPE', vocab }, added_tokens: [{ id: 290, content: '<s>' }] }));
  await fsp.writeFile(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ added_tokens_decoder: { '290': { content: '<s>' } } }));
  return { shardNames, map };
}

/** A safetensors file with exactly this header and this many data bytes. */
async function rawSafetensors(file: string, header: Record<string, unknown>, dataBytes: number): Promise<void> {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  await fsp.writeFile(file, Buffer.concat([len, json, Buffer.alloc(dataBytes, 7)]));
}

function only(findings: ModelFinding[], file: string, reason: RegExp): void {
  assert.ok(
    findings.some((f) => f.path === file && reason.test(f.reason)),
    `expected a finding for ${file} matching ${reason}, got ${JSON.stringify(findings, null, 1)}`,
  );
}

// ---------------------------------------------------------------------------
// safetensors

test('a valid sharded safetensors checkpoint passes and is summarised', async (t) => {
  const dir = await scratch(t);
  await checkpoint(path.join(dir, 'llama'), 3);
  const { findings, recognised } = await validateDirectory(dir);
  assert.deepEqual(findings, []);
  assert.deepEqual(recognised.get('llama/model.safetensors.index.json'), { format: 'safetensors-index', shards: 3, tensors: 9, dtypes: ['bf16'] });
  assert.deepEqual(recognised.get('llama/model-00002-of-00003.safetensors'), { format: 'safetensors', tensors: 3, dtypes: ['bf16'] });
  assert.equal(recognised.get('llama/config.json')?.vocabSize, 300);
  assert.equal(recognised.get('llama/tokenizer.json')?.vocabSize, 291);
});

test('the generated deployment (BF16 shards, index, tokenizer, ONNX) validates clean', async (t) => {
  const dir = await scratch(t);
  const d = await generateDeployment(dir, { seed: 3 });
  const { findings, recognised } = await validateDirectory(dir);
  assert.deepEqual(findings, []);
  assert.equal(recognised.get(d.onnx)?.format, 'onnx');
  assert.equal([...recognised.values()].filter((r) => r.format === 'safetensors').length, d.shards.length);
});

test('broken safetensors: truncated shard, offsets past the end, overlapping tensors, a gap', async (t) => {
  const dir = await scratch(t);
  const { shardNames } = await checkpoint(dir, 2);
  const shard = path.join(dir, shardNames[1]!);
  const { size } = await fsp.stat(shard);
  await fsp.truncate(shard, size - 10);
  await rawSafetensors(path.join(dir, 'past-end.safetensors'), { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, b: { dtype: 'F32', shape: [4], data_offsets: [16, 32] } }, 24);
  await rawSafetensors(path.join(dir, 'overlap.safetensors'), { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, b: { dtype: 'F32', shape: [4], data_offsets: [8, 24] } }, 24);
  await rawSafetensors(path.join(dir, 'gap.safetensors'), { a: { dtype: 'F16', shape: [2], data_offsets: [4, 8] } }, 8);
  await rawSafetensors(path.join(dir, 'shape.safetensors'), { a: { dtype: 'BF16', shape: [3, 3], data_offsets: [0, 16] } }, 16);
  await fsp.writeFile(path.join(dir, 'huge-header.safetensors'), Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0x7b]));
  await fsp.writeFile(path.join(dir, 'not-json.safetensors'), Buffer.concat([Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{"a"')]));

  const { findings } = await validateDirectory(dir);
  only(findings, shardNames[1]!, /past the end of the data/);
  only(findings, 'past-end.safetensors', /tensor b data_offsets end at 32, past the end of the data \(24 bytes/);
  only(findings, 'overlap.safetensors', /tensor b .* overlaps a/);
  only(findings, 'gap.safetensors', /gap of 4 bytes before tensor a/);
  only(findings, 'shape.safetensors', /BF16 of shape \[3, 3\] needs 18 bytes, data_offsets give 16/);
  only(findings, 'huge-header.safetensors', /header length \d+ runs past the end of the file/);
  only(findings, 'not-json.safetensors', /not valid JSON/);
  assert.ok(!findings.some((f) => f.path === shardNames[0]), 'the intact shard is not reported');
});

test('a hostile safetensors header: megabyte names and values are cut in the finding, a deeply nested dtype is named, not a stack overflow', async (t) => {
  const dir = await scratch(t);
  await rawSafetensors(path.join(dir, 'long-dtype.safetensors'), { a: { dtype: 'y'.repeat(2_000_000), shape: [], data_offsets: [0, 0] } }, 0);
  await rawSafetensors(path.join(dir, 'long-name.safetensors'), { ['x'.repeat(2_000_000)]: { dtype: 'ZZ', shape: [], data_offsets: [0, 0] } }, 0);
  const deep = Buffer.from(`{"a":{"dtype":${'['.repeat(200_000)}${']'.repeat(200_000)},"shape":[],"data_offsets":[0,0]}}`);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(deep.length));
  await fsp.writeFile(path.join(dir, 'deep.safetensors'), Buffer.concat([len, deep]));

  const { findings } = await validateDirectory(dir);
  for (const f of findings) assert.ok(f.reason.length < 1000, `${f.path}: a finding of ${f.reason.length} characters`);
  only(findings, 'long-dtype.safetensors', /^tensor a: unknown dtype "y{50,}.*more characters/);
  only(findings, 'long-name.safetensors', /^tensor x{50,}.*more characters\)$/);
  only(findings, 'deep.safetensors', /^tensor a: unknown dtype a deeply nested list$/);
});

test('sharded index: a shard missing from the snapshot, a tensor mapped to the wrong shard', async (t) => {
  const dir = await scratch(t);
  const { shardNames, map } = await checkpoint(path.join(dir, 'a'), 3);
  await fsp.rm(path.join(dir, 'a', shardNames[2]!));
  const b = await checkpoint(path.join(dir, 'b'), 2);
  const moved = Object.keys(b.map).find((k) => b.map[k] === b.shardNames[1])!;
  await fsp.writeFile(path.join(dir, 'b', 'model.safetensors.index.json'), JSON.stringify({ weight_map: { ...b.map, [moved]: b.shardNames[0] } }));

  const { findings } = await validateDirectory(dir);
  const missing = Object.values(map).filter((s) => s === shardNames[2]).length;
  only(findings, 'a/model.safetensors.index.json', new RegExp(`shard ${shardNames[2]} \\(${missing} tensor\\(s\\)\\) is missing from the snapshot`));
  only(findings, 'b/model.safetensors.index.json', new RegExp(`tensor ${moved.replace(/\./g, '\\.')} is mapped to ${b.shardNames[0]} but is not in it \\(it is in ${b.shardNames[1]}\\)`));
  assert.equal(findings.length, 2, JSON.stringify(findings));
});

test('a hostile index: 100,000 missing shards are counted in one finding promptly; a shard path leaving the directory is outside; ./ names the directory', async (t) => {
  const dir = await scratch(t);
  const weightMap: Record<string, string> = {};
  for (let i = 0; i < 100_000; i++) weightMap[`t${i}`] = `s${i}.safetensors`;
  await fsp.mkdir(path.join(dir, 'many'));
  await fsp.writeFile(path.join(dir, 'many', 'model.safetensors.index.json'), JSON.stringify({ weight_map: weightMap }));
  await fsp.mkdir(path.join(dir, 'escape'));
  await fsp.mkdir(path.join(dir, 'escape', 'etc'));
  await rawSafetensors(path.join(dir, 'escape', 'etc', 'passwd'), {}, 0);
  await fsp.writeFile(path.join(dir, 'escape', 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: '/etc/passwd', b: '../../etc/passwd' } }));
  const { shardNames, map } = await checkpoint(path.join(dir, 'root'), 2);
  await fsp.writeFile(path.join(dir, 'root', 'model.safetensors.index.json'), JSON.stringify({ weight_map: Object.fromEntries(Object.entries(map).map(([k, v]) => [k, `./${v}`])) }));

  const started = Date.now();
  const [all, root] = await Promise.all([validateDirectory(dir), validateDirectory(path.join(dir, 'root'))]);
  assert.ok(Date.now() - started < 20_000, `took ${Date.now() - started} ms`);
  const many = all.findings.filter((f) => f.path === 'many/model.safetensors.index.json');
  assert.equal(many.length, 1, JSON.stringify(many.map((f) => f.reason.slice(0, 200))));
  assert.match(many[0]!.reason, /^shards s0\.safetensors \(1 tensor\(s\)\), s1\.safetensors \(1 tensor\(s\)\), s2\.safetensors \(1 tensor\(s\)\) and 99997 more are missing from the snapshot$/);
  only(all.findings, 'escape/model.safetensors.index.json', /^shards \/etc\/passwd, \.\.\/\.\.\/etc\/passwd are outside the index's directory$/);
  assert.deepEqual(root.findings, [], `${shardNames.join(', ')} named as ./NAME are the index's own shards`);
});

test('symlinked shards (a Hugging Face cache snapshot) count as present and are checked through the link', async (t) => {
  const dir = await scratch(t);
  const { shardNames } = await checkpoint(path.join(dir, 'blobs'), 2);
  await fsp.mkdir(path.join(dir, 'snapshot'));
  for (const name of [...shardNames, 'model.safetensors.index.json']) await fsp.symlink(path.join('..', 'blobs', name), path.join(dir, 'snapshot', name));
  const files = await treeOf(dir);
  assert.equal(files.find((f) => f.name === `snapshot/${shardNames[0]}`)?.linkTo, `blobs/${shardNames[0]}`);
  const { findings } = await validateDirectory(dir);
  assert.deepEqual(findings, []);
});

// ---------------------------------------------------------------------------
// ONNX, written with the same protobuf library

async function writeOnnxModel(file: string, options: { external?: string; externalLength?: number; embedded?: number } = {}): Promise<void> {
  const { Model } = onnxTypes();
  const initializer: Record<string, unknown>[] = [];
  if (options.external) {
    initializer.push({
      name: 'W',
      dims: [4, 4],
      data_type: 1,
      data_location: 1,
      external_data: [
        { key: 'location', value: options.external },
        { key: 'offset', value: '0' },
        { key: 'length', value: String(options.externalLength ?? 64) },
      ],
    });
  }
  if (options.embedded) initializer.push({ name: 'B', dims: [options.embedded / 4], data_type: 1, raw_data: Buffer.alloc(options.embedded, 1) });
  const model = Model.fromObject({
    ir_version: 9,
    producer_name: 'test',
    opset_import: [{ domain: '', version: 17 }],
    graph: { name: 'g', node: [{ input: ['x', 'W'], output: ['y'], op_type: 'MatMul' }], initializer },
  });
  await fsp.writeFile(file, Model.encode(model).finish());
}

test('ONNX: a valid model with external data passes; a missing or short external-data file is reported', async (t) => {
  const dir = await scratch(t);
  await fsp.mkdir(path.join(dir, 'ok'));
  await writeOnnxModel(path.join(dir, 'ok', 'model.onnx'), { external: 'weights.bin' });
  await fsp.writeFile(path.join(dir, 'ok', 'weights.bin'), Buffer.alloc(64));
  await fsp.mkdir(path.join(dir, 'missing'));
  await writeOnnxModel(path.join(dir, 'missing', 'model.onnx'), { external: 'model.onnx.data' });
  await fsp.mkdir(path.join(dir, 'short'));
  await writeOnnxModel(path.join(dir, 'short', 'model.onnx'), { external: 'w.bin', externalLength: 100 });
  await fsp.writeFile(path.join(dir, 'short', 'w.bin'), Buffer.alloc(64));
  await fsp.mkdir(path.join(dir, 'escape'));
  await writeOnnxModel(path.join(dir, 'escape', 'model.onnx'), { external: '../ok/weights.bin' });
  await fsp.writeFile(path.join(dir, 'garbage.onnx'), Buffer.from([0x0a, 0xff, 0xff, 0xff, 0x0f, 1, 2]));

  const { findings, recognised } = await validateDirectory(dir);
  assert.ok(!findings.some((f) => f.path.startsWith('ok/')), JSON.stringify(findings));
  assert.deepEqual(recognised.get('ok/model.onnx'), { format: 'onnx', tensors: 1, dtypes: ['f32'], externalData: 1, version: 9, note: 'opset 17' });
  only(findings, 'missing/model.onnx', /tensor W: external data file model\.onnx\.data is not in the snapshot/);
  only(findings, 'short/model.onnx', /bytes 0–100 run past its end \(64 bytes\)/);
  only(findings, 'escape/model.onnx', /outside the model's directory/);
  only(findings, 'garbage.onnx', /does not parse as an ONNX ModelProto/);
});

test('ONNX walked field by field: a graph of 100,000 small nodes is read to its end', async (t) => {
  const dir = await scratch(t);
  const file = path.join(dir, 'model.onnx');
  const { Model } = onnxTypes();
  const node = Array.from({ length: 100_000 }, (_, i) => ({ input: [`x${i}`], output: [`y${i}`], op_type: 'Relu' }));
  // A tensor after the nodes whose external data is missing: its finding shows that the walk got past every node.
  const initializer = [{ name: 'W', dims: [4], data_type: 1, data_location: 1, external_data: [{ key: 'location', value: 'w.bin' }] }];
  await fsp.writeFile(file, Model.encode(Model.fromObject({ ir_version: 9, graph: { name: 'g', node, initializer } })).finish());
  const { size } = await fsp.stat(file);

  // Copying the node list for each node appended (quadratic) had taken about 90 s here, and two reads per field
  // several seconds; how long it takes is for the bench to judge, not this test.
  const check = await checkOnnx({ name: 'model.onnx', abs: file, size }, new Map(), 0);
  assert.deepEqual(check.reasons, ['tensor W: external data file w.bin is not in the snapshot']);
  assert.equal(check.info?.tensors, 1);
});

test('ONNX: external data that is a symlink out of the tree is not judged by the file this host has there', async (t) => {
  const dir = await scratch(t);
  const elsewhere = await scratch(t);
  await fsp.writeFile(path.join(elsewhere, 'weights.bin'), Buffer.alloc(10));
  await fsp.mkdir(path.join(dir, 'm'));
  await writeOnnxModel(path.join(dir, 'm', 'model.onnx'), { external: 'weights.bin', externalLength: 64 });
  await fsp.symlink(path.join(elsewhere, 'weights.bin'), path.join(dir, 'm', 'weights.bin'));

  const { findings } = await validateDirectory(dir);
  assert.deepEqual(findings, [], 'the 10-byte file outside the tree says nothing about the restored model');
});

test('ONNX above the whole-file bound is walked field by field, big tensor data skipped unread', async (t) => {
  const dir = await scratch(t);
  const file = path.join(dir, 'model.onnx');
  await writeOnnxModel(file, { external: 'gone.bin', embedded: 3 << 20 });
  const size = (await fsp.stat(file)).size;
  const tree = new Map([['model.onnx', { name: 'model.onnx', abs: file, size }]]);
  const walked = await checkOnnx({ name: 'model.onnx', abs: file, size }, tree, 0);
  assert.equal(walked.info?.tensors, 2);
  assert.match(walked.info?.note ?? '', /structure walked/);
  assert.deepEqual(walked.reasons, ['tensor W: external data file gone.bin is not in the snapshot']);
  // A cut-off file does not walk.
  await fsp.truncate(file, size - 1000);
  const cut = await checkOnnx({ name: 'model.onnx', abs: file, size: size - 1000 }, tree, 0);
  assert.match(cut.reasons[0] ?? '', /does not parse as an ONNX ModelProto: field \d+ at byte \d+ runs past the end/);
});

// ---------------------------------------------------------------------------
// GGUF

function ggufString(s: string): Buffer {
  const b = Buffer.from(s);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(b.length));
  return Buffer.concat([len, b]);
}

/** A GGUF v3 file with F32 tensors of `elements` each; `claimTensors` overrides the count in the header. */
function gguf(names: string[], elements: number, claimTensors = names.length): Buffer {
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n);
    return b;
  };
  const u64 = (n: number) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(n));
    return b;
  };
  const parts: Buffer[] = [Buffer.from('GGUF'), u32(3), u64(claimTensors), u64(3)];
  parts.push(ggufString('general.architecture'), u32(8), ggufString('llama'));
  parts.push(ggufString('general.alignment'), u32(4), u32(32));
  parts.push(ggufString('tokenizer.ggml.tokens'), u32(9), u32(8), u64(3), ggufString('a'), ggufString('b'), ggufString('c'));
  names.forEach((name, i) => parts.push(ggufString(name), u32(1), u64(elements), u32(0), u64(i * elements * 4)));
  let head = Buffer.concat(parts);
  head = Buffer.concat([head, Buffer.alloc((32 - (head.length % 32)) % 32)]);
  const data = Buffer.alloc(names.length * elements * 4);
  for (let i = 0; i < data.length; i++) data[i] = (i * 37 + 11) & 0xff;
  return Buffer.concat([head, data]);
}

test('GGUF: a consistent header passes; a wrong tensor count or a truncated file is reported', async (t) => {
  const dir = await scratch(t);
  await fsp.writeFile(path.join(dir, 'ok.gguf'), gguf(['tok_embd', 'output'], 64));
  await fsp.writeFile(path.join(dir, 'more.gguf'), gguf(['tok_embd', 'output'], 64, 3));
  await fsp.writeFile(path.join(dir, 'fewer.gguf'), gguf(['tok_embd', 'output'], 64, 1));
  await fsp.writeFile(path.join(dir, 'cut.gguf'), gguf(['tok_embd', 'output'], 64).subarray(0, -40));
  await fsp.writeFile(path.join(dir, 'magic.gguf'), Buffer.from('GGML....'));
  const zero = gguf(['tok_embd'], 64);
  const at = zero.indexOf(ggufString('general.alignment')) + ggufString('general.alignment').length + 4;
  zero.writeUInt32LE(0, at);
  await fsp.writeFile(path.join(dir, 'align0.gguf'), zero);

  const { findings, recognised } = await validateDirectory(dir);
  assert.ok(!findings.some((f) => f.path === 'ok.gguf'), JSON.stringify(findings));
  assert.deepEqual(recognised.get('ok.gguf'), { format: 'gguf', version: 3, tensors: 2, dtypes: ['f32'], architecture: 'llama' });
  assert.ok(findings.some((f) => f.path === 'more.gguf' && /tensor/.test(f.reason)), JSON.stringify(findings));
  only(findings, 'fewer.gguf', /bytes after the last tensor belong to no tensor \(does the header count all 1 tensors\?\)/);
  only(findings, 'cut.gguf', /tensor output .* runs past the end of the file/);
  assert.deepEqual(findings.filter((f) => f.path === 'align0.gguf').map((f) => f.reason), ['general.alignment is 0, not a positive multiple of 8']);
  only(findings, 'magic.gguf', /GGUF magic/);
});

// ---------------------------------------------------------------------------
// Configs and tokenizers

test('config and tokenizer: vocabulary mismatches and unparsable files are reported', async (t) => {
  const dir = await scratch(t);
  await checkpoint(path.join(dir, 'bigger'), 1);
  await fsp.writeFile(path.join(dir, 'bigger', 'config.json'), JSON.stringify({ model_type: 'llama', vocab_size: 200 }));
  await checkpoint(path.join(dir, 'other'), 1);
  await fsp.writeFile(path.join(dir, 'other', 'config.json'), JSON.stringify({ model_type: 'llama', vocab_size: 128256 }));
  await fsp.mkdir(path.join(dir, 'broken'));
  await fsp.writeFile(path.join(dir, 'broken', 'tokenizer.json'), '{"model": ');
  await fsp.mkdir(path.join(dir, 'padded'));
  await fsp.writeFile(path.join(dir, 'padded', 'config.json'), JSON.stringify({ text_config: { vocab_size: 32064 } }));
  await fsp.writeFile(path.join(dir, 'padded', 'tokenizer.json'), JSON.stringify({ model: { vocab: Object.fromEntries(Array.from({ length: 32011 }, (_, i) => [`t${i}`, i])) } }));

  const { findings } = await validateDirectory(dir);
  only(findings, 'bigger/tokenizer.json', /uses token ids up to 290, but config\.json has vocab_size 200/);
  only(findings, 'bigger/tokenizer_config.json', /uses token ids up to 290/);
  only(findings, 'other/tokenizer.json', /far fewer than vocab_size 128256/);
  only(findings, 'broken/tokenizer.json', /not valid JSON/);
  assert.ok(!findings.some((f) => f.path.startsWith('padded/')), 'an embedding padded a little beyond the tokenizer is normal');
});

// ---------------------------------------------------------------------------
// Through the CLI

test('config, tokenizer, index and safetensors header bytes that are not UTF-8 are reported; a U+FFFD written as UTF-8 passes', async (t) => {
  const dir = await scratch(t);
  const latin1 = (json: string) => Buffer.from(json, 'latin1');
  await fsp.mkdir(path.join(dir, 'latin1'));
  await fsp.writeFile(path.join(dir, 'latin1', 'config.json'), latin1('{"model_type": "llama", "name": "caf\u00e9"}'));
  await fsp.writeFile(path.join(dir, 'latin1', 'tokenizer.json'), latin1('{"model": {"vocab": {"caf\u00e9": 0}}}'));
  await fsp.writeFile(path.join(dir, 'latin1', 'model.safetensors.index.json'), latin1('{"weight_map": {"caf\u00e9": "model.safetensors"}}'));
  const header = latin1('{"__metadata__": {"by": "caf\u00e9"}}');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  await fsp.writeFile(path.join(dir, 'latin1', 'model.safetensors'), Buffer.concat([len, header]));
  await fsp.mkdir(path.join(dir, 'utf8'));
  await fsp.writeFile(path.join(dir, 'utf8', 'tokenizer.json'), JSON.stringify({ model: { vocab: { '\uFFFD': 0, 'café': 1 } } }));

  const { findings } = await validateDirectory(dir);
  for (const file of ['config.json', 'tokenizer.json', 'model.safetensors.index.json', 'model.safetensors']) only(findings, `latin1/${file}`, /not valid JSON: not UTF-8 text/);
  assert.ok(!findings.some((f) => f.path.startsWith('utf8/')), JSON.stringify(findings));
});

test('backup warns about an invalid model, --strict refuses it with exit 3; manifest, show and show --json carry the summary', async (t) => {
  const work = await scratch(t);
  const repo = path.join(work, 'repo');
  const src = path.join(work, 'models');
  const { shardNames } = await checkpoint(path.join(src, 'llama'), 4);
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);

  const clean = await lifeboat(['--repo', repo, '--json', 'backup', src, '--strict']);
  assert.equal(clean.code, 0, clean.stderr);
  const shown = await lifeboat(['--repo', repo, '--json', 'show', 'latest']);
  assert.equal(shown.code, 0, shown.stderr);
  const doc = shown.json();
  const index = doc.models.find((m: { path: string }) => m.path === 'models/llama/model.safetensors.index.json');
  assert.deepEqual(index, { format: 'safetensors-index', shards: 4, tensors: 12, dtypes: ['bf16'], path: 'models/llama/model.safetensors.index.json', summary: '4 shards, 12 tensors, bf16' });
  assert.ok(!doc.models.some((m: { format: string }) => m.format === 'safetensors'), 'shards of an index are summarised by it');
  const entry = doc.entries.find((e: { path: string }) => e.path === `llama/${shardNames[0]}`);
  assert.deepEqual(entry.model, { format: 'safetensors', tensors: 3, dtypes: ['bf16'] });
  const text = await lifeboat(['--repo', repo, 'show', 'latest']);
  assert.match(text.stdout, /model: models\/llama\/model\.safetensors\.index\.json: safetensors-index, 4 shards, 12 tensors, bf16/);

  const shard = path.join(src, 'llama', shardNames[3]!);
  const header = await readSafetensorsHeader(shard);
  await fsp.truncate(shard, header.fileBytes - 1);
  const ids = async () => (await lifeboat(['--repo', repo, '--json', 'list'])).json().map((p: { id: string }) => p.id);
  const before = await ids();
  const strict = await lifeboat(['--repo', repo, '--json', 'backup', src, '--strict']);
  assert.equal(strict.code, 3, strict.stderr);
  assert.match(strict.stderr, /refused by --strict: 1 model problem\(s\), first: models\/llama\/model-00004-of-00004\.safetensors: .*past the end of the data/);
  assert.deepEqual(await ids(), before, 'no point was committed');

  const lax = await lifeboat(['--repo', repo, '--json', 'backup', src]);
  assert.equal(lax.code, 0, lax.stderr);
  assert.deepEqual(
    lax.json().warnings.filter((w: { code: string }) => w.code === 'model-invalid').map((w: { path: string }) => w.path),
    [`models/llama/${shardNames[3]}`],
  );
  assert.match(lax.stderr, /model-00004-of-00004\.safetensors/);
  // Without --strict the checks run while the changed files are stored; what they found must still reach the manifest.
  const laxPoint = (await lifeboat(['--repo', repo, '--json', 'show', 'latest'])).json();
  assert.equal(laxPoint.id, lax.json().id);
  assert.deepEqual(laxPoint.entries.find((e: { path: string }) => e.path === `llama/${shardNames[0]}`).model, { format: 'safetensors', tensors: 3, dtypes: ['bf16'] });
  assert.ok(laxPoint.warnings.some((w: { code: string; path: string }) => w.code === 'model-invalid' && w.path === `models/llama/${shardNames[3]}`), JSON.stringify(laxPoint.warnings));
});

test('verify --deep restores a point and finds the model problem stored in it (exit 3); a clean point passes', async (t) => {
  const work = await scratch(t);
  const repo = path.join(work, 'repo');
  const src = path.join(work, 'models');
  const { shardNames } = await checkpoint(path.join(src, 'llama'), 2);
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const good = await lifeboat(['--repo', repo, '--json', 'backup', src]);
  assert.equal(good.code, 0, good.stderr);
  // Restored under a work directory that is made for it, and left empty.
  const workDir = path.join(work, 'deep-work', 'not-yet');
  const deepGood = await lifeboat(['--repo', repo, '--json', 'verify', good.json().id, '--deep', '--work-dir', workDir]);
  assert.equal(deepGood.code, 0, deepGood.stdout);
  assert.equal(deepGood.json().ok, true);
  assert.deepEqual(await fsp.readdir(workDir), []);
  // Its summary does not call a restore of every file, each SHA-256 checked, a check of the structure only.
  const text = await lifeboat(['--repo', repo, 'verify', good.json().id, '--deep']);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /^checked 1 backup point\(s\), \d+ files, restored them \(every SHA-256 checked\) and validated the model files\n/);

  // The point taken after a shard went missing holds a model that will not load.
  await fsp.rm(path.join(src, 'llama', shardNames[1]!));
  const bad = await lifeboat(['--repo', repo, '--json', 'backup', src]);
  assert.equal(bad.code, 0, bad.stderr);
  const structural = await lifeboat(['--repo', repo, '--json', 'verify', '--read-data']);
  assert.equal(structural.code, 0, 'the bytes are all there: only --deep can tell');
  const deep = await lifeboat(['--repo', repo, '--json', 'verify', '--deep']);
  assert.equal(deep.code, 3, deep.stderr);
  const problems = deep.json().problems;
  assert.deepEqual(
    problems.map((p: { point: string; path: string; kind: string }) => [p.point, p.path, p.kind]),
    [[bad.json().id, 'models/llama/model.safetensors.index.json', 'model-invalid']],
  );
  assert.match(problems[0].detail, new RegExp(`shard ${shardNames[1]} .* is missing from the snapshot`));
});

test('an incremental keeps what its reference found in files it did not read, and checks again what a change can affect', { skip: hasFincore ? false : 'fincore (util-linux) is not installed' }, async (t) => {
  const work = await scratch(t);
  const repo = path.join(work, 'repo');
  const src = path.join(work, 'models');
  const { shardNames } = await checkpoint(path.join(src, 'llama'), 2);
  await fsp.mkdir(path.join(src, 'bad-tok'));
  const badTokenizer = path.join(src, 'bad-tok', 'tokenizer.json');
  await fsp.writeFile(badTokenizer, '{"model": ');
  // Old enough that the backup trusts its stat (a file written just before a backup is read again).
  execFileSync('touch', ['-d', '2020-01-01', badTokenizer]);
  await fsp.mkdir(path.join(src, 'onnx'));
  await writeOnnxModel(path.join(src, 'onnx', 'model.onnx'), { external: 'weights.bin' });
  await fsp.writeFile(path.join(src, 'onnx', 'weights.bin'), Buffer.alloc(64));
  execFileSync('touch', ['-d', '2020-01-01', path.join(src, 'onnx', 'model.onnx')]);
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const full = await lifeboat(['--repo', repo, '--json', 'backup', src]);
  assert.equal(full.code, 0, full.stderr);
  const modelWarnings = (run: { json(): { warnings: { code: string; path: string; message: string }[] } }) =>
    run.json().warnings.filter((w) => w.code === 'model-invalid').map((w) => `${w.path}: ${w.message}`);
  assert.equal(modelWarnings(full).length, 1, JSON.stringify(modelWarnings(full)));
  assert.match(modelWarnings(full)[0]!, /^models\/bad-tok\/tokenizer\.json: tokenizer: .*not valid JSON/);

  // The broken tokenizer is left alone, and out of the page cache: to a backup it is the same file, not read
  // again (by the backup or by the checks), so what the reference found in it stands.
  evict(badTokenizer);
  // A shard changes, and the ONNX model's external data is cut short: the model did not change, but its directory did.
  await writeSafetensors(path.join(src, 'llama', shardNames[0]!), tensors('layers.0', 3), 99);
  await fsp.writeFile(path.join(src, 'onnx', 'weights.bin'), Buffer.alloc(10));

  const incr = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'incr']);
  assert.equal(incr.code, 0, incr.stderr);
  const found = modelWarnings(incr);
  assert.ok(found.some((w) => /^models\/bad-tok\/tokenizer\.json: tokenizer: .*not valid JSON/.test(w)), `the reference's finding in the unread tokenizer stands: ${JSON.stringify(found)}`);
  assert.ok(found.some((w) => /^models\/onnx\/model\.onnx: onnx: .*run past its end \(10 bytes\)/.test(w)), `the ONNX model is checked again: ${JSON.stringify(found)}`);
  assert.equal(resident(badTokenizer), 0, 'the unchanged tokenizer was not read');
  const entries = (await lifeboat(['--repo', repo, '--json', 'show', 'latest'])).json().entries as { path: string; model?: unknown }[];
  assert.deepEqual(entries.find((e) => e.path === 'llama/config.json')?.model, { format: 'hf-config', vocabSize: 300, architecture: 'LlamaForCausalLM' });
  assert.deepEqual(entries.find((e) => e.path === 'llama/tokenizer.json')?.model, { format: 'tokenizer', vocabSize: 291 });

  // Mended in place, its size and mtime kept: its change time moved, so it is read and checked again.
  const before = await fsp.stat(badTokenizer, { bigint: true });
  const stamp = path.join(work, 'stamp');
  // touch copies the mtime to the nanosecond, which utimes from JavaScript cannot.
  execFileSync('touch', ['-r', badTokenizer, stamp]);
  await fsp.writeFile(badTokenizer, '{"a":1}   ');
  execFileSync('touch', ['-r', stamp, badTokenizer]);
  const after = await fsp.stat(badTokenizer, { bigint: true });
  assert.deepEqual([after.size, after.mtimeNs, after.ino], [before.size, before.mtimeNs, before.ino]);
  const mended = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'incr']);
  assert.equal(mended.code, 0, mended.stderr);
  const now = modelWarnings(mended).filter((w) => w.startsWith('models/bad-tok/'));
  assert.equal(now.length, 1, JSON.stringify(now));
  assert.match(now[0]!, /tokenizer: has no model section/);
});
