import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { BIN, lifeboat, runChild } from './helpers/cli.js';
import { prng, seedFromEnv, tempDir } from './helpers/tree.js';
import { inNamespace, unshare } from './helpers/namespace.js';

const asRoot = process.geteuid?.() === 0;
const NOBODY = 65534;

async function owners(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (dir: string, rel: string) => {
    for (const name of (await fsp.readdir(dir)).sort()) {
      const st = await fsp.lstat(path.join(dir, name));
      out.set(`${rel}${name}`, `${st.uid}:${st.gid} ${(st.mode & 0o7777).toString(8)}`);
      if (st.isDirectory()) await walk(path.join(dir, name), `${rel}${name}/`);
    }
  };
  await walk(root, '');
  return out;
}

test('a restore as root gives files, directories and links the owners they had at that point', { skip: asRoot ? false : 'changing owners needs root' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const rand = prng(seedFromEnv());
  const id = () => 1000 + Math.floor(rand() * 60_000);
  // Alone in its directory, so that owners(path.dirname(src)) describes the source and its root.
  const src = path.join(work, 'tree', 'models');
  await fsp.mkdir(path.join(src, 'shards'), { recursive: true });
  const paths: string[] = [];
  for (let i = 0; i < 12; i++) {
    const p = path.join(src, i % 2 ? 'shards' : '', `f${i}`);
    await fsp.writeFile(p, `file ${i}\n`);
    paths.push(p);
  }
  await fsp.symlink('f0', path.join(src, 'link'));
  for (const p of [...paths, path.join(src, 'link'), path.join(src, 'shards')]) await fsp.lchown(p, id(), id());
  await fsp.chown(src, id(), id());
  // Set after the owner, which would clear it: a group-shared directory.
  await fsp.chmod(path.join(src, 'shards'), 0o2775);
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const full = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'full']);
  assert.equal(full.code, 0, full.stderr);
  const atFull = await owners(path.dirname(src));

  // A change of owner alone (no new content, no new mtime) is recorded by the next backup.
  await fsp.chown(paths[3]!, 4242, 4343);
  const incr = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'incr']);
  assert.equal(incr.code, 0, incr.stderr);
  const atIncr = await owners(path.dirname(src));
  assert.notDeepEqual(atIncr, atFull);

  for (const [point, expected] of [[full.json().id, atFull], [incr.json().id, atIncr]] as const) {
    const target = path.join(work, `restore-${point}`);
    const r = await lifeboat(['--repo', repo, 'restore', point, '--target', target]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await owners(target), expected, `owners and modes at ${point}`);
  }

  // Someone else restores: the files are theirs, and the restore still succeeds.
  await fsp.chmod(work, 0o755);
  const forNobody = path.join(work, 'nobody');
  await fsp.mkdir(forNobody);
  await fsp.chown(forNobody, NOBODY, NOBODY);
  const child = spawn(process.execPath, [BIN, '--repo', repo, 'restore', 'latest', '--target', path.join(forNobody, 'out')], { uid: NOBODY, gid: NOBODY, stdio: ['ignore', 'ignore', 'pipe'] });
  const err: Buffer[] = [];
  child.stderr.on('data', (c: Buffer) => err.push(c));
  assert.equal(await new Promise((resolve) => child.on('close', resolve)), 0, Buffer.concat(err).toString());
  const theirs = await owners(path.join(forNobody, 'out'));
  for (const [p, o] of theirs) assert.match(o, new RegExp(`^${NOBODY}:${NOBODY} `), `${p} belongs to the user who restored it`);
});

const userNamespace = unshare?.includes('--map-root-user');

