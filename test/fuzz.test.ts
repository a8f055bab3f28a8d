/**
 * Fuzzing with real repository objects: seeded random mutations of manifests,
 * tar volumes and encrypted objects (bit flips, overwritten runs, truncation,
 * extension, inserted and deleted slices, hostile values in re-checksummed
 * manifests, tar headers edited with a valid header checksum) are fed to
 * `verify --read-data` and `restore`. Only exit 0 or 3 is acceptable, within a
 * time limit, and nothing may appear outside the restore target.
 * LIFEBOAT_TEST_SEED replays a run; LIFEBOAT_FUZZ_RUNS sets how many mutations.
 */
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { after, before, it } from 'node:test';
import { encodeDocument } from '../src/format/document.js';
import { lifeboat, type CliRun } from './helpers/cli.js';
import { prng, seedFromEnv, tempDir, writeRandomFile } from './helpers/tree.js';

const PASSWORD = 'fuzz password';
const RUNS = Number(process.env.LIFEBOAT_FUZZ_RUNS) > 0 ? Number(process.env.LIFEBOAT_FUZZ_RUNS) : 1500;
const COMMAND_LIMIT_MS = 20_000;

interface Repo {
  name: string;
  dir: string;
  env: NodeJS.ProcessEnv;
  encrypted: boolean;
  incr: string;
  objects: string[];
}

let work: string;
let sandbox: string;
let seed: number;
const repos: Repo[] = [];

before(async () => {
  seed = seedFromEnv();
  console.log(`# fuzz: seed ${seed}, ${RUNS} mutations (replay with LIFEBOAT_TEST_SEED=${seed})`);
  work = await tempDir('lifeboat-fuzz-');
  sandbox = path.join(work, 'sandbox');
  await fsp.mkdir(sandbox);
  const src = path.join(work, 'src', 'models');
  await fsp.mkdir(path.join(src, 'tok'), { recursive: true });
  const rand = prng(seed);
  await fsp.writeFile(path.join(src, 'config.json'), JSON.stringify({ vocab_size: 32000, hidden_size: 64, architectures: ['Llama'] }));
  await fsp.writeFile(path.join(src, 'tok', 'tokenizer.json'), JSON.stringify({ model: { vocab: { a: 0, b: 1 } } }));
  await fsp.symlink('config.json', path.join(src, 'link.json'));
  await writeRandomFile(path.join(src, 'weights.bin'), 150_000, rand);
  await writeRandomFile(path.join(src, 'small.bin'), 3000, rand);
  for (const encrypted of [false, true]) {
    const name = encrypted ? 'encrypted' : 'plain';
    const dir = path.join(work, name);
    const env: NodeJS.ProcessEnv = encrypted ? { LIFEBOAT_PASSWORD: PASSWORD } : {};
    const init = await lifeboat(['--repo', dir, 'init', ...(encrypted ? ['--encryption', 'aes-256-gcm', '--kdf-log-n', '10'] : [])], { env });
    assert.equal(init.code, 0, init.stderr);
    const full = await lifeboat(['--repo', dir, '--json', 'backup', src, '--type', 'full'], { env });
    assert.equal(full.code, 0, full.stderr);
    await writeRandomFile(path.join(src, 'small.bin'), 5000, rand);
    await fsp.writeFile(path.join(src, 'tok', 'added.txt'), 'added');
    const incr = await lifeboat(['--repo', dir, '--json', 'backup', src, '--type', 'incr'], { env });
    assert.equal(incr.code, 0, incr.stderr);
    await fsp.rm(path.join(src, 'tok', 'added.txt'));
    const objects = (await walk(dir)).filter((f) => f.startsWith('points/') || f.startsWith('data/'));
    repos.push({ name, dir, env, encrypted, incr: incr.json().id, objects });
  }
});

