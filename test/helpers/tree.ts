import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { seededRandom } from './data.js';

/** A small, fast, seedable PRNG (mulberry32), so failures replay from the printed seed. */
export const prng = seededRandom;

export function seedFromEnv(): number {
  const fromEnv = Number(process.env.LIFEBOAT_TEST_SEED);
  return Number.isFinite(fromEnv) && fromEnv > 0 ? fromEnv : Math.floor(Math.random() * 2 ** 31) + 1;
}

const madeHere = new Set<string>();

/**
 * A new directory under the system's temporary one. Whatever a test did not
 * remove is removed when the test file's process ends, unless a test failed:
 * then it stays to be looked at.
 */
export async function tempDir(prefix = 'lifeboat-test-'): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), prefix));
  if (madeHere.size === 0) process.once('exit', removeIfAllPassed);
  madeHere.add(dir);
  return dir;
}

function removeIfAllPassed(code: number): void {
  if (code !== 0) return;
  for (const dir of madeHere) {
    try {
      fs.rmSync(dir, { recursive: true, force: true });
    } catch {
      // A directory a test made unreadable, or still mounted: left behind.
    }
  }
}

/** Writes `size` pseudo-random bytes, a chunk at a time. */
export async function writeRandomFile(file: string, size: number, rand: () => number): Promise<void> {
  const fh = await fsp.open(file, 'w');
  try {
    let left = size;
    const chunk = Buffer.alloc(Math.min(size, 1 << 20));
    const words = new Uint32Array(chunk.buffer, chunk.byteOffset, Math.floor(chunk.length / 4));
    while (left > 0) {
      const n = Math.min(left, chunk.length);
      for (let i = 0; i < words.length; i++) words[i] = (rand() * 4294967296) >>> 0;
      for (let i = words.length * 4; i < chunk.length; i++) chunk[i] = (rand() * 256) | 0;
      await fh.write(chunk, 0, n);
      left -= n;
    }
  } finally {
    await fh.close();
  }
}

export interface SnapshotEntry {
  type: 'file' | 'dir' | 'symlink';
  mode: number;
  size: number;
  sha256?: string;
  target?: string;
  mtimeMs: number;
}

/** Everything a restore must reproduce about a tree, keyed by relative path. */
export async function snapshotTree(root: string): Promise<Map<string, SnapshotEntry>> {
  const out = new Map<string, SnapshotEntry>();
  const walk = async (dir: string, rel: string) => {
    for (const name of (await fsp.readdir(dir)).sort()) {
      const abs = path.join(dir, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = await fsp.lstat(abs);
      if (st.isSymbolicLink()) out.set(r, { type: 'symlink', mode: 0, size: 0, target: await fsp.readlink(abs), mtimeMs: 0 });
      else if (st.isDirectory()) {
        out.set(r, { type: 'dir', mode: st.mode & 0o7777, size: 0, mtimeMs: Math.floor(st.mtimeMs) });
        await walk(abs, r);
      } else {
        const hash = createHash('sha256');
        for await (const c of fs.createReadStream(abs)) hash.update(c as Buffer);
        out.set(r, { type: 'file', mode: st.mode & 0o7777, size: st.size, sha256: hash.digest('hex'), mtimeMs: Math.floor(st.mtimeMs) });
      }
    }
  };
  await walk(root, '');
  return out;
}

/** Describes the first difference between two snapshots, or undefined when equal. */
export function compareSnapshots(expected: Map<string, SnapshotEntry>, actual: Map<string, SnapshotEntry>): string | undefined {
  for (const [p, e] of expected) {
    const a = actual.get(p);
    if (!a) return `missing ${p}`;
    if (a.type !== e.type) return `${p}: type ${a.type}, expected ${e.type}`;
    if (e.type === 'file' && (a.sha256 !== e.sha256 || a.size !== e.size)) return `${p}: content differs`;
    if (e.type === 'symlink' && a.target !== e.target) return `${p}: link target ${a.target}, expected ${e.target}`;
    if (e.type !== 'symlink' && a.mode !== e.mode) return `${p}: mode ${a.mode.toString(8)}, expected ${e.mode.toString(8)}`;
    if (e.type === 'file' && Math.abs(a.mtimeMs - e.mtimeMs) > 1) return `${p}: mtime ${a.mtimeMs}, expected ${e.mtimeMs}`;
  }
  for (const p of actual.keys()) if (!expected.has(p)) return `unexpected ${p}`;
  return undefined;
}

export const MODES = [0o644, 0o600, 0o755, 0o640, 0o444];

export function pick<T>(rand: () => number, items: readonly T[]): T {
  return items[Math.floor(rand() * items.length)]!;
}

/** Regular files under a directory, sorted. */
export async function listFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for (const e of await fsp.readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) out.push(p);
    }
  };
  await walk(root);
  return out.sort();
}

export interface MutateOptions {
  /** How many random operations. */
  operations: number;
  /** Size of an added file. */
  sizeOf: (rand: () => number) => number;
  /** Files left alone. */
  skip?: (file: string) => boolean;
}

/** Edits, appends, truncations, deletions, additions, renames and chmods; returns what it did. */
export async function mutateTree(root: string, rand: () => number, round: number, options: MutateOptions): Promise<string[]> {
  const did: string[] = [];
  for (let i = 0; i < options.operations; i++) {
    const files = (await listFiles(root)).filter((f) => !options.skip?.(f));
    if (files.length === 0) break;
    const f = pick(rand, files);
    const op = pick(rand, ['edit', 'append', 'truncate', 'delete', 'add', 'rename', 'chmod'] as const);
    switch (op) {
      case 'edit': {
        const size = (await fsp.stat(f)).size;
        if (size === 0) break;
        const fh = await fsp.open(f, 'r+');
        await fh.write(Buffer.from([Math.floor(rand() * 256), 1, 2, 3]), 0, Math.min(4, size), Math.floor(rand() * size));
        await fh.close();
        break;
      }
      case 'append':
        await fsp.appendFile(f, `appended ${round}-${i}`);
        break;
      case 'truncate':
        await fsp.truncate(f, Math.floor((await fsp.stat(f)).size / 2));
        break;
      case 'delete':
        await fsp.rm(f);
        break;
      case 'add':
        await writeRandomFile(path.join(path.dirname(f), `added-${round}-${i}`), options.sizeOf(rand), rand);
        break;
      case 'rename':
        await fsp.rename(f, path.join(path.dirname(f), `renamed-${round}-${i}`));
        break;
      case 'chmod':
        await fsp.chmod(f, pick(rand, MODES));
        break;
    }
    did.push(`${op} ${path.relative(root, f)}`);
  }
  return did;
}
