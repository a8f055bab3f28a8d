import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat, spawnLifeboat, type CliRun } from './helpers/cli.js';
import { s3ServerForSuite } from './helpers/s3server.js';
import { sleep } from './helpers/processes.js';
import { compareSnapshots, mutateTree, pick, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile, type SnapshotEntry } from './helpers/tree.js';

/**
 * A randomized differential test of the Storage interface's promise that the S3 driver drops in
 * without touching the core: two repositories side by side, one on local disk and one in a bucket
 * of a real S3 server, both encrypted or both plain, take the same random sequence of backups,
 * prunes, pins, key changes, listings, verifies, restores and killed steps. After every step they
 * must have answered the same: exit codes, --json documents once what must differ is normalised
 * (point and key ids, times, the repository's location), warnings, and restores byte for byte,
 * each also equal to the tree the point was taken of.
 */

const PASSWORD = 'twin-password-0';

type Twin = 'local' | 's3';
const TWINS: readonly Twin[] = ['local', 's3'];

interface Point {
  type: 'full' | 'diff' | 'incr';
  /** Snapshot of the parent of the source, so its keys are `models/...` as a restore's are. */
  tree: Map<string, SnapshotEntry>;
}

const s3 = s3ServerForSuite();

test('a repository on S3 answers every command as the same repository on local disk does', { timeout: 60 * 60_000 }, async (t) => {
  const seed = seedFromEnv();
  const rand = prng(seed);
  const encrypted = process.env.LIFEBOAT_TEST_ENCRYPTED ? process.env.LIFEBOAT_TEST_ENCRYPTED === '1' : rand() < 0.5;
  // Each command of an encrypted repository first derives its key with scrypt: fewer steps in the same time.
  const STEPS = Number(process.env.LIFEBOAT_TEST_STEPS) || (encrypted ? 16 : 30);
  t.diagnostic(`seed ${seed} (replay with LIFEBOAT_TEST_SEED=${seed}; more steps with LIFEBOAT_TEST_STEPS, now ${STEPS})`);
  t.diagnostic(encrypted ? 'both repositories encrypted' : 'both repositories plain');
  const work = await tempDir('lifeboat-s3twin-');
  const live = path.join(work, 'live');
  const models = path.join(live, 'models');
  await fsp.mkdir(path.join(models, 'tok'), { recursive: true });
  await fsp.mkdir(path.join(models, 'llama', 'shards'), { recursive: true });
  for (let i = 0; i < 5; i++) await writeRandomFile(path.join(models, i % 2 ? 'llama/shards' : 'llama', `shard-${i}.bin`), 1000 + Math.floor(rand() * 60_000), rand);
  // Large enough for a step to be killed while it stores it.
  await writeRandomFile(path.join(models, 'weights.bin'), 4 << 20, rand);
  await fsp.writeFile(path.join(models, 'tok', 'vocab.txt'), 'a\nb\nc\n');
  await fsp.writeFile(path.join(models, 'empty.txt'), '');
  await fsp.symlink('llama/shard-0.bin', path.join(models, 'first-shard'));

  const location: Record<Twin, string> = { local: path.join(work, 'repo'), s3: `s3://${s3.bucket}/twin-${seed}-${Date.now()}` };
  const repoArgs = (twin: Twin) => (twin === 'local' ? ['--repo', location.local] : ['--repo', location.s3, '--s3-endpoint', s3.server.endpoint, '--s3-path-style']);
  let password = PASSWORD;
  const env = (): NodeJS.ProcessEnv => ({ ...s3.server.env, ...(encrypted ? { LIFEBOAT_PASSWORD: password } : {}) });
  const run = (twin: Twin, args: string[]) => lifeboat([...repoArgs(twin), ...args], { cwd: work, env: env() });
  const both = async (args: string[] | ((twin: Twin) => string[])): Promise<Record<Twin, CliRun>> => {
    const [l, s] = await Promise.all(TWINS.map((tw) => run(tw, typeof args === 'function' ? args(tw) : args)));
    return { local: l!, s3: s! };
  };

  const points: Record<Twin, string[]> = { local: [], s3: [] };
  const model: Point[] = [];
  /** Every key id seen, in the order made, for naming them alike; and those the repositories hold now. */
  const keys: Record<Twin, string[]> = { local: [], s3: [] };
  const current: Record<Twin, string[]> = { local: [], s3: [] };
  const log: string[] = [];
  const fail = (what: string, r?: Record<Twin, CliRun>): never => {
    const show = (tw: Twin) => (r ? `\n  ${tw}: exit ${r[tw].code}\n    stdout: ${r[tw].stdout.slice(0, 4000)}\n    stderr: ${r[tw].stderr.slice(0, 4000)}` : '');
    assert.fail(`seed ${seed}${encrypted ? ' (encrypted)' : ''}, step ${log.length}: ${what}${show('local')}${show('s3')}\n  steps:\n    ${log.join('\n    ')}`);
  };

  /** Replaces what must differ between the twins: ids by their place, times, locations. */
  const normalise = (twin: Twin, value: unknown, extra: Record<string, string> = {}): unknown => {
    const names: [string, string][] = [
      ...points[twin].map((id, i): [string, string] => [id, `P${i}`]),
      ...keys[twin].map((id, i): [string, string] => [id, `K${i}`]),
      ...Object.entries(extra),
      [location[twin], '<repo>'],
      [work, '<work>'],
    ];
    const text = (s: string) => {
      let out = s;
      for (const [from, to] of names) out = out.split(from).join(to);
      // Time-like fields in text: ISO instants and durations.
      return out.replace(/\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?Z?/g, '<time>').replace(/\b\d+(\.\d+)?\s?(ms|s)\b/g, '<duration>');
    };
    const walk = (v: unknown, key?: string): unknown => {
      if (key !== undefined && /At$|^durationMs$|^rtoMs$|^rpoMs$|^time$|^ageMs$/.test(key)) return '<time>';
      if (typeof v === 'string') return text(v);
      if (Array.isArray(v)) return v.map((x) => walk(x));
      if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [text(k), walk(x, k)]));
      return v;
    };
    return walk(value);
  };
  const warningLines = (twin: Twin, r: CliRun, extra?: Record<string, string>) =>
    r.stderr
      .split('\n')
      .filter((l) => /warning/i.test(l))
      .map((l) => normalise(twin, l, extra) as string);

  /** The same exit code, the same normalised --json document (when `json`), the same warnings. */
  const same = (what: string, r: Record<Twin, CliRun>, options: { json?: boolean; text?: boolean; extra?: Record<Twin, Record<string, string>>; ignore?: (doc: any) => void } = {}): any => {
    if (r.local.code !== r.s3.code) fail(`${what}: exit ${r.local.code} on local disk, ${r.s3.code} on S3`, r);
    let doc: any;
    if (options.json) {
      const docs = TWINS.map((tw) => {
        let d: any;
        try {
          d = r[tw].json();
        } catch {
          fail(`${what}: ${tw} printed no JSON document`, r);
        }
        const n: any = normalise(tw, d, options.extra?.[tw]);
        options.ignore?.(n);
        return n;
      });
      try {
        assert.deepEqual(docs[1], docs[0]);
      } catch (e) {
        fail(`${what}: the --json documents differ (local is expected, S3 actual): ${(e as Error).message}`, r);
      }
      doc = docs[0];
    }
    if (options.text) {
      const texts = TWINS.map((tw) => normalise(tw, r[tw].stdout, options.extra?.[tw]) as string);
      try {
        assert.equal(texts[1], texts[0]);
      } catch (e) {
        fail(`${what}: the text output differs (local is expected, S3 actual): ${(e as Error).message}`, r);
      }
    }
    const w = TWINS.map((tw) => warningLines(tw, r[tw], options.extra?.[tw]));
    try {
      assert.deepEqual(w[1], w[0]);
    } catch (e) {
      fail(`${what}: the warnings differ: ${(e as Error).message}`, r);
    }
    return doc;
  };

  /** Reads both lists, checks them equal and in step with the model, and learns ids of new points. */
  const syncList = async (what: string): Promise<void> => {
    const r = await both(['--json', 'list']);
    if (r.local.code !== 0 || r.s3.code !== 0) fail(`list ${what}`, r);
    for (const tw of TWINS) points[tw] = (r[tw].json() as { id: string }[]).map((p) => p.id);
    same(`list ${what}`, r, { json: true });
  };

  const snapshotLive = () => snapshotTree(live);

  // init
  {
    const r = await both(encrypted ? ['--json', 'init', '--encryption', 'aes-256-gcm'] : ['--json', 'init']);
    if (r.local.code !== 0) fail('init', r);
    if (encrypted) await learnKeys();
    same('init', r, { json: true, ignore: (d) => delete d?.id });
  }

  async function learnKeys(): Promise<void> {
    const r = await both(['--json', 'key', 'list']);
    if (r.local.code !== 0) fail('key list', r);
    for (const tw of TWINS) {
      current[tw] = (r[tw].json() as { id: string }[]).map((k) => k.id);
      for (const id of current[tw]) if (!keys[tw].includes(id)) keys[tw].push(id);
    }
    same('key list', r, { json: true });
  }

  const typeFlag = (): Point['type'] => (model.length === 0 ? 'full' : pick(rand, ['full', 'diff', 'incr', 'incr'] as const));

  async function backup(round: number, what = 'backup'): Promise<void> {
    const type = typeFlag();
    const args = ['--json', 'backup', '--source', `models=${models}`, '--type', type];
    if (rand() < 0.3) args.push('--tag', `round=${round}`);
    log.push(`${what} --type ${type}`);
    const tree = await snapshotLive();
    const r = await both(args);
    if (r.local.code !== 0) fail(what, r);
    const before = points.local.length;
    await syncList(`after ${what}`);
    if (points.local.length !== before + 1) fail(`${what}: ${points.local.length - before} new points`, r);
    same(what, r, { json: true });
    model.push({ type, tree });
  }

  async function mutate(round: number): Promise<void> {
    const did = await mutateTree(models, rand, round, {
      operations: 1 + Math.floor(rand() * 5),
      // Now and then one past the driver's part size, stored as a multipart upload on S3.
      sizeOf: (r) => (r() < 0.05 ? (8 << 20) + Math.floor(r() * 100_000) : Math.floor(r() * 80_000)),
      skip: (f) => f.endsWith('weights.bin') && rand() < 0.7,
    });
    // A tree whittled down to nothing would make the next backup refuse, as README says it must.
    const left = (await snapshotLive()).size;
    if (left < 8) {
      await fsp.mkdir(path.join(models, 'llama'), { recursive: true });
      await writeRandomFile(path.join(models, 'llama', `refill-${round}.bin`), 1 + Math.floor(rand() * 50_000), rand);
      did.push(`add llama/refill-${round}.bin`);
    }
    log.push(`mutate: ${did.join(', ')}`);
  }

  const pointIndex = () => Math.floor(rand() * points.local.length);

  async function restore(round: number): Promise<void> {
    if (points.local.length === 0) return;
    const i = pick(rand, [points.local.length - 1, pointIndex()]);
    const expected = model[i]!.tree;
    const delta = rand() < 0.4;
    const include = rand() < 0.3 ? pick(rand, ['models/llama', 'models/tok', 'models/llama/**/*.bin', 'models/weights.bin', 'models/nothing-here']) : undefined;
    const target = (tw: Twin) => path.join(work, delta ? `delta-${tw}` : `restore-${tw}-${round}`);
    const args = (tw: Twin) => ['--json', 'restore', points[tw][i]!, '--target', target(tw), ...(delta ? ['--delta'] : []), ...(include ? ['--include', include] : [])];
    log.push(`restore P${i}${delta ? ' --delta' : ''}${include ? ` --include ${include}` : ''}`);
    const r = await both(args);
    same(`restore P${i}`, r, { json: true, extra: { local: { [target('local')]: '<target>' }, s3: { [target('s3')]: '<target>' } } });
    if (r.local.code !== 0) {
      // --include that matches nothing in the point is exit 2.
      const matches = include && [...expected.keys()].some((p) => p === include || p.startsWith(`${include}/`) || (include.endsWith('*.bin') && p.startsWith('models/llama/') && p.endsWith('.bin')));
      if (include && !matches && r.local.code === 2) return;
      fail(`restore P${i}`, r);
    }
    const got = await Promise.all(TWINS.map((tw) => snapshotTree(target(tw))));
    const twins = compareSnapshots(got[0]!, got[1]!);
    if (twins) fail(`restore P${i}: S3's restore differs from local's: ${twins}`, r);
    if (!include) {
      const diff = compareSnapshots(expected, got[0]!);
      if (diff) fail(`restore P${i}: differs from the tree the point was taken of: ${diff}`, r);
    } else {
      // What the restore wrote is what the point holds.
      for (const [p, e] of got[0]!) {
        const m = expected.get(p);
        if (!m || m.type !== e.type || (e.type === 'file' && (m.sha256 !== e.sha256 || m.mode !== e.mode))) {
          if (!delta) fail(`restore P${i} --include ${include}: ${p} is not as in the point`, r);
        }
      }
    }
    if (!delta) for (const tw of TWINS) await fsp.rm(target(tw), { recursive: true, force: true });
  }

  async function prune(): Promise<void> {
    const args = ['--json', 'prune', '--keep-full', String(1 + Math.floor(rand() * 3))];
    if (rand() < 0.4) args.push('--keep-diff', String(Math.floor(rand() * 3)));
    if (rand() < 0.2) args.push('--keep-within', pick(rand, ['1h', '30d']));
    const dry = rand() < 0.4;
    if (dry) args.push('--dry-run');
    log.push(args.slice(1).join(' '));
    const before = [...points.local];
    const r = await both(args);
    same(args.slice(1).join(' '), r, { json: true });
    if (r.local.code !== 0) fail('prune', r);
    if (!dry) await forgetRemoved(before);
  }

  /** After a prune: drops the removed points from the model, which must be the same on both. */
  async function forgetRemoved(before: string[]): Promise<void> {
    await syncList('after a prune');
    for (let i = before.length - 1; i >= 0; i--) if (!points.local.includes(before[i]!)) model.splice(i, 1);
    if (model.length !== points.local.length) fail(`the model has ${model.length} points, the repository ${points.local.length}`);
  }

  async function pin(): Promise<void> {
    if (points.local.length === 0) return;
    const i = pointIndex();
    const unpin = rand() < 0.4;
    log.push(`${unpin ? 'unpin' : 'pin'} P${i}`);
    const r = await both((tw) => ['--json', unpin ? 'unpin' : 'pin', points[tw][i]!, ...(unpin ? [] : ['--reason', `hold ${i}`])]);
    same(`${unpin ? 'unpin' : 'pin'} P${i}`, r, { json: true });
    await syncList(`after ${unpin ? 'unpin' : 'pin'}`);
  }

  async function key(round: number): Promise<void> {
    if (!encrypted) return;
    const remove = current.local.length > 1 && rand() < 0.5;
    if (remove) {
      const i = Math.floor(rand() * current.local.length);
      const name = `K${keys.local.indexOf(current.local[i]!)}`;
      log.push(`key remove ${name}`);
      const r = await both((tw) => ['--json', 'key', 'remove', current[tw][i]!]);
      await learnKeys();
      same(`key remove ${name}`, r, { json: true });
      return;
    } else if (rand() < 0.3) {
      const file = path.join(work, `pw-${round}`);
      await fsp.writeFile(file, `twin-password-${round}\n`);
      log.push('key passwd');
      const r = await both(['--json', 'key', 'passwd', '--new-password-file', file]);
      if (r.local.code === 0) password = `twin-password-${round}`;
      await learnKeys();
      same('key passwd', r, { json: true });
    } else {
      const file = path.join(work, `pw-${round}`);
      await fsp.writeFile(file, `twin-password-${round}\n`);
      log.push('key add');
      const r = await both(['--json', 'key', 'add', '--new-password-file', file]);
      await learnKeys();
      same('key add', r, { json: true });
    }
  }

  async function look(): Promise<void> {
    if (points.local.length === 0) return;
    const what = pick(rand, ['list', 'show', 'diff', 'verify', 'verify-point', 'read-data'] as const);
    // What a person reads, as well as --json.
    const text = rand() < 0.4;
    const mode = text ? [] : ['--json'];
    const compare = { json: !text, text };
    if (what === 'list') {
      log.push(`list${text ? ' (text)' : ''}`);
      same('list', await both([...mode, 'list']), compare);
      return;
    }
    if (what === 'show') {
      const i = pointIndex();
      log.push(`show P${i}${text ? ' (text)' : ''}`);
      same(`show P${i}`, await both((tw) => [...mode, 'show', points[tw][i]!]), compare);
    } else if (what === 'diff') {
      const a = pointIndex();
      const b = pointIndex();
      log.push(`diff P${a} P${b}${text ? ' (text)' : ''}`);
      same(`diff P${a} P${b}`, await both((tw) => [...mode, 'diff', points[tw][a]!, points[tw][b]!]), compare);
    } else {
      const args = [...mode, 'verify'];
      if (what === 'verify-point') args.push('latest');
      if (what === 'read-data' || rand() < 0.3) args.push('--read-data');
      log.push(args.join(' '));
      const r = await both(args);
      same(args.join(' '), r, compare);
      if (r.local.code !== 0) fail('verify', r);
    }
  }

  /** A backup, prune, restore or verify killed (SIGKILL) or interrupted (SIGINT) at the same random moment on both. */
  async function killed(round: number): Promise<void> {
    const kind = pick(rand, points.local.length > 1 ? (['backup', 'backup', 'prune', 'restore', 'verify'] as const) : (['backup'] as const));
    const signal = pick(rand, ['SIGKILL', 'SIGINT'] as const);
    // Past the start of the process (about half a second, before which SIGINT ends it as the signal does) as often as not.
    const delay = Math.floor(rand() * (signal === 'SIGINT' ? 3000 : 1500));
    const type = typeFlag();
    const target = (tw: Twin) => path.join(work, `killed-${tw}-${round}`);
    const args = (tw: Twin) => {
      if (kind === 'backup') return ['backup', '--source', `models=${models}`, '--type', type];
      if (kind === 'prune') return ['prune', '--keep-full', '1'];
      if (kind === 'restore') return ['restore', points[tw][points[tw].length - 1]!, '--target', target(tw)];
      return ['verify', '--read-data'];
    };
    log.push(`${args('local').join(' ')} killed with ${signal} after ${delay} ms`);
    const tree = await snapshotLive();
    const before = [...points.local];
    const ends = await Promise.all(
      TWINS.map(async (tw) => {
        const child = spawnLifeboat([...repoArgs(tw), ...args(tw)], { cwd: work, env: env() });
        child.stdout!.resume();
        let err = '';
        child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
        const done = new Promise<{ code: number | null; sig: string | null }>((resolve) => child.on('close', (code, sig) => resolve({ code, sig })));
        await Promise.race([sleep(delay), done]);
        child.kill(signal);
        const end = await done;
        // Exit 0: it had finished; 130: interrupted; or ended by the signal itself (SIGKILL, or SIGINT before its handlers were set).
        if (end.sig === null && end.code !== 0 && end.code !== 130) fail(`${tw}: ${args(tw).join(' ')} killed with ${signal}: exit ${end.code}: ${err}`);
        return { ...end, err };
      }),
    );
    const ended = `local ${ends[0]!.sig ?? ends[0]!.code}, S3 ${ends[1]!.sig ?? ends[1]!.code}`;
    log.push(`  ends: ${ended}`);
    kills.set(`${kind} (${ended})`, (kills.get(`${kind} (${ended})`) ?? 0) + 1);
    // Both interrupted and ended as they should (exit 130): each cleaned up after itself, alike.
    if (ends.every((e) => e.code === 130)) {
      if (kind === 'backup' || kind === 'prune') await syncList(`after an interrupted ${kind}`);
      const v = await both(['--json', 'verify']);
      same(`verify after an interrupted ${kind}`, v, { json: true });
      if (kind === 'restore') for (const tw of TWINS) if (await fsp.lstat(target(tw)).then(() => true, () => false)) fail(`${tw}: an interrupted restore left its target`);
    }
    if (kind === 'restore' || kind === 'verify') {
      // A reader killed before it could take back its registration holds no prune up.
      log.push('  prune --keep-full 100');
      const r = await both(['--json', 'prune', '--keep-full', '100']);
      same('a prune after a killed reader', r, { json: true });
      if (r.local.code !== 0) fail('a prune after a killed reader', r);
      for (const tw of TWINS) await fsp.rm(target(tw), { recursive: true, force: true });
      return;
    }
    // Recovery, as README says: the next backup (or prune) cleans up and takes over a lock left behind.
    if (kind === 'prune') {
      log.push('  prune again');
      const r = await both(['--json', 'prune', '--keep-full', '1']);
      if (r.local.code !== 0 || r.s3.code !== 0) fail('the prune after a killed one', r);
      await forgetRemoved(before);
      return;
    }
    const r = await Promise.all(TWINS.map(async (tw) => (await run(tw, ['--json', 'list'])).json() as { id: string }[]));
    const grown = TWINS.filter((_, i) => r[i]!.length > before.length);
    if (grown.length === 1) {
      // The killed backup committed on one of them only (the signal came after its commit there): the
      // other takes the same backup of the same tree, so that they go on alike.
      const lagging = grown[0] === 'local' ? 's3' : 'local';
      log.push(`  committed on ${grown[0]} only: backing up ${lagging} again`);
      const again = await run(lagging, ['--json', ...args(lagging)]);
      if (again.code !== 0) fail(`${lagging}: the backup after a killed one: exit ${again.code}: ${again.stderr}`);
    }
    if (grown.length > 0) model.push({ type, tree });
    await syncList('after a killed backup');
    if (points.local.length !== model.length) fail(`after a killed backup the repository has ${points.local.length} points, the model ${model.length}`);
    // Whatever the killed runs left (a lock, unfinished volumes), the next backup takes over or removes: README
    // says a lock whose process is gone from this host is taken over at once, so no `unlock` is needed here.
    const next = await both(['--json', 'backup', '--source', `models=${models}`, '--type', 'incr']);
    log.push('  the next backup');
    if (next.local.code !== 0 || next.s3.code !== 0) fail('the backup after a killed one', next);
    model.push({ type: model.length === 0 ? 'full' : 'incr', tree });
    await syncList('after the backup after a killed one');
    // What each found left behind depends on when the signal came: compared after it, not its report.
    const v = await both(['--json', 'verify']);
    same('verify after a killed backup and the next', v, { json: true });
    if (v.local.code !== 0) fail('verify after a killed backup and the next', v);
  }

  /** The killed steps and how each ended, for the log. */
  const kills = new Map<string, number>();
  const start = Date.now();
  for (let round = 1; round <= STEPS; round++) {
    if (model.length === 0 || rand() < 0.5) {
      await mutate(round);
      await backup(round);
      continue;
    }
    const step = pick(rand, ['restore', 'restore', 'prune', 'pin', 'key', 'look', 'look', 'killed'] as const);
    if (step === 'restore') await restore(round);
    else if (step === 'prune') await prune();
    else if (step === 'pin') await pin();
    else if (step === 'key') await key(round);
    else if (step === 'look') await look();
    else await killed(round);
  }
  // At the end, every point restores alike from both, as it was taken.
  for (let i = 0; i < points.local.length; i++) {
    log.push(`final restore P${i}`);
    const target = (tw: Twin) => path.join(work, `final-${tw}-${i}`);
    const r = await both((tw) => ['--json', 'restore', points[tw][i]!, '--target', target(tw)]);
    same(`final restore P${i}`, r, { json: true, extra: { local: { [target('local')]: '<target>' }, s3: { [target('s3')]: '<target>' } } });
    if (r.local.code !== 0) fail(`final restore P${i}`, r);
    for (const tw of TWINS) {
      const diff = compareSnapshots(model[i]!.tree, await snapshotTree(target(tw)));
      if (diff) fail(`final restore P${i} on ${tw}: ${diff}`, r);
      await fsp.rm(target(tw), { recursive: true, force: true });
    }
  }
  const r = await both(['--json', 'verify', '--read-data']);
  same('the last verify --read-data', r, { json: true });
  if (r.local.code !== 0) fail('the last verify --read-data', r);
  t.diagnostic(`${STEPS} steps, ${points.local.length} points at the end, in ${Math.round((Date.now() - start) / 1000)} s`);
  t.diagnostic(`killed steps: ${[...kills].map(([k, n]) => `${n} ${k}`).join('; ') || 'none'}`);
});
