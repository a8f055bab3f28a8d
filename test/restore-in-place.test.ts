import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { lifeboat, type CliRun } from './helpers/cli.js';
import { crashMidTransaction } from './helpers/writer.js';
import { compareSnapshots, mutateTree, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile } from './helpers/tree.js';
import { inNamespace, unshare } from './helpers/namespace.js';
import { startedNow } from './helpers/processes.js';

/** A host's layout: sources in unrelated directories, one of them a database. */
async function host(work: string, rand: () => number): Promise<{ models: string; triton: string }> {
  const models = path.join(work, 'srv', 'models');
  const triton = path.join(work, 'etc', 'triton');
  await fsp.mkdir(path.join(models, 'llama', 'tokenizer'), { recursive: true });
  await fsp.mkdir(triton, { recursive: true });
  for (let i = 0; i < 6; i++) await writeRandomFile(path.join(models, 'llama', `shard-${i}.bin`), 1000 + Math.floor(rand() * 200_000), rand);
  await fsp.writeFile(path.join(models, 'llama', 'tokenizer', 'tokenizer.json'), '{"model": {"vocab": {}}}');
  await fsp.chmod(models, 0o750);
  await fsp.writeFile(path.join(triton, 'config.pbtxt'), 'name: "llama"\n');
  await fsp.mkdir(path.join(work, 'state'));
  const db = new Database(path.join(work, 'state', 'registry.db'));
  db.exec('CREATE TABLE versions (name TEXT); INSERT INTO versions VALUES (\'v1\');');
  db.close();
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./srv/models\n  triton: ./etc/triton\n  registry: { sqlite: ./state/registry.db }\n');
  return { models, triton };
}

