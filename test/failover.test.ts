import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import { once } from 'node:events';
import { spawn } from 'node:child_process';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { lifeboat, runChild, spawnLifeboat } from './helpers/cli.js';
import { exists } from './helpers/repo.js';
import { inNamespace, unshare } from './helpers/namespace.js';
import { tempDir } from './helpers/tree.js';
import { ProcessGroup, freePort, sleep, stderrTail, waitFor, waitForPort } from './helpers/processes.js';
import { ROWS_PER_TXN, startWriter } from './helpers/writer.js';
import { generateDeployment, rewriteSafetensorsData } from '../fixtures/generate.js';
import { decodeDocument, encodeDocument } from '../src/format/document.js';
import { manifestSchema } from '../src/format/manifest.js';
import { integrityCheck } from '../src/state/sqlite.js';
import { listSlots, planSlotPrune, switchActive, readActive, type SlotInfo } from '../src/core/slots.js';
import { waitHealthy } from '../src/core/health.js';

const SERVER = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/model-server.js');

interface Answer {
  model: string;
  digest: string;
  vector: number[];
  argmax: number;
  checksum: string;
}

async function get(port: number, what: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`http://127.0.0.1:${port}${what}`, { headers: { connection: 'close' } });
  return { status: res.status, body: await res.json() };
}

const predict = async (port: number): Promise<Answer> => {
  const r = await get(port, '/predict?text=lifeboat%20to%20the%20rescue');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body as Answer;
};

/** Waits until /health reports a model loaded after `generation` (or an error, when `healthy` is false). */
async function reloaded(port: number, generation: number, healthy: boolean): Promise<{ status: number; body: any }> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const r = await get(port, '/health');
    if (r.body.generation > generation && (r.status === 200) === healthy) return r;
    if (Date.now() > deadline) throw new Error(`server did not reload: ${JSON.stringify(r.body)}`);
    await sleep(50);
  }
}

test('failover end to end: back up a served deployment, lose it, fail over to chosen points, switch back from a broken one, roll back, status', async () => {
  const work = await tempDir();
  const group = new ProcessGroup(work);
  const writer = { stop: async () => 0 };
  try {
    // A deployment served from an `active` link, with a registry database and a feature cache beside it.
    const live = path.join(work, 'live');
    const dep = await generateDeployment(live, { seed: 11, shards: 2, shardBytes: 96 << 10, onnxBytes: 4096, smallFiles: 6 });
    const stateDir = path.join(work, 'state');
    await fsp.mkdir(stateDir);
    await fsp.writeFile(path.join(stateDir, 'features.json'), '{"version":"A"}\n');
    const serving = path.join(work, 'serving');
    await fsp.mkdir(serving);
    await fsp.symlink('../live', path.join(serving, 'current'));
    const port = await freePort();
    const server = group.spawn(process.execPath, [SERVER, '--model', path.join(serving, 'current', 'models', dep.modelName), '--port', String(port)]);
    await waitForPort(port, 10_000, `model server (${stderrTail(server)})`);
    await reloaded(port, 0, true);

    await fsp.writeFile(
      path.join(work, 'lifeboat.yaml'),
      [
        'repository: ./repo',
        'sources:',
        '  models: ./live/models',
        '  serving: ./live/serving',
        '  registry: { sqlite: ./state/registry.db }',
        '  features: { command: "cat state/features.json", restore: "cat > state/features.restored" }',
        'exclude: ["*.log"]',
        'targets:',
        '  prod:',
        '    slots: ./serving/slots',
        '    active: ./serving/current',
        `    health: { url: "http://127.0.0.1:${port}/health", timeout: 10s, interval: 100ms }`,
        // A reload request that returns once the reload is done, as a real reload command should:
        // after a bare signal, the first health check could still reach the old model.
        `    activate: ${JSON.stringify(`"${process.execPath}" -e "fetch('http://127.0.0.1:${port}/admin/reload', { method: 'POST' }).then((r) => r.arrayBuffer())"`)}`,
        '    keepSlots: 2',
        '',
      ].join('\n'),
    );
    assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);

    // Point A, taken while another process writes to the registry.
    const db = new Database(path.join(stateDir, 'registry.db'));
    db.exec("CREATE TABLE models (name TEXT, version TEXT); INSERT INTO models VALUES ('lb', 'A')");
    db.close();
    const w = startWriter(path.join(stateDir, 'registry.db'), 'wal');
    writer.stop = w.stop;
    await w.ready;
    const a = await lifeboat(['--json', 'backup', '--type', 'full'], { cwd: work });
    assert.equal(a.code, 0, a.stderr);
    await w.stop();
    const pointA = a.json().id as string;
    const answerA = await predict(port);

    // Point B: new weights, new features.
    for (const shard of dep.shards) await rewriteSafetensorsData(path.join(live, shard), 99);
    await fsp.writeFile(path.join(stateDir, 'features.json'), '{"version":"B"}\n');
    let generation = (await get(port, '/health')).body.generation;
    process.kill(server.pid!, 'SIGHUP');
    await reloaded(port, generation, true);
    const answerB = await predict(port);
    assert.notDeepEqual(answerB.vector, answerA.vector, 'other weights, other answer');
    const b = await lifeboat(['--json', 'backup'], { cwd: work });
    assert.equal(b.code, 0, b.stderr);
    const pointB = b.json().id as string;

    // Point C: a broken model (its config no longer matches its weights).
    const configFile = path.join(live, 'models', dep.modelName, 'config.json');
    const config = JSON.parse(await fsp.readFile(configFile, 'utf8'));
    await fsp.writeFile(configFile, JSON.stringify({ ...config, hidden_size: config.hidden_size * 2 }));
    const c = await lifeboat(['--json', 'backup'], { cwd: work });
    assert.equal(c.code, 0, c.stderr);
    const pointC = c.json().id as string;

    // Point D: a truncated shard, a model the validators reject before any switch.
    await fsp.writeFile(configFile, JSON.stringify(config));
    const shardFile = path.join(live, dep.shards[0]!);
    await fsp.truncate(shardFile, (await fsp.stat(shardFile)).size - 100);
    const dPoint = await lifeboat(['--json', 'backup'], { cwd: work });
    assert.equal(dPoint.code, 0, dPoint.stderr);
    assert.match(dPoint.stderr, /model-invalid|warning/);
    const pointD = dPoint.json().id as string;

    // Disaster: the live copy is gone.
    await fsp.rm(live, { recursive: true, force: true });
    generation = (await get(port, '/health')).body.generation;
    process.kill(server.pid!, 'SIGHUP');
    const down = await reloaded(port, generation, false);
    assert.equal(down.status, 503);

    // Fail over to A: the server answers as it did at A.
    const fa = await lifeboat(['--json', 'failover', pointA, '--to', 'prod'], { cwd: work });
    assert.equal(fa.code, 0, fa.stderr);
    const ra = fa.json();
    assert.equal(ra.ok, true);
    assert.equal(ra.outcome, 'ok');
    assert.equal(ra.point, pointA);
    assert.equal(ra.slot, path.join(serving, 'slots', pointA));
    assert.equal(ra.reused, false);
    assert.ok(ra.rtoMs > 0 && ra.rtoMs <= ra.durationMs);
    assert.equal(await readActive(path.join(serving, 'current')), ra.slot);
    assert.equal(await fsp.readlink(path.join(serving, 'current')), path.join('slots', pointA), 'a relative link');
    assert.deepEqual(await predict(port), answerA);
    // The serving state came back with it.
    const registry = path.join(ra.slot, 'registry', 'registry.db');
    assert.equal(integrityCheck(registry), 'ok');
    const rdb = new Database(registry, { readonly: true });
    assert.deepEqual(rdb.prepare('SELECT version FROM models').all(), [{ version: 'A' }]);
    const groups = rdb.prepare('SELECT txn, count(*) AS n FROM t GROUP BY txn ORDER BY txn').all() as { txn: number; n: number }[];
    rdb.close();
    groups.forEach((g, i) => assert.deepEqual(g, { txn: i + 1, n: ROWS_PER_TXN }));
    assert.equal(await fsp.readFile(path.join(stateDir, 'features.restored'), 'utf8'), '{"version":"A"}\n');

    // Fail over to B (text output, for the operator).
    const fb = await lifeboat(['failover', pointB.slice(0, 19), '--to', 'prod'], { cwd: work });
    assert.equal(fb.code, 0, fb.stderr);
    assert.match(fb.stdout, new RegExp(`failed over prod to ${pointB}: healthy after \\d+ check\\(s\\), RTO `));
    assert.match(fb.stdout, new RegExp(`previous: ${pointA} \\(back with: lifeboat rollback --to prod\\)`));
    assert.deepEqual(await predict(port), answerB);
    assert.equal(await fsp.readFile(path.join(stateDir, 'features.restored'), 'utf8'), '{"version":"B"}\n');

    // Fail over to the broken C: unhealthy, switched back to B, which answers again; exit 5.
    const fc = await lifeboat(['--json', 'failover', pointC, '--to', 'prod'], { cwd: work });
    assert.equal(fc.code, 5, fc.stderr);
    const rc = fc.json();
    assert.equal(rc.ok, false);
    // It failed once on a loaded machine with outcome 'failed', its output not kept: each check now says what the command said.
    assert.equal(rc.outcome, 'rolled-back', fc.stderr);
    assert.equal(rc.switchedBack, true, fc.stderr);
    assert.equal(rc.previousHealthy, true, fc.stderr);
    assert.match(rc.reason, /not healthy after \d+ attempt\(s\).*HTTP 503/);
    assert.match(fc.stderr, /failover of prod to .* failed: .*switched back to .*, which is healthy again/);
    assert.equal(await readActive(path.join(serving, 'current')), path.join(serving, 'slots', pointB));
    assert.deepEqual(await predict(port), answerB);
    assert.equal(await fsp.readFile(path.join(stateDir, 'features.restored'), 'utf8'), '{"version":"B"}\n', 'B state reapplied');

    // Fail over to D: the restored slot fails model validation, so nothing is switched; exit 5.
    const fd = await lifeboat(['--json', 'failover', pointD, '--to', 'prod'], { cwd: work });
    assert.equal(fd.code, 5, fd.stderr);
    assert.equal(fd.json().switched, false);
    assert.match(fd.json().reason, /would not load/);
    assert.deepEqual(fd.json().pruned, [], 'a failover that switched nothing removes no slot');
    assert.ok(await exists(path.join(serving, 'slots', pointC)), 'C stays while the disk has room for D beside it');
    assert.equal(await readActive(path.join(serving, 'current')), path.join(serving, 'slots', pointB));
    assert.deepEqual(await predict(port), answerB);

    // Roll back: to A, the slot served before the last successful switch.
    const rb = await lifeboat(['--json', 'rollback', '--to', 'prod'], { cwd: work });
    assert.equal(rb.code, 0, rb.stderr);
    assert.equal(rb.json().point, pointA);
    assert.deepEqual(await predict(port), answerA);

    // Fail over to B again: its slot is checked and reused; keepSlots 2 removes C and D, never the active or previous.
    await fsp.appendFile(path.join(serving, 'slots', pointB, 'serving', 'routing.yaml'), '# stray edit\n');
    // What the server wrote into its slot that the backup leaves out stays; what the point lacks otherwise goes.
    await fsp.writeFile(path.join(serving, 'slots', pointB, 'serving', 'server.log'), 'served B\n');
    await fsp.writeFile(path.join(serving, 'slots', pointB, 'serving', 'stray.txt'), 'not in B\n');
    const fb2 = await lifeboat(['--json', 'failover', pointB, '--to', 'prod'], { cwd: work });
    assert.equal(fb2.code, 0, fb2.stderr);
    const rb2 = fb2.json();
    assert.equal(rb2.reused, true);
    assert.equal(rb2.restore.rewritten, 1, 'the damaged file was repaired');
    assert.deepEqual([rb2.restore.removed, rb2.restore.keptExcluded], [1, 1]);
    assert.equal(await fsp.readFile(path.join(serving, 'slots', pointB, 'serving', 'server.log'), 'utf8'), 'served B\n');
    assert.deepEqual([...rb2.pruned].sort(), [pointC, pointD].sort());
    assert.ok(!(await exists(path.join(serving, 'slots', pointC))));
    assert.ok(await exists(path.join(serving, 'slots', pointA)));
    assert.deepEqual(await predict(port), answerB);

    // Status: active point, health, RPO and the journal.
    const st = await lifeboat(['--json', 'status'], { cwd: work });
    assert.equal(st.code, 0, st.stderr);
    const s = st.json();
    assert.equal(s.newest.id, pointD);
    assert.equal(s.targets.length, 1);
    const t = s.targets[0];
    assert.equal(t.name, 'prod');
    assert.equal(t.active.point, pointB);
    assert.equal(t.previous.point, pointA);
    assert.equal(t.health.ok, true);
    assert.equal(t.health.detail, 'HTTP 200');
    assert.ok(typeof t.rpoMs === 'number' && t.rpoMs >= 0);
    assert.deepEqual(
      t.events.map((e: any) => [e.type, e.point, e.outcome]),
      [
        ['failover', pointA, 'ok'],
        ['failover', pointB, 'ok'],
        ['failover', pointC, 'rolled-back'],
        ['failover', pointD, 'failed'],
        ['rollback', pointA, 'ok'],
        ['failover', pointB, 'ok'],
      ].slice(-5),
      JSON.stringify(t.events),
    );
    assert.ok(t.events.every((e: any) => e.user && e.host && e.at && e.durationMs >= 0));
    assert.equal(typeof t.events.find((e: any) => e.outcome === 'ok').detail.rtoMs, 'number');
    const text = await lifeboat(['status'], { cwd: work });
    assert.match(text.stdout, new RegExp(`target prod: ${pointB}, taken .* ago; healthy \\(HTTP 200\\)`));
    // --events says how many: two, or none at all.
    const two = (await lifeboat(['--json', 'status', '--events', '2'], { cwd: work })).json();
    assert.deepEqual(two.targets[0].events.map((e: any) => [e.type, e.point]), [['rollback', pointA], ['failover', pointB]]);
    assert.equal(two.events.length, 2);
    const none = (await lifeboat(['--json', 'status', '--events', '0'], { cwd: work })).json();
    assert.deepEqual([none.targets[0].events, none.events], [[], []]);

    // A dead server: status says so and exits 5.
    await group.stop();
    const dead = await lifeboat(['--json', 'status'], { cwd: work });
    assert.equal(dead.code, 5);
    assert.equal(dead.json().targets[0].health.ok, false);
  } finally {
    await writer.stop();
    await group.stop();
    await fsp.rm(work, { recursive: true, force: true });
  }
});

