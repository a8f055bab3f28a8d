import * as path from 'node:path';
import { createRequire } from 'node:module';
import type protobuf from 'protobufjs';
import { errorMessage } from '../errors.js';
import { WindowedFile, readAt } from './io.js';
import { bump, dtypeSummary, type FileCheck, type ModelInfo, type TreeFile } from './types.js';
import { openRegularFile } from '../format/durable.js';

/**
 * The part of onnx/onnx.proto (IR version 10) that validation needs: the
 * graph, its initializers and the tensors attributes and subgraphs carry, and
 * where each tensor's data lives. Field numbers are those of the official
 * schema; fields not named here are skipped by the decoder.
 */
export const ONNX_PROTO_SUBSET = `
syntax = "proto2";
package onnx;
message StringStringEntryProto { optional string key = 1; optional string value = 2; }
message TensorProto {
  repeated int64 dims = 1;
  optional int32 data_type = 2;
  optional string name = 8;
  optional bytes raw_data = 9;
  repeated StringStringEntryProto external_data = 13;
  optional int32 data_location = 14;
}
message SparseTensorProto { optional TensorProto values = 1; optional TensorProto indices = 2; repeated int64 dims = 3; }
message AttributeProto {
  optional string name = 1;
  optional TensorProto t = 5;
  optional GraphProto g = 6;
  repeated TensorProto tensors = 10;
  repeated GraphProto graphs = 11;
  optional SparseTensorProto sparse_tensor = 22;
  repeated SparseTensorProto sparse_tensors = 23;
}
message NodeProto {
  repeated string input = 1;
  repeated string output = 2;
  optional string name = 3;
  optional string op_type = 4;
  repeated AttributeProto attribute = 5;
  optional string domain = 7;
}
message GraphProto {
  repeated NodeProto node = 1;
  optional string name = 2;
  repeated TensorProto initializer = 5;
  repeated SparseTensorProto sparse_initializer = 15;
}
message OperatorSetIdProto { optional string domain = 1; optional int64 version = 2; }
message FunctionProto { optional string name = 1; repeated NodeProto node = 7; }
message ModelProto {
  optional int64 ir_version = 1;
  optional string producer_name = 2;
  optional string producer_version = 3;
  optional string domain = 4;
  optional int64 model_version = 5;
  optional string doc_string = 6;
  optional GraphProto graph = 7;
  repeated OperatorSetIdProto opset_import = 8;
  repeated FunctionProto functions = 25;
}
`;

// Loaded on first use: most deployments have no ONNX file, and every command would pay for it at start-up.
const requireAtRunTime = createRequire(import.meta.url);
let protobufModule: typeof protobuf | undefined;
function pb(): typeof protobuf {
  return (protobufModule ??= requireAtRunTime('protobufjs') as typeof protobuf);
}

let root: protobuf.Root | undefined;
export function onnxTypes(): { Model: protobuf.Type; Graph: protobuf.Type; Tensor: protobuf.Type; root: protobuf.Root } {
  root ??= pb().parse(ONNX_PROTO_SUBSET, { keepCase: true }).root;
  return { root, Model: root.lookupType('onnx.ModelProto'), Graph: root.lookupType('onnx.GraphProto'), Tensor: root.lookupType('onnx.TensorProto') };
}

/** Files up to this size are decoded whole; above it the message tree is walked and only small fields are decoded. */
export const ONNX_FULL_PARSE_BYTES = 64 << 20;
/** Fields up to this size are read and decoded; bigger ones (raw tensor data, doc strings) are skipped or walked. */
const FIELD_READ_BYTES = 1 << 20;
const MAX_DEPTH = 32;
/**
 * The walk reads through a window this size: big enough that a graph of many
 * small nodes takes one read per window, small enough that skipping past each
 * big tensor and reading the next window adds little (64 KiB per tensor).
 */
const WALK_WINDOW_BYTES = 64 << 10;

const DATA_TYPES: Record<number, string> = {
  1: 'f32', 2: 'u8', 3: 'i8', 4: 'u16', 5: 'i16', 6: 'i32', 7: 'i64', 8: 'string', 9: 'bool', 10: 'f16', 11: 'f64',
  12: 'u32', 13: 'u64', 14: 'c64', 15: 'c128', 16: 'bf16', 17: 'f8e4m3fn', 18: 'f8e4m3fnuz', 19: 'f8e5m2', 20: 'f8e5m2fnuz',
  21: 'u4', 22: 'i4', 23: 'f4e2m1',
};