after(async () => {
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

async function walk(root: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(path.join(root, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await walk(root, r)));
    else out.push(r);
  }
  return out.sort();
}

const HOSTILE: unknown[] = [
  -1, 0, 1, 2 ** 53, 1e300, -0.5, '', '..', '../../escape', '/etc/passwd', 'a/../../b', 'x'.repeat(5000), null, true, [], {},
  { point: 'x' }, '20261122-000000-000F', 'sha256:00', '0'.repeat(64),
];

/** A hostile value somewhere in a parsed manifest. */
function mutateJson(doc: any, rand: () => number): string {
  const pathTaken: string[] = [];
  let node = doc;
  for (let depth = 0; depth < 6; depth++) {
    const keys = Object.keys(node);
    if (keys.length === 0) break;
    const k = keys[Math.floor(rand() * keys.length)]!;
    pathTaken.push(k);
    const child = node[k];
    if (child !== null && typeof child === 'object' && rand() < 0.75) {
      node = child;
      continue;
    }
    const choice = rand();
    if (choice < 0.1) delete node[k];
    else node[k] = structuredClone(HOSTILE[Math.floor(rand() * HOSTILE.length)]);
    break;
  }
  return pathTaken.join('.');
}

/** Byte offsets of tar header blocks (ustar magic at 257). */
function tarHeaders(b: Buffer): number[] {
  const out: number[] = [];
  for (let at = 0; at + 512 <= b.length; at += 512) if (b.toString('latin1', at + 257, at + 262) === 'ustar') out.push(at);
  return out;
}

function fixTarChecksum(b: Buffer, at: number): void {
  b.fill(0x20, at + 148, at + 156);
  let sum = 0;
  for (let i = at; i < at + 512; i++) sum += b[i]!;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, at + 148, 'latin1');
}

function mutateBytes(original: Buffer, rand: () => number): { data: Buffer; how: string } {
  const b = Buffer.from(original);
  const n = b.length;
  const at = () => Math.floor(rand() * Math.max(1, n));
  const kind = Math.floor(rand() * 6);
  switch (kind) {
    case 0: {
      const flips = 1 + Math.floor(rand() * 8);
      for (let i = 0; i < flips; i++) b[at()]! ^= 1 << Math.floor(rand() * 8);
      return { data: b, how: `${flips} bit flip(s)` };
    }
    case 1: {
      const start = at();
      const len = 1 + Math.floor(rand() * 600);
      for (let i = start; i < Math.min(n, start + len); i++) b[i] = Math.floor(rand() * 256);
      return { data: b, how: `random run at ${start}+${len}` };
    }
    case 2: {
      const len = at();
      return { data: b.subarray(0, len), how: `truncated to ${len}` };
    }
    case 3: {
      const extra = Buffer.alloc(1 + Math.floor(rand() * 2000), Math.floor(rand() * 256));
      return { data: Buffer.concat([b, extra]), how: `extended by ${extra.length}` };
    }
    case 4: {
      const start = at();
      const len = Math.floor(rand() * 4000);
      const dest = at();
      const slice = b.subarray(start, start + len);
      return { data: Buffer.concat([b.subarray(0, dest), slice, b.subarray(dest)]), how: `inserted ${slice.length} bytes from ${start} at ${dest}` };
    }
    default: {
      const start = at();
      const len = 1 + Math.floor(rand() * 4000);
      return { data: Buffer.concat([b.subarray(0, start), b.subarray(start + len)]), how: `deleted ${len} bytes at ${start}` };
    }
  }
}

function mutate(repo: Repo, key: string, original: Buffer, rand: () => number): { data: Buffer; how: string } {
  const structured = rand() < 0.4;
  if (!repo.encrypted && structured && key.startsWith('points/')) {
    const doc = JSON.parse(original.toString('utf8'));
    delete doc.checksum;
    const edits = 1 + Math.floor(rand() * 3);
    const where: string[] = [];
    for (let i = 0; i < edits; i++) where.push(mutateJson(doc, rand));
    return { data: encodeDocument(doc), how: `hostile values at ${where.join(', ')} (checksum recomputed)` };
  }
  if (!repo.encrypted && structured && key.startsWith('data/')) {
    const b = Buffer.from(original);
    const headers = tarHeaders(b);
    if (headers.length > 0) {
      const h = headers[Math.floor(rand() * headers.length)]!;
      const edits = 1 + Math.floor(rand() * 6);
      for (let i = 0; i < edits; i++) {
        // name, mode, size, type flag, link name, prefix: the fields a reader acts on.
        const field = [
          [0, 100],
          [100, 8],
          [124, 12],
          [156, 1],
          [157, 100],
          [345, 155],
        ][Math.floor(rand() * 6)]!;
        const pos = h + field[0]! + Math.floor(rand() * field[1]!);
        b[pos] = rand() < 0.5 ? Math.floor(rand() * 256) : '0123456789./xL5'.charCodeAt(Math.floor(rand() * 15));
      }
      fixTarChecksum(b, h);
      return { data: b, how: `${edits} edit(s) in the tar header at ${h} (checksum recomputed)` };
    }
  }
  return mutateBytes(original, rand);
}

