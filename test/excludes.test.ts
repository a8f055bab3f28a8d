import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { tempDir } from './helpers/tree.js';
import { isExcluded } from '../src/core/scan.js';

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
