import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { spawnSync } from 'node:child_process';
import { lifeboat, runChild, spawnLifeboat, type CliRun } from './helpers/cli.js';
import { sleep, waitFor } from './helpers/processes.js';
import { runInNamespace, unshare } from './helpers/namespace.js';
import { compareSnapshots, mutateTree, pick, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile, type SnapshotEntry } from './helpers/tree.js';

/*
 * restore --in-place restores the directory sources of a point as one: every source is staged and
 * verified before any directory is moved into place, so a failure, an interrupt or a crash while
 * staging leaves every directory as it was, and a crash among the moves is finished by the next run.
 */

type Host = { work: string; dirs: Record<'models' | 'tokenizers' | 'serving', string>; run: (...args: string[]) => Promise<CliRun> };

/** A host with three directory sources in unrelated places (and a SQLite registry), its repository made. */
async function threeSources(t: { after(fn: () => Promise<unknown>): void }, rand: () => number, tokenizerBytes = 0): Promise<Host> {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const dirs = { models: path.join(work, 'srv', 'models'), tokenizers: path.join(work, 'srv', 'tokenizers'), serving: path.join(work, 'etc', 'serving') };
  await fsp.mkdir(path.join(dirs.models, 'llama'), { recursive: true });
  for (let i = 0; i < 4; i++) await writeRandomFile(path.join(dirs.models, 'llama', `shard-${i}.bin`), 50_000 + Math.floor(rand() * 400_000), rand);
  await fsp.mkdir(path.join(dirs.tokenizers, 'llama'), { recursive: true });
  await writeRandomFile(path.join(dirs.tokenizers, 'llama', 'tokenizer.model'), 20_000 + Math.floor(rand() * 100_000), rand);
  await fsp.writeFile(path.join(dirs.tokenizers, 'llama', 'tokenizer.json'), '{"model": {"vocab": {}}}');
  if (tokenizerBytes > 0) await writeRandomFile(path.join(dirs.tokenizers, 'llama', 'merges.bin'), tokenizerBytes, rand);
  await fsp.mkdir(path.join(dirs.serving, 'llama'), { recursive: true });
  await fsp.writeFile(path.join(dirs.serving, 'llama', 'config.pbtxt'), 'name: "llama"\nmax_batch_size: 8\n'.repeat(40));
  await fsp.symlink('llama/config.pbtxt', path.join(dirs.serving, 'current.pbtxt'));
  await fsp.chmod(path.join(dirs.serving, 'llama'), 0o750);
  await fsp.mkdir(path.join(work, 'state'));
  const db = new Database(path.join(work, 'state', 'registry.db'));
  db.exec("CREATE TABLE versions (name TEXT); INSERT INTO versions VALUES ('v1');");
  db.close();
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    'repository: ./repo\nsources:\n  models: ./srv/models\n  tokenizers: ./srv/tokenizers\n  serving: ./etc/serving\n  registry: { sqlite: ./state/registry.db, restore: true }\n',
  );
  const run = (...args: string[]): Promise<CliRun> => lifeboat(args, { cwd: work });
  assert.equal((await run('init')).code, 0);
  return { work, dirs, run };
}

type Trees = Record<keyof Host['dirs'], Map<string, SnapshotEntry>>;

async function snapshots(host: Host): Promise<Trees> {
  return { models: await snapshotTree(host.dirs.models), tokenizers: await snapshotTree(host.dirs.tokenizers), serving: await snapshotTree(host.dirs.serving) };
}

/** Whether every directory is as `expected` (the missing ones too); the first difference otherwise. */
async function differences(host: Host, expected: Partial<Trees>): Promise<string | undefined> {
  for (const name of ['models', 'tokenizers', 'serving'] as const) {
    const want = expected[name];
    const there = await fsp.stat(host.dirs[name]).then(() => true, () => false);
    if (!want) {
      if (there) return `${name} is there`;
      continue;
    }
    if (!there) return `${name} is missing`;
    const d = compareSnapshots(want, await snapshotTree(host.dirs[name]));
    if (d) return `${name}: ${d}`;
  }
  return undefined;
}

/** What is beside the directories but themselves: staging directories, locks, records. */
async function besides(host: Host): Promise<string[]> {
  const names = [...(await fsp.readdir(path.join(host.work, 'srv'))), ...(await fsp.readdir(path.join(host.work, 'etc')))];
  return names.filter((n) => !['models', 'tokenizers', 'serving'].includes(n));
}

/** Edits each of the three directories, so that a --delta has something to rewrite and remove in each. */
async function editAll(host: Host): Promise<void> {
  await fsp.writeFile(path.join(host.dirs.models, 'llama', 'shard-1.bin'), 'cut short');
  await fsp.writeFile(path.join(host.dirs.models, 'stray.txt'), 'left by hand');
  await fsp.writeFile(path.join(host.dirs.tokenizers, 'llama', 'tokenizer.json'), '{}');
  await fsp.writeFile(path.join(host.dirs.serving, 'llama', 'config.pbtxt'), 'name: "broken"\n');
}

/** Flips a byte of an entry's data in the volume that holds it. */
async function damageEntry(host: Host, point: string, source: string, file: string): Promise<void> {
  const manifest = JSON.parse(await fsp.readFile(path.join(host.work, 'repo', 'points', `${point}.json`), 'utf8'));
  const entry = manifest.entries.find((e: { source: string; path: string }) => e.source === source && e.path === file);
  const volume = path.join(host.work, 'repo', manifest.volumes[entry.ref.volume].key);
  const bytes = await fsp.readFile(volume);
  // The entry's data follows its 512-byte tar header.
  bytes[entry.ref.offset + 512 + 7]! ^= 0x20;
  await fsp.writeFile(volume, bytes);
}

/** threeSources with a seed of its own, and a full backup of it. */
async function backedUp(t: { after(fn: () => Promise<unknown>): void; diagnostic(message: string): void }): Promise<{ seed: number; host: Host; point: string }> {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const host = await threeSources(t, prng(seed));
  const backup = await host.run('--json', 'backup', '--type', 'full');
  assert.equal(backup.code, 0, backup.stderr);
  return { seed, host, point: backup.json().id as string };
}

test('restore --in-place whose third source is damaged fails (exit 3) with the first two directories left byte for byte as they were, not restored', async (t) => {
  const { seed, host, point } = await backedUp(t);
  const atPoint = await snapshots(host);
  await editAll(host);
  const before = await snapshots(host);
  await damageEntry(host, point, 'serving', 'llama/config.pbtxt');

  for (const how of [['--delta'], ['--force']]) {
    const r = await host.run('restore', point, '--in-place', ...how);
    assert.equal(r.code, 3, `seed ${seed}: ${how}: ${r.stderr}`);
    assert.match(r.stderr, /serving\/llama\/config\.pbtxt from volume .* does not match its checksum/);
    assert.doesNotMatch(r.stderr, /restored before/);
    assert.equal(await differences(host, before), undefined, `seed ${seed}: restore --in-place ${how} left a directory changed`);
    // Data that did not verify is not kept: the staging directories of every source go, as a restore that meets damage removes its own.
    assert.deepEqual(await besides(host), [], `restore --in-place ${how}`);
  }

  // With the volume whole again, the same restore goes through.
  await damageEntry(host, point, 'serving', 'llama/config.pbtxt');
  const r = await host.run('restore', point, '--in-place', '--delta');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await differences(host, atPoint), undefined, `seed ${seed}`);
});

/** Whether a file with data is under `dir`. */
async function holdsData(dir: string): Promise<boolean> {
  for (const d of await fsp.readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = path.join(dir, d.name);
    if (d.isDirectory() ? await holdsData(p) : d.isFile() && (await fsp.stat(p).then((st) => st.size > 0, () => false))) return true;
  }
  return false;
}

