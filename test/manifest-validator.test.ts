import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { prng, seedFromEnv, tempDir } from './helpers/tree.js';
import { generateDeployment } from '../fixtures/generate.js';
import { createHash } from 'node:crypto';
import { decodeDocument } from '../src/format/document.js';
import { manifestSchema, manifestValidator } from '../src/format/manifest.js';
import { decodeManifest, readInSlices } from '../src/format/manifest-read.js';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Values that sit on the edges of the manifest's rules: wrong types, bounds, formats. */
const ODD_VALUES: Json[] = [
  null, true, false, 0, -1, 1.5, 0o7777, 0o10000, 2 ** 32, 2 ** 53, -(2 ** 53), Number.MAX_SAFE_INTEGER,
  '', 'x', '..', '/etc/passwd', '12345', '-1', 'a'.repeat(65), 'a'.repeat(4097), '0'.repeat(64), 'g'.repeat(64),
  '20260101-000000-000F', '20260101-000000-000Z', 'sha256:abc', 'file', 'dir', 'symlink', 'fifo', 'none',
  'aes-256-gcm', 'full', 'incr', 'safetensors', [], [1], ['x'], {}, { point: '20260101-000000-000F', volume: 0, entry: 0 },
];

/** Every place in a document: the containers and their keys (or indexes). */
function places(doc: Json, out: { parent: Json[] | { [key: string]: Json }; key: string | number }[] = []) {
  if (Array.isArray(doc)) doc.forEach((v, i) => (out.push({ parent: doc, key: i }), places(v, out)));
  else if (doc !== null && typeof doc === 'object') for (const [k, v] of Object.entries(doc)) out.push({ parent: doc, key: k }), places(v, out);
  return out;
}

/** Field names of the manifest that a mutation may add where they do not belong, or twice over. */
const FIELD_NAMES = ['crc32', 'framingCrc32', 'ref', 'model', 'probe', 'link', 'target', 'sha256', 'format', 'extra'];

/** A place to change: as often the manifest's own fields and its volumes' as its many entries'. */
function pickPlace(doc: { [key: string]: Json }, rand: () => number) {
  const region = rand();
  const pool = region < 0.3 ? places(doc).filter((p) => p.parent === doc) : region < 0.6 ? places(doc.volumes ?? null) : places(doc);
  return pool.length ? pool[Math.floor(rand() * pool.length)]! : places(doc)[0]!;
}

function mutate(doc: Json, rand: () => number): Json {
  const copy = structuredClone(doc) as { [key: string]: Json };
  // A copy: a later mutation may land inside it, and must change neither the list nor (through a shared value) itself.
  const odd = () => structuredClone(ODD_VALUES[Math.floor(rand() * ODD_VALUES.length)]!);
  for (let n = 1 + Math.floor(rand() * 3); n > 0; n--) {
    const { parent, key } = pickPlace(copy, rand);
    const roll = rand();
    if (roll < 0.2 && !Array.isArray(parent)) delete parent[key as string];
    else if (roll < 0.35 && !Array.isArray(parent)) parent[FIELD_NAMES[Math.floor(rand() * FIELD_NAMES.length)]!] = rand() < 0.5 ? odd() : rand() * 2 ** 32;
    else (parent as Record<string | number, Json>)[key] = odd();
  }
  return copy;
}

/** The manifests (without their checksums) of a full and an incremental backup of a generated deployment with `smallFiles` small files and a symlink. */
async function writtenManifests(t: { after(fn: () => Promise<void>): void }, seed: number, smallFiles: number): Promise<Json[]> {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const deployment = path.join(work, 'deployment');
  await generateDeployment(deployment, { seed, shards: 2, shardBytes: 64 * 1024, onnxBytes: 16 * 1024, smallFiles });
  await fsp.symlink('models', path.join(deployment, 'current'));
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  for (const type of ['full', 'incr']) {
    if (type === 'incr') await fsp.appendFile(path.join(deployment, 'added.txt'), 'new\n');
    const run = await lifeboat(['--repo', repo, 'backup', '--type', type, '--source', `deployment=${deployment}`]);
    assert.equal(run.code, 0, run.stderr);
  }
  const manifests: Json[] = [];
  for (const name of (await fsp.readdir(path.join(repo, 'points'))).sort()) {
    const { checksum: _checksum, ...body } = JSON.parse(await fsp.readFile(path.join(repo, 'points', name), 'utf8'));
    manifests.push(body);
  }
  return manifests;
}

test('the compiled manifest validator accepts and rejects exactly what the schema does, with the same output', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`manifest validator: seed ${seed} (replay with LIFEBOAT_TEST_SEED=${seed})`);
  const rand = prng(seed);
  const manifests = await writtenManifests(t, seed, 12);
  const compiled = manifestValidator();
  let accepted = 0;
  const trials = 1500;
  for (let i = 0; i < trials; i++) {
    const input = i < manifests.length ? manifests[i]! : mutate(manifests[Math.floor(rand() * manifests.length)]!, rand);
    const fast = compiled.safeParse(structuredClone(input));
    const plain = manifestSchema.safeParse(structuredClone(input));
    assert.equal(fast.success, plain.success, `trial ${i}: the compiled validator ${fast.success ? 'accepted' : 'rejected'} what the schema ${plain.success ? 'accepts' : 'rejects'}: ${JSON.stringify(input).slice(0, 400)}`);
    if (fast.success && plain.success) {
      assert.deepEqual(fast.data, plain.data, `trial ${i}`);
      accepted++;
    } else {
      assert.deepEqual(fast.error?.issues, plain.error?.issues, `trial ${i}`);
    }
  }
  // Both kinds of input were tried: real manifests pass, and most mutations do not.
  assert.ok(accepted >= manifests.length && accepted < trials / 2, `${accepted} of ${trials} accepted`);
});

