import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat, runChild } from './helpers/cli.js';
import { removeTree } from '../src/format/remove-tree.js';
import { tempDir, writeRandomFile, prng } from './helpers/tree.js';

const NOBODY = 65534;
// Root reads whatever the modes say: as root, lifeboat runs as nobody, to whom a file of mode 000 is closed.
const asRoot = process.geteuid?.() === 0;
const user = asRoot ? { uid: NOBODY, gid: NOBODY } : undefined;

/** A work directory that the user the commands run as may enter, with a source `models` holding a config. */
async function workWithModels(t: TestContext): Promise<{ work: string; src: string }> {
  const work = await tempDir();
  t.after(() => removeTree(work));
  await fsp.chmod(work, 0o755);
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  await fsp.writeFile(path.join(src, 'config.json'), '{"layers": 2}');
  return { work, src };
}

test('a file the backup may not read is left out with a warning, small or large, and the point holds and counts the rest; --strict refuses it', async (t) => {
  const { work, src } = await workWithModels(t);
  await writeRandomFile(path.join(src, 'weights.bin'), 3 << 20, prng(7));
  await fsp.writeFile(path.join(src, 'secret.txt'), 'kept from the backup user');
  await writeRandomFile(path.join(src, 'secret.bin'), 2 << 20, prng(8));
  if (asRoot) for (const p of [work, src, ...(await fsp.readdir(src)).map((n) => path.join(src, n))]) await fsp.lchown(p, NOBODY, NOBODY);
  for (const name of ['secret.txt', 'secret.bin']) await fsp.chmod(path.join(src, name), 0o000);
  const repo = path.join(work, 'repo');
  const run = (...args: string[]) => runChild(['--repo', repo, ...args], { user });
  assert.equal((await run('init')).code, 0);

  const strict = await run('backup', '--source', `models=${src}`, '--strict');
  assert.equal(strict.code, 3, strict.stderr);
  assert.match(strict.stderr, /refused by --strict/);

  const b = await run('--json', 'backup', '--source', `models=${src}`);
  assert.equal(b.code, 0, b.stderr);
  const doc = b.json();
  assert.deepEqual(
    doc.warnings.map((w: { code: string; path: string }) => [w.code, w.path]).sort(),
    [['unreadable', 'models/secret.bin'], ['unreadable', 'models/secret.txt']],
  );
  assert.match(doc.warnings[0].message, /EACCES.*not in this point/);
  // Counted as stored, not as scanned.
  assert.equal(doc.files, 2);
  assert.equal(doc.bytes, '{"layers": 2}'.length + (3 << 20));
  const listed = (await run('--json', 'list')).json();
  assert.equal(listed[0].files, 2);
  assert.equal(listed[0].bytes, doc.bytes);
  const out = path.join(work, 'out');
  const r = await run('restore', 'latest', '--target', out);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual((await fsp.readdir(path.join(out, 'models'))).sort(), ['config.json', 'weights.bin']);
  assert.equal((await run('verify', '--read-data')).code, 0);
});

test('a directory the backup may not read is recorded empty with its mode 000, and the point restores for its owner, with --force and --delta too', async (t) => {
  const { work, src } = await workWithModels(t);
  await fsp.mkdir(path.join(src, 'private'));
  await fsp.writeFile(path.join(src, 'private', 'token'), 'kept from the backup user');
  if (asRoot) for (const p of [work, src, path.join(src, 'config.json'), path.join(src, 'private'), path.join(src, 'private', 'token')]) await fsp.lchown(p, NOBODY, NOBODY);
  await fsp.chmod(path.join(src, 'private'), 0o000);
  const repo = path.join(work, 'repo');
  const run = (...args: string[]) => runChild(['--repo', repo, ...args], { user });
  assert.equal((await run('init')).code, 0);
  const b = await run('--json', 'backup', '--source', `models=${src}`);
  assert.equal(b.code, 0, b.stderr);
  assert.deepEqual(b.json().warnings.map((w: { path: string }) => w.path), ['models/private']);

  // Syncing the restored directory opens it: with mode 000 that failed, and so did every restore of the point.
  const out = path.join(work, 'out');
  for (const how of [[], ['--force'], ['--delta']]) {
    const r = await run('restore', 'latest', '--target', out, ...how);
    assert.equal(r.code, 0, `${how.join(' ') || 'restore'}: ${r.stderr}`);
    assert.equal((await fsp.stat(path.join(out, 'models', 'private'))).mode & 0o7777, 0, 'the recorded mode, given back after the sync');
    assert.equal(await fsp.readFile(path.join(out, 'models', 'config.json'), 'utf8'), '{"layers": 2}');
  }
  // The model checks of verify --deep walk the restored tree: the closed directory holds nothing they could read.
  const deep = await run('verify', 'latest', '--deep');
  assert.equal(deep.code, 0, deep.stderr);
});