test('Ctrl-C while restore --in-place fetches its second source stops it (exit 130) with every directory as it was; the next run goes on from what it verified', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  // A large file in the second source, to be interrupted while it is written.
  const host = await threeSources(t, prng(seed), 384 << 20);
  assert.equal((await host.run('backup', '--type', 'full')).code, 0);
  const atPoint = await snapshots(host);
  await editAll(host);
  await fsp.truncate(path.join(host.dirs.tokenizers, 'llama', 'merges.bin'), 1000);
  const before = await snapshots(host);

  const child = spawnLifeboat(['restore', 'latest', '--in-place', '--delta'], { cwd: host.work });
  const stderr: Buffer[] = [];
  child.stderr!.on('data', (c: Buffer) => stderr.push(c));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const staging = async () => (await fsp.readdir(path.join(host.work, 'srv'))).filter((n) => n.startsWith('.tokenizers.lifeboat-staging-')).map((n) => path.join(host.work, 'srv', n));
  const fetching = await waitFor(async () => (await Promise.all((await staging()).map(holdsData))).some(Boolean), 60_000);
  assert.ok(fetching, 'the second source is being fetched');
  child.kill('SIGINT');
  const code = await exited;
  assert.equal(code, 130, Buffer.concat(stderr).toString());
  assert.equal(await differences(host, before), undefined, `seed ${seed}: Ctrl-C left a directory changed`);
  assert.match(Buffer.concat(stderr).toString(), /restore-kept|the files restored so far are kept there/);

  const again = await host.run('restore', 'latest', '--in-place', '--delta');
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, /resuming an interrupted restore/);
  assert.equal(await differences(host, atPoint), undefined, `seed ${seed}`);
  assert.deepEqual(await besides(host), []);
});

test('restore --in-place --state whose state fails verification leaves every directory untouched', async (t) => {
  const { seed, host, point } = await backedUp(t);
  await editAll(host);
  const before = await snapshots(host);
  const manifest = JSON.parse(await fsp.readFile(path.join(host.work, 'repo', 'points', `${point}.json`), 'utf8'));
  const copy = manifest.entries.find((e: { source: string; type: string }) => e.source === 'registry' && e.type === 'file');
  await damageEntry(host, point, 'registry', copy.path);
  const db = new Database(path.join(host.work, 'state', 'registry.db'));
  db.exec("INSERT INTO versions VALUES ('v2')");
  db.close();

  const r = await host.run('restore', point, '--in-place', '--delta', '--state');
  assert.equal(r.code, 3, `seed ${seed}: ${r.stderr}`);
  assert.match(r.stderr, /registry\/.* does not match its checksum/);
  assert.equal(await differences(host, before), undefined, `seed ${seed}: a state that did not verify left a directory changed`);
  const live = new Database(path.join(host.work, 'state', 'registry.db'), { readonly: true });
  assert.deepEqual(live.prepare('SELECT name FROM versions ORDER BY name').all(), [{ name: 'v1' }, { name: 'v2' }], 'the live registry is left as it was');
  live.close();
});

/** Whether a restore has begun to stage the first source (its staging directory is there). */
async function staging(host: Host): Promise<boolean> {
  return (await fsp.readdir(path.join(host.work, 'srv'))).some((n) => n.startsWith('.models.lifeboat-staging-'));
}

/**
 * Runs `args` to the end; how long it took from the moment `begun` (or the first source's staging
 * directory) was seen: the time a kill can land in, past the start of the process and its planning.
 */
async function workTime(host: Host, args: string[]): Promise<number> {
  const child = spawnLifeboat(args, { cwd: host.work });
  let running = true;
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  void exited.then(() => (running = false));
  await waitFor(async () => !running || (await staging(host)), 30_000);
  const begun = Date.now();
  assert.equal(await exited, 0);
  return Date.now() - begun;
}

/**
 * Runs `args`, killed with SIGKILL `ms` after `when` (by default, once the first source is being staged; a
 * path: once it is there); whether it was still running then.
 */
/** Runs lifeboat with `args` and kills it (SIGKILL) `ms` after `when`; true when the kill ended it, false when it had ended by itself first. */
async function killedAfter(host: Host, args: string[], ms: number, when: string | (() => Promise<boolean>) = () => staging(host)): Promise<boolean> {
  const child = spawnLifeboat(args, { cwd: host.work });
  // How it ended, not whether the exit had been seen when the kill was sent: on a loaded machine the event may come late.
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
  let running = true;
  void exited.then(() => (running = false));
  if (typeof when === 'string') {
    // Looked for without a pause: the moves it announces take a few milliseconds.
    for (const until = Date.now() + 10_000; Date.now() < until && !fs.existsSync(when); );
  } else await waitFor(async () => !running || (await when()), 30_000);
  if (ms > 0) await sleep(ms);
  child.kill('SIGKILL');
  return (await exited) === 'SIGKILL';
}

test('restore --in-place --delta killed (SIGKILL) at random moments, staging or moving, and run again leaves every directory exactly at the point', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const rand = prng(seed);
  const host = await threeSources(t, rand);
  assert.equal((await host.run('backup', '--type', 'full')).code, 0);
  const atPoint = await snapshots(host);
  const args = ['restore', 'latest', '--in-place', '--delta'];
  const mutate = async (round: number) => {
    for (const [i, dir] of Object.values(host.dirs).entries()) await mutateTree(dir, rand, round * 3 + i, { operations: 6, sizeOf: (r) => Math.floor(r() * 200_000) });
  };
  await mutate(0);
  const took = await workTime(host, args);
  let killed = 0;
  for (let round = 1; round <= 8; round++) {
    await mutate(round);
    const ms = Math.floor(rand() * took);
    if (await killedAfter(host, args, ms)) killed++;
    const r = await host.run(...args);
    assert.equal(r.code, 0, `seed ${seed}, round ${round}, killed after ${ms} ms: ${r.stderr}`);
    assert.equal(await differences(host, atPoint), undefined, `seed ${seed}, round ${round}, killed after ${ms} ms`);
    assert.deepEqual(await besides(host), [], `seed ${seed}, round ${round}`);
  }
  t.diagnostic(`${killed} of 8 restores killed while they ran (a whole one took ${took} ms once it began to stage)`);
});

test('restore --in-place into directories that are gone, killed (SIGKILL) at random moments, among them while it moves them into place: the same command run again restores them all', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const rand = prng(seed);
  // A large file in the second source: restored one after the other, the first would be in place long before the last.
  const host = await threeSources(t, rand, 48 << 20);
  assert.equal((await host.run('backup', '--type', 'full')).code, 0);
  const atPoint = await snapshots(host);
  const lost = () => Promise.all(Object.values(host.dirs).map((d) => fsp.rm(d, { recursive: true, force: true })));
  await lost();
  const took = await workTime(host, ['restore', 'latest', '--in-place']);
  // Once the moves are about to begin, every directory is told which tree goes there.
  const record = path.join(host.work, 'srv', '.models.lifeboat-moving');
  const moving = () => fsp.lstat(record).then(() => true, () => false);
  let partly = 0;
  for (let round = 1; round <= 10; round++) {
    await lost();
    // Half the rounds at any moment, half as soon as the first directory is moved into place (or as the moves begin).
    const atMoves = round % 2 === 0;
    const ms = atMoves ? 0 : Math.floor(rand() * took);
    await killedAfter(host, ['restore', 'latest', '--in-place'], ms, atMoves ? (rand() < 0.75 ? host.dirs.models : record) : undefined);
    const there = (await Promise.all(Object.values(host.dirs).map((d) => fsp.stat(d).then(() => 1, () => 0)))).reduce((a: number, b) => a + b, 0);
    if (there > 0 && there < 3) partly++;
    t.diagnostic(`round ${round} ms ${ms} there ${there}`);
    // One that finished before it was killed (or as good as: every directory moved, the records removed) leaves nothing
    // to finish: the same command refuses the restored directories, as it refuses any that are not empty.
    if (there === 3 && !(await moving()) && (await differences(host, atPoint)) === undefined) continue;
    const r = await host.run('restore', 'latest', '--in-place');
    assert.equal(r.code, 0, `seed ${seed}, round ${round}, killed after ${ms} ms${atMoves ? ' of the moves' : ''} with ${there} of 3 directories there: ${r.stderr}`);
    assert.equal(await differences(host, atPoint), undefined, `seed ${seed}, round ${round}, killed after ${ms} ms`);
    assert.deepEqual(await besides(host), [], `seed ${seed}, round ${round}`);
  }
  t.diagnostic(`${partly} of 10 kills left some directories moved and others not`);
});

