/**
 * The keys of an encrypted repository under crashes, races and damage: a key passwd killed
 * between storing its new key and removing the old one, an init killed after losing a race to
 * create the same repository, key files truncated, flipped, emptied, huge or copied from another
 * repository, and a config of another repository. Afterwards a password opens the repository,
 * key list says what is left over and how to tidy it, and the next key command succeeds.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { lifeboat, runChild, spawnLifeboat, type CliRun } from './helpers/cli.js';
import { startFaultProxy, type FaultProxy } from './helpers/fault-proxy.js';
import { waitFor } from './helpers/processes.js';
import { repoFiles } from './helpers/repo.js';
import { s3ServerForSuite } from './helpers/s3server.js';
import { prng, seedFromEnv, tempDir } from './helpers/tree.js';

let work: string;
let seed: number;

before(async () => {
  work = await tempDir('lifeboat-keys-crash-');
  seed = seedFromEnv();
  console.log(`# keys-crash: seed ${seed} (replay with LIFEBOAT_TEST_SEED=${seed})`);
});

after(async () => {
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

const pw = (password: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({ LIFEBOAT_PASSWORD: password, ...extra });

async function ok(run: Promise<CliRun>, what: string): Promise<CliRun> {
  const r = await run;
  assert.equal(r.code, 0, `${what} exited ${r.code}: ${r.stderr}`);
  return r;
}

/** The warnings of a command run with --log-format json, as code and message. */
function warnings(r: CliRun): { code: string; message: string }[] {
  return r.stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l))
    .filter((n) => n.level === 'warning')
    .map(({ code, msg }) => ({ code, message: msg }));
}

async function digest(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const f of await repoFiles(dir)) out.set(f, createHash('sha256').update(await fsp.readFile(path.join(dir, f))).digest('hex'));
  return out;
}