test('a local repository this user may not write or read is refused with exit 2, as S3\'s 403 is, with a hint naming the user', { skip: asRoot ? false : 'needs root to run lifeboat as another user' }, async (t) => {
  const { work, src } = await workWithModels(t);
  const repo = path.join(work, 'repo');
  // The repository is root's, made and backed up to as root; the commands below run as nobody.
  const asOwner = await runChild(['--repo', repo, 'init']);
  assert.equal(asOwner.code, 0, asOwner.stderr);
  assert.equal((await runChild(['--repo', repo, 'backup', src])).code, 0);
  const run = (...args: string[]) => runChild(['--repo', repo, ...args], { user });

  for (const args of [['backup', src], ['prune', '--keep-full', '1'], ['--json', 'backup', src]]) {
    const r = await run(...args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /cannot write locks\/lock\.json: EACCES/);
    assert.match(r.stderr, new RegExp(`this user \\(uid ${NOBODY}\\) may not write in the repository: run lifeboat as the user that owns it`));
    if (args[0] === '--json') assert.equal(r.json().error.exitCode, 2);
  }
  await fsp.chmod(path.join(repo, 'points'), 0o700);
  const list = await run('list');
  assert.equal(list.code, 2, list.stderr);
  assert.match(list.stderr, /cannot list points: EACCES.*\n.*may not read the repository/);
  // Reading is still allowed where the modes allow it.
  await fsp.chmod(path.join(repo, 'points'), 0o755);
  assert.equal((await run('list')).code, 0);
});

/** A work directory anyone may enter, with a repository of root's that anyone may read, holding one point of `models`. */
async function rootsRepository(t: TestContext): Promise<{ work: string; src: string; repo: string }> {
  const { work, src } = await workWithModels(t);
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const b = await lifeboat(['--repo', repo, 'backup', src]);
  assert.equal(b.code, 0, b.stderr);
  return { work, src, repo };
}

test('a restore target this user may not reach or list is one sentence, exit 1, not an unexpected error', { skip: asRoot ? false : 'needs root to run lifeboat as another user' }, async (t) => {
  const { work, repo } = await rootsRepository(t);
  const closed = path.join(work, 'closed');
  await fsp.mkdir(path.join(closed, 'old'), { recursive: true });
  await fsp.chmod(closed, 0o700);
  for (const [target, ...how] of [[path.join(closed, 'out')], [closed, '--force'], [closed, '--delta']]) {
    const r = await runChild(['--repo', repo, 'restore', 'latest', '--target', target!, ...how], { user });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`cannot look into restore target ${target}: EACCES`));
    assert.match(r.stderr, /check that this user may enter every directory above/);
    assert.doesNotMatch(r.stderr, /unexpected/);
  }
  assert.deepEqual(await fsp.readdir(closed), ['old']);
});