test('failover refuses an active path that is a real directory, and a target that is not configured', async () => {
  const work = await tempDir();
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights');
  await fsp.mkdir(path.join(work, 'current'));
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./models\ntargets:\n  prod: { slots: ./slots, active: ./current }\n');
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['backup'], { cwd: work })).code, 0);
  const r = await lifeboat(['failover', '--to', 'prod'], { cwd: work });
  assert.equal(r.code, 2);
  assert.match(r.stderr, /current is not a symbolic link/);
  assert.deepEqual(await listSlots(path.join(work, 'slots')), [], 'nothing restored');
  const other = await lifeboat(['failover', '--to', 'staging'], { cwd: work });
  assert.equal(other.code, 2);
  assert.match(other.stderr, /no target "staging"/);

  // Without a health check, a failover to the only target just switches.
  await fsp.rmdir(path.join(work, 'current'));
  const none = await lifeboat(['rollback'], { cwd: work });
  assert.equal(none.code, 2);
  assert.match(none.stderr, /no previous slot/);
  // A switch in progress elsewhere (a live process holds the target's lock): exit 4, nothing touched.
  const lock = path.join(work, 'slots', '.lifeboat-switch.lock');
  await fsp.writeFile(lock, JSON.stringify({ host: os.hostname(), pid: process.pid, command: 'failover', startedAt: new Date().toISOString() }));
  const locked = await lifeboat(['failover'], { cwd: work });
  assert.equal(locked.code, 4, locked.stderr);
  assert.match(locked.stderr, /target prod is being switched by failover/);
  // One left by a process that is gone is taken over.
  await fsp.writeFile(lock, JSON.stringify({ host: os.hostname(), pid: 2 ** 22 + 17, command: 'failover', startedAt: new Date().toISOString() }));
  const ok = await lifeboat(['--json', 'failover'], { cwd: work });
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.json().health.unchecked, true);
  assert.equal(await fsp.readFile(path.join(work, 'current', 'models', 'w.bin'), 'utf8'), 'weights');
  assert.ok(!(await exists(lock)), 'the lock is released');
  assert.equal((await lifeboat(['status'], { cwd: work })).code, 0);
  // The served slot removed by hand: the link dangles, which status reports as unhealthy even without a health check.
  await fsp.rm(ok.json().slot, { recursive: true });
  const dangling = await lifeboat(['status'], { cwd: work });
  assert.equal(dangling.code, 5, dangling.stderr);
  assert.match(dangling.stdout, new RegExp(`target prod: ${path.join(work, 'current')} links to ${ok.json().slot}, which is missing`));
  assert.match(dangling.stderr, /unhealthy: prod \(.* links to .*, which is missing\)\n {2}serve a point again: lifeboat failover --to prod/);
  // A directory where the link should be: a failover would refuse it, so status says to move it aside instead.
  await fsp.rm(path.join(work, 'current'));
  await fsp.mkdir(path.join(work, 'current'));
  const directory = await lifeboat(['--json', 'status'], { cwd: work });
  assert.equal(directory.code, 5, directory.stderr);
  assert.match(directory.json().targets[0].active.hint, /^move it aside/);
  assert.match(directory.stderr, /unhealthy: prod \(.*current is not a symbolic link\)\n {2}move it aside and make it a link/);
  await fsp.rm(work, { recursive: true, force: true });
});

test("status runs a target's health command with the variables a failover gives it: the check a failover passed passes there too", async () => {
  const work = await tempDir();
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights');
  const seen = path.join(work, 'seen');
  // Passes only where the served slot holds the weights, and records what it was told.
  const check = `test -f "$LIFEBOAT_SLOT/models/w.bin" && echo "$LIFEBOAT_TARGET $LIFEBOAT_ACTIVE $LIFEBOAT_SLOT $LIFEBOAT_POINT" > ${seen}`;
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    `repository: ./repo\nsources:\n  models: ./models\ntargets:\n  prod:\n    slots: ./slots\n    active: ./current\n    health: { command: '${check}', timeout: 10s, interval: 100ms }\n`,
  );
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const point = (await lifeboat(['--json', 'backup'], { cwd: work })).json().id;
  const failover = await lifeboat(['--json', 'failover', '--to', 'prod'], { cwd: work });
  assert.equal(failover.code, 0, failover.stderr);
  const afterFailover = await fsp.readFile(seen, 'utf8');
  await fsp.rm(seen);
  const status = await lifeboat(['--json', 'status'], { cwd: work });
  assert.equal(status.code, 0, status.stderr);
  assert.equal(status.json().targets[0].health.ok, true);
  assert.equal(await fsp.readFile(seen, 'utf8'), afterFailover);
  assert.equal(afterFailover, `prod ${path.join(work, 'current')} ${failover.json().slot} ${point}\n`);
  await fsp.rm(work, { recursive: true, force: true });
});

test('a failover interrupted while the new slot is checked leaves it linked and recorded, so a rollback returns; health URLs on ports fetch refuses work', async () => {
  const work = await tempDir();
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights A');
  const slots = path.join(work, 'slots');
  const active = path.join(work, 'current');
  const wanted = { slot: '' };
  const interrupt = { controller: new AbortController(), requests: 0 };
  // Healthy only while the link points at the wanted slot; the first unhealthy answer interrupts the failover.
  const server = http.createServer((_req, res) => {
    void readActive(active).then((linked) => {
      interrupt.requests++;
      const healthy = linked === wanted.slot;
      if (!healthy) interrupt.controller.abort();
      res.writeHead(healthy ? 200 : 503, { connection: 'close' }).end();
    });
  });
  // Ports that fetch refuses, as browsers do: a model server may listen on one.
  let port = 0;
  for (const candidate of [10080, 6665, 6666, 6667, 6668, 6669]) {
    const bound = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false));
      server.listen(candidate, '127.0.0.1', () => resolve(true));
    });
    if (bound) {
      port = candidate;
      break;
    }
  }
  assert.ok(port, 'one of the ports fetch refuses is free');
  try {
    await fsp.writeFile(
      path.join(work, 'lifeboat.yaml'),
      `repository: ./repo\nsources:\n  models: ./models\ntargets:\n  prod: { slots: ./slots, active: ./current, health: { url: "http://127.0.0.1:${port}/health", timeout: 20s, interval: 100ms } }\n`,
    );
    assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
    const first = (await lifeboat(['--json', 'backup'], { cwd: work })).json().id as string;
    await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights B');
    const second = (await lifeboat(['--json', 'backup'], { cwd: work })).json().id as string;

    wanted.slot = path.join(slots, first);
    const healthy = await lifeboat(['failover', first], { cwd: work });
    assert.equal(healthy.code, 0, healthy.stderr);
    assert.equal(await readActive(active), wanted.slot);

    const interrupted = await lifeboat(['failover', second], { cwd: work, signal: interrupt.controller.signal });
    assert.equal(interrupted.code, 130, interrupted.stderr);
    assert.match(interrupted.stderr, new RegExp(`interrupted after the switch: prod now serves ${second}, not confirmed healthy\\n {2}lifeboat rollback --to prod switches back to ${first}`));
    assert.equal(await readActive(active), path.join(slots, second), 'the new slot stays linked');
    const status = await lifeboat(['--json', 'status'], { cwd: work });
    assert.equal(status.json().targets[0].previous.point, first);
    assert.match(status.json().targets[0].events.at(-1).detail.reason, /interrupted after the switch/);

    const back = await lifeboat(['rollback'], { cwd: work });
    assert.equal(back.code, 0, back.stderr);
    assert.equal(await readActive(active), wanted.slot);
    assert.equal(await fsp.readFile(path.join(active, 'models', 'w.bin'), 'utf8'), 'weights A');
  } finally {
    server.closeAllConnections();
    server.close();
    await fsp.rm(work, { recursive: true, force: true });
  }
});

test('the link switch is a rename: readers never see it missing', async () => {
  const work = await tempDir();
  for (const d of ['a', 'b']) await fsp.mkdir(path.join(work, d));
  const active = path.join(work, 'current');
  await switchActive(active, path.join(work, 'a'));
  let missing = 0;
  let stop = false;
  const reader = (async () => {
    while (!stop) {
      if ((await readActive(active)) === null) missing++;
      await new Promise((r) => setImmediate(r));
    }
  })();
  for (let i = 0; i < 200; i++) await switchActive(active, path.join(work, i % 2 ? 'a' : 'b'));
  stop = true;
  await reader;
  assert.equal(missing, 0);
  assert.deepEqual((await fsp.readdir(work)).sort(), ['a', 'b', 'current'], 'no temporary links left');
  await fsp.rm(work, { recursive: true, force: true });
});

test('slot pruning keeps the newest, never the active or previous slot', () => {
  const slot = (name: string, mtimeMs: number): SlotInfo => ({ name, path: `/s/${name}`, point: name, mtimeMs });
  const slots = [slot('20260101-000000-000F', 1), slot('20260102-000000-000I', 2), slot('20260103-000000-000I', 3), slot('20260104-000000-000I', 4)];
  const names = (list: SlotInfo[]) => list.map((s) => s.name);
  assert.deepEqual(names(planSlotPrune(slots, 2, new Set(['/s/20260104-000000-000I', '/s/20260101-000000-000F']), new Map())), [
    '20260102-000000-000I',
    '20260103-000000-000I',
  ]);
  assert.deepEqual(names(planSlotPrune(slots, 3, new Set(), new Map([['/s/20260101-000000-000F', 10]]))), ['20260102-000000-000I']);
  assert.deepEqual(planSlotPrune(slots, 4, new Set(), new Map()), []);
  // Directories lifeboat did not make are never touched, nor counted.
  assert.deepEqual(planSlotPrune([...slots, { name: 'manual', path: '/s/manual', mtimeMs: 0 }], 4, new Set(), new Map()), []);
});

test('a failover whose slot does not fit beside the old ones removes those beyond keepSlots first, so a disk that holds keepSlots slots is enough', { skip: unshare ? false : 'unshare cannot make a mount namespace here' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.mkdir(path.join(work, 'live', 'models'), { recursive: true });
  await fsp.mkdir(path.join(work, 'out'));
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    'repository: ./repo\nsources:\n  models: ./live/models\ntargets:\n  prod: { slots: ./slotsfs/slots, active: ./current, keepSlots: 3 }\n',
  );
  // Slots of 3 MB on a 10 MiB file system: three fit, four do not.
  const script = [
    'cd "$WORK"',
    'mkdir slotsfs && mount -t tmpfs -o size=10m tmpfs slotsfs',
    'node "$BIN" init > /dev/null',
    'for i in 1 2 3 4; do',
    '  head -c 3000000 /dev/urandom > live/models/weights.bin',
    '  node "$BIN" --json backup > /dev/null',
    '  node "$BIN" --json failover > "out/failover-$i.json"',
    'done',
    'ls slotsfs/slots > out/slots.txt',
  ].join('\n');
  inNamespace(script, { WORK: work });
  const runs = await Promise.all([1, 2, 3, 4].map(async (i) => JSON.parse(await fsp.readFile(path.join(work, 'out', `failover-${i}.json`), 'utf8'))));
  assert.ok(runs.every((r) => r.ok));
  assert.deepEqual(runs[3].pruned, [runs[0].point], 'the least recently used slot made room');
  assert.deepEqual((await fsp.readFile(path.join(work, 'out', 'slots.txt'), 'utf8')).trim().split('\n'), runs.slice(1).map((r) => r.point));
});

test('a failover that does not get healthy keeps the new slot linked when the old one was removed by hand, instead of a dangling link', async () => {
  const work = await tempDir();
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights A');
  // Healthy only while the first point is served.
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    'repository: ./repo\nsources:\n  models: ./models\ntargets:\n  prod: { slots: ./slots, active: ./current, health: { command: \'test "$LIFEBOAT_POINT" = "$(cat first)"\', timeout: 1s, interval: 100ms } }\n',
  );
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const first = (await lifeboat(['--json', 'backup'], { cwd: work })).json().id as string;
  await fsp.writeFile(path.join(work, 'first'), first);
  await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights B');
  const second = (await lifeboat(['--json', 'backup'], { cwd: work })).json().id as string;
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  await fsp.rm(path.join(work, 'slots', first), { recursive: true });

  const r = await lifeboat(['--json', 'failover', second], { cwd: work });
  assert.equal(r.code, 5, r.stderr);
  assert.match(r.stderr, new RegExp(`the slot it served before, ${path.join(work, 'slots', first)}, is missing, so ${path.join(work, 'slots', second)} stays linked`));
  assert.equal(r.json().previousMissing, true);
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', second));
  assert.equal(await fsp.readFile(path.join(work, 'current', 'models', 'w.bin'), 'utf8'), 'weights B');
  await fsp.rm(work, { recursive: true, force: true });
});

