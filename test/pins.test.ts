import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { lifeboat, runChild } from './helpers/cli.js';
import { waitFor } from './helpers/processes.js';
import { prng, tempDir, writeRandomFile } from './helpers/tree.js';
import { appendEvent } from '../src/core/journal.js';
import { pin, pinKey, protectedPoints, readPins } from '../src/core/pins.js';
import { encodeDocument } from '../src/format/document.js';
import { Repository } from '../src/core/repository.js';
import type { LifeboatError } from '../src/errors.js';
import { LocalStorage } from '../src/storage/local.js';
import { openStorage } from '../src/storage/open.js';
import type { PutDocumentOptions } from '../src/storage/storage.js';

interface Listed {
  id: string;
  type: string;
  pinned: boolean;
  pinReason: string | null;
}

/** Two chains (full, incr, full, incr) of a small tree. */
async function fourPoints(t: { after(fn: () => Promise<void>): void }) {
  const work = await tempDir('lifeboat-pins-');
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  const repo = path.join(work, 'repo');
  await fsp.mkdir(src);
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const rand = prng(5);
  const ids: string[] = [];
  for (const [i, type] of ['full', 'incr', 'full', 'incr'].entries()) {
    await writeRandomFile(path.join(src, `w${i}.bin`), 20_000, rand);
    const r = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', type]);
    assert.equal(r.code, 0, r.stderr);
    ids.push(r.json().id);
  }
  return { work, src, repo, ids };
}

const list = async (repo: string): Promise<Listed[]> => (await lifeboat(['--repo', repo, '--json', 'list'])).json();

test('pin and unpin: list shows the pin and its reason; unpinning what is not pinned is a usage error', async (t) => {
  const { repo, ids } = await fourPoints(t);
  const noReason = await lifeboat(['--repo', repo, 'pin', ids[0]!]);
  assert.equal(noReason.code, 2);
  const blank = await lifeboat(['--repo', repo, 'pin', ids[0]!, '--reason', '  ']);
  assert.equal(blank.code, 2);

  const p = await lifeboat(['--repo', repo, '--json', 'pin', ids[0]!.slice(0, -1), '--reason', 'release 2.3, audit hold']);
  assert.equal(p.code, 0, p.stderr);
  assert.equal(p.json().point, ids[0]);
  let points = await list(repo);
  assert.deepEqual(points.map((x) => [x.pinned, x.pinReason]), [[true, 'release 2.3, audit hold'], [false, null], [false, null], [false, null]]);
  const text = await lifeboat(['--repo', repo, 'list']);
  assert.match(text.stdout, new RegExp(`${ids[0]}.*pinned: release 2\\.3, audit hold`));

  const again = await lifeboat(['--repo', repo, '--json', 'pin', ids[0]!, '--reason', 'kept for the audit']);
  assert.equal(again.json().previousReason, 'release 2.3, audit hold');

  const u = await lifeboat(['--repo', repo, 'unpin', ids[0]!]);
  assert.equal(u.code, 0, u.stderr);
  assert.match(u.stdout, /unpinned .* kept for the audit/);
  points = await list(repo);
  assert.ok(points.every((x) => !x.pinned));
  const twice = await lifeboat(['--repo', repo, 'unpin', ids[0]!]);
  assert.equal(twice.code, 2);
  assert.match(twice.stderr, /is not pinned/);
});