test('a restore as root on another host gives files the local ids of their owners\' names, as tar does; --numeric-owner keeps the numbers', { skip: !asRoot || !unshare || userNamespace ? 'needs root and a mount namespace, to lend each "host" its own /etc/passwd' : false }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  // triton and mlflow exist on the backed-up host; 4242 has no name there.
  const owned: Record<string, [number, number]> = { 'model.safetensors': [2001, 2001], 'mlflow.db': [2002, 2002], 'scratch.bin': [4242, 4343] };
  for (const [name, [uid, gid]] of Object.entries(owned)) {
    await fsp.writeFile(path.join(src, name), name);
    await fsp.chown(path.join(src, name), uid, gid);
  }
  await fsp.chown(src, 2001, 2001);
  const hosts = {
    // The backed-up host, and a stand-by where triton got other ids and mlflow does not exist.
    a: { passwd: 'root:x:0:0::/root:/bin/sh\ntriton:x:2001:2001::/nonexistent:/bin/false\nmlflow:x:2002:2002::/nonexistent:/bin/false\n', group: 'root:x:0:\ntriton:x:2001:\nmlflow:x:2002:\n' },
    b: { passwd: 'root:x:0:0::/root:/bin/sh\n# a comment\ntriton:x:3005:3006::/nonexistent:/bin/false\n', group: 'root:x:0:\ntriton:x:3006:\n' },
  };
  for (const [host, files] of Object.entries(hosts)) {
    await fsp.writeFile(path.join(work, `passwd-${host}`), files.passwd);
    await fsp.writeFile(path.join(work, `group-${host}`), files.group);
  }
  const asHost = (host: string, commands: string) =>
    inNamespace(`mount --bind "$WORK/passwd-${host}" /etc/passwd\nmount --bind "$WORK/group-${host}" /etc/group\n${commands}`, { WORK: work });
  asHost('a', 'node "$BIN" --repo "$WORK/repo" init > /dev/null\nnode "$BIN" --repo "$WORK/repo" backup "$WORK/models" > /dev/null');
  asHost(
    'b',
    [
      'node "$BIN" --repo "$WORK/repo" restore latest --target "$WORK/by-name" > /dev/null',
      'node "$BIN" --repo "$WORK/repo" restore latest --target "$WORK/by-number" --numeric-owner > /dev/null',
      // A delta restore sets owners too: a file chowned since is given its owner back.
      'cp -a "$WORK/by-name" "$WORK/by-delta" && chown 0:0 "$WORK/by-delta/models/model.safetensors"',
      'node "$BIN" --repo "$WORK/repo" restore latest --target "$WORK/by-delta" --delta > /dev/null',
    ].join('\n'),
  );
  const ownerOf = async (p: string) => {
    const st = await fsp.stat(p);
    return [st.uid, st.gid];
  };
  for (const target of ['by-name', 'by-delta']) {
    const root = path.join(work, target, 'models');
    assert.deepEqual(await ownerOf(path.join(root, 'model.safetensors')), [3005, 3006], `${target}: triton's file`);
    assert.deepEqual(await ownerOf(root), [3005, 3006], `${target}: the source's root, triton's`);
    assert.deepEqual(await ownerOf(path.join(root, 'mlflow.db')), [2002, 2002], `${target}: a name the host lacks keeps its number`);
    assert.deepEqual(await ownerOf(path.join(root, 'scratch.bin')), [4242, 4343], `${target}: an id without a name keeps its number`);
  }
  for (const [name, ids] of Object.entries(owned)) assert.deepEqual(await ownerOf(path.join(work, 'by-number', 'models', name)), ids, `--numeric-owner: ${name}`);
  assert.deepEqual(await ownerOf(path.join(work, 'by-number', 'models')), [2001, 2001]);
});

const userNamespaces = spawnSync('unshare', ['--user', '--map-root-user', 'true'], { stdio: 'ignore' }).status === 0;