test('two targets sharing a slots directory or an active link are refused: a failover of one pruned the slot the other served', async () => {
  const work = await tempDir();
  await fsp.mkdir(path.join(work, 'models'));
  const config = (canary: string) =>
    `repository: ./repo\nsources:\n  models: ./models\ntargets:\n  prod: { slots: ./slots, active: ./prod, keepSlots: 2 }\n  canary: { ${canary}, keepSlots: 2 }\n`;
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), config('slots: ./canary-slots, active: ./canary'));
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const points: string[] = [];
  for (const w of ['a', 'b', 'c']) {
    await fsp.writeFile(path.join(work, 'models', 'w.bin'), w);
    points.push((await lifeboat(['--json', 'backup'], { cwd: work })).json().id as string);
  }
  assert.equal((await lifeboat(['failover', points[0]!, '--to', 'prod'], { cwd: work })).code, 0);

  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), config('slots: ./slots, active: ./canary'));
  for (const p of points.slice(1)) {
    const r = await lifeboat(['failover', p, '--to', 'canary'], { cwd: work });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /targets\.canary\.slots: .*slots is also targets\.prod\.slots; each target needs a slots directory and an active link of its own/);
  }
  assert.equal(await fsp.readFile(path.join(work, 'prod', 'models', 'w.bin'), 'utf8'), 'a', 'prod still serves its slot');

  // One active link for two targets is refused too, naming the key.
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), config('slots: ./canary-slots, active: ./prod'));
  const shared = await lifeboat(['status'], { cwd: work });
  assert.equal(shared.code, 2, shared.stderr);
  assert.match(shared.stderr, /targets\.canary\.active: .*prod is also targets\.prod\.active/);
  await fsp.rm(work, { recursive: true, force: true });
});

/**
 * A deployment `models/w.bin` backed up twice ("weights A", then "weights B"),
 * with the config lines under `targets:` given.
 */
