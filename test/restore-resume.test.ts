import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat, runChild, spawnLifeboat } from './helpers/cli.js';
import { startedNow, waitFor } from './helpers/processes.js';
import { smallDeployment } from './helpers/repo.js';
import { compareSnapshots, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile } from './helpers/tree.js';
import { InterruptedError } from '../src/errors.js';
import { Repository } from '../src/core/repository.js';
import { restore } from '../src/core/restore.js';
import { lockRestoreTarget, removeOtherStaging, stagingPath } from '../src/core/restore-target.js';
import { formatStart, processStart } from '../src/format/process-alive.js';
import type { Notice } from '../src/core/events.js';
import { LocalStorage } from '../src/storage/local.js';

test('an interrupted restore keeps what it verified beside the target, and the next restore goes on from it without fetching those files again', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const rand = prng(seed);
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const repoDir = path.join(work, 'repo');
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  // Small volumes: each file in a volume of its own, so the volumes of the files already restored can be taken away.
  const storage = new LocalStorage(repoDir);
  await Repository.init(storage, { volumeSize: 1 << 20 });
  for (let i = 0; i < 12; i++) await writeRandomFile(path.join(src, `shard-${String(i).padStart(2, '0')}.bin`), (1 << 20) + Math.floor(rand() * (1 << 20)), rand);
  const expected = await snapshotTree(src);
  assert.equal((await lifeboat(['--repo', repoDir, 'backup', src])).code, 0);

  const repo = await Repository.open(storage);
  const manifest = await repo.resolve('latest');
  const target = path.join(work, 'restored');
  const stop = new AbortController();
  const notices: Notice[] = [];
  await assert.rejects(
    restore(repo, manifest, {
      target,
      signal: stop.signal,
      concurrency: 1,
      reporter: {
        progress: (p) => {
          if (p.filesDone >= 4) stop.abort();
        },
        notice: (n) => notices.push(n),
      },
    }),
    InterruptedError,
  );
  await assert.rejects(fsp.access(target), 'no half-restored target');
  const [kept] = (await fsp.readdir(work)).filter((n) => n.startsWith('.restored.lifeboat-staging-'));
  assert.ok(kept, 'the staging directory is kept');
  assert.ok(notices.some((n) => n.code === 'restore-kept' && n.path === path.join(work, kept!)), JSON.stringify(notices));
  // As when that restore's process has exited: its pid is in the name.
  const staging = `.restored.lifeboat-staging-${2 ** 22 + 4321}-0badcafe`;
  await fsp.rename(path.join(work, kept!), path.join(work, staging));

  // The files that made it whole, and the volumes only they are in: gone now, so the next restore must not need them.
  const done = new Set<string>();
  for (const e of manifest.entries) {
    if (e.type !== 'file') continue;
    const data = await fsp.readFile(path.join(work, staging, e.source, e.path)).catch(() => undefined);
    if (data && createHash('sha256').update(data).digest('hex') === e.sha256) done.add(e.path);
  }
  assert.ok(done.size >= 4 && done.size < 12, `${done.size} files were restored before the interrupt`);
  for (const [i, v] of manifest.volumes.entries()) {
    const files = manifest.entries.filter((e) => e.ref?.volume === i && e.ref.point === manifest.id);
    if (files.length > 0 && files.every((e) => done.has(e.path))) await fsp.rm(path.join(repoDir, v.key));
  }
  await repo.storage.close();

  const resumed = await lifeboat(['--repo', repoDir, 'restore', 'latest', '--target', target]);
  assert.equal(resumed.code, 0, `${resumed.stderr} done=${[...done].join(",")}`);
  assert.match(resumed.stderr, new RegExp(`resuming an interrupted restore: ${done.size} file\\(s\\), [\\d.]+ MiB, already there and verified`));
  assert.equal(compareSnapshots(expected, await snapshotTree(path.join(target, 'models'))), undefined);
  assert.deepEqual((await fsp.readdir(work)).filter((n) => n.includes('staging')), [], 'nothing is left beside the target');
});