test('restore --in-place puts each directory source back where it was backed up from; every directory is checked before any is written', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const seed = seedFromEnv();
  const rand = prng(seed);
  const { models, triton } = await host(work, rand);
  const run = (...args: string[]): Promise<CliRun> => lifeboat(args, { cwd: work });
  const ok = async (...args: string[]): Promise<CliRun> => {
    const r = await run(...args);
    assert.equal(r.code, 0, `seed ${seed}: lifeboat ${args.join(' ')}: ${r.stderr}`);
    return r;
  };
  const state = async () => ({ models: await snapshotTree(models), triton: await snapshotTree(triton), modelsMode: (await fsp.stat(models)).mode & 0o7777 });
  const matches = async (expected: Awaited<ReturnType<typeof state>>, how: string) => {
    const now = await state();
    assert.equal(compareSnapshots(expected.models, now.models), undefined, `seed ${seed}: ${how}: models`);
    assert.equal(compareSnapshots(expected.triton, now.triton), undefined, `seed ${seed}: ${how}: triton`);
    assert.equal(now.modelsMode.toString(8), expected.modelsMode.toString(8), `${how}: the source directory's own mode`);
  };
  await ok('init');
  const full = (await ok('--json', 'backup', '--type', 'full')).json().id as string;
  const atFull = await state();

  // The host loses its models; someone edits the serving config.
  await fsp.rm(models, { recursive: true });
  await fsp.writeFile(path.join(triton, 'config.pbtxt'), 'name: "broken"\n');
  await fsp.writeFile(path.join(triton, 'stray.txt'), 'left by hand');
  const refused = await run('restore', full, '--in-place');
  assert.equal(refused.code, 2, refused.stderr);
  assert.match(refused.stderr, new RegExp(`restore target ${triton} is not empty\n  use --delta to rewrite only what differs from the point, or --force to replace it\n`));
  assert.doesNotMatch(refused.stderr, /choose an empty directory/, 'in place, there is no other directory to choose');
  assert.equal(await fsp.stat(models).catch(() => undefined), undefined, 'nothing was restored before the refusal');

  const delta = await ok('--json', 'restore', full, '--in-place', '--delta');
  await matches(atFull, '--in-place --delta');
  const doc = delta.json();
  assert.equal(doc.target, null);
  assert.deepEqual(doc.sources.map((s: { source: string; target: string }) => [s.source, s.target]), [['models', models], ['triton', triton]]);
  assert.equal(doc.files, doc.sources.reduce((n: number, s: { files: number }) => n + s.files, 0));
  assert.match(delta.stderr, /registry \(sqlite state\) is not restored in place/);

  // A new version, then back to the full with --force: nothing is left beside the directories.
  await mutateTree(models, rand, 1, { operations: 8, sizeOf: (r) => Math.floor(r() * 50_000) });
  await ok('backup');
  await ok('restore', full, '--in-place', '--force');
  await matches(atFull, '--in-place --force');
  assert.deepEqual((await fsp.readdir(path.dirname(models))).sort(), ['models']);
  assert.deepEqual((await fsp.readdir(path.dirname(triton))).sort(), ['triton']);

  // --include with --delta rewrites only what the patterns choose, in the sources they choose.
  await fsp.writeFile(path.join(models, 'llama', 'tokenizer', 'tokenizer.json'), '{}');
  await fsp.writeFile(path.join(models, 'llama', 'shard-0.bin'), 'truncated');
  await fsp.writeFile(path.join(triton, 'config.pbtxt'), 'name: "edited"\n');
  await ok('restore', full, '--in-place', '--delta', '--include', 'models/llama/tokenizer');
  const now = await state();
  assert.equal(now.models.get('llama/tokenizer/tokenizer.json')?.sha256, atFull.models.get('llama/tokenizer/tokenizer.json')?.sha256);
  assert.notEqual(now.models.get('llama/shard-0.bin')?.sha256, atFull.models.get('llama/shard-0.bin')?.sha256, 'outside the pattern: left alone');
  assert.equal(await fsp.readFile(path.join(triton, 'config.pbtxt'), 'utf8'), 'name: "edited"\n', 'a source the patterns do not choose: left alone');

  // A source whose bytes are damaged fails the restore (exit 3) before any directory is moved into place: the sources before it are left as they were too.
  const manifest = JSON.parse(await fsp.readFile(path.join(work, 'repo', 'points', `${full}.json`), 'utf8'));
  const config = manifest.entries.find((e: { source: string; path: string }) => e.source === 'triton' && e.path === 'config.pbtxt');
  const volume = path.join(work, 'repo', manifest.volumes[config.ref.volume].key);
  const bytes = await fsp.readFile(volume);
  bytes[config.ref.offset + 512]! ^= 0x20;
  await fsp.writeFile(volume, bytes);
  await fsp.writeFile(path.join(models, 'llama', 'tokenizer', 'tokenizer.json'), '{"edited": true}');
  const edited = await snapshotTree(models);
  const damaged = await run('restore', full, '--in-place', '--force');
  assert.equal(damaged.code, 3, damaged.stderr);
  assert.doesNotMatch(damaged.stderr, /restored before/);
  assert.equal(compareSnapshots(edited, await snapshotTree(models)), undefined, 'models, staged before the failure, left as they were');
  assert.deepEqual((await fsp.readdir(path.dirname(models))).sort(), ['models'], 'its staging directory removed, as a restore that meets damage removes its own');
  assert.equal(await fsp.readFile(path.join(triton, 'config.pbtxt'), 'utf8'), 'name: "edited"\n', 'triton, left as it was');

  for (const [args, message] of [
    [['--in-place', '--force', '--include', 'models/llama'], /--force with --include would replace each source directory/],
    [['--in-place', '--target', path.join(work, 'elsewhere')], /--in-place restores each source to the directory it was backed up from: it takes no --target/],
  ] as const) {
    const r = await run('restore', full, ...args);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, message);
  }
});

