import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { lifeboat, spawnLifeboat, type CliRun } from './helpers/cli.js';
import { exists } from './helpers/repo.js';
import { sleep } from './helpers/processes.js';
import { compareSnapshots, mutateTree, pick, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile, type SnapshotEntry } from './helpers/tree.js';

/**
 * A model-based randomized test of serving: one deployment (a models tree, a SQLite registry and a
 * live-version file as serving state) backed up, failed over, rolled back, pruned, pinned and checked
 * in random order, some steps failing their health check on purpose and some killed part-way. After
 * every step what lifeboat serves and says is checked against a model of what README promises.
 */

const STEPS = Number(process.env.LIFEBOAT_TEST_STEPS) || 36;

/** The serving state of a point, or of the live deployment: the registry's rows and the live version. */
interface State {
  registry: string;
  version: string;
}

interface Point {
  id: string;
  type: 'full' | 'diff' | 'incr';
  parent: string | null;
  full: string;
  completedAt: string;
  tree: Map<string, SnapshotEntry>;
  state: State;
  /** Its tree holds the marker the health check fails on. */
  broken: boolean;
}

interface Model {
  points: Map<string, Point>;
  /** In the order they were taken. */
  order: string[];
  pins: Set<string>;
  served?: string;
  previous?: string;
  live: State;
  /** Whether the last switch put the serving state back (not with --no-state): a rollback that undoes it does the same. */
  lastWithState: boolean;
  /** The last event status lists for the target (`failover ID ok`), when known. */
  lastEvent?: string;
  /** Points a prune removed. */
  removed: string[];
  /** What each slot's models hold, where known: its point's tree, or what was written to it while served. */
  slots: Map<string, Map<string, SnapshotEntry>>;
}

const sameState = (a: State, b: State) => a.registry === b.registry && a.version === b.version;
const showState = (s: State) => `${s.version.trim()} ${s.registry}`;

function readRegistry(file: string): string {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return JSON.stringify(db.prepare('SELECT k, v FROM kv ORDER BY k').all());
  } finally {
    db.close();
  }
}

function writeRegistry(file: string, rand: () => number, round: number): void {
  const db = new Database(file);
  try {
    db.pragma('journal_mode = wal');
    db.exec('CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)');
    db.prepare('INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)').run(`model-${Math.floor(rand() * 4)}`, `round ${round}`);
    if (rand() < 0.2) db.prepare("DELETE FROM kv WHERE k = ? AND k <> 'model-0'").run(`model-${Math.floor(rand() * 4)}`);
    db.prepare("INSERT OR REPLACE INTO kv (k, v) VALUES ('model-0', ?)").run(`round ${round}`);
  } finally {
    db.close();
  }
}

