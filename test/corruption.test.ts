import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { exists, repoFiles, smallDeployment } from './helpers/repo.js';
import { tarBlocks } from './helpers/tar-blocks.js';
import { prng, seedFromEnv } from './helpers/tree.js';

async function flipByte(file: string, offset: number): Promise<void> {
  const fh = await fsp.open(file, 'r+');
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, offset);
  b[0] = b[0]! ^ 0x01;
  await fh.write(b, 0, 1, offset);
  await fh.close();
}

/** A small deployment backed up once, and the key and path of the point's volume. */
async function backedUpVolume() {
  const d = await smallDeployment();
  const b = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src]);
  assert.equal(b.code, 0, b.stderr);
  const id: string = b.json().id;
  const volume = (await repoFiles(d.repo)).find((f) => f.startsWith(`data/${id}/`))!;
  return { d, id, volume, file: path.join(d.repo, ...volume.split('/')) };
}

test('a flipped byte in a volume is found by verify --read-data and refused by restore (exit 3)', async () => {
  const { d, id, volume, file } = await backedUpVolume();
  // Inside weights.bin's body: the largest entry, so the middle of the volume.
  await flipByte(file, Math.floor((await fsp.stat(file)).size / 2));

  assert.equal((await lifeboat(['--repo', d.repo, 'verify'])).code, 0, 'a structural verify does not read data');
  const v = await lifeboat(['--repo', d.repo, '--json', 'verify', '--read-data']);
  assert.equal(v.code, 3);
  const report = v.json();
  assert.equal(report.ok, false);
  assert.ok(report.problems.some((p: { point: string; path: string; kind: string }) => p.point === id && p.path === 'models/weights.bin' && p.kind === 'checksum-mismatch'), v.stdout);

  const target = path.join(d.work, 'restored');
  const r = await lifeboat(['--repo', d.repo, 'restore', id, '--target', target]);
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr, /models\/weights\.bin/);
  assert.equal(await exists(target), false, 'no half-restored target');
  assert.deepEqual((await fsp.readdir(d.work)).filter((n) => n.includes('staging')), [], 'staging removed');
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('a restore that finds a file damaged names it quoted, as verify lists it, when its name ends with a space', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  await fsp.rename(path.join(d.src, 'weights.bin'), path.join(d.src, 'weights.bin '));
  const b = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src]);
  assert.equal(b.code, 0, b.stderr);
  const volume = (await repoFiles(d.repo)).find((f) => f.startsWith(`data/${b.json().id}/`))!;
  const file = path.join(d.repo, ...volume.split('/'));
  await flipByte(file, Math.floor((await fsp.stat(file)).size / 2));
  const r = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', path.join(d.work, 'restored')]);
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr, /^lifeboat: "models\/weights\.bin " from volume \S+ does not match its checksum/);
});