test('restore --in-place of a source backed up through a symbolic link goes into the directory the link leads to; a link that leads nowhere is refused', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const data = path.join(work, 'data', 'models');
  await fsp.mkdir(data, { recursive: true });
  await fsp.writeFile(path.join(data, 'weights.bin'), 'weights v1');
  const link = path.join(work, 'models');
  await fsp.symlink(data, link);
  const run = (...args: string[]) => lifeboat(['--repo', path.join(work, 'repo'), ...args]);
  assert.equal((await run('init')).code, 0);
  const b = await run('--json', 'backup', link);
  assert.equal(b.code, 0, b.stderr);
  await fsp.writeFile(path.join(data, 'weights.bin'), 'damaged');

  const r = await run('restore', 'latest', '--in-place', '--delta');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`models goes back to ${data} \\(through the link ${link}\\)`));
  assert.equal(await fsp.readFile(path.join(data, 'weights.bin'), 'utf8'), 'weights v1');
  assert.equal((await fsp.lstat(link)).isSymbolicLink(), true, 'the link stays a link');

  await fsp.rm(path.join(work, 'data'), { recursive: true });
  const dangling = await run('restore', 'latest', '--in-place');
  assert.equal(dangling.code, 2, dangling.stderr);
  assert.match(dangling.stderr, /a symbolic link that leads to no directory now/);

  // A directory on the way that is a link to nothing now (a volume not mounted): the hint says to mount it, and names no
  // --target, which an in-place restore does not take.
  const under = path.join(work, 'mnt', 'models');
  await fsp.mkdir(under, { recursive: true });
  await fsp.writeFile(path.join(under, 'weights.bin'), 'weights v2');
  assert.equal((await run('backup', under)).code, 0);
  await fsp.rm(path.join(work, 'mnt'), { recursive: true });
  await fsp.symlink(path.join(work, 'volume-not-mounted'), path.join(work, 'mnt'));
  const unmounted = await run('restore', 'latest', '--in-place');
  assert.equal(unmounted.code, 2, unmounted.stderr);
  assert.match(unmounted.stderr, /is a symbolic link to .*volume-not-mounted, which does not exist\n {2}make the directory it points to first \(or mount what should be there\)\n$/);
});

/** The repository's journal entries (none before the first restore or failover). */
const journalOf = (work: string) => fsp.readdir(path.join(work, 'repo', 'journal')).catch(() => [] as string[]);

test('restore --dry-run says what a restore would write, rewrite and remove, and writes nothing: not the target, not the journal', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const { models, triton } = await host(work, prng(seedFromEnv()));
  const run = (...args: string[]): Promise<CliRun> => lifeboat(args, { cwd: work });
  assert.equal((await run('init')).code, 0);
  const b = await run('--json', 'backup');
  assert.equal(b.code, 0, b.stderr);
  await fsp.writeFile(path.join(models, 'llama', 'shard-1.bin'), 'damaged');
  for (let i = 0; i < 25; i++) await fsp.writeFile(path.join(triton, `stray-${i}.txt`), 'left by hand');
  const before = { models: await snapshotTree(models), triton: await snapshotTree(triton), journal: await journalOf(work), beside: await fsp.readdir(path.dirname(models)) };

  const delta = await run('--json', 'restore', 'latest', '--in-place', '--delta', '--dry-run');
  assert.equal(delta.code, 0, delta.stderr);
  const [m, tr] = delta.json().sources;
  assert.deepEqual([m.rewritten, m.removed, m.dryRun], [1, 0, true]);
  assert.deepEqual([tr.rewritten, tr.unchanged, tr.removed], [0, 1, 25]);
  assert.equal(tr.removals.length, 20, 'the first 20 removals are named; all are counted');
  assert.ok(tr.removals.every((p: string) => /^stray-\d+\.txt$/.test(p)), JSON.stringify(tr.removals));
  // -n, as backup and prune take it.
  const text = await run('restore', 'latest', '--in-place', '--delta', '-n');
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /models → .*: \d+ files \(1 would be rewritten, \d+ unchanged, 0 would be removed\)/);
  assert.match(text.stdout, /triton → .*: 1 file \(0 would be rewritten, 1 unchanged, 25 would be removed: stray-.*, …\)/);

  const fresh = path.join(work, 'fresh');
  const into = await run('--json', 'restore', 'latest', '--target', fresh, '--dry-run');
  assert.equal(into.code, 0, into.stderr);
  assert.equal(into.json().files, b.json().files);
  await assert.rejects(fsp.access(fresh), 'an absent target stays absent');
  // The refusals are the restore's own.
  assert.equal((await run('restore', 'latest', '--in-place', '--dry-run')).code, 2);

  assert.equal(compareSnapshots(before.models, await snapshotTree(models)), undefined);
  assert.equal(compareSnapshots(before.triton, await snapshotTree(triton)), undefined);
  assert.deepEqual(await journalOf(work), before.journal, 'a dry run is not journaled');
  assert.deepEqual(await fsp.readdir(path.dirname(models)), before.beside, 'no staging directory');
});