test('a failover goes on from what an interrupted failover to the same point left in the slots directory, and removes what one to another point left', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  await writeRandomFile(path.join(src, 'weights.bin'), 2 << 20, prng(5));
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./models\ntargets:\n  prod: { slots: ./slots, active: ./current, health: { command: "true" } }\n');
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const point = (await lifeboat(['--json', 'backup'], { cwd: work })).json().id as string;

  const gone = 2 ** 22 + 999;
  const slots = path.join(work, 'slots');
  const same = path.join(slots, `.${point}.lifeboat-staging-${gone}-0badcafe`);
  const other = path.join(slots, `.20261101-000000-000F.lifeboat-staging-${gone}-0badf00d`);
  await fsp.mkdir(path.join(same, 'models'), { recursive: true });
  await fsp.copyFile(path.join(src, 'weights.bin'), path.join(same, 'models', 'weights.bin'));
  await fsp.mkdir(path.join(other, 'models'), { recursive: true });
  await fsp.writeFile(path.join(other, 'models', 'weights.bin'), 'half of another model');

  const r = await lifeboat(['failover', '--to', 'prod'], { cwd: work });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /removed \.20261101-000000-000F\.lifeboat-staging-\d+-0badf00d, left by an interrupted failover to another point/);
  assert.match(r.stderr, /resuming an interrupted restore: 1 file\(s\), 2\.00 MiB, already there and verified/);
  assert.deepEqual((await fsp.readdir(slots)).filter((n) => n.includes('staging')), [], 'no staging directory is left');
  assert.equal((await fsp.readFile(path.join(slots, point, 'models', 'weights.bin'))).equals(await fsp.readFile(path.join(src, 'weights.bin'))), true);
});

test('reading back what is already at a target (--delta, or a resumed restore) reports its progress', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  for (let i = 0; i < 3; i++) await writeRandomFile(path.join(src, `shard-${i}.bin`), 3 << 20, prng(i + 1));
  const repoDir = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repoDir, 'init'])).code, 0);
  assert.equal((await lifeboat(['--repo', repoDir, 'backup', src])).code, 0);
  const target = path.join(work, 'restored');
  assert.equal((await lifeboat(['--repo', repoDir, 'restore', 'latest', '--target', target])).code, 0);

  const repo = await Repository.open(new LocalStorage(repoDir));
  t.after(() => repo.storage.close());
  const seen: { filesDone: number; bytesDone: number; bytesTotal: number }[] = [];
  const r = await restore(repo, await repo.resolve('latest'), {
    target,
    delta: true,
    reporter: { progress: (p) => (p.phase === 'compare' ? seen.push(p) : undefined) },
  });
  assert.equal(r.unchanged, 3);
  assert.deepEqual(seen.map((p) => p.filesDone), [1, 2, 3]);
  assert.ok(seen.every((p) => p.bytesTotal === 9 << 20));
  assert.equal(seen.at(-1)!.bytesDone, 9 << 20);
});

test('a staging directory another user could write to is not gone on from, but removed', { skip: process.getuid?.() === 0 ? false : 'needs root, to give the planted directory another owner' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  await fsp.writeFile(path.join(src, 'config.json'), '{"vocab_size": 32000}\n');
  const repoDir = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repoDir, 'init'])).code, 0);
  assert.equal((await lifeboat(['--repo', repoDir, 'backup', src])).code, 0);
  // Planted beside the target, as anyone could in a shared directory: the right bytes, but another user's tree.
  const planted = path.join(work, `.restored.lifeboat-staging-${2 ** 22 + 55}-0badcafe`);
  await fsp.mkdir(path.join(planted, 'models'), { recursive: true });
  await fsp.copyFile(path.join(src, 'config.json'), path.join(planted, 'models', 'config.json'));
  await fsp.chown(planted, 12345, 12345);
  await fsp.chmod(planted, 0o777);
  const r = await lifeboat(['--repo', repoDir, 'restore', 'latest', '--target', path.join(work, 'restored')]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /removed a staging directory that another user could write to/);
  assert.doesNotMatch(r.stderr, /resuming/);
  assert.equal((await fsp.stat(path.join(work, 'restored'))).uid, 0, 'the target is this user\'s');
});