/** A document as encodeDocument writes one, of `body` (compact JSON text, which may be anything): its checksum last, over the bytes before it. */
function documentOf(body: string): Buffer {
  const hash = createHash('sha256').update(body).digest('hex');
  return Buffer.from(body.endsWith('}') ? `${body.slice(0, -1)},"checksum":"sha256:${hash}"}\n` : `${body}\n`);
}

/** Changes to a document's text that the schema does not see: spaces, escapes, members named twice or out of place, bytes gone or changed. */
function mutateText(text: string, rand: () => number): string {
  const at = () => Math.floor(rand() * text.length);
  const roll = rand();
  if (roll < 0.15) {
    const i = at();
    return text.slice(0, i) + [' ', '\n', '\t', '\r', '  \n '][Math.floor(rand() * 5)]! + text.slice(i);
  }
  if (roll < 0.3) {
    const i = at();
    return text.slice(0, i) + '{}[],:"\\ 0a-.eE\u00e9'[Math.floor(rand() * 17)]! + text.slice(i + 1);
  }
  if (roll < 0.4) {
    const i = at();
    return text.slice(0, i) + text.slice(i + 1);
  }
  if (roll < 0.55) {
    // A member again, last (JSON.parse keeps it) or first.
    const member = ['"entries":[]', '"id":"20260101-000000-000F"', '"checksum":"x"', '"__proto__":{}', '"entries":{}', '"format":2', '"extra":[[[]]]'][Math.floor(rand() * 7)]!;
    return rand() < 0.5 ? `${text.slice(0, -1)},${member}}` : `{${member},${text.slice(1)}`;
  }
  if (roll < 0.7) {
    // A name written with an escape means the same name.
    const name = ['entries', 'source', 'path', 'volumes', 'ref', 'sha256'][Math.floor(rand() * 6)]!;
    return text.replace(`"${name}"`, `"\\u00${name.charCodeAt(0).toString(16)}${name.slice(1)}"`);
  }
  if (roll < 0.8) {
    // Spaces around every separator, as an indented document has.
    return text.replace(/([,:[{])"/g, (_, c: string) => `${c} \n"`);
  }
  if (roll < 0.9) return text.slice(0, at());
  // An element of the entries array that is not an object, or an array in its place.
  return text.replace('"entries":[', ['"entries":[1,', '"entries":[[],', '"entries":[null,', '"entries":[{},', '"entries":["x",'][Math.floor(rand() * 5)]!);
}

test('reading a manifest in slices accepts and rejects exactly what JSON.parse and the schema do, with the same result', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`manifest slices: seed ${seed} (replay with LIFEBOAT_TEST_SEED=${seed})`);
  const rand = prng(seed);
  // More files than a slice holds (256 entries), so that entries are read across slices.
  const manifests = await writtenManifests(t, seed, 300 + Math.floor(rand() * 500));
  const slow = (data: Buffer) => {
    try {
      return { manifest: decodeDocument(data, manifestValidator(), 'manifest') };
    } catch (err) {
      return { error: (err as Error).message };
    }
  };
  let sliced = 0;
  let accepted = 0;
  const trials = 400;
  for (let i = 0; i < trials; i++) {
    const base = manifests[Math.floor(rand() * manifests.length)]!;
    const kind = i < manifests.length ? 'as written' : rand() < 0.4 ? 'values changed' : 'text changed';
    const body = i < manifests.length ? manifests[i]! : kind === 'values changed' ? mutate(base, rand) : base;
    let text = JSON.stringify(body);
    if (kind === 'text changed') for (let n = 1 + Math.floor(rand() * 2); n > 0; n--) text = mutateText(text, rand);
    // Most documents carry their checksum as written; some are damaged after it was taken.
    const data = kind === 'values changed' && rand() < 0.1 ? Buffer.from(`${text}\n`) : documentOf(text);
    const expected = slow(data);
    const inSlices = readInSlices(data);
    const what = `trial ${i} (${kind}): ${text.slice(0, 300)}`;
    if (inSlices) {
      sliced++;
      assert.ok(expected.manifest, `${what}: read in slices, but refused whole: ${expected.error}`);
      assert.deepStrictEqual(inSlices, expected.manifest, what);
    }
    // What a reader gets: the same manifest, or an error in the same words.
    let got: { manifest?: unknown; error?: string };
    try {
      got = { manifest: decodeManifest(data, 'manifest') };
    } catch (err) {
      got = { error: (err as Error).message };
    }
    assert.deepStrictEqual(got, expected, what);
    // Read for the rest of it, the entries checked but not kept: refused alike, the same without its entries.
    let withoutEntries: { manifest?: unknown; error?: string };
    try {
      withoutEntries = { manifest: decodeManifest(data, 'manifest', { entries: false }) };
    } catch (err) {
      withoutEntries = { error: (err as Error).message };
    }
    assert.deepStrictEqual(withoutEntries, expected.manifest ? { manifest: { ...expected.manifest, entries: [] } } : expected, what);
    if (expected.manifest) accepted++;
    // A manifest as lifeboat writes it is read in slices, not whole.
    if (kind === 'as written') assert.ok(inSlices, `${what}: not read in slices`);
  }
  t.diagnostic(`${accepted} of ${trials} accepted, ${sliced} read in slices`);
  assert.ok(accepted > manifests.length && accepted < trials - 50, `${accepted} of ${trials} accepted`);
});