test('restore --in-place --state puts serving state back as a failover does: the SQLite registry copied into the live database, a command fed its captured output', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await host(work, prng(seedFromEnv()));
  await fsp.writeFile(path.join(work, 'state', 'features.json'), '{"version": "A"}\n');
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    'repository: ./repo\nsources:\n  models: ./srv/models\n  registry: { sqlite: ./state/registry.db, restore: true }\n  features: { command: "cat state/features.json", restore: "cat > state/features.restored" }\n',
  );
  const run = (...args: string[]): Promise<CliRun> => lifeboat(args, { cwd: work });
  assert.equal((await run('init')).code, 0);
  const b = await run('--json', 'backup');
  assert.equal(b.code, 0, b.stderr);
  const db = path.join(work, 'state', 'registry.db');
  const live = new Database(db);
  live.exec("INSERT INTO versions VALUES ('v2')");
  live.close();

  const dry = await run('--json', 'restore', 'latest', '--in-place', '--delta', '--state', '--dry-run');
  assert.equal(dry.code, 0, dry.stderr);
  assert.deepEqual(dry.json().state, ['registry', 'features']);
  await assert.rejects(fsp.access(path.join(work, 'state', 'features.restored')), 'a dry run puts nothing back');

  const r = await run('--json', 'restore', 'latest', '--in-place', '--delta', '--state');
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.json().state, ['registry', 'features']);
  const restored = new Database(db, { readonly: true });
  assert.deepEqual(restored.prepare('SELECT name FROM versions ORDER BY name').all(), [{ name: 'v1' }]);
  restored.close();
  assert.equal(await fsp.readFile(path.join(work, 'state', 'features.restored'), 'utf8'), '{"version": "A"}\n');
  assert.equal((await fsp.readdir(path.join(work, 'state'))).filter((n) => n.startsWith('registry.db.lifeboat-replaced-')).length, 1, 'what the database held is kept beside it');

  const without = await run('restore', 'latest', '--target', path.join(work, 'x'), '--state');
  assert.equal(without.code, 2);
  assert.match(without.stderr, /--state puts serving state back with --in-place/);
  const notAsked = await run('restore', 'latest', '--in-place', '--delta');
  assert.match(notAsked.stderr, /registry \(sqlite state\) is not restored in place: --state puts it back/);

  // A restore command that fails: what was put back before it is named, since it stays.
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    'repository: ./repo\nsources:\n  models: ./srv/models\n  registry: { sqlite: ./state/registry.db, restore: true }\n  features: { command: "cat state/features.json", restore: "exit 7" }\n',
  );
  assert.equal((await run('backup')).code, 0);
  const failing = await run('restore', 'latest', '--in-place', '--delta', '--state');
  assert.equal(failing.code, 1, failing.stderr);
  assert.match(failing.stderr, /restored before the state failed: models to .*srv\/models.*, the state of registry; features not put back/);
});

/** A host whose registry database is put back with --state, its repository made; removed after the test. */
async function registryHost(t: { after(fn: () => Promise<unknown>): void }): Promise<{ work: string; run: (...args: string[]) => Promise<CliRun> }> {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await host(work, prng(seedFromEnv()));
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./srv/models\n  registry: { sqlite: ./state/registry.db, restore: true }\n');
  const run = (...args: string[]): Promise<CliRun> => lifeboat(args, { cwd: work });
  assert.equal((await run('init')).code, 0);
  return { work, run };
}

