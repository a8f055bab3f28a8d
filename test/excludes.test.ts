import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { lifeboat } from './helpers/cli.js';
import { listFiles, tempDir } from './helpers/tree.js';
import { isExcluded } from '../src/core/scan.js';
import { decodeDocument, encodeDocument } from '../src/format/document.js';
import { manifestSchema } from '../src/format/manifest.js';

test('exclude patterns follow tar, rsync, restic and .gitignore: no slash matches a name at any depth, a leading slash anchors, a trailing slash means directories', () => {
  const cases: [string, boolean, string, boolean][] = [
    ['x.tmp', false, '*.tmp', true],
    ['a/b/c.tmp', false, '*.tmp', true],
    ['a/b/keep', false, '*.tmp', false],
    ['a/__pycache__', true, '__pycache__', true],
    ['logs', true, '/logs', true],
    ['a/logs', true, '/logs', false],
    ['cache', true, 'cache/', true],
    ['cache', false, 'cache/', false],
    ['a/cache', true, 'cache/', true],
    ['a/c.tmp', false, 'a/*.tmp', true],
    ['a/b/c.tmp', false, 'a/*.tmp', false],
    ['a/cache', true, '**/cache/**', true],
    ['a/cache/x', false, '**/cache/**', true],
    ['cache', true, 'cache/**', true],
    ['a/cache', true, 'cache/**', false],
    ['tokenizer.json', false, '**/tokenizer.json', true],
    ['.git', true, '.git', true],
    ['a', true, '/', false],
  ];
  for (const [relPath, isDir, pattern, expected] of cases) {
    assert.equal(isExcluded(relPath, isDir, [pattern]), expected, `${pattern} on ${isDir ? 'directory' : 'file'} ${relPath}`);
  }
});

test('a backup leaves out what the patterns name, wherever it is, and does not read excluded directories', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const models = path.join(work, 'models');
  for (const dir of ['llama/__pycache__', 'llama/shards', 'logs', 'llama/logs', 'cache/hub']) await fsp.mkdir(path.join(models, dir), { recursive: true });
  for (const file of ['llama/config.json', 'llama/shards/a.safetensors', 'llama/shards/a.safetensors.tmp', 'download.tmp', 'llama/__pycache__/m.pyc', 'logs/serve.log', 'llama/logs/keep.log', 'cache/hub/blob']) {
    await fsp.writeFile(path.join(models, file), file);
  }
  // A named pipe is reported when it is met: one under an excluded directory is not.
  execFileSync('mkfifo', [path.join(models, 'cache', 'hub', 'control.pipe')]);
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const b = await lifeboat(['--repo', repo, '--json', 'backup', models, '--exclude', '*.tmp', '--exclude', '__pycache__', '--exclude', '/logs', '--exclude', 'cache/']);
  assert.equal(b.code, 0, b.stderr);
  assert.doesNotMatch(b.stderr, /named pipe/);
  const shown = (await lifeboat(['--repo', repo, '--json', 'show', 'latest'])).json();
  const paths = shown.entries.map((e: { path: string }) => e.path).sort();
  assert.deepEqual(paths, ['llama', 'llama/config.json', 'llama/logs', 'llama/logs/keep.log', 'llama/shards', 'llama/shards/a.safetensors']);
  // The point records them, for a restore --delta to leave what they match alone.
  assert.deepEqual(shown.sources.map((s: { exclude?: string[] }) => s.exclude), [['*.tmp', '__pycache__', '/logs', 'cache/']]);
  assert.match((await lifeboat(['--repo', repo, 'show', 'latest'])).stdout, /^sources: models=.*models \(files, leaving out \*\.tmp __pycache__ \/logs cache\/\)$/m);
});

