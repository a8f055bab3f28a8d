import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { lifeboat } from './helpers/cli.js';
import { compareSnapshots, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile, type SnapshotEntry } from './helpers/tree.js';

const FORMAT_MD = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../docs/FORMAT.md');
const hasJq = spawnSync('jq', ['--version']).status === 0;

/** The shell script of docs/FORMAT.md's "Recovering a point by hand", with its three settings replaced. */
async function recoveryScript(settings: { REPO: string; POINT: string; OUT: string }): Promise<string> {
  const doc = await fsp.readFile(FORMAT_MD, 'utf8');
  const section = doc.slice(doc.indexOf('## Recovering a point by hand'));
  const script = /```sh\n([\s\S]*?)```/.exec(section)![1]!;
  let out = script;
  for (const [name, value] of Object.entries(settings)) {
    assert.match(out, new RegExp(`^${name}=`, 'm'), `the script sets ${name}`);
    out = out.replace(new RegExp(`^${name}=.*$`, 'm'), `${name}='${value}'`);
  }
  return `set -euo pipefail\n${out}`;
}

test('the recovery by hand in docs/FORMAT.md, followed to the letter with tar, jq and sha256sum, gives back each point of a chain (randomized)', { skip: hasJq ? false : 'jq is not installed' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const seed = seedFromEnv();
  const rand = prng(seed);
  const models = path.join(work, 'models');
  const v1 = path.join(models, 'v1');
  await fsp.mkdir(path.join(v1, 'tokenizer'), { recursive: true });
  await fsp.mkdir(path.join(models, 'empty'));
  for (let i = 0; i < 3; i++) await writeRandomFile(path.join(v1, `shard-${i}.bin`), (1 << 20) + 1 + Math.floor(rand() * (2 << 20)), rand);
  await fsp.writeFile(path.join(v1, 'tokenizer', 'tokenizer.json'), '{"model": {}}');
  await fsp.writeFile(path.join(v1, 'name with spaces é.txt'), 'unicode and spaces');
  await fsp.symlink('v1', path.join(models, 'current'));
  await fsp.link(path.join(v1, 'shard-0.bin'), path.join(v1, 'shard-0.hardlink'));
  await fsp.chmod(path.join(v1, 'shard-1.bin'), 0o444);
  await fsp.chmod(path.join(v1, 'tokenizer'), 0o750);
  const repo = path.join(work, 'repo');
  const ok = async (...args: string[]) => {
    const r = await lifeboat(['--repo', repo, ...args]);
    assert.equal(r.code, 0, `seed ${seed}: lifeboat ${args.join(' ')}: ${r.stderr}`);
    return r;
  };
  await ok('init');
  const points: { id: string; tree: Map<string, SnapshotEntry> }[] = [];
  const backup = async () => points.push({ id: (await ok('--json', 'backup', models)).json().id, tree: await snapshotTree(models) });
  await backup();

  // A new version copied from v1 (its files refer to v1's bytes); a shard of v1 then rewritten, so the name
  // v1/shard-2.bin holds other bytes in a later volume than those the copy refers to.
  await fsp.cp(v1, path.join(models, 'v2'), { recursive: true });
  await writeRandomFile(path.join(v1, 'shard-2.bin'), (1 << 20) + 7, rand);
  await fsp.rename(path.join(v1, 'tokenizer', 'tokenizer.json'), path.join(v1, 'tokenizer', 'renamed.json'));
  await fsp.rm(path.join(models, 'current'));
  await fsp.symlink('v2', path.join(models, 'current'));
  await backup();
  await fsp.appendFile(path.join(models, 'v2', 'name with spaces é.txt'), ', edited');
  await backup();

  for (const [i, point] of points.entries()) {
    const out = path.join(work, `recovered-${i}`);
    const script = await recoveryScript({ REPO: repo, POINT: point.id, OUT: out });
    const r = spawnSync('bash', ['-c', script], { encoding: 'utf8' });
    assert.equal(r.status, 0, `seed ${seed}: the script for ${point.id} failed: ${r.stderr}`);
    assert.match(r.stdout, /all files verified/);
    assert.equal(compareSnapshots(point.tree, await snapshotTree(path.join(out, 'models'))), undefined, `seed ${seed}: point ${i} (${point.id})`);
    const st = await Promise.all(['shard-0.bin', 'shard-0.hardlink'].map((f) => fsp.stat(path.join(out, 'models', 'v1', f))));
    assert.equal(st[0]!.ino, st[1]!.ino, 'hard links stay links');
    assert.deepEqual((await fsp.readdir(work)).filter((n) => n.endsWith('.parts')), [], 'the scratch directory is removed');
  }
});
