import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import module from 'node:module';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { runChild, type CliRun } from './helpers/cli.js';
import { prng, tempDir, writeRandomFile } from './helpers/tree.js';

// Most tests run the CLI in-process on the compiled modules. Users run the bundle, which loads
// some dependencies its own way (on demand, CommonJS through esbuild's interop, worker threads
// from beside it): this walks one encrypted deployment through it, config file and all.
test('the installed program backs up, verifies, restores and drills an encrypted deployment from its config file', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const models = path.join(work, 'models');
  await fsp.mkdir(path.join(models, 'tok'), { recursive: true });
  await fsp.writeFile(path.join(models, 'config.json'), JSON.stringify({ vocab_size: 2 }));
  await fsp.writeFile(path.join(models, 'tok', 'tokenizer.json'), JSON.stringify({ model: { vocab: { a: 0, b: 1 } } }));
  // Larger than a small file, so the hashing and encryption threads both run.
  await writeRandomFile(path.join(models, 'weights.bin'), 3 << 20, prng(11));
  const db = new Database(path.join(work, 'registry.db'));
  db.exec('CREATE TABLE versions (name TEXT); INSERT INTO versions VALUES (\'v41\')');
  db.close();
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    ['repository: ./repo', 'sources:', '  models: ./models', '  registry: { sqlite: ./registry.db }', '  features: { command: "printf features-v1" }', ''].join('\n'),
  );
  const env = { LIFEBOAT_PASSWORD: 'correct horse battery staple' };
  const run = (args: string[], options: { env?: NodeJS.ProcessEnv } = {}): Promise<CliRun> => runChild(args, { cwd: work, env: options.env ?? env });
  const ok = async (args: string[]): Promise<CliRun> => {
    const r = await run(args);
    assert.equal(r.code, 0, `lifeboat ${args.join(' ')}: ${r.stderr}`);
    return r;
  };

  await ok(['init', '--encryption', 'aes-256-gcm']);
  const full = (await ok(['--json', 'backup', '--type', 'full'])).json();
  assert.equal(full.type, 'full');
  assert.equal(full.files, 5);
  await fsp.writeFile(path.join(models, 'config.json'), JSON.stringify({ vocab_size: 2, hidden: 8 }));
  const incr = (await ok(['--json', 'backup'])).json();
  assert.equal(incr.type, 'incr');
  assert.ok(incr.changed >= 1, JSON.stringify(incr));
  assert.deepEqual((await ok(['--json', 'list'])).json().map((p: { id: string }) => p.id), [full.id, incr.id]);
  assert.match((await ok(['verify', '--read-data'])).stdout, /no problems found/);

  const out = path.join(work, 'restored');
  await ok(['--json', 'restore', full.id, '--target', out]);
  assert.deepEqual(JSON.parse(await fsp.readFile(path.join(out, 'models', 'config.json'), 'utf8')), { vocab_size: 2 });
  assert.ok((await fsp.readFile(path.join(out, 'models', 'weights.bin'))).equals(await fsp.readFile(path.join(models, 'weights.bin'))));
  assert.equal(await fsp.readFile(path.join(out, 'features', 'stdout'), 'utf8'), 'features-v1');
  const restoredDb = new Database(path.join(out, 'registry', 'registry.db'), { readonly: true });
  assert.deepEqual(restoredDb.prepare('SELECT name FROM versions').all(), [{ name: 'v41' }]);
  restoredDb.close();

  const drill = (await ok(['--json', 'drill'])).json();
  assert.equal(drill.ok, true, JSON.stringify(drill));
  assert.equal(drill.point, incr.id);

  const wrong = await run(['list'], { env: { LIFEBOAT_PASSWORD: 'wrong' } });
  assert.equal(wrong.code, 2, wrong.stderr);
  assert.match(wrong.stderr, /wrong password/);
});

test('under node --jitless, which has no WebAssembly and so no aligned memory, backups and restores go through the page cache', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const models = path.join(work, 'models');
  await fsp.mkdir(models, { recursive: true });
  await writeRandomFile(path.join(models, 'weights.bin'), 5 << 20, prng(12));
  await fsp.writeFile(path.join(models, 'config.json'), JSON.stringify({ vocab_size: 2 }));
  const env = { NODE_OPTIONS: '--jitless' };
  const run = async (args: string[]): Promise<CliRun> => {
    const r = await runChild(args, { cwd: work, env });
    assert.equal(r.code, 0, `lifeboat ${args.join(' ')}: ${r.stderr}`);
    return r;
  };
  const premise = spawnSync(process.execPath, ['-e', 'process.stdout.write(typeof WebAssembly)'], { env: { ...process.env, ...env }, encoding: 'utf8' });
  assert.equal(premise.stdout, 'undefined', 'node --jitless has no WebAssembly');
  await run(['--repo', 'repo', 'init']);
  await run(['--repo', 'repo', 'backup', 'models']);
  await run(['--repo', 'repo', 'verify', '--read-data']);
  await run(['--repo', 'repo', 'restore', 'latest', '--target', 'out']);
  assert.ok((await fsp.readFile(path.join(work, 'out', 'models', 'weights.bin'))).equals(await fsp.readFile(path.join(models, 'weights.bin'))));
});

// Node 22.1 and later can keep the compiled program between runs; Node's own place for it is under
// TMPDIR, where lifeboat stages state and users point a small tmpfs.
test('the installed program keeps its compiled code with the user\'s caches, never under TMPDIR, and works where there is no home for them', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'config.json'), '{}');
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), ['repository: ./repo', 'sources:', '  models: ./models', '  features: { command: "printf features-v1" }', ''].join('\n'));
  const tmp = path.join(work, 'tmp');
  await fsp.mkdir(tmp);
  const caches = path.join(work, 'caches');
  const home = path.join(work, 'home');
  const runs: [string[], NodeJS.ProcessEnv][] = [
    [['init'], { TMPDIR: tmp, XDG_CACHE_HOME: caches }],
    [['backup'], { TMPDIR: tmp, XDG_CACHE_HOME: caches }],
    [['list'], { TMPDIR: tmp, XDG_CACHE_HOME: '', HOME: home }],
    [['list'], { TMPDIR: tmp, XDG_CACHE_HOME: 'relative', HOME: '' }],
  ];
  for (const [args, env] of runs) {
    const r = await runChild(['--quiet', ...args], { cwd: work, env });
    assert.equal(r.code, 0, `lifeboat ${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stderr, '', `lifeboat ${args.join(' ')}`);
  }
  assert.deepEqual(await fsp.readdir(tmp), [], 'nothing is left in TMPDIR');
  const names = await fsp.readdir(work);
  assert.ok(!names.includes('relative') && !names.includes('.cache'), `nothing is cached in the working directory: ${names.join(', ')}`);
  if (!hasCompileCache()) return;
  for (const dir of [path.join(caches, 'lifeboat', 'compile-cache'), path.join(home, '.cache', 'lifeboat', 'compile-cache')]) {
    const versions = await fsp.readdir(dir);
    assert.equal(versions.length, 1, versions.join(', '));
    assert.ok((await fsp.readdir(path.join(dir, versions[0]!))).length > 0, `compiled code is kept in ${dir}`);
  }
});

function hasCompileCache(): boolean {
  return typeof (module as { enableCompileCache?: unknown }).enableCompileCache === 'function';
}
