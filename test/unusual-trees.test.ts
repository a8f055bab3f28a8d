import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BIN, lifeboat } from './helpers/cli.js';
import { tempDir } from './helpers/tree.js';

/** A source directory `models` in a fresh work directory, with an initialised repository beside it. */
async function workWithRepo(t: { after(fn: () => Promise<void>): void }): Promise<{ work: string; src: string; repo: string }> {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  return { work, src, repo };
}

/** Sets a path's times to the given nanoseconds since 1970, which `touch` takes exactly (Node.js only to the microsecond). */
function touchNs(p: string, ns: bigint): void {
  const neg = ns < 0n;
  const abs = neg ? -ns : ns;
  const text = `${neg ? '-' : ''}${abs / 1_000_000_000n}.${String(abs % 1_000_000_000n).padStart(9, '0')}`;
  const r = spawnSync('touch', ['-h', '-d', `@${text}`, p]);
  assert.equal(r.status, 0, String(r.stderr));
}

test('files and directories dated before 1970 are backed up and restored with their times', async (t) => {
  const { work, src, repo } = await workWithRepo(t);
  await fsp.mkdir(path.join(src, 'old-dir'));
  await fsp.writeFile(path.join(src, 'old-dir', 'epoch.json'), '{}');
  await fsp.writeFile(path.join(src, 'vintage.bin'), 'from an old archive');
  // A fraction of a second before 1970, as files unpacked from old archives carry.
  touchNs(path.join(src, 'vintage.bin'), -315_619_199_876_543_211n);
  touchNs(path.join(src, 'old-dir', 'epoch.json'), 0n);
  touchNs(path.join(src, 'old-dir'), -2_147_472_000_000_000_000n);
  const backup = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'full']);
  assert.equal(backup.code, 0, backup.stderr);
  const target = path.join(work, 'restored');
  const restore = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target]);
  assert.equal(restore.code, 0, restore.stderr);
  for (const rel of ['vintage.bin', 'old-dir/epoch.json', 'old-dir']) {
    const before = fs.lstatSync(path.join(src, rel), { bigint: true }).mtimeNs;
    const after = fs.lstatSync(path.join(target, 'models', rel), { bigint: true }).mtimeNs;
    assert.equal(after / 1000n, before / 1000n, `${rel}: restored ${after}, backed up ${before}`);
  }
  const verify = await lifeboat(['--repo', repo, 'verify', '--read-data']);
  assert.equal(verify.code, 0, verify.stdout + verify.stderr);
});

test('restored times are the recorded microsecond, so a --delta over the restored tree sets none again and moves no change time', async (t) => {
  const { work, src, repo } = await workWithRepo(t);
  const base = 1_795_478_883_000_000_000n;
  // Fractions below the microsecond that a double carries up to the next one.
  const fractions = [740_183_978n, 999_999n, 123_456_999n, 500_000_500n, 1n, 999_999_999n];
  for (const [i, f] of fractions.entries()) {
    const p = path.join(src, `shard-${i}.bin`);
    await fsp.writeFile(p, `shard ${i}`);
    touchNs(p, base + BigInt(i) * 1_000_000_000n + f);
  }
  assert.equal((await lifeboat(['--repo', repo, 'backup', src, '--type', 'full'])).code, 0);
  const target = path.join(work, 'restored');
  const first = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target]);
  assert.equal(first.code, 0, first.stderr);
  const ctimes = new Map<string, bigint>();
  for (const [i] of fractions.entries()) {
    const name = `shard-${i}.bin`;
    const recorded = fs.lstatSync(path.join(src, name), { bigint: true }).mtimeNs;
    const st = fs.lstatSync(path.join(target, 'models', name), { bigint: true });
    assert.equal(st.mtimeNs / 1000n, recorded / 1000n, `${name}: restored ${st.mtimeNs}, recorded ${recorded}`);
    ctimes.set(name, st.ctimeNs);
  }
  // Past the clock tick that change times are taken from.
  await sleep(50);
  const delta = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target, '--delta']);
  assert.equal(delta.code, 0, delta.stderr);
  for (const [name, ctime] of ctimes) assert.equal(fs.lstatSync(path.join(target, 'models', name), { bigint: true }).ctimeNs, ctime, `${name}: its change time moved`);
});