test('prune --keep-full 1 keeps a pinned old full (and says why in --dry-run); unpinned, it goes', async (t) => {
  const { work, repo, ids } = await fourPoints(t);
  assert.equal((await lifeboat(['--repo', repo, 'pin', ids[0]!, '--reason', 'model v1 in the audit'])).code, 0);

  const dry = await lifeboat(['--repo', repo, 'prune', '--keep-full', '1', '--dry-run']);
  assert.equal(dry.code, 0, dry.stderr);
  assert.match(dry.stdout, new RegExp(`keep +${ids[0]} +full +pinned: model v1 in the audit`));
  const dryJson = (await lifeboat(['--repo', repo, '--json', 'prune', '--keep-full', '1', '--dry-run'])).json();
  assert.deepEqual(dryJson.keep.find((k: { id: string }) => k.id === ids[0]).reasons, ['pinned: model v1 in the audit']);
  assert.deepEqual(dryJson.remove.find((k: { id: string }) => k.id === ids[1]).reasons, [`its parent ${ids[0]} is kept only as pinned: model v1 in the audit, which keeps that point alone`]);

  const real = await lifeboat(['--repo', repo, '--json', 'prune', '--keep-full', '1']);
  assert.equal(real.code, 0, real.stderr);
  const left = (await list(repo)).map((p) => p.id);
  assert.ok(left.includes(ids[0]!), 'the pinned full survives');
  assert.ok(!left.includes(ids[1]!), 'the incr on it was not pinned and goes');
  const v = await lifeboat(['--repo', repo, '--json', 'verify', '--read-data']);
  assert.equal(v.code, 0, v.stdout);
  const r = await lifeboat(['--repo', repo, '--json', 'restore', ids[0]!, '--target', path.join(work, 'out')]);
  assert.equal(r.code, 0, r.stderr);

  assert.equal((await lifeboat(['--repo', repo, 'unpin', ids[0]!])).code, 0);
  assert.equal((await lifeboat(['--repo', repo, 'prune', '--keep-full', '1'])).code, 0);
  assert.ok(!(await list(repo)).some((p) => p.id === ids[0]), 'unpinned, retention removes it');
});

/** A local repository that runs `meanwhile` just before a pin document is written: what a prune that starts at that moment does. */
class PinLate extends LocalStorage {
  constructor(
    root: string,
    private readonly meanwhile: () => Promise<void>,
  ) {
    super(root);
  }
  override async putDocument(key: string, data: Uint8Array, options?: PutDocumentOptions): Promise<boolean> {
    if (key.startsWith('pins/')) await this.meanwhile();
    return super.putDocument(key, data, options);
  }
}

test('a prune that starts between pin\'s look at the lock and the writing of the pin never leaves a pin of a point it removes: pin fails saying so', async (t) => {
  const { repo, ids } = await fourPoints(t);
  const pins = async () => (await fsp.readdir(path.join(repo, 'pins')).catch(() => [] as string[])).filter((n) => n.endsWith('.json'));
  const pinLate = async (id: string, meanwhile: () => Promise<void>) => pin(await Repository.open(new PinLate(repo, meanwhile)), id, 'audit hold');
  const lockFile = path.join(repo, 'locks', 'lock.json');
  const pruneLock = (extra: object) => async () => {
    const now = new Date().toISOString();
    await fsp.mkdir(path.dirname(lockFile), { recursive: true });
    await fsp.writeFile(lockFile, JSON.stringify({ host: os.hostname(), pid: process.pid, command: 'prune', startedAt: now, refreshedAt: now, leaseMs: 1_800_000, token: 'c'.repeat(32), ...extra }));
  };

  // A prune still planning holds the lock when the pin is written: it may have read the pins before.
  await assert.rejects(pinLate(ids[0]!, pruneLock({})), (err: LifeboatError) => err.exitCode === 4 && /a prune started while .* was being pinned \(prune on .*\); it was not pinned/.test(err.message));
  assert.deepEqual(await pins(), [], 'the pin is taken back');
  await fsp.rm(lockFile);
  // One that has said what it removes, this point among them.
  await assert.rejects(pinLate(ids[0]!, pruneLock({ removing: [ids[0], ids[1]] })), (err: LifeboatError) => err.exitCode === 2 && /is being removed by a prune that started while it was being pinned/.test(err.message));
  assert.deepEqual(await pins(), []);
  await fsp.rm(lockFile);
  // One that removes other points only: the pin stands.
  assert.equal((await pinLate(ids[2]!, pruneLock({ removing: [ids[0], ids[1]] }))).pin.point, ids[2]);
  assert.deepEqual(await pins(), [`${ids[2]}.json`]);
  await fsp.rm(lockFile);

  // A whole prune, in a process of its own, between the look and the write: it removes the old full, which pin then says.
  await assert.rejects(
    pinLate(ids[0]!, async () => {
      const pruned = await lifeboat(['--repo', repo, 'prune', '--keep-full', '1']);
      assert.equal(pruned.code, 0, pruned.stderr);
    }),
    (err: LifeboatError) => err.exitCode === 2 && new RegExp(`backup point ${ids[0]} was removed by a prune that ran while it was being pinned`).test(err.message),
  );
  assert.deepEqual(await pins(), [`${ids[2]}.json`], 'no pin names the removed point');
  assert.deepEqual((await list(repo)).map((p) => [p.id, p.pinned]), [[ids[2], true], [ids[3], false]]);
  // What was pinned before stays pinned whatever a prune does meanwhile: that prune kept it.
  assert.equal((await pinLate(ids[2]!, pruneLock({}))).replaced?.reason, 'audit hold');
  assert.deepEqual(await pins(), [`${ids[2]}.json`]);
});