test('a pattern that starts with ! is refused (exit 2) with what to write instead, from the command line and the config; \\! stands for a literal !', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const models = path.join(work, 'models');
  await fsp.mkdir(models);
  for (const file of ['s1.txt', 's2.txt', 'w.bin', '!notes.txt']) await fsp.writeFile(path.join(models, file), file);
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const hint = (name: string) => new RegExp(`\\n {2}make the other patterns leave ${name} in; for a name that starts with !, write \\\\!${name}\\n$`);

  // The glob matcher would read `!*.bin` as "everything but .bin files", .gitignore `!s1.txt` as putting s1.txt back.
  for (const [excludes, name] of [[['!*.bin'], '\\*\\.bin'], [['*.txt', '!s1.txt'], 's1\\.txt']] as const) {
    const r = await lifeboat(['--repo', repo, 'backup', models, ...excludes.flatMap((e) => ['--exclude', e])]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /^lifeboat: --exclude !\S+: an exclude pattern cannot start with ! \(in \.gitignore, putting back what an earlier pattern left out: lifeboat has no such re-includes\)/);
    assert.match(r.stderr, hint(name));
  }
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ./repo\nsources: { models: ./models }\nexclude: ["*.txt", "!s1.txt"]\n`);
  const configured = await lifeboat(['backup'], { cwd: work });
  assert.equal(configured.code, 2, configured.stderr);
  assert.match(configured.stderr, /lifeboat\.yaml: exclude\.1: !s1\.txt: an exclude pattern cannot start with !/);
  assert.match(configured.stderr, hint('s1\\.txt'));
  assert.deepEqual((await lifeboat(['--repo', repo, '--json', 'list'])).json(), [], 'nothing was stored');
  assert.throws(() => isExcluded('w.bin', false, ['!*.txt']), /cannot start with !/);

  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ./repo\nsources: { models: ./models }\nexclude: ["\\\\!notes.txt"]\n`);
  const literal = await lifeboat(['--json', 'backup', '--exclude', 's2.txt'], { cwd: work });
  assert.equal(literal.code, 0, literal.stderr);
  const shown = (await lifeboat(['--repo', repo, '--json', 'show', 'latest'])).json();
  assert.deepEqual(shown.entries.map((e: { path: string }) => e.path).sort(), ['s1.txt', 'w.bin']);
});

/** A model directory with what a server leaves beside its weights, and the patterns that leave those out. */
async function servedModels(models: string): Promise<void> {
  await fsp.mkdir(path.join(models, 'llama', '__pycache__'), { recursive: true });
  await fsp.mkdir(path.join(models, 'logs'), { recursive: true });
  for (const file of ['llama/config.json', 'llama/weights.bin', 'x.tmp', 'logs/app.log', 'llama/__pycache__/m.pyc']) await fsp.writeFile(path.join(models, file), `${file}\n`);
}
const LEFT_OUT = ['x.tmp', 'logs/app.log', 'llama/__pycache__/m.pyc'];
const EXCLUDES = ['--exclude', '*.tmp', '--exclude', '/logs', '--exclude', '__pycache__/'];

/** servedModels in `work`, backed up with EXCLUDES into a repository of its own. */
async function backedUp(work: string): Promise<{ repo: string; id: string }> {
  const models = path.join(work, 'models');
  await servedModels(models);
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const b = await lifeboat(['--repo', repo, '--json', 'backup', models, ...EXCLUDES]);
  assert.equal(b.code, 0, b.stderr);
  return { repo, id: b.json().id };
}

/** Files under a directory, relative to it. */
const filesIn = async (root: string) => (await listFiles(root)).map((f) => path.relative(root, f));