test('restore --in-place checks room for every source on one file system together, before anything is fetched: each fits, both do not, and neither is restored', { skip: unshare ? false : 'unshare cannot make a mount namespace here' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./srv/models\n  tokenizers: ./srv/tokenizers\n');
  const read = await runInNamespace(work, [
    'mkdir -p srv/models srv/tokenizers',
    'head -c 5000000 /dev/urandom > srv/models/w.bin',
    'head -c 5000000 /dev/urandom > srv/tokenizers/t.bin',
    'node "$BIN" init > /dev/null',
    'node "$BIN" backup 2> /dev/null',
    // The host comes back with an 8 MiB disk where the sources were: 4.77 MiB each fit, 9.5 MiB do not.
    'mount -t tmpfs -o size=8m tmpfs srv',
    'status=0; node "$BIN" restore latest --in-place 2> out/stderr.txt || status=$?',
    'echo "$status" > out/status.txt',
    'ls -A srv > out/left.txt',
  ]);
  assert.equal((await read('status.txt')).trim(), '1', await read('stderr.txt'));
  assert.match(await read('stderr.txt'), new RegExp(`the restore needs 9\\.5\\d MiB on the file system of ${work}/srv/models, ${work}/srv/tokenizers, and .* is free`));
  assert.equal((await read('left.txt')).trim(), '', 'neither source was restored, nothing is left beside them');
});

/**
 * Whether `chattr +i` works where tests make their directories (ext4, xfs, btrfs, tmpfs from Linux
 * 6.0, as root): an immutable directory cannot be renamed (EPERM), which makes a move into place
 * fail on cue, after the staging and the moves before it went through.
 */
const chattrWorks = await (async () => {
  if (process.getuid?.() !== 0) return false;
  const dir = await tempDir('lifeboat-chattr-');
  try {
    await fsp.mkdir(path.join(dir, 'd'));
    if (spawnSync('chattr', ['+i', path.join(dir, 'd')]).status !== 0) return false;
    const refused = await fsp.rename(path.join(dir, 'd'), path.join(dir, 'e')).then(() => false, () => true);
    spawnSync('chattr', ['-i', path.join(dir, 'd'), path.join(dir, 'e')]);
    return refused;
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
})();
const NO_CHATTR = 'chattr +i does not make a directory immutable here (not root, or a file system without the attribute)';

/** Makes a directory immutable (it cannot be renamed) until the returned function is called. */
function immutable(dir: string): () => void {
  assert.equal(spawnSync('chattr', ['+i', dir]).status, 0);
  return () => void spawnSync('chattr', ['-i', dir]);
}

/** Runs lifeboat as a process of its own, whose staging directories a later run may take over once it is gone. */
function inChild(host: Host, ...args: string[]): Promise<CliRun> {
  return runChild(args, { cwd: host.work });
}

/** What is beside the directories but staging directories: locks, records, trees set aside. */
async function besidesButStaging(host: Host): Promise<string[]> {
  return (await besides(host)).filter((n) => !/^\.(models|tokenizers|serving)\.lifeboat-staging-\d+-\d+(-\d+-[0-9a-f]{8})?-[0-9a-f]{8}$/.test(n));
}

/** The trees as they are, those gone left out. */
async function snapshotsOfWhatIsThere(host: Host): Promise<Partial<Trees>> {
  const trees: Partial<Trees> = {};
  for (const name of ['models', 'tokenizers', 'serving'] as const) {
    if (await fsp.stat(host.dirs[name]).then(() => true, () => false)) trees[name] = await snapshotTree(host.dirs[name]);
  }
  return trees;
}

test('restore --in-place whose third move fails (an immutable directory: EPERM) puts back the two moved before it, renamed whole or rewritten by --delta: exit 1, every directory byte for byte as it was; the next run restores them all', { skip: chattrWorks ? false : NO_CHATTR }, async (t) => {
  const { seed, host, point } = await backedUp(t);
  const atPoint = await snapshots(host);
  // A rebuilt host: models gone, tokenizers edited with files the point lacks, serving edited and (by the test) immutable.
  await editAll(host);
  await fsp.rm(host.dirs.models, { recursive: true });
  await fsp.writeFile(path.join(host.dirs.tokenizers, 'llama', 'notes.txt'), 'kept by hand');
  await fsp.mkdir(path.join(host.dirs.tokenizers, 'old', 'v1'), { recursive: true });
  await fsp.writeFile(path.join(host.dirs.tokenizers, 'old', 'v1', 'vocab.txt'), 'a\nb\n');
  await fsp.chmod(path.join(host.dirs.tokenizers, 'llama'), 0o700);
  const before = await snapshotsOfWhatIsThere(host);
  // --force renames serving aside, which its immutability refuses; --delta renames a file into llama, which refuses it.
  const mutable = [immutable(host.dirs.serving), immutable(path.join(host.dirs.serving, 'llama'))];
  try {
    for (const how of ['--force', '--delta']) {
      const r = await inChild(host, 'restore', point, '--in-place', how);
      assert.equal(await differences(host, before), undefined, `seed ${seed}: ${how}: a move that failed left a directory changed`);
      assert.equal(r.code, 1, `seed ${seed}: ${how}: ${r.stderr}`);
      assert.match(r.stderr, /cannot restore into .*serving.*operation not permitted/i);
      assert.match(r.stderr, /the directories moved before it were put back: every directory was left as it was/);
      assert.doesNotMatch(r.stderr, /not put back/);
      // The staged trees are kept for the next run to go on from; nothing else is left.
      assert.deepEqual(await besidesButStaging(host), [], how);
    }
  } finally {
    for (const undo of mutable.reverse()) undo();
  }
  const again = await inChild(host, 'restore', point, '--in-place', '--force');
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, /resuming an interrupted restore/);
  assert.equal(await differences(host, atPoint), undefined, `seed ${seed}`);
  assert.deepEqual(await besides(host), []);
});

/** How long a run of `args` takes from the moment its record of moves is there to its end (a few milliseconds at least). */
async function movesTime(host: Host, args: string[], record: string): Promise<number> {
  const child = spawnLifeboat(args, { cwd: host.work });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  for (const until = Date.now() + 30_000; Date.now() < until && !fs.existsSync(record); );
  const begun = Date.now();
  await exited;
  return Math.max(2, Date.now() - begun);
}

/**
 * For killedAfter: waits for the record of moves, then for `seen`, a state that lasts milliseconds, so
 * both are looked for without a pause; for no longer than runs that `took` as long allow.
 */
function recordThen(record: string, seen: () => boolean, took: number): () => Promise<boolean> {
  return async () => {
    for (const until = Date.now() + 30_000; Date.now() < until && !fs.existsSync(record); );
    for (const until = Date.now() + 5 * took + 100; Date.now() < until && !seen(); );
    return true;
  };
}

/** The phase the record of moves beside `dir` says, or `none`. */
async function recordPhase(dir: string): Promise<string> {
  const text = await fsp.readFile(path.join(path.dirname(dir), `.${path.basename(dir)}.lifeboat-moving`), 'utf8').catch(() => undefined);
  return text === undefined ? 'none' : ((JSON.parse(text) as { phase?: string }).phase ?? 'old');
}

