import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { runChild, type CliRun } from './helpers/cli.js';
import { unshare } from './helpers/namespace.js';
import { compareSnapshots, pick, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile, type SnapshotEntry } from './helpers/tree.js';

/*
 * A deployment with serving state, its plain and encrypted repositories, its restore targets, its
 * slots, its live tree and the work directory for serving state, each on a tmpfs of its own, in a
 * private mount namespace. Before each step drawn at random, some of those file systems are shrunk
 * to what they hold plus a random margin of bytes (or of inodes), so that space runs out at
 * different moments; after it they are grown back, as an operator frees space, and the step is
 * judged: an exit code README gives a full disk (1) and one clear sentence, no committed point lost
 * or damaged, a target or served slot either as it was or exactly the point, no lock or reader left,
 * and the same command run again succeeds and leaves nothing behind.
 *
 * The steps run in a child process started in the mount namespace (this file again, as the driver).
 */

const DRIVER = process.env.LIFEBOAT_DISKFULL_DRIVER === '1';
const THIS_FILE = fileURLToPath(import.meta.url);

if (!DRIVER) {
  test('commands on file systems that run out of space or inodes at random moments fail cleanly and lose nothing', { skip: unshare ? false : 'unshare cannot make a mount namespace here', timeout: (180 + 20 * steps()) * 1000 }, async (t) => {
    const seed = seedFromEnv();
    console.log(`disk-full-random seed ${seed} (LIFEBOAT_TEST_SEED=${seed} replays it)`);
    const work = await tempDir();
    t.after(() => fsp.rm(work, { recursive: true, force: true }));
    // The driver leads a process group of its own: whatever happens, the whole group is killed once it
    // is done or over time, so that no process keeps the mount namespace, and its file systems in memory, alive.
    const child = spawn(unshare![0]!, [...unshare!.slice(1), process.execPath, THIS_FILE], {
      env: { ...process.env, LIFEBOAT_DISKFULL_DRIVER: '1', LIFEBOAT_TEST_SEED: String(seed), DISKFULL_WORK: work },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    const killGroup = () => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    };
    t.after(killGroup);
    const limit = setTimeout(killGroup, (120 + 20 * steps()) * 1000);
    const out: Buffer[] = [];
    const verbose = Boolean(process.env.LIFEBOAT_TEST_VERBOSE);
    for (const stream of [child.stdout, child.stderr]) stream.on('data', (c: Buffer) => (verbose ? process.stdout.write(c) : out.push(c)));
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    clearTimeout(limit);
    killGroup();
    const log = Buffer.concat(out).toString('utf8');
    assert.equal(code, 0, `seed ${seed}:\n${log.slice(-12_000)}`);
  });
} else {
  // Should the test that started it be killed, the driver takes its process group, and so its mount
  // namespace, with it.
  const parent = process.ppid;
  setInterval(() => process.ppid !== parent && process.kill(-process.pid, 'SIGKILL'), 1000).unref();
  void driver().then(
    () => process.exit(0),
    (e: unknown) => {
      console.error(e instanceof Error ? e.stack ?? e.message : String(e));
      process.exit(1);
    },
  );
}

/**
 * tmpfs lives in memory: each file system is at most 64 MiB (five of them, 320 MiB in all), every size
 * computed is clamped to that, and never 0, which would mean no limit at all.
 */
const MAX_KIB = 64 * 1024;
const BIG = { size: `${MAX_KIB}k`, inodes: 16_384 };
/** A filler writes at most this much, whatever the file system it fills. */
const FILLER_BYTES = MAX_KIB * 1024;

function steps(): number {
  return Number(process.env.LIFEBOAT_TEST_STEPS ?? 9);
}
const PASSWORD_FILE = 'pw-new';

interface Fs {
  name: string;
  dir: string;
}

interface Point {
  repo: 'plain' | 'enc';
  id: string;
  /** The point restored on the disk of the test, right after it was taken. */
  ref: string;
  models: Map<string, SnapshotEntry>;
}

/** What a run said on stderr besides its timestamped log lines. */
function told(r: CliRun): string {
  return r.stderr.split('\n').filter((l) => l && !/^\d{4}-\d\d-\d\dT/.test(l)).map((l) => `    ${l}`).join('\n');
}

function mount(args: string[]): void {
  execFileSync('mount', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function grow(fsys: Fs): void {
  mount(['-o', `remount,size=${BIG.size},nr_inodes=${BIG.inodes}`, fsys.dir]);
}

/** Shrinks `fsys` to what it holds plus `bytes` (and `inodes` files, when given). */
function shrink(fsys: Fs, bytes: number, inodes?: number): string {
  const st = fs.statfsSync(fsys.dir);
  const usedKiB = Math.ceil(((st.blocks - st.bfree) * st.bsize) / 1024);
  const sizeKiB = Math.min(MAX_KIB, Math.max(4, usedKiB + Math.ceil(bytes / 1024)));
  const usedInodes = st.files - st.ffree;
  const options = [`size=${sizeKiB}k`];
  if (inodes !== undefined) options.push(`nr_inodes=${Math.min(BIG.inodes, Math.max(1, usedInodes + inodes))}`);
  mount(['-o', `remount,${options.join(',')}`, fsys.dir]);
  return `${fsys.name}:${sizeKiB - usedKiB}KiB${inodes !== undefined ? `/${inodes}inodes` : ''}`;
}

async function driver(): Promise<void> {
  const seed = Number(process.env.LIFEBOAT_TEST_SEED);
  const work = process.env.DISKFULL_WORK!;
  const rand = prng(seed);
  const say = (line: string) => console.log(line);
  say(`seed ${seed}, ${steps()} steps`);

  const fsNames = ['repofs', 'tgtfs', 'wfs', 'slotsfs', 'livefs'] as const;
  const fss = Object.fromEntries(fsNames.map((name) => [name, { name, dir: path.join(work, name) }])) as Record<(typeof fsNames)[number], Fs>;
  for (const f of Object.values(fss)) {
    await fsp.mkdir(f.dir);
    mount(['-t', 'tmpfs', '-o', `size=${BIG.size},nr_inodes=${BIG.inodes}`, 'tmpfs', f.dir]);
  }
  const live = path.join(fss.livefs.dir, 'models');
  await fsp.mkdir(path.join(live, 'tok'), { recursive: true });
  for (let i = 0; i < 4; i++) await writeRandomFile(path.join(live, `shard-${i}.bin`), Math.floor(rand() * 600_000) + 1000, rand);
  for (let i = 0; i < 6; i++) await writeRandomFile(path.join(live, 'tok', `part-${i}.txt`), Math.floor(rand() * 5000) + 10, rand);
  await fsp.writeFile(path.join(live, 'config.json'), '{"hidden_size": 64}\n');
  const db = new Database(path.join(fss.livefs.dir, 'registry.db'));
  db.exec('CREATE TABLE runs (id INTEGER PRIMARY KEY, blob BLOB)');
  db.close();
  const addRows = (n: number) => {
    const d = new Database(path.join(fss.livefs.dir, 'registry.db'));
    const insert = d.prepare('INSERT INTO runs (blob) VALUES (?)');
    for (let i = 0; i < n; i++) insert.run(Buffer.alloc(2000 + Math.floor(rand() * 4000), i));
    d.close();
  };
  addRows(20);
  await writeRandomFile(path.join(fss.livefs.dir, 'features.dat'), 200_000, rand);
  await fsp.writeFile(path.join(work, PASSWORD_FILE), 'second password\n');
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    [
      'repository: ./repofs/plain',
      'sources:',
      '  models: ./livefs/models',
      '  registry: { sqlite: ./livefs/registry.db, restore: true }',
      '  features: { command: "cat livefs/features.dat", restore: "cat > livefs/features.out" }',
      'targets:',
      '  prod:',
      '    slots: ./slotsfs/slots',
      '    active: ./current',
      '    health: { command: "test -f \\"$LIFEBOAT_SLOT/models/config.json\\"", timeout: 10s, interval: 1s }',
      '    keepSlots: 2',
      '',
    ].join('\n'),
  );

  let password = 'first password';
  const repoArgs = (repo: 'plain' | 'enc') => (repo === 'plain' ? [] : ['--repo', './repofs/enc']);
  const cli = (args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliRun> => runChild(args, { cwd: work, env: { TMPDIR: fss.wfs.dir, ...(args.includes('./repofs/enc') ? { LIFEBOAT_PASSWORD: password } : {}), ...env } });
  const ok = async (args: string[], env?: NodeJS.ProcessEnv): Promise<CliRun> => {
    const r = await cli(args, env);
    assert.equal(r.code, 0, `lifeboat ${args.join(' ')} exited ${r.code}:\n${r.stderr}`);
    return r;
  };

  await ok(['init']);
  await ok(['--repo', './repofs/enc', 'init', '--encryption', 'aes-256-gcm']);

  const points: Point[] = [];
  const pinned = new Set<string>();
  const keyAdds = { n: 0 };
  let refs = 0;
  let news = 0;

  const listed = async (repo: 'plain' | 'enc'): Promise<string[]> => (await ok([...repoArgs(repo), '--json', 'list'])).json<{ id: string }[]>().map((p) => p.id);
  const addPoint = async (repo: 'plain' | 'enc', id: string, models: Map<string, SnapshotEntry> | undefined): Promise<void> => {
    const ref = path.join(work, 'ref', String(refs++));
    await ok([...repoArgs(repo), 'restore', id, '--target', ref]);
    const restored = await snapshotTree(path.join(ref, 'models'));
    if (models) assert.equal(compareSnapshots(models, restored), undefined, `point ${id} holds the live tree it was taken of`);
    points.push({ repo, id, ref, models: restored });
  };
  const pointOf = (id: string) => points.find((p) => p.id === id);

  /** The checks after every step, with every file system grown again. */
  const noLeftovers = async (what: string) => {
    for (const repo of ['plain', 'enc'] as const) {
      const dir = path.join(fss.repofs.dir, repo);
      assert.ok(!fs.existsSync(path.join(dir, 'locks', 'lock.json')), `${what}: the lock of ${repo} stays behind`);
      const readers = fs.existsSync(path.join(dir, 'locks', 'readers')) ? await fsp.readdir(path.join(dir, 'locks', 'readers')) : [];
      assert.deepEqual(readers, [], `${what}: readers of ${repo} stay behind`);
      const tmp = fs.existsSync(path.join(dir, '.tmp')) ? await fsp.readdir(path.join(dir, '.tmp')) : [];
      assert.deepEqual(tmp, [], `${what}: temporary files in ${repo} stay behind`);
    }
    for (const n of await fsp.readdir(fss.wfs.dir)) {
      // A --work-dir lifeboat made stays, emptied.
      assert.ok(['w', 'state'].includes(n), `${what}: ${n} is left in the work directory`);
      assert.deepEqual(await fsp.readdir(path.join(fss.wfs.dir, n)), [], `${what}: the work directory ${n} is not emptied`);
    }
    const targets = (await fsp.readdir(fss.tgtfs.dir)).filter((n) => n.startsWith('.'));
    assert.deepEqual(targets, [], `${what}: leftovers beside the restore targets`);
    const liveLeft = (await fsp.readdir(fss.livefs.dir)).filter((n) => !['models', 'registry.db', 'features.dat', 'features.out'].includes(n) && !n.startsWith('registry.db.lifeboat-replaced-'));
    assert.deepEqual(liveLeft, [], `${what}: leftovers beside the live tree`);
    if (fs.existsSync(path.join(fss.slotsfs.dir, 'slots'))) {
      const slots = (await fsp.readdir(path.join(fss.slotsfs.dir, 'slots'))).filter((n) => n !== '.lifeboat-target.json' && !pointOf(n));
      assert.deepEqual(slots, [], `${what}: leftovers in the slots directory`);
    }
    const beside = (await fsp.readdir(work)).filter((n) => n.startsWith('.'));
    assert.deepEqual(beside, [], `${what}: leftovers beside the active link`);
  };

  /** Every committed point is listed, verifies with --read-data and restores byte for byte. */
  const allPointsWhole = async (what: string) => {
    for (const repo of ['plain', 'enc'] as const) {
      const ids = await listed(repo);
      for (const p of points.filter((q) => q.repo === repo)) assert.ok(ids.includes(p.id), `${what}: point ${p.id} of ${repo} is lost`);
      const v = await cli([...repoArgs(repo), '--json', 'verify', '--read-data']);
      assert.equal(v.code, 0, `${what}: verify --read-data of ${repo}: ${v.stderr}`);
    }
    for (const p of points) {
      const dir = path.join(work, 'check');
      await ok([...repoArgs(p.repo), 'restore', p.id, '--target', dir]);
      assert.equal(compareSnapshots(await snapshotTree(p.ref), await snapshotTree(dir)), undefined, `${what}: point ${p.id} restores as it did`);
      await fsp.rm(dir, { recursive: true });
    }
  };

  /** A failure under a full disk: exit 1, one sentence (and a hint), no stack trace; with --json one document. */
  const judgeFailure = (what: string, r: CliRun, json: boolean, allowed: number[] = []) => {
    assert.ok(r.code === 1 || allowed.includes(r.code), `${what}: exit ${r.code}, not 1:\n${r.stderr}`);
    assert.doesNotMatch(r.stderr, /\n\s+at |unexpected error|Error: /, `${what}: no stack trace:\n${r.stderr}`);
    const errors = r.stderr.split('\n').filter((l) => l.startsWith('lifeboat: ') && !l.startsWith('lifeboat: warning'));
    assert.ok(errors.length >= 1, `${what}: an error sentence on stderr:\n${r.stderr}`);
    if (json) {
      const doc = JSON.parse(r.stdout);
      assert.ok(doc.error ?? doc.ok === false, `${what}: the JSON document says it failed`);
    }
  };

  const mutateLive = async () => {
    const files = (await fsp.readdir(live, { recursive: true })).map(String).filter((n) => fs.statSync(path.join(live, n)).isFile());
    const change = pick(rand, files.filter((f) => f !== 'config.json'));
    await writeRandomFile(path.join(live, change), Math.floor(rand() * 300_000) + 1, rand);
    if (rand() < 0.4) await writeRandomFile(path.join(live, 'tok', `new-${Math.floor(rand() * 1e6)}.txt`), Math.floor(rand() * 3000) + 1, rand);
    if (rand() < 0.3 && files.length > 6) await fsp.rm(path.join(live, pick(rand, files.filter((f) => f !== 'config.json'))));
    if (rand() < 0.5) addRows(Math.floor(rand() * 10) + 1);
    if (rand() < 0.3) await writeRandomFile(path.join(fss.livefs.dir, 'features.dat'), Math.floor(rand() * 400_000) + 1, rand);
  };

  const stepNames = ['backup', 'backup', 'backup', 'restore', 'delta', 'inplace', 'failover', 'failover', 'rollback', 'prune', 'verify', 'key', 'pin'] as const;
  const activePoint = async (): Promise<string | undefined> => {
    try {
      return path.basename(await fsp.readlink(path.join(work, 'current')));
    } catch {
      return undefined;
    }
  };

  for (let step = 0; step < steps(); step++) {
    let name: (typeof stepNames)[number] = pick(rand, stepNames);
    // The target's record names points of the plain repository only: a rollback reads its point's manifest.
    const repo: 'plain' | 'enc' = name === 'failover' || name === 'rollback' || rand() < 0.5 ? 'plain' : 'enc';
    const ofRepo = points.filter((p) => p.repo === repo);
    if (ofRepo.length === 0) name = 'backup';
    const json = rand() < 0.3;
    const point = ofRepo.length ? pick(rand, ofRepo) : undefined;
    let args: string[];
    const env: NodeJS.ProcessEnv = {};
    let touched: Fs[];
    let before: (() => Promise<void>) | undefined;
    let judge: (r: CliRun, again: boolean) => Promise<void> = async () => {};
    let allowed: number[] = [];
    let models: Map<string, SnapshotEntry> | undefined;
    let pruneRemovable = new Set<string>();
    const oldIds = await listed(repo);
    switch (name) {
      case 'backup': {
        await mutateLive();
        models = await snapshotTree(live);
        const type = ofRepo.length === 0 ? 'full' : pick(rand, ['full', 'diff', 'incr']);
        args = [...repoArgs(repo), '--json', 'backup', '--type', type];
        if (rand() < 0.5) args.push('--work-dir', path.join(fss.wfs.dir, 'w'));
        touched = [fss.repofs, fss.wfs];
        break;
      }
      case 'restore': {
        const target = path.join(fss.tgtfs.dir, `new-${news++}`);
        args = [...repoArgs(repo), 'restore', point!.id, '--target', target];
        touched = [fss.tgtfs, fss.repofs];
        judge = async (r) => {
          if (r.code === 0) {
            assert.equal(compareSnapshots(await snapshotTree(point!.ref), await snapshotTree(target)), undefined, `restore ${point!.id} into ${target}`);
            await fsp.rm(target, { recursive: true });
          } else assert.ok(!fs.existsSync(target), `a failed restore leaves no ${target}`);
        };
        break;
      }
      case 'delta': {
        const dir = path.join(fss.tgtfs.dir, 'old');
        const was = fs.existsSync(dir) ? await snapshotTree(dir) : undefined;
        args = [...repoArgs(repo), 'restore', point!.id, '--target', dir, '--delta'];
        touched = [fss.tgtfs, fss.repofs];
        judge = async (r, again) => {
          if (r.code !== 0 && !was && !again) return assert.ok(!fs.existsSync(dir), `a failed --delta into nothing leaves no ${dir}`);
          const now = await snapshotTree(dir);
          const exact = compareSnapshots(await snapshotTree(point!.ref), now);
          if (r.code === 0) assert.equal(exact, undefined, `restore --delta ${point!.id} into ${dir}`);
          else assert.ok(exact === undefined || (was && compareSnapshots(was, now) === undefined), `a failed --delta leaves ${dir} as it was or as the point: ${exact}`);
        };
        break;
      }
      case 'inplace': {
        const was = await snapshotTree(live);
        args = [...repoArgs(repo), 'restore', point!.id, '--in-place', '--delta'];
        if (rand() < 0.4) args.push('--state', '--work-dir', path.join(fss.wfs.dir, 'state'));
        touched = [fss.livefs, fss.repofs, fss.wfs];
        judge = async (r) => {
          const now = await snapshotTree(live);
          const exact = compareSnapshots(point!.models, now);
          if (r.code === 0) assert.equal(exact, undefined, `restore --in-place ${point!.id}`);
          else assert.ok(exact === undefined || compareSnapshots(was, now) === undefined, `a failed --in-place leaves ${live} as it was or as the point: ${exact}`);
        };
        break;
      }
      case 'failover':
      case 'rollback': {
        const served = await activePoint();
        args = name === 'failover' ? [...repoArgs(repo), 'failover', point!.id, '--to', 'prod'] : [...repoArgs(repo), 'rollback', '--to', 'prod'];
        if (json) args.unshift('--json');
        touched = [fss.slotsfs, fss.repofs, fss.livefs, fss.wfs];
        if (name === 'rollback') allowed = [2];
        judge = async (r) => {
          const now = await activePoint();
          if (r.code === 0 && name === 'failover') assert.equal(now, point!.id, 'a failover serves its point');
          if (r.code !== 0 && name === 'failover') assert.ok(now === served || now === point!.id, `a failed failover serves ${now}`);
          if (r.code === 2) assert.equal(now, served);
          if (now !== undefined && pointOf(now)) {
            const slot = path.join(fss.slotsfs.dir, 'slots', now, 'models');
            assert.equal(compareSnapshots(pointOf(now)!.models, await snapshotTree(slot)), undefined, `the served slot ${now} holds its point exactly`);
          }
        };
        break;
      }
      case 'prune': {
        const keep = 1 + Math.floor(rand() * 2);
        args = [...repoArgs(repo), 'prune', '--keep-full', String(keep)];
        const dry = await ok([...args, '--dry-run', '--json']);
        pruneRemovable = new Set(dry.json<{ remove: { id: string }[] }>().remove.map((p) => p.id));
        if (json) args.unshift('--json');
        touched = [fss.repofs];
        break;
      }
      case 'verify': {
        args = [...repoArgs(repo), 'verify', ...(rand() < 0.7 ? ['--read-data'] : [])];
        if (json) args.unshift('--json');
        touched = [fss.repofs];
        break;
      }
      case 'key': {
        if (repo === 'plain' || keyAdds.n > 20) {
          name = 'pin';
          args = [...repoArgs(repo), 'pin', point!.id, '--reason', `step ${step}`];
          touched = [fss.repofs];
          break;
        }
        keyAdds.n++;
        const passwd = rand() < 0.4;
        args = [...repoArgs(repo), 'key', passwd ? 'passwd' : 'add', '--new-password-file', PASSWORD_FILE];
        touched = [fss.repofs];
        if (passwd) {
          const next = `password ${step}`;
          before = () => fsp.writeFile(path.join(work, PASSWORD_FILE), `${next}\n`);
          judge = async (r) => {
            if (r.code === 0) password = next;
            else {
              // Either password opens the repository after a failed passwd.
              const old = await cli([...repoArgs(repo), 'key', 'list']);
              const fresh = await cli([...repoArgs(repo), 'key', 'list'], { LIFEBOAT_PASSWORD: next });
              assert.ok(old.code === 0 || fresh.code === 0, `after a failed passwd no password opens ${repo}:\n${old.stderr}${fresh.stderr}`);
              if (old.code !== 0) password = next;
            }
          };
        } else before = () => fsp.writeFile(path.join(work, PASSWORD_FILE), `added ${step}\n`);
        break;
      }
      default: {
        args = [...repoArgs(repo), 'pin', point!.id, '--reason', `step ${step}`];
        touched = [fss.repofs];
      }
    }
    if (name === 'pin') judge = async (r) => void (r.code === 0 && pinned.add(point!.id));
    await before?.();

    const tight: string[] = [];
    const fillers: { fsys: Fs; afterMs: number }[] = [];
    for (const f of touched) {
      const r = rand();
      if (r < 0.15) tight.push(shrink(f, Math.floor(rand() * 8 * 1024 * 1024), Math.floor(rand() * 30)));
      else if (r < 0.65) tight.push(shrink(f, Math.floor(rand() ** 2 * 3 * 1024 * 1024)));
      else continue;
      // The disk fills up meanwhile: another process takes what is left, once the command has begun.
      if (rand() < 0.4) fillers.push({ fsys: f, afterMs: Math.floor(rand() * 1500) });
    }
    tight.push(...fillers.map((f) => `fill ${f.fsys.name} after ${f.afterMs}ms`));
    let r: CliRun;
    const filling: Promise<unknown>[] = [];
    const timers = fillers.map(({ fsys, afterMs }) =>
      setTimeout(() => {
        const filler = spawn('sh', ['-c', 'head -c "$2" /dev/zero > "$1/filler" 2> /dev/null', 'sh', fsys.dir, String(FILLER_BYTES)], { stdio: 'ignore' });
        filling.push(new Promise((resolve) => filler.on('close', resolve)));
      }, afterMs),
    );
    try {
      r = await cli(args, env);
    } finally {
      timers.forEach(clearTimeout);
      await Promise.all(filling);
      for (const f of Object.values(fss)) await fsp.rm(path.join(f.dir, 'filler'), { force: true });
      for (const f of Object.values(fss)) grow(f);
    }
    const what = `step ${step} (seed ${seed}): lifeboat ${args.join(' ')} [${tight.join(' ')}]`;
    say(`${what} -> ${r.code}${r.code ? `:\n${told(r)}` : ''}`);
    if (r.code !== 0) judgeFailure(what, r, args.includes('--json'), allowed);
    else if (args.includes('--json')) JSON.parse(r.stdout);
    await judge(r, false);

    // The points after the step: a backup adds at most one, a prune removes only what it may.
    const afterIds = await listed(repo);
    for (const id of oldIds) {
      if (afterIds.includes(id)) continue;
      assert.ok(name === 'prune' && pruneRemovable.has(id), `${what}: point ${id} is gone`);
      points.splice(points.findIndex((p) => p.id === id), 1);
    }
    const added = afterIds.filter((id) => !oldIds.includes(id));
    assert.ok(added.length === 0 || (name === 'backup' && added.length === 1), `${what}: points appeared: ${added.join(', ')}`);
    if (added.length === 1) {
      if (r.code !== 0) say(`  the failed backup committed ${added[0]}`);
      await addPoint(repo, added[0]!, models);
    }

    // With the space freed, the same command succeeds (a backup that committed nothing takes its point now).
    if (r.code !== 0 && !(r.code === 2 && name === 'rollback')) {
      const again = await cli(args, env);
      say(`  again -> ${again.code}${again.code ? `:\n${told(again)}` : ''}`);
      assert.ok(again.code === 0 || (name === 'rollback' && again.code === 2), `${what}: run again with room, it exits ${again.code}:\n${again.stderr}`);
      await judge(again, true);
      if (name === 'backup') await addPoint(repo, again.json<{ id: string }>().id, models);
    }
    await noLeftovers(what);
    if (rand() < 0.25 || step === steps() - 1) await allPointsWhole(what);
  }
  say(`${points.length} points whole; ${pinned.size} pinned`);
}
