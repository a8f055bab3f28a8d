import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { BIN, lifeboat, runChild, spawnLifeboat } from './helpers/cli.js';
import { prng, seedFromEnv, tempDir } from './helpers/tree.js';
import { repoFiles, smallDeployment } from './helpers/repo.js';
import { waitFor } from './helpers/processes.js';
import { RuntimeFailure } from '../src/errors.js';
import type { Notice } from '../src/core/events.js';
import { Repository } from '../src/core/repository.js';
import { verify } from '../src/core/verify.js';
import { LocalStorage } from '../src/storage/local.js';

test('a backup killed with SIGKILL at any moment leaves no visible point; the next backup cleans up', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const rand = prng(seed);
  const d = await smallDeployment({ bigFiles: 3, bigSize: 48 << 20, seed });
  const first = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'full']);
  assert.equal(first.code, 0, first.stderr);
  const committed = [first.json().id];

  for (let round = 0; round < 6; round++) {
    const child = spawnLifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'full']);
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    // Kill somewhere between start-up and the end of the data transfer.
    const delay = Math.floor(rand() * 700);
    await new Promise((r) => setTimeout(r, delay));
    child.kill('SIGKILL');
    const code = await exited;
    const list = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json();
    // A kill that lands after the manifest is committed finds a complete point (verify below proves it).
    if (code === 0 || list.length === committed.length + 1) committed.push(list[list.length - 1].id);
    assert.deepEqual(list.map((p: { id: string }) => p.id), committed, `after a kill at ${delay} ms only committed points are visible`);
    const v = await lifeboat(['--repo', d.repo, '--json', 'verify', '--read-data']);
    assert.equal(v.code, 0, `verify after a kill at ${delay} ms: ${v.stdout}`);
    assert.equal(v.json().ok, true);
  }

  const next = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'incr']);
  assert.equal(next.code, 0, next.stderr);
  const after = await repoFiles(d.repo);
  const ids = new Set([...committed, next.json().id]);
  for (const f of after) {
    if (f.startsWith('data/')) assert.ok(ids.has(f.split('/')[1]!), `leftover ${f} was removed`);
    assert.ok(!f.startsWith('.tmp/'), `temporary ${f} was removed`);
    assert.ok(f !== 'locks/lock.json', 'no lock is left behind');
  }
  const v = await lifeboat(['--repo', d.repo, '--json', 'verify', '--read-data']);
  assert.deepEqual(v.json().warnings, []);
  await fsp.rm(d.work, { recursive: true, force: true });
});

/** The files in a local repository's temporary directory, with their sizes. */
async function temporaryFiles(repo: string): Promise<{ name: string; size: number }[]> {
  const dir = path.join(repo, '.tmp');
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  const found = await Promise.all(names.map(async (name) => ({ name, size: (await fsp.stat(path.join(dir, name)).catch(() => undefined))?.size })));
  return found.filter((f): f is { name: string; size: number } => f.size !== undefined);
}

/** Starts a full backup of `d` and waits until it is writing a volume (a temporary file past 1 MiB: documents are smaller). */
async function backupWritingAVolume(t: TestContext, d: { repo: string; src: string }): Promise<{ child: ChildProcess; exited: Promise<number | null> }> {
  const child = spawnLifeboat(['--repo', d.repo, 'backup', d.src, '--type', 'full']);
  child.stdout!.resume();
  child.stderr!.resume();
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  t.after(() => void child.kill('SIGKILL'));
  const writing = await waitFor(async () => (await temporaryFiles(d.repo)).some((f) => f.size > 1 << 20), 20_000);
  assert.ok(writing, 'the backup started writing a volume');
  return { child, exited };
}