test('a restore where owners cannot be set (a user namespace, NFS with root_squash, FAT) restores everything and warns once', { skip: asRoot && userNamespaces ? false : 'needs root, to give files other owners, and user namespaces' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  await fsp.mkdir(path.join(src, 'shards'), { recursive: true });
  for (const name of ['config.json', 'shards/a.bin', 'shards/b.bin']) {
    await fsp.writeFile(path.join(src, name), name);
    await fsp.chown(path.join(src, name), 2001, 2001);
  }
  await fsp.chmod(path.join(src, 'shards', 'a.bin'), 0o640);
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  assert.equal((await lifeboat(['--repo', repo, 'backup', src])).code, 0);
  // Root inside a user namespace that maps no id but its own: every change of owner is EINVAL.
  const target = path.join(work, 'restored');
  const run = spawnSync('unshare', ['--user', '--map-root-user', process.execPath, BIN, '--repo', repo, '--json', 'restore', 'latest', '--target', target], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(run.status, 0, run.stderr);
  assert.equal(run.stderr.match(/could not be given their owners/g)?.length, 1, run.stderr);
  assert.match(run.stderr, /warning: .*: the files could not be given their owners \(EINVAL: .*\); they belong to 0:0/);
  assert.deepEqual(JSON.parse(run.stdout).warnings.map((w: { code: string }) => w.code), ['owners-not-set']);
  for (const name of ['config.json', 'shards/a.bin', 'shards/b.bin']) assert.equal(await fsp.readFile(path.join(target, 'models', name), 'utf8'), name);
  assert.equal((await fsp.stat(path.join(target, 'models', 'shards', 'a.bin'))).mode & 0o777, 0o640, 'modes are still set');
});

test('a file restored without the owner or group the point recorded loses its set-user-ID or set-group-ID bit, which would lend the rights of whoever restored it; directories keep theirs', { skip: asRoot && userNamespaces ? false : 'needs root, to give files other owners, and user namespaces' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.chmod(work, 0o755);
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  const made: [string, number, number, number][] = [
    ['root-tool', 0o4755, 0, 0],
    ['nobody-tool', 0o4750, NOBODY, NOBODY],
    ['group-tool', 0o2755, 0, 2001],
    ['plain', 0o644, 2001, 2001],
  ];
  for (const [name, mode, uid, gid] of made) {
    await fsp.writeFile(path.join(src, name), name);
    await fsp.chown(path.join(src, name), uid, gid);
    await fsp.chmod(path.join(src, name), mode);
  }
  for (const [name, mode] of [['shared', 0o2775], ['drop', 0o1777]] as const) {
    await fsp.mkdir(path.join(src, name));
    await fsp.chown(path.join(src, name), 2001, 2001);
    await fsp.chmod(path.join(src, name), mode);
  }
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  assert.equal((await lifeboat(['--repo', repo, 'backup', src])).code, 0);
  const modes = async (target: string) => {
    const out: Record<string, string> = {};
    for (const name of (await fsp.readdir(path.join(target, 'models'))).sort()) out[name] = ((await fsp.stat(path.join(target, 'models', name))).mode & 0o7777).toString(8);
    return out;
  };
  const recorded = { 'drop': '1777', 'group-tool': '2755', 'nobody-tool': '4750', 'plain': '644', 'root-tool': '4755', 'shared': '2775' };

  // As root, owners are restored, and every bit with them.
  const asRootTarget = path.join(work, 'as-root');
  const r = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', asRootTarget]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(await modes(asRootTarget), recorded);
  assert.doesNotMatch(r.stderr, /set-user-ID/);

  // As nobody, every file is nobody's: root's program was set-user-ID nobody, lending nobody's rights to all.
  const forNobody = path.join(work, 'nobody');
  await fsp.mkdir(forNobody);
  await fsp.chown(forNobody, NOBODY, NOBODY);
  const nobodyTarget = path.join(forNobody, 'out');
  const asNobody = await runChild(['--repo', repo, '--json', 'restore', 'latest', '--target', nobodyTarget], { user: { uid: NOBODY, gid: NOBODY } });
  assert.equal(asNobody.code, 0, asNobody.stderr);
  const expected = { ...recorded, 'group-tool': '755', 'root-tool': '755' };
  assert.deepEqual(await modes(nobodyTarget), expected, 'its own program keeps its bit; directories keep theirs');
  assert.equal(asNobody.stderr.match(/set-user-ID/g)?.length, 1, asNobody.stderr);
  assert.match(asNobody.stderr, /warning: .*: 2 file\(s\) restored without the set-user-ID or set-group-ID bit they had: they do not have here the owner or group the point recorded/);
  assert.ok(asNobody.json().warnings.some((w: { code: string }) => w.code === 'set-id-withheld'), asNobody.stdout);
  // A --delta finds them as they should be, and neither rewrites nor warns.
  const delta = await runChild(['--repo', repo, '--json', 'restore', 'latest', '--target', nobodyTarget, '--delta'], { user: { uid: NOBODY, gid: NOBODY } });
  assert.equal(delta.code, 0, delta.stderr);
  assert.equal(delta.json().rewritten, 0);
  assert.doesNotMatch(delta.stderr, /set-user-ID/);
  assert.deepEqual(await modes(nobodyTarget), expected);

  // Root where owners cannot be set: nobody's program, left root's, was set-user-ID root.
  const inNamespaceTarget = path.join(work, 'in-namespace');
  const run = spawnSync('unshare', ['--user', '--map-root-user', process.execPath, BIN, '--repo', repo, 'restore', 'latest', '--target', inNamespaceTarget], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(run.status, 0, run.stderr);
  assert.deepEqual(await modes(inNamespaceTarget), { ...recorded, 'group-tool': '755', 'nobody-tool': '750' });
  assert.match(run.stderr, /could not be given their owners/);
  assert.match(run.stderr, /2 file\(s\) restored without the set-user-ID or set-group-ID bit/);
});