test('restore --delta keeps what the backup left out with its exclude patterns, as rsync --delete does; --delete-excluded removes it too', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const { repo } = await backedUp(work);

  // The target holds a restored copy, with what the server wrote since, one weight damaged and a stray file.
  const target = path.join(work, 'restored');
  assert.equal((await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target])).code, 0);
  await servedModels(path.join(target, 'models'));
  await fsp.writeFile(path.join(target, 'models', 'llama', 'weights.bin'), 'damaged');
  await fsp.writeFile(path.join(target, 'models', 'stray.txt'), 'not in the point');
  // A server's pipe: no backup stores one.
  execFileSync('mkfifo', [path.join(target, 'models', 'control.pipe')]);

  const dry = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--delta', '--dry-run']);
  assert.equal(dry.code, 0, dry.stderr);
  const planned = dry.json();
  assert.deepEqual([planned.rewritten, planned.removed, planned.keptExcluded, planned.removals], [1, 1, 4, ['models/stray.txt']]);
  const dryText = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target, '--delta', '--dry-run']);
  assert.match(dryText.stdout, /\(1 would be rewritten, 1 unchanged, 4 left out by the backup would be kept, 1 would be removed: models\/stray\.txt\)/);

  const delta = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--delta']);
  assert.equal(delta.code, 0, delta.stderr);
  assert.deepEqual([delta.json().rewritten, delta.json().removed, delta.json().keptExcluded], [1, 1, 4]);
  assert.deepEqual(await filesIn(path.join(target, 'models')), ['llama/__pycache__/m.pyc', 'llama/config.json', 'llama/weights.bin', 'logs/app.log', 'x.tmp']);
  assert.equal(await fsp.readFile(path.join(target, 'models', 'llama', 'weights.bin'), 'utf8'), 'llama/weights.bin\n');
  assert.ok((await fsp.lstat(path.join(target, 'models', 'control.pipe'))).isFIFO(), 'the pipe is kept');
  const text = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target, '--delta']);
  assert.match(text.stdout, /\(0 rewritten, 2 unchanged, 4 left out by the backup kept, 0 removed\)/);

  const refused = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target, '--force', '--delete-excluded']);
  assert.equal(refused.code, 2, refused.stderr);
  assert.match(refused.stderr, /--delete-excluded goes with --delta/);

  const dryAll = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--delta', '--delete-excluded', '--dry-run']);
  assert.deepEqual([dryAll.json().removed, dryAll.json().keptExcluded, dryAll.json().removals.sort()], [4, 0, ['models/control.pipe', 'models/llama/__pycache__', 'models/logs', 'models/x.tmp']]);
  const all = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--delta', '--delete-excluded']);
  assert.equal(all.code, 0, all.stderr);
  assert.deepEqual(await filesIn(path.join(target, 'models')), ['llama/config.json', 'llama/weights.bin']);
  assert.deepEqual(await fsp.readdir(path.join(target, 'models')).then((n) => n.sort()), ['llama']);
});

