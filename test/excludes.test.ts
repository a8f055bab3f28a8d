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
});