test('a name that is not UTF-8 beside one holding U+FFFD itself: the first is left out with a warning, the second stored once, and the point restores', async (t) => {
  const { work, src, repo } = await workWithRepo(t);
  const dir = Buffer.from(src);
  // Read as text, both names are `weights-\uFFFD.bin`.
  await fsp.writeFile(Buffer.concat([dir, Buffer.from('/weights-'), Buffer.from([0xff]), Buffer.from('.bin')]), 'latin-1 name');
  await fsp.writeFile(path.join(src, 'weights-\uFFFD.bin'), 'replacement character');
  // A link to a name that is not UTF-8 would be restored leading somewhere else.
  await fsp.writeFile(Buffer.concat([dir, Buffer.from('/tokenizer-'), Buffer.from([0xfe])]), 'tokenizer');
  await fsp.symlink(Buffer.concat([Buffer.from('tokenizer-'), Buffer.from([0xfe])]), path.join(src, 'tokenizer.json'));
  await fsp.writeFile(path.join(src, 'config.json'), '{}');
  // UTF-8 characters, a control character and a byte that is not UTF-8 in one name.
  await fsp.writeFile(Buffer.concat([dir, Buffer.from('/café\n'), Buffer.from([0xe9])]), 'notes');
  const backup = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'full']);
  assert.equal(backup.code, 0, backup.stderr);
  const warnings = backup.json().warnings.map((w: { code: string; path: string }) => `${w.code} ${w.path}`).sort();
  // Each byte that is not UTF-8 is kept (as U+DC80 to U+DCFF), not lost to U+FFFD.
  assert.deepEqual(warnings, ['name-not-utf8 models/café\n\udce9', 'name-not-utf8 models/tokenizer-\udcfe', 'name-not-utf8 models/tokenizer.json', 'name-not-utf8 models/weights-\udcff.bin']);
  // Shown with those bytes as `\xNN`, in quotes as a name with escapes is, so that the file can be found.
  assert.match(backup.stderr, /warning: "models\/weights-\\xff\.bin": its name is not valid UTF-8/);
  assert.match(backup.stderr, /warning: "models\/tokenizer-\\xfe": its name is not valid UTF-8/);
  assert.match(backup.stderr, /warning: "models\/café\\n\\xe9": its name is not valid UTF-8/);
  const listed = await lifeboat(['--repo', repo, 'show', 'latest']);
  assert.match(listed.stdout, /warning: "models\/weights-\\xff\.bin": its name is not valid UTF-8/);
  const shown = await lifeboat(['--repo', repo, '--json', 'show', 'latest']);
  assert.deepEqual(shown.json().entries.map((e: { path: string }) => e.path), ['config.json', 'weights-\uFFFD.bin']);
  const target = path.join(work, 'restored');
  const restore = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target]);
  assert.equal(restore.code, 0, restore.stderr);
  assert.equal(await fsp.readFile(path.join(target, 'models', 'weights-\uFFFD.bin'), 'utf8'), 'replacement character');
  const strict = await lifeboat(['--repo', repo, 'backup', src, '--strict']);
  assert.equal(strict.code, 3, strict.stderr);
});

