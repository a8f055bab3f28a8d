import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  findShards,
  fromBf16,
  generateDeployment,
  mutateDeployment,
  readSafetensorsHeader,
  writeOnnx,
  writeSafetensors,
  type DeploymentOptions,
} from '../fixtures/generate.js';

const OPTIONS: DeploymentOptions = { shards: 3, shardBytes: 300 << 10, onnxBytes: (96 << 10) + 3, smallFiles: 30 };

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'lifeboat-fixture-'));
  t.after(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Every file under root (relative path → SHA-256). */
async function digests(root: string, rel = ''): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const e of await fsp.readdir(path.join(root, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) for (const [k, v] of await digests(root, r)) out.set(k, v);
    else out.set(r, createHash('sha256').update(await fsp.readFile(path.join(root, r))).digest('hex'));
  }
  return out;
}

test('the same seed gives identical bytes in every file, another seed different ones', async (t) => {
  const dir = await tempDir(t);
  const a = await generateDeployment(path.join(dir, 'a'), { ...OPTIONS, seed: 42 });
  const b = await generateDeployment(path.join(dir, 'b'), { ...OPTIONS, seed: 42 });
  const c = await generateDeployment(path.join(dir, 'c'), { ...OPTIONS, seed: 43 });
  const [da, db, dc] = await Promise.all([digests(a.root), digests(b.root), digests(c.root)]);
  assert.deepEqual([...da.entries()].sort(), [...db.entries()].sort());
  assert.equal(da.size, a.files);
  assert.ok(a.smallFiles.length >= 25, `expected about 30 small files, got ${a.smallFiles.length}`);

  for (const shard of a.shards) assert.notEqual(dc.get(shard), da.get(shard), `${shard} should differ with another seed`);
  assert.notEqual(dc.get(a.onnx), da.get(a.onnx));
  const smallA = [...da.entries()].filter(([k]) => a.smallFiles.includes(k));
  const smallC = [...dc.entries()].filter(([k]) => c.smallFiles.includes(k));
  assert.notDeepEqual(smallA, smallC);
});

test('each shard is valid safetensors: the header length is right and the offsets tile the data exactly', async (t) => {
  const dir = await tempDir(t);
  const d = await generateDeployment(dir, { ...OPTIONS, seed: 7 });
  assert.equal(d.shards.length, 3);
  for (const shard of d.shards) {
    const file = path.join(dir, shard);
    const raw = await fsp.readFile(file);
    const headerLength = Number(raw.readBigUInt64LE(0));
    assert.equal(headerLength % 8, 0, 'header padded to 8 bytes');
    const header = JSON.parse(raw.subarray(8, 8 + headerLength).toString('utf8')) as Record<string, unknown>;
    assert.ok(header.__metadata__ && typeof header.__metadata__ === 'object', '__metadata__ present');
    const tensors = Object.entries(header)
      .filter(([k]) => k !== '__metadata__')
      .map(([name, v]) => ({ name, ...(v as { dtype: string; shape: number[]; data_offsets: [number, number] }) }))
      .sort((x, y) => x.data_offsets[0] - y.data_offsets[0]);
    assert.ok(tensors.length > 0);
    let expected = 0;
    for (const tensor of tensors) {
      assert.equal(tensor.dtype, 'BF16');
      assert.equal(tensor.data_offsets[0], expected, `${tensor.name} starts where the previous one ends`);
      assert.equal(tensor.data_offsets[1] - tensor.data_offsets[0], tensor.shape.reduce((n, x) => n * x, 1) * 2, `${tensor.name} size matches its shape`);
      expected = tensor.data_offsets[1];
    }
    assert.equal(raw.length, 8 + headerLength + expected, 'file size = 8 + header + data');
    const parsed = await readSafetensorsHeader(file);
    assert.equal(parsed.headerLength, headerLength);
    assert.equal(parsed.fileBytes, raw.length);
  }
});

test('the index maps every tensor to the shard that holds it, and the vocab agrees everywhere', async (t) => {
  const dir = await tempDir(t);
  const d = await generateDeployment(dir, { ...OPTIONS, seed: 11 });
  const modelDir = path.join(dir, 'models', d.modelName);
  const index = JSON.parse(await fsp.readFile(path.join(modelDir, 'model.safetensors.index.json'), 'utf8')) as {
    metadata: { total_size: number };
    weight_map: Record<string, string>;
  };
  const holders = new Map<string, string>();
  let dataBytes = 0;
  let embedRows = 0;
  for (const shard of d.shards) {
    const { tensors } = await readSafetensorsHeader(path.join(dir, shard));
    for (const [name, entry] of Object.entries(tensors)) {
      assert.ok(!holders.has(name), `${name} is in one shard only`);
      holders.set(name, path.basename(shard));
      dataBytes += entry.data_offsets[1] - entry.data_offsets[0];
      if (name === 'model.embed_tokens.weight') embedRows = entry.shape[0]!;
    }
  }
  assert.deepEqual(Object.keys(index.weight_map).sort(), [...holders.keys()].sort());
  for (const [name, shard] of Object.entries(index.weight_map)) assert.equal(shard, holders.get(name), `${name} → ${shard}`);
  assert.equal(index.metadata.total_size, dataBytes);

  const config = JSON.parse(await fsp.readFile(path.join(modelDir, 'config.json'), 'utf8')) as { vocab_size: number; num_hidden_layers: number };
  const tokenizer = JSON.parse(await fsp.readFile(path.join(modelDir, 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number> } };
  assert.equal(embedRows, config.vocab_size);
  const ids = Object.values(tokenizer.model.vocab).sort((x, y) => x - y);
  assert.equal(ids.length, config.vocab_size);
  ids.forEach((id, i) => assert.equal(id, i));
  assert.ok(holders.has(`model.layers.${config.num_hidden_layers - 1}.mlp.down_proj.weight`));
});

test('weights look like BF16 weights, odd-sized tensors included', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'w.safetensors');
  const info = await writeSafetensors(
    file,
    [
      { name: 'odd', shape: [3, 5] },
      { name: 'proj.weight', shape: [300, 301], std: 0.02 },
      { name: 'norm.weight', shape: [1001], mean: 1, std: 0.05 },
    ],
    5,
  );
  const raw = await fsp.readFile(file);
  assert.equal(raw.length, info.fileBytes);
  const dataStart = 8 + info.headerLength;
  const stats = (name: string) => {
    const [from, to] = info.tensors[name]!.data_offsets;
    let sum = 0;
    let sq = 0;
    const n = (to - from) / 2;
    for (let i = 0; i < n; i++) {
      const x = fromBf16(raw.readUInt16LE(dataStart + from + 2 * i));
      assert.ok(Number.isFinite(x));
      sum += x;
      sq += x * x;
    }
    const mean = sum / n;
    return { mean, std: Math.sqrt(sq / n - mean * mean) };
  };
  const proj = stats('proj.weight');
  assert.ok(Math.abs(proj.mean) < 0.001 && Math.abs(proj.std - 0.02) < 0.001, JSON.stringify(proj));
  const norm = stats('norm.weight');
  assert.ok(Math.abs(norm.mean - 1) < 0.01 && Math.abs(norm.std - 0.05) < 0.005, JSON.stringify(norm));
});