test('restore --state into a SQLite database a writer holds locked fails saying so and leaves it as it was, instead of reporting it put back', async (t) => {
  const { work, run } = await registryHost(t);
  const live = new Database(path.join(work, 'state', 'registry.db'));
  live.pragma('journal_mode = wal');
  assert.equal((await run('backup')).code, 0);
  live.exec("INSERT INTO versions VALUES ('v2')");
  const names = () => live.prepare('SELECT name FROM versions ORDER BY name').all();

  // A transaction that writes for longer than the restore waits: the registry is not put back.
  live.exec("BEGIN IMMEDIATE; INSERT INTO versions VALUES ('v3')");
  const locked = await run('restore', 'latest', '--in-place', '--delta', '--state');
  live.exec('COMMIT');
  assert.equal(locked.code, 1, locked.stderr);
  assert.match(locked.stderr, /source registry: .*registry\.db stayed locked by another connection/);
  assert.deepEqual(names(), [{ name: 'v1' }, { name: 'v2' }, { name: 'v3' }], 'the live database keeps what it had');

  const free = await run('--json', 'restore', 'latest', '--in-place', '--delta', '--state');
  assert.equal(free.code, 0, free.stderr);
  assert.deepEqual(free.json().state, ['registry']);
  assert.deepEqual(names(), [{ name: 'v1' }]);
  live.close();
});

/**
 * Runs `restore --state` over a live registry in a state that cannot be copied aside, checks that
 * the point's state is in place and that two files were kept beside it, and returns their names.
 */
async function restoreStateOverDamage(work: string, run: (...args: string[]) => Promise<CliRun>, db: string): Promise<{ r: CliRun; kept: string[] }> {
  const r = await run('restore', 'latest', '--in-place', '--delta', '--state');
  assert.equal(r.code, 0, r.stderr);
  const restored = new Database(db, { readonly: true });
  assert.deepEqual(restored.prepare('SELECT name FROM versions').all(), [{ name: 'v1' }]);
  restored.close();
  const kept = (await fsp.readdir(path.join(work, 'state'))).filter((n) => n.startsWith('registry.db.lifeboat-replaced-')).sort();
  assert.equal(kept.length, 2, kept.join(', '));
  return { r, kept };
}

test('restore --state puts a SQLite registry back over a live file that is no database any more, keeping that file and its write-ahead log aside', async (t) => {
  const { work, run } = await registryHost(t);
  assert.equal((await run('backup')).code, 0);
  const db = path.join(work, 'state', 'registry.db');
  await fsp.writeFile(db, 'overwritten by a stray log rotation\n');
  await fsp.writeFile(`${db}-wal`, 'the log of what was there\n');

  const { r, kept } = await restoreStateOverDamage(work, run, db);
  assert.equal(await fsp.readFile(path.join(work, 'state', kept[0]!), 'utf8'), 'overwritten by a stray log rotation\n');
  assert.equal(await fsp.readFile(path.join(work, 'state', kept[1]!), 'utf8'), 'the log of what was there\n');
  assert.match(kept[1]!, /-wal$/);
  assert.match(r.stderr, /the state \S+registry\.db had before is kept as /);
});

test('restore --state stages the state under --work-dir when TMPDIR is too small, and refuses before any directory is written when it does not fit', { skip: unshare ? false : 'unshare cannot make a mount namespace here' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights');
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./models\n  features: { command: "head -c 3000000 /dev/zero", restore: "wc -c > restored.txt" }\n');
  await fsp.mkdir(path.join(work, 'out'));
  // TMPDIR on a 1 MiB file system: the 3 MB of state do not fit there.
  const script = [
    'cd "$WORK"',
    'mkdir small && mount -t tmpfs -o size=1m tmpfs small',
    'node "$BIN" init > /dev/null',
    'node "$BIN" backup 2> /dev/null',
    'echo changed > models/w.bin',
    'status=0; TMPDIR="$WORK/small" node "$BIN" restore latest --in-place --delta --state 2> out/small.txt || status=$?',
    'echo "$status" > out/status.txt',
    'cp models/w.bin out/untouched.txt',
    'ls -A small > out/left.txt',
    'TMPDIR="$WORK/small" node "$BIN" --json restore latest --in-place --delta --state --work-dir "$WORK/staging/new" > out/restore.json',
  ].join('\n');
  inNamespace(script, { WORK: work });
  const read = (name: string) => fsp.readFile(path.join(work, 'out', name), 'utf8');
  assert.equal((await read('status.txt')).trim(), '1');
  assert.match(await read('small.txt'), new RegExp(`lifeboat: the state to put back needs 2\\.86 MiB on the file system of ${work}/small, and .* is free\\n {2}free space there, or lifeboat restore --work-dir DIR \\(or TMPDIR\\) stages the state elsewhere\\n$`));
  assert.equal(await read('untouched.txt'), 'changed\n', 'no directory was written before the refusal');
  assert.equal((await read('left.txt')).trim(), '', 'nothing is left in TMPDIR');
  assert.deepEqual(JSON.parse(await read('restore.json')).state, ['features']);
  assert.equal(await fsp.readFile(path.join(work, 'models', 'w.bin'), 'utf8'), 'weights');
  assert.equal((await fsp.readFile(path.join(work, 'restored.txt'), 'utf8')).trim(), '3000000');
  assert.deepEqual(await fsp.readdir(path.join(work, 'staging', 'new')), [], 'the staging directory is emptied');

  // A restore of directories is staged beside each one: --work-dir has nothing to do there.
  const refused = await lifeboat(['restore', 'latest', '--in-place', '--delta', '--work-dir', path.join(work, 'w')], { cwd: work });
  assert.equal(refused.code, 2);
  assert.match(refused.stderr, /--work-dir goes with --state\n {2}a restore of directories is staged beside each one/);
  const file = await lifeboat(['restore', 'latest', '--in-place', '--state', '--work-dir', 'lifeboat.yaml'], { cwd: work });
  assert.equal(file.code, 2);
  assert.match(file.stderr, /--work-dir lifeboat\.yaml: .*lifeboat\.yaml is not a directory/);
});