async function twoPoints(targets: string): Promise<{ work: string; first: string; second: string }> {
  const work = await tempDir();
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights A');
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ./repo\nsources:\n  models: ./models\ntargets:\n${targets}`);
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const first = (await lifeboat(['--json', 'backup'], { cwd: work })).json().id as string;
  await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights B');
  const second = (await lifeboat(['--json', 'backup'], { cwd: work })).json().id as string;
  return { work, first, second };
}

test('the paths of a target (its slots, its link) are named in quotes where their names end in a space, as listings name them', async (t) => {
  const { work, first, second } = await twoPoints('  prod: { slots: "./slots ", active: "./current " }\n');
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const slots = path.join(work, 'slots ');
  const failover = await lifeboat(['failover', first], { cwd: work });
  assert.equal(failover.code, 0, failover.stderr);
  assert.ok(failover.stdout.includes(`into ${JSON.stringify(path.join(slots, first))}, every checksum verified`), failover.stdout);
  assert.ok(failover.stderr.includes(`${JSON.stringify(path.join(work, 'current '))} → ${JSON.stringify(path.join(slots, first))}`), failover.stderr);
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  await fsp.rm(path.join(slots, first), { recursive: true });
  const rollback = await lifeboat(['rollback'], { cwd: work });
  assert.equal(rollback.code, 2);
  assert.equal(rollback.stderr, `lifeboat: the previous slot ${JSON.stringify(path.join(slots, first))} of target prod no longer exists\n  fail over to a chosen point instead: lifeboat failover ${first} --to prod\n`);
});

test('a rollback of a target never failed over says there is nothing to roll back to, and makes no slots directory for it', async (t) => {
  const { work } = await twoPoints('  prod: { slots: ./never/slots, active: ./current }\n');
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const rollback = await lifeboat(['rollback'], { cwd: work });
  assert.equal(rollback.code, 2, rollback.stderr);
  assert.match(rollback.stderr, /target prod has no previous slot to roll back to\n/);
  assert.equal(await fsp.lstat(path.join(work, 'never')).then(() => true, () => false), false, 'nothing made for a target never failed over');
});

test('a rollback or failover refused before it changed anything is not journalled as a failed one, which status would list; a failover run again for a point without serving state says nothing of its state', async (t) => {
  const { work, first } = await twoPoints('  prod: { slots: ./slots, active: ./current }\n');
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  const rollback = await lifeboat(['rollback'], { cwd: work });
  assert.equal(rollback.code, 2);
  assert.match(rollback.stderr, /target prod has no previous slot to roll back to\n {2}fail over to a chosen point instead: lifeboat failover POINT --to prod\n/);
  const again = await lifeboat(['failover', first], { cwd: work });
  assert.equal(again.code, 0, again.stderr);
  assert.doesNotMatch(again.stderr, /serving state/);
  const status = await lifeboat(['--json', 'status'], { cwd: work });
  assert.deepEqual(status.json().targets[0].events.map((e: { type: string; outcome: string }) => `${e.type} ${e.outcome}`), ['failover ok', 'failover ok']);
});

test('a failover interrupted while deactivate runs activates the slot served before again, instead of leaving it drained', async () => {
  const { work, first, second } = await twoPoints(
    '  prod:\n    slots: ./slots\n    active: ./current\n' +
      '    activate: \'echo "activate $LIFEBOAT_POINT" >> hooks.log\'\n' +
      '    deactivate: \'test -e slow || exit 0; echo "deactivate $LIFEBOAT_POINT" >> hooks.log; sleep 30\'\n',
  );
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  await fsp.writeFile(path.join(work, 'hooks.log'), '');
  await fsp.writeFile(path.join(work, 'slow'), '');

  const controller = new AbortController();
  const running = lifeboat(['failover', second], { cwd: work, signal: controller.signal });
  assert.ok(await waitFor(async () => (await fsp.readFile(path.join(work, 'hooks.log'), 'utf8')).includes('deactivate'), 10_000), 'deactivate started');
  controller.abort();
  const r = await running;
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, new RegExp(`interrupted before the switch: prod still serves ${first}; nothing was switched\\n {2}lifeboat failover ${second} --to prod starts again`));
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', first), 'the link is as it was');
  assert.equal(await fsp.readFile(path.join(work, 'hooks.log'), 'utf8'), `deactivate ${first}\nactivate ${first}\n`);
  await fsp.rm(work, { recursive: true, force: true });
});

test('a failover whose link cannot be switched once deactivate drained the old slot activates that slot again, says so, and leaves no switch under way', async (t) => {
  // The check before the switch passes; then the link is replaced by a directory, which no link can be renamed over.
  const { work, first, second } = await twoPoints(
    '  prod:\n    slots: ./slots\n    active: ./current\n' +
      '    activate: \'echo "activate $LIFEBOAT_POINT" >> hooks.log\'\n' +
      '    deactivate: \'echo "deactivate $LIFEBOAT_POINT" >> hooks.log; test ! -e block || { mv current current.kept && mkdir -p current/held; }\'\n',
  );
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  await fsp.writeFile(path.join(work, 'hooks.log'), '');
  await fsp.writeFile(path.join(work, 'block'), '');

  const r = await lifeboat(['failover', second], { cwd: work });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`the switch failed before the link moved \\(.+\\): activating ${first} again\n`));
  assert.match(r.stderr, new RegExp(`failover of prod to ${second} failed before the switch: .+; prod still serves ${first}, nothing was switched`));
  assert.doesNotMatch(r.stderr, /unexpected error|\n\s+at /);
  assert.equal(await fsp.readFile(path.join(work, 'hooks.log'), 'utf8'), `deactivate ${first}\nactivate ${first}\n`, 'the old slot is activated again');

  // The link put back by hand: the record holds no switch under way (status would say the slot may be drained), and the journal has the failure.
  await fsp.rm(path.join(work, 'block'));
  await fsp.rm(path.join(work, 'current'), { recursive: true });
  await fsp.rename(path.join(work, 'current.kept'), path.join(work, 'current'));
  const st = await lifeboat(['--json', 'status'], { cwd: work });
  assert.equal(st.code, 0, st.stderr);
  const target = st.json().targets[0];
  assert.equal(target.active.point, first);
  assert.deepEqual(target.events.map((e: { type: string; outcome: string; point: string }) => `${e.type} ${e.point} ${e.outcome}`), [`failover ${first} ok`, `failover ${second} failed`]);
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0, 'a failover run again goes through');
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', second));
});

test('what the activate and deactivate hooks print is logged on stderr, as a backup hook\'s is: with --log-format json as log lines, never on stdout with --json', async (t) => {
  const { work, first, second } = await twoPoints(
    '  prod:\n    slots: ./slots\n    active: ./current\n' +
      '    activate: \'echo "reloading $LIFEBOAT_POINT"; echo "reload warning" >&2\'\n' +
      '    deactivate: \'echo "draining $LIFEBOAT_POINT"\'\n',
  );
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const r = await lifeboat(['failover', first], { cwd: work });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`Z reloading ${first}\n`));
  assert.match(r.stderr, /Z reload warning\n/);
  const json = await lifeboat(['--json', '--log-format', 'json', 'failover', second], { cwd: work });
  assert.equal(json.code, 0, json.stderr);
  assert.equal(json.json().point, second, 'stdout is the document alone');
  const logged = json.stderr.split('\n').filter(Boolean).map((l) => JSON.parse(l).msg);
  assert.ok(logged.includes(`draining ${first}`), json.stderr);
  assert.ok(logged.includes(`reloading ${second}`), json.stderr);
  const back = await lifeboat(['--json', 'rollback'], { cwd: work });
  assert.equal(back.code, 0, back.stderr);
  assert.equal(back.json().point, first);
  assert.match(back.stderr, new RegExp(`Z draining ${second}\n(.*\n)*.*Z reloading ${first}\n`));
});

/**
 * What a failover run again to repair the slot of `point` leaves when it is killed (kill -9) while it rewrites
 * it: its lock, naming a process that is gone, beside the slot, whose weights are now the other point's. Returns that pid.
 */
async function leftPartRestored(work: string, point: string): Promise<number> {
  const killed = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  await once(killed, 'exit');
  await fsp.symlink(`${killed.pid}-${Math.floor(Date.now() / 1000)}`, path.join(work, 'slots', `.${point}.lifeboat-restoring`));
  await fsp.writeFile(path.join(work, 'slots', point, 'models', 'w.bin'), 'weights B');
  return killed.pid!;
}

test('status reports a slot served, or kept for a rollback, that a restore stopped part-way left holding a mix of files, naming what repairs it', async (t) => {
  const { work, first, second } = await twoPoints('  prod: { slots: ./slots, active: ./current }\n');
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  const slot = path.join(work, 'slots', first);
  const pid = await leftPartRestored(work, first);
  const st = await lifeboat(['status'], { cwd: work });
  assert.equal(st.code, 5, st.stderr);
  assert.match(st.stdout, new RegExp(`target prod: ${slot}, which prod serves, may hold a mix of old and new files: a restore into it \\(pid ${pid}, started \\S+\\) was stopped before it finished;`));
  assert.match(st.stderr, new RegExp(`\\n {2}lifeboat failover ${first} --to prod checks it file by file and repairs it\\n$`));
  assert.equal((await lifeboat(['--json', 'status'], { cwd: work })).json().targets[0].active.hint, `lifeboat failover ${first} --to prod checks it file by file and repairs it`);
  // As the hint says.
  const repaired = await lifeboat(['failover', first], { cwd: work });
  assert.equal(repaired.code, 0, repaired.stderr);
  assert.equal(await fsp.readFile(path.join(slot, 'models', 'w.bin'), 'utf8'), 'weights A');
  assert.equal((await lifeboat(['status'], { cwd: work })).code, 0);

  // The slot kept for a rollback, left so: the target serves, but a rollback would serve the mix.
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  const again = await leftPartRestored(work, first);
  const prev = await lifeboat(['status'], { cwd: work });
  assert.equal(prev.code, 1, prev.stderr);
  assert.match(prev.stdout, new RegExp(`\\n {2}previous: ${first} \\(restored part-way: may hold a mix of old and new files\\)\\n`));
  assert.match(prev.stderr, new RegExp(`the previous slot of target prod, ${slot}, may hold a mix of old and new files: a restore into it \\(pid ${again}, started \\S+\\) was stopped before it finished, so a rollback would serve that\\n {2}lifeboat restore ${first} --target ${slot} --delta checks it file by file and repairs it\\n$`));
  assert.equal((await lifeboat(['--json', 'status'], { cwd: work })).json().targets[0].previous.unfinished.pid, again);
  const restored = await lifeboat(['restore', first, '--target', slot, '--delta'], { cwd: work });
  assert.equal(restored.code, 0, restored.stderr);
  assert.equal(await fsp.readFile(path.join(slot, 'models', 'w.bin'), 'utf8'), 'weights A');
  assert.equal((await lifeboat(['status'], { cwd: work })).code, 0);
});

test('a slot a restore stopped part-way left holding a mix of files is not served by a rollback, and a failover to another point does not remove what says so', async (t) => {
  const { work, first, second } = await twoPoints('  prod: { slots: ./slots, active: ./current }\n');
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  const slot = path.join(work, 'slots', first);
  const pid = await leftPartRestored(work, first);
  // The operator moves on to the other point: the mixed slot becomes the one a rollback returns to.
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  const st = await lifeboat(['status'], { cwd: work });
  assert.equal(st.code, 1, st.stderr);
  assert.match(st.stderr, /the previous slot of target prod, .+, may hold a mix of old and new files/);
  const back = await lifeboat(['rollback'], { cwd: work });
  assert.equal(back.code, 3, back.stderr);
  assert.match(back.stderr, new RegExp(`rollback of prod to ${first} failed before the switch: the previous slot ${slot} of target prod may hold a mix of old and new files: a restore into it \\(pid ${pid}, started \\S+\\) was stopped before it finished; prod still serves ${second}, nothing was switched\\n {2}lifeboat failover ${first} --to prod checks it file by file, repairs it and switches to it\\n$`));
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', second), 'the link is as it was');
  // As the hint says.
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  assert.equal(await fsp.readFile(path.join(slot, 'models', 'w.bin'), 'utf8'), 'weights A');
  assert.equal((await lifeboat(['status'], { cwd: work })).code, 0);
});

test('a failover whose link cannot be switched back from an unhealthy slot says so, activates the slot still linked again, and records the switch for a rollback', async (t) => {
  // The point named in `broken` is unhealthy; draining it, the hook puts a directory where the link is, which no link can be renamed over.
  const { work, first, second } = await twoPoints(
    '  prod:\n    slots: ./slots\n    active: ./current\n' +
      '    activate: \'echo "activate $LIFEBOAT_POINT" >> hooks.log\'\n' +
      '    deactivate: \'echo "deactivate $LIFEBOAT_POINT" >> hooks.log; test "$LIFEBOAT_POINT" != "$(cat broken 2>/dev/null)" || { mv current current.kept && mkdir -p current/held; }\'\n' +
      '    health: { command: \'test "$LIFEBOAT_POINT" != "$(cat broken 2>/dev/null)"\', timeout: 1s, interval: 100ms }\n',
  );
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  await fsp.writeFile(path.join(work, 'hooks.log'), '');
  await fsp.writeFile(path.join(work, 'broken'), second);

  const r = await lifeboat(['failover', second], { cwd: work });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`lifeboat: ${second} was not healthy \\(not healthy after .+\\), and switching back to ${first} failed: the active link ${path.join(work, 'current')} could not be switched: EISDIR.+; prod still serves ${second}\\n {2}once the cause is fixed, lifeboat rollback --to prod switches back to ${first}\\n$`));
  assert.doesNotMatch(r.stderr, /unexpected error/);
  assert.equal(await fsp.readFile(path.join(work, 'hooks.log'), 'utf8'), `deactivate ${first}\nactivate ${second}\ndeactivate ${second}\nactivate ${second}\n`, 'the slot still linked is not left drained');

  // The link put back by hand, as it was: the rollback the hint names returns to the slot served before.
  await fsp.rm(path.join(work, 'current'), { recursive: true });
  await fsp.rename(path.join(work, 'current.kept'), path.join(work, 'current'));
  await fsp.rm(path.join(work, 'broken'));
  const back = await lifeboat(['rollback'], { cwd: work });
  assert.equal(back.code, 0, back.stderr);
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', first));
  assert.equal((await lifeboat(['status'], { cwd: work })).code, 0);
});

/** A repository of one point per weights, of a model and a serving state whose `restore` command is given, for the target given. */
async function pointsWithState(restore: string, target: string, weights: string[]): Promise<{ work: string; points: string[] }> {
  const work = await tempDir();
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    `repository: ./repo\nsources:\n  models: ./models\n  features: { command: "echo state", restore: ${JSON.stringify(restore)} }\ntargets:\n  prod: ${target}\n`,
  );
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const points: string[] = [];
  for (const w of weights) {
    await fsp.writeFile(path.join(work, 'models', 'w.bin'), `weights ${w}`);
    points.push((await lifeboat(['--json', 'backup'], { cwd: work })).json().id);
  }
  return { work, points };
}

/** Two points of a model and a serving state whose `restore` command is given, the first served by the target given. */
async function servingFirst(restore: string, target: string): Promise<{ work: string; first: string; second: string }> {
  const { work, points } = await pointsWithState(restore, target, ['A', 'B']);
  const [first, second] = points as [string, string];
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  return { work, first, second };
}

test('a prune started while a failover puts back its point\'s serving state, after the slot was restored, does not remove that point: the failover reads it until the switch is journalled', async (t) => {
  const { work, points } = await pointsWithState(
    // Putting back the state waits while `hold` is there.
    'cat > /dev/null; if test -e hold; then echo > putting-back; while test -e hold; do sleep 0.05; done; fi',
    '{ slots: ./slots, active: ./current }',
    ['A', 'B'],
  );
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const [first, second] = points as [string, string];
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  // A newer full: the policy keeps it alone, and the incremental failed over to goes unless something keeps it.
  assert.equal((await lifeboat(['backup', '--type', 'full'], { cwd: work })).code, 0);
  await fsp.writeFile(path.join(work, 'hold'), '');
  const running = runChild(['failover', second], { cwd: work });
  assert.ok(await waitFor(async () => exists(path.join(work, 'putting-back')), 20_000), 'the state is being put back');
  const pruned = await lifeboat(['prune', '--keep-full', '1'], { cwd: work });
  await fsp.rm(path.join(work, 'hold'));
  const r = await running;
  assert.equal(r.code, 0, r.stderr);
  assert.equal(pruned.code, 4, pruned.stdout + pruned.stderr);
  assert.match(pruned.stderr, /the repository is being read by failover on /);
  const listed = (await lifeboat(['--json', 'list'], { cwd: work })).json().map((p: { id: string }) => p.id);
  assert.ok(listed.includes(second), `the point served is kept: ${listed.join(', ')}`);
  assert.equal((await lifeboat(['prune', '--keep-full', '1'], { cwd: work })).code, 0, 'once it is served, the next prune keeps it');
  assert.ok((await lifeboat(['--json', 'list'], { cwd: work })).json().some((p: { id: string }) => p.id === second));
});

test('a failover killed (kill -9) after the switch, before recording it: status, a failover run again and a rollback know the slot served before it', async () => {
  const { work, points } = await pointsWithState(
    'cat > /dev/null; echo "$LIFEBOAT_POINT" >> restored.log',
    // Killed by the system at the worst moment: the link has moved, the new slot is not confirmed yet.
    "{ slots: ./slots, active: ./current, activate: 'test ! -e kill || kill -9 $PPID' }",
    ['A', 'B', 'C'],
  );
  const [first, second, third] = points as [string, string, string];
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  await fsp.writeFile(path.join(work, 'kill'), '');
  const killed = await runChild(['failover', third], { cwd: work });
  assert.notEqual(killed.code, 0, killed.stderr);
  await fsp.rm(path.join(work, 'kill'));
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', third), 'the link had moved');
  // Killed while it wrote the record, it would have left its new copy, not yet renamed over the old one.
  await fsp.writeFile(path.join(work, 'slots', '.lifeboat-target.json.99999-0badf00d'), '{"version": 1, "prev');
  const st = await lifeboat(['--json', 'status'], { cwd: work });
  assert.equal(st.json().targets[0].previous.point, second, 'served before the killed failover');
  // Run again, as an operator unsure whether it went through would: the slot is checked, and the state
  // it put back before the switch is left alone, as for any run again for the point served.
  const again = await lifeboat(['failover', third], { cwd: work });
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, /the state is left as it is/);
  assert.equal(await fsp.readFile(path.join(work, 'restored.log'), 'utf8'), `${first}\n${second}\n${third}\n`);
  const back = await lifeboat(['rollback'], { cwd: work });
  assert.equal(back.code, 0, back.stderr);
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', second), 'back to the slot served before, not the one before that');
  assert.deepEqual((await fsp.readdir(path.join(work, 'slots'))).filter((n) => n.startsWith('.')), ['.lifeboat-target.json'], 'no copy of the record, lock or staging directory left');
  await fsp.rm(work, { recursive: true, force: true });
});

test('the next switch removes the new links that switches killed before renaming them over the active link left beside it, but not those of a process that runs', async () => {
  const { work, first, second } = await twoPoints('  prod: { slots: ./slots, active: ./current }\n');
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  // Killed between making its new link and renaming it over `current`: the link is left beside it.
  const gone = spawn(process.execPath, ['-e', '']);
  await once(gone, 'exit');
  const left = `.current.lifeboat-${gone.pid}-0badf00d`;
  await fsp.symlink(path.join('slots', second), path.join(work, left));
  // One of a switch that runs now (this process stands for it) is its own.
  const running = `.current.lifeboat-${process.pid}-0123abcd`;
  await fsp.symlink(path.join('slots', second), path.join(work, running));
  const r = await lifeboat(['failover', second], { cwd: work });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`removed \\${left}, a new link left by a switch that was stopped`));
  assert.deepEqual((await fsp.readdir(work)).filter((n) => n.startsWith('.current.')), [running]);
  await fsp.rm(work, { recursive: true, force: true });
});

test('a rollback removes from the slot it switches to the copies that restores killed while copying a file across file systems left there, but not those of a process that runs', async () => {
  const { work, first, second } = await twoPoints('  prod: { slots: ./slots, active: ./current }\n');
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  const gone = spawn(process.execPath, ['-e', '']);
  await once(gone, 'exit');
  const models = path.join(work, 'slots', first, 'models');
  const left = path.join(models, `.w.bin.lifeboat-${gone.pid}-0badf00d`);
  await fsp.writeFile(left, 'weig');
  const running = `.w.bin.lifeboat-${process.pid}-0123abcd`;
  await fsp.writeFile(path.join(models, running), 'we');
  const r = await lifeboat(['rollback'], { cwd: work });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, new RegExp(`removed ${left.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}, a copy left by a restore that was stopped`));
  assert.deepEqual((await fsp.readdir(models)).sort(), [running, 'w.bin']);
  await fsp.rm(work, { recursive: true, force: true });
});

test('a failover killed (kill -9) after switching back from an unhealthy slot, before it put back the old serving state: status says so, and the next failover puts it back and journals the failover', async () => {
  const { work, first, second } = await servingFirst(
    // The serving state says which point it is; killed by the system as it is put back for the point in `kill`.
    'cat > /dev/null; if test -e kill && test "$LIFEBOAT_POINT" = "$(cat kill)"; then kill -9 $PPID; sleep 5; fi; echo "$LIFEBOAT_POINT" > state.live',
    "{ slots: ./slots, active: ./current, health: { command: 'test ! -e sick', timeout: 1s, interval: 100ms } }",
  );
  await fsp.writeFile(path.join(work, 'sick'), '');
  await fsp.writeFile(path.join(work, 'kill'), first);
  const killed = await runChild(['failover', second], { cwd: work });
  assert.notEqual(killed.code, 0, killed.stderr);
  await fsp.rm(path.join(work, 'kill'));
  await fsp.rm(path.join(work, 'sick'));
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', first), 'switched back');
  assert.equal(await fsp.readFile(path.join(work, 'state.live'), 'utf8'), `${second}\n`, 'the serving state is the failed point\'s');

  const st = await lifeboat(['status'], { cwd: work });
  assert.equal(st.code, 5, st.stderr);
  assert.match(st.stderr, new RegExp(`the failover of prod to ${second} was switched back to ${first} \\(not healthy .*\\), but was stopped before it put back the serving state of ${first}: the serving state is that of ${second}`));
  assert.match(st.stderr, new RegExp(`lifeboat failover ${first} --to prod puts it back`));

  const again = await lifeboat(['failover', first], { cwd: work });
  assert.equal(again.code, 0, again.stderr);
  assert.equal(await fsp.readFile(path.join(work, 'state.live'), 'utf8'), `${first}\n`, 'the serving state is put back');
  const after = await lifeboat(['--json', 'status'], { cwd: work });
  assert.equal(after.code, 0, after.stderr);
  const events = after.json().targets[0].events as { type: string; point: string; outcome: string; detail: { reason?: string } }[];
  const failed = events.find((e) => e.point === second);
  assert.equal(failed?.outcome, 'rolled-back', JSON.stringify(events));
  assert.match(failed!.detail.reason!, /stopped before the serving state of the slot switched back to was put back, which the next run put back/);
  assert.deepEqual((await fsp.readdir(path.join(work, 'slots'))).filter((n) => n.startsWith('.')), ['.lifeboat-target.json']);
  assert.equal(JSON.parse(await fsp.readFile(path.join(work, 'slots', '.lifeboat-target.json'), 'utf8')).pending, undefined, 'nothing left to finish');
  await fsp.rm(work, { recursive: true, force: true });
});

test('a failover killed (kill -9) before the switch, once its point\'s serving state went back and while the old slot is drained: status says so, and the failover of the point served puts its state back and activates it again', async () => {
  const { work, first, second } = await servingFirst(
    'cat > /dev/null; echo "$LIFEBOAT_POINT" > state.live',
    // Killed by the system while the old slot is drained, before the link moves.
    "{ slots: ./slots, active: ./current, deactivate: 'test ! -e kill || kill -9 $PPID', activate: 'echo \"activate $LIFEBOAT_POINT\" >> hooks.log' }",
  );
  await fsp.writeFile(path.join(work, 'kill'), '');
  const killed = await runChild(['failover', second], { cwd: work });
  assert.notEqual(killed.code, 0, killed.stderr);
  await fsp.rm(path.join(work, 'kill'));
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', first), 'the link has not moved');
  assert.equal(await fsp.readFile(path.join(work, 'state.live'), 'utf8'), `${second}\n`, 'the serving state is the other point\'s');

  const st = await lifeboat(['status'], { cwd: work });
  assert.equal(st.code, 5, st.stderr);
  assert.match(st.stderr, new RegExp(`the serving state is that of ${second}, put in place at \\S+ by a failover or rollback to it that did not leave it served, while prod serves ${first}`));
  assert.match(st.stderr, new RegExp(`while prod serves ${first}, which its deactivate hook may have drained: the failover to ${second} was stopped \\(\\S+\\) before it moved the link`));
  assert.match(st.stderr, new RegExp(`lifeboat failover ${first} --to prod activates it again and puts back its serving state`));

  await fsp.writeFile(path.join(work, 'hooks.log'), '');
  const again = await lifeboat(['failover', first], { cwd: work });
  assert.equal(again.code, 0, again.stderr);
  assert.equal(await fsp.readFile(path.join(work, 'state.live'), 'utf8'), `${first}\n`, 'the serving state is put back');
  assert.equal(await fsp.readFile(path.join(work, 'hooks.log'), 'utf8'), `activate ${first}\n`, 'activated again');
  assert.equal((await lifeboat(['status'], { cwd: work })).code, 0);
  // A failover that ends, or is stopped and puts the state back, leaves nothing said.
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['status'], { cwd: work })).code, 0);
  assert.equal(JSON.parse(await fsp.readFile(path.join(work, 'slots', '.lifeboat-target.json'), 'utf8')).stateOf, undefined);
  await fsp.rm(work, { recursive: true, force: true });
});

test('a failover interrupted (Ctrl-C) while it switches back from an unhealthy slot still puts back the serving state of the slot served again', async () => {
  const { work, first, second } = await servingFirst(
    // Putting back the point named in `slow-back` takes its time.
    'cat > /dev/null; if test "$LIFEBOAT_POINT" = "$(cat slow-back 2>/dev/null)"; then echo > putting-back; sleep 2; fi; echo "$LIFEBOAT_POINT" > state.live',
    "{ slots: ./slots, active: ./current, health: { command: 'test ! -e sick', timeout: 1s, interval: 100ms } }",
  );
  // Unhealthy, so that it switches back, putting back the first point's state slowly.
  await Promise.all([fsp.writeFile(path.join(work, 'sick'), ''), fsp.writeFile(path.join(work, 'slow-back'), first)]);
  const child = spawnLifeboat(['failover', second], { cwd: work });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  assert.ok(await waitFor(async () => fsp.access(path.join(work, 'putting-back')).then(() => true, () => false), 20_000), stderr);
  child.kill('SIGINT');
  assert.equal(await exited, 130, stderr);
  assert.match(stderr, new RegExp(`interrupted after switching back: prod serves ${first} again, its serving state put back, not confirmed healthy \\(${second} was not healthy: not healthy after`));
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', first), 'switched back');
  assert.equal(await fsp.readFile(path.join(work, 'state.live'), 'utf8'), `${first}\n`, `the state of the slot served again (${stderr})`);
  await fsp.rm(path.join(work, 'sick'));
  const st = await lifeboat(['status'], { cwd: work });
  assert.equal(st.code, 0, st.stderr);
  await fsp.rm(work, { recursive: true, force: true });
});

test('a failover or rollback stopped before the switch by a pre-activation check or a deactivate hook that fails puts back the serving state of the point still served, which it had replaced with the new point\'s', async () => {
  const { work, first, second } = await servingFirst(
    'cat > /dev/null; echo "$LIFEBOAT_POINT" > state.live',
    "{ slots: ./slots, active: ./current, deactivate: 'test ! -e bad-hook', health: { command: 'true', preActivate: 'test ! -e bad-check' } }",
  );
  for (const [bad, code, said] of [['bad-check', 5, ', the active link was not changed'], ['bad-hook', 1, ' with its serving state as it was, nothing was switched']] as const) {
    await fsp.writeFile(path.join(work, bad), '');
    const r = await lifeboat(['failover', second], { cwd: work });
    assert.equal(r.code, code, r.stderr);
    assert.match(r.stderr, new RegExp(`putting back the serving state of ${first}, which prod still serves`));
    assert.match(r.stderr, new RegExp(`prod still serves ${first}${said}`));
    assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', first));
    assert.equal(await fsp.readFile(path.join(work, 'state.live'), 'utf8'), `${first}\n`, `the state of the point served (${bad})`);
    await fsp.rm(path.join(work, bad));
  }
  // A rollback the same.
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  await fsp.writeFile(path.join(work, 'bad-hook'), '');
  const r = await lifeboat(['rollback'], { cwd: work });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`putting back the serving state of ${second}, which prod still serves`));
  assert.equal(await fsp.readFile(path.join(work, 'state.live'), 'utf8'), `${second}\n`, 'the state of the point served (rollback)');
  await fsp.rm(work, { recursive: true, force: true });
});

test('a failover or rollback interrupted (Ctrl-C) before the switch, once the new point\'s serving state went back, puts back the state of the point still served; a second Ctrl-C stops at once, saying what is left to do', async () => {
  const { work, first, second } = await servingFirst(
    // The serving state says which point it is; putting back the point named in `slow-back` takes its time (and, stopped, writes nothing).
    'cat > /dev/null; if test "$LIFEBOAT_POINT" = "$(cat slow-back 2>/dev/null)"; then echo > putting-back; sleep 10; exit 1; fi; echo "$LIFEBOAT_POINT" > state.live',
    "{ slots: ./slots, active: ./current, deactivate: 'test ! -e slow || { echo > draining; sleep 30; }' }",
  );
  const exists = (name: string) => async () => fsp.access(path.join(work, name)).then(() => true, () => false);
  const interrupted = async (args: string[], times: number, waits: string[]) => {
    await Promise.all(['draining', 'putting-back'].map((n) => fsp.rm(path.join(work, n), { force: true })));
    const child = spawnLifeboat(args, { cwd: work });
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    for (let i = 0; i < times; i++) {
      assert.ok(await waitFor(exists(waits[i]!), 20_000), `${waits[i]} (${stderr})`);
      child.kill('SIGINT');
    }
    return { code: await exited, stderr };
  };
  await fsp.writeFile(path.join(work, 'slow'), '');
  const once = await interrupted(['failover', second], 1, ['draining']);
  assert.equal(once.code, 130, once.stderr);
  assert.match(once.stderr, new RegExp(`putting back the serving state of ${first}, which prod still serves`));
  assert.match(once.stderr, new RegExp(`interrupted before the switch: prod still serves ${first}, and its serving state was put back; nothing was switched`));
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', first));
  assert.equal(await fsp.readFile(path.join(work, 'state.live'), 'utf8'), `${first}\n`, 'the state of the point served');

  // Interrupted again while that state goes back: it stops at once, and says what is left to do.
  await fsp.writeFile(path.join(work, 'slow-back'), first);
  const twice = await interrupted(['failover', second], 2, ['draining', 'putting-back']);
  assert.equal(twice.code, 130, twice.stderr);
  assert.match(twice.stderr, new RegExp(`SIGINT again, stopping at once: the serving state is that of ${second} while prod serves ${first}; lifeboat failover ${first} --to prod --state puts it back`));
  assert.equal(await fsp.readFile(path.join(work, 'state.live'), 'utf8'), `${second}\n`);
  const st = await lifeboat(['status'], { cwd: work });
  assert.equal(st.code, 5, st.stderr);
  assert.match(st.stderr, new RegExp(`the serving state is that of ${second}, .* while prod serves ${first}`));
  await fsp.rm(path.join(work, 'slow-back'));
  await fsp.rm(path.join(work, 'slow'));
  const fixed = await lifeboat(['failover', first, '--state'], { cwd: work });
  assert.equal(fixed.code, 0, fixed.stderr);
  assert.equal(await fsp.readFile(path.join(work, 'state.live'), 'utf8'), `${first}\n`);

  // A rollback the same.
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  await fsp.writeFile(path.join(work, 'slow'), '');
  const back = await interrupted(['rollback'], 1, ['draining']);
  assert.equal(back.code, 130, back.stderr);
  assert.match(back.stderr, new RegExp(`interrupted before the switch: prod still serves ${second}, and its serving state was put back; nothing was switched`));
  assert.equal(await fsp.readFile(path.join(work, 'state.live'), 'utf8'), `${second}\n`, 'the state of the point served (rollback)');
  await fsp.rm(work, { recursive: true, force: true });
});

test('a failover or rollback interrupted (Ctrl-C) once a restore command ended well, before its end was taken in, puts back the state of the point still served, rather than leave the other point\'s and say nothing was put back', async (t) => {
  const { work, first, second } = await servingFirst(
    // Putting back the point named in `slow` writes its state and exits 0, leaving behind a process that holds its stderr
    // open and writes to it: lifeboat reads on, and the interrupt comes before the command's end is taken in, as it may
    // in the moment between a command's exit and its pipes closing on a loaded machine.
    'cat > /dev/null; echo "$LIFEBOAT_POINT" > state.live; if test "$LIFEBOAT_POINT" = "$(cat slow 2>/dev/null)"; then (while :; do echo . >&2; sleep 0.1; done) & echo > written; fi',
    '{ slots: ./slots, active: ./current }',
  );
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const live = () => fsp.readFile(path.join(work, 'state.live'), 'utf8');
  const interrupted = async (args: string[], putting: string) => {
    await fsp.rm(path.join(work, 'written'), { force: true });
    await fsp.writeFile(path.join(work, 'slow'), putting);
    const child = spawnLifeboat(args, { cwd: work });
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    assert.ok(await waitFor(async () => exists(path.join(work, 'written')), 20_000), stderr);
    assert.equal(await live(), `${putting}\n`, 'the restore command has put its state in place');
    await sleep(300);
    child.kill('SIGINT');
    const code = await exited;
    await fsp.rm(path.join(work, 'slow'));
    return { code, stderr };
  };
  const failover = await interrupted(['failover', second], second);
  assert.equal(failover.code, 130, failover.stderr);
  assert.match(failover.stderr, new RegExp(`interrupted before the switch: prod still serves ${first}, and its serving state was put back; nothing was switched`));
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', first));
  assert.equal(await live(), `${first}\n`, 'the state of the point served, not that of the point failed over to');
  assert.equal((await lifeboat(['status'], { cwd: work })).code, 0);

  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  const rollback = await interrupted(['rollback'], first);
  assert.equal(rollback.code, 130, rollback.stderr);
  assert.match(rollback.stderr, new RegExp(`interrupted before the switch: prod still serves ${second}, and its serving state was put back; nothing was switched`));
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', second));
  assert.equal(await live(), `${second}\n`, 'the state of the point served, not that of the point rolled back to');
  assert.equal((await lifeboat(['status'], { cwd: work })).code, 0);
});

test('a failover --json interrupted after the switch says in its document that it switched, from what, and that it was interrupted', async () => {
  const { work, first, second } = await twoPoints('  prod: { slots: ./slots, active: ./current, activate: "sh activate.sh" }\n');
  await fsp.writeFile(path.join(work, 'activate.sh'), 'exit 0\n');
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  // A reload that takes its time: the link has moved, the new slot is not confirmed yet.
  await fsp.writeFile(path.join(work, 'activate.sh'), 'echo "activate $LIFEBOAT_POINT" >> hooks.log; sleep 30\n');
  const controller = new AbortController();
  const running = lifeboat(['--json', 'failover', second], { cwd: work, signal: controller.signal });
  assert.ok(await waitFor(async () => (await fsp.readFile(path.join(work, 'hooks.log'), 'utf8').catch(() => '')).includes('activate'), 10_000), 'activate started');
  controller.abort();
  const r = await running;
  assert.equal(r.code, 130, r.stderr);
  const doc = r.json();
  assert.equal(doc.ok, false);
  assert.match(doc.error.message, new RegExp(`^interrupted after the switch: prod now serves ${second}`));
  assert.equal(doc.switched, true, 'a script reads from the document that the link moved');
  assert.equal(doc.interrupted, true);
  assert.equal(doc.point, second);
  assert.equal(doc.from.point, first);
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', second));
  await fsp.rm(work, { recursive: true, force: true });
});

test('a failover on a full slots file system: no room for the lock is one clear sentence and leaves no lock; room for the lock alone still records the switch', { skip: unshare ? false : 'unshare cannot make a mount namespace here' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.mkdir(path.join(work, 'live', 'models'), { recursive: true });
  await fsp.mkdir(path.join(work, 'out'));
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./live/models\ntargets:\n  prod: { slots: ./slotsfs/slots, active: ./current }\n');
  const script = [
    'cd "$WORK"',
    'mkdir slotsfs && mount -t tmpfs -o size=1m tmpfs slotsfs',
    'node "$BIN" init > /dev/null',
    'for i in 1 2; do echo "weights $i" > live/models/w.bin; node "$BIN" --json backup > "out/backup-$i.json"; node "$BIN" failover > /dev/null 2>&1; done',
    'head -c 2000000 /dev/zero > slotsfs/fill 2> /dev/null || true',
    'node "$BIN" failover "$(node -p "require(\'./out/backup-1.json\').id")" > /dev/null 2> out/full.err && echo 0 > out/full.code || echo $? > out/full.code',
    'ls -a slotsfs/slots > out/full.ls',
    // Room for one page: the lock takes it, and the record is rewritten where it is.
    'rm slotsfs/fill; avail=$(df -k --output=avail slotsfs | tail -1); head -c $(( (avail - 4) * 1024 )) /dev/zero > slotsfs/fill',
    'node "$BIN" --json failover "$(node -p "require(\'./out/backup-1.json\').id")" > out/tight.json 2> out/tight.err && echo 0 > out/tight.code || echo $? > out/tight.code',
    'ls -a slotsfs/slots > out/tight.ls',
    'node "$BIN" --json status > out/status.json 2> /dev/null || true',
  ].join('\n');
  inNamespace(script, { WORK: work });
  const read = (name: string) => fsp.readFile(path.join(work, 'out', name), 'utf8');
  const [first, second] = [JSON.parse(await read('backup-1.json')).id, JSON.parse(await read('backup-2.json')).id];
  assert.equal((await read('full.code')).trim(), '1', await read('full.err'));
  assert.match(await read('full.err'), /^lifeboat: cannot take the switch lock of target prod in .*slots: .*no space left on device.*\n {2}free space on the file system of .*slots/);
  assert.doesNotMatch(await read('full.err'), /unexpected error/);
  assert.deepEqual((await read('full.ls')).trim().split('\n'), ['.', '..', '.lifeboat-target.json', first, second], 'no lock left behind');
  assert.equal((await read('tight.code')).trim(), '0', await read('tight.err'));
  assert.deepEqual((await read('tight.ls')).trim().split('\n'), ['.', '..', '.lifeboat-target.json', first, second], 'no copy of the record left behind');
  const target = JSON.parse(await read('status.json')).targets[0];
  assert.equal(target.active.point, first);
  assert.equal(target.previous.point, second, 'a rollback returns to the slot served before');
});

test('a health check gets its last attempt at the timeout, not an interval before it: a server ready in time passes whatever the interval', async () => {
  const work = await tempDir();
  const ready = setTimeout(() => void fsp.writeFile(path.join(work, 'ready'), ''), 600);
  try {
    const h = await waitHealthy({ command: 'test -e ready', timeoutMs: 1500, intervalMs: 60_000 }, { cwd: work });
    assert.equal(h.ok, true, h.detail);
    assert.equal(h.attempts, 2);
    assert.ok(h.ms >= 1400 && h.ms < 5000, `checked again at the timeout (${h.ms} ms)`);
  } finally {
    clearTimeout(ready);
    await fsp.rm(work, { recursive: true, force: true });
  }
});

/** A health endpoint on 127.0.0.1 that answers as `answer` does, stopped when the test ends; its URL. */
async function healthEndpoint(t: { after: (fn: () => void) => void }, answer: http.RequestListener): Promise<string> {
  const server = http.createServer(answer);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => {
    server.closeAllConnections();
    server.close();
  });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/health`;
}

test('a health check that hangs once is tried again within its timeout, however short: the hang does not use the whole time', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  // The first attempt hangs (a server stuck on its first request); the next one answers at once.
  const command = 'if [ -e tried ]; then exit 0; fi; touch tried; exec sleep 60';
  const h = await waitHealthy({ command, timeoutMs: 4000, intervalMs: 100 }, { cwd: work });
  assert.equal(h.ok, true, h.detail);
  assert.equal(h.attempts, 2);
  assert.ok(h.ms < 4000, `healthy within the timeout (${h.ms} ms)`);

  // A URL that hangs once, likewise.
  let requests = 0;
  const url = await healthEndpoint(t, (_req, res) => {
    if (++requests > 1) res.writeHead(200, { connection: 'close' }).end();
  });
  const u = await waitHealthy({ url, timeoutMs: 3000, intervalMs: 100 }, {});
  assert.equal(u.ok, true, u.detail);
  assert.equal(u.attempts, 2);

  // With no retry allowed, the one attempt has the whole timeout.
  const single = await waitHealthy({ command: 'sleep 2.5', timeoutMs: 4000, intervalMs: 100, retries: 0 }, { cwd: work });
  assert.equal(single.ok, true, single.detail);
});