test('restore --in-place killed (SIGKILL) at random moments of its moves or of putting them back after one failed: the next run puts back what was left, and every directory is at one point', { skip: chattrWorks ? false : NO_CHATTR }, async (t) => {
  const { seed, host, point } = await backedUp(t);
  const rand = prng(seed + 1);
  const atPoint = await snapshots(host);
  await editAll(host);
  await fsp.rm(host.dirs.tokenizers, { recursive: true });
  const before = await snapshotsOfWhatIsThere(host);
  const args = ['restore', point, '--in-place', '--force'];
  const record = path.join(host.work, 'srv', '.models.lifeboat-moving');
  const mutable = immutable(host.dirs.serving);
  try {
    const took = await movesTime(host, args, record);
    const phases: string[] = [];
    const setAside = () => fs.readdirSync(path.join(host.work, 'srv')).some((n) => n.endsWith('-replaced'));
    for (let round = 1; round <= 12; round++) {
      // Half the rounds at any moment once the record is there; half within 4 ms of the first directory being set aside,
      // the moment the moves, and soon after, the putting back, are under way.
      const atMoves = round % 2 === 0;
      const ms = Math.floor(rand() * (atMoves ? 4 : took));
      await killedAfter(host, args, ms, atMoves ? recordThen(record, setAside, took) : record);
      phases.push(await recordPhase(host.dirs.models));
      // The directory that fails is failing still: the run puts back what the killed one left, stages, fails, puts back again.
      const r = await inChild(host, ...args);
      assert.equal(r.code, 1, `seed ${seed}, round ${round}, killed after ${ms} ms: ${r.stderr}`);
      assert.match(r.stderr, /every directory was left as it was/);
      if (phases.at(-1) !== 'none') assert.match(r.stderr, /put back .* as they were before an interrupted restore --in-place/);
      assert.equal(await differences(host, before), undefined, `seed ${seed}, round ${round}, killed after ${ms} ms${atMoves ? ' of the moves' : ''} (record: ${phases.at(-1)})`);
      assert.deepEqual(await besidesButStaging(host), [], `seed ${seed}, round ${round}`);
    }
    t.diagnostic(`a failing run took ${took} ms from its record of moves to its end; the kills left records: ${phases.join(' ')}`);
  } finally {
    mutable();
  }
  // Killed once more, with nothing failing: the next run ends at the point.
  await killedAfter(host, args, 0, record);
  const r = await inChild(host, ...args);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await differences(host, atPoint), undefined, `seed ${seed}`);
  assert.deepEqual(await besides(host), []);
});

test('status says a directory is part-way through a restore --in-place stopped among its moves (exit 1), which point, and the command that finishes it; that command does', async (t) => {
  const { seed, host, point } = await backedUp(t);
  const atPoint = await snapshots(host);
  await editAll(host);
  // What a restore killed just after it recorded its moves leaves (see docs/FORMAT.md): the record beside each directory, nothing moved yet.
  const staging = path.join(host.work, 'srv', '.models.lifeboat-staging-1-1-0badf00d');
  const record = { point, phase: 'moving', moves: [{ target: host.dirs.models, dev: '0', ino: '0', staging, replaced: `${staging}-replaced` }] };
  await fsp.writeFile(path.join(host.work, 'srv', '.models.lifeboat-moving'), `${JSON.stringify(record)}\n`);

  const text = await host.run('status');
  assert.equal(text.code, 1, text.stderr);
  const command = `lifeboat restore ${point} --in-place --force`;
  assert.match(text.stdout, new RegExp(`source models: ${host.dirs.models} is part-way through a restore --in-place of ${point}, stopped while it moved the directories into place; ${command} finishes it`));
  assert.match(text.stderr, /is part-way through a restore --in-place of .* that was stopped before it finished/);
  const json = await host.run('--json', 'status');
  assert.equal(json.code, 1);
  assert.deepEqual(json.json().inPlace, [{ source: 'models', directory: host.dirs.models, point, phase: 'moving', running: false, command }]);

  const r = await inChild(host, ...command.split(' ').slice(1));
  assert.equal(r.code, 0, `seed ${seed}: ${r.stderr}`);
  assert.match(r.stderr, /put back .*models.* as they were before an interrupted restore --in-place/);
  assert.equal(await differences(host, atPoint), undefined, `seed ${seed}`);
  const after = await host.run('--json', 'status');
  assert.equal(after.code, 0, after.stderr);
  assert.equal(after.json().inPlace, undefined);
});

/** Mounts a bounded tmpfs at `dir`; false when this process may not mount. */
function mountTmpfs(dir: string): boolean {
  return spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', dir]).status === 0;
}
const mayMount = process.getuid?.() === 0 && (await (async () => {
  const dir = await tempDir('lifeboat-mount-');
  try {
    return mountTmpfs(dir) && spawnSync('umount', [dir]).status === 0;
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
})());

/** A snapshot of a mount point without the staging directory a restore keeps inside it for the next one. */
async function withoutStaging(dir: string): Promise<Map<string, SnapshotEntry>> {
  const tree = await snapshotTree(dir);
  for (const p of tree.keys()) if (/^\.lifeboat-staging-/.test(p)) tree.delete(p);
  return tree;
}

test('restore --in-place into a mount point (filled entry by entry) is put back with the rest when a later move fails, and killed (SIGKILL) at random moments among its moves is finished by the next run', { skip: !mayMount ? 'mount -t tmpfs is not permitted here (not root)' : !chattrWorks ? NO_CHATTR : false }, async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const rand = prng(seed);
  const host = await threeSources(t, rand);
  // Many names at the top of the mount point: filling it is a rename each, which takes a while to kill in.
  for (let i = 0; i < 1500; i++) await fsp.writeFile(path.join(host.dirs.tokenizers, `vocab-${i}.txt`), `${i}\n`);
  assert.equal((await host.run('backup', '--type', 'full')).code, 0);
  const atPoint = await snapshots(host);
  assert.ok(mountTmpfs(host.dirs.tokenizers), 'mount a tmpfs at the tokenizers');
  try {
    // A host where the tokenizers are a file system of their own, holding something else; models gone; serving edited.
    const breakHost = async () => {
      for (const name of await fsp.readdir(host.dirs.tokenizers)) if (!name.startsWith('.lifeboat-staging-')) await fsp.rm(path.join(host.dirs.tokenizers, name), { recursive: true });
      await fsp.writeFile(path.join(host.dirs.tokenizers, 'old.txt'), 'what the disk held');
      await fsp.rm(host.dirs.models, { recursive: true, force: true });
      await fsp.writeFile(path.join(host.dirs.serving, 'llama', 'config.pbtxt'), 'name: "broken"\n');
    };
    await breakHost();
    const before = { tokenizers: await snapshotTree(host.dirs.tokenizers), serving: await snapshotTree(host.dirs.serving) };
    const asBefore = async () => (await fsp.stat(host.dirs.models).then(() => 'models is there', () => undefined)) ?? compareSnapshots(before.tokenizers, await withoutStaging(host.dirs.tokenizers)) ?? compareSnapshots(before.serving, await snapshotTree(host.dirs.serving));
    const args = ['restore', 'latest', '--in-place', '--force'];

    // The third move fails: the mount point, filled before it, is emptied back into its staging directory and given back what it held.
    const mutable = immutable(host.dirs.serving);
    try {
      const r = await inChild(host, ...args);
      assert.equal(await asBefore(), undefined, `seed ${seed}: a move that failed left a directory changed`);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /every directory was left as it was/);
    } finally {
      mutable();
    }

    const record = path.join(host.work, 'srv', '.tokenizers.lifeboat-moving');
    const took = await movesTime(host, args, record);
    assert.equal(await differences(host, atPoint), undefined, `seed ${seed}: the restore that went through`);
    const filling = () => fs.readdirSync(host.dirs.tokenizers).some((n) => n.endsWith('-replaced'));
    const left: string[] = [];
    for (let round = 1; round <= 8; round++) {
      await breakHost();
      // Half the rounds within a few milliseconds of the mount point's old content being set aside (it is being filled then).
      const atFill = round % 2 === 0;
      const ms = Math.floor(rand() * (atFill ? 4 : took));
      await killedAfter(host, args, ms, atFill ? recordThen(record, filling, took) : record);
      left.push(await recordPhase(host.dirs.tokenizers));
      const r = await inChild(host, ...args);
      assert.equal(r.code, 0, `seed ${seed}, round ${round}, killed after ${ms} ms: ${r.stderr}`);
      assert.equal(await differences(host, atPoint), undefined, `seed ${seed}, round ${round}, killed after ${ms} ms${atFill ? ' of the filling' : ''} (record: ${left.at(-1)})`);
      assert.deepEqual(await besides(host), [], `seed ${seed}, round ${round}`);
    }
    t.diagnostic(`a whole run took ${took} ms from its record of moves; the kills left beside the mount point: ${left.join(' ')}`);
  } finally {
    spawnSync('umount', [host.dirs.tokenizers]);
  }
});

