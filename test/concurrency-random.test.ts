import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { spawnLifeboat } from './helpers/cli.js';
import { s3ServerForSuite } from './helpers/s3server.js';
import { sleep } from './helpers/processes.js';
import { compareSnapshots, mutateTree, pick, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile, type SnapshotEntry } from './helpers/tree.js';

/**
 * Many real command-line processes at once against one repository, started at overlapping moments
 * and now and then killed: backups of two deployments sharing the repository, prunes with random
 * retention, pins, restores (also --delta into a target restored before), verifies, drills, listings,
 * key commands on an encrypted repository, unlock. A model built from the commands' own results
 * (the points backups reported, what prunes said they removed, pins) is checked after every round
 * against what DESIGN.md and README promise: exit codes from the table, exit 4 only while another
 * live process held what was asked for, no committed point lost but by a prune that named it and
 * never a pinned one, every restore that succeeded equal to its point, no verify finding damage
 * (there is none), and nothing a killed process left blocking the next command.
 */

const ROUNDS = Number(process.env.LIFEBOAT_TEST_STEPS) || 0;
const PASSWORD = 'conc-main-password';
const DEPLOYMENTS = ['alpha', 'beta'] as const;
type Deployment = (typeof DEPLOYMENTS)[number];

/** Commands that take the repository lock, and those that register as readers of it. */
const WRITERS = new Set(['backup', 'prune', 'key passwd', 'key remove']);
const READERS = new Set(['restore', 'verify', 'drill']);

interface Point {
  id: string;
  deployment: Deployment;
  tree: Map<string, SnapshotEntry>;
}

interface Run {
  n: number;
  pid?: number;
  kind: string;
  args: string[];
  env: NodeJS.ProcessEnv;
  start: number;
  end: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The signal sent to it, if one was. */
  sent?: NodeJS.Signals;
  stdout: string;
  stderr: string;
  /** The point it reads, or pins. */
  point?: string;
  target?: string;
  /** For a key command: the password it was run with, and the new one. */
  password?: string;
  newPassword?: string;
  deployment?: Deployment;
}

const s3 = s3ServerForSuite();

