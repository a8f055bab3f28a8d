import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { pick, prng, seedFromEnv, tempDir, writeRandomFile } from './helpers/tree.js';

const asRoot = process.geteuid?.() === 0;

/** What a restore must reproduce of a tree, owners and exact microseconds included, keyed by relative path. */
async function strictSnapshot(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (dir: string, rel: string) => {
    for (const name of (await fsp.readdir(dir)).sort()) {
      const abs = path.join(dir, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = await fsp.lstat(abs, { bigint: true });
      const owner = `${st.uid}:${st.gid}`;
      if (st.isSymbolicLink()) out.set(r, `link ${await fsp.readlink(abs)} ${owner}`);
      else if (st.isDirectory()) {
        out.set(r, `dir ${(st.mode & 0o7777n).toString(8)} ${owner} ${st.mtimeNs / 1000n}`);
        await walk(abs, r);
      } else if (st.isFile()) {
        const data = await fsp.readFile(abs);
        out.set(r, `file ${(st.mode & 0o7777n).toString(8)} ${owner} ${st.mtimeNs / 1000n} ${data.toString('base64')}`);
      } else out.set(r, 'special');
    }
  };
  await walk(root, '');
  return out;
}

function difference(expected: Map<string, string>, actual: Map<string, string>): string | undefined {
  for (const [p, e] of expected) if (actual.get(p) !== e) return `${p}: ${(actual.get(p) ?? 'missing').slice(0, 80)}, expected ${e.slice(0, 80)}`;
  for (const p of actual.keys()) if (!expected.has(p)) return `unexpected ${p}`;
  return undefined;
}

/** A tree of nested directories, files of a few sizes and modes, links, an empty directory. */
async function buildTree(root: string, rand: () => number): Promise<void> {
  const dirs = [root];
  for (let i = 0; i < 6; i++) {
    const d = path.join(pick(rand, dirs), `d${i}`);
    await fsp.mkdir(d);
    dirs.push(d);
  }
  await fsp.mkdir(path.join(root, 'empty'));
  for (let i = 0; i < 24; i++) {
    const f = path.join(pick(rand, dirs), `f${i}.bin`);
    await writeRandomFile(f, pick(rand, [0, 10, 3000, 70_000, 300_000]), rand);
    await fsp.chmod(f, pick(rand, [0o644, 0o600, 0o755, 0o444]));
    await fsp.utimes(f, 1.7e9 + Math.floor(rand() * 1e6), 1.7e9 + Math.floor(rand() * 1e6));
  }
  // Two files alike, which a live host may hold as one file under two names.
  await fsp.writeFile(path.join(dirs[1]!, 'twin-a'), 'twin\n', { mode: 0o644 });
  await fsp.writeFile(path.join(dirs[2]!, 'twin-b'), 'twin\n', { mode: 0o600 });
  await fsp.utimes(path.join(dirs[2]!, 'twin-b'), 1.6e9, 1.6e9);
  await fsp.symlink('f0.bin', path.join(root, 'link-to-f0'));
  await fsp.symlink('../nowhere', path.join(dirs[1]!, 'dangling'));
}

interface Entries {
  files: string[];
  dirs: string[];
  links: string[];
}

async function entriesOf(root: string): Promise<Entries> {
  const out: Entries = { files: [], dirs: [], links: [] };
  const walk = async (dir: string) => {
    for (const d of await fsp.readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, d.name);
      if (d.isSymbolicLink()) out.links.push(p);
      else if (d.isDirectory()) {
        out.dirs.push(p);
        await walk(p);
      } else if (d.isFile()) out.files.push(p);
    }
  };
  await walk(root);
  return out;
}

/** A socket bound at `where` and closed again, so that only its node stays, as one a crashed server leaves. */
async function leaveSocket(where: string): Promise<void> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(where, resolve));
  // Closing a listening Unix socket unlinks it; the node is kept under another name and put back.
  await fsp.link(where, `${where}.kept`);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await fsp.rename(`${where}.kept`, where);
}

/**
 * Makes the target differ from the point the way a live host does, and says which point files it touched
 * (their content, type or the path to them), which a --delta must rewrite, and what it put there the
 * point lacks, which it must remove.
 */