type TwoSources = { work: string; dirs: { a: string; b: string }; run: (...args: string[]) => Promise<CliRun> };

/** A host with two directory sources, `a` and `b`, under srv/, its repository made. */
async function twoSources(t: { after(fn: () => Promise<unknown>): void }): Promise<TwoSources> {
  const work = await tempDir();
  t.after(async () => {
    spawnSync('chattr', ['-R', '-i', work], { stdio: 'ignore' });
    await fsp.rm(work, { recursive: true, force: true });
  });
  const dirs = { a: path.join(work, 'srv', 'a'), b: path.join(work, 'srv', 'b') };
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  a: ./srv/a\n  b: ./srv/b\n');
  const run = (...args: string[]): Promise<CliRun> => lifeboat(args, { cwd: work });
  assert.equal((await run('init')).code, 0);
  return { work, dirs, run };
}

/**
 * Fills `root` (emptied first) with a random tree from a few names, so that two such trees share
 * paths with other types and contents: files of random modes, directories (some read-only),
 * symbolic links, hard links.
 */
async function randomShape(root: string, rand: () => number): Promise<void> {
  spawnSync('chattr', ['-R', '-i', root], { stdio: 'ignore' });
  await fsp.rm(root, { recursive: true, force: true });
  await fsp.mkdir(root, { recursive: true });
  const files: string[] = [];
  const dirModes: [string, number][] = [];
  const fill = async (dir: string, depth: number): Promise<void> => {
    for (const name of ['m', 'n', 'o', 'p', 'q']) {
      const p = path.join(dir, name);
      const r = rand();
      if (r < 0.35) {
        await writeRandomFile(p, Math.floor(rand() * 3000), rand);
        await fsp.chmod(p, pick(rand, [0o644, 0o600, 0o755, 0o444]));
        files.push(p);
      } else if (r < 0.55 && depth < 3) {
        await fsp.mkdir(p);
        await fill(p, depth + 1);
        dirModes.push([p, pick(rand, [0o755, 0o700, 0o555, 0o750])]);
      } else if (r < 0.65) await fsp.symlink(pick(rand, depth > 0 ? ['m', '../n', 'o/p', 'gone'] : ['m', 'o/p', 'gone']), p);
      else if (r < 0.72 && files.length > 0) await fsp.link(pick(rand, files), p);
    }
  };
  await fill(root, 0);
  for (const [p, mode] of dirModes.reverse()) await fsp.chmod(p, mode);
}

async function twoSnapshots(host: TwoSources): Promise<Record<'a' | 'b', Map<string, SnapshotEntry>>> {
  return { a: await snapshotTree(host.dirs.a), b: await snapshotTree(host.dirs.b) };
}

async function twoDifferences(host: TwoSources, want: Record<'a' | 'b', Map<string, SnapshotEntry>>): Promise<string | undefined> {
  for (const name of ['a', 'b'] as const) {
    const d = compareSnapshots(want[name], await snapshotTree(host.dirs[name]));
    if (d) return `${name}: ${d}`;
  }
  return undefined;
}

/** What is beside the two directories but themselves and staging directories. */
async function besidesTwo(host: TwoSources): Promise<string[]> {
  return (await fsp.readdir(path.join(host.work, 'srv'))).filter((n) => !['a', 'b'].includes(n) && !/^\.(a|b)\.lifeboat-staging-\d+-\d+(-\d+-[0-9a-f]{8})?-[0-9a-f]{8}$/.test(n));
}

/** The directories of `root` (itself too), for one to be made immutable. */
async function directoriesIn(root: string): Promise<string[]> {
  const found = [root];
  for (const d of await fsp.readdir(root, { withFileTypes: true })) if (d.isDirectory()) found.push(...(await directoriesIn(path.join(root, d.name))));
  return found;
}

/** twoSources filled with random trees (a seed of its own), and a full backup of them. */
async function randomTwoSources(t: { after(fn: () => Promise<unknown>): void; diagnostic(message: string): void }) {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const rand = prng(seed);
  const host = await twoSources(t);
  for (const dir of Object.values(host.dirs)) await randomShape(dir, rand);
  const backup = await host.run('--json', 'backup', '--type', 'full');
  assert.equal(backup.code, 0, backup.stderr);
  return { seed, rand, host, point: backup.json().id as string, atPoint: await twoSnapshots(host) };
}

test('restore --in-place --delta between random trees (files, read-only directories, links, hard links, a type for another): a change that fails (an immutable directory) leaves both directories byte for byte as they were, and the next run reaches the point', { skip: chattrWorks ? false : NO_CHATTR }, async (t) => {
  const { seed, rand, host, point, atPoint } = await randomTwoSources(t);
  let failed = 0;
  for (let round = 1; round <= 6; round++) {
    for (const dir of Object.values(host.dirs)) await randomShape(dir, rand);
    const before = await twoSnapshots(host);
    const candidates = [...(await directoriesIn(host.dirs.a)), ...(await directoriesIn(host.dirs.b))];
    const stuck = pick(rand, candidates);
    immutable(stuck);
    let r: CliRun;
    try {
      r = await inChild(host as unknown as Host, 'restore', point, '--in-place', '--delta');
    } finally {
      // Set aside whole, within a directory the point lacks, it is where that went.
      spawnSync('chattr', ['-R', '-i', path.join(host.work, 'srv')], { stdio: 'ignore' });
    }
    const where = `seed ${seed}, round ${round}, ${path.relative(host.work, stuck)} immutable`;
    if (r.code === 0) {
      // Nothing it changed was in it, or it went with what held it, which could then not be removed: the restore says where it is left.
      for (const m of r.stderr.matchAll(/(\S+-replaced): holds what was replaced, which could not be removed/g)) await fsp.rm(m[1]!, { recursive: true, force: true });
    } else {
      failed++;
      assert.equal(r.code, 1, `${where}: ${r.stderr}`);
      assert.equal(await twoDifferences(host, before), undefined, `${where}: a change that failed left a directory changed: ${r.stderr}`);
      assert.match(r.stderr, /every directory was left as it was/, where);
      assert.doesNotMatch(r.stderr, /not put back|srv\/[ab]-replaced/, where);
      assert.deepEqual(await besidesTwo(host), [], where);
    }
    const again = await inChild(host as unknown as Host, 'restore', point, '--in-place', '--delta');
    assert.equal(again.code, 0, `${where}: ${again.stderr}`);
    assert.equal(await twoDifferences(host, atPoint), undefined, where);
    assert.deepEqual(await besidesTwo(host), [], where);
  }
  t.diagnostic(`${failed} of 6 restores failed on the immutable directory`);
});

/** Whether a --delta of `host` has begun to change a directory: its journal is there. */
function journalBegun(host: TwoSources): () => Promise<boolean> {
  return async () => {
    for (const until = Date.now() + 30_000; Date.now() < until; ) {
      if (fs.readdirSync(path.join(host.work, 'srv')).some((n) => n.endsWith('-replaced'))) return true;
    }
    return true;
  };
}

