import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { lifeboat } from './helpers/cli.js';
import { prng, tempDir, writeRandomFile } from './helpers/tree.js';
import { FIXTURE_PASSWORD, treeFiles, writeTree } from '../fixtures/repositories/make.js';
import { appendEvent } from '../src/core/journal.js';
import { switchActive, TARGET_STATE_FILE } from '../src/core/slots.js';
import { LocalStorage } from '../src/storage/local.js';

// What earlier versions of lifeboat wrote, read and written on by this one (and the other way round).

/** A repository with a full and three incrementals of `models`, and a config with target prod. */
async function fourPoints(t: { after(fn: () => Promise<void>): void }) {
  const work = await tempDir('lifeboat-compat-');
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  const repo = path.join(work, 'repo');
  await fsp.mkdir(src);
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const rand = prng(11);
  const ids: string[] = [];
  for (let i = 0; i < 4; i++) {
    await writeRandomFile(path.join(src, `w${i}.bin`), 10_000, rand);
    const r = await lifeboat(['--repo', repo, '--json', 'backup', src]);
    assert.equal(r.code, 0, r.stderr);
    ids.push(r.json().id);
  }
  const config = path.join(work, 'lifeboat.yaml');
  await fsp.writeFile(config, `repository: ${repo}\ntargets:\n  prod:\n    slots: ./slots\n    active: ./current\n`);
  return { work, repo, ids, env: { LIFEBOAT_CONFIG: config } };
}

test("a switch made after a host running an earlier version rewrote the target's record of switches (without their count) comes after the switches made before, not first again", async (t) => {
  const { work, repo, ids, env } = await fourPoints(t);
  const failover = async (id: string) => {
    const r = await lifeboat(['--json', 'failover', id, '--to', 'prod'], { cwd: work, env });
    assert.equal(r.code, 0, r.stderr);
  };
  await failover(ids[0]!);
  await failover(ids[1]!);
  await failover(ids[2]!);

  // The failover host, still on a version that does not count switches, rolls back to ids[1]: it moves the
  // link, rewrites the record with only the fields it knows, and journals the rollback without a generation.
  const slots = path.join(work, 'slots');
  const recordFile = path.join(slots, TARGET_STATE_FILE);
  const record = JSON.parse(await fsp.readFile(recordFile, 'utf8'));
  const from = path.join(slots, ids[2]!);
  const to = path.join(slots, ids[1]!);
  await switchActive(path.join(work, 'current'), to);
  const history = [...record.history, { at: new Date().toISOString(), from, to, kind: 'rollback' }].map(({ at, from, to, kind }: Record<string, unknown>) => ({ at, from, to, kind }));
  await fsp.writeFile(recordFile, JSON.stringify({ version: 1, previous: from, history }, null, 2));
  const storage = new LocalStorage(repo);
  await appendEvent(storage, { type: 'rollback', point: ids[1]!, target: 'prod', outcome: 'ok', detail: { slot: to, from, fromPoint: ids[2]!, switched: true } });
  await storage.close();

  // Back on this version: the next failover is the fourth counted switch of prod.
  await failover(ids[3]!);
  const st = await lifeboat(['--json', 'status'], { cwd: work, env });
  assert.equal(st.code, 0, st.stderr);
  const events = st.json().targets[0].events as { type: string; point: string; detail?: { generation?: number } }[];
  assert.deepEqual(
    events.map((e) => `${e.type} ${e.point}`),
    [`failover ${ids[0]}`, `failover ${ids[1]}`, `failover ${ids[2]}`, `rollback ${ids[1]}`, `failover ${ids[3]}`],
    'in the order they were made',
  );
  assert.equal(events.at(-1)!.detail?.generation, 4);
  assert.equal(JSON.parse(await fsp.readFile(recordFile, 'utf8')).generation, 4, 'the record counts on from there');
  const text = await lifeboat(['status'], { cwd: work, env });
  assert.match(text.stdout.trim().split('\n').at(-1)!, new RegExp(`failover ${ids[3]} ok`), 'the last line is the last switch');
});

const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../fixtures/repositories');

/** Asserts that `dir` holds exactly state `state` of the fixtures' tree: each file's bytes, each link's target, weights.bin private. */
async function assertTree(dir: string, state: 1 | 2 | 3, what: string): Promise<void> {
  const expected = treeFiles(state);
  const found = (await fsp.readdir(dir, { recursive: true, withFileTypes: true }))
    .filter((e) => !e.isDirectory())
    .map((e) => path.relative(dir, path.join(e.parentPath ?? e.path, e.name)))
    .sort();
  assert.deepEqual(found, [...expected.keys()].sort(), `${what}: the files of state ${state}`);
  for (const [rel, content] of expected) {
    const file = path.join(dir, rel);
    if (typeof content === 'string' && content.startsWith('-> ')) assert.equal(await fsp.readlink(file), content.slice(3), `${what}: ${rel}`);
    else assert.ok((await fsp.readFile(file)).equals(Buffer.from(content)), `${what}: the bytes of ${rel}`);
  }
  assert.equal((await fsp.stat(path.join(dir, 'models/m/weights.bin'))).mode & 0o777, 0o600, `${what}: the mode of weights.bin`);
}

