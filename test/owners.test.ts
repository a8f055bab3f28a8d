import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { BIN, lifeboat } from './helpers/cli.js';
import { prng, seedFromEnv, tempDir } from './helpers/tree.js';

const asRoot = process.geteuid?.() === 0;
const NOBODY = 65534;

async function owners(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (dir: string, rel: string) => {
    for (const name of (await fsp.readdir(dir)).sort()) {
      const st = await fsp.lstat(path.join(dir, name));
      out.set(`${rel}${name}`, `${st.uid}:${st.gid} ${(st.mode & 0o7777).toString(8)}`);
      if (st.isDirectory()) await walk(path.join(dir, name), `${rel}${name}/`);
    }
  };
  await walk(root, '');
  return out;
}

test('a restore as root gives files, directories and links the owners they had at that point', { skip: asRoot ? false : 'changing owners needs root' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const rand = prng(seedFromEnv());
  const id = () => 1000 + Math.floor(rand() * 60_000);
  // Alone in its directory, so that owners(path.dirname(src)) describes the source and its root.
  const src = path.join(work, 'tree', 'models');
  await fsp.mkdir(path.join(src, 'shards'), { recursive: true });
  const paths: string[] = [];
  for (let i = 0; i < 12; i++) {
    const p = path.join(src, i % 2 ? 'shards' : '', `f${i}`);
    await fsp.writeFile(p, `file ${i}\n`);
    paths.push(p);
  }
  await fsp.symlink('f0', path.join(src, 'link'));
  for (const p of [...paths, path.join(src, 'link'), path.join(src, 'shards')]) await fsp.lchown(p, id(), id());
  await fsp.chown(src, id(), id());
  // Set after the owner, which would clear it: a group-shared directory.
  await fsp.chmod(path.join(src, 'shards'), 0o2775);
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const full = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'full']);
  assert.equal(full.code, 0, full.stderr);
  const atFull = await owners(path.dirname(src));

  // A change of owner alone (no new content, no new mtime) is recorded by the next backup.
  await fsp.chown(paths[3]!, 4242, 4343);
  const incr = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'incr']);
  assert.equal(incr.code, 0, incr.stderr);
  const atIncr = await owners(path.dirname(src));
  assert.notDeepEqual(atIncr, atFull);

  for (const [point, expected] of [[full.json().id, atFull], [incr.json().id, atIncr]] as const) {
    const target = path.join(work, `restore-${point}`);
    const r = await lifeboat(['--repo', repo, 'restore', point, '--target', target]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await owners(target), expected, `owners and modes at ${point}`);
  }

  // Someone else restores: the files are theirs, and the restore still succeeds.
  await fsp.chmod(work, 0o755);
  const forNobody = path.join(work, 'nobody');
  await fsp.mkdir(forNobody);
  await fsp.chown(forNobody, NOBODY, NOBODY);
  const child = spawn(process.execPath, [BIN, '--repo', repo, 'restore', 'latest', '--target', path.join(forNobody, 'out')], { uid: NOBODY, gid: NOBODY, stdio: ['ignore', 'ignore', 'pipe'] });
  const err: Buffer[] = [];
  child.stderr.on('data', (c: Buffer) => err.push(c));
  assert.equal(await new Promise((resolve) => child.on('close', resolve)), 0, Buffer.concat(err).toString());
  const theirs = await owners(path.join(forNobody, 'out'));
  for (const [p, o] of theirs) assert.match(o, new RegExp(`^${NOBODY}:${NOBODY} `), `${p} belongs to the user who restored it`);
});