test('a command source\'s restore command runs as long as the source\'s timeout allows, as its capture does, not a fixed few minutes', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const config = (timeout: string) =>
    fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ./repo\nsources:\n  features: { command: "echo A", restore: "sleep 3; cat > restored", timeout: ${timeout} }\n`);
  await config('1s');
  const run = (...args: string[]): Promise<CliRun> => lifeboat(args, { cwd: work });
  assert.equal((await run('init')).code, 0);
  assert.equal((await run('backup')).code, 0);
  const short = await run('restore', 'latest', '--in-place', '--state');
  assert.equal(short.code, 1, short.stderr);
  assert.match(short.stderr, /restore command of source features timed out after 1000 ms/);
  await config('1m');
  const long = await run('restore', 'latest', '--in-place', '--state');
  assert.equal(long.code, 0, long.stderr);
  assert.equal(await fsp.readFile(path.join(work, 'restored'), 'utf8'), 'A\n');
});

test('restore --in-place --delta over an unchanged tree leaves its files alone: their times stay exact, their change times do not move, and the next incremental reads none of them', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const models = path.join(work, 'models');
  await fsp.mkdir(path.join(models, 'tok'), { recursive: true });
  const files = ['config.json', 'weights.bin', 'tok/vocab.txt'];
  for (const [i, f] of files.entries()) {
    await fsp.writeFile(path.join(models, f), `content ${i}\n`);
    // A time below the microsecond, as file systems keep them: the finest a restore could set is a microsecond.
    execFileSync('touch', ['-d', `@1763800000.75002658${i}`, path.join(models, f)]);
  }
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./models\n');
  const ok = async (...args: string[]): Promise<CliRun> => {
    const r = await lifeboat(args, { cwd: work });
    assert.equal(r.code, 0, `lifeboat ${args.join(' ')}: ${r.stderr}`);
    return r;
  };
  await ok('init');
  await ok('backup', '--type', 'full');
  const times = async () => Promise.all(files.map(async (f) => {
    const st = await fsp.lstat(path.join(models, f), { bigint: true });
    return `${f} mtime ${st.mtimeNs} ctime ${st.ctimeNs} mode ${st.mode}`;
  }));
  const before = await times();
  // Change times come from a clock that moves every few milliseconds.
  await new Promise((r) => setTimeout(r, 50));
  const delta = await ok('--json', 'restore', 'latest', '--in-place', '--delta');
  assert.equal(delta.json().sources[0].rewritten, 0);
  assert.deepEqual(await times(), before);
  const incr = await ok('--json', 'backup', '--type', 'incr');
  assert.equal(incr.json().changed, 0);
  assert.equal(incr.json().storedBytes, 0);

  // A file whose mode and time were changed by hand gets them back; the others are still left alone.
  await fsp.chmod(path.join(models, 'config.json'), 0o600);
  execFileSync('touch', ['-d', '@1700000000', path.join(models, 'config.json')]);
  const touched = (await times())[0];
  await new Promise((r) => setTimeout(r, 50));
  await ok('restore', 'latest', '--in-place', '--delta');
  const after = await times();
  assert.deepEqual(after.slice(1), before.slice(1));
  assert.notEqual(after[0], touched);
  const config = await fsp.lstat(path.join(models, 'config.json'), { bigint: true });
  assert.equal(config.mode & 0o7777n, 0o644n);
  assert.equal(config.mtimeNs / 1000n, 1763800000750026580n / 1000n);
});

test('a restore never deletes or writes into the repository: a --delta over a tree that holds it leaves it alone, --force and targets inside it are refused', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'srv', 'models');
  await fsp.mkdir(path.join(src, 'llama'), { recursive: true });
  await fsp.writeFile(path.join(src, 'llama', 'config.json'), '{"layers": 2}');
  const repo = path.join(src, 'backups', 'repo');
  const run = (...args: string[]) => lifeboat(['--repo', repo, ...args]);
  const ok = async (...args: string[]) => {
    const r = await run(...args);
    assert.equal(r.code, 0, `lifeboat ${args.join(' ')}: ${r.stderr}`);
    return r;
  };
  // The repository inside the source: backups leave it out.
  await ok('init');
  await ok('backup', '--source', `models=${src}`);
  const listed = async () => (await ok('--json', 'list')).json().length;
  assert.equal(await listed(), 1);

  await fsp.writeFile(path.join(src, 'llama', 'config.json'), '{"layers": 3}');
  const dry = await ok('--json', 'restore', 'latest', '--in-place', '--delta', '--dry-run');
  assert.equal(dry.json().sources[0].removed, 0, 'the repository is not listed for removal');
  await ok('restore', 'latest', '--in-place', '--delta');
  assert.equal(await fsp.readFile(path.join(src, 'llama', 'config.json'), 'utf8'), '{"layers": 2}');
  assert.equal(await listed(), 1, 'the repository is still there');
  await ok('verify', '--read-data');

  const refusals: [string[], RegExp][] = [
    [['restore', 'latest', '--in-place', '--force'], /holds the repository .*--force would delete it/],
    [['restore', 'latest', '--target', path.join(work, 'srv'), '--force'], /holds the repository/],
    [['restore', 'latest', '--target', repo, '--delta'], /lies inside the repository/],
    [['restore', 'latest', '--target', path.join(repo, 'data', 'out')], /lies inside the repository/],
  ];
  for (const [args, why] of refusals) {
    const r = await run(...args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, why);
    assert.equal(await listed(), 1, `${args.join(' ')}: the repository is still there`);
  }
  // A point of another tree with a file where the repository is: a --delta of it over this tree is refused, nothing written.
  const other = path.join(work, 'other', 'models');
  await fsp.mkdir(other, { recursive: true });
  await fsp.writeFile(path.join(other, 'backups'), 'a file');
  await fsp.writeFile(path.join(other, 'config.json'), '{}');
  const clashing = (await ok('--json', 'backup', '--source', `models=${other}`)).json().id;
  const clash = await run('restore', clashing, '--target', path.join(work, 'srv'), '--delta');
  assert.equal(clash.code, 2, clash.stderr);
  assert.match(clash.stderr, /models\/backups of .* would be restored where the repository is/);
  assert.equal(await fsp.stat(path.join(src, 'config.json')).catch(() => undefined), undefined, 'nothing was written');
  assert.equal(await listed(), 2);
  await ok('verify', '--read-data');
});

test('restore --state puts a SQLite registry back over a live database a writer crashed in, keeping it aside with its hot journal, which rolls the kept copy back', async (t) => {
  const { work, run } = await registryHost(t);
  assert.equal((await run('backup')).code, 0);
  const db = path.join(work, 'state', 'registry.db');
  const live = new Database(db);
  live.exec("INSERT INTO versions VALUES ('v2')");
  live.close();
  crashMidTransaction(db);

  const { kept } = await restoreStateOverDamage(work, run, db);
  assert.match(kept[1]!, /-journal$/);
  const before = new Database(path.join(work, 'state', kept[0]!));
  t.after(() => before.close());
  assert.deepEqual(before.prepare('SELECT name FROM versions').all(), [{ name: 'v1' }, { name: 'v2' }], 'the kept copy opens as the last committed state');
  assert.deepEqual(before.prepare('SELECT count(*) AS n FROM uncommitted').get(), { n: 0 });
});

test('restore --state into a rollback-journal SQLite database a writer holds in an exclusive transaction fails within seconds, not after a minute of copying it aside', { timeout: 60_000 }, async (t) => {
  const { work, run } = await registryHost(t);
  assert.equal((await run('backup')).code, 0);
  const live = new Database(path.join(work, 'state', 'registry.db'));
  t.after(() => live.close());
  live.pragma('journal_mode = delete');
  live.exec("BEGIN EXCLUSIVE; INSERT INTO versions VALUES ('v2')");
  const started = Date.now();
  const locked = await run('restore', 'latest', '--in-place', '--delta', '--state');
  const took = Date.now() - started;
  assert.equal(locked.code, 1, locked.stderr);
  assert.match(locked.stderr, /source registry: .*registry\.db stayed locked by a writer for 3 s/);
  assert.match(locked.stderr, /stop what holds a long transaction on it \(the deactivate hook can\)/);
  assert.ok(took < 20_000, `gave up after ${took} ms`);
  live.exec('COMMIT');
  assert.deepEqual(live.prepare('SELECT name FROM versions ORDER BY name').all(), [{ name: 'v1' }, { name: 'v2' }], 'the live database keeps what it had');
});

test('restore --in-place takes the lock of every directory before writing any: another restore writing the second leaves the first untouched too', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const { models, triton } = await host(work, prng(5));
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const full = (await lifeboat(['--json', 'backup', '--type', 'full'], { cwd: work })).json().id as string;
  await fsp.writeFile(path.join(models, 'llama', 'tokenizer', 'tokenizer.json'), '{"edited": true}');
  await fsp.writeFile(path.join(triton, 'config.pbtxt'), 'name: "edited"\n');
  const before = await snapshotTree(models);

  // Another restore (a cron's restore --in-place --delta) is writing the serving config.
  const holder = startedNow(t);
  const lock = path.join(path.dirname(triton), '.triton.lifeboat-restoring');
  await fsp.symlink(`${holder.pid}-${Math.floor(Date.now() / 1000)}`, lock);
  const refused = await lifeboat(['restore', full, '--in-place', '--delta'], { cwd: work });
  assert.equal(refused.code, 4, refused.stderr);
  assert.match(refused.stderr, new RegExp(`restore target ${triton} is being restored by another lifeboat process \\(pid ${holder.pid},`));
  assert.doesNotMatch(refused.stderr, /restored before/);
  assert.equal(compareSnapshots(before, await snapshotTree(models)), undefined, 'the models, restored first, were not touched');

  holder.kill();
  await new Promise((resolve) => holder.once('exit', resolve));
  const r = await lifeboat(['restore', full, '--in-place', '--delta'], { cwd: work });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await fsp.readFile(path.join(triton, 'config.pbtxt'), 'utf8'), 'name: "llama"\n');
  assert.deepEqual((await fsp.readdir(path.dirname(triton))).filter((n) => n.startsWith('.')), [], 'no lock left');
});

test('a repository whose path ends with a space is named quoted when a restore target lies inside it or holds it', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  await fsp.writeFile(path.join(src, 'config.json'), '{}');
  const repo = path.join(work, 'backups ');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  assert.equal((await lifeboat(['--repo', repo, 'backup', src])).code, 0);
  const inside = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', path.join(repo, 'out')]);
  assert.equal(inside.code, 2, inside.stderr);
  assert.ok(inside.stderr.includes(`lies inside the repository "${repo}"`), inside.stderr);
  const holding = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', work, '--force']);
  assert.equal(holding.code, 2, holding.stderr);
  assert.ok(holding.stderr.includes(`holds the repository ("${repo}")`), holding.stderr);
});