describe('damaged key files and config on local disk', () => {
  it('a key file truncated, flipped, emptied, huge or of another repository opens nothing, is named, and the other key still opens; nothing is written', async () => {
    const init = (repo: string, password: string) => ok(lifeboat(['--repo', repo, 'init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10'], { env: pw(password) }), 'init');
    const other = path.join(work, 'other-repo');
    await init(other, 'other password');
    const [otherKey] = await fsp.readdir(path.join(other, 'keys'));
    const damages: [string, (file: string) => Promise<void>][] = [
      ['truncated', async (f) => fsp.truncate(f, 100)],
      ['a byte flipped', async (f) => {
        const b = await fsp.readFile(f);
        b[b.length >> 1] ^= 0x04;
        await fsp.writeFile(f, b);
      }],
      ['empty', async (f) => fsp.writeFile(f, '')],
      ['huge', async (f) => fsp.writeFile(f, Buffer.alloc(8 * 1024 * 1024, 0x20))],
      ['of another repository', async (f) => {
        await fsp.rm(f);
        await fsp.copyFile(path.join(other, 'keys', otherKey!), path.join(path.dirname(f), otherKey!));
      }],
    ];
    for (const [i, [what, damage]] of damages.entries()) {
      const repo = path.join(work, `damaged-${i}`);
      await init(repo, 'first password');
      const [name] = await fsp.readdir(path.join(repo, 'keys'));
      const second = (await ok(lifeboat(['--repo', repo, '--json', 'key', 'add'], { env: pw('first password', { LIFEBOAT_NEW_PASSWORD: 'second password' }) }), 'key add')).json().id as string;
      await damage(path.join(repo, 'keys', `${second}.json`));
      const bad = what.startsWith('of another') ? otherKey! : `${second}.json`;
      const before = await digest(repo);

      const list = await lifeboat(['--repo', repo, '--log-format', 'json', '--json', 'key', 'list'], { env: pw('first password') });
      assert.equal(list.code, 0, `${what}: ${list.stderr}`);
      assert.deepEqual(list.json().map((k: { id: string }) => `${k.id}.json`), [name], what);
      const said = warnings(list);
      assert.equal(said.length, 1, `${what}: ${list.stderr}`);
      assert.ok(said[0]!.message.startsWith(`keys/${bad} `), `${what}: ${said[0]!.message}`);
      assert.match(said[0]!.message, new RegExp(`\`lifeboat key remove ${bad.slice(0, 16)}\` removes it$`), what);

      // Its password opens nothing (exit 2, naming the file); the genuine key's does.
      const locked = await lifeboat(['--repo', repo, 'list'], { env: pw(what.startsWith('of another') ? 'other password' : 'second password') });
      assert.equal(locked.code, 2, `${what}: ${locked.stderr}`);
      assert.match(locked.stderr, /^lifeboat: wrong password/, what);
      assert.ok(locked.stderr.includes(`keys/${bad}`), `${what}: ${locked.stderr}`);
      await ok(lifeboat(['--repo', repo, 'list'], { env: pw('first password') }), `${what}: list with the genuine key`);
      const verified = await ok(lifeboat(['--repo', repo, '--json', 'verify'], { env: pw('first password') }), `${what}: verify`);
      assert.deepEqual(verified.json().warnings.map((w: { path: string }) => w.path), [`keys/${bad}`], what);
      assert.deepEqual(await digest(repo), before, `${what}: nothing was written`);

      // Removed by its id, it leaves the genuine key alone and key list clean.
      await ok(lifeboat(['--repo', repo, 'key', 'remove', bad.slice(0, 16)], { env: pw('first password') }), `${what}: key remove`);
      const clean = await ok(lifeboat(['--repo', repo, '--json', 'key', 'list'], { env: pw('first password') }), `${what}: key list`);
      assert.equal(clean.stderr, '', what);
      assert.equal(clean.json().length, 1, what);
    }
  });

  it('key remove of the last two keys at once, each with the password of the other\'s key, leaves one key, which opens', { timeout: 60_000 }, async () => {
    for (let round = 0; round < 4; round++) {
      const repo = path.join(work, `remove-both-${round}`);
      await ok(lifeboat(['--repo', repo, 'init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10'], { env: pw('first') }), 'init');
      const [first] = (await fsp.readdir(path.join(repo, 'keys'))).map((n) => n.slice(0, 16));
      const second = (await ok(lifeboat(['--repo', repo, '--json', 'key', 'add'], { env: pw('first', { LIFEBOAT_NEW_PASSWORD: 'second' }) }), 'key add')).json().id as string;
      const [a, b] = await Promise.all([
        runChild(['--repo', repo, 'key', 'remove', second], { env: pw('first') }),
        runChild(['--repo', repo, 'key', 'remove', first!], { env: pw('second') }),
      ]);
      const left = (await fsp.readdir(path.join(repo, 'keys'))).map((n) => n.slice(0, 16));
      console.log(`# round ${round}: exits ${a.code} and ${b.code}, keys left ${left.join(' ')}`);
      assert.equal(left.length, 1, `${a.stderr}${b.stderr}`);
      assert.equal([a, b].filter((r) => r.code === 0).length, 1, `${a.stderr}${b.stderr}`);
      // The one that did not remove was refused: the last key (exit 2), or the lock the other held (exit 4).
      assert.ok([a, b].every((r) => [0, 2, 4].includes(r.code)), `${a.stderr}${b.stderr}`);
      await ok(lifeboat(['--repo', repo, 'list'], { env: pw(left[0] === first ? 'first' : 'second') }), 'list with the key left');
    }
  });

  it("a config.json of another repository is said to be one, not a wrong password (exit 3), and the repository's own opens again", async () => {
    const a = path.join(work, 'config-a');
    const b = path.join(work, 'config-b');
    for (const repo of [a, b]) await ok(lifeboat(['--repo', repo, 'init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10'], { env: pw('same password') }), 'init');
    const own = await fsp.readFile(path.join(a, 'config.json'));
    await fsp.copyFile(path.join(b, 'config.json'), path.join(a, 'config.json'));
    const before = await digest(a);
    for (const args of [['list'], ['key', 'list'], ['key', 'add']]) {
      const r = await lifeboat(['--repo', a, ...args], { env: pw('same password', { LIFEBOAT_NEW_PASSWORD: 'another' }) });
      assert.equal(r.code, 3, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /^lifeboat: the encrypted repository at \S+ has no key of its own under keys\/: keys\/[0-9a-f]{16}\.json is a key of another repository, not of [0-9a-f]{32} that config\.json names\n {2}if config\.json was replaced by another repository's, put this repository's back from a copy/);
    }
    assert.deepEqual(await digest(a), before, 'nothing was written');
    await fsp.writeFile(path.join(a, 'config.json'), own);
    await ok(lifeboat(['--repo', a, 'key', 'list'], { env: pw('same password') }), 'key list with its own config');
  });
});