test('a health check given both a url and a command needs both to pass: the command is not left out when the url answers', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  let status = 200;
  const url = await healthEndpoint(t, (_req, res) => res.writeHead(status, { connection: 'close' }).end());
  // The server is up, but still serves the old model: the command that checks the version fails.
  const stale = await waitHealthy({ url, command: 'echo ran >> ran.log; exit 3', timeoutMs: 2000, retries: 0 }, { cwd: work });
  assert.equal(stale.ok, false);
  assert.match(stale.detail, /^HTTP 200; the command failed: .*3/);
  const served = await waitHealthy({ url, command: 'test -e ran.log', timeoutMs: 2000, retries: 0 }, { cwd: work });
  assert.equal(served.ok, true, served.detail);
  assert.equal(served.detail, 'HTTP 200; the command exited 0');
  // A url that does not answer 2xx fails the check without running the command.
  status = 503;
  const down = await waitHealthy({ url, command: 'echo ran >> ran.log', timeoutMs: 2000, retries: 0 }, { cwd: work });
  assert.equal(down.ok, false);
  assert.equal(down.detail, 'HTTP 503');
  assert.equal(await fsp.readFile(path.join(work, 'ran.log'), 'utf8'), 'ran\n');
});

test('status interrupted while a health URL keeps it waiting says "interrupted" (exit 130), not that the target is unhealthy', async (t) => {
  // A server that takes the request and answers nothing.
  const asked: http.ServerResponse[] = [];
  const url = await healthEndpoint(t, (_req, res) => void asked.push(res));
  const { work, first } = await twoPoints(`  prod: { slots: ./slots, active: ./current, health: { url: "${url}", timeout: 30s } }\n`);
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const failover = lifeboat(['failover', first], { cwd: work });
  await waitFor(async () => asked.length > 0, 10_000);
  asked.shift()!.writeHead(200).end();
  const switched = await failover;
  assert.equal(switched.code, 0, switched.stderr);

  const stop = new AbortController();
  const status = lifeboat(['--json', 'status'], { cwd: work, signal: stop.signal });
  assert.ok(await waitFor(async () => asked.length > 0, 10_000), 'the health URL was asked');
  stop.abort();
  const r = await status;
  assert.equal(r.code, 130, r.stdout + r.stderr);
  assert.equal(r.json().error.message, 'interrupted');
  assert.doesNotMatch(r.stderr, /unhealthy|aborted/);
});