test('a volume half written by a backup killed with SIGKILL is reported by verify, and removed by the next backup, which says so', async (t) => {
  const d = await smallDeployment({ bigFiles: 3, bigSize: 48 << 20 });
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const { child, exited } = await backupWritingAVolume(t, d);
  child.kill('SIGKILL');
  await exited;
  const left = await temporaryFiles(d.repo);
  assert.ok(left.some((f) => f.name.startsWith(`${child.pid}-`) && f.size > 1 << 20), `the killed backup's volume is left: ${JSON.stringify(left)}`);

  const v = await lifeboat(['--repo', d.repo, '--json', 'verify', '--read-data']);
  assert.equal(v.code, 0, v.stderr);
  assert.equal(v.json().ok, true, 'leftovers are warnings, not problems');
  const warned = v.json().warnings.filter((w: { code: string }) => w.code === 'leftovers');
  assert.deepEqual(
    warned.map((w: { path: string }) => w.path).sort(),
    left.map((f) => `.tmp/${f.name}`).sort(),
  );
  // One line for them all when there are several.
  const [one] = left;
  const said = left.length === 1 ? `\\.tmp/${one!.name}: a temporary file of ${one!.size} bytes, left by a write that never finished` : `${left.length} temporary files of ${left.reduce((n, f) => n + f.size, 0)} bytes in all, left by writes that never finished`;
  assert.match(v.stderr, new RegExp(`warning: ${said}.*the next backup or prune removes (it|them) if its credentials may delete`));

  const next = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src]);
  assert.equal(next.code, 0, next.stderr);
  assert.match(next.stderr, new RegExp(left.length === 1 ? `\\.tmp/${one!.name}: removed a temporary file of ${one!.size} bytes` : `removed ${said}`));
  assert.deepEqual(await temporaryFiles(d.repo), []);
  const after = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  assert.deepEqual(after.json().warnings, []);
});

test('many writes that never finished are one warning of a text verify, and one line of the backup that removes them; --json lists each', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  // What writers stopped long ago left: the names of no live process.
  const names = Array.from({ length: 40 }, (_, i) => `left-${String(i).padStart(2, '0')}`);
  for (const name of names) await fsp.writeFile(path.join(d.repo, '.tmp', name), Buffer.alloc(100));
  const json = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  assert.equal(json.code, 0, json.stderr);
  assert.deepEqual(json.json().warnings.map((w: { path: string }) => w.path).sort(), names.map((n) => `.tmp/${n}`));
  const text = await lifeboat(['--repo', d.repo, 'verify']);
  assert.equal(text.code, 0, text.stderr);
  const warnings = text.stderr.split('\n').filter((l) => l.includes('warning:'));
  assert.equal(warnings.length, 1, text.stderr);
  assert.match(warnings[0]!, /warning: 40 temporary files of 4000 bytes in all, left by writes that never finished \(backups or other commands that were stopped\): \.tmp\/left-\d\d, \.tmp\/left-\d\d, \.tmp\/left-\d\d and 37 more; the next backup or prune removes them if/);
  const next = await lifeboat(['--repo', d.repo, 'backup', d.src]);
  assert.equal(next.code, 0, next.stderr);
  assert.equal(next.stderr.split('\n').filter((l) => l.includes('removed')).length, 1, next.stderr);
  assert.match(next.stderr, /removed 40 temporary files of 4000 bytes in all/);
  assert.deepEqual(await temporaryFiles(d.repo), []);
});

test('the data of several aborted backups is one warning of a text verify, and one line of the backup that removes it, with how many and the first few ids; --json lists each', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  // What five backups killed on five nights left: volumes under ids no point was committed as.
  const ids = Array.from({ length: 5 }, (_, i) => `2025010${i + 1}-030000-000F`);
  for (const id of ids) {
    await fsp.mkdir(path.join(d.repo, 'data', id), { recursive: true });
    await fsp.writeFile(path.join(d.repo, 'data', id, 'vol-000001.tar'), Buffer.alloc(1024));
  }
  const json = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  assert.equal(json.code, 0, json.stderr);
  assert.deepEqual(json.json().warnings.map((w: { path: string }) => w.path).sort(), ids.map((id) => `data/${id}/`));
  const text = await lifeboat(['--repo', d.repo, 'verify']);
  const warnings = text.stderr.split('\n').filter((l) => l.includes('warning:'));
  assert.equal(warnings.length, 1, text.stderr);
  assert.match(warnings[0]!, /warning: 5 object\(s\), 5120 bytes, left by 5 aborted backups under data\/: 20250101-030000-000F, 20250102-030000-000F, 20250103-030000-000F and 2 more; the next backup or prune removes them if/);
  const next = await lifeboat(['--repo', d.repo, 'backup', d.src]);
  assert.equal(next.code, 0, next.stderr);
  assert.deepEqual(next.stderr.split('\n').filter((l) => l.includes('removed')).map((l) => l.replace(/^\S+ /, '')), ['removed 5 object(s), 5120 bytes, left by 5 aborted backups under data/: 20250101-030000-000F, 20250102-030000-000F, 20250103-030000-000F and 2 more']);
  const left = await fsp.readdir(path.join(d.repo, 'data'));
  assert.deepEqual(left.filter((id) => ids.includes(id)), []);
});