test('restore --delta --dry-run names what it would remove escaped, as other listings do; --json gives the names as they are', async (t) => {
  const { work, src, repo } = await workWithRepo(t);
  await fsp.writeFile(path.join(src, 'config.json'), '{}');
  assert.equal((await lifeboat(['--repo', repo, 'backup', src, '--type', 'full'])).code, 0);
  const target = path.join(work, 'restored\x1b[2J');
  assert.equal((await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target])).code, 0);
  // Names that would clear the screen, or fake a line of their own, when printed as they are.
  const odd = ['stale\x1b[2J.bin', 'old\nrestored 1 file', 'tab\there'];
  for (const name of odd) await fsp.writeFile(path.join(target, 'models', name), 'x');
  const dry = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target, '--delta', '--dry-run']);
  assert.equal(dry.code, 0, dry.stderr);
  assert.doesNotMatch(dry.stdout, /[\x1b\t]/);
  assert.equal(dry.stdout.trimEnd().split('\n').length, 1, dry.stdout);
  for (const shown of ['"models/stale\\u001b[2J.bin"', '"models/old\\nrestored 1 file"', '"models/tab\\there"', '"' + `${target.replace('\x1b', '\\u001b')}"`]) assert.ok(dry.stdout.includes(shown), `${shown} in ${dry.stdout}`);
  const json = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--delta', '--dry-run']);
  assert.equal(json.code, 0, json.stderr);
  assert.deepEqual([...json.json().removals].sort(), odd.map((n) => `models/${n}`).sort());
  assert.equal(json.json().target, target);
});

test('show prints set-user-ID, set-group-ID and sticky bits as ls -l does, and a restore gives them back', async (t) => {
  const { work, src, repo } = await workWithRepo(t);
  const modes: Array<[string, number, string]> = [
    ['suid-tool', 0o4755, '-rwsr-xr-x'],
    ['setgid-no-exec', 0o2740, '-rwxr-S---'],
    ['plain', 0o640, '-rw-r-----'],
  ];
  for (const [name, mode] of modes) {
    await fsp.writeFile(path.join(src, name), name);
    await fsp.chmod(path.join(src, name), mode);
  }
  await fsp.mkdir(path.join(src, 'spool'));
  await fsp.chmod(path.join(src, 'spool'), 0o1777);
  await fsp.mkdir(path.join(src, 'shared'));
  await fsp.chmod(path.join(src, 'shared'), 0o3770);
  assert.equal((await lifeboat(['--repo', repo, 'backup', src, '--type', 'full'])).code, 0);
  const shown = await lifeboat(['--repo', repo, 'show', 'latest']);
  assert.equal(shown.code, 0, shown.stderr);
  const expected = [...modes.map(([name, , text]) => [name, text]), ['spool', 'drwxrwxrwt'], ['shared', 'drwxrws--T']];
  for (const [name, text] of expected) assert.match(shown.stdout, new RegExp(`^${text!.replace(/-/g, '\\-')}\\s.*\\smodels/${name}$`, 'm'), shown.stdout);
  const target = path.join(work, 'restored');
  assert.equal((await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target])).code, 0);
  for (const [name, mode] of [...modes.map(([n, m]) => [n, m] as const), ['spool', 0o1777], ['shared', 0o3770]] as const) {
    assert.equal((await fsp.lstat(path.join(target, 'models', name))).mode & 0o7777, mode, name);
  }
});

test('a change of owner alone (a chown to the serving user) is shown by diff and counted by the backup, and show --json gives owners', { skip: process.geteuid?.() === 0 ? false : 'changing owners needs root' }, async (t) => {
  const { src, repo } = await workWithRepo(t);
  await fsp.mkdir(path.join(src, 'tok'));
  await fsp.writeFile(path.join(src, 'tok', 'tokenizer.json'), '{}');
  await fsp.writeFile(path.join(src, 'weights.bin'), 'weights');
  const full = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'full']);
  assert.equal(full.code, 0, full.stderr);
  await fsp.chown(path.join(src, 'weights.bin'), 998, 0);
  await fsp.chown(path.join(src, 'tok'), 0, 997);
  const incr = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'incr']);
  assert.equal(incr.code, 0, incr.stderr);
  assert.deepEqual([incr.json().added, incr.json().changed, incr.json().removed], [0, 1, 0]);
  const diff = await lifeboat(['--repo', repo, '--json', 'diff', full.json().id, incr.json().id]);
  assert.equal(diff.code, 0, diff.stderr);
  assert.deepEqual(diff.json().changed, [
    { path: 'models/tok', what: ['owner'] },
    { path: 'models/weights.bin', what: ['owner'] },
  ]);
  const text = await lifeboat(['--repo', repo, 'diff', full.json().id, incr.json().id]);
  assert.match(text.stdout, /^M models\/weights\.bin {2}\(owner\)$/m);
  const shown = await lifeboat(['--repo', repo, '--json', 'show', 'latest']);
  const owners = Object.fromEntries(shown.json().entries.map((e: { path: string; uid: number; gid: number }) => [e.path, [e.uid, e.gid]]));
  assert.deepEqual(owners, { tok: [0, 997], 'tok/tokenizer.json': [0, 0], 'weights.bin': [998, 0] });
});

