import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { makeDirectories, makeWorkDirectory } from '../src/format/mkdirs.js';
import { formatStart, processStart } from '../src/format/process-alive.js';
import { lifeboat } from './helpers/cli.js';
import { startedNow } from './helpers/processes.js';
import { smallDeployment } from './helpers/repo.js';
import { tempDir } from './helpers/tree.js';

// Under /proc, mkdir answers ENOENT although the parent exists: Node's recursive mkdir never returns there.
const UNCREATABLE = '/proc/lifeboat-cannot-create/here';
const procMissing = await fsp.stat('/proc/self').then(
  () => undefined,
  () => 'no /proc on this system',
);
// A regression hangs at full CPU; the timeout turns that into a failure.
const BOUNDED = { timeout: 30_000 };

test('makeDirectories creates missing levels, accepts what exists, and refuses a file or a dangling link in the way', BOUNDED, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const deep = path.join(work, 'a', 'b', 'c');
  await makeDirectories(deep, 0o700);
  assert.ok((await fsp.stat(deep)).isDirectory());
  assert.equal((await fsp.stat(path.join(work, 'a'))).mode & 0o777, 0o700 & ~process.umask());
  await makeDirectories(deep);
  await makeDirectories(work);

  await fsp.writeFile(path.join(work, 'file'), 'x');
  await assert.rejects(makeDirectories(path.join(work, 'file', 'below')), { code: 'ENOTDIR' });
  await assert.rejects(makeDirectories(path.join(work, 'file')), { code: 'ENOTDIR' });
  await fsp.symlink(path.join(work, 'nowhere'), path.join(work, 'dangling'));
  await assert.rejects(makeDirectories(path.join(work, 'dangling', 'repo')), { code: 'ENOTDIR' });
  await fsp.symlink(deep, path.join(work, 'to-deep'));
  await makeDirectories(path.join(work, 'to-deep', 'd'));
  assert.ok((await fsp.stat(path.join(deep, 'd'))).isDirectory());
});

test('makeDirectories gives up where a directory cannot be created although its parent exists', { ...BOUNDED, skip: procMissing }, async () => {
  await assert.rejects(makeDirectories(UNCREATABLE), { code: 'ENOENT' });
});

test('init, restore and failover into a path that cannot be created fail with the path named instead of hanging', { ...BOUNDED, skip: procMissing }, async (t) => {
  const init = await lifeboat(['--repo', UNCREATABLE, 'init']);
  assert.equal(init.code, 1, init.stderr);
  assert.match(init.stderr, /cannot create \/proc\/lifeboat-cannot-create\/here/);

  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src, '--type', 'full'])).code, 0);
  const restore = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', `${UNCREATABLE}/restore`]);
  assert.equal(restore.code, 1, restore.stderr);
  assert.match(restore.stderr, /cannot create .*lifeboat-cannot-create.* to restore into/);

  const config = path.join(d.work, 'lifeboat.yaml');
  await fsp.writeFile(config, `repository: ${d.repo}\ntargets:\n  prod: { slots: ${UNCREATABLE}/slots, active: ${d.work}/current }\n`);
  const failover = await lifeboat(['--config', config, 'failover', '--to', 'prod']);
  assert.equal(failover.code, 1, failover.stderr);
  assert.match(failover.stderr, /cannot create the slots directory .* of target prod/);

  // A file where the slots directory should be can never become one: the config's to fix (exit 2), not a failure to retry.
  const file = path.join(d.work, 'slots-file');
  await fsp.writeFile(file, 'not a directory\n');
  for (const slots of [file, path.join(file, 'under')]) {
    await fsp.writeFile(config, `repository: ${d.repo}\ntargets:\n  prod: { slots: ${slots}, active: ${d.work}/current }\n`);
    const onFile = await lifeboat(['--config', config, 'failover', '--to', 'prod']);
    assert.equal(onFile.code, 2, onFile.stderr);
    assert.match(onFile.stderr, /cannot create the slots directory .* of target prod: .*not a directory.*\n {2}check targets\.prod\.slots in the config file/);
  }
  assert.equal(await fsp.readFile(file, 'utf8'), 'not a directory\n');
});

test('a work directory named for a pid that now belongs to a process started after the directory was made (a reboot, a container run again) is removed as left', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const other = startedNow(t);
  const seconds = (msAgo: number) => Math.floor((Date.now() - msAgo) / 1000);
  const before = path.join(work, `lifeboat-drill-${other.pid}-${seconds(10 * 60_000)}-a1b2c3`);
  const after = path.join(work, `lifeboat-drill-${other.pid}-${seconds(0)}-d4e5f6`);
  // Named by an older version, without the time it was made: judged by its pid alone.
  const older = path.join(work, `lifeboat-drill-${other.pid}-abcdef`);
  for (const dir of [before, after, older]) await fsp.mkdir(dir);
  const removed: string[] = [];
  const made = await makeWorkDirectory(work, 'lifeboat-drill-', (dir) => removed.push(dir));
  assert.deepEqual(removed, [before]);
  const started = processStart(process.pid);
  assert.match(path.basename(made), new RegExp(`^lifeboat-drill-${process.pid}-\\d{10}${started ? `-${formatStart(started)}` : ''}-[A-Za-z0-9]{6}$`));
  assert.deepEqual((await fsp.readdir(work)).sort(), [path.basename(after), path.basename(older), path.basename(made)].sort());
});

test('a work directory whose name records its process start is judged by it, not by the clock: a live owner\'s made before the clock stepped forward stays, a pid given again after the clock stepped back is removed', { skip: processStart(process.pid) === undefined && 'the system does not tell when a process started (no /proc)' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const other = startedNow(t);
  const start = processStart(other.pid!)!;
  const seconds = (msAgo: number) => Math.floor((Date.now() - msAgo) / 1000);
  // Its owner runs: made, by the clock of then, 10 minutes before that process started by the clock of now.
  const live = path.join(work, `lifeboat-drill-${other.pid}-${seconds(10 * 60_000)}-${formatStart(start)}-a1b2c3`);
  // Made by another process of that pid, 10 minutes ahead of the clock of now.
  const given = path.join(work, `lifeboat-drill-${other.pid}-${seconds(-10 * 60_000)}-${formatStart({ ...start, ticks: start.ticks + 1 })}-d4e5f6`);
  for (const dir of [live, given]) await fsp.mkdir(dir);
  const removed: string[] = [];
  const made = await makeWorkDirectory(work, 'lifeboat-drill-', (dir) => removed.push(dir));
  assert.deepEqual(removed, [given]);
  assert.deepEqual((await fsp.readdir(work)).sort(), [path.basename(live), path.basename(made)].sort());
});