async function bounded(run: Promise<CliRun>, what: string): Promise<CliRun> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${COMMAND_LIMIT_MS} ms`)), COMMAND_LIMIT_MS);
  });
  try {
    return await Promise.race([run, limit]);
  } finally {
    clearTimeout(timer);
  }
}

async function readSummaries(dir: string): Promise<Map<string, Buffer>> {
  const names = await fsp.readdir(path.join(dir, 'summaries'));
  return new Map(await Promise.all(names.map(async (n) => [n, await fsp.readFile(path.join(dir, 'summaries', n))] as const)));
}

it('random mutations of manifests, tar volumes and encrypted objects: verify and restore exit 0 or 3, promptly, writing only the target', async () => {
  const rand = prng(seed ^ 0x5eed);
  const workEntries = (await fsp.readdir(work)).sort();
  const codes = new Map<string, number>();
  // verify writes a summary again from a manifest whose checksum holds (as a tampered one's may, recomputed):
  // put back, with the object, what each run's verify wrote there, so that every run starts from the same repositories.
  const summaries = new Map<string, Map<string, Buffer>>();
  for (const r of repos) summaries.set(r.dir, await readSummaries(r.dir));
  const started = Date.now();
  for (let run = 0; run < RUNS; run++) {
    const repo = repos[Math.floor(rand() * repos.length)]!;
    const key = repo.objects[Math.floor(rand() * repo.objects.length)]!;
    const file = path.join(repo.dir, ...key.split('/'));
    const original = await fsp.readFile(file);
    const { data, how } = mutate(repo, key, original, rand);
    const label = `run ${run} (seed ${seed}): ${repo.name} ${key}: ${how}`;
    await fsp.writeFile(file, data);
    try {
      const target = path.join(sandbox, `t${run}`);
      const verify = await bounded(lifeboat(['--repo', repo.dir, 'verify', '--read-data'], { env: repo.env }), `${label}: verify`);
      assert.ok(verify.code === 0 || verify.code === 3, `${label}: verify exited ${verify.code}: ${verify.stderr}`);
      const restore = await bounded(lifeboat(['--repo', repo.dir, 'restore', repo.incr, '--target', target], { env: repo.env }), `${label}: restore`);
      assert.ok(restore.code === 0 || restore.code === 3, `${label}: restore exited ${restore.code}: ${restore.stderr}`);
      assert.doesNotMatch(restore.stderr + verify.stderr, /unexpected error/, label);
      const left = await fsp.readdir(sandbox);
      assert.deepEqual(left, restore.code === 0 ? [`t${run}`] : [], `${label}: the sandbox holds ${left.join(', ')}`);
      assert.deepEqual((await fsp.readdir(work)).sort(), workEntries, `${label}: something was written beside the sandbox`);
      for (const r of [verify, restore]) codes.set(String(r.code), (codes.get(String(r.code)) ?? 0) + 1);
      if (restore.code === 0) await fsp.rm(target, { recursive: true, force: true });
    } finally {
      await fsp.writeFile(file, original);
      for (const [name, data] of summaries.get(repo.dir)!) {
        const at = path.join(repo.dir, 'summaries', name);
        if (!data.equals(await fsp.readFile(at).catch(() => Buffer.alloc(0)))) await fsp.writeFile(at, data);
      }
    }
    if (run % 200 === 199) {
      // What verify and restore record (ledger, journal) grows with every run; it is not under test here.
      for (const r of repos) for (const d of ['journal', 'ledger']) await fsp.rm(path.join(r.dir, d), { recursive: true, force: true });
    }
  }
  console.log(`# fuzz: ${RUNS} mutations in ${Date.now() - started} ms; exit codes ${JSON.stringify(Object.fromEntries(codes))}`);
  // The untouched repositories still verify clean.
  for (const r of repos) {
    const v = await lifeboat(["--repo", r.dir, "verify", "--read-data"], { env: r.env });
    assert.equal(v.code, 0, `${r.name}: ${v.stdout} ${v.stderr}`);
  }
});