test('restore --in-place --delta killed (SIGKILL) while it changes random trees: the next restore --in-place of any point first puts the directories back as they were (a run that then fails leaves them so), and a rerun of the same point, of another, or with --force reaches its point', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const rand = prng(seed);
  const host = await twoSources(t);
  const pointOf = async (): Promise<{ id: string; trees: Record<'a' | 'b', Map<string, SnapshotEntry>> }> => {
    for (const dir of Object.values(host.dirs)) await randomShape(dir, rand);
    const b = await host.run('--json', 'backup', '--type', 'full');
    assert.equal(b.code, 0, b.stderr);
    return { id: b.json().id as string, trees: await twoSnapshots(host) };
  };
  const first = await pointOf();
  const other = await pointOf();
  // A point with a file no tree has, whose data is damaged: a restore of it fails (exit 3) after taking up what a kill left, before any move.
  await fsp.writeFile(path.join(host.dirs.a, 'only-here.bin'), 'only in the damaged point\n'.repeat(50));
  const damagedPoint = await host.run('--json', 'backup', '--type', 'full');
  assert.equal(damagedPoint.code, 0);
  const damaged = damagedPoint.json().id as string;
  await damageEntry(host as unknown as Host, damaged, 'a', 'only-here.bin');
  const tally: string[] = [];
  for (let round = 1; round <= 8; round++) {
    for (const dir of Object.values(host.dirs)) await randomShape(dir, rand);
    // Files enough for the changes to take a while.
    for (let i = 0; i < 200; i++) await fsp.writeFile(path.join(host.dirs.b, `extra-${i}`), `${round}-${i}`);
    const before = await twoSnapshots(host);
    const ms = Math.floor(rand() * 6);
    const killed = await killedAfter(host as unknown as Host, ['restore', first.id, '--in-place', '--delta'], ms, journalBegun(host));
    // Killed, or (on a loaded machine) ended by itself first: then no record is left and the directories are at its point.
    const phase = killed ? await recordPhase(host.dirs.a) : 'finished';
    if (!killed) assert.equal(await recordPhase(host.dirs.a), 'none', `seed ${seed}, round ${round}: a run that ended by itself left its record`);
    const srv = path.join(host.work, 'srv');
    const journaled = fs.readdirSync(srv).some((n) => n.startsWith('.a.') && fs.existsSync(path.join(srv, n, 'journal')));
    const where = `seed ${seed}, round ${round}, killed ${ms} ms into its changes (record: ${phase})`;
    const probe = await inChild(host as unknown as Host, 'restore', damaged, '--in-place', '--delta');
    assert.equal(probe.code, 3, `${where}: ${probe.stderr}`);
    // All changes made (`moved`): the killed run is finished forwards; else it is put back.
    assert.equal(await twoDifferences(host, phase === 'moved' || phase === 'finished' ? first.trees : before), undefined, where);
    if (phase === 'moving' && journaled) assert.match(probe.stderr, /put back .*srv\/a.* as they were before an interrupted restore --in-place/, where);
    const how = pick(rand, [[first, '--delta'], [other, '--delta'], [other, '--force']] as const);
    const r = await inChild(host as unknown as Host, 'restore', how[0].id, '--in-place', how[1]);
    assert.equal(r.code, 0, `${where}, then ${how[1]}: ${r.stderr}`);
    assert.equal(await twoDifferences(host, how[0].trees), undefined, `${where}, then ${how[0] === first ? 'the same point' : 'another point'} ${how[1]}`);
    assert.deepEqual(await besidesTwo(host), [], where);
    tally.push(phase);
  }
  t.diagnostic(`records the kills left: ${tally.join(' ')}`);
});

/** Fills a and b with trees where `shape` has a directory at m and a file at n, or (swapped) the reverse; b with many files besides. */
async function swappedShapes(host: TwoSources, swapped: boolean, tag: string): Promise<void> {
  for (const dir of Object.values(host.dirs)) {
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.mkdir(dir, { recursive: true });
    const [asDir, asFile] = swapped ? ['n', 'm'] : ['m', 'n'];
    await fsp.mkdir(path.join(dir, asDir, 'inner'), { recursive: true });
    await fsp.writeFile(path.join(dir, asDir, 'inner', 'weights.bin'), `${tag} weights\n`.repeat(40));
    await fsp.writeFile(path.join(dir, asDir, 'config.json'), `{"tag": "${tag}"}\n`);
    await fsp.writeFile(path.join(dir, asFile), `${tag} file\n`.repeat(20));
    for (let i = 0; i < 50; i++) await fsp.writeFile(path.join(dir, `extra-${i}`), `${tag}-${i}`);
  }
}

/**
 * Starts restore `point` --in-place --delta and stops it (SIGSTOP) the moment the record beside a says
 * `moved`, looked for without a pause; then kills it. Returns whether the record beside b still said
 * `moving` then: the kill landed between the records' rewrites, every change made.
 */
async function killedAsMovedIsWritten(host: TwoSources, point: string): Promise<boolean> {
  const record = path.join(host.work, 'srv', '.a.lifeboat-moving');
  const child = spawnLifeboat(['restore', point, '--in-place', '--delta'], { cwd: host.work });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  let stopped = false;
  for (const until = Date.now() + 30_000; Date.now() < until; ) {
    let text: string | undefined;
    try {
      text = fs.readFileSync(record, 'utf8');
    } catch {
      continue;
    }
    if (text.includes('"phase":"moved"')) {
      stopped = child.kill('SIGSTOP');
      break;
    }
  }
  const phaseOfB = stopped ? await recordPhase(host.dirs.b) : 'none';
  child.kill('SIGKILL');
  await exited;
  return phaseOfB === 'moving';
}

test('restore --in-place --delta killed as it writes that all its changes are made (the record beside one directory says moved, beside the other moving still): the next restore --in-place finishes it forwards, a directory replaced by a file and a file by a directory included', async (t) => {
  const host = await twoSources(t);
  await swappedShapes(host, false, 'first');
  const first = await host.run('--json', 'backup', '--type', 'full');
  assert.equal(first.code, 0, first.stderr);
  const atFirst = await twoSnapshots(host);
  // A point with a file no tree has, whose data is damaged: a restore of it fails (exit 3) after taking up what a kill left, before any move.
  await fsp.writeFile(path.join(host.dirs.a, 'only-here.bin'), 'only in the damaged point\n'.repeat(50));
  const damagedPoint = await host.run('--json', 'backup', '--type', 'full');
  assert.equal(damagedPoint.code, 0, damagedPoint.stderr);
  const damaged = damagedPoint.json().id as string;
  await damageEntry(host as unknown as Host, damaged, 'a', 'only-here.bin');
  // The records are rewritten one after the other, a synced file each: a poll without a pause stops the run between them in most tries.
  let caught = 0;
  for (let attempt = 1; attempt <= 30 && caught < 3; attempt++) {
    await swappedShapes(host, true, `before-${attempt}`);
    const before = await twoSnapshots(host);
    if (!(await killedAsMovedIsWritten(host, first.json().id as string))) {
      // Caught elsewhere: what it left is taken up by the next restore, and the trees made anew.
      const again = await inChild(host as unknown as Host, 'restore', first.json().id as string, '--in-place', '--delta');
      assert.equal(again.code, 0, again.stderr);
      continue;
    }
    caught++;
    assert.notEqual(await twoDifferences(host, before), undefined, `attempt ${attempt}: the changes were made`);
    const probe = await inChild(host as unknown as Host, 'restore', damaged, '--in-place', '--delta');
    assert.equal(probe.code, 3, `attempt ${attempt}: ${probe.stderr}`);
    assert.doesNotMatch(probe.stderr, /put back .* as they were before an interrupted restore --in-place/, `attempt ${attempt}`);
    assert.equal(await twoDifferences(host, atFirst), undefined, `attempt ${attempt}: all changes were made, the directories are finished at the point`);
    assert.deepEqual(await besidesTwo(host), [], `attempt ${attempt}`);
  }
  assert.ok(caught > 0, 'no run was stopped between the rewrites of its records');
  t.diagnostic(`${caught} run(s) stopped between the rewrites of the records`);
});

/** Runs restore `point` --in-place --delta with `dir` made immutable: it fails (exit 1) with every directory as it was (`changed` says none differs); returns what it said. */
async function deltaFailingOn(host: Host, point: string, dir: string, changed: () => Promise<string | undefined>, seed: number): Promise<string> {
  const mutable = immutable(dir);
  let r: CliRun;
  try {
    r = await inChild(host, 'restore', point, '--in-place', '--delta');
  } finally {
    mutable();
  }
  assert.equal(r.code, 1, `seed ${seed}: ${r.stderr}`);
  assert.equal(await changed(), undefined, `seed ${seed}`);
  return r.stderr;
}