async function disturb(target: string, outside: string, rand: () => number, log: string[]): Promise<{ touched: Set<string> }> {
  const touched = new Set<string>();
  // A byte turned over twice is back as it was: the file would equal the point's again, and rightly be left alone.
  const edited = new Set<string>();
  const rel = (p: string) => path.relative(target, p);
  for (let i = 0; i < 14; i++) {
    const { files, dirs, links } = await entriesOf(target);
    const op = pick(rand, ['edit', 'append', 'truncate', 'chmod', 'chown', 'touch', 'file-to-dir', 'dir-to-file', 'file-to-link', 'dir-to-link-outside', 'relink', 'extra', 'extra-deep', 'read-only-dir', 'hard-link', 'hard-link-outside', 'fifo', 'socket', 'extra-fifo'] as const);
    const f = files.length ? pick(rand, files) : undefined;
    const d = dirs.length ? pick(rand, dirs) : undefined;
    if (!f || !d) break;
    switch (op) {
      case 'edit': {
        const size = (await fsp.stat(f)).size;
        if (size === 0) continue;
        // One byte turned over: the size stays, the content differs.
        const at = Math.floor(rand() * size);
        if (edited.has(`${f}:${at}`)) continue;
        edited.add(`${f}:${at}`);
        const fh = await fsp.open(f, 'r+');
        const byte = Buffer.alloc(1);
        await fh.read(byte, 0, 1, at);
        byte[0] = ~byte[0]! & 0xff;
        await fh.write(byte, 0, 1, at);
        await fh.close();
        touched.add(rel(f));
        break;
      }
      case 'append':
        await fsp.appendFile(f, 'more');
        touched.add(rel(f));
        break;
      case 'truncate': {
        const size = (await fsp.stat(f)).size;
        if (size === 0) continue;
        await fsp.truncate(f, Math.floor(size / 2));
        touched.add(rel(f));
        break;
      }
      case 'chmod':
        await fsp.chmod(f, pick(rand, [0o600, 0o640, 0o777, 0o400]));
        break;
      case 'chown':
        if (asRoot) await fsp.lchown(f, 4321, 4321);
        break;
      case 'touch':
        await fsp.utimes(f, 1.5e9, 1.5e9);
        break;
      case 'file-to-dir':
        await fsp.rm(f);
        await fsp.mkdir(path.join(f, 'deep', 'er'), { recursive: true });
        await fsp.writeFile(path.join(f, 'deep', 'er', 'x'), 'x');
        touched.add(rel(f));
        break;
      case 'dir-to-file':
        for (const p of files) if (p.startsWith(d + path.sep)) touched.add(rel(p));
        await fsp.rm(d, { recursive: true });
        await fsp.writeFile(d, 'was a directory');
        break;
      case 'file-to-link':
        await fsp.rm(f);
        await fsp.symlink(pick(rand, [path.relative(path.dirname(f), pick(rand, files)), '/etc/hostname', 'nowhere']), f);
        touched.add(rel(f));
        break;
      case 'dir-to-link-outside': {
        // The directory's files, with the same content, in a directory outside the target, and a link to it in its place.
        const copy = path.join(outside, `copy-${i}`);
        await fsp.cp(d, copy, { recursive: true, preserveTimestamps: true, filter: async (p) => !(await fsp.lstat(p)).isFIFO() && !(await fsp.lstat(p)).isSocket() });
        for (const p of files) if (p.startsWith(d + path.sep)) touched.add(rel(p));
        await fsp.rm(d, { recursive: true });
        await fsp.symlink(copy, d);
        break;
      }
      case 'relink': {
        if (links.length === 0) continue;
        const l = pick(rand, links);
        await fsp.rm(l);
        await fsp.symlink(pick(rand, ['elsewhere', '/tmp', 'f1.bin']), l);
        break;
      }
      case 'extra':
        // Each extra named apart from those of earlier rounds: a socket or pipe put in one's place is kept by a --delta.
        await fsp.writeFile(path.join(d, `extra-${i}-${Math.floor(rand() * 1e9)}`), 'extra');
        break;
      case 'extra-deep': {
        const deep = path.join(d, `extra-dir-${i}-${Math.floor(rand() * 1e9)}`, 'a', 'b', 'c');
        await fsp.mkdir(deep, { recursive: true });
        await fsp.writeFile(path.join(deep, 'deep'), 'deep');
        break;
      }
      case 'read-only-dir':
        await fsp.chmod(d, 0o555);
        break;
      case 'hard-link': {
        // Another file of the same content takes this one's place as a second name of it.
        const twins = files.filter((p) => path.basename(p).startsWith('twin-'));
        if (twins.length < 2) continue;
        await fsp.rm(twins[1]!);
        await fsp.link(twins[0]!, twins[1]!);
        break;
      }
      case 'hard-link-outside': {
        const kept = path.join(outside, `kept-${i}`);
        await fsp.link(f, kept);
        break;
      }
      case 'fifo':
        await fsp.rm(f);
        execFileSync('mkfifo', [f]);
        touched.add(rel(f));
        break;
      case 'socket':
        await fsp.rm(f);
        await leaveSocket(f);
        touched.add(rel(f));
        break;
      case 'extra-fifo':
        // Named apart from the pipes of earlier rounds, which a --delta keeps.
        execFileSync('mkfifo', [path.join(d, `pipe-${i}-${Math.floor(rand() * 1e9)}`)]);
        break;
    }
    log.push(`${op} ${rel(op.startsWith('dir') || op.startsWith('read') || op.startsWith('extra') ? d : f)}`);
  }
  return { touched };
}

