import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { openRegularFile } from '../src/format/durable.js';
import { readWholeFile } from '../src/core/file-reader.js';
import { lifeboat } from './helpers/cli.js';
import { smallDeployment } from './helpers/repo.js';
import { tempDir } from './helpers/tree.js';

// Opening a named pipe for reading blocks until something writes to it: where lifeboat expects a
// file, a pipe must be refused at once. A regression hangs; the timeout turns that into a failure.
const BOUNDED = { timeout: 30_000 };
const noMkfifo = spawnSync('mkfifo', ['--version']).status === 0 ? undefined : 'mkfifo is not installed';

async function pipeAt(file: string): Promise<void> {
  await fsp.rm(file, { force: true });
  const made = spawnSync('mkfifo', [file]);
  assert.equal(made.status, 0, String(made.stderr));
}

test('a pipe where a file is expected is refused at once, not read', { ...BOUNDED, skip: noMkfifo }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const pipe = path.join(work, 'tokenizer.json');
  await pipeAt(pipe);
  await assert.rejects(openRegularFile(pipe), { code: 'EFTYPE' });
  assert.equal(readWholeFile(pipe, 100), undefined, 'a source file that became a pipe counts as gone');
  assert.equal(readWholeFile(path.join(work, 'missing'), 100), undefined, 'so does one that is gone');
  await fsp.writeFile(path.join(work, 'real'), 'x');
  const { handle } = await openRegularFile(path.join(work, 'real'));
  assert.equal(await handle.readFile('utf8'), 'x');
  await handle.close();
});

test('pipes planted in a repository are integrity failures (exit 3), not a hang', { ...BOUNDED, skip: noMkfifo }, async (t) => {
  const d = await smallDeployment({ bigFiles: 1, bigSize: 2 << 20 });
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const full = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'full']);
  assert.equal(full.code, 0, full.stderr);
  const id = full.json().id as string;

  const volume = path.join(d.repo, 'data', id, 'v000001.tar');
  await pipeAt(volume);
  const verify = await lifeboat(['--repo', d.repo, 'verify', '--read-data']);
  assert.equal(verify.code, 3, verify.stderr);
  const restore = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', path.join(d.work, 'out')]);
  assert.equal(restore.code, 3, restore.stderr);
  assert.match(restore.stderr, /not a regular file in the repository/);

  await pipeAt(path.join(d.repo, 'config.json'));
  const list = await lifeboat(['--repo', d.repo, 'list']);
  assert.equal(list.code, 3, list.stderr);
  assert.match(list.stderr, /config\.json: it is not a regular file in the repository/);
});

test('a pipe or an outsized file where a target\'s record of switches, its switch lock or a metrics file should be is refused at once, not a hang', { ...BOUNDED, skip: noMkfifo }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.mkdir(path.join(work, 'live', 'models'), { recursive: true });
  await fsp.writeFile(path.join(work, 'live', 'models', 'config.json'), '{"a":1}');
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), ['repository: ./repo', 'sources:', '  models: ./live/models', 'targets:', '  prod:', '    slots: ./slots', '    active: ./current', ''].join('\n'));
  const run = (...args: string[]) => lifeboat(args, { cwd: work });
  for (const args of [['init'], ['backup'], ['failover', 'latest', '--to', 'prod']]) {
    const setUp = await run(...args);
    assert.equal(setUp.code, 0, `${args.join(' ')}: ${setUp.stderr}`);
  }
  const record = path.join(work, 'slots', '.lifeboat-target.json');
  const kept = await fsp.readFile(record);
  for (const [what, plant] of [['a pipe', pipeAt], [
    '300 MB (sparse)',
    async (f: string) => {
      await fsp.writeFile(f, '');
      await fsp.truncate(f, 300 << 20);
    },
  ]] as const) {
    await plant(record);
    const status = await run('status');
    assert.equal(status.code, 1, `${what}: ${status.stderr}`);
    assert.match(status.stderr, /record of switches of target prod, .* is damaged \(it is (not a regular file|larger than any record of switches lifeboat writes)\)/, what);
    await fsp.rm(record);
    await fsp.writeFile(record, kept);
    const lock = path.join(work, 'slots', '.lifeboat-switch.lock');
    await plant(lock);
    const rollback = await run('rollback', '--to', 'prod');
    assert.equal(rollback.code, 1, `${what}: ${rollback.stderr}`);
    assert.match(rollback.stderr, /cannot take the switch lock of target prod: .* is not one lifeboat made \(it is (not a regular file|larger than any switch lock)\)/, what);
    await fsp.rm(lock);
    const metrics = path.join(work, 'metrics.prom');
    await plant(metrics);
    const backup = await run('backup', '--metrics-file', metrics);
    assert.equal(backup.code, 0, `${what}: ${backup.stderr}`);
    assert.match(backup.stderr, /could not write the metrics file .*metrics\.prom: .* (is not a regular file|holds more than 16 MiB)/, what);
    await fsp.rm(metrics);
  }
});