test('restore --in-place --delta put back after a later move failed keeps the files it had rewritten in its staging directory: the next run goes on from them instead of fetching them again', { skip: chattrWorks ? false : NO_CHATTR }, async (t) => {
  const { seed, host, point } = await backedUp(t);
  const atPoint = await snapshots(host);
  await editAll(host);
  const before = await snapshots(host);
  await deltaFailingOn(host, point, path.join(host.dirs.serving, 'llama'), () => differences(host, before), seed);
  const again = await inChild(host, 'restore', point, '--in-place', '--delta');
  assert.equal(again.code, 0, again.stderr);
  // models and tokenizers were rewritten (shard-1.bin, tokenizer.json) and put back: their files are not fetched again.
  for (const name of ['models', 'tokenizers']) assert.match(again.stderr, new RegExp(`\\.${name}\\.lifeboat-staging-\\S+: resuming an interrupted restore: 1 file\\(s\\)`), `seed ${seed}: ${name}`);
  assert.equal(await differences(host, atPoint), undefined, `seed ${seed}`);
  assert.deepEqual(await besides(host), []);
});

test('restore --in-place --delta sets what the point lacks on a file system mounted inside a directory aside on that file system, and puts it back when a later move fails', { skip: !mayMount ? 'mount -t tmpfs is not permitted here (not root)' : !chattrWorks ? NO_CHATTR : false }, async (t) => {
  const { seed, host, point } = await backedUp(t);
  const atPoint = await snapshots(host);
  const mounted = path.join(host.dirs.models, 'llama');
  // The shards on a volume of their own, mounted inside the source: one the point lacks, one it rewrites.
  const shards = await tempDir('lifeboat-shards-');
  t.after(() => fsp.rm(shards, { recursive: true, force: true }));
  await fsp.cp(mounted, shards, { recursive: true, preserveTimestamps: true });
  assert.ok(mountTmpfs(mounted));
  try {
    await fsp.cp(shards, mounted, { recursive: true, preserveTimestamps: true });
    await fsp.writeFile(path.join(mounted, 'shard-1.bin'), 'cut short');
    await fsp.mkdir(path.join(mounted, 'stray'));
    await fsp.writeFile(path.join(mounted, 'stray', 'notes.txt'), 'left by hand');
    await fsp.writeFile(path.join(host.dirs.serving, 'llama', 'config.pbtxt'), 'name: "broken"\n');
    const before = await snapshots(host);
    const stderr = await deltaFailingOn(host, point, path.join(host.dirs.serving, 'llama'), () => differences(host, before), seed);
    assert.doesNotMatch(stderr, /not put back/);
    assert.match(stderr, /every directory was left as it was/);
    assert.deepEqual((await fsp.readdir(mounted)).sort(), ['shard-0.bin', 'shard-1.bin', 'shard-2.bin', 'shard-3.bin', 'stray'], 'nothing is left set aside on the mounted file system');
    const again = await inChild(host, 'restore', point, '--in-place', '--delta');
    assert.equal(again.code, 0, again.stderr);
    assert.equal(await differences(host, atPoint), undefined, `seed ${seed}`);
    assert.deepEqual((await fsp.readdir(mounted)).sort(), ['shard-0.bin', 'shard-1.bin', 'shard-2.bin', 'shard-3.bin']);
  } finally {
    spawnSync('umount', ['-l', mounted]);
  }
});

test('restore --in-place --delta into a mount point sets what it replaces aside inside it, and puts it back when a later move fails', { skip: !mayMount ? 'mount -t tmpfs is not permitted here (not root)' : !chattrWorks ? NO_CHATTR : false }, async (t) => {
  const { seed, host, point } = await backedUp(t);
  const atPoint = await snapshots(host);
  const kept = await tempDir('lifeboat-tokenizers-');
  t.after(() => fsp.rm(kept, { recursive: true, force: true }));
  await fsp.cp(host.dirs.tokenizers, kept, { recursive: true, preserveTimestamps: true });
  assert.ok(mountTmpfs(host.dirs.tokenizers));
  try {
    await fsp.cp(kept, host.dirs.tokenizers, { recursive: true, preserveTimestamps: true });
    await fsp.writeFile(path.join(host.dirs.tokenizers, 'llama', 'tokenizer.json'), '{}');
    await fsp.writeFile(path.join(host.dirs.tokenizers, 'stray.txt'), 'left by hand');
    await fsp.writeFile(path.join(host.dirs.serving, 'llama', 'config.pbtxt'), 'name: "broken"\n');
    // What it staged is kept inside the mount point for the next run.
    const before = { ...(await snapshots(host)), tokenizers: await withoutStaging(host.dirs.tokenizers) };
    const changed = async () =>
      compareSnapshots(before.models, await snapshotTree(host.dirs.models)) ?? compareSnapshots(before.tokenizers, await withoutStaging(host.dirs.tokenizers)) ?? compareSnapshots(before.serving, await snapshotTree(host.dirs.serving));
    const stderr = await deltaFailingOn(host, point, path.join(host.dirs.serving, 'llama'), changed, seed);
    assert.match(stderr, /every directory was left as it was/);
    const again = await inChild(host, 'restore', point, '--in-place', '--delta');
    assert.equal(again.code, 0, again.stderr);
    assert.equal(await differences(host, atPoint), undefined, `seed ${seed}`);
  } finally {
    spawnSync('umount', ['-l', host.dirs.tokenizers]);
  }
});

/** Kills restore `point` --in-place --delta once the journal of b's changes has a few lines, among them: the record of moves says `moving`. */
async function killedAmongChanges(host: TwoSources, point: string, where: string): Promise<void> {
  const srv = path.join(host.work, 'srv');
  // b, with its many files to remove, changed after a.
  const lines = () => {
    const aside = fs.readdirSync(srv).find((n) => n.startsWith('.b.') && n.endsWith('-replaced'));
    // The directory is made a moment before the journal in it.
    const text = aside === undefined ? '' : fs.existsSync(path.join(srv, aside, 'journal')) ? fs.readFileSync(path.join(srv, aside, 'journal'), 'utf8') : '';
    return text.split('\n').length;
  };
  await killedAfter(host as unknown as Host, ['restore', point, '--in-place', '--delta'], 0, async () => {
    for (const until = Date.now() + 30_000; Date.now() < until && lines() < 30; );
    return true;
  });
  assert.equal(await recordPhase(host.dirs.b), 'moving', `${where}: killed among its changes`);
}

test('a restore --target into a directory a killed restore --in-place --delta left half-changed, or holding one, first puts it back (--delta, --force) or is refused, changing nothing (no --delta nor --force); restore --in-place without --delta puts it back, then is refused; what the kill set aside is never lost', async (t) => {
  const { seed, rand, host, point, atPoint } = await randomTwoSources(t);
  for (const dir of Object.values(host.dirs)) await randomShape(dir, rand);
  // Files enough for the changes to take a while.
  for (let i = 0; i < 2000; i++) await fsp.writeFile(path.join(host.dirs.b, `extra-${i}`), `${i}`);
  const before = await twoSnapshots(host);
  const srv = path.join(host.work, 'srv');
  const kept = path.join(host.work, 'kept');
  await fsp.cp(srv, kept, { recursive: true, preserveTimestamps: true, verbatimSymlinks: true });
  for (const way of [['--target', srv, '--delta'], ['--target', srv, '--force'], ['--target', host.dirs.b, '--delta'], ['--target', srv], ['--in-place']]) {
    await fsp.rm(srv, { recursive: true, force: true });
    await fsp.cp(kept, srv, { recursive: true, preserveTimestamps: true, verbatimSymlinks: true });
    const where = `seed ${seed}, restore ${way.join(' ').replaceAll(host.work, '.')}`;
    await killedAmongChanges(host, point, where);
    const r = await inChild(host as unknown as Host, 'restore', point, ...way);
    if (way.length === 1 || way.length === 2) {
      // Refused (exit 2) as a restore into a directory that is not empty is: --in-place has put the directories back first.
      assert.equal(r.code, 2, `${where}: ${r.stderr}`);
      assert.match(r.stderr, way[0] === '--in-place' ? /is not empty/ : /is not empty, and an interrupted restore --in-place of \S+ left .*srv\/a.*srv\/b.* part-way\n.*restore with --delta or --force, which first put them back as they were/, where);
      if (way[0] === '--in-place') assert.equal(await twoDifferences(host, before), undefined, where);
      else assert.equal(await recordPhase(host.dirs.b), 'moving', `${where}: nothing was changed`);
    } else {
      assert.equal(r.code, 0, `${where}: ${r.stderr}`);
      assert.match(r.stderr, /put back .*srv\/a.*srv\/b.* as they were before an interrupted restore --in-place/, where);
      // A source lands in <target>/<source>: restored into b, it is b/b, b put back as it was.
      if (way[1] === host.dirs.b) {
        assert.equal(compareSnapshots(atPoint.b, await snapshotTree(path.join(host.dirs.b, 'b'))), undefined, where);
        await fsp.rm(path.join(host.dirs.b, 'a'), { recursive: true });
        await fsp.rm(path.join(host.dirs.b, 'b'), { recursive: true });
        assert.equal(await twoDifferences(host, before), undefined, where);
      } else assert.equal(await twoDifferences(host, atPoint), undefined, where);
      assert.deepEqual(await besidesTwo(host), [], where);
    }
    // Nothing is left for the next restore --in-place to put back over what is there now.
    const again = await inChild(host as unknown as Host, 'restore', point, '--in-place', '--delta');
    assert.equal(again.code, 0, `${where}, then --in-place --delta: ${again.stderr}`);
    assert.equal(await twoDifferences(host, atPoint), undefined, `${where}, then --in-place --delta`);
    assert.deepEqual(await besidesTwo(host), [], `${where}, then --in-place --delta`);
  }
});