test("a target's active and previous slots protect their points: from this host's targets and from the journal", async (t) => {
  const { work, repo, ids } = await fourPoints(t);
  const config = path.join(work, 'lifeboat.yaml');
  await fsp.writeFile(config, `repository: ${repo}\ntargets:\n  prod:\n    slots: ./slots\n    active: ./current\n`);
  const env = { LIFEBOAT_CONFIG: config };

  // The oldest full is serving prod; then prod fails over to the newest, and the oldest is its rollback slot.
  const first = await lifeboat(['--json', 'failover', ids[0]!, '--to', 'prod'], { cwd: work, env });
  assert.equal(first.code, 0, first.stderr);
  let dry = await lifeboat(['--json', 'prune', '--keep-full', '1', '--dry-run'], { cwd: work, env });
  assert.equal(dry.code, 0, dry.stderr);
  const reasons = (json: { keep: { id: string; reasons: string[] }[] }, id: string) => json.keep.find((k) => k.id === id)?.reasons ?? [];
  assert.match(reasons(dry.json(), ids[0]!).join('; '), /active slot of target prod/);

  const second = await lifeboat(['--json', 'failover', ids[3]!, '--to', 'prod'], { cwd: work, env });
  assert.equal(second.code, 0, second.stderr);
  dry = await lifeboat(['--json', 'prune', '--keep-full', '1', '--dry-run'], { cwd: work, env });
  assert.match(reasons(dry.json(), ids[0]!).join('; '), /previous slot of target prod/);
  const text = await lifeboat(['prune', '--keep-full', '1', '--dry-run'], { cwd: work, env });
  assert.match(text.stdout, new RegExp(`keep +${ids[0]} +full +.*previous slot of target prod`));

  // Another host prunes with no targets configured: the journal still says what prod serves.
  const elsewhere = await lifeboat(['--repo', repo, '--json', 'prune', '--keep-full', '1']);
  assert.equal(elsewhere.code, 0, elsewhere.stderr);
  assert.match(reasons(elsewhere.json(), ids[0]!).join('; '), /previous slot of target prod/);
  assert.ok((await list(repo)).some((p) => p.id === ids[0]));
});

test('protectedPoints reads the newest successful switch per target from the journal and ignores failed ones', async (t) => {
  const { repo, ids } = await fourPoints(t);
  const storage = await openStorage(repo, { cwd: process.cwd(), s3: {}, env: {} });
  t.after(() => storage.close());
  const r = await Repository.open(storage);
  const at = (s: number) => new Date(Date.UTC(2026, 10, 1, 0, 0, s)).toISOString();
  await appendEvent(storage, { type: 'failover', at: at(1), point: ids[0]!, target: 'eu', outcome: 'ok', detail: { fromPoint: null } });
  await appendEvent(storage, { type: 'failover', at: at(2), point: ids[2]!, target: 'eu', outcome: 'ok', detail: { fromPoint: ids[0]! } });
  await appendEvent(storage, { type: 'failover', at: at(3), point: ids[3]!, target: 'eu', outcome: 'rolled-back', detail: { fromPoint: ids[2]! } });
  await appendEvent(storage, { type: 'drill', at: at(4), point: ids[1]!, outcome: 'ok' });
  const got = await protectedPoints(r);
  assert.deepEqual([...got.keys()].sort(), [ids[0]!, ids[2]!].sort());
  assert.match(got.get(ids[2]!)!, /active slot of target eu/);
  assert.match(got.get(ids[0]!)!, /previous slot of target eu/);
});

