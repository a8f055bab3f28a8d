import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { BIN, lifeboat } from './helpers/cli.js';
import { tempDir } from './helpers/tree.js';
import { encodeDocument } from '../src/format/document.js';
import { Repository } from '../src/core/repository.js';
import { LocalStorage } from '../src/storage/local.js';
import { MANIFEST_FORMAT, summarize, type Manifest } from '../src/format/manifest.js';

const POINTS = 60;
const ENTRIES = 5000;
/** Far less than the manifests take together (about 5 MiB each once parsed), and twice what one at a time needs. */
const HEAP_MIB = 48;

/** Runs the installed program with a small heap, as a long-lived repository's manifests would outgrow any heap. */
async function withSmallHeap(args: string[], heapMib = HEAP_MIB): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [`--max-old-space-size=${heapMib}`, BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout.on('data', (c: Buffer) => out.push(c));
  child.stderr.on('data', (c: Buffer) => err.push(c));
  const code = await new Promise<number>((resolve) => child.on('close', (c, signal) => resolve(c ?? (signal ? 128 : 1))));
  return { code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
}

type TestContext = { after(fn: () => Promise<void>): void };

/** A work directory removed after the test, with an empty repository in it. */
async function newRepository(t: TestContext): Promise<{ work: string; repo: string }> {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  return { work, repo };
}

/**
 * A repository of POINTS points of ENTRIES entries each, a day apart: a year of daily fulls, or (`chain`) a full and the
 * incrementals taken on it night after night. Directories only, so that the points need no volumes. Returns their ids.
 */
async function writePoints(t: TestContext, shape: 'fulls' | 'chain', points = POINTS, entriesEach = ENTRIES): Promise<{ repo: string; ids: string[] }> {
  const { repo } = await newRepository(t);
  await fsp.mkdir(path.join(repo, 'points'));
  await fsp.mkdir(path.join(repo, 'summaries'));
  const ids: string[] = [];
  for (let i = 0; i < points; i++) {
    const at = new Date(Date.UTC(2026, 0, 1, 3) + i * 86_400_000);
    const type = shape === 'chain' && i > 0 ? 'incr' : 'full';
    const id = `${at.toISOString().slice(0, 10).replaceAll('-', '')}-030000-000${type === 'full' ? 'F' : 'I'}`;
    const entries = Array.from({ length: entriesEach }, (_, k) => ({ source: 'models', path: `layer-${k}/step-${i}`, type: 'dir' as const, mode: 0o755, mtimeNs: '1767236400000000000', size: 0 }));
    const manifest: Manifest = {
      format: MANIFEST_FORMAT, id, type, parent: type === 'full' ? null : ids.at(-1)!, full: type === 'full' ? id : ids[0]!, startedAt: at.toISOString(), completedAt: at.toISOString(), host: 'test', tags: {},
      sources: [{ name: 'models', kind: 'files', path: '/srv/models' }], volumes: [], entries,
      stats: { files: 0, bytes: 0, added: 0, changed: 0, removed: 0, storedBytes: 0 }, warnings: [],
    };
    await fsp.writeFile(path.join(repo, 'points', `${id}.json`), encodeDocument(manifest));
    await fsp.writeFile(path.join(repo, 'summaries', `${id}.json`), encodeDocument(summarize(manifest)));
    ids.push(id);
  }
  return { repo, ids };
}

test('list, time selectors, prune and verify hold one manifest at a time, not every point\'s', async (t) => {
  const { repo, ids } = await writePoints(t, 'fulls');

  const listed = await withSmallHeap(['--repo', repo, '--json', 'list']);
  assert.equal(listed.code, 0, listed.stderr);
  assert.deepEqual(JSON.parse(listed.stdout).map((p: { id: string }) => p.id), ids);
  const shown = await withSmallHeap(['--repo', repo, '--json', 'show', '2026-01-15T12:00:00Z']);
  assert.equal(shown.code, 0, shown.stderr);
  assert.equal(JSON.parse(shown.stdout).id, ids[14]);
  const pruned = await withSmallHeap(['--repo', repo, '--json', 'prune', '--keep-full', '50', '--dry-run']);
  assert.equal(pruned.code, 0, pruned.stderr);
  assert.equal(JSON.parse(pruned.stdout).remove.length, 10);

  // Without summaries, as in a repository written before them, each manifest is read and dropped.
  await fsp.rm(path.join(repo, 'summaries'), { recursive: true });
  for (const args of [['list'], ['verify']]) {
    const r = await withSmallHeap(['--repo', repo, '--json', ...args]);
    assert.equal(r.code, 0, `${args[0]}: ${r.stderr.slice(-2000)}`);
    if (args[0] === 'verify') assert.equal(JSON.parse(r.stdout).backups, POINTS);
  }
});

test('verify of the tip of a long chain of incrementals holds one manifest at a time, not the chain\'s', async (t) => {
  const { repo } = await writePoints(t, 'chain');
  const r = await withSmallHeap(['--repo', repo, '--json', 'verify', 'latest']);
  assert.equal(r.code, 0, r.stderr.slice(-2000));
  assert.equal(JSON.parse(r.stdout).backups, POINTS);
});

test('verify reads fewer manifests ahead as they grow: a chain of points of 40,000 entries each checks in a heap that eight read ahead overfill', async (t) => {
  // Eight were read ahead whatever their size: a chain of points of 100,000 files each took a verify to a gigabyte.
  const { repo } = await writePoints(t, 'chain', 12, 40_000);
  const r = await withSmallHeap(['--repo', repo, '--json', 'verify', 'latest'], 56);
  assert.equal(r.code, 0, r.stderr.slice(-2000));
  assert.equal(JSON.parse(r.stdout).backups, 12);
});

test('restore of the tip of a long chain reads the manifests its files are stored in one at a time, not all together', async (t) => {
  const { work, repo } = await newRepository(t);
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  // A config rewritten each night: the tip's files are stored in every point of the chain.
  const HOLDERS = 30;
  const ids: string[] = [];
  for (let i = 0; i < HOLDERS; i++) {
    await fsp.writeFile(path.join(src, `night-${i}.json`), `{"night":${i}}`);
    const r = await lifeboat(['--repo', repo, '--json', 'backup', '--source', `models=${src}`, '--type', i === 0 ? 'full' : 'incr']);
    assert.equal(r.code, 0, r.stderr);
    ids.push(r.json().id);
  }
  // Each earlier point lists every file of its snapshot: thousands of entries, as a model tree's points do.
  for (const id of ids.slice(0, -1)) {
    const file = path.join(repo, 'points', `${id}.json`);
    const manifest = JSON.parse(await fsp.readFile(file, 'utf8')) as Manifest;
    for (let k = 0; k < 4 * ENTRIES; k++) manifest.entries.push({ source: 'models', path: `layer-${k}/shard-of-${id}`, type: 'dir', mode: 0o755, mtimeNs: '1767236400000000000', size: 0 });
    await fsp.writeFile(file, encodeDocument(manifest));
    await fsp.writeFile(path.join(repo, 'summaries', `${id}.json`), encodeDocument(summarize(manifest)));
  }
  const target = path.join(work, 'restored');
  const r = await withSmallHeap(['--repo', repo, 'restore', 'latest', '--target', target]);
  assert.equal(r.code, 0, r.stderr.slice(-2000));
  assert.equal((await fsp.readdir(path.join(target, 'models'))).length, HOLDERS);
});

/** An empty repository of 1 MiB volumes, and an empty directory `models` beside it to back up. */
async function smallVolumesRepository(t: TestContext): Promise<{ repo: string; src: string }> {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const repo = path.join(work, 'repo');
  await Repository.init(new LocalStorage(repo), { volumeSize: 1 << 20 });
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  return { repo, src };
}

test('verify --read-data forgets the manifests of the points whose volumes it read once they hold more entries than its bound, whatever their number', async (t) => {
  // Five were remembered whatever their size: points of 100,000 files each took a verify --read-data to 400 MB.
  const { repo, src } = await smallVolumesRepository(t);
  const ids: string[] = [];
  for (let i = 0; i < 6; i++) {
    // Each point stores three files of its own, in volumes of its own, which --read-data reads with the point's
    // manifest: the reads running at once are mostly of one point's volumes, and need no other manifest.
    for (let f = 0; f < 3; f++) await fsp.writeFile(path.join(src, `shard-${f}.bin`), randomBytes(700 << 10));
    const r = await lifeboat(['--repo', repo, '--json', 'backup', '--source', `models=${src}`, '--type', i === 0 ? 'full' : 'incr']);
    assert.equal(r.code, 0, r.stderr);
    ids.push(r.json().id);
  }
  // Each point lists 60,000 entries, as a point of a large model tree does: more than the bound for any two of them.
  for (const id of ids) {
    const file = path.join(repo, 'points', `${id}.json`);
    const manifest = JSON.parse(await fsp.readFile(file, 'utf8')) as Manifest;
    for (let k = 0; k < 60_000; k++) manifest.entries.push({ source: 'models', path: `layer-${k}/shard-of-${id}`, type: 'dir', mode: 0o755, mtimeNs: '1767236400000000000', size: 0 });
    await fsp.writeFile(file, encodeDocument(manifest));
    await fsp.writeFile(path.join(repo, 'summaries', `${id}.json`), encodeDocument(summarize(manifest)));
  }
  const r = await withSmallHeap(['--repo', repo, '--json', 'verify', '--read-data'], 56);
  assert.equal(r.code, 0, r.stderr.slice(-2000));
  const volumes = await fsp.readdir(path.join(repo, 'data'), { recursive: true });
  assert.equal(JSON.parse(r.stdout).volumes.read, volumes.filter((v) => v.endsWith('.tar')).length);
});

test('a manifest of 100,000 files is read in a 64 MiB heap, which its text, the tree parsed from it and its checked copy together overfill; beside it, the volumes of another are read without its entries', async (t) => {
  const { repo, src } = await smallVolumesRepository(t);
  await fsp.writeFile(path.join(src, 'config.json'), '{}\n');
  const r = await lifeboat(['--repo', repo, '--json', 'backup', '--source', `models=${src}`, '--type', 'full']);
  assert.equal(r.code, 0, r.stderr);
  const id = r.json().id as string;
  const file = path.join(repo, 'points', `${id}.json`);
  const manifest = JSON.parse(await fsp.readFile(file, 'utf8')) as Manifest;
  const files = 100_000;
  for (let k = 0; k < files; k++) {
    manifest.entries.push({
      source: 'models',
      path: `eval/2026-10/run-${k}.json`,
      type: 'file',
      mode: 0o644,
      mtimeNs: `17487360${String(k).padStart(11, '0')}`,
      size: 628,
      uid: 0,
      gid: 0,
      ino: String(2_000_000 + k),
      ctimeNs: `17955972${String(k).padStart(11, '0')}`,
      sha256: createHash('sha256').update(String(k)).digest('hex'),
      ref: { point: id, volume: 0, entry: k + 1, offset: (k + 1) * 1536 },
    });
  }
  await fsp.writeFile(file, encodeDocument(manifest));
  // Another point as large, whose volumes alone a restore of the first needs when its files are stored there.
  const other = id.replace(/^(\d{8}-\d{6}-)\d{3}/, '$1999');
  await fsp.writeFile(path.join(repo, 'points', `${other}.json`), encodeDocument({ ...manifest, id: other }));
  const reader = [
    `const { Repository } = await import(${JSON.stringify(pathToFileURL(path.resolve(import.meta.dirname, '../src/core/repository.js')).href)});`,
    `const { LocalStorage } = await import(${JSON.stringify(pathToFileURL(path.resolve(import.meta.dirname, '../src/storage/local.js')).href)});`,
    `const repo = await Repository.open(new LocalStorage(${JSON.stringify(repo)}));`,
    `const manifest = await repo.loadManifest(${JSON.stringify(id)});`,
    `console.log(manifest.entries.length);`,
    `if (process.argv[1] === 'other') console.log(JSON.stringify(await repo.pointVolumes(${JSON.stringify(other)})));`,
  ].join('\n');
  const read = (heapMib: number, also?: 'other') =>
    spawnSync(process.execPath, [`--max-old-space-size=${heapMib}`, '--input-type=module', '-e', reader, ...(also ? [also] : [])], { encoding: 'utf8' });
  let child = read(64);
  assert.equal(child.status, 0, child.stderr.slice(-2000));
  assert.equal(child.stdout.trim(), String(manifest.entries.length));
  // Both manifests' entries together would overfill the heap: those of the other are checked, not kept.
  child = read(80, 'other');
  assert.equal(child.status, 0, child.stderr.slice(-2000));
  assert.deepEqual(child.stdout.trim().split('\n'), [String(manifest.entries.length), JSON.stringify(manifest.volumes)]);
});