test('a failover that repairs the slot a killed restore --in-place --delta was changing (a source under the served link) puts the change back first: nothing is left for a later restore --in-place to put back over it; such a slot, served no more, is not rolled back to', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.mkdir(path.join(work, 'seed', 'm', 'ro'), { recursive: true });
  await fsp.writeFile(path.join(work, 'seed', 'm', 'ro', 'a.bin'), 'weights a\n'.repeat(100));
  await fsp.writeFile(path.join(work, 'seed', 'm', 'config.json'), '{"layers": 2}\n');
  await fsp.symlink('seed', path.join(work, 'current'));
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  m: ./current/m\ntargets:\n  prod: { slots: ./slots, active: ./current }\n');
  const run = (...args: string[]) => runChild(args, { cwd: work });
  assert.equal((await run('init')).code, 0);
  const backup = await run('--json', 'backup');
  assert.equal(backup.code, 0, backup.stderr);
  const point = backup.json().id as string;
  const atPoint = await snapshotTree(path.join(work, 'seed', 'm'));
  assert.equal((await run('failover', point, '--to', 'prod')).code, 0);
  const other = await run('--json', 'backup');
  assert.equal(other.code, 0, other.stderr);
  const slot = path.join(work, 'slots', point);
  /** Changes the slot served (files the point lacks, enough for the changes to take a while; one rewritten), and kills a restore --in-place --delta among its changes to it. */
  const killedInSlot = async () => {
    for (let i = 0; i < 2000; i++) await fsp.writeFile(path.join(slot, 'm', `extra-${i}`), `${i}`);
    await fsp.writeFile(path.join(slot, 'm', 'config.json'), '{"layers": 3}\n');
    const lines = () => {
      const aside = fs.readdirSync(slot).find((n) => n.endsWith('-replaced'));
      const journal = aside === undefined ? undefined : path.join(slot, aside, 'journal');
      return journal !== undefined && fs.existsSync(journal) ? fs.readFileSync(journal, 'utf8').split('\n').length : 0;
    };
    const child = spawnLifeboat(['restore', point, '--in-place', '--delta'], { cwd: work });
    const exited = new Promise<string | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
    for (const until = Date.now() + 30_000; Date.now() < until && lines() < 30; );
    child.kill('SIGKILL');
    assert.equal(await exited, 'SIGKILL');
    assert.equal(await recordPhase(path.join(slot, 'm')), 'moving', 'killed among its changes');
  };

  await killedInSlot();
  const failover = await run('--json', 'failover', point, '--to', 'prod');
  assert.equal(failover.code, 0, failover.stderr);
  assert.match(failover.stderr, /put back .*current\/m.* as they were before an interrupted restore --in-place/);
  assert.deepEqual([failover.json().restore.rewritten, failover.json().restore.removed], [1, 2000]);
  assert.equal(compareSnapshots(atPoint, await snapshotTree(path.join(slot, 'm'))), undefined);
  assert.deepEqual((await fsp.readdir(slot)).filter((n) => !n.includes('.lifeboat-staging-') || n.endsWith('-replaced')), ['m'], 'no record of moves, no journal, nothing set aside is left in the slot');
  const again = await run('restore', point, '--in-place', '--delta');
  assert.equal(again.code, 0, again.stderr);
  assert.doesNotMatch(again.stderr, /put back/);
  assert.equal(compareSnapshots(atPoint, await snapshotTree(path.join(slot, 'm'))), undefined);

  // Served no more, such a slot is the one a rollback would go back to: refused, as one a failover's restore was killed in.
  await killedInSlot();
  const away = await run('failover', other.json().id as string, '--to', 'prod');
  assert.equal(away.code, 0, away.stderr);
  const rollback = await run('rollback', '--to', 'prod');
  assert.equal(rollback.code, 3, rollback.stderr);
  assert.match(rollback.stderr, new RegExp(`previous slot .*${point}.* may hold a mix of old and new files[^]*lifeboat failover ${point} --to prod`));
  assert.equal(await fsp.readlink(path.join(work, 'current')), path.join('slots', other.json().id as string));
});

test('restore --dry-run after a killed restore --in-place --delta changes nothing and says that the restore would first put back its changes, how many, and that its figures are of the directories as the kill left them', async (t) => {
  const { seed, rand, host, point } = await randomTwoSources(t);
  for (const dir of Object.values(host.dirs)) await randomShape(dir, rand);
  for (let i = 0; i < 2000; i++) await fsp.writeFile(path.join(host.dirs.b, `extra-${i}`), `${i}`);
  await killedAmongChanges(host, point, `seed ${seed}`);
  const srv = path.join(host.work, 'srv');
  const left = await snapshotTree(srv);
  // The changes the journals hold (each directory's own), none undone yet.
  let changes = 0;
  for (const name of fs.readdirSync(srv).filter((n) => n.endsWith('-replaced'))) {
    const text = fs.existsSync(path.join(srv, name, 'journal')) ? fs.readFileSync(path.join(srv, name, 'journal'), 'utf8') : '';
    changes += text.split('\n').filter((l) => l.startsWith('{"op":') && !l.startsWith('{"op":"meta"')).length;
  }
  for (const args of [['--in-place', '--delta'], ['--target', srv, '--delta'], ['--target', srv, '--force']]) {
    const where = `seed ${seed}, restore --dry-run ${args.join(' ').replaceAll(host.work, '.')}`;
    const r = await inChild(host as unknown as Host, '--json', 'restore', point, '--dry-run', ...args);
    assert.equal(r.code, 0, `${where}: ${r.stderr}`);
    const said = (r.json().warnings as { code: string; message: string }[]).filter((w) => w.code === 'put-back-first');
    assert.equal(said.length, 1, `${where}: ${r.stdout}`);
    assert.match(said[0]!.message, new RegExp(`left .*srv/a.*srv/b.* part-way: the restore would first put back its ${changes} change\\(s\\).* the figures below are of the directories as that restore left them`), where);
    assert.match(r.stderr, /warning: an interrupted restore --in-place of .* would first put back/, where);
    assert.equal(compareSnapshots(left, await snapshotTree(srv)), undefined, `${where}: nothing was changed`);
  }
  // The count is what the restore puts back: the same directories, every change undone.
  const r = await inChild(host as unknown as Host, 'restore', point, '--in-place', '--delta');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /put back .*srv\/a.*srv\/b.* as they were before an interrupted restore --in-place/);
});