describe('key commands and init killed or racing on the S3 test server', () => {
  const s3 = s3ServerForSuite();

  /** A proxy in front of the server that holds the answers `hold` picks for `delayMs`. */
  async function holdingProxy(delayMs: number): Promise<FaultProxy> {
    return startFaultProxy({ upstream: s3.server.endpoint, seed, delayMs });
  }

  const at = (prefix: string, endpoint = s3.server.endpoint) => ['--repo', `s3://${s3.bucket}/${prefix}`, '--s3-endpoint', endpoint, '--s3-path-style'];
  const run = (prefix: string, args: string[], password: string, extra: NodeJS.ProcessEnv = {}) => lifeboat([...at(prefix), ...args], { env: { ...s3.server.env, ...pw(password, extra) } });
  const keyIds = async (prefix: string, password: string): Promise<string[]> =>
    (await ok(run(prefix, ['--json', 'key', 'list'], password), 'key list')).json().map((k: { id: string }) => k.id);

  it('a key passwd killed between storing the new key and removing the old leaves both passwords working, which key list and verify say, and key remove tidies', { timeout: 60_000 }, async () => {
    const prefix = 'passwd-killed';
    await ok(run(prefix, ['init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10'], 'old password'), 'init');
    const [old] = await keyIds(prefix, 'old password');
    const proxy = await holdingProxy(5000);
    try {
      // The new key's PutObject is done by the server, its answer held: the old key is not removed yet.
      proxy.inject('delay', { method: 'PUT', path: /\/keys\/[0-9a-f]{16}\.json/ });
      const child = spawnLifeboat([...at(prefix, proxy.endpoint), 'key', 'passwd'], { env: { ...s3.server.env, ...pw('old password', { LIFEBOAT_NEW_PASSWORD: 'new password' }) } });
      child.stdout!.resume();
      child.stderr!.resume();
      const exited = new Promise((resolve) => child.on('exit', resolve));
      const stored = await waitFor(async () => (await keyIds(prefix, 'old password')).length === 2, 30_000);
      child.kill('SIGKILL');
      await exited;
      assert.ok(stored, 'the new key was stored');
    } finally {
      await proxy.stop();
    }
    const [added] = (await keyIds(prefix, 'new password')).filter((id) => id !== old);
    const expected = `a key passwd that did not finish was replacing key ${old} with key ${added}: both passwords open the repository until \`lifeboat key remove ${old}\`, run with the new password, removes it`;
    for (const password of ['old password', 'new password']) {
      const list = await ok(run(prefix, ['--log-format', 'json', 'key', 'list'], password), `key list with the ${password}`);
      assert.deepEqual(warnings(list).filter((w) => w.code !== 'stale-lock'), [{ code: 'key-passwd-unfinished', message: expected }], list.stderr);
    }
    const verified = await ok(run(prefix, ['--json', 'verify'], 'new password'), 'verify');
    assert.deepEqual(verified.json().warnings.filter((w: { code: string }) => w.code.startsWith('key-')), [{ code: 'key-passwd-unfinished', path: `keys/${old}.json`, message: expected }]);
    // As said: removed with the new password, the old one no longer opens, and key list is clean.
    await ok(run(prefix, ['key', 'remove', old!], 'new password'), 'key remove of the old key');
    assert.equal((await run(prefix, ['list'], 'old password')).code, 2);
    const clean = await ok(run(prefix, ['key', 'list'], 'new password'), 'key list');
    assert.equal(clean.stderr, '');
    // And the next key passwd finishes.
    await ok(run(prefix, ['key', 'passwd'], 'new password', { LIFEBOAT_NEW_PASSWORD: 'third password' }), 'key passwd');
    assert.equal((await keyIds(prefix, 'third password')).length, 1);
  });

  it('key add, key passwd and key remove killed at random moments: a password always opens, key list says what is left, the next key command succeeds', { timeout: 120_000 }, async () => {
    const prefix = 'killed-sweep';
    const rand = prng(seed + 17);
    await ok(run(prefix, ['init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10'], 'p0'), 'init');
    // Every answer held a little, so that a command lasts long enough to be killed anywhere in it.
    const proxy = await startFaultProxy({ upstream: s3.server.endpoint, seed, rates: { delay: 1 }, delayMs: 60 });
    let current = 'p0';
    try {
      for (let round = 1; round <= 6; round++) {
        const command = (['add', 'passwd', 'remove'] as const)[round % 3]!;
        const fresh = `p${round}`;
        let args = ['key', command];
        if (command === 'remove') {
          // Something to remove: a key added first, removed with the current password.
          const spare = (await ok(run(prefix, ['--json', 'key', 'add'], current, { LIFEBOAT_NEW_PASSWORD: `spare${round}` }), 'key add')).json().id as string;
          args = ['key', 'remove', spare];
        }
        const child = spawnLifeboat([...at(prefix, proxy.endpoint), ...args], { env: { ...s3.server.env, ...pw(current, { LIFEBOAT_NEW_PASSWORD: fresh }) } });
        child.stdout!.resume();
        child.stderr!.resume();
        const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
        const killAfter = 200 + Math.floor(rand() * 1500);
        const killer = setTimeout(() => child.kill('SIGKILL'), killAfter);
        const code = await exited;
        clearTimeout(killer);
        const opens = async (password: string) => (await run(prefix, ['list'], password)).code === 0;
        const old = await opens(current);
        const now = await opens(fresh);
        console.log(`# round ${round}: key ${command} killed after ${killAfter} ms (exit ${code}); old password opens: ${old}, new: ${now}`);
        assert.ok(old || now, `round ${round}: neither password opens`);
        if (command !== 'passwd') assert.ok(old, `round ${round}: key ${command} took the current password away`);
        const password = now && command === 'passwd' ? fresh : current;
        const list = await ok(run(prefix, ['--log-format', 'json', '--json', 'key', 'list'], password), `round ${round}: key list`);
        const said = warnings(list).filter((w) => w.code !== 'stale-lock');
        if (command === 'passwd' && old && now) assert.deepEqual(said.map((w) => w.code), ['key-passwd-unfinished'], list.stderr);
        else assert.deepEqual(said, [], list.stderr);
        // Tidy as key list says, then the next command starts from one key.
        for (const { id, current: inUse } of list.json() as { id: string; current: boolean }[]) {
          if (!inUse) await ok(run(prefix, ['key', 'remove', id], password), `round ${round}: key remove ${id}`);
        }
        current = password;
      }
      await ok(run(prefix, ['key', 'passwd'], current, { LIFEBOAT_NEW_PASSWORD: 'final' }), 'the next key passwd');
      assert.equal((await keyIds(prefix, 'final')).length, 1);
    } finally {
      await proxy.stop();
    }
  });

  it('an init killed after losing a race to create the same repository leaves a key that key list names as another repository\'s, and key remove removes', { timeout: 60_000 }, async () => {
    const prefix = 'init-race';
    const proxy = await holdingProxy(8000);
    let loser;
    try {
      // The loser's listing finds the prefix empty, and its answer is held while the winner creates the repository;
      // then it stores its key, and is killed while it looks for a config to put its own beside.
      proxy.inject('delay', { method: 'GET', path: /list-type=2/ });
      proxy.inject('delay', { method: 'HEAD', path: /\/config\.json/ });
      const child = spawnLifeboat([...at(prefix, proxy.endpoint), 'init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10'], { env: { ...s3.server.env, ...pw('loser password') } });
      child.stdout!.resume();
      child.stderr!.resume();
      const exited = new Promise((resolve) => child.on('exit', resolve));
      assert.ok(await waitFor(async () => proxy.requests.some((r) => r.fault === 'delay' && r.method === 'GET'), 30_000), 'the loser listed');
      await ok(run(prefix, ['init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10'], 'winner password'), 'the winning init');
      assert.ok(await waitFor(async () => proxy.requests.some((r) => r.fault === 'delay' && r.method === 'HEAD'), 30_000), 'the loser looked for the config');
      child.kill('SIGKILL');
      await exited;
      loser = proxy.requests.find((r) => r.method === 'PUT' && /\/keys\//.test(r.path));
    } finally {
      await proxy.stop();
    }
    assert.ok(loser, 'the loser stored a key');
    const list = await ok(run(prefix, ['--log-format', 'json', '--json', 'key', 'list'], 'winner password'), 'key list');
    assert.equal(list.json().length, 1);
    const said = warnings(list);
    assert.deepEqual(said.map((w) => w.code), ['key-foreign'], list.stderr);
    const id = /^keys\/([0-9a-f]{16})\.json is a key of another repository \([0-9a-f]{32}\) and cannot open this one/.exec(said[0]!.message)?.[1];
    assert.ok(id && loser.path.includes(`/keys/${id}.json`), said[0]!.message);
    const refused = await run(prefix, ['list'], 'loser password');
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, new RegExp(`1 key file\\(s\\) of another repository were not tried \\(keys/${id}\\.json\\)`));
    // The winner's key is the last of the repository's own: the other's does not count for it.
    assert.equal((await run(prefix, ['key', 'remove', list.json()[0].id], 'winner password')).code, 2);
    await ok(run(prefix, ['key', 'remove', id!], 'winner password'), 'key remove of the other repository\'s key');
    const clean = await ok(run(prefix, ['key', 'list'], 'winner password'), 'key list');
    assert.equal(clean.stderr, '');
    await ok(runChild([...at(prefix), 'verify'], { env: { ...s3.server.env, ...pw('winner password') } }), 'verify');
  });

  it('an init that loses a race to create the same repository says another init made it, and takes its key back', { timeout: 60_000 }, async () => {
    const prefix = 'init-race-lost';
    const proxy = await holdingProxy(3000);
    let lost: CliRun;
    try {
      // The loser's listing finds the prefix empty, and its answer is held while the winner creates the repository.
      proxy.inject('delay', { method: 'GET', path: /list-type=2/ });
      const loser = runChild([...at(prefix, proxy.endpoint), 'init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10'], { env: { ...s3.server.env, ...pw('loser password') } });
      assert.ok(await waitFor(async () => proxy.requests.some((r) => r.fault === 'delay'), 30_000), 'the loser listed');
      await ok(run(prefix, ['init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10'], 'winner password'), 'the winning init');
      lost = await loser;
    } finally {
      await proxy.stop();
    }
    assert.equal(lost.code, 2, lost.stderr);
    assert.equal(
      lost.stderr,
      `lifeboat: another init created a repository at s3://${s3.bucket}/${prefix} while this one ran; refusing to create another there\n  \`lifeboat list\` shows what it holds (encrypted, it opens with that init's password); to start over, empty s3://${s3.bucket}/${prefix} first\n`,
    );
    const list = await ok(run(prefix, ['--json', 'key', 'list'], 'winner password'), 'key list');
    assert.equal(list.stderr, '');
    assert.equal(list.json().length, 1, 'the loser took its key back');
  });
});