test('restore --in-place --delta leaves the logs, caches and temporary files the backup left out where they are', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const models = path.join(work, 'srv', 'models');
  await servedModels(models);
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ./repo\nsources: { models: ./srv/models }\nexclude: ["*.tmp", "/logs", "__pycache__/"]\n`);
  const run = (...args: string[]) => lifeboat(args, { cwd: work });
  assert.equal((await run('init')).code, 0);
  assert.equal((await run('backup')).code, 0);
  await fsp.writeFile(path.join(models, 'llama', 'weights.bin'), 'damaged');

  const dry = await run('--json', 'restore', 'latest', '--in-place', '--delta', '--dry-run');
  assert.equal(dry.code, 0, dry.stderr);
  const [planned] = dry.json().sources;
  assert.deepEqual([planned.rewritten, planned.removed, planned.keptExcluded, planned.removals], [1, 0, 3, []]);
  const r = await run('--json', 'restore', 'latest', '--in-place', '--delta');
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual([r.json().sources[0].removed, r.json().sources[0].keptExcluded], [0, 3]);
  assert.deepEqual(await filesIn(models), ['llama/__pycache__/m.pyc', 'llama/config.json', 'llama/weights.bin', 'logs/app.log', 'x.tmp']);
  for (const file of LEFT_OUT) assert.equal(await fsp.readFile(path.join(models, file), 'utf8'), `${file}\n`, `${file} is as it was`);
  assert.equal(await fsp.readFile(path.join(models, 'llama', 'weights.bin'), 'utf8'), 'llama/weights.bin\n');

  const all = await run('--json', 'restore', 'latest', '--in-place', '--delta', '--delete-excluded');
  assert.equal(all.code, 0, all.stderr);
  assert.deepEqual([all.json().sources[0].removed, all.json().sources[0].keptExcluded], [3, 0]);
  assert.deepEqual(await filesIn(models), ['llama/config.json', 'llama/weights.bin']);
});

test('a point taken before points recorded their exclude patterns: --delta takes the config\'s patterns and says so, or without any removes what the point lacks and warns', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const { repo, id } = await backedUp(work);
  // What an earlier version wrote: the same manifest without the field.
  const file = path.join(repo, 'points', `${id}.json`);
  const m = decodeDocument(await fsp.readFile(file), manifestSchema, 'manifest');
  for (const s of m.sources) delete s.exclude;
  await fsp.writeFile(file, encodeDocument(m));
  const target = path.join(work, 'restored');
  assert.equal((await lifeboat(['--repo', repo, 'restore', id, '--target', target])).code, 0);
  await servedModels(path.join(target, 'models'));

  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ./repo\nexclude: ["*.tmp", "/logs", "__pycache__/"]\n`);
  const configured = await lifeboat(['--json', 'restore', id, '--target', target, '--delta'], { cwd: work });
  assert.equal(configured.code, 0, configured.stderr);
  assert.equal(configured.json().keptExcluded, 3);
  assert.match(configured.stderr, new RegExp(`${id} does not record the exclude patterns its backup left files out with \\(an earlier version took it\\): --delta keeps what the config's exclude patterns match \\(\\*\\.tmp /logs __pycache__/\\)`));
  assert.equal(configured.stderr.match(/does not record/g)?.length, 1, 'said once');
  assert.deepEqual(
    configured.json().warnings.map((w: { code: string; message: string }) => [w.code, /--delta keeps what the config's exclude patterns match/.test(w.message)]),
    [['excludes-unrecorded', true]],
    'and in --json',
  );
  assert.deepEqual((await filesIn(path.join(target, 'models'))).length, 5);

  const bare = await lifeboat(['--repo', repo, '--json', 'restore', id, '--target', target, '--delta']);
  assert.equal(bare.code, 0, bare.stderr);
  assert.deepEqual([bare.json().removed, bare.json().keptExcluded], [3, 0]);
  assert.match(bare.stderr, /does not record the exclude patterns .*, and the config has none: --delta removes everything the point lacks, what its backup left out included/);
  assert.match(bare.json().warnings[0].message, /does not record the exclude patterns .*, and the config has none: --delta removes everything the point lacks/);
  const inPlace = await lifeboat(['--repo', repo, '--json', 'restore', id, '--in-place', '--delta', '--dry-run']);
  assert.equal(inPlace.code, 0, inPlace.stderr);
  assert.deepEqual(inPlace.json().warnings.map((w: { code: string }) => w.code), ['excludes-unrecorded'], 'in place too');
  assert.deepEqual(await filesIn(path.join(target, 'models')), ['llama/config.json', 'llama/weights.bin']);
});

test('exclude patterns leave out paths of directory sources only: a captured SQLite copy or command output they would match stays in the point', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights');
  await fsp.writeFile(path.join(work, 'models', 'cache.db'), 'a cache the models directory keeps');
  await fsp.mkdir(path.join(work, 'state'));
  const db = new Database(path.join(work, 'state', 'registry.db'));
  db.exec('CREATE TABLE t (x); INSERT INTO t VALUES (1)');
  db.close();
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    'repository: ./repo\nexclude: ["*.db", "stdout"]\nsources:\n  models: ./models\n  registry: { sqlite: ./state/registry.db }\n  features: { command: "echo features" }\n',
  );
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const b = await lifeboat(['--json', 'backup'], { cwd: work });
  assert.equal(b.code, 0, b.stderr);
  const show = (await lifeboat(['--json', 'show', 'latest'], { cwd: work })).json();
  const paths = show.entries.filter((e: { type: string }) => e.type === 'file').map((e: { source: string; path: string }) => `${e.source}/${e.path}`);
  assert.ok(!paths.includes('models/cache.db'), 'the directory source leaves it out');
  assert.ok(paths.some((p: string) => p.startsWith('registry/')), `the SQLite copy is in the point: ${paths.join(', ')}`);
  assert.ok(paths.includes('features/stdout'), `the command's output is in the point: ${paths.join(', ')}`);
  assert.deepEqual(
    show.sources.map((s: { name: string; exclude?: string[] }) => [s.name, s.exclude]),
    [['models', ['*.db', 'stdout']], ['registry', undefined], ['features', undefined]],
  );
});