test('a target another process fills while a restore runs is not replaced: the restore fails saying so, and the next restore goes on from what it verified', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  await writeRandomFile(path.join(src, 'weights.bin'), 96 << 20, prng(11));
  await fsp.writeFile(path.join(src, 'config.json'), '{}');
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  assert.equal((await lifeboat(['--repo', repo, 'backup', '--source', `models=${src}`])).code, 0);

  const target = path.join(work, 'out');
  const child = spawnLifeboat(['--repo', repo, 'restore', 'latest', '--target', target]);
  const stderr: Buffer[] = [];
  child.stderr!.on('data', (c: Buffer) => stderr.push(c));
  const code = new Promise<number | null>((resolve) => child.on('close', resolve));
  // Once the restore writes into its staging directory, someone else puts a file where it is going.
  const staging = async () => (await fsp.readdir(work)).some((n) => n.startsWith('.out.lifeboat-staging-'));
  assert.ok(await waitFor(staging, 30_000), 'the restore began');
  await fsp.mkdir(target);
  await fsp.writeFile(path.join(target, 'theirs.txt'), 'written by another process');
  assert.equal(await code, 1, Buffer.concat(stderr).toString());
  assert.match(Buffer.concat(stderr).toString(), new RegExp(`restore target ${target} was filled by another process while this restore ran; nothing in it was replaced\\n {2}run the restore again`));
  assert.deepEqual(await fsp.readdir(target), ['theirs.txt']);

  const again = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--force']);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, /resuming an interrupted restore: 2 file\(s\)/);
  assert.deepEqual((await fsp.readdir(path.join(target))).sort(), ['models']);
});

test('a staging directory named for a pid that now belongs to a process started after it was made (a reboot, a container run again) is resumed; those of live restores stay', async (t) => {
  const { work, src, repo: repoDir } = await smallDeployment();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', repoDir, 'backup', src])).code, 0);
  const other = startedNow(t);
  const seconds = (msAgo: number) => Math.floor((Date.now() - msAgo) / 1000);
  const left = path.join(work, `.out.lifeboat-staging-${other.pid}-${seconds(10 * 60_000)}-0badf00d`);
  const live = path.join(work, `.out.lifeboat-staging-${other.pid}-${seconds(0)}-00c0ffee`);
  // Named by an older version, without the time it was made: judged by its pid alone.
  const older = path.join(work, `.out.lifeboat-staging-${other.pid}-0badcafe`);
  for (const dir of [left, live, older]) await fsp.mkdir(path.join(dir, 'models'), { recursive: true });
  await fsp.copyFile(path.join(src, 'weights.bin'), path.join(left, 'models', 'weights.bin'));

  const r = await lifeboat(['--repo', repoDir, 'restore', 'latest', '--target', path.join(work, 'out')]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`${path.basename(left).replaceAll('.', '\\.')}: resuming an interrupted restore: 1 file\\(s\\), 293\\.0 KiB, already there and verified`));
  await assert.rejects(fsp.access(left), 'the left staging directory became the target');
  await fsp.access(live);
  await fsp.access(older);
  const started = processStart(process.pid);
  assert.match(path.basename(stagingPath(path.join(work, 'out'), false)), new RegExp(`^\\.out\\.lifeboat-staging-${process.pid}-\\d{10}${started ? `-${formatStart(started)}` : ''}-[0-9a-f]{8}$`));
});