test("a target's switch stays protected behind years of journal events: prune keeps the point it serves", async (t) => {
  const { repo, ids } = await fourPoints(t);
  const storage = await openStorage(repo, { cwd: process.cwd(), s3: {}, env: {} });
  t.after(() => storage.close());
  const r = await Repository.open(storage);
  const hour = 3_600_000;
  await appendEvent(storage, { type: 'failover', at: new Date(Date.UTC(2025, 0, 1)).toISOString(), point: ids[0]!, target: 'eu', outcome: 'ok', detail: { fromPoint: null } });
  // Nightly drills, restores and prunes since: more events than any fixed look-back would read.
  for (let i = 0; i < 1010; i++) await appendEvent(storage, { type: 'drill', at: new Date(Date.UTC(2025, 0, 2) + i * hour).toISOString(), point: ids[3]!, outcome: 'ok' });
  const got = await protectedPoints(r);
  assert.match(got.get(ids[0]!) ?? '', /active slot of target eu/);
  const dry = await lifeboat(['--repo', repo, '--json', 'prune', '--keep-full', '1', '--dry-run']);
  assert.equal(dry.code, 0, dry.stderr);
  assert.ok(dry.json().keep.some((k: { id: string }) => k.id === ids[0]), 'the served point is kept');
});

test('pins are read side by side, not one round trip after another (hundreds of pins on S3 held up list and prune)', async (t) => {
  const work = await tempDir('lifeboat-pins-');
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  // A local repository whose document reads take as long as an S3 round trip, counting how many are under way at once.
  class Distant extends LocalStorage {
    underway = 0;
    mostAtOnce = 0;
    override async getDocument(key: string): Promise<Buffer> {
      this.mostAtOnce = Math.max(this.mostAtOnce, ++this.underway);
      try {
        await new Promise((resolve) => setTimeout(resolve, 20));
        return await super.getDocument(key);
      } finally {
        this.underway--;
      }
    }
  }
  const storage = new Distant(path.join(work, 'repo'));
  t.after(() => storage.close());
  const ids = Array.from({ length: 40 }, (_, i) => `20260101-0000${String(i).padStart(2, '0')}-000F`);
  for (const id of ids) await storage.putDocument(pinKey(id), encodeDocument({ point: id, reason: `keep ${id}`, pinnedAt: '2026-01-01T00:00:00.000Z', user: 'ops', host: 'h' }));
  await storage.putDocument(pinKey(ids[7]!), Buffer.from('{"not a pin"'));
  const pins = await readPins(storage);
  assert.deepEqual([...pins.keys()], ids, 'every pin, in order');
  assert.equal(pins.get(ids[3]!)!.reason, `keep ${ids[3]}`);
  assert.match(pins.get(ids[7]!)!.reason, /its pin document does not read/);
  assert.ok(storage.mostAtOnce > 1, `at most ${storage.mostAtOnce} pin read at once`);
});