test('a --delta or --force restore over a target changed in every way a live host changes it gives back the point exactly, touches nothing outside, and counts what it did', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed} (replay with LIFEBOAT_TEST_SEED=${seed})`);
  const rand = prng(seed);
  const work = await tempDir();
  const models = path.join(work, 'models');
  await fsp.mkdir(models);
  await buildTree(models, rand);
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const b = await lifeboat(['--repo', repo, '--json', 'backup', models]);
  assert.equal(b.code, 0, b.stderr);
  const target = path.join(work, 'target');
  const first = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target]);
  assert.equal(first.code, 0, first.stderr);
  const expected = await strictSnapshot(target);
  const fileCount = [...expected.values()].filter((v) => v.startsWith('file')).length;

  for (let round = 0; round < 6; round++) {
    const outside = path.join(work, `outside-${round}`);
    await fsp.mkdir(outside);
    const log: string[] = [];
    const { touched } = await disturb(path.join(target, 'models'), outside, rand, log);
    // A writer still holding a file of the target open.
    const { files } = await entriesOf(path.join(target, 'models'));
    const writer = spawn('sh', ['-c', 'exec 3>>"$1"; sleep 30', 'sh', pick(rand, files)], { stdio: 'ignore' });
    t.after(() => writer.kill());
    const outsideBefore = await strictSnapshot(outside);
    const force = round === 5;
    const r = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, force ? '--force' : '--delta']);
    writer.kill();
    const what = `round ${round} (${log.join(', ')})`;
    assert.equal(r.code, 0, `${what}: ${r.stderr}`);
    // Named pipes and sockets the point lacks are kept by a --delta (no backup stores them), unless in what it
    // removed: an extra pipe, or a socket left where an extra file was.
    const now = await strictSnapshot(target);
    const pipes = [...now].filter(([p, v]) => v === 'special' && !expected.has(p));
    if (force) assert.deepEqual(pipes, [], what);
    for (const [p] of pipes) now.delete(p);
    assert.equal(difference(expected, now), undefined, what);
    assert.equal(difference(outsideBefore, await strictSnapshot(outside)), undefined, `${what}: outside the target`);
    const result = r.json();
    if (!force) {
      assert.equal(result.rewritten + result.unchanged, fileCount, what);
      assert.ok(result.rewritten >= [...touched].filter((p) => expected.get(`models/${p}`)?.startsWith('file')).length, `${what}: ${result.rewritten} rewritten`);
      assert.equal(result.keptExcluded, pipes.length, what);
    }
  }

  // The same, in place: the source itself changed, and restored where it was backed up from.
  const outside = path.join(work, 'outside-in-place');
  await fsp.mkdir(outside);
  const log: string[] = [];
  await disturb(models, outside, rand, log);
  const outsideBefore = await strictSnapshot(outside);
  const r = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--in-place', '--delta']);
  assert.equal(r.code, 0, `in place (${log.join(', ')}): ${r.stderr}`);
  const now = await strictSnapshot(models);
  const inPlace = new Map([...expected].filter(([p]) => p.startsWith('models/')).map(([p, v]) => [p.slice('models/'.length), v]));
  for (const [p, v] of now) if (v === 'special' && !inPlace.has(p)) now.delete(p);
  assert.equal(difference(inPlace, now), undefined, `in place (${log.join(', ')})`);
  assert.equal(difference(outsideBefore, await strictSnapshot(outside)), undefined, `in place (${log.join(', ')}): outside the source`);
  await fsp.rm(work, { recursive: true, force: true });
});