interface TensorMsg {
  name?: string;
  data_type?: number;
  data_location?: number;
  external_data?: { key?: string; value?: string }[];
}
interface GraphMsg {
  node?: { attribute?: AttributeMsg[] }[];
  initializer?: TensorMsg[];
  sparse_initializer?: { values?: TensorMsg; indices?: TensorMsg }[];
}
interface AttributeMsg {
  t?: TensorMsg;
  g?: GraphMsg;
  tensors?: TensorMsg[];
  graphs?: GraphMsg[];
  sparse_tensor?: { values?: TensorMsg; indices?: TensorMsg };
  sparse_tensors?: { values?: TensorMsg; indices?: TensorMsg }[];
}
interface ModelMsg {
  ir_version?: unknown;
  graph?: GraphMsg;
  opset_import?: { domain?: string; version?: unknown }[];
  functions?: { node?: { attribute?: AttributeMsg[] }[] }[];
}

/**
 * Walks a message in a file without reading it whole: each field's tag and
 * length is read, small fields are decoded by protobufjs (as a one-field
 * message of the same type, then merged), big message fields are walked
 * recursively and big bytes fields skipped. Every length is checked against
 * the enclosing message before anything is read.
 */
async function walkMessage(file: WindowedFile, type: protobuf.Type, start: number, end: number, depth: number): Promise<Record<string, unknown>> {
  if (depth > MAX_DEPTH) throw new Error(`messages nested more than ${MAX_DEPTH} deep`);
  const out: Record<string, unknown> = {};
  let pos = start;
  while (pos < end) {
    const head = await file.at(pos, Math.min(20, end - pos));
    const reader = pb().Reader.create(head);
    const tag = reader.uint32();
    const wireType = tag & 7;
    const id = tag >>> 3;
    let fieldEnd: number;
    let bodyStart = pos;
    if (wireType === 2) {
      const length = reader.uint32();
      bodyStart = pos + reader.pos;
      fieldEnd = bodyStart + length;
    } else if (wireType === 0 || wireType === 1 || wireType === 5) {
      reader.skipType(wireType);
      fieldEnd = pos + reader.pos;
    } else {
      throw new Error(`unsupported wire type ${wireType} at byte ${pos}`);
    }
    if (id === 0 || fieldEnd > end) throw new Error(`field ${id} at byte ${pos} runs past the end of its message (byte ${end})`);
    const field = type.fieldsById[id];
    if (fieldEnd - pos <= FIELD_READ_BYTES) {
      // A copy: decoded bytes fields are views of what is decoded, and would keep whole windows alive.
      const decoded = type.decode(Buffer.from(await file.at(pos, fieldEnd - pos))) as unknown as Record<string, unknown>;
      // Appended in place: a graph of a million small nodes is a million fields, and copying the list for each took hours.
      for (const [k, v] of Object.entries(decoded)) {
        if (Array.isArray(v) && Array.isArray(out[k])) for (const item of v as unknown[]) (out[k] as unknown[]).push(item);
        else out[k] = v;
      }
    } else if (field && wireType === 2) {
      field.resolve();
      if (field.resolvedType instanceof pb().Type) {
        const sub = await walkMessage(file, field.resolvedType, bodyStart, fieldEnd, depth + 1);
        if (field.repeated) ((out[field.name] ??= []) as unknown[]).push(sub);
        else out[field.name] = sub;
      }
      // A big bytes or string field (raw tensor data, a doc string) is skipped unread.
    }
    pos = fieldEnd;
  }
  return out;
}

function tensorsOf(model: ModelMsg): TensorMsg[] {
  const out: TensorMsg[] = [];
  const sparse = (s?: { values?: TensorMsg; indices?: TensorMsg }) => {
    if (s?.values) out.push(s.values);
    if (s?.indices) out.push(s.indices);
  };
  const nodes = (list?: { attribute?: AttributeMsg[] }[]) => {
    for (const n of list ?? []) {
      for (const a of n.attribute ?? []) {
        if (a.t) out.push(a.t);
        out.push(...(a.tensors ?? []));
        sparse(a.sparse_tensor);
        for (const s of a.sparse_tensors ?? []) sparse(s);
        if (a.g) graph(a.g);
        for (const g of a.graphs ?? []) graph(g);
      }
    }
  };
  const graph = (g: GraphMsg) => {
    out.push(...(g.initializer ?? []));
    for (const s of g.sparse_initializer ?? []) sparse(s);
    nodes(g.node);
  };
  if (model.graph) graph(model.graph);
  for (const f of model.functions ?? []) nodes(f.node);
  return out;
}