test('a staging directory whose name records its process start is judged by it, not by the clock: a live restore\'s made before the clock stepped forward stays, one of a pid given again after the clock stepped back is resumed', { skip: processStart(process.pid) === undefined && 'the system does not tell when a process started (no /proc)' }, async (t) => {
  const { work, src, repo: repoDir } = await smallDeployment();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', repoDir, 'backup', src])).code, 0);
  const other = startedNow(t);
  const start = processStart(other.pid!)!;
  const seconds = (msAgo: number) => Math.floor((Date.now() - msAgo) / 1000);
  // Its restore runs: made, by the clock of then, 10 minutes before that process started by the clock of now.
  const live = path.join(work, `.out.lifeboat-staging-${other.pid}-${seconds(10 * 60_000)}-${formatStart(start)}-00c0ffee`);
  // Made by another process of that pid, 10 minutes ahead of the clock of now.
  const left = path.join(work, `.out.lifeboat-staging-${other.pid}-${seconds(-10 * 60_000)}-${formatStart({ ...start, ticks: start.ticks + 1 })}-0badf00d`);
  for (const dir of [left, live]) await fsp.mkdir(path.join(dir, 'models'), { recursive: true });
  await fsp.copyFile(path.join(src, 'weights.bin'), path.join(left, 'models', 'weights.bin'));

  const r = await lifeboat(['--repo', repoDir, 'restore', 'latest', '--target', path.join(work, 'out')]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`${path.basename(left).replaceAll('.', '\\.')}: resuming an interrupted restore: 1 file\\(s\\)`));
  await assert.rejects(fsp.access(left), 'the left staging directory became the target');
  await fsp.access(live);
});

test('what an interrupted failover to another point left under a short name, named by a link, is removed with its link; its own and live ones stay', async (t) => {
  const slots = await tempDir();
  t.after(() => fsp.rm(slots, { recursive: true, force: true }));
  const gone = 2 ** 22 + 999;
  const made = async (dir: string, link: string) => {
    await fsp.mkdir(path.join(slots, dir, 'models'), { recursive: true });
    await fsp.symlink(dir, path.join(slots, link));
  };
  await made('.lb0badf00', `.20261101-000000-000F.lifeboat-staging-${gone}-0badf00d`);
  await made('.lb0badcaf', `.20261102-000000-000F.lifeboat-staging-${gone}-0badcafe`);
  await made('.lb00c0ffe', `.20261103-000000-000F.lifeboat-staging-${process.pid}-00c0ffee`);
  const removed = await removeOtherStaging(path.join(slots, '20261102-000000-000F'));
  assert.deepEqual(removed, [`.20261101-000000-000F.lifeboat-staging-${gone}-0badf00d`]);
  assert.deepEqual((await fsp.readdir(slots)).sort(), ['.20261102-000000-000F.lifeboat-staging-' + gone + '-0badcafe', `.20261103-000000-000F.lifeboat-staging-${process.pid}-00c0ffee`, '.lb00c0ffe', '.lb0badcaf'].sort());
});

test('a restore stopped by a file larger than the file-size limit (EFBIG) says what to do, and leaves nothing it would claim to go on from', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  const target = path.join(d.work, 'restored');
  // weights.bin holds 300,000 bytes: past a limit of 100 KiB; the other files fit.
  for (let run = 0; run < 2; run++) {
    const r = await runChild(['--repo', d.repo, 'restore', 'latest', '--target', target], { ulimit: { f: 100 } });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^lifeboat: cannot restore into .*restored: EFBIG: file too large.*\n {2}a file grew past the largest size that the file system of .*restored, or this process's file-size limit \(ulimit -f\), allows: raise the limit, or use another file system\n$/);
    assert.doesNotMatch(r.stderr, /goes on from|resuming/);
  }
  assert.deepEqual(await fsp.readdir(d.work), ['models', 'repo'], 'no staging directory is left beside the target, and no target');
  const whole = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', target]);
  assert.equal(whole.code, 0, whole.stderr);
});