test('the temporary file of a backup that is running is not a leftover: verify names the backup writing it', async (t) => {
  const d = await smallDeployment({ bigFiles: 3, bigSize: 48 << 20 });
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const { child, exited } = await backupWritingAVolume(t, d);
  // Stopped, it holds the lock and its volume stays half written for as long as verify takes.
  child.kill('SIGSTOP');
  const writing = (await temporaryFiles(d.repo)).filter((f) => f.name.startsWith(`${child.pid}-`));
  assert.ok(writing.length > 0);
  const v = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  child.kill('SIGCONT');
  assert.equal(v.code, 0, v.stderr);
  assert.deepEqual(v.json().warnings, [], 'what a live backup is writing is no leftover');
  for (const f of writing) assert.match(v.stderr, new RegExp(`\\.tmp/${f.name}: being written by the running backup on .+, pid ${child.pid}\\b`));
  assert.equal(await exited, 0, 'the backup went on to the end');
  assert.deepEqual(await temporaryFiles(d.repo), []);
});

test('a temporary file left by an earlier process with the same pid (every run of a container may have it) is still a leftover', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  // Written an hour ago by a process with this test's pid, which runs the commands below in itself.
  const name = `${process.pid}-0123456789ab`;
  const file = path.join(d.repo, '.tmp', name);
  await fsp.mkdir(path.dirname(file), { recursive: true });
  await fsp.writeFile(file, Buffer.alloc(3000, 1));
  const anHourAgo = new Date(Date.now() - 3_600_000);
  await fsp.utimes(file, anHourAgo, anHourAgo);
  const v = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  assert.deepEqual(v.json().warnings.map((w: { code: string; path: string }) => [w.code, w.path]), [['leftovers', `.tmp/${name}`]]);
  const next = await lifeboat(['--repo', d.repo, 'backup', d.src]);
  assert.equal(next.code, 0, next.stderr);
  assert.match(next.stderr, new RegExp(`\\.tmp/${name}: removed a temporary file of 3000 bytes`));
  assert.deepEqual(await temporaryFiles(d.repo), []);
});

test('the temporary file of a live process that holds no lock (another deployment\'s backup trying the lock, a restore registering) is not removed by a backup that ends meanwhile', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  // Its write in flight, as a waiting backup's try at the lock is for the instant it lasts.
  const writer = spawn('sleep', ['60'], { stdio: 'ignore' });
  t.after(() => void writer.kill('SIGKILL'));
  const name = `${writer.pid}-0123456789ab`;
  const file = path.join(d.repo, '.tmp', name);
  await fsp.writeFile(file, Buffer.alloc(300, 1));

  const v = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  assert.deepEqual(v.json().warnings, [], 'what a live process is writing is no leftover');
  assert.match(v.stderr, new RegExp(`\\.tmp/${name}: being written by the running process ${writer.pid} on `));
  const during = await lifeboat(['--repo', d.repo, 'backup', d.src]);
  assert.equal(during.code, 0, during.stderr);
  assert.doesNotMatch(during.stderr, /removed a temporary file/);
  assert.deepEqual(await temporaryFiles(d.repo), [{ name, size: 300 }]);

  // Its writer gone, it is a leftover like any other.
  const gone = new Promise((r) => writer.on('exit', r));
  writer.kill('SIGKILL');
  await gone;
  const after = await lifeboat(['--repo', d.repo, 'backup', d.src]);
  assert.equal(after.code, 0, after.stderr);
  assert.match(after.stderr, new RegExp(`\\.tmp/${name}: removed a temporary file of 300 bytes`));
  assert.deepEqual(await temporaryFiles(d.repo), []);
});