test('a directory whose name cannot name a source (my models, .cache) is refused with the --source that backs it up, which works', async (t) => {
  const { work, repo } = await workWithRepo(t);
  for (const [dir, name] of [['my models', 'my_models'], ['.cache', 'cache'], ["it's", 'it_s']] as const) {
    const abs = path.join(work, dir);
    await fsp.mkdir(abs);
    await fsp.writeFile(path.join(abs, 'weights.bin'), 'weights');
    const refused = await lifeboat(['--repo', repo, 'backup', abs]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /its name cannot name a source \(use letters, digits, '\.', '_' or '-', starting with a letter, a digit or '_', at most 64\)/);
    const hint = /name it: --source (\S+)=(.+)$/m.exec(refused.stderr);
    assert.ok(hint, refused.stderr);
    assert.equal(hint[1], name);
    // The path as a shell reads it back.
    const word = spawnSync('bash', ['-c', `printf %s ${hint[2]}`], { encoding: 'utf8' });
    assert.equal(word.stdout, abs);
    const taken = await lifeboat(['--repo', repo, 'backup', '--source', `${name}=${abs}`, '--type', 'full']);
    assert.equal(taken.code, 0, taken.stderr);
  }
  const named = await lifeboat(['--repo', repo, 'backup', '--source', `-x=${work}`]);
  assert.equal(named.code, 2);
  assert.match(named.stderr, /source name "-x" is invalid: use letters, digits, '\.', '_' or '-', starting with a letter, a digit or '_' \(at most 64\)/);
});

test('restore --include with a slash after a directory (as a shell completes it) restores what is in it; after a file it matches nothing', async (t) => {
  const { work, src, repo } = await workWithRepo(t);
  await fsp.mkdir(path.join(src, 'tokenizer', 'extra'), { recursive: true });
  await fsp.writeFile(path.join(src, 'tokenizer', 'vocab.json'), '{}');
  await fsp.writeFile(path.join(src, 'tokenizer', 'extra', 'merges.txt'), 'a b');
  await fsp.writeFile(path.join(src, 'weights.bin'), 'weights');
  assert.equal((await lifeboat(['--repo', repo, 'backup', src, '--type', 'full'])).code, 0);
  for (const pattern of ['models/tokenizer/', 'models/tok*/']) {
    const target = path.join(work, `restored-${pattern.length}`);
    const r = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', target, '--include', pattern]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.json().files, 2, pattern);
    assert.equal(await fsp.readFile(path.join(target, 'models', 'tokenizer', 'extra', 'merges.txt'), 'utf8'), 'a b');
    assert.equal(fs.existsSync(path.join(target, 'models', 'weights.bin')), false);
  }
  const whole = await lifeboat(['--repo', repo, '--json', 'restore', 'latest', '--target', path.join(work, 'whole'), '--include', 'models/']);
  assert.equal(whole.code, 0, whole.stderr);
  assert.equal(whole.json().files, 3);
  const file = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', path.join(work, 'file'), '--include', 'models/weights.bin/']);
  assert.equal(file.code, 2, file.stderr);
  assert.match(file.stderr, /--include "models\/weights\.bin\/" matches nothing/);
});