test("a failover made while its host's clock ran ahead does not pass for the target's last switch: a prune elsewhere keeps what the target serves, and status lists the switches in the order they were made", async (t) => {
  const { work, repo, ids } = await fourPoints(t);
  const config = path.join(work, 'lifeboat.yaml');
  await fsp.writeFile(config, `repository: ${repo}\ntargets:\n  prod:\n    slots: ./slots\n    active: ./current\n`);
  const env = { LIFEBOAT_CONFIG: config };
  const failover = async (id: string) => {
    const r = await lifeboat(['failover', id, '--to', 'prod'], { cwd: work, env });
    assert.equal(r.code, 0, r.stderr);
  };
  // The first failover, made while the host's clock ran a day ahead: its journal entry says so.
  await failover(ids[3]!);
  const journal = path.join(repo, 'journal');
  const [entry] = await fsp.readdir(journal);
  const event = JSON.parse(await fsp.readFile(path.join(journal, entry!), 'utf8'));
  event.at = new Date(Date.parse(event.at) + 86_400_000).toISOString();
  await fsp.rm(path.join(journal, entry!));
  await fsp.writeFile(path.join(journal, `${event.at.replace(/[-:]/g, '').replace('.', '')}-0badf00d.json`), JSON.stringify(event));
  // The clock set right, prod fails over to the old chain's points: it serves ids[1], and a rollback goes to ids[0].
  await failover(ids[0]!);
  await failover(ids[1]!);

  // Another host, with no targets configured, prunes to the newest full's chain.
  const elsewhere = await lifeboat(['--repo', repo, '--json', 'prune', '--keep-full', '1']);
  assert.equal(elsewhere.code, 0, elsewhere.stderr);
  const reasons = (id: string) => (elsewhere.json().keep as { id: string; reasons: string[] }[]).find((k) => k.id === id)?.reasons.join('; ') ?? '';
  assert.match(reasons(ids[1]!), /active slot of target prod/);
  assert.match(reasons(ids[0]!), /previous slot of target prod/);
  assert.deepEqual((await list(repo)).map((p) => p.id), ids, 'every point kept: the old chain is what prod serves');

  const st = await lifeboat(['--json', 'status'], { cwd: work, env });
  assert.equal(st.code, 0, st.stderr);
  assert.deepEqual(st.json().targets[0].events.map((e: { point: string }) => e.point), [ids[3], ids[0], ids[1]], 'in the order they were made');
});

test('a failover interrupted after the switch leaves its target serving the new point: a prune elsewhere keeps it', async (t) => {
  const { work, repo, ids } = await fourPoints(t);
  const config = path.join(work, 'lifeboat.yaml');
  await fsp.writeFile(config, `repository: ${repo}\ntargets:\n  prod:\n    slots: ./slots\n    active: ./current\n    activate: 'sh activate.sh'\n`);
  const env = { LIFEBOAT_CONFIG: config };
  await fsp.writeFile(path.join(work, 'activate.sh'), 'exit 0\n');
  assert.equal((await lifeboat(['failover', ids[3]!, '--to', 'prod'], { cwd: work, env })).code, 0);
  // A reload that takes its time, and an operator who stops the failover meanwhile: the old chain's point stays linked.
  await fsp.writeFile(path.join(work, 'activate.sh'), 'echo started > activating; sleep 30\n');
  const controller = new AbortController();
  const running = lifeboat(['failover', ids[1]!, '--to', 'prod'], { cwd: work, env, signal: controller.signal });
  assert.ok(await waitFor(async () => fsp.access(path.join(work, 'activating')).then(() => true, () => false), 10_000), 'activate started');
  controller.abort();
  assert.equal((await running).code, 130);

  const elsewhere = await lifeboat(['--repo', repo, '--json', 'prune', '--keep-full', '1']);
  assert.equal(elsewhere.code, 0, elsewhere.stderr);
  assert.match((elsewhere.json().keep as { id: string; reasons: string[] }[]).find((k) => k.id === ids[1])?.reasons.join('; ') ?? '', /active slot of target prod/);
  assert.ok((await list(repo)).some((p) => p.id === ids[1]), 'the point prod serves is kept');
});

