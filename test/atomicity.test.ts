import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { BIN, lifeboat, spawnLifeboat } from './helpers/cli.js';
import { prng, seedFromEnv } from './helpers/tree.js';
import { repoFiles, smallDeployment } from './helpers/repo.js';
import { waitFor } from './helpers/processes.js';

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

for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  test(`${signal} stops a backup cleanly with exit 130 and leaves the repository consistent`, async () => {
    const d = await smallDeployment({ bigFiles: 4, bigSize: 48 << 20 });
    const child = spawnLifeboat(['--repo', d.repo, 'backup', d.src, '--type', 'full']);
    const stderr: Buffer[] = [];
    child.stderr!.on('data', (c: Buffer) => stderr.push(c));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    // Interrupt once volume data is being written.
    const started = await waitFor(async () => (await fsp.readdir(path.join(d.repo, '.tmp')).catch(() => [])).length > 0, 20_000);
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
  const started = await waitFor(async () => (await fsp.readdir(path.join(d.repo, '.tmp')).catch(() => [])).length > 0, 20_000);
  assert.ok(started, 'the backup started writing');
  terminal.kill('SIGKILL');
  // Listed while the backup removes its files: a folder that vanishes meanwhile is a look too early.
  const cleaned = await waitFor(() => repoFiles(d.repo).then((files) => files.join() === 'config.json', () => false), 20_000);
  if (!cleaned) assert.fail(`the backup did not clean up after itself: ${(await repoFiles(d.repo).catch(() => [])).join(', ')}`);
  assert.equal((await lifeboat(['--repo', d.repo, '--json', 'list'])).json().length, 0);
  assert.equal((await lifeboat(['--repo', d.repo, 'verify'])).code, 0);
  await fsp.rm(d.work, { recursive: true, force: true });
});