test('a name that starts or ends with a space is shown in quotes by show and diff, so the space is seen; --json has it as it is', async (t) => {
  const { src, repo } = await workWithRepo(t);
  await fsp.writeFile(path.join(src, 'config.json'), '{}');
  const full = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'full']);
  assert.equal(full.code, 0, full.stderr);
  await fsp.mkdir(path.join(src, 'v2 '));
  await fsp.writeFile(path.join(src, 'v2 ', 'weights.bin'), 'weights');
  await fsp.writeFile(path.join(src, ' leading.json'), '{}');
  const incr = await lifeboat(['--repo', repo, '--json', 'backup', src]);
  assert.equal(incr.code, 0, incr.stderr);
  const shown = await lifeboat(['--repo', repo, 'show', 'latest']);
  for (const name of ['"models/v2 "', '"models/v2 /weights.bin"', '"models/ leading.json"']) assert.ok(shown.stdout.includes(`Z  ${name}`), `${name} in ${shown.stdout}`);
  assert.match(shown.stdout, /Z  models\/config\.json  \(in /);
  const diff = await lifeboat(['--repo', repo, 'diff', full.json().id, incr.json().id]);
  assert.deepEqual(diff.stdout.trimEnd().split('\n').slice(1), ['+ "models/ leading.json"', '+ "models/v2 "', '+ "models/v2 /weights.bin"']);
  const json = await lifeboat(['--repo', repo, '--json', 'diff', full.json().id, incr.json().id]);
  assert.deepEqual(json.json().added, ['models/ leading.json', 'models/v2 ', 'models/v2 /weights.bin']);
});

test('a source path that is not UTF-8 is refused saying so (exit 2), not as a path that does not exist', async (t) => {
  const { work, repo } = await workWithRepo(t);
  const raw = Buffer.concat([Buffer.from(work), Buffer.from('/models-'), Buffer.from([0xff])]);
  await fsp.mkdir(raw);
  await fsp.writeFile(Buffer.concat([raw, Buffer.from('/weights.bin')]), 'weights');
  // How a shell passes the name: its bytes as they are, which Node.js reads with U+FFFD in their place.
  const asGiven = `${work}/models-\uFFFD`;
  for (const args of [[asGiven], ['--source', `models=${asGiven}`]]) {
    const r = await lifeboat(['--repo', repo, 'backup', ...args]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /cannot be read: a path that is not valid UTF-8 reaches lifeboat with U\+FFFD in place of those bytes, and names nothing\n {2}rename the directory/);
    assert.doesNotMatch(r.stderr, /does not exist|--source models_/);
  }
});

test('a path to write to that is not UTF-8 (restore --target, --work-dir, --junit, --metrics-file, init) is refused (exit 2), not made under another name', async (t) => {
  const { work, src, repo } = await workWithRepo(t);
  await fsp.writeFile(path.join(src, 'weights.bin'), 'weights');
  assert.equal((await lifeboat(['--repo', repo, 'backup', src, '--type', 'full'])).code, 0);
  const before = fs.readdirSync(work, { encoding: 'buffer' }).map(String).sort();
  // As a shell passes it: the byte 0xff as it is, which Node.js reads as U+FFFD.
  const r = spawnSync('sh', ['-c', `exec "$0" "$1" --repo "$2" restore latest --target "$(printf 'out\\377')"`, process.execPath, BIN, repo], { cwd: work, encoding: 'utf8' });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /--target out\uFFFD: the path is not valid UTF-8 .*\n {2}use a UTF-8 name\n$/);
  const asGiven = path.join(work, 'out-\uFFFD');
  for (const args of [
    ['restore', 'latest', '--target', asGiven],
    ['backup', src, '--work-dir', asGiven],
    ['drill', '--junit', path.join(asGiven, 'drill.xml')],
    ['verify', '--metrics-file', path.join(asGiven, 'lifeboat.prom')],
  ]) {
    const refused = await lifeboat(['--repo', repo, ...args]);
    assert.equal(refused.code, 2, `${args.join(' ')}: ${refused.stderr}`);
    assert.match(refused.stderr, /: the path is not valid UTF-8 /, args.join(' '));
  }
  const init = await lifeboat(['--repo', path.join(work, 'repo-\uFFFD'), 'init']);
  assert.equal(init.code, 2, init.stderr);
  assert.match(init.stderr, /^lifeboat: the repository .*repo-\uFFFD: the path is not valid UTF-8 /);
  assert.deepEqual(fs.readdirSync(work, { encoding: 'buffer' }).map(String).sort(), before, 'nothing is made');
});