test('a flipped byte in the padding after a file body, outside every SHA-256, fails the volume CRC-32 of its framing', async () => {
  const { d, id, volume, file } = await backedUpVolume();
  // The first file body that does not end on a block.
  const padding = [...tarBlocks(await fsp.readFile(file))].find((b) => b.type === '0' && b.size % 512 !== 0)?.padding ?? -1;
  assert.ok(padding > 0, 'the volume has a padded file body');
  await flipByte(file, padding);
  const v = await lifeboat(['--repo', d.repo, '--json', 'verify', '--read-data']);
  assert.equal(v.code, 3, v.stdout);
  assert.ok(v.json().problems.some((p: { path: string; kind: string }) => p.path === volume && p.kind === 'volume-damaged'), v.stdout);
  await flipByte(file, padding);
  assert.equal((await lifeboat(['--repo', d.repo, 'verify', '--read-data'])).code, 0);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('any single flipped bit anywhere in a volume or manifest is detected (randomized)', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const rand = prng(seed);
  const d = await smallDeployment();
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  const objects = (await repoFiles(d.repo)).filter((f) => f.startsWith('data/') || f.startsWith('points/'));
  for (let i = 0; i < 12; i++) {
    const key = objects[Math.floor(rand() * objects.length)]!;
    const file = path.join(d.repo, ...key.split('/'));
    const size = (await fsp.stat(file)).size;
    const offset = Math.floor(rand() * size);
    const bit = 1 << Math.floor(rand() * 8);
    const fh = await fsp.open(file, 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, offset);
    await fh.write(Buffer.from([b[0]! ^ bit]), 0, 1, offset);
    const v = await lifeboat(['--repo', d.repo, '--json', 'verify', '--read-data']);
    await fh.write(b, 0, 1, offset);
    await fh.close();
    assert.equal(v.code, 3, `bit ${bit} at ${key}:${offset} went unnoticed: ${v.stdout}`);
  }
  assert.equal((await lifeboat(['--repo', d.repo, 'verify', '--read-data'])).code, 0);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('a missing volume or a damaged manifest is an integrity failure', async () => {
  const d = await smallDeployment();
  const id = (await lifeboat(['--repo', d.repo, '--json', 'backup', d.src])).json().id;
  const files = await repoFiles(d.repo);
  const manifest = path.join(d.repo, 'points', `${id}.json`);
  const original = await fsp.readFile(manifest, 'utf8');
  await fsp.writeFile(manifest, original.replace('"vm"', '"xx"').replace(/"host": "[^"]*"/, '"host": "elsewhere"'));
  // list reads the point's summary; whatever reads the manifest finds the damage.
  for (const args of [['show', id], ['restore', id, '--target', path.join(d.work, 'restored')]]) {
    const r = await lifeboat(['--repo', d.repo, ...args]);
    assert.equal(r.code, 3, args[0]);
    assert.match(r.stderr, /damaged/);
  }
  await fsp.writeFile(manifest, original);

  // An incremental and a differential that take files unchanged from the full: the full's volume gone fails them too.
  await fsp.appendFile(path.join(d.src, 'config.json'), ' ');
  const incr = (await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'incr'])).json().id;
  await fsp.appendFile(path.join(d.src, 'config.json'), ' ');
  const diff = (await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'diff'])).json().id;
  const volume = files.find((f) => f.startsWith('data/'))!;
  await fsp.rm(path.join(d.repo, ...volume.split('/')));
  const v = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  assert.equal(v.code, 3);
  assert.deepEqual(
    v.json().problems.map((p: { point: string; kind: string; path: string }) => [p.point, p.kind, p.path]),
    [id, incr, diff].map((point) => [point, 'missing-volume', volume]),
    'every point that needs the volume is named, once',
  );
  assert.match(v.json().problems[1].detail, new RegExp(`this point needs ${volume} of ${id}, which does not exist`));
  const latest = await lifeboat(['--repo', d.repo, 'verify', 'latest']);
  assert.equal(latest.code, 3);
  assert.match(latest.stdout, new RegExp(`^  missing-volume: ${id} ${volume}: .*; 1 more point needs it too: ${diff}$`, 'm'));
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('the points of a long chain that all need one missing volume, or one missing point, are one line of a text verify; --json lists each, once', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const ids: string[] = [];
  for (let i = 0; i < 7; i++) {
    await fsp.appendFile(path.join(d.src, 'config.json'), ' ');
    const b = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', i === 0 ? 'full' : 'incr']);
    assert.equal(b.code, 0, b.stderr);
    ids.push(b.json().id);
  }
  const [full, ...incrs] = ids as [string, ...string[]];
  const volume = (await repoFiles(d.repo)).find((f) => f.startsWith(`data/${full}/`))!;
  const volumeFile = path.join(d.repo, ...volume.split('/'));
  await fsp.rename(volumeFile, `${volumeFile}.away`);
  const json = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  assert.equal(json.code, 3);
  assert.deepEqual(json.json().problems.map((p: { point: string }) => p.point), ids);
  const text = await lifeboat(['--repo', d.repo, 'verify']);
  assert.equal(text.code, 3);
  assert.deepEqual(text.stdout.trimEnd().split('\n').slice(1), [
    `  missing-volume: ${full} ${volume}: volume object does not exist; 6 more points need it too: ${incrs.slice(0, 3).join(', ')} and 3 more`,
    '7 problem(s) found',
  ]);
  // --deep cannot restore any of them, for the same reason: one line, of the point (no file of it).
  const deep = await lifeboat(['--repo', d.repo, 'verify', '--deep']);
  assert.equal(deep.code, 3);
  const failed = deep.stdout.split('\n').filter((l) => l.startsWith('  restore-failed: '));
  assert.equal(failed.length, 1, deep.stdout);
  assert.match(failed[0]!, new RegExp(`^  restore-failed: ${full}: .*${volume}.*; 6 more points need it too: ${incrs.slice(0, 3).join(', ')} and 3 more$`));
  await fsp.rename(`${volumeFile}.away`, volumeFile);

  // The full's manifest gone: each point after it depends on it once, though it is both the parent and the full of the first.
  const manifest = path.join(d.repo, 'points', `${full}.json`);
  await fsp.rename(manifest, `${manifest}.away`);
  const broken = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  assert.equal(broken.code, 3);
  const dependsOn = broken.json().problems.filter((p: { detail: string }) => p.detail === `depends on ${full}, which is missing`);
  assert.deepEqual(dependsOn.map((p: { point: string }) => p.point), incrs);
  const brokenText = await lifeboat(['--repo', d.repo, 'verify']);
  assert.equal(brokenText.code, 3);
  const lines = brokenText.stdout.trimEnd().split('\n');
  assert.equal(lines.filter((l) => l.includes(`depends on ${full}`)).length, 1, brokenText.stdout);
  assert.ok(lines.length < broken.json().problems.length, brokenText.stdout);
});

test('latest or a time that selects a point whose manifest is damaged says so, and names the point before it', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const ids: string[] = [];
  for (const type of ['full', 'incr']) {
    await fsp.appendFile(path.join(d.src, 'config.json'), ' ');
    const b = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', type]);
    assert.equal(b.code, 0, b.stderr);
    ids.push(b.json().id);
  }
  const [full, newest] = ids as [string, string];
  const completed = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json()[0].completedAt;
  await flipByte(path.join(d.repo, 'points', `${newest}.json`), 30);
  const target = path.join(d.work, 'restored');
  for (const selector of ['latest', '2099-01-01T00:00:00Z']) {
    const r = await lifeboat(['--repo', d.repo, '--json', 'restore', selector, '--target', target]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, new RegExp(`^lifeboat: ${selector} selects backup point ${newest}, which cannot be read: manifest of ${newest} `));
    assert.match(r.stderr, new RegExp(`\n {2}\`lifeboat verify\` reports the damage; the point before it is ${full} \\(completed ${completed}\\): give its id to use it\n`));
    assert.match(r.json().error.hint, new RegExp(full));
  }
  assert.equal(await exists(target), false);
  const instead = await lifeboat(['--repo', d.repo, 'restore', full, '--target', target]);
  assert.equal(instead.code, 0, instead.stderr);
});