test('status says when the previous slot was removed by hand, and exits 1 as for a damaged record of switches, since a rollback then has nowhere to go', async () => {
  const { work, first, second } = await twoPoints('  prod: { slots: ./slots, active: ./current }\n');
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  assert.match((await lifeboat(['status'], { cwd: work })).stdout, new RegExp(`\\n {2}previous: ${first}\\n`));
  await fsp.rm(path.join(work, 'slots', first), { recursive: true });
  const st = await lifeboat(['status'], { cwd: work });
  assert.equal(st.code, 1, st.stderr);
  assert.match(st.stdout, new RegExp(`\\n {2}previous: ${first} \\(missing: no rollback to it\\)\\n`));
  assert.equal(
    st.stderr,
    `lifeboat: the previous slot of target prod, ${path.join(work, 'slots', first)}, is missing, so there is no rollback to ${first}\n  the next failover keeps the slot it replaces for a rollback; to go back meanwhile, fail over to the point served before: lifeboat failover POINT --to prod\n`,
  );
  const json = await lifeboat(['--json', 'status'], { cwd: work });
  assert.equal(json.code, 1);
  assert.equal(json.json().targets[0].previous.missing, true);
  assert.equal(json.json().ok, false);
  assert.equal((await lifeboat(['rollback'], { cwd: work })).code, 2);
  // The next failover makes a slot to go back to: status is content again.
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['status'], { cwd: work })).code, 0);
  await fsp.rm(work, { recursive: true, force: true });
});

test('status exits 5 when the active link of a target that served a point is gone (removed by hand), rather than call it a target never failed over', async () => {
  const { work, second } = await twoPoints('  prod: { slots: ./slots, active: ./current, health: { command: "true" } }\n  staging: { slots: ./staging-slots, active: ./staging }\n');
  // staging never served anything: no link is what it should have.
  assert.equal((await lifeboat(['status'], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['failover', second, '--to', 'prod'], { cwd: work })).code, 0);
  await fsp.rm(path.join(work, 'current'));
  const st = await lifeboat(['status'], { cwd: work });
  assert.equal(st.code, 5, st.stderr);
  const active = path.join(work, 'current');
  assert.match(st.stdout, new RegExp(`\ntarget prod: ${active} is missing, though the record of switches has prod serving ${second}; healthy \\(exit 0\\)\n`));
  assert.match(st.stderr, new RegExp(`^lifeboat: unhealthy: prod \\(${active} is missing, though the record of switches has prod serving ${second}\\)\n {2}serve it again: lifeboat failover ${second} --to prod\n$`));
  const json = (await lifeboat(['--json', 'status'], { cwd: work })).json();
  assert.match(json.targets[0].active.error, /is missing, though the record of switches/);
  assert.equal(json.targets[0].active.hint, `serve it again: lifeboat failover ${second} --to prod`);
  assert.equal(json.targets[1].active.error, undefined);
  // As the hint says: the slot is reused and linked again.
  assert.equal((await lifeboat(['failover', second, '--to', 'prod'], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['status'], { cwd: work })).code, 0);
  await fsp.rm(work, { recursive: true, force: true });
});

test('a rollback interrupted while deactivate runs says the target still serves what it did and nothing was switched', async () => {
  const { work, first, second } = await twoPoints(
    '  prod:\n    slots: ./slots\n    active: ./current\n' +
      '    deactivate: \'test -e slow || exit 0; echo "deactivate $LIFEBOAT_POINT" >> hooks.log; sleep 30\'\n',
  );
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  await fsp.writeFile(path.join(work, 'slow'), '');

  const controller = new AbortController();
  const running = lifeboat(['rollback'], { cwd: work, signal: controller.signal });
  assert.ok(await waitFor(async () => (await fsp.readFile(path.join(work, 'hooks.log'), 'utf8').catch(() => '')).includes('deactivate'), 10_000), 'deactivate started');
  controller.abort();
  const r = await running;
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, new RegExp(`interrupted before the switch: prod still serves ${second}; nothing was switched\\n {2}lifeboat rollback --to prod starts again`));
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', second), 'the link is as it was');
  await fsp.rm(path.join(work, 'slow'));
  assert.equal((await lifeboat(['rollback'], { cwd: work })).code, 0, 'the rollback started again goes through');
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', first));
  await fsp.rm(work, { recursive: true, force: true });
});

test('a rollback to a directory outside the slots (the link had been moved there by hand) is named by that directory in status', async () => {
  const work = await tempDir();
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights A');
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./models\ntargets:\n  prod: { slots: ./slots, active: ./current }\n');
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const point = (await lifeboat(['--json', 'backup'], { cwd: work })).json().id as string;
  const handMade = path.join(work, 'hand-made');
  await fsp.mkdir(path.join(handMade, 'models'), { recursive: true });
  await fsp.symlink(handMade, path.join(work, 'current'));
  assert.equal((await lifeboat(['failover', point], { cwd: work })).code, 0);
  const back = await lifeboat(['rollback'], { cwd: work });
  assert.equal(back.code, 0, back.stderr);
  assert.equal(await readActive(path.join(work, 'current')), handMade);
  const st = await lifeboat(['status'], { cwd: work });
  assert.equal(st.code, 0, st.stderr);
  assert.match(st.stdout, new RegExp(`\\n {2}\\S+ {2}rollback ${handMade.replace(/[/\\\\.]/g, '\\$&')} ok,`));
  await fsp.rm(work, { recursive: true, force: true });
});

test('a failover or rollback that fails before the switch says what the target still serves: a drain that is refused, a point whose data is damaged, a pre-activation check', async () => {
  const { work, first, second } = await twoPoints(
    '  prod:\n    slots: ./slots\n    active: ./current\n' +
      '    deactivate: \'test ! -e refuse || { echo "drain refused" >&2; exit 4; }\'\n' +
      '    health: { command: "true", preActivate: \'test ! -e broken\' }\n',
  );
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  const serves = (point: string) => `prod still serves ${point}, nothing was switched`;

  await fsp.writeFile(path.join(work, 'refuse'), '');
  const refused = await lifeboat(['failover', second], { cwd: work });
  assert.equal(refused.code, 1, refused.stderr);
  assert.match(refused.stderr, new RegExp(`failover of prod to ${second} failed before the switch: deactivate hook exited with status 4: drain refused; ${serves(first)}\\n`));
  await fsp.rm(path.join(work, 'refuse'));
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  await fsp.writeFile(path.join(work, 'refuse'), '');
  const json = await lifeboat(['--json', 'rollback'], { cwd: work });
  assert.equal(json.code, 1, json.stderr);
  assert.match(json.json().error.message, new RegExp(`^rollback of prod to ${first} failed before the switch: deactivate hook exited with status 4: drain refused; ${serves(second)}$`));
  await fsp.rm(path.join(work, 'refuse'));
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', second));

  // The first point's data is damaged: the intact point the hint names is the one served, and it says so.
  await fsp.rm(path.join(work, 'slots', first), { recursive: true });
  const volume = path.join(work, 'repo', 'data', first, 'v000001.tar');
  const bytes = await fsp.readFile(volume);
  bytes[bytes.indexOf('weights A')] ^= 1;
  await fsp.writeFile(volume, bytes);
  const damaged = await lifeboat(['failover', first], { cwd: work });
  assert.equal(damaged.code, 3, damaged.stderr);
  assert.match(damaged.stderr, new RegExp(`\nlifeboat: failover of prod to ${first} failed before the switch: .*does not match its checksum.*; ${serves(second)}\\n {2}${second} \\(completed [^)]+\\) needs nothing of data/${first}/v000001.tar: prod serves it now\\n$`));

  // A result that is refused before the switch (exit 5) names what is served too.
  await fsp.writeFile(path.join(work, 'broken'), '');
  const third = (await lifeboat(['--json', 'backup'], { cwd: work })).json().id as string;
  const pre = await lifeboat(['failover', third], { cwd: work });
  assert.equal(pre.code, 5, pre.stderr);
  assert.match(pre.stderr, new RegExp(`failover of prod to ${third} failed: pre-activation check failed: health\\.preActivate exited with status 1; prod still serves ${second}, the active link was not changed\\n`));
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', second));
  await fsp.rm(work, { recursive: true, force: true });
});