for (const fixture of [
  { name: 'format1', env: {} },
  { name: 'format2-encrypted', env: { LIFEBOAT_PASSWORD: FIXTURE_PASSWORD } },
]) {
  test(`a repository an earlier version wrote (${fixture.name}) lists, verifies every byte, restores each point bit-exact, and takes new backups onto its chain`, async (t) => {
    const work = await tempDir('lifeboat-compat-');
    t.after(() => fsp.rm(work, { recursive: true, force: true }));
    const repo = path.join(work, 'repo');
    await fsp.cp(path.join(FIXTURES, fixture.name), repo, { recursive: true });
    const run = async (args: string[], code = 0) => {
      const r = await lifeboat(['--repo', repo, ...args], { env: fixture.env });
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
      return r;
    };

    const listed = (await run(['--json', 'list'])).json() as { id: string; type: string; parent: string | null; files: number }[];
    assert.deepEqual(listed.map((p) => p.type), ['full', 'incr', 'diff']);
    const [full, incr, diff] = listed.map((p) => p.id) as [string, string, string];
    assert.deepEqual(listed.map((p) => p.parent), [null, full, full]);
    assert.deepEqual(listed.map((p) => p.files), [6, 6, 6]);

    const verified = (await run(['--json', 'verify', '--read-data'])).json();
    assert.equal(verified.ok, true, JSON.stringify(verified.problems));
    assert.deepEqual(verified.problems, []);

    const deep = (await run(['--json', 'verify', '--deep'])).json();
    assert.deepEqual(deep.problems, [], 'every point restores and its model files validate');
    assert.equal((await run(['--json', 'drill', incr])).json().ok, true);

    for (const [id, state] of [[full, 1], [incr, 2], [diff, 3]] as const) {
      const target = path.join(work, `restored-${id}`);
      await run(['restore', id, '--target', target]);
      await assertTree(target, state, `restore of ${id}`);
    }

    // New points on the old chain: an incr on the diff, then a diff on the old full.
    const tree = path.join(work, 'tree');
    await writeTree(tree, 3);
    await fsp.appendFile(path.join(tree, 'serving/routing.yaml'), 'canary: 5\n');
    const sources = ['--source', `models=${path.join(tree, 'models')}`, '--source', `serving=${path.join(tree, 'serving')}`];
    const newIncr = (await run(['--json', 'backup', ...sources, '--type', 'incr'])).json();
    assert.equal(newIncr.parent, diff);
    const newDiff = (await run(['--json', 'backup', ...sources, '--type', 'diff'])).json();
    assert.equal(newDiff.parent, full);
    assert.equal((await run(['--json', 'verify', '--read-data'])).json().ok, true);
    for (const id of [newIncr.id, newDiff.id]) {
      const target = path.join(work, `restored-${id}`);
      await run(['restore', id, '--target', target]);
      const routing = path.join(target, 'serving/routing.yaml');
      assert.equal(await fsp.readFile(routing, 'utf8'), `${treeFiles(3).get('serving/routing.yaml')}canary: 5\n`);
      await fsp.writeFile(routing, treeFiles(3).get('serving/routing.yaml')!);
      await assertTree(target, 3, `restore of ${id}`);
    }
    // The old points restore the same once new ones stand on them.
    const again = path.join(work, 'again');
    await run(['restore', incr, '--target', again]);
    await assertTree(again, 2, `restore of ${incr} after the new backups`);
  });
}

test('a backup leaves under .tmp/ nothing but files, which the backups of earlier versions remove one by one: the room kept aside for a prune is elsewhere, and where an earlier version kept it, it is moved', async (t) => {
  const work = await tempDir('lifeboat-compat-');
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const repo = path.join(work, 'repo');
  const models = path.join(work, 'models');
  await fsp.mkdir(models);
  await fsp.writeFile(path.join(models, 'w.bin'), 'weights');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  // Where the previous layout kept the room: the next backup moves it.
  await fsp.mkdir(path.join(repo, '.tmp', 'reserve'), { recursive: true });
  await fsp.writeFile(path.join(repo, '.tmp', 'reserve', 'space'), Buffer.alloc(256 * 1024));
  const r = await lifeboat(['--repo', repo, 'backup', models]);
  assert.equal(r.code, 0, r.stderr);

  // What the backup of an earlier version does with every entry under .tmp/ it finds: delete it as a file.
  const tmp = path.join(repo, '.tmp');
  for (const name of await fsp.readdir(tmp).catch(() => [] as string[])) await fsp.rm(path.join(tmp, name), { force: true });
  assert.equal((await fsp.stat(path.join(repo, '.reserve', 'space'))).size, 256 * 1024, 'the room is kept aside');
  const listed = await lifeboat(['--repo', repo, '--json', 'verify']);
  assert.equal(listed.code, 0, listed.stderr);
  assert.deepEqual(listed.json().problems, []);
  assert.equal((await lifeboat(['--repo', repo, 'backup', models])).code, 0);
});