test('a failover that kept the new slot linked because the old one is gone leaves its target serving the new point: a prune elsewhere keeps it', async (t) => {
  const { work, repo, ids } = await fourPoints(t);
  const config = path.join(work, 'lifeboat.yaml');
  await fsp.writeFile(config, `repository: ${repo}\ntargets:\n  prod:\n    slots: ./slots\n    active: ./current\n    health: { command: 'test ! -e sick', timeout: 1s, interval: 100ms }\n`);
  const env = { LIFEBOAT_CONFIG: config };
  assert.equal((await lifeboat(['failover', ids[3]!, '--to', 'prod'], { cwd: work, env })).code, 0);
  // The slot served is removed by hand, and the old chain's point does not get healthy: it stays linked, rather than no link.
  await fsp.rm(path.join(work, 'slots', ids[3]!), { recursive: true });
  await fsp.writeFile(path.join(work, 'sick'), '');
  const kept = await lifeboat(['failover', ids[1]!, '--to', 'prod'], { cwd: work, env });
  assert.equal(kept.code, 5, kept.stderr);
  assert.match(kept.stderr, /stays linked/);

  const elsewhere = await lifeboat(['--repo', repo, '--json', 'prune', '--keep-full', '1']);
  assert.equal(elsewhere.code, 0, elsewhere.stderr);
  assert.ok((await list(repo)).some((p) => p.id === ids[1]), 'the point prod serves is kept');
});

test('a failover killed (kill -9) after it switched the link, before it journalled its end: a prune elsewhere keeps the point the target now serves, and status lists the switch as not ended', async (t) => {
  const { work, repo, ids } = await fourPoints(t);
  const config = path.join(work, 'lifeboat.yaml');
  // Killed by the system at the worst moment: the link has moved, nothing after it has run.
  await fsp.writeFile(config, `repository: ${repo}\ntargets:\n  prod:\n    slots: ./slots\n    active: ./current\n    activate: 'test ! -e kill || kill -9 $PPID'\n`);
  const env = { LIFEBOAT_CONFIG: config };
  assert.equal((await lifeboat(['failover', ids[3]!, '--to', 'prod'], { cwd: work, env })).code, 0);
  await fsp.writeFile(path.join(work, 'kill'), '');
  const killed = await runChild(['failover', ids[1]!, '--to', 'prod'], { cwd: work, env });
  assert.notEqual(killed.code, 0, killed.stderr);
  await fsp.rm(path.join(work, 'kill'));
  assert.equal(path.basename(await fsp.readlink(path.join(work, 'current'))), ids[1], 'the link had moved');

  // Another host, with no targets configured, prunes to the newest full's chain: the old chain is what prod serves now.
  const dry = await lifeboat(['--repo', repo, '--json', 'prune', '--keep-full', '1', '--dry-run']);
  assert.equal(dry.code, 0, dry.stderr);
  const reasons = (id: string) => (dry.json().keep as { id: string; reasons: string[] }[]).find((k) => k.id === id)?.reasons.join('; ') ?? '';
  assert.match(reasons(ids[1]!), /switched to by a failover of target prod that has not said how it ended/);
  assert.match(reasons(ids[3]!), /served before a failover of target prod/);
  const elsewhere = await lifeboat(['--repo', repo, '--json', 'prune', '--keep-full', '1']);
  assert.equal(elsewhere.code, 0, elsewhere.stderr);
  assert.deepEqual((await list(repo)).map((p) => p.id), ids, 'every point kept');

  const st = await lifeboat(['status'], { cwd: work, env });
  assert.equal(st.code, 0, st.stderr);
  assert.match(st.stdout, new RegExp(`failover ${ids[1]} switching \\(.*\\): its end is not journalled: still running, or stopped \\(killed\\) before it could say how it ended`));
  assert.doesNotMatch(st.stdout, new RegExp(`failover ${ids[3]} switching`), 'a switch that ended is listed once');

  // The next switch settles it: the rollback's end says what prod serves, and which point a rollback goes to.
  const back = await lifeboat(['rollback', '--to', 'prod'], { cwd: work, env });
  assert.equal(back.code, 0, back.stderr);
  const after = await lifeboat(['--repo', repo, '--json', 'prune', '--keep-full', '1', '--dry-run']);
  assert.equal(after.code, 0, after.stderr);
  const now = (after.json().keep as { id: string; reasons: string[] }[]).find((k) => k.id === ids[1])?.reasons.join('; ') ?? '';
  assert.match(now, /previous slot of target prod/);
  assert.doesNotMatch(now, /has not said how it ended/);
});