test("a command source's restore command runs within that source's timeout during a failover, as its capture does, not a fixed limit", async () => {
  const work = await tempDir();
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights A');
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    'repository: ./repo\nsources:\n  models: ./models\n  features: { command: "echo features", restore: "sleep 3; cat > restored", timeout: 1s }\n' +
      'targets:\n  prod: { slots: ./slots, active: ./current }\n',
  );
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const point = (await lifeboat(['--json', 'backup'], { cwd: work })).json().id as string;
  const r = await lifeboat(['failover', point], { cwd: work });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /restore command of source features timed out after 1000 ms and was stopped; prod still serves nothing, nothing was switched\n/);
  assert.equal(await readActive(path.join(work, 'current')), null);
  assert.equal(await exists(path.join(work, 'restored')), false);
  await fsp.rm(work, { recursive: true, force: true });
});

test('without a health check, a failover switched back whose activate hook fails on the old slot too does not call that slot healthy again', async () => {
  const { work, first, second } = await twoPoints(
    '  prod:\n    slots: ./slots\n    active: ./current\n' + '    activate: \'test ! -e fail || { echo "reload failed" >&2; exit 3; }\'\n',
  );
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  await fsp.writeFile(path.join(work, 'fail'), '');
  const down = await lifeboat(['--json', 'failover', second], { cwd: work });
  assert.equal(down.code, 5, down.stderr);
  assert.match(
    down.stderr,
    new RegExp(`failed: activate hook exited with status 3: reload failed; switched back to ${first}, which is not activated again: activate hook exited with status 3: reload failed\\n {2}the target is down`),
  );
  assert.equal(down.json().previousHealthy, false);
  assert.equal(down.json().previousUnchecked, true);

  // Failing only on the new slot: the old one is activated again, which is all that is known of it.
  await fsp.writeFile(path.join(work, 'activate.sh'), `test "$LIFEBOAT_POINT" != ${second} || exit 3\n`);
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ./repo\nsources:\n  models: ./models\ntargets:\n  prod: { slots: ./slots, active: ./current, activate: "sh activate.sh" }\n`);
  const back = await lifeboat(['failover', second], { cwd: work });
  assert.equal(back.code, 5, back.stderr);
  assert.match(back.stderr, new RegExp(`; switched back to ${first}, which is activated again \\(no health check configured\\)\\n$`));
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', first));
  await fsp.rm(work, { recursive: true, force: true });
});

test('a rollback whose record of switches was damaged (cut short on a full disk) says so, instead of that the target never switched', async () => {
  const { work, first, second } = await twoPoints('  prod: { slots: ./slots, active: ./current }\n');
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  const record = path.join(work, 'slots', '.lifeboat-target.json');
  const text = await fsp.readFile(record, 'utf8');
  for (const [damaged, why] of [['', 'it is empty'], [text.slice(0, 40), 'it is not valid JSON']] as const) {
    await fsp.writeFile(record, damaged);
    const r = await lifeboat(['rollback'], { cwd: work });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`the record of the switches of target prod, ${record}, is damaged \\(${why}\\), so the slot to roll back to is not known; prod still serves ${second}, nothing was switched\\n {2}fail over to the point served before`));
  }
  await fsp.rm(record);
  assert.match((await lifeboat(['rollback'], { cwd: work })).stderr, /target prod has no previous slot to roll back to/);
  await fsp.rm(work, { recursive: true, force: true });
});

test("a target's hookTimeout limits its activate and deactivate hooks, instead of the fixed 5 minutes", async () => {
  const { work, first, second } = await twoPoints(
    '  prod:\n    slots: ./slots\n    active: ./current\n    hookTimeout: 1s\n' +
      "    deactivate: 'test ! -e slow || sleep 30'\n",
  );
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  await fsp.writeFile(path.join(work, 'slow'), '');
  const started = Date.now();
  const r = await lifeboat(['failover', second], { cwd: work });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, new RegExp(`failover of prod to ${second} failed before the switch: deactivate hook timed out after 1000 ms and was stopped; prod still serves ${first}`));
  assert.ok(Date.now() - started < 25_000, 'stopped at the hook timeout, long before the sleep ended');
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', first));
  await fsp.rm(work, { recursive: true, force: true });
});

test('status with a repository that is missing or unreachable still reports what each target serves, and exits 1 (5 when a target is down)', async () => {
  const { work, first, second } = await twoPoints('  prod: { slots: ./slots, active: ./current, health: { command: "test ! -e down" } }\n');
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  const switched = await lifeboat(['--json', 'failover', second], { cwd: work });
  assert.equal(switched.code, 0, switched.stderr);
  // The backup disk is not mounted: the repository is gone from where the config names it.
  await fsp.rename(path.join(work, 'repo'), path.join(work, 'repo.away'));
  const text = await lifeboat(['status'], { cwd: work });
  assert.equal(text.code, 1, text.stderr);
  assert.match(text.stdout, new RegExp(`^repository not read: there is no lifeboat repository at .*repo\\ntarget prod: ${second}, served since \\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z; healthy \\(exit 0\\)\\n {2}previous: ${first}\\n`));
  assert.match(text.stderr, /^lifeboat: the repository could not be read, so the age of the newest backup is not known: there is no lifeboat repository at .*\n {2}check that its disk is mounted/);
  assert.doesNotMatch(text.stderr, /lifeboat init/, 'a new, empty repository is not what a missing one needs');
  const json = await lifeboat(['--json', 'status'], { cwd: work });
  assert.equal(json.code, 1);
  const doc = json.json();
  assert.equal(doc.ok, false);
  assert.equal(doc.error.exitCode, 1);
  assert.equal(doc.repository.ok, false);
  assert.match(doc.repository.error, /there is no lifeboat repository/);
  assert.equal(doc.newest, null);
  assert.equal(doc.targets[0].active.point, second);
  assert.equal(doc.targets[0].previous.point, first);
  assert.equal(doc.targets[0].health.ok, true);
  // A target that is down outranks the repository: exit 5, the repository still said.
  await fsp.writeFile(path.join(work, 'down'), '');
  const down = await lifeboat(['status'], { cwd: work });
  assert.equal(down.code, 5, down.stderr);
  assert.match(down.stderr, /unhealthy: prod \(health check exited with status 1\); the repository could not be read either: there is no lifeboat repository/);
  assert.match(down.stderr, new RegExp(`\n {2}if what prod serves is the cause, lifeboat rollback --to prod serves ${first} again\n$`), 'the way back an operator looks for');
  await fsp.rm(path.join(work, 'down'));
  // An S3 endpoint nobody answers on: the same, after the retries.
  const port = await freePort();
  const env = { AWS_ACCESS_KEY_ID: 'lifeboat-test', AWS_SECRET_ACCESS_KEY: 'lifeboat-test-secret', AWS_REGION: 'us-east-1' };
  const s3 = await lifeboat(['--json', '--repo', 's3://nowhere/prod', '--s3-endpoint', `http://127.0.0.1:${port}`, 'status'], { cwd: work, env });
  assert.equal(s3.code, 1, s3.stderr);
  assert.equal(s3.json().targets[0].active.point, second);
  assert.match(s3.json().repository.error, /ECONNREFUSED/);
  // Back in place: all is well again.
  await fsp.rename(path.join(work, 'repo.away'), path.join(work, 'repo'));
  const back = await lifeboat(['--json', 'status'], { cwd: work });
  assert.equal(back.code, 0, back.stderr);
  assert.deepEqual(back.json().repository, { ok: true });
  assert.equal(back.json().targets[0].active.since, doc.targets[0].active.since);
  await fsp.rm(work, { recursive: true, force: true });
});

test('a rollback with the repository out of reach (its disk not mounted) switches the link alone when its point has no serving state, or when told --no-state', async () => {
  const { work, first, second } = await twoPoints('  prod: { slots: ./slots, active: ./current }\n');
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  await fsp.rename(path.join(work, 'repo'), path.join(work, 'repo.away'));
  // A record written before switches kept the points' serving state says nothing of it: not guessed.
  const record = path.join(work, 'slots', '.lifeboat-target.json');
  const recorded = await fsp.readFile(record, 'utf8');
  const older = JSON.parse(recorded);
  for (const h of older.history) delete h.stateSources;
  await fsp.writeFile(record, JSON.stringify(older));
  const refused = await lifeboat(['rollback'], { cwd: work });
  assert.equal(refused.code, 2, refused.stderr);
  assert.match(
    refused.stderr,
    new RegExp(`^lifeboat: rollback of prod to ${first} failed before the switch: the serving state of ${first} cannot be put back, since its manifest could not be read: there is no lifeboat repository at .*repo; prod still serves ${second}, nothing was switched\n  lifeboat rollback --to prod --no-state switches the link alone, leaving the serving state as it is\n$`),
  );
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', second));
  // The record of switches says these points have no serving state: their manifests are not needed.
  await fsp.writeFile(record, recorded);
  const r = await lifeboat(['rollback'], { cwd: work });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`^rolled back prod to ${first}: healthy`));
  assert.match(r.stderr, new RegExp(`warning: the manifest of ${first} could not be read \\(there is no lifeboat repository at .*repo\\), but it has no serving state to put back, as recorded when it was switched to: the link alone goes back`));
  assert.match(r.stderr, /warning: could not record the rollback in the journal: there is no lifeboat repository/);
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', first));
  // A failover needs the repository: its advice is to look for it, a new one only after that.
  const failover = await lifeboat(['failover', second], { cwd: work });
  assert.equal(failover.code, 2);
  assert.match(failover.stderr, /^lifeboat: there is no lifeboat repository at .*repo\n  check that --repo, LIFEBOAT_REPO or repository: names it, and that its disk is mounted or its bucket is there; `lifeboat init` makes a new, empty one\n$/);
  // Told --no-state, the link alone goes back whatever the record says.
  const noState = await lifeboat(['rollback', '--no-state'], { cwd: work });
  assert.equal(noState.code, 0, noState.stderr);
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', second));
  // The record of switches, on this host, has it: the next rollback returns.
  await fsp.rename(path.join(work, 'repo.away'), path.join(work, 'repo'));
  assert.equal((await lifeboat(['rollback', '--no-state'], { cwd: work })).code, 0);
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', first));
  await fsp.rm(work, { recursive: true, force: true });
});

test('status says when the record of switches is damaged, as a rollback would find it', async () => {
  const { work, first, second } = await twoPoints('  prod: { slots: ./slots, active: ./current }\n');
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  const record = path.join(work, 'slots', '.lifeboat-target.json');
  assert.equal((await lifeboat(['--json', 'status'], { cwd: work })).json().targets[0].record.damaged, undefined);
  // A crash or a full disk cut its last write short.
  await fsp.writeFile(record, '{"version": 1, "prev');
  const st = await lifeboat(['status'], { cwd: work });
  // The target still serves, but a rollback would refuse: a probe that reads only the exit code hears it.
  assert.equal(st.code, 1, st.stderr);
  assert.match(st.stdout, new RegExp(`\\n {2}record of switches ${record.replace(/[.]/g, '\\.')} is damaged \\(it is not valid JSON\\): a rollback does not know where to go\\n`));
  assert.equal(st.stderr, `lifeboat: the record of switches of target prod, ${record}, is damaged (it is not valid JSON), so a rollback does not know where to go\n  the next failover writes the record again; to go back meanwhile, fail over to the point served before: lifeboat failover POINT --to prod (the failovers in its events name it)\n`);
  const json = await lifeboat(['--json', 'status'], { cwd: work });
  assert.equal(json.code, 1);
  assert.deepEqual(json.json().targets[0].record, { path: record, damaged: 'it is not valid JSON' });
  assert.equal(json.json().ok, false);
  assert.equal(json.json().error.exitCode, 1);
  assert.deepEqual(json.json().repository, { ok: true });
  await fsp.writeFile(record, '');
  const empty = await lifeboat(['--json', 'status'], { cwd: work });
  assert.equal(empty.code, 1);
  assert.equal(empty.json().targets[0].record.damaged, 'it is empty');
  // A target down outranks it (exit 5), and both are said.
  await fsp.rename(path.join(work, 'slots', second), path.join(work, 'away'));
  const down = await lifeboat(['status'], { cwd: work });
  assert.equal(down.code, 5, down.stderr);
  assert.match(down.stderr, /^lifeboat: unhealthy: prod \(.*, which is missing\); the record of switches of target prod, .*, is damaged \(it is empty\)/);
  await fsp.rename(path.join(work, 'away'), path.join(work, 'slots', second));
  // A failover writes the record again: the probe is content.
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['status'], { cwd: work })).code, 0);
  await fsp.rm(work, { recursive: true, force: true });
});