test('random sequences of backups, failovers, rollbacks, prunes, pins and killed steps always serve one whole point, as README promises', { timeout: 30 * 60_000 }, async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed} (replay with LIFEBOAT_TEST_SEED=${seed}; more steps with LIFEBOAT_TEST_STEPS, now ${STEPS})`);
  const rand = prng(seed);
  const work = await tempDir('lifeboat-lifecycle-');
  const live = path.join(work, 'live');
  // Backed up from a tree of its own, or, as README's example does, through the active link: from the slot served.
  const throughLink = process.env.LIFEBOAT_TEST_THROUGH_LINK ? process.env.LIFEBOAT_TEST_THROUGH_LINK === '1' : rand() < 0.5;
  t.diagnostic(throughLink ? 'backing up the slot served, through the active link' : 'backing up a tree of its own');
  let models = path.join(live, 'models');
  const registry = path.join(live, 'registry.db');
  const versionFile = path.join(live, 'version');
  const slots = path.join(work, 'slots');
  const active = path.join(work, 'current');
  await fsp.mkdir(path.join(models, 'tok'), { recursive: true });
  for (let i = 0; i < 4; i++) await writeRandomFile(path.join(models, `shard-${i}.bin`), 1000 + Math.floor(rand() * 30_000), rand);
  // One larger file, so that restoring a slot takes long enough to be killed in.
  await writeRandomFile(path.join(models, 'weights.bin'), 3 << 20, rand);
  await fsp.writeFile(path.join(models, 'tok', 'vocab.txt'), 'a\nb\nc\n');
  await fsp.symlink('shard-0.bin', path.join(models, 'first-shard'));
  writeRegistry(registry, rand, 0);
  await fsp.writeFile(versionFile, 'v0\n');
  const configure = (modelsFrom: string) => fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    [
      'repository: ./repo',
      'sources:',
      `  models: ${modelsFrom}`,
      '  registry: { sqlite: ./live/registry.db, restore: true }',
      // The live-version pointer, put back by a command that replaces it whole.
      '  version: { command: "cat live/version", restore: "cat > live/version.new && mv live/version.new live/version" }',
      'targets:',
      '  prod:',
      '    slots: ./slots',
      '    active: ./current',
      // Unhealthy: a point whose tree holds BROKEN, or one named in `sick` (for one step).
      `    health: { command: 'test ! -e "$LIFEBOAT_SLOT/models/BROKEN" && ! grep -qxF "$LIFEBOAT_POINT" sick', timeout: 2s, interval: 200ms }`,
      // `slow` makes the hooks take their time, for a step to be killed in them.
      `    activate: 'echo "activate $LIFEBOAT_POINT"; test ! -e slow || sleep 0.3'`,
      `    deactivate: 'echo "deactivate $LIFEBOAT_POINT"; test ! -e slow || sleep 0.3'`,
      '    keepSlots: 2',
      '',
    ].join('\n'),
  );
  await configure('./live/models');
  // A host that prunes the repository and serves nothing: the journal alone says what targets serve.
  await fsp.writeFile(path.join(work, 'elsewhere.yaml'), 'repository: ./repo\n');
  const pruneHost = () => (rand() < 0.4 ? ['--config', 'elsewhere.yaml'] : []);
  const run = (args: string[]) => lifeboat(args, { cwd: work });
  assert.equal((await run(['init'])).code, 0);

  const m: Model = { points: new Map(), order: [], pins: new Set(), live: await liveState(), lastWithState: true, removed: [], slots: new Map() };
  const log: string[] = [];
  const fail = (what: string, r?: CliRun): never => {
    assert.fail(`seed ${seed}, step ${log.length}: ${what}${r ? `\n  exit ${r.code}\n  stdout: ${r.stdout.slice(0, 3000)}\n  stderr: ${r.stderr.slice(0, 3000)}` : ''}\n  steps: ${log.join('\n    ')}`);
  };
  const expectCode = (r: CliRun, codes: number | number[], what: string) => {
    if (![codes].flat().includes(r.code)) fail(`${what}: exit ${r.code}, expected ${codes}`, r);
  };

  async function liveState(): Promise<State> {
    return { registry: readRegistry(registry), version: await fsp.readFile(versionFile, 'utf8') };
  }

  async function listed(): Promise<{ id: string; type: Point['type']; parent: string | null; full: string; completedAt: string; pinned: boolean }[]> {
    const r = await run(['--json', 'list']);
    expectCode(r, 0, 'list');
    return r.json();
  }

  /** What a prune must keep: the points served and kept for a rollback, pinned ones, and what each depends on. */
  function needed(): Set<string> {
    const out = new Set<string>();
    const add = (id: string | undefined) => {
      for (let p = id ? m.points.get(id) : undefined; p && !out.has(p.id); p = p.parent ? m.points.get(p.parent) : undefined) out.add(p.id);
    };
    add(m.served);
    add(m.previous);
    for (const id of m.pins) add(id);
    return out;
  }

  async function slotState(id: string): Promise<State> {
    const slot = path.join(slots, id);
    return { registry: readRegistry(path.join(slot, 'registry', 'registry.db')), version: await fsp.readFile(path.join(slot, 'version', 'stdout'), 'utf8') };
  }

  /** Everything the model says is true, checked on disk and against list and status. */
  async function check(what: string): Promise<void> {
    const where = `after ${what}`;
    // The repository holds the points the model has, with their pins.
    const points = await listed();
    const ids = points.map((p) => p.id);
    assert.deepEqual(ids, m.order, `seed ${seed} ${where}: list`);
    for (const p of points) {
      if (p.pinned !== m.pins.has(p.id)) fail(`${where}: ${p.id} pinned ${p.pinned}, model ${m.pins.has(p.id)}`);
    }
    // The link names a whole slot of the point served, its files and state those of the point when it was taken.
    if (m.served === undefined) {
      if (await exists(active)) fail(`${where}: ${active} exists, nothing served yet`);
    } else {
      const link = await fsp.readlink(active).catch((e: Error) => fail(`${where}: the active link: ${e.message}`));
      if (path.resolve(work, link) !== path.join(slots, m.served)) fail(`${where}: the active link names ${link}, model serves ${m.served}`);
      const point = m.points.get(m.served)!;
      const slot = path.join(slots, m.served);
      const expected = m.slots.get(m.served);
      if (!expected) fail(`${where}: what the slot served holds is not known`);
      const diff = compareSnapshots(expected!, await snapshotTree(path.join(slot, 'models')));
      if (diff) fail(`${where}: slot of ${m.served} served: ${diff}`);
      const st = await slotState(m.served);
      if (!sameState(st, point.state)) fail(`${where}: the state in the slot of ${m.served} is ${showState(st)}, the point's ${showState(point.state)}`);
      if ((await fsp.readdir(slots)).some((n) => n === `.${m.served}.lifeboat-restoring`)) fail(`${where}: the slot served is marked part-restored`);
    }
    if (m.previous !== undefined && !(await exists(path.join(slots, m.previous)))) fail(`${where}: the previous slot ${m.previous} is gone`);
    if (m.previous !== undefined && m.slots.has(m.previous)) {
      const diff = compareSnapshots(m.slots.get(m.previous)!, await snapshotTree(path.join(slots, m.previous, 'models')));
      if (diff) fail(`${where}: previous slot ${m.previous}: ${diff}`);
    }
    for (const id of m.slots.keys()) if (!(await exists(path.join(slots, id)))) m.slots.delete(id);
    // The live serving state is what the model says.
    const liveNow = await liveState();
    if (!sameState(liveNow, m.live)) fail(`${where}: live state ${showState(liveNow)}, model ${showState(m.live)}`);
    // Status, text and JSON, agree with the model; a target that serves a point is healthy.
    const sj = await run(['--json', 'status']);
    expectCode(sj, 0, `${where}: status --json`);
    const target = sj.json().targets[0];
    if ((target.active?.point ?? undefined) !== m.served) fail(`${where}: status says active ${target.active?.point}, model ${m.served}`, sj);
    if ((target.previous?.point ?? undefined) !== m.previous) fail(`${where}: status says previous ${target.previous?.point}, model ${m.previous}`, sj);
    const last = target.events.at(-1) as { type: string; point: string; outcome: string } | undefined;
    if (m.lastEvent !== undefined && (last ? `${last.type} ${last.point} ${last.outcome}` : undefined) !== m.lastEvent) fail(`${where}: the last event of the target is ${JSON.stringify(last)}, expected ${m.lastEvent}`, sj);
    const st = await run(['status']);
    expectCode(st, 0, `${where}: status`);
    if (m.served && !new RegExp(`^target prod: ${m.served}, taken .* ago; healthy`, 'm').test(st.stdout)) fail(`${where}: status text`, st);
    if (m.previous && !new RegExp(`^ {2}previous: ${m.previous}$`, 'm').test(st.stdout)) fail(`${where}: status text previous`, st);
    // Its slots, as they are on disk, the active and previous ones marked.
    const onDisk = (await fsp.readdir(slots).catch(() => [] as string[])).filter((n) => !n.startsWith('.')).sort();
    const marked = onDisk.map((n) => `${n}${n === m.served ? ' (active)' : n === m.previous ? ' (previous)' : ''}`);
    const said = /^ {2}slots: (.*)$/m.exec(st.stdout)?.[1]?.split(', ').sort() ?? [];
    if (said.join(', ') !== marked.join(', ')) fail(`${where}: status text slots, expected ${marked.join(', ')}`, st);
  }

  /** A selector of a point: its id, a unique prefix, `latest`, or a time that selects it. */
  function selectorOf(id: string): string {
    const ids = m.order;
    const choice = pick(rand, ['id', 'prefix', 'latest', 'time'] as const);
    if (choice === 'latest' && id === ids[ids.length - 1]) return 'latest';
    if (choice === 'prefix') {
      for (let n = 10; n < id.length; n++) {
        const prefix = id.slice(0, n);
        if (ids.filter((x) => x.startsWith(prefix)).length === 1) return prefix;
      }
    }
    if (choice === 'time') {
      // The newest point completed at or before the time is this one: its completion, or a moment before the next's.
      const at = Date.parse(m.points.get(id)!.completedAt);
      const next = ids.slice(ids.indexOf(id) + 1).map((x) => Date.parse(m.points.get(x)!.completedAt));
      const before = Math.min(...next, at + 2);
      return new Date(at + Math.floor(rand() * (before - at))).toISOString();
    }
    return id;
  }

  async function backup(type: Point['type'], round: number): Promise<void> {
    const did = await mutateTree(models, rand, round, { operations: 1 + Math.floor(rand() * 3), sizeOf: (r) => Math.floor(r() * 20_000), skip: (f) => f.endsWith('BROKEN') });
    const broken = m.order.length > 0 && rand() < 0.15;
    if (broken) await fsp.writeFile(path.join(models, 'BROKEN'), `round ${round}\n`);
    if (rand() < 0.7) writeRegistry(registry, rand, round);
    if (rand() < 0.7) await fsp.writeFile(versionFile, `v${round}\n`);
    m.live = await liveState();
    const tree = await snapshotTree(models);
    log.push(`backup --type ${type} after ${did.join(', ')}${broken ? ', BROKEN' : ''}`);
    const r = await run(['--json', 'backup', '--type', type]);
    expectCode(r, 0, 'backup');
    await record(r.json().id, tree, broken);
    // The marker goes again at once: the deployment served stays healthy.
    await fsp.rm(path.join(models, 'BROKEN'), { force: true });
    await liveTreeChanged();
  }

  /** In the slot served, what was written there is what it holds now. */
  async function liveTreeChanged(): Promise<void> {
    if (throughLink && m.served !== undefined) m.slots.set(m.served, await snapshotTree(models));
  }

  /** A point the repository has now, taken from `tree`. */
  async function record(id: string, tree: Map<string, SnapshotEntry>, broken: boolean): Promise<void> {
    const p = (await listed()).find((x) => x.id === id);
    if (!p) fail(`backup ${id} is not listed`);
    m.points.set(id, { id, type: p!.type, parent: p!.parent, full: p!.full, completedAt: p!.completedAt, tree, state: { ...m.live }, broken });
    m.order.push(id);
  }

  /** The model after a switch to `id` that went through, putting its state back or not. */
  function switched(id: string, withState = true): void {
    if (id !== m.served) {
      if (!m.slots.has(id)) fail(`switched to ${id}, whose slot's content is not known`);
      m.previous = m.served;
      m.served = id;
      if (withState) m.live = { ...m.points.get(id)!.state };
      m.lastWithState = withState;
    }
  }

  async function failover(sick: boolean): Promise<void> {
    // Nothing served yet, a point that does not get healthy would stay linked: the first is a healthy one.
    const id = pick(rand, m.served === undefined ? m.order.filter((x) => !m.points.get(x)!.broken) : m.order);
    if (id === undefined) return;
    if (m.served === undefined) sick = false;
    const sel = selectorOf(id);
    const point = m.points.get(id)!;
    const stateFlag = rand() < 0.1 ? '--no-state' : id === m.served && rand() < 0.3 ? '--state' : undefined;
    if (sick) await fsp.writeFile(path.join(work, 'sick'), `${id}\n`);
    log.push(`failover ${sel}${stateFlag ? ` ${stateFlag}` : ''} (${id}${point.broken ? ', broken' : ''}${sick ? ', sick' : ''})`);
    const r = await run(['--json', 'failover', sel, '--to', 'prod', ...(stateFlag ? [stateFlag] : [])]);
    await fsp.rm(path.join(work, 'sick'), { force: true });
    const doc = r.stdout ? r.json() : {};
    if (doc.point !== undefined && doc.point !== id) fail(`failover ${sel} chose ${doc.point}, expected ${id}`, r);
    const unhealthy = point.broken || sick;
    if (unhealthy && id !== m.served && m.served !== undefined) {
      // Switched back to the slot served before, with its state; the previous slot stays the one a rollback goes to.
      expectCode(r, 5, 'failover to an unhealthy point');
      if (doc.outcome !== 'rolled-back' || doc.previousHealthy !== true) fail('failover to an unhealthy point', r);
      m.slots.set(id, point.tree);
      if (stateFlag !== '--no-state') m.live = { ...m.points.get(m.served)!.state };
      m.lastEvent = `failover ${id} rolled-back`;
    } else if (unhealthy) {
      // The point served: its state is left alone (unless --state), and it is not healthy.
      expectCode(r, 5, 'failover again to the point served, which is unhealthy');
      m.slots.set(id, point.tree);
      if (stateFlag === '--state') m.live = { ...point.state };
      m.lastEvent = undefined;
    } else {
      expectCode(r, 0, 'failover');
      if (doc.outcome !== 'ok') fail('failover outcome', r);
      if (id === m.served && stateFlag === '--state') m.live = { ...point.state };
      m.slots.set(id, point.tree);
      const before = m.served;
      switched(id, stateFlag !== '--no-state');
      m.lastEvent = `failover ${id} ok`;
      if (id !== before) {
        // Slots beyond keepSlots (2) are removed once the new one is healthy, never the active or previous one.
        const left = (await fsp.readdir(slots)).filter((n) => !n.startsWith('.'));
        if (left.length > 2) fail(`${left.length} slots left after a failover with keepSlots 2: ${left.join(', ')}`, r);
      }
    }
  }

  async function rollback(sick: boolean): Promise<void> {
    const to = m.previous;
    const stateFlag = rand() < 0.1 ? pick(rand, ['--no-state', '--state']) : undefined;
    if (sick && to) await fsp.writeFile(path.join(work, 'sick'), `${to}\n`);
    log.push(`rollback${stateFlag ? ` ${stateFlag}` : ''} (to ${to}${sick ? ', sick' : ''})`);
    const r = await run(['--json', 'rollback', '--to', 'prod', ...(stateFlag ? [stateFlag] : [])]);
    await fsp.rm(path.join(work, 'sick'), { force: true });
    if (!to) {
      expectCode(r, 2, 'rollback with no previous slot');
      return;
    }
    const doc = r.json();
    if (doc.point !== to) fail(`rollback went to ${doc.point}, expected ${to}`, r);
    // A rollback puts the state back as the switch it undoes did, unless told.
    const withState = stateFlag === undefined ? m.lastWithState : stateFlag === '--state';
    if (sick || m.points.get(to)!.broken) {
      expectCode(r, 5, 'rollback to an unhealthy slot');
      if (withState) m.live = { ...m.points.get(m.served!)!.state };
      m.lastEvent = `rollback ${to} rolled-back`;
    } else {
      expectCode(r, 0, 'rollback');
      switched(to, withState);
      m.lastEvent = `rollback ${to} ok`;
    }
  }

  /**
   * A failover and a prune started together: the prune waits for the failover, which reads, or the failover
   * for the prune; a point the prune removes is refused (exit 2), and one served is never removed.
   */
  async function failoverBesidePrune(): Promise<void> {
    const healthy = m.order.filter((id) => !m.points.get(id)!.broken);
    if (healthy.length === 0) return;
    const id = pick(rand, healthy);
    log.push(`failover ${id} beside a prune`);
    const children = [['--json', 'failover', id, '--to', 'prod'], [...pruneHost(), '--json', 'prune', '--keep-full', '1', '--keep-diff', '0']].map((args) => {
      const child = spawnLifeboat(args, { cwd: work });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout!.on('data', (c: Buffer) => out.push(c));
      child.stderr!.on('data', (c: Buffer) => err.push(c));
      return new Promise<CliRun>((resolve) =>
        child.on('close', (code) => {
          const stdout = Buffer.concat(out).toString();
          resolve({ code: code ?? 1, stdout, stderr: Buffer.concat(err).toString(), json: () => JSON.parse(stdout) });
        }),
      );
    });
    const [f, p] = await Promise.all(children);
    log.push(`  failover ended ${f!.code}, prune ${p!.code}`);
    expectCode(p!, [0, 4], 'a prune beside a failover');
    const now = new Set((await listed()).map((x) => x.id));
    if (f!.code === 0) {
      if (!now.has(id)) fail(`the prune removed ${id}, which the failover beside it switched to`, p);
      m.slots.set(id, m.points.get(id)!.tree);
      switched(id);
      m.lastEvent = `failover ${id} ok`;
    } else {
      expectCode(f!, 2, 'a failover beside a prune');
      if (now.has(id)) fail(`the failover of ${id} beside a prune was refused, but the point is still there`, f);
    }
    await afterPrune('a prune beside a failover', m.order.filter((x) => !now.has(x)), false);
  }

  /** A failover to a point a prune removed is refused, changing nothing. */
  async function failoverToRemoved(): Promise<void> {
    const id = pick(rand, m.removed);
    log.push(`failover ${id}, which was pruned`);
    const r = await run(['failover', id, '--to', 'prod']);
    expectCode(r, 2, 'failover to a pruned point');
  }

  async function prune(): Promise<void> {
    const keepFull = 1 + Math.floor(rand() * 2);
    const keepDiff = Math.floor(rand() * 2);
    const args = [...pruneHost(), '--json', 'prune', '--keep-full', String(keepFull), '--keep-diff', String(keepDiff)];
    const dry = rand() < 0.2;
    if (dry) args.push('--dry-run');
    log.push(args.filter((a) => a !== '--json').join(' '));
    const r = await run(args);
    expectCode(r, 0, 'prune');
    await afterPrune(dry ? 'prune --dry-run' : 'prune', r.json().remove.map((x: { id: string }) => x.id), dry);
  }

  /** The points a prune removed, or said it would: none that serving or a pin needs. */
  async function afterPrune(what: string, removed: string[], dry: boolean): Promise<void> {
    const need = needed();
    for (const id of removed) if (need.has(id)) fail(`${what} removed ${id}, which is needed (served ${m.served}, previous ${m.previous}, pinned ${[...m.pins]})`);
    if (removed.includes(m.order[m.order.length - 1]!)) fail(`${what} removed the newest point`);
    if (dry) return;
    const now = new Set((await listed()).map((p) => p.id));
    for (const id of m.order.filter((x) => !now.has(x))) {
      m.removed.push(id);
      m.points.delete(id);
      m.pins.delete(id);
    }
    m.order = m.order.filter((x) => now.has(x));
    for (const id of need) if (!now.has(id)) fail(`${what} removed ${id}, which is needed`);
  }

  async function pinOrUnpin(): Promise<void> {
    if (m.pins.size > 0 && rand() < 0.4) {
      const id = pick(rand, [...m.pins]);
      log.push(`unpin ${id}`);
      expectCode(await run(['unpin', id]), 0, 'unpin');
      m.pins.delete(id);
    } else {
      const id = pick(rand, m.order);
      log.push(`pin ${id}`);
      expectCode(await run(['pin', selectorOf(id), '--reason', `kept in round ${log.length}`]), 0, 'pin');
      m.pins.add(id);
    }
  }

  async function verify(): Promise<void> {
    log.push('verify');
    const r = await run(['--json', 'verify', ...(rand() < 0.3 ? ['--read-data'] : [])]);
    expectCode(r, 0, 'verify');
    if (r.json().ok !== true) fail('verify', r);
  }

  /** Damage the slot of a point neither served nor kept for a rollback: the next failover to it repairs it. */
  async function tamper(): Promise<void> {
    const spare = (await fsp.readdir(slots).catch(() => [] as string[])).filter((n) => m.points.has(n) && n !== m.served && n !== m.previous);
    if (spare.length === 0) return;
    const id = pick(rand, spare);
    const files = (await fsp.readdir(path.join(slots, id, 'models'))).filter((n) => n.endsWith('.bin'));
    log.push(`tamper with the slot of ${id}`);
    m.slots.delete(id);
    if (files.length > 0) await fsp.appendFile(path.join(slots, id, 'models', pick(rand, files)), 'stray');
    await fsp.writeFile(path.join(slots, id, 'models', 'stray.txt'), 'not in the point');
  }

  /**
   * A failover, rollback, backup or prune killed (SIGKILL) or interrupted (SIGINT) at a random moment:
   * after a random time, or once it printed a chosen line. Then what README says recovers.
   */
  async function killed(round: number): Promise<void> {
    const kind = pick(rand, ['failover', 'failover', 'rollback', 'backup', 'prune'] as const);
    const signal = pick(rand, ['SIGKILL', 'SIGINT'] as const);
    const before = { served: m.served, previous: m.previous, live: { ...m.live } };
    if (kind === 'failover' || kind === 'rollback') m.lastEvent = undefined;
    let args: string[];
    let to: string | undefined;
    let tree: Map<string, SnapshotEntry> | undefined;
    let broken = false;
    if (kind === 'failover') {
      to = pick(rand, m.served === undefined ? m.order.filter((x) => !m.points.get(x)!.broken) : m.order);
      if (to === undefined) return;
      args = ['failover', to, '--to', 'prod'];
    } else if (kind === 'rollback') {
      to = m.previous;
      args = ['rollback', '--to', 'prod'];
    } else if (kind === 'backup') {
      await mutateTree(models, rand, round, { operations: 2, sizeOf: (r) => Math.floor(r() * 20_000), skip: (f) => f.endsWith('BROKEN') });
      await liveTreeChanged();
      writeRegistry(registry, rand, round);
      await fsp.writeFile(versionFile, `v${round}\n`);
      m.live = await liveState();
      before.live = { ...m.live };
      tree = await snapshotTree(models);
      args = ['backup', '--type', pick(rand, ['full', 'diff', 'incr'])];
    } else args = [...pruneHost(), 'prune', '--keep-full', '1', '--keep-diff', '0'];
    const slow = rand() < 0.5;
    if (slow) await fsp.writeFile(path.join(work, 'slow'), '');
    const sick = kind === 'failover' && to !== before.served && rand() < 0.3;
    if (sick) await fsp.writeFile(path.join(work, 'sick'), `${to}\n`);
    // Killed a random time after it started, or after a line it prints: a moment of its work.
    const lines: Record<typeof kind, RegExp[]> = {
      failover: [/restoring \S+ into/, /checking slot/, /restoring the SQLite/, /restoring the state of version/, /running deactivate hook/, /running activate hook/, /Z activate /, /health check/, /switching back/, /putting back/],
      rollback: [/restoring the SQLite/, /restoring the state of version/, /running deactivate hook/, /running activate hook/, /Z activate /, /health check/, /switching back/],
      backup: [/registry: copied/, /version: captured/],
      prune: [],
    };
    const waitLine = rand() < 0.6 && lines[kind].length > 0 ? pick(rand, lines[kind]) : undefined;
    const delay = Math.floor(rand() * (waitLine ? 150 : 1500));
    log.push(`${args.join(' ')} killed with ${signal} ${waitLine ? `${delay} ms after ${waitLine}` : `after ${delay} ms`}${slow ? ' (slow hooks)' : ''}${sick ? ' (sick)' : ''}`);
    const child = spawnLifeboat(args, { cwd: work });
    let stderr = '';
    child.stdout!.resume();
    const exited = new Promise<number>((resolve) => child.on('close', (code, sig) => resolve(code ?? (sig ? 128 : 1))));
    let done = false;
    void exited.then(() => (done = true));
    const seen = new Promise<void>((resolve) => {
      child.stderr!.on('data', (c: Buffer) => {
        stderr += c.toString();
        if (waitLine?.test(stderr)) resolve();
      });
    });
    if (waitLine) await Promise.race([seen, exited]);
    await sleep(delay);
    if (!done) child.kill(signal);
    const code = await exited;
    await fsp.rm(path.join(work, 'slow'), { force: true });
    await fsp.rm(path.join(work, 'sick'), { force: true });
    log.push(`  ended ${code}: ${stderr.trim().split('\n').slice(-2).join(' | ')}`);
    if (process.env.LIFEBOAT_TEST_LOG) log.push(stderr);

    // The repository: a killed backup left its point whole or none at all.
    const now = await listed();
    if (kind === 'backup') {
      const fresh = now.filter((p) => !m.points.has(p.id));
      if (fresh.length > 1) fail(`a killed backup left ${fresh.length} points`);
      if (fresh.length === 1) await record(fresh[0]!.id, tree!, broken);
    }
    if (kind === 'prune') await afterPrune('a killed prune', m.order.filter((x) => !now.some((p) => p.id === x)), false);

    // The link names the slot of the point served before, or of the one switched to, never anything else.
    if (kind === 'failover' || kind === 'rollback') {
      const link = (await exists(active)) ? path.resolve(work, await fsp.readlink(active)) : undefined;
      const servedNow = link === undefined ? undefined : path.basename(link);
      if (link !== undefined && path.dirname(link) !== slots) fail(`a killed ${kind} left the link naming ${link}`);
      if (servedNow !== before.served && servedNow !== to) fail(`a killed ${kind} left ${servedNow} served, neither ${before.served} nor ${to}`);
      if (servedNow !== before.served) {
        m.previous = before.served;
        m.served = servedNow;
        if (kind === 'failover') m.lastWithState = true;
      }
      // Each slot it may have written holds what it held, or its point whole; or, marked so, a mix that status names.
      for (const id of new Set([before.served, to])) {
        if (id === undefined || !(await exists(path.join(slots, id, 'models')))) continue;
        const actual = await snapshotTree(path.join(slots, id, 'models'));
        const known = m.slots.get(id);
        if (known && !compareSnapshots(known, actual)) continue;
        if (!compareSnapshots(m.points.get(id)!.tree, actual)) {
          m.slots.set(id, m.points.get(id)!.tree);
          continue;
        }
        if (!known) continue;
        if (!(await exists(path.join(slots, `.${id}.lifeboat-restoring`)))) fail(`a killed ${kind} left the slot of ${id} holding a mix, with nothing that says so: ${compareSnapshots(known, actual)}`);
        log.push(`  the slot of ${id} is left part-restored`);
        m.slots.delete(id);
      }
    }
    await recover(kind, before.live);
  }

  /** What README says to run after a step was killed: status, and the command its hint names, until status is clear. */
  async function recover(kind: string, liveBefore: State): Promise<void> {
    if (m.served !== undefined && m.points.get(m.served)!.broken) {
      // Killed once it had switched to a slot that is not healthy: the switch is recorded, and a rollback returns.
      const st = await run(['status']);
      expectCode(st, 5, 'status of a target killed while it served a point that is not healthy');
      log.push(`  rollback out of ${m.served}, which is not healthy`);
      const to = m.previous!;
      const r = await run(['--json', 'rollback', '--to', 'prod']);
      expectCode(r, 0, 'rollback out of a point that is not healthy');
      if (r.json().point !== to) fail(`the rollback went to ${r.json().point}, expected ${to}`, r);
      switched(to, m.lastWithState);
      m.lastEvent = undefined;
      liveBefore = { ...m.live };
    }
    const healthy = m.order.filter((id) => !m.points.get(id)!.broken);
    if ((kind === 'failover' || kind === 'rollback') && rand() < 0.4 && healthy.length > 0) {
      // Or the operator moves on: the next failover finishes what the killed one left, then fails over.
      const to = pick(rand, healthy);
      log.push(`  failover ${to}`);
      const r = await run(['--json', 'failover', to, '--to', 'prod']);
      expectCode(r, 0, 'the failover after a killed one');
      m.slots.set(to, m.points.get(to)!.tree);
      m.lastEvent = undefined;
      if (to !== m.served) {
        switched(to);
        liveBefore = { ...m.live };
      }
    }
    for (let i = 0; ; i++) {
      const st = await run(['status']);
      if (st.code === 0) break;
      if (i === 3) fail(`status still not clear after a killed ${kind}`, st);
      const hint = /^ {2}lifeboat (failover \S+ --to prod(?: --state)?|restore \S+ --target \S+ --delta)\b/m.exec(st.stderr);
      if (!hint) fail(`status after a killed ${kind} names nothing to run`, st);
      log.push(`  as status says: lifeboat ${hint![1]}`);
      m.lastEvent = undefined;
      const args = hint![1]!.split(' ');
      const r = await run(args);
      expectCode(r, 0, `lifeboat ${hint![1]}`);
      const id = args[1]!;
      m.slots.set(id, m.points.get(id)!.tree);
      if (args[0] === 'failover' && id !== m.served) switched(id);
    }
    if (kind === 'backup' || kind === 'prune') {
      if (rand() < 0.5) {
        log.push('  unlock');
        expectCode(await run(['unlock']), [0, 2], 'unlock');
      }
      return;
    }
    // The serving state is that of the point served, or, when the killed step had not touched it, what it was: never a mix.
    const liveNow = await liveState();
    const served = m.served ? m.points.get(m.served)!.state : undefined;
    if (served && sameState(liveNow, served)) m.live = { ...served };
    else if (sameState(liveNow, liveBefore)) m.live = liveBefore;
    else fail(`after a killed ${kind}: live state ${showState(liveNow)}, neither the served point's ${served ? showState(served) : '-'} nor what it was ${showState(liveBefore)}`);
  }

  for (let step = 0; step < STEPS; step++) {
    if (m.order.length === 0) {
      await backup('full', step);
      if (throughLink) {
        // Served from then on, and backed up from the slot served.
        const first = m.order[0]!;
        log.push(`failover ${first}, then back up ./current/models`);
        expectCode(await run(['--json', 'failover', first, '--to', 'prod']), 0, 'the first failover');
        m.slots.set(first, m.points.get(first)!.tree);
        switched(first);
        m.lastEvent = `failover ${first} ok`;
        await configure('./current/models');
        models = path.join(active, 'models');
      }
      await check('the first backup');
      continue;
    }
    const r = rand();
    let what: string;
    if (r < 0.25) {
      const type = pick(rand, ['full', 'diff', 'incr'] as const);
      await backup(type, step);
      what = `backup ${type}`;
    } else if (r < 0.47) {
      await failover(rand() < 0.15);
      what = 'failover';
    } else if (r < 0.6) {
      await rollback(rand() < 0.15);
      what = 'rollback';
    } else if (r < 0.68) {
      await prune();
      what = 'prune';
    } else if (r < 0.76) {
      await pinOrUnpin();
      what = 'pin';
    } else if (r < 0.78) {
      await verify();
      what = 'verify';
    } else if (r < 0.8) {
      if (m.removed.length > 0) await failoverToRemoved();
      what = 'failover to a pruned point';
    } else if (r < 0.82) {
      await tamper();
      what = 'tamper';
    } else if (r < 0.85) {
      await failoverBesidePrune();
      what = 'a failover beside a prune';
    } else {
      await killed(step);
      what = 'a killed step';
    }
    await check(what);
  }
  await verify();
  t.diagnostic(`${log.filter((l) => !l.startsWith(' ')).length} steps${process.env.LIFEBOAT_TEST_LOG ? `:\n${log.join('\n')}` : ''}`);
  await fsp.rm(work, { recursive: true, force: true });
});