/** Walks protobuf fields; returns them, and fails unless they end exactly at `end`. */
interface ProtoField {
  field: number;
  wire: number;
  start: number;
  end: number;
  value?: number;
}

function protoFields(buf: Buffer, start: number, end: number): ProtoField[] {
  const out: ProtoField[] = [];
  let i = start;
  const varint = () => {
    let v = 0;
    let mul = 1;
    for (;;) {
      const b = buf[i++]!;
      v += (b & 127) * mul;
      mul *= 128;
      if (b < 128) return v;
    }
  };
  while (i < end) {
    const key = varint();
    const wire = key & 7;
    if (wire === 0) {
      const s = i;
      const value = varint();
      out.push({ field: key >>> 3, wire, start: s, end: i, value });
    } else if (wire === 2) {
      const len = varint();
      out.push({ field: key >>> 3, wire, start: i, end: i + len });
      i += len;
    } else throw new Error(`unexpected wire type ${wire}`);
  }
  assert.equal(i, end, 'protobuf fields end exactly at the end of their message');
  return out;
}

test('the ONNX-like model has exactly the size asked and valid protobuf framing', async (t) => {
  const dir = await tempDir(t);
  for (const size of [100, 1000, 65_537, (300 << 10) + 1]) {
    const file = path.join(dir, `m${size}.onnx`);
    await writeOnnx(file, size, 3);
    const raw = await fsp.readFile(file);
    assert.equal(raw.length, size);
    const top = protoFields(raw, 0, raw.length);
    assert.deepEqual(top.filter((f) => f.field === 1).length, 1, 'ir_version');
    const graph = top.find((f) => f.field === 7)!;
    const inits = protoFields(raw, graph.start, graph.end).filter((f) => f.field === 5);
    if (size > 60_000) assert.ok(inits.length > 0, 'a model of this size holds initializers');
    for (const init of inits) {
      const fields = protoFields(raw, init.start, init.end);
      const dims = fields.filter((f) => f.field === 1).map((f) => f.value!);
      assert.equal(fields.find((f) => f.field === 2)?.value, 1, 'data_type FLOAT');
      const data = fields.find((f) => f.field === 9)!;
      assert.equal(data.end - data.start, dims.reduce((n, x) => n * x, 1) * 4, 'raw_data matches dims');
    }
  }
});

test('mutations rewrite a shard in place and change exactly the files they report', async (t) => {
  const dir = await tempDir(t);
  const d = await generateDeployment(dir, { ...OPTIONS, seed: 9 });
  const before = await digests(dir);
  const shardPath = path.join(dir, (await findShards(dir))[1]!);
  const headerBefore = await readSafetensorsHeader(shardPath);
  const inoBefore = (await fsp.stat(shardPath)).ino;

  const m = await mutateDeployment(dir, { seed: 1, rewriteShard: 1, touch: 5, add: 2, remove: 1 });
  assert.deepEqual(m.rewritten, [d.shards[1]]);
  assert.equal(m.touched.length, 5);
  assert.equal(m.added.length, 2);
  assert.equal(m.removed.length, 1);
  const after = await digests(dir);
  assert.deepEqual(await readSafetensorsHeader(shardPath), headerBefore);
  assert.equal((await fsp.stat(shardPath)).ino, inoBefore);

  const changed = [...after.keys()].filter((k) => before.has(k) && before.get(k) !== after.get(k)).sort();
  assert.deepEqual(changed, [...m.rewritten, ...m.touched].sort());
  assert.deepEqual([...after.keys()].filter((k) => !before.has(k)).sort(), [...m.added].sort());
  assert.deepEqual([...before.keys()].filter((k) => !after.has(k)), m.removed);

  // The same mutation of the same tree gives the same bytes.
  const twin = await generateDeployment(path.join(dir, '..', `${path.basename(dir)}-twin`), { ...OPTIONS, seed: 9 });
  t.after(() => fsp.rm(twin.root, { recursive: true, force: true }));
  await mutateDeployment(twin.root, { seed: 1, rewriteShard: 1, touch: 5, add: 2, remove: 1 });
  assert.deepEqual([...(await digests(twin.root)).entries()].sort(), [...after.entries()].sort());
});