test("a restore lock and a staging directory another user's restore left in a shared directory (/tmp): the lock is named with what to do, the staging directory is left with a warning", { skip: asRoot ? false : 'needs root to run lifeboat as another user' }, async (t) => {
  const { work, src, repo } = await rootsRepository(t);
  const shared = path.join(work, 'shared');
  await fsp.mkdir(shared);
  await fsp.chmod(shared, 0o1777);
  // What a restore of root's, killed, left: its lock (a process that no longer runs) and its staging directory.
  const gone = `${2 ** 22 + 77}-${Math.floor(Date.now() / 1000) - 3600}`;
  const lock = path.join(shared, '.out.lifeboat-restoring');
  await fsp.symlink(gone, lock);
  const staging = path.join(shared, `.out.lifeboat-staging-${gone}-0badcafe`);
  await fsp.mkdir(path.join(staging, 'models'), { recursive: true, mode: 0o700 });
  await fsp.writeFile(path.join(staging, 'models', 'config.json'), '{"layers": 2}');
  const target = path.join(shared, 'out');
  const restore = () => runChild(['--repo', repo, 'restore', 'latest', '--target', target], { user });

  // Said to be changing hands, exit 4, as though another restore were starting: it was waited for in vain.
  const locked = await restore();
  assert.equal(locked.code, 1, locked.stderr);
  assert.match(locked.stderr, new RegExp(`restore target ${target} holds the lock ${lock} of uid 0, left by a restore that is gone, and this user may not remove it`));
  assert.match(locked.stderr, /remove it as its owner or as root, then run this restore again/);
  assert.doesNotMatch(locked.stderr, /changing hands/);
  // A target whose name ends in a space is named in quotes, as the other errors about a restore target name it (its lock's name ends otherwise).
  const spaced = path.join(shared, 'out ');
  await fsp.symlink(gone, path.join(shared, '.out .lifeboat-restoring'));
  const quoted = await runChild(['--repo', repo, 'restore', 'latest', '--target', spaced], { user });
  assert.equal(quoted.code, 1, quoted.stderr);
  assert.ok(quoted.stderr.includes(`restore target ${JSON.stringify(spaced)} holds the lock ${path.join(shared, '.out .lifeboat-restoring')} of uid 0`), quoted.stderr);
  await fsp.rm(path.join(shared, '.out .lifeboat-restoring'));

  await fsp.rm(lock);
  // Root's staging directory cannot be removed by this user: an unexpected error stopped every restore there.
  const r = await restore();
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`warning: ${staging}: left by an interrupted restore of another user \\(uid 0\\), which this user may not remove`));
  assert.equal(await fsp.readFile(path.join(target, 'models', 'config.json'), 'utf8'), await fsp.readFile(path.join(src, 'config.json'), 'utf8'));
  assert.equal((await fsp.stat(target)).uid, NOBODY);
  assert.ok((await fsp.stat(staging)).isDirectory(), "root's staging directory is left to root");
  const json = await runChild(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--force'], { user });
  assert.equal(json.code, 0, json.stderr);
  assert.ok(json.json().warnings.some((w: { code: string; path: string }) => w.code === 'staging-left' && w.path === staging), json.stdout);
});

test('a drill or verify --deep whose work directory (--work-dir, or TMPDIR) this user may not write says so in one sentence, exit 1, not an unexpected error', { skip: asRoot ? false : 'needs root to run lifeboat as another user' }, async (t) => {
  const { work, repo } = await rootsRepository(t);
  const closed = path.join(work, 'closed');
  await fsp.mkdir(closed);
  const runs = [
    { args: ['drill', '--work-dir', closed], purpose: 'restore the point into for the drill', where: closed },
    { args: ['verify', '--deep', '--work-dir', path.join(closed, 'sub')], purpose: 'restore \\S+ into for its model checks', where: path.join(closed, 'sub') },
    { args: ['drill'], env: { TMPDIR: closed }, purpose: 'restore the point into for the drill', where: closed },
    { args: ['verify', '--deep'], env: { TMPDIR: closed }, purpose: 'restore \\S+ into for its model checks', where: closed },
  ];
  for (const { args, env, purpose, where } of runs) {
    const r = await runChild(['--repo', repo, ...args], { user, env });
    assert.equal(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`cannot make a directory to ${purpose}, under ${where}: EACCES`));
    assert.match(r.stderr, new RegExp(`check that this user may write ${where}, or give another place with --work-dir${env ? ' \\(or TMPDIR\\)' : '\n'}`));
    assert.doesNotMatch(r.stderr, /unexpected/);
  }
  const json = await runChild(['--repo', repo, '--json', 'drill', '--work-dir', closed], { user });
  assert.equal(json.code, 1, json.stderr);
  assert.equal(json.json().ok, false);
  assert.equal(json.json().error.exitCode, 1);
});