function num(v: unknown): number | undefined {
  if (typeof v === 'number') return v;
  if (v && typeof v === 'object' && 'toNumber' in v) return (v as { toNumber(): number }).toNumber();
  return undefined;
}

/**
 * Checks an ONNX model: the protobuf parses (whole for files up to 64 MiB,
 * walked field by field above that), and every external-data file a tensor
 * names is in the tree, inside the model's directory, and long enough for
 * the offset and length it gives.
 */
export async function checkOnnx(file: TreeFile, byName: ReadonlyMap<string, TreeFile>, fullParseBytes = ONNX_FULL_PARSE_BYTES): Promise<FileCheck> {
  const { Model } = onnxTypes();
  const reasons: string[] = [];
  let model: ModelMsg;
  let walked = false;
  const { handle: fh, stats } = await openRegularFile(file.abs);
  try {
    const size = Number(stats.size);
    try {
      if (size <= fullParseBytes) {
        model = Model.decode(await readAt(fh, 0, size)) as unknown as ModelMsg;
      } else {
        walked = true;
        model = (await walkMessage(new WindowedFile(fh, size, WALK_WINDOW_BYTES), Model, 0, size, 0)) as ModelMsg;
      }
    } catch (err) {
      return { reasons: [`does not parse as an ONNX ModelProto: ${errorMessage(err)}`] };
    }
  } finally {
    await fh.close();
  }
  if (!model.graph) reasons.push('ModelProto has no graph');
  const tensors = tensorsOf(model);
  const dtypes = new Map<string, number>();
  const external = new Set<string>();
  const dir = path.posix.dirname(file.name);
  for (const t of tensors) {
    bump(dtypes, DATA_TYPES[t.data_type ?? 0] ?? `type${t.data_type ?? 0}`);
    const entries = t.external_data ?? [];
    if (t.data_location !== 1 && entries.length === 0) continue;
    const get = (key: string) => entries.find((e) => e.key === key)?.value;
    const location = get('location');
    const label = `tensor ${t.name ?? '(unnamed)'}`;
    if (!location) {
      reasons.push(`${label} keeps its data externally but names no location`);
      continue;
    }
    const normal = path.posix.normalize(location);
    if (path.posix.isAbsolute(location) || normal === '..' || normal.startsWith('../')) {
      reasons.push(`${label}: external data location ${location} is outside the model's directory`);
      continue;
    }
    const rel = dir === '.' ? normal : path.posix.join(dir, normal);
    external.add(rel);
    const target = byName.get(rel);
    if (!target) {
      reasons.push(`${label}: external data file ${location} is not in the snapshot`);
      continue;
    }
    const offset = Number(get('offset') ?? 0);
    const length = get('length') === undefined ? undefined : Number(get('length'));
    // A symlink out of the tree is not judged by whatever file this host has there.
    const targetSize = target.symlink ? (target.linkTo ? byName.get(target.linkTo)?.size : undefined) : target.size;
    if (!Number.isSafeInteger(offset) || offset < 0 || (length !== undefined && (!Number.isSafeInteger(length) || length < 0))) {
      reasons.push(`${label}: external data offset/length ${get('offset')}/${get('length')} are not byte counts`);
    } else if (targetSize !== undefined && offset + (length ?? 0) > targetSize) {
      reasons.push(`${label}: external data ${location} bytes ${offset}–${offset + (length ?? 0)} run past its end (${targetSize} bytes)`);
    }
  }
  const opset = model.opset_import?.find((o) => !o.domain)?.version;
  const info: ModelInfo = {
    format: 'onnx',
    tensors: tensors.length,
    dtypes: dtypeSummary(dtypes),
    ...(external.size ? { externalData: external.size } : {}),
    ...(num(model.ir_version) !== undefined ? { version: num(model.ir_version)! } : {}),
    ...(opset !== undefined || walked ? { note: [opset !== undefined ? `opset ${num(opset)}` : '', walked ? 'large file: structure walked, tensor data not decoded' : ''].filter(Boolean).join('; ') } : {}),
  };
  return { info, reasons: reasons.slice(0, 20) };
}