test('a second restore into a target another restore is writing exits 4 at once, naming it, instead of both rewriting it; a lock its killed owner left is taken over', async (t) => {
  const { work, src, repo } = await smallDeployment();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', repo, 'backup', src])).code, 0);
  const first = await snapshotTree(src);
  await fsp.writeFile(path.join(src, 'config.json'), '{"vocab_size": 64000}');
  await fsp.rm(path.join(src, 'tok'), { recursive: true });
  assert.equal((await lifeboat(['--repo', repo, 'backup', src])).code, 0);
  const second = await snapshotTree(src);
  const points = (await lifeboat(['--repo', repo, '--json', 'list'])).json().map((p: { id: string }) => p.id);
  const target = path.join(work, 'restored');
  assert.equal((await lifeboat(['--repo', repo, 'restore', points[0], '--target', target])).code, 0);

  // Another restore into it runs (a cron's restore --delta beside an operator's): its lock names it.
  const lock = path.join(work, '.restored.lifeboat-restoring');
  const holder = startedNow(t);
  await fsp.symlink(`${holder.pid}-${Math.floor(Date.now() / 1000)}`, lock);
  const refused = await runChild(['--repo', repo, 'restore', points[1], '--target', target, '--delta']);
  assert.equal(refused.code, 4, refused.stderr);
  assert.match(refused.stderr, new RegExp(`^lifeboat: restore target ${target} is being restored by another lifeboat process \\(pid ${holder.pid}, since .*\\)\\n {2}wait for it to finish, then run this restore again; if that process is gone, remove ${lock}\\n$`));
  assert.equal(compareSnapshots(first, await snapshotTree(path.join(target, 'models'))), undefined, 'the target is as the other restore has it');

  // Killed before it could remove its lock: the next restore takes it over, and removes it when done.
  holder.kill('SIGKILL');
  await new Promise((resolve) => holder.once('exit', resolve));
  const r = await runChild(['--repo', repo, 'restore', points[1], '--target', target, '--delta']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(compareSnapshots(second, await snapshotTree(path.join(target, 'models'))), undefined);
  assert.deepEqual((await fsp.readdir(work)).filter((n) => n.startsWith('.restored')), [], 'no lock or staging directory left');
});

test("a restore target's lock names its process's start as the system counts it (ticks since boot), so a clock stepped by more than a minute neither makes a live owner look gone nor a pid given again look like its owner", { skip: processStart(process.pid) === undefined && 'the system does not tell when a process started (no /proc)' }, async (t) => {
  const { work, src, repo } = await smallDeployment();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', repo, 'backup', src])).code, 0);
  const target = path.join(work, 'restored');
  const lock = path.join(work, '.restored.lifeboat-restoring');

  const unlock = await lockRestoreTarget(target, false);
  assert.match(await fsp.readlink(lock), new RegExp(`^${process.pid}-\\d+-${processStart(process.pid)!.ticks}-[0-9a-f]{8}$`), 'this process and its start');
  await unlock();

  // A live restore that took its lock, after which the clock was stepped forward 10 minutes: its recorded time is 10 minutes before its start by the clock now.
  const holder = startedNow(t);
  const start = processStart(holder.pid!);
  assert.ok(start, 'the system tells when it started');
  const before = Math.floor(Date.now() / 1000) - 600;
  await fsp.symlink(`${holder.pid}-${before}-${formatStart(start)}`, lock);
  const refused = await runChild(['--repo', repo, 'restore', 'latest', '--target', target]);
  assert.equal(refused.code, 4, refused.stderr);
  assert.match(refused.stderr, new RegExp(`being restored by another lifeboat process \\(pid ${holder.pid}, `));
  await assert.rejects(fsp.access(target), 'nothing restored');

  // The same pid given to another process (the owner gone, the clock stepped back): its start differs, whatever the recorded time says.
  await fsp.rm(lock);
  await fsp.symlink(`${holder.pid}-${Math.floor(Date.now() / 1000) + 600}-${formatStart({ ...start, ticks: start.ticks - 1 })}`, lock);
  const taken = await runChild(['--repo', repo, 'restore', 'latest', '--target', target]);
  assert.equal(taken.code, 0, taken.stderr);
  await assert.rejects(fsp.access(lock), 'taken over, and removed when done');
});