test('verify goes on, saying so, where incomplete writes cannot be listed (S3 credentials without s3:ListBucketMultipartUploads)', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  const refusing = new Proxy(new LocalStorage(d.repo), {
    get: (target, name) =>
      name === 'incompleteWrites'
        ? async function* (): AsyncIterable<never> {
            throw new RuntimeFailure('list incomplete uploads under / failed: HTTP 403 AccessDenied');
          }
        : Reflect.get(target, name),
  });
  const notices: Notice[] = [];
  const result = await verify(await Repository.open(refusing), { reporter: { notice: (n) => notices.push(n) } });
  assert.equal(result.ok, true);
  assert.deepEqual(result.warnings, []);
  assert.ok(notices.some((n) => n.level === 'info' && n.code === 'incomplete-writes-unlisted' && /AccessDenied/.test(n.message)), JSON.stringify(notices));
});

for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  test(`${signal} stops a backup cleanly with exit 130 and leaves the repository consistent`, async () => {
    const d = await smallDeployment({ bigFiles: 4, bigSize: 48 << 20 });
    const child = spawnLifeboat(['--repo', d.repo, 'backup', d.src, '--type', 'full']);
    const stderr: Buffer[] = [];
    child.stderr!.on('data', (c: Buffer) => stderr.push(c));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    // Interrupt once volume data is being written.
    const started = await waitFor(async () => (await temporaryFiles(d.repo)).length > 0, 20_000);
    assert.ok(started, 'the backup started writing');
    child.kill(signal);
    assert.equal(await exited, 130, Buffer.concat(stderr).toString());
    assert.match(Buffer.concat(stderr).toString(), new RegExp(`${signal} received, stopping cleanly`));
    const files = await repoFiles(d.repo);
    assert.deepEqual(files, ['config.json'], 'nothing but the config remains: no volume, temporary file or lock');
    assert.equal((await lifeboat(['--repo', d.repo, '--json', 'list'])).json().length, 0);
    const v = await lifeboat(['--repo', d.repo, '--json', 'verify']);
    assert.equal(v.code, 0);
    await fsp.rm(d.work, { recursive: true, force: true });
  });
}

const hasScript = spawnSync('script', ['--version'], { stdio: 'ignore' }).status === 0;

test('a backup whose terminal goes away (an SSH session that drops) stops cleanly and leaves the repository consistent', { skip: hasScript ? false : 'script (util-linux) is not installed' }, async () => {
  const d = await smallDeployment({ bigFiles: 4, bigSize: 48 << 20 });
  // `script` lends the backup a terminal; killing it closes that terminal: the backup gets SIGHUP, and EIO when it writes there.
  const command = [process.execPath, BIN, '--repo', d.repo, 'backup', d.src, '--type', 'full'].map((a) => JSON.stringify(a)).join(' ');
  const terminal = spawn('script', ['-qfc', command, '/dev/null'], { stdio: 'ignore' });
  const started = await waitFor(async () => (await temporaryFiles(d.repo)).length > 0, 20_000);
  assert.ok(started, 'the backup started writing');
  terminal.kill('SIGKILL');
  // Listed while the backup removes its files: a folder that vanishes meanwhile is a look too early.
  const cleaned = await waitFor(() => repoFiles(d.repo).then((files) => files.join() === 'config.json', () => false), 20_000);
  if (!cleaned) assert.fail(`the backup did not clean up after itself: ${(await repoFiles(d.repo).catch(() => [])).join(', ')}`);
  assert.equal((await lifeboat(['--repo', d.repo, '--json', 'list'])).json().length, 0);
  assert.equal((await lifeboat(['--repo', d.repo, 'verify'])).code, 0);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('a backup whose manifest cannot be written (a file-size limit, a full disk) leaves no summary of a point that does not exist', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  // Empty files take no room in a volume, and a line each in the manifest: it is the manifest that goes past 100 KiB.
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  for (let i = 0; i < 2000; i++) await fsp.writeFile(path.join(src, `empty-shard-with-a-long-name-${i}.txt`), '');
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const failed = await runChild(['--repo', repo, 'backup', src, '--type', 'full'], { ulimit: { f: 100 } });
  assert.equal(failed.code, 1, failed.stderr);
  assert.match(failed.stderr, /^lifeboat: cannot write points\/[^ ]+\.json: EFBIG/);
  assert.deepEqual(await repoFiles(repo), ['config.json', 'deployments.json']);
  const v = await lifeboat(['--repo', repo, '--json', 'verify']);
  assert.deepEqual(v.json().warnings, []);
});