test('run from a working directory this user may not enter (sudo -u from /root), a command given --repo runs: there is no lifeboat.yaml there for it; one it may enter but not read is still refused', { skip: asRoot ? false : 'needs root to run lifeboat as another user' }, async (t) => {
  const { work, repo } = await rootsRepository(t);
  const closed = path.join(work, 'closed');
  await fsp.mkdir(closed, { mode: 0o700 });
  // Every command failed: "cannot read config file …/closed/lifeboat.yaml", though there was none.
  const list = await runChild(['--repo', repo, '--json', 'list'], { user, cwd: closed });
  assert.equal(list.code, 0, list.stderr);
  assert.equal(list.json().length, 1);
  const none = await runChild(['list'], { user, cwd: closed });
  assert.equal(none.code, 2, none.stderr);
  assert.match(none.stderr, /no repository given/);

  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ${repo}\n`, { mode: 0o600 });
  const unreadable = await runChild(['--repo', repo, 'list'], { user, cwd: work });
  assert.equal(unreadable.code, 2, unreadable.stderr);
  assert.match(unreadable.stderr, /cannot read config file .*lifeboat\.yaml: EACCES/);
});

test("a drill, verify --deep or failover by another user of a point of root's whose modes close a directory or a file to that user passes, instead of a checksum failure or an unexpected error", { skip: asRoot ? false : 'needs root to run lifeboat as another user' }, async (t) => {
  const { work, src } = await workWithModels(t);
  // Root reads what these modes close: a directory it may list but not enter, a file of mode 000.
  await fsp.mkdir(path.join(src, 'cache'));
  await fsp.writeFile(path.join(src, 'cache', 'index.json'), '{}');
  await fsp.chmod(path.join(src, 'cache'), 0o644);
  await fsp.writeFile(path.join(src, 'sealed.bin'), 'kept from others');
  await fsp.chmod(path.join(src, 'sealed.bin'), 0o000);
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const b = await lifeboat(['--repo', repo, 'backup', src]);
  assert.equal(b.code, 0, b.stderr);
  await fsp.chmod(path.join(src, 'cache'), 0o755);

  // "2 file(s) differ from the manifest: …: EACCES", exit 3, though the restore had checked every SHA-256.
  const drill = await runChild(['--repo', repo, 'drill'], { user });
  assert.equal(drill.code, 0, drill.stderr);
  assert.match(drill.stdout, /ok {4}checksums 1 files read back, every SHA-256 matches the manifest; 2 this user may not read back \(closed to it by the modes the point records\) were checked as they were written/);
  // The model checks stopped at the file they could not stat: an unexpected error.
  const deep = await runChild(['--repo', repo, 'verify', '--deep'], { user });
  assert.equal(deep.code, 0, deep.stderr);
  const slots = path.join(work, 'slots');
  await fsp.mkdir(slots);
  await fsp.chown(slots, NOBODY, NOBODY);
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ${repo}\ntargets:\n  prod: { slots: ${slots}/s, active: ${slots}/current }\n`);
  const failover = await runChild(['failover', '--to', 'prod'], { user, cwd: work });
  assert.equal(failover.code, 0, failover.stderr);
  assert.equal((await fsp.stat(path.join(slots, 'current', 'models', 'cache'))).mode & 0o7777, 0o644);
});