for (const where of ['local', 's3'] as const) {
  test(`many commands at once against one ${where} repository, some killed, keep every promise of DESIGN.md`, { timeout: 60 * 60_000 }, async (t) => {
    const seed = seedFromEnv();
    const rand = prng(seed);
    const encrypted = process.env.LIFEBOAT_TEST_ENCRYPTED ? process.env.LIFEBOAT_TEST_ENCRYPTED === '1' : rand() < 0.5;
    const rounds = ROUNDS || (where === 'local' ? 8 : 5);
    t.diagnostic(`seed ${seed} (replay with LIFEBOAT_TEST_SEED=${seed}; more rounds with LIFEBOAT_TEST_STEPS, now ${rounds}); ${encrypted ? 'encrypted' : 'plain'}`);
    const work = await tempDir('lifeboat-conc-');
    const sources: Record<Deployment, string> = { alpha: path.join(work, 'alpha', 'models'), beta: path.join(work, 'beta', 'models') };
    for (const d of DEPLOYMENTS) {
      await fsp.mkdir(path.join(sources[d], 'tok'), { recursive: true });
      for (let i = 0; i < 4; i++) await writeRandomFile(path.join(sources[d], `shard-${i}.bin`), 1000 + Math.floor(rand() * 40_000), rand);
      // Large enough for a command to be killed while it stores or reads it.
      await writeRandomFile(path.join(sources[d], 'weights.bin'), (d === 'alpha' ? 3 : 1) << 20, rand);
      await fsp.writeFile(path.join(sources[d], 'tok', 'vocab.txt'), `${d}\na\nb\n`);
      await fsp.symlink('shard-0.bin', path.join(sources[d], 'first-shard'));
    }
    const repoArgs = where === 'local' ? ['--repo', path.join(work, 'repo')] : ['--repo', `s3://${s3.bucket}/conc-${seed}-${Date.now()}`, '--s3-endpoint', s3.server.endpoint, '--s3-path-style'];
    const baseEnv = (password = PASSWORD): NodeJS.ProcessEnv => ({ ...(where === 's3' ? s3.server.env : {}), ...(encrypted ? { LIFEBOAT_PASSWORD: password } : {}) });

    const log: string[] = [];
    const fail = (what: string, r?: Run): never => {
      const shown = r ? `\n  #${r.n} ${r.args.join(' ')}: exit ${r.code}${r.signal ? ` (${r.signal})` : ''}\n    stdout: ${r.stdout.slice(0, 3000)}\n    stderr: ${r.stderr.slice(0, 3000)}` : '';
      assert.fail(`seed ${seed} (${where}, ${encrypted ? 'encrypted' : 'plain'}), round ${round}: ${what}${shown}\n  log:\n    ${log.join('\n    ')}`);
    };

    let counter = 0;
    /** Runs one command to its end, killing it with `kill` after `killAfterMs` if it is still running. */
    const launch = (kind: string, args: string[], extra: Partial<Run> = {}, kill?: { signal: NodeJS.Signals; afterMs: number }): Promise<Run> => {
      const r: Run = { n: ++counter, kind, args, env: baseEnv(extra.password), start: Date.now(), end: 0, code: null, signal: null, stdout: '', stderr: '', ...extra };
      if (extra.newPassword !== undefined) r.env.LIFEBOAT_NEW_PASSWORD = extra.newPassword;
      const child = spawnLifeboat([...repoArgs, ...args], { cwd: work, env: r.env });
      r.pid = child.pid;
      child.stdout!.on('data', (c: Buffer) => (r.stdout += c.toString()));
      child.stderr!.on('data', (c: Buffer) => (r.stderr += c.toString()));
      let timer: NodeJS.Timeout | undefined;
      if (kill) {
        timer = setTimeout(() => {
          if (child.exitCode === null && child.signalCode === null) {
            r.sent = kill.signal;
            child.kill(kill.signal);
          }
        }, kill.afterMs);
      }
      return new Promise((resolve) =>
        child.on('close', (code, signal) => {
          clearTimeout(timer);
          r.end = Date.now();
          r.code = code;
          r.signal = signal;
          resolve(r);
        }),
      );
    };
    const runNow = (kind: string, args: string[], extra: Partial<Run> = {}) => launch(kind, args, extra);
    const ok = async (r: Promise<Run>, what: string): Promise<Run> => {
      const done = await r;
      if (done.code !== 0) fail(`${what}: exit ${done.code}`, done);
      return done;
    };

    let round = 0;
    await ok(runNow('init', encrypted ? ['init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10'] : ['init']), 'init');

    // The model, from the commands' own results.
    const points = new Map<string, Point>();
    const pins = new Set<string>();
    /** Passwords of the encrypted repository besides the main one: true when known to open it, false when they may. */
    const passwords = new Map<string, boolean>();
    /** Restore targets, with the point each was last restored to whole, when known. */
    const targets = new Map<string, string | undefined>();
    let targetCount = 0;
    let passwordCount = 0;

    const listed = async (): Promise<{ id: string; deployment: Deployment; pinned?: boolean }[]> => JSON.parse((await ok(runNow('list', ['--json', 'list', '--all']), 'list')).stdout);

    for (round = 1; round <= rounds; round++) {
      // The sources change between rounds, never while a backup reads them.
      const trees = {} as Record<Deployment, Map<string, SnapshotEntry>>;
      for (const d of DEPLOYMENTS) {
        if (round > 1) await mutateTree(sources[d], rand, round, { operations: 2, sizeOf: (r) => Math.floor(r() * 30_000) });
        trees[d] = await snapshotTree(sources[d]);
      }
      const before = new Set(points.keys());
      const pinnedBefore = new Set(pins);
      const ids = [...points.keys()];
      const usedTargets = new Set<string>();
      const usedPasswords = new Set<string>();
      const pinTouched = new Set<string>();
      const planned: { kind: string; args: string[]; extra: Partial<Run>; delay: number; kill?: { signal: NodeJS.Signals; afterMs: number } }[] = [];
      const count = 3 + Math.floor(rand() * 7);
      for (let i = 0; i < count; i++) {
        const r = rand();
        let kind: string;
        let args: string[];
        const extra: Partial<Run> = {};
        if (ids.length === 0 || r < 0.25) {
          const d = pick(rand, DEPLOYMENTS);
          kind = 'backup';
          args = ['--json', '--deployment', d, 'backup', sources[d], '--type', pick(rand, ['full', 'diff', 'incr']), ...(rand() < 0.2 ? ['--retry-lock', '3s'] : [])];
          extra.deployment = d;
        } else if (r < 0.35) {
          kind = 'prune';
          args = ['--json', 'prune', '--keep-full', String(1 + Math.floor(rand() * 2)), '--keep-diff', String(Math.floor(rand() * 2))];
          if (rand() < 0.3) {
            extra.deployment = pick(rand, DEPLOYMENTS);
            args.push('--deployment', extra.deployment);
          }
          if (rand() < 0.3) args.push('--keep-within', '0');
          if (rand() < 0.2) args.push('--retry-lock', '3s');
        } else if (r < 0.43) {
          const id = pick(rand, ids);
          if (pinTouched.has(id)) continue;
          pinTouched.add(id);
          kind = pins.has(id) ? 'unpin' : 'pin';
          args = pins.has(id) ? ['unpin', id] : ['pin', id, '--reason', `round ${round}`];
          extra.point = id;
        } else if (r < 0.58) {
          const id = pick(rand, ids);
          // Now and then into a target another restore of this round writes: one of them exits 4, or they take turns.
          const reuse = rand() < 0.15 ? [...usedTargets].filter((x) => targets.has(x)) : [...targets.keys()].filter((x) => !usedTargets.has(x));
          const delta = reuse.length > 0 && rand() < 0.5;
          const target = delta ? pick(rand, reuse) : path.join(work, 'restored', `t${++targetCount}`);
          usedTargets.add(target);
          kind = 'restore';
          args = ['--json', 'restore', id, '--target', target, ...(delta ? ['--delta'] : [])];
          extra.point = id;
          extra.target = target;
        } else if (r < 0.68) {
          kind = 'verify';
          const id = rand() < 0.4 ? pick(rand, ids) : undefined;
          args = ['--json', 'verify', ...(id ? [id] : []), ...(rand() < 0.5 ? ['--read-data'] : [])];
          extra.point = id;
        } else if (r < 0.78) {
          const id = pick(rand, ids);
          const which = pick(rand, ['show', 'diff', 'list', 'status'] as const);
          kind = which;
          args = which === 'show' ? ['show', id] : which === 'diff' ? ['diff', pick(rand, ids), id] : which === 'list' ? ['list', '--all'] : ['status'];
          extra.point = id;
        } else if (r < 0.85) {
          const id = pick(rand, ids);
          kind = 'drill';
          args = ['--json', 'drill', id];
          extra.point = id;
        } else if (r < 0.94 && encrypted) {
          const free = [...passwords.entries()].filter(([p, known]) => known && !usedPasswords.has(p)).map(([p]) => p);
          const k = rand();
          if (k < 0.35 && passwords.size < 6) {
            kind = 'key add';
            args = ['key', 'add'];
            extra.newPassword = `conc-password-${++passwordCount}`;
          } else if (k < 0.7 && free.length > 0) {
            kind = 'key passwd';
            extra.password = pick(rand, free);
            usedPasswords.add(extra.password);
            extra.newPassword = `conc-password-${++passwordCount}`;
            args = ['key', 'passwd'];
          } else {
            kind = 'key list';
            args = ['--json', 'key', 'list'];
          }
        } else {
          kind = 'unlock';
          args = ['--json', 'unlock'];
        }
        const kill = rand() < 0.2 ? { signal: rand() < 0.6 ? ('SIGKILL' as const) : ('SIGTERM' as const), afterMs: 100 + Math.floor(rand() * 1500) } : undefined;
        planned.push({ kind, args, extra, delay: Math.floor(rand() * 600), kill });
      }
      log.push(`round ${round}:`);
      const runs = await Promise.all(
        planned.map(async (p) => {
          await sleep(p.delay);
          return launch(p.kind, p.args, p.extra, p.kill);
        }),
      );
      const t0 = Math.min(...runs.map((r) => r.start));
      for (const r of runs) {
        const tail = r.stderr.trim().split('\n').filter((l) => l !== '').slice(-1)[0] ?? '';
        log.push(`  #${r.n} +${r.start - t0}..${r.end - t0} ms ${r.args.join(' ')}${r.password ? ` (password ${r.password})` : ''}${r.newPassword ? ` (new ${r.newPassword})` : ''}${r.sent ? ` [${r.sent}]` : ''} -> ${r.code ?? r.signal}${tail ? `: ${tail.slice(0, 300)}` : ''}`);
      }

      // What each command said, into the model.
      const overlapping = (r: Run, kinds: (k: string) => boolean) => runs.some((o) => o !== r && kinds(o.kind) && o.start <= r.end && o.end >= r.start);
      const prunedBy = new Map<string, Run>();
      const prunes = runs.filter((r) => r.kind === 'prune');
      for (const r of prunes) {
        if (r.code !== 0) continue;
        for (const { id } of JSON.parse(r.stdout).remove as { id: string }[]) prunedBy.set(id, r);
      }
      const killed = (r: Run) => r.sent !== undefined && (r.signal !== null || r.code === 130);
      for (const r of runs) {
        if (r.kind === 'backup' && r.code === 0) {
          const out = JSON.parse(r.stdout) as { id: string };
          if (points.has(out.id)) fail(`backup reported ${out.id}, which is an earlier point`, r);
          points.set(out.id, { id: out.id, deployment: r.deployment!, tree: trees[r.deployment!] });
        }
        if (r.kind === 'pin' && r.code === 0) pins.add(r.point!);
        if (r.kind === 'unpin' && r.code === 0) pins.delete(r.point!);
        if (r.kind === 'key add' && (r.code === 0 || killed(r))) passwords.set(r.newPassword!, r.code === 0);
        if (r.kind === 'key passwd' && (r.code === 0 || killed(r))) {
          passwords.set(r.newPassword!, r.code === 0);
          if (r.code === 0) passwords.delete(r.password!);
          else passwords.set(r.password!, false);
        }
      }

      // Exit codes: from the table, and each for its reason.
      for (const r of runs) {
        if (r.signal !== null) {
          if (r.sent !== r.signal) fail(`ended by ${r.signal}, which nobody sent`, r);
          // A SIGTERM before Node has run a line of lifeboat (a second, with many starting at once on a busy host) kills it.
          continue;
        }
        if (![0, 1, 2, 3, 4, 5, 130].includes(r.code!)) fail(`exit ${r.code}, which is not in DESIGN.md's table`, r);
        if (r.code === 130 && r.sent === undefined) fail('exit 130, but no signal was sent', r);
        if (r.code === 130 || r.code === 0) continue;
        const pointGone = r.point !== undefined && (prunedBy.has(r.point) || prunes.some((p) => p.start <= r.end));
        if (r.code === 4) {
          const why =
            WRITERS.has(r.kind) || r.kind === 'unlock'
              ? overlapping(r, (k) => WRITERS.has(k)) || (r.kind === 'prune' && overlapping(r, (k) => READERS.has(k)))
              : r.kind === 'pin'
                ? overlapping(r, (k) => k === 'prune')
                : r.kind === 'restore'
                  ? runs.some((o) => o !== r && o.target === r.target && o.start <= r.end && o.end >= r.start)
                  : false;
          if (!why) fail('exit 4 with no other live process holding what it asked for', r);
          // The holder it names is one of these commands, running then, and of a kind that holds what was asked for.
          const named = /pid (\d+)/.exec(r.stderr);
          const holder = named && runs.find((o) => o.pid === Number(named[1]));
          if (!holder || holder === r || holder.start > r.end || holder.end < r.start) fail(`exit 4 naming pid ${named?.[1]}, which is no command running then`, r);
          continue;
        }
        if (r.code === 2 && pointGone && ['restore', 'verify', 'drill', 'show', 'diff', 'pin'].includes(r.kind)) continue;
        if (r.code === 2 && r.kind === 'diff' && prunes.length > 0) continue;
        // A deployment named that has no points yet, where the other has some (README: a name mistyped in a cron job).
        if (r.code === 2 && r.kind === 'prune' && r.deployment && ![...before].some((id) => points.get(id)?.deployment === r.deployment) && /has no backup points of deployment/.test(r.stderr)) continue;
        if (r.code === 3 && r.kind === 'verify') fail('verify found damage in a repository nothing damaged', r);
        // Killed at random moments, a command may end with its own error (a pipe closed under it): only then.
        if (r.sent !== undefined) continue;
        fail(`exit ${r.code}`, r);
      }

      // Restores that succeeded: equal to their point's tree, byte for byte.
      const lastInto = (target: string) => runs.filter((x) => x.kind === 'restore' && x.target === target && x.code === 0).sort((a, b) => a.end - b.end).at(-1);
      for (const r of runs.filter((x) => x.kind === 'restore')) {
        // Of restores into one target that took turns, the last one's point is what it holds.
        if (r.code === 0 && lastInto(r.target!) === r) {
          const diff = compareSnapshots(points.get(r.point!)!.tree, await snapshotTree(path.join(r.target!, 'models')));
          if (diff) fail(`the restore of ${r.point} into ${r.target} differs from the point: ${diff}`, r);
          targets.set(r.target!, r.point);
        } else if (r.code !== 0 && (await fsp.lstat(path.join(r.target!, 'models')).then(() => true, () => false))) {
          targets.set(r.target!, targets.get(r.target!));
        }
      }

      // The repository: every committed point is there, but those a prune removed.
      const now = await listed();
      const present = new Map(now.map((p) => [p.id, p]));
      const prunesFailed = prunes.some((r) => r.code !== 0);
      for (const [id, r] of prunedBy) {
        if (pinnedBefore.has(id) && !runs.some((u) => u.kind === 'unpin' && u.point === id && u.code === 0)) fail(`a prune removed ${id}, which was pinned`, r);
        if (runs.some((p) => p.kind === 'pin' && p.point === id && p.code === 0)) fail(`a prune removed ${id}, which a pin that succeeded pinned`, r);
        if (present.has(id)) fail(`a prune said it removed ${id}, which is still listed`, r);
      }
      for (const id of [...points.keys()]) {
        if (present.has(id)) continue;
        const pinned = (pinnedBefore.has(id) && !runs.some((u) => u.kind === 'unpin' && u.point === id)) || runs.some((p) => p.kind === 'pin' && p.point === id && p.code === 0);
        if (pinned && pins.has(id)) fail(`pinned point ${id} is gone`);
        if (!prunedBy.has(id) && !prunesFailed) fail(`point ${id} is gone, and no prune said it removed it`);
        points.delete(id);
        pins.delete(id);
        for (const [target, point] of targets) if (point === id) targets.set(target, undefined);
      }
      for (const p of now) {
        if (points.has(p.id) || before.has(p.id)) continue;
        // A point no backup reported: one killed after its commit, before it said so.
        const by = runs.filter((r) => r.kind === 'backup' && r.code !== 0 && r.deployment === p.deployment);
        if (by.length === 0) fail(`point ${p.id} of ${p.deployment} appeared, and no backup of that deployment was killed or failed`);
        log.push(`  ${p.id} committed by a backup that did not say so`);
        points.set(p.id, { id: p.id, deployment: p.deployment, tree: trees[p.deployment] });
      }
      // Pins as listed: those pinned by a pin that succeeded, not those unpinned; one killed may be either.
      for (const p of now) {
        const sure = runs.filter((r) => (r.kind === 'pin' || r.kind === 'unpin') && r.point === p.id);
        if (sure.some((r) => r.code === 0 && r.kind === 'pin') && !p.pinned) fail(`${p.id} was pinned, and is not listed as pinned`);
        if (sure.some((r) => r.code === 0 && r.kind === 'unpin') && p.pinned) fail(`${p.id} was unpinned, and is listed as pinned`);
        if (p.pinned) pins.add(p.id);
        else pins.delete(p.id);
      }

      // The passwords known to open the repository open it.
      for (const [password, known] of passwords) {
        const r = await runNow('key list', ['key', 'list'], { password });
        if (known && r.code !== 0) fail(`password ${password} no longer opens the repository`, r);
        if (!known && r.code === 0) passwords.set(password, true);
        if (!known && r.code !== 0) passwords.delete(password);
      }

      // What killed commands left does not block: an unlock as a user runs it removes only what is stale, and succeeds.
      if (runs.some((r) => r.signal === 'SIGKILL') || rand() < 0.2) {
        const r = await runNow('unlock', ['--json', 'unlock']);
        if (r.code !== 0) fail('unlock after the round, with nothing running', r);
        log.push(`  unlock: ${r.stdout.trim()}`);
        const again = await runNow('unlock', ['--json', 'unlock']);
        if (again.code !== 0 || JSON.parse(again.stdout).removed !== false || JSON.parse(again.stdout).readersRemoved !== 0) fail('a second unlock found something left', again);
      } else if (!runs.some((r) => r.sent !== undefined)) {
        // Nothing was killed: every command released what it held.
        const r = await runNow('unlock', ['--json', 'unlock']);
        if (r.code !== 0 || JSON.parse(r.stdout).removed !== false || JSON.parse(r.stdout).readersRemoved !== 0) fail('a lock or a reader registration is left behind, though no command was killed', r);
      }
    }

    round = rounds + 1;
    log.push('end:');
    const verified = await runNow('verify', ['--json', 'verify', '--read-data']);
    if (verified.code !== 0) fail('the last verify --read-data', verified);
    const last = await runNow('backup', ['--json', '--deployment', 'alpha', 'backup', sources.alpha]);
    if (last.code !== 0) fail('the last backup', last);
    const clean = await runNow('verify', ['--json', 'verify']);
    if (clean.code !== 0) fail('the verify after the last backup', clean);
    const warnings = (JSON.parse(clean.stdout).warnings as { code: string }[]).filter((w) => !/^key-/.test(w.code));
    if (warnings.length > 0) fail(`the verify after the last backup still warns: ${JSON.stringify(warnings)}`, clean);
    // Every point restores: one of each deployment, at random.
    for (const d of DEPLOYMENTS) {
      const ofD = [...points.values()].filter((p) => p.deployment === d);
      if (ofD.length === 0) continue;
      const p = pick(rand, ofD);
      const target = path.join(work, 'restored', `final-${d}`);
      await ok(runNow('restore', ['restore', p.id, '--target', target]), `restore of ${p.id}`);
      const diff = compareSnapshots(p.tree, await snapshotTree(path.join(target, 'models')));
      if (diff) fail(`the last restore of ${p.id} differs from the point: ${diff}`);
    }
    t.diagnostic(`${counter} commands in ${rounds} rounds${process.env.LIFEBOAT_TEST_LOG ? `:\n${log.join('\n')}` : ''}`);
    await fsp.rm(work, { recursive: true, force: true });
  });
}