test('a restore that meets a damaged or missing volume names the newest point that does without it, and the command that restores it', async () => {
  const d = await smallDeployment();
  const backup = async (...args: string[]) => {
    const b = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, ...args]);
    assert.equal(b.code, 0, b.stderr);
    return b.json().id as string;
  };
  const first = await backup('--type', 'full');
  await fsp.writeFile(path.join(d.src, 'weights.bin'), 'new weights');
  const second = await backup();
  await fsp.writeFile(path.join(d.src, 'config.json'), '{"vocab_size": 32001}');
  const third = await backup();

  // The second point's volume holds the new weights, which the third point reuses.
  const volume = (await repoFiles(d.repo)).find((f) => f.startsWith(`data/${second}/`))!;
  const volumeFile = path.join(d.repo, ...volume.split('/'));
  await flipByte(volumeFile, (await fsp.readFile(volumeFile)).indexOf('new weights'));
  const target = path.join(d.work, 'restored');
  const r = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', target]);
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr, new RegExp(`\\n  ${first} \\(completed [^)]+\\) needs nothing of ${volume}: lifeboat restore ${first} --target ${target}\\n`));
  assert.equal(await exists(target), false);
  // A target with a space is quoted, so that the command can be copied as it is.
  const spaced = path.join(d.work, 'restored copy');
  const quoted = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', spaced]);
  assert.equal(quoted.code, 3, quoted.stderr);
  assert.ok(quoted.stderr.includes(`: lifeboat restore ${first} --target '${spaced}'\n`), quoted.stderr);
  assert.notEqual(third, first);
  // A failover fails before its switch, and says which point to fail over to.
  await fsp.writeFile(path.join(d.work, 'lifeboat.yaml'), `repository: ./repo\ntargets:\n  prod: { slots: ./slots, active: ./current, health: { command: "true" } }\n`);
  const failover = await lifeboat(['failover', 'latest', '--to', 'prod'], { cwd: d.work });
  assert.equal(failover.code, 3, failover.stderr);
  assert.match(failover.stderr, new RegExp(`needs nothing of ${volume}: lifeboat failover ${first} --to prod\n`));
  assert.equal(await exists(path.join(d.work, 'current')), false, 'the link was not switched');
  const drill = await lifeboat(['--repo', d.repo, 'drill']);
  assert.equal(drill.code, 3, drill.stderr);
  assert.match(drill.stderr, new RegExp(`needs nothing of ${volume}: lifeboat drill ${first}\n`));

  // With the full's volume gone too, no point restores.
  await fsp.rm(path.join(d.repo, 'data', first), { recursive: true });
  const none = await lifeboat(['--repo', d.repo, '--json', 'restore', second, '--target', target]);
  assert.equal(none.code, 3);
  assert.match(none.json().error.hint, /every other point of this deployment needs data\/\S+ too; `lifeboat verify --read-data` names all the damage/);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('an incremental or differential whose reference manifest is damaged fails (exit 3) saying that a full backup works, and a full does', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const full = (await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'full'])).json().id as string;
  await fsp.appendFile(path.join(d.src, 'config.json'), ' ');
  const incr = (await lifeboat(['--repo', d.repo, '--json', 'backup', d.src])).json().id as string;
  const damage = async (id: string) => flipByte(path.join(d.repo, 'points', `${id}.json`), 40);
  const hint = /\n {2}take a full backup, which needs no earlier point: lifeboat backup --type full; lifeboat verify shows what is damaged\n$/;

  await damage(incr);
  const refused = await lifeboat(['--repo', d.repo, 'backup', d.src]);
  assert.equal(refused.code, 3, refused.stderr);
  assert.match(refused.stderr, new RegExp(`lifeboat: this incr backup builds on ${incr}, whose manifest cannot be read: manifest of ${incr} `));
  assert.match(refused.stderr, hint);
  await damage(full);
  const diff = await lifeboat(['--repo', d.repo, 'backup', d.src, '--type', 'diff']);
  assert.equal(diff.code, 3, diff.stderr);
  assert.match(diff.stderr, new RegExp(`this diff backup builds on ${full}, whose manifest cannot be read`));
  assert.match(diff.stderr, hint);

  const taken = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'full']);
  assert.equal(taken.code, 0, taken.stderr);
  assert.equal(taken.json().parent, null);

  // A newest point whose summary is gone too (written before summaries existed) belongs to no deployment anyone can
  // tell: an incremental cannot know what it builds on and says so, with the same hint, and a full is still taken.
  await fsp.appendFile(path.join(d.src, 'config.json'), ' ');
  const newest = (await lifeboat(['--repo', d.repo, '--json', 'backup', d.src])).json().id as string;
  await fsp.rm(path.join(d.repo, 'summaries', `${newest}.json`));
  await damage(newest);
  const unknown = await lifeboat(['--repo', d.repo, 'backup', d.src]);
  assert.equal(unknown.code, 3, unknown.stderr);
  assert.match(unknown.stderr, new RegExp(`lifeboat: this incr backup cannot tell which point it builds on: manifest of ${newest} `));
  assert.match(unknown.stderr, hint);
  const fullAgain = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'full']);
  assert.equal(fullAgain.code, 0, fullAgain.stderr);
  assert.equal(fullAgain.json().type, 'full');
  // And the chain goes on from it.
  const next = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src]);
  assert.equal(next.code, 0, next.stderr);
  assert.equal(next.json().parent, fullAgain.json().id);
});