test('status reports a target whose slots directory cannot be read, and still the other targets, instead of an unexpected error', async () => {
  const { work, second } = await twoPoints('  prod: { slots: ./slots, active: ./current }\n  staging: { slots: ./staging-slots, active: ./staging }\n');
  assert.equal((await lifeboat(['failover', second, '--to', 'prod'], { cwd: work })).code, 0);
  // A file where the slots directory should be.
  await fsp.writeFile(path.join(work, 'staging-slots'), 'not a directory\n');
  const st = await lifeboat(['status'], { cwd: work });
  assert.equal(st.code, 1, st.stderr);
  assert.match(st.stderr, /^lifeboat: target staging's slots directory .*staging-slots cannot be read: ENOTDIR: not a directory, scandir '.*staging-slots'\n  check that the slots directory of staging is a directory this user may read\n$/);
  assert.match(st.stdout, new RegExp(`\\ntarget prod: ${second}, taken .* ago; health not checked\\n`));
  assert.match(st.stdout, /\ntarget staging: no active link; health not checked\n {2}slots: .*staging-slots cannot be read: ENOTDIR: not a directory/);
  const json = await lifeboat(['--json', 'status'], { cwd: work });
  assert.equal(json.code, 1);
  assert.equal(json.json().error.exitCode, 1);
  assert.match(json.json().targets[1].slotsError, /staging-slots cannot be read/);
  assert.equal(json.json().targets[1].record.damaged, undefined, 'a record that cannot be reached is not called damaged');
  await fsp.rm(work, { recursive: true, force: true });
});

test('a failover or rollback by a user who may write the slots but not the directory of the active link is refused before a slot is restored or the old one drained, exit 1 saying so', { skip: process.geteuid?.() === 0 ? false : 'needs root to run lifeboat as another user' }, async () => {
  const NOBODY = 65534;
  const { work, first, second } = await twoPoints('  prod:\n    slots: ./own/slots\n    active: ./served/current\n    deactivate: \'echo "deactivate $LIFEBOAT_POINT" >> own/hooks.log\'\n');
  await fsp.chmod(work, 0o755);
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['failover', second], { cwd: work })).code, 0);
  // The slots are handed to the serving user; the link stays in root's directory.
  for (const p of [path.join(work, 'own'), ...(await fsp.readdir(path.join(work, 'own'), { recursive: true })).map((n) => path.join(work, 'own', n))]) await fsp.lchown(p, NOBODY, NOBODY);
  await fsp.writeFile(path.join(work, 'own', 'hooks.log'), '');
  const served = await fsp.readlink(path.join(work, 'served', 'current'));
  const refusal = new RegExp(`the active link ${path.join(work, 'served', 'current')} of target prod cannot be switched: EACCES.*\\n  check that this user may write ${path.join(work, 'served')}, where the link is replaced`);
  const nobody = { cwd: work, user: { uid: NOBODY, gid: NOBODY } };

  // The old slot was drained (and, for a failover, the new one restored), then the switch failed with an unexpected error.
  const rollback = await runChild(['rollback', '--to', 'prod'], nobody);
  assert.equal(rollback.code, 1, rollback.stderr);
  assert.match(rollback.stderr, refusal);
  await fsp.rm(path.join(work, 'own', 'slots', first), { recursive: true });
  const failover = await runChild(['failover', first, '--to', 'prod'], nobody);
  assert.equal(failover.code, 1, failover.stderr);
  assert.match(failover.stderr, /failover of prod to .* failed before the switch: /);
  assert.match(failover.stderr, refusal);
  assert.doesNotMatch(failover.stderr, /unexpected/);
  assert.equal(await exists(path.join(work, 'own', 'slots', first)), false, 'no slot restored');
  assert.equal(await fsp.readFile(path.join(work, 'own', 'hooks.log'), 'utf8'), '', 'nothing drained');
  assert.equal(await fsp.readlink(path.join(work, 'served', 'current')), served);
  await fsp.rm(work, { recursive: true, force: true });
});

test("a switch lock left on another host by a failover killed mid-way is taken over after --lock-stale-after (or lock.staleAfter), not only after the 30 minutes of its lease; a holder that refreshes its lease is never taken over", async (t) => {
  const { work, first, second } = await servingFirst('cat > /dev/null', '{ slots: ./slots, active: ./current }');
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const lock = path.join(work, 'slots', '.lifeboat-switch.lock');
  const leftOn = (host: string, refreshedAgoMs: number) =>
    fsp.writeFile(lock, JSON.stringify({ host, pid: 4242, command: `failover ${second}`, startedAt: new Date(Date.now() - 600_000).toISOString(), refreshedAt: new Date(Date.now() - refreshedAgoMs).toISOString(), leaseMs: 1_800_000 }));
  // Killed on gpu-node-2 five minutes ago: its lease of 30 minutes has not run out.
  await leftOn('gpu-node-2', 300_000);
  const held = await lifeboat(['failover', second], { cwd: work });
  assert.equal(held.code, 4, held.stderr);
  assert.match(held.stderr, /target prod is being switched by failover \S+ \(pid 4242 on gpu-node-2, since /);
  assert.match(held.stderr, /taken over once its lease has not been refreshed for 30m0s \(last at \S+; --lock-stale-after or lock\.staleAfter shortens that\)/);
  const short = await lifeboat(['failover', second, '--lock-stale-after', '4m'], { cwd: work });
  assert.equal(short.code, 0, short.stderr);
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', second));
  assert.ok(!(await exists(lock)), 'released');

  // The config's lock.staleAfter, for a rollback; status no longer takes the switch for one under way.
  await leftOn('gpu-node-2', 300_000);
  await fsp.appendFile(path.join(work, 'lifeboat.yaml'), 'lock: { staleAfter: 4m }\n');
  const back = await lifeboat(['rollback'], { cwd: work });
  assert.equal(back.code, 0, back.stderr);
  assert.equal(await readActive(path.join(work, 'current')), path.join(work, 'slots', first));

  // Refreshed a minute ago (it refreshes every minute): however short the threshold, two refreshes are waited for.
  await leftOn('gpu-node-2', 60_000);
  const live = await lifeboat(['rollback', '--lock-stale-after', '1s'], { cwd: work });
  assert.equal(live.code, 4, live.stderr);
  assert.match(live.stderr, /not been refreshed for 2m0s/);
  await fsp.rm(lock);
});

test('slots reached through a symbolic link are the slots an active link set by hand to their real path names, and the reverse: status names the point, a failover keeps the slot served for a rollback, which returns to it', async () => {
  for (const configured of ['through the link', 'by the real path'] as const) {
    // `via` leads to `real`: the config names the slots one way, the link set by hand the other.
    const slots = configured === 'through the link' ? './via/slots' : './real/slots';
    const { work, first, second } = await twoPoints(`  prod: { slots: ${slots}, active: ./current, keepSlots: 2 }\n`);
    try {
      await fsp.mkdir(path.join(work, 'real'));
      await fsp.symlink('real', path.join(work, 'via'));
      assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
      const byHand = path.join(work, configured === 'through the link' ? 'real' : 'via', 'slots', first);
      await fsp.rm(path.join(work, 'current'));
      await fsp.symlink(byHand, path.join(work, 'current'));
      const slotOf = (point: string) => path.join(work, slots, point);
      const third = '20200101-000000-000F';

      const st = await lifeboat(['--json', 'status'], { cwd: work });
      assert.equal(st.code, 0, `${configured}: ${st.stderr}`);
      const t = st.json().targets[0];
      assert.deepEqual([t.active.point, t.active.path], [first, slotOf(first)], configured);
      assert.deepEqual(t.slots, [{ name: first, point: first, active: true, previous: false }], configured);
      assert.match((await lifeboat(['status'], { cwd: work })).stdout, new RegExp(`\ntarget prod: ${first}, taken `), configured);

      // Run again for the point served, the failover knows it: the slot is checked, nothing switched.
      const again = await lifeboat(['--json', 'failover', first], { cwd: work });
      assert.equal(again.code, 0, again.stderr);
      assert.deepEqual([again.json().from.point, again.json().reused], [first, true], configured);
      assert.equal(await fsp.readlink(path.join(work, 'current')), byHand, `${configured}: the link set by hand is left as it is`);

      // keepSlots 2 never removes the slot served before, what a rollback returns to: a third slot goes instead.
      await fsp.mkdir(path.join(work, 'real', 'slots', third));
      const fs = await lifeboat(['--json', 'failover', second], { cwd: work });
      assert.equal(fs.code, 0, fs.stderr);
      assert.deepEqual([fs.json().from.point, fs.json().pruned], [first, [third]], configured);
      assert.equal((await lifeboat(['--json', 'status'], { cwd: work })).json().targets[0].previous.point, first, configured);
      const back = await lifeboat(['--json', 'rollback'], { cwd: work });
      assert.equal(back.code, 0, `${configured}: ${back.stderr}`);
      assert.equal(back.json().point, first, configured);
      assert.equal(await readActive(path.join(work, 'current')), slotOf(first), configured);
    } finally {
      await fsp.rm(work, { recursive: true, force: true });
    }
  }
});

test('a health check whose attempts are stopped at the limit each one has (half a short timeout) says so, and how to give a check more: a server that answers after 0.6 of the timeout', async (t) => {
  const url = await healthEndpoint(t, (_req, res) => void setTimeout(() => res.writeHead(200, { connection: 'close' }).end(), 1200));
  const h = await waitHealthy({ url, timeoutMs: 2000, intervalMs: 100 }, {});
  assert.equal(h.ok, false, h.detail);
  assert.equal(h.attemptLimitMs, 1000);
  // A command that needs as long, likewise; an answer that is not a time-out is no such case.
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  assert.equal((await waitHealthy({ command: 'sleep 1.2', timeoutMs: 2000, intervalMs: 100 }, { cwd: work })).attemptLimitMs, 1000);
  const refused = await waitHealthy({ command: 'exit 1', timeoutMs: 500, intervalMs: 100 }, { cwd: work });
  assert.deepEqual([refused.ok, refused.attemptLimitMs], [false, undefined]);

  const { work: deployment, first } = await twoPoints(`  prod: { slots: ./slots, active: ./current, health: { url: "${url}", timeout: 2s, interval: 100ms } }\n`);
  t.after(() => fsp.rm(deployment, { recursive: true, force: true }));
  const fo = await lifeboat(['--json', 'failover', first], { cwd: deployment });
  assert.equal(fo.code, 5, fo.stderr);
  assert.match(fo.json().reason, /: no answer within \d+ ms; each attempt may take at most 1000 ms \(half the health timeout\), so a check that needs longer never passes$/);
  assert.equal(fo.json().health.attemptLimitMs, 1000);
  const text = await lifeboat(['failover', first], { cwd: deployment });
  assert.equal(text.code, 5, text.stderr);
  assert.match(text.stderr, /each attempt may take at most 1000 ms \(half the health timeout\), so a check that needs longer never passes; the link was removed again \(there was none before\)\n {2}raise targets\.prod\.health\.timeout to more than twice what one check needs, or set targets\.prod\.health\.retries: 0, which gives the one check the whole timeout\n$/);
  // As the hint says: one check given the whole timeout passes.
  const config = path.join(deployment, 'lifeboat.yaml');
  await fsp.writeFile(config, (await fsp.readFile(config, 'utf8')).replace('interval: 100ms', 'interval: 100ms, retries: 0'));
  const single = await lifeboat(['--json', 'failover', first], { cwd: deployment });
  assert.equal(single.code, 0, single.stderr);
  assert.equal(single.json().health.attempts, 1);
});

test('a failover that reuses the slot of a point taken before points recorded their exclude patterns keeps what the config\'s patterns match, and says so on stderr and among the --json warnings', async (t) => {
  const { work, first } = await twoPoints('  prod: { slots: ./slots, active: ./current }\n');
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['failover', first], { cwd: work })).code, 0);
  // What an earlier version wrote: the same manifest without the patterns.
  const file = path.join(work, 'repo', 'points', `${first}.json`);
  const m = decodeDocument(await fsp.readFile(file), manifestSchema, 'manifest');
  for (const s of m.sources) delete s.exclude;
  await fsp.writeFile(file, encodeDocument(m));
  const log = path.join(work, 'slots', first, 'models', 'server.log');
  const config = path.join(work, 'lifeboat.yaml');
  await fsp.appendFile(config, 'exclude: ["*.log"]\n');
  await fsp.writeFile(log, 'served\n');

  const said = `${first} does not record the exclude patterns its backup left files out with (an earlier version took it)`;
  const kept = await lifeboat(['--json', 'failover', first], { cwd: work });
  assert.equal(kept.code, 0, kept.stderr);
  assert.deepEqual([kept.json().reused, kept.json().restore.keptExcluded, kept.json().restore.removed], [true, 1, 0]);
  assert.equal(await fsp.readFile(log, 'utf8'), 'served\n');
  assert.equal(kept.stderr.split(said).length - 1, 1, `said once on stderr: ${kept.stderr}`);
  assert.deepEqual(kept.json().warnings, [{ code: 'excludes-unrecorded', message: `${said}: the check of its slot keeps what the config's exclude patterns match (*.log)` }]);

  // Without patterns in the config, what the point lacks goes, and that is a warning.
  await fsp.writeFile(config, (await fsp.readFile(config, 'utf8')).replace('exclude: ["*.log"]\n', ''));
  const bare = await lifeboat(['--json', 'failover', first], { cwd: work });
  assert.equal(bare.code, 0, bare.stderr);
  assert.deepEqual([bare.json().restore.keptExcluded, bare.json().restore.removed], [0, 1]);
  assert.match(bare.stderr, /warning.*and the config has none: the check of its slot removes everything the point lacks, what its backup left out included/i);
  assert.deepEqual(bare.json().warnings.map((w: { code: string }) => w.code), ['excludes-unrecorded']);
  // A slot restored anew has nothing the backup left out to keep: nothing to say.
  await fsp.rm(path.join(work, 'slots', first), { recursive: true });
  await fsp.rm(path.join(work, 'current'));
  const fresh = await lifeboat(['--json', 'failover', first], { cwd: work });
  assert.equal(fresh.code, 0, fresh.stderr);
  assert.deepEqual(fresh.json().warnings, []);
});
