/**
 * Encryption at rest: the segment format and the storage wrapper on their own,
 * round trips of every backup type through encrypted repositories on local disk
 * and on the S3 test server, tampering (flipped bytes, truncation, reordered,
 * dropped and spliced segments, swapped objects) found by verify and restore,
 * wrong passwords refused before anything is written, no password or plaintext
 * anywhere in outputs or stored objects, and the key commands.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import {
  HEADER_SIZE,
  SEGMENT_SIZE,
  TAG_SIZE,
  ciphertextSize,
  decryptBuffer,
  encryptBuffer,
  plaintextSize,
} from '../src/crypto/segments.js';
import { EncryptedStorage } from '../src/storage/encrypted.js';
import { LocalStorage } from '../src/storage/local.js';
import { encodeDocument } from '../src/format/document.js';
import { BIN, lifeboat, spawnLifeboat, type CliRun } from './helpers/cli.js';
import { waitFor } from './helpers/processes.js';
import { readAll } from './helpers/data.js';
import { exists, repoFiles } from './helpers/repo.js';
import { s3ServerForSuite } from './helpers/s3server.js';
import { compareSnapshots, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile } from './helpers/tree.js';

const PASSWORD = 'correct horse battery staple 7f3a';
const MARKER = 'PLAINTEXT-MARKER-the-model-weights-are-secret-91c2';
const SEALED = SEGMENT_SIZE + TAG_SIZE;

let work: string;
let seed: number;

before(async () => {
  work = await tempDir('lifeboat-enc-');
  seed = seedFromEnv();
  console.log(`# encryption: seed ${seed} (replay with LIFEBOAT_TEST_SEED=${seed})`);
});

after(async () => {
  if (work) await fsp.rm(work, { recursive: true, force: true });
});

const env = (password = PASSWORD): NodeJS.ProcessEnv => ({ LIFEBOAT_PASSWORD: password });

async function ok(run: Promise<CliRun>, what: string): Promise<CliRun> {
  const r = await run;
  assert.equal(r.code, 0, `${what} exited ${r.code}: ${r.stderr}`);
  return r;
}

/** A source tree: a text file with a known marker, random weights over several segments, a tokenizer. */
async function makeSource(dir: string, rand: () => number): Promise<void> {
  await fsp.mkdir(path.join(dir, 'tok'), { recursive: true });
  await fsp.writeFile(path.join(dir, 'notes.txt'), `${MARKER}\n`.repeat(50));
  await fsp.writeFile(path.join(dir, 'tok', 'tokenizer.json'), JSON.stringify({ model: { vocab: { a: 0, b: 1 } } }));
  await writeRandomFile(path.join(dir, 'weights.bin'), 5 * SEGMENT_SIZE + 1234, rand);
}

async function initEncrypted(repo: string, extra: string[] = []): Promise<void> {
  await ok(lifeboat(['--repo', repo, 'init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10', ...extra], { env: env() }), 'init');
}

/** An encrypted repository `name` under the work directory with one backup of a one-file source `<name>-src`. */
async function encryptedWithBackup(name: string): Promise<{ repo: string; src: string }> {
  const repo = path.join(work, name);
  await initEncrypted(repo);
  const src = path.join(work, `${name}-src`);
  await fsp.mkdir(src);
  await fsp.writeFile(path.join(src, 'a.txt'), 'a');
  await ok(lifeboat(['--repo', repo, 'backup', src], { env: env() }), 'backup');
  return { repo, src };
}

async function digest(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const f of await repoFiles(dir)) out.set(f, createHash('sha256').update(await fsp.readFile(path.join(dir, f))).digest('hex'));
  return out;
}

describe('the segment format', () => {
  const key = randomBytes(32);

  it('maps sizes both ways and round-trips every boundary size, streamed and in memory', async () => {
    // Sizes around a segment and around a batch of segments handed to the encryption thread (16).
    for (const size of [0, 1, 15, 16, SEGMENT_SIZE - 1, SEGMENT_SIZE, SEGMENT_SIZE + 1, 2 * SEGMENT_SIZE, 3 * SEGMENT_SIZE + 17, 16 * SEGMENT_SIZE, 16 * SEGMENT_SIZE + 1, 32 * SEGMENT_SIZE - 1]) {
      const plain = randomBytes(size);
      const sealed = encryptBuffer(key, 'data/x', plain);
      assert.equal(sealed.length, ciphertextSize(size), `ciphertext size of ${size}`);
      assert.equal(plaintextSize(sealed.length), size, `plaintext size of ${sealed.length}`);
      assert.deepEqual(decryptBuffer(key, 'data/x', sealed), plain);
      const dir = await fsp.mkdtemp(path.join(work, 'streamed-'));
      const inner = new LocalStorage(dir);
      const info = await new EncryptedStorage(inner, Buffer.from(key)).put('data/x', Readable.from(chunks(plain, 1000)));
      assert.equal(info.size, size);
      const streamed = await inner.getDocument('data/x');
      assert.equal(streamed.length, sealed.length);
      const encrypted = new EncryptedStorage(inner, Buffer.from(key));
      assert.deepEqual(await readAll(await encrypted.get('data/x')), plain, `streamed read of ${size}`);
      const reader = await encrypted.openReader('data/x');
      const parts: Buffer[] = [];
      const into = Buffer.alloc(7777);
      for (let n = await reader.read(into); n > 0; n = await reader.read(into)) parts.push(Buffer.from(into.subarray(0, n)));
      await reader.close();
      assert.deepEqual(Buffer.concat(parts), plain, `read of ${size} through 7777-byte buffers`);
    }
    // Sizes no plaintext encrypts to.
    for (const bad of [0, HEADER_SIZE, HEADER_SIZE + TAG_SIZE - 1, HEADER_SIZE + SEALED + 1, HEADER_SIZE + SEALED + TAG_SIZE]) {
      assert.equal(plaintextSize(bad), undefined, `size ${bad}`);
    }
  });

  it('a wrong name (a renamed or spliced object), a wrong key, a flipped bit each fail to authenticate', () => {
    const sealed = encryptBuffer(key, 'points/a.json', randomBytes(3 * SEGMENT_SIZE));
    assert.throws(() => decryptBuffer(key, 'points/b.json', sealed), /does not authenticate/);
    assert.throws(() => decryptBuffer(randomBytes(32), 'points/a.json', sealed), /does not authenticate/);
    for (const at of [0, 5, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + SEALED + 3, sealed.length - 1]) {
      const copy = Buffer.from(sealed);
      copy[at]! ^= 0x10;
      assert.throws(() => decryptBuffer(key, 'points/a.json', copy), /damaged|tampered|not an encrypted|unknown encryption/, `bit flipped at ${at}`);
    }
  });

  it('ranged reads through the wrapper return exactly the requested plaintext bytes', async () => {
    const dir = path.join(work, 'ranged');
    const storage = new EncryptedStorage(new LocalStorage(dir), Buffer.from(key));
    const plain = randomBytes(4 * SEGMENT_SIZE + 999);
    const info = await storage.put('data/p/v000001.tar', Readable.from(chunks(plain, 65_000)));
    assert.equal(info.size, plain.length);
    assert.equal((await storage.head('data/p/v000001.tar'))?.size, plain.length);
    const listed = [];
    for await (const o of storage.list('data/')) listed.push(o);
    assert.deepEqual(listed, [{ key: 'data/p/v000001.tar', size: plain.length }]);
    const rand = prng(seed);
    const cases: [number, number | undefined][] = [
      [0, undefined],
      [1, undefined],
      [SEGMENT_SIZE, undefined],
      [plain.length - 1, undefined],
      [plain.length, undefined],
      [plain.length + 10, undefined],
      [0, 1],
      [SEGMENT_SIZE - 1, 2],
      [2 * SEGMENT_SIZE, SEGMENT_SIZE],
      [3, plain.length * 2],
    ];
    for (let i = 0; i < 30; i++) cases.push([Math.floor(rand() * plain.length), Math.floor(rand() * 3 * SEGMENT_SIZE) + 1]);
    for (const [offset, length] of cases) {
      const got = await readAll(await storage.get('data/p/v000001.tar', { offset, length }));
      const end = length === undefined ? plain.length : Math.min(plain.length, offset + length);
      assert.deepEqual(got, plain.subarray(Math.min(offset, plain.length), end), `offset ${offset} length ${length}`);
    }
  });

  it('many objects written and read at once, readers closed early (twice), each read gives its own bytes', async () => {
    // Batch buffers go back to a pool shared by every stream: one given back while still in use would
    // hand two streams the same memory.
    const storage = new EncryptedStorage(new LocalStorage(path.join(work, 'pooled')), Buffer.from(key));
    const rand = prng(seed);
    const objects = Array.from({ length: 8 }, (_, i) => ({ key: `data/p/v${i}.tar`, plain: randomBytes(Math.floor(rand() * 40 * SEGMENT_SIZE)) }));
    await Promise.all(objects.map((o) => storage.put(o.key, Readable.from(chunks(o.plain, 1 + Math.floor(rand() * 200_000))))));
    const readPart = async (o: (typeof objects)[number], stopAt: number): Promise<void> => {
      const reader = await storage.openReader(o.key);
      const into = Buffer.alloc(1 + Math.floor(rand() * 300_000));
      let at = 0;
      for (let n = await reader.read(into); n > 0 && at < stopAt; n = await reader.read(into)) {
        assert.deepEqual(into.subarray(0, n), o.plain.subarray(at, at + n), `${o.key} at ${at}`);
        at += n;
        // Other streams take their turn between reads.
        await delay(0);
      }
      await reader.close();
      await reader.close();
    };
    for (let pass = 0; pass < 3; pass++) {
      await Promise.all(objects.map((o) => readPart(o, rand() < 0.5 ? Math.floor(rand() * o.plain.length) : Infinity)));
    }
    for (const o of objects) assert.deepEqual(await readAll(await storage.get(o.key)), o.plain, o.key);
  });
});

describe('an encrypted repository on local disk', () => {
  let src: string;
  let repo: string;
  const points: { id: string; tree: Map<string, any> }[] = [];
  const outputs: string[] = [];
  const record = (r: CliRun) => {
    outputs.push(r.stdout, r.stderr);
    return r;
  };

  before(async () => {
    src = path.join(work, 'local-src', 'models');
    repo = path.join(work, 'local-repo');
    await fsp.mkdir(src, { recursive: true });
    await makeSource(src, prng(seed));
  });

  it('round trip: full → incr → diff, every point restores bit-exact; volumes record aes-256-gcm', async () => {
    record(await ok(lifeboat(['--repo', repo, 'init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10'], { env: env() }), 'init'));
    const rand = prng(seed + 1);
    for (const [type, change] of [
      ['full', async () => undefined],
      ['incr', async () => writeRandomFile(path.join(src, 'weights.bin'), 3 * SEGMENT_SIZE + 5, rand)],
      ['diff', async () => fsp.writeFile(path.join(src, 'tok', 'extra.txt'), `${MARKER} extra\n`)],
    ] as const) {
      await change();
      const r = record(await ok(lifeboat(['--repo', repo, '--json', 'backup', src, '--type', type], { env: env() }), `backup ${type}`));
      points.push({ id: r.json().id, tree: await snapshotTree(src) });
    }
    record(await ok(lifeboat(['--repo', repo, 'verify', '--read-data'], { env: env() }), 'verify'));
    for (const p of points) {
      const target = path.join(work, `local-restore-${p.id}`);
      record(await ok(lifeboat(['--repo', repo, 'restore', p.id, '--target', target], { env: env() }), `restore ${p.id}`));
      assert.equal(compareSnapshots(p.tree, await snapshotTree(path.join(target, 'models'))), undefined);
    }
    const show = record(await ok(lifeboat(['--repo', repo, '--json', 'list'], { env: env() }), 'list'));
    assert.equal(show.json().length, 3);
    // Every object but the bootstrap is in the encrypted format.
    for (const f of await repoFiles(repo)) {
      const head = (await fsp.readFile(path.join(repo, f))).subarray(0, 4).toString('latin1');
      if (f === 'config.json' || f.startsWith('keys/')) assert.equal(head.charAt(0), '{', f);
      else assert.equal(head, 'LBEN', `${f} is encrypted`);
    }
    const storage = new LocalStorage(repo);
    const { unlockStorage } = await import('../src/core/keys.js');
    const unlocked = await unlockStorage(storage, { given: true, get: async () => PASSWORD });
    const manifest = JSON.parse((await unlocked.storage.getDocument(`points/${points[0]!.id}.json`)).toString('utf8'));
    assert.ok(manifest.volumes.length > 0);
    for (const v of manifest.volumes) assert.equal(v.encryption, 'aes-256-gcm');
    await unlocked.storage.close();
  });

  it('no password or plaintext in any output stream or stored object', async () => {
    assert.ok(points.length === 3, 'the round trip ran');
    const runs = [
      ['--json', 'list'],
      ['show', 'latest'],
      ['--json', 'show', 'latest'],
      ['--log-format', 'json', 'verify', '--read-data'],
      ['--debug', 'diff', points[0]!.id, points[2]!.id],
      ['key', 'list'],
      ['--json', 'key', 'list'],
    ];
    for (const args of runs) record(await ok(lifeboat(['--repo', repo, ...args], { env: env() }), args.join(' ')));
    // Failures too: a wrong password with --debug, and --json.
    record(await lifeboat(['--repo', repo, '--debug', 'list'], { env: env(`${PASSWORD}x`) }));
    record(await lifeboat(['--repo', repo, '--json', 'verify'], { env: env(`x${PASSWORD}`) }));
    const passwordFile = path.join(work, 'pw-secret');
    await fsp.writeFile(passwordFile, `${PASSWORD}\n`);
    record(await ok(lifeboat(['--repo', repo, '--password-file', passwordFile, '--json', 'list']), 'list with --password-file'));
    const metrics = path.join(work, 'metrics.prom');
    record(await ok(lifeboat(['--repo', repo, '--json', 'backup', src, '--metrics-file', metrics], { env: env() }), 'backup with metrics'));
    outputs.push(await fsp.readFile(metrics, 'utf8'));
    const all = outputs.join('\n');
    assert.ok(!all.includes(PASSWORD), 'the password appears in an output');
    assert.ok(!all.includes(MARKER), 'file content appears in an output');
    for (const f of await repoFiles(repo)) {
      const bytes = await fsp.readFile(path.join(repo, f));
      assert.ok(!bytes.includes(PASSWORD), `${f} holds the password`);
      assert.ok(!bytes.includes(MARKER), `${f} holds file content in plaintext`);
      assert.ok(!bytes.includes('weights.bin'), `${f} holds a file name in plaintext`);
    }
  });

  it('a wrong or missing password exits 2 with a clear message and writes nothing', async () => {
    const before = await digest(repo);
    const target = path.join(work, 'wrong-pw-target');
    const cases: [string[], NodeJS.ProcessEnv][] = [
      [['backup', src], env('wrong')],
      [['restore', 'latest', '--target', target], env('wrong')],
      [['verify', '--read-data'], env('wrong')],
      [['prune', '--keep-full', '1'], env('wrong')],
      [['key', 'add'], { ...env('wrong'), LIFEBOAT_NEW_PASSWORD: 'another' }],
      [['list'], {}],
    ];
    for (const [args, e] of cases) {
      const r = await lifeboat(['--repo', repo, ...args], { env: e });
      assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
      assert.match(r.stderr, e.LIFEBOAT_PASSWORD ? /wrong password/ : /no password was given/);
    }
    assert.equal(await exists(target), false);
    assert.deepEqual(await digest(repo), before);
  });

  it('an unencrypted repository refuses a password; a config altered to "unencrypted" is refused', async () => {
    const plain = path.join(work, 'plain-repo');
    await ok(lifeboat(['--repo', plain, 'init']), 'init');
    const r = await lifeboat(['--repo', plain, 'list'], { env: env() });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /not encrypted, but a password was given/);
    assert.equal((await lifeboat(['--repo', path.join(work, 'plain-2'), 'init'], { env: env() })).code, 2);

    const copy = path.join(work, 'downgraded');
    await fsp.cp(repo, copy, { recursive: true });
    const config = JSON.parse(await fsp.readFile(path.join(copy, 'config.json'), 'utf8'));
    config.encryption = null;
    await fsp.writeFile(path.join(copy, 'config.json'), encodeDocument(config));
    const before = await digest(copy);
    const b = await lifeboat(['--repo', copy, 'backup', src]);
    assert.equal(b.code, 3, b.stderr);
    assert.match(b.stderr, /says it is not encrypted, but the repository has keys/);
    assert.deepEqual(await digest(copy), before);
  });
});

/** One way of damaging a repository copy; returns the object it damaged. */
type Tamper = (repo: string, ctx: { full: string; incr: string }) => Promise<string>;

function volumeOf(point: string): string {
  return `data/${point}/v000001.tar`;
}

async function edit(repo: string, key: string, fn: (b: Buffer) => Buffer): Promise<string> {
  const file = path.join(repo, ...key.split('/'));
  await fsp.writeFile(file, fn(await fsp.readFile(file)));
  return key;
}

function segment(b: Buffer, i: number): Buffer {
  return b.subarray(HEADER_SIZE + i * SEALED, HEADER_SIZE + (i + 1) * SEALED);
}

const tampers: Record<string, Tamper> = {
  'flip a byte in a middle segment of a volume': (repo, c) =>
    edit(repo, volumeOf(c.full), (b) => {
      b[HEADER_SIZE + SEALED + 100]! ^= 1;
      return b;
    }),
  'flip a byte of a volume header (its salt)': (repo, c) =>
    edit(repo, volumeOf(c.full), (b) => {
      b[HEADER_SIZE - 3]! ^= 0x80;
      return b;
    }),
  'flip a tag byte of the final segment': (repo, c) =>
    edit(repo, volumeOf(c.full), (b) => {
      b[b.length - 1]! ^= 1;
      return b;
    }),
  'truncate a volume by its final segment': (repo, c) =>
    edit(repo, volumeOf(c.full), (b) => b.subarray(0, HEADER_SIZE + Math.floor((b.length - HEADER_SIZE - 1) / SEALED) * SEALED)),
  'truncate a volume in the middle of a segment': (repo, c) => edit(repo, volumeOf(c.full), (b) => b.subarray(0, HEADER_SIZE + 2 * SEALED + 500)),
  'swap two segments of a volume': (repo, c) =>
    edit(repo, volumeOf(c.full), (b) => Buffer.concat([b.subarray(0, HEADER_SIZE), segment(b, 1), segment(b, 0), b.subarray(HEADER_SIZE + 2 * SEALED)])),
  'drop a middle segment of a volume': (repo, c) =>
    edit(repo, volumeOf(c.full), (b) => Buffer.concat([b.subarray(0, HEADER_SIZE + SEALED), b.subarray(HEADER_SIZE + 2 * SEALED)])),
  'duplicate a segment (append it after the final one)': (repo, c) => edit(repo, volumeOf(c.full), (b) => Buffer.concat([b, segment(b, 1)])),
  'splice a segment of another volume in at the same index': async (repo, c) => {
    const other = await fsp.readFile(path.join(repo, ...volumeOf(c.incr).split('/')));
    return edit(repo, volumeOf(c.full), (b) => Buffer.concat([b.subarray(0, HEADER_SIZE + SEALED), segment(other, 1), b.subarray(HEADER_SIZE + 2 * SEALED)]));
  },
  "replace a volume by another point's volume (header and all)": async (repo, c) => {
    const other = await fsp.readFile(path.join(repo, ...volumeOf(c.incr).split('/')));
    return edit(repo, volumeOf(c.full), () => other);
  },
  'flip a byte of a manifest': (repo, c) =>
    edit(repo, `points/${c.full}.json`, (b) => {
      b[HEADER_SIZE + 40]! ^= 4;
      return b;
    }),
  'truncate a manifest': (repo, c) => edit(repo, `points/${c.full}.json`, (b) => b.subarray(0, b.length - 7)),
  "replace a manifest by another point's manifest": async (repo, c) => {
    const other = await fsp.readFile(path.join(repo, 'points', `${c.incr}.json`));
    return edit(repo, `points/${c.full}.json`, () => other);
  },
};

describe('tampering with an encrypted repository', () => {
  let pristine: string;
  let src: string;
  const ids = { full: '', incr: '' };

  before(async () => {
    src = path.join(work, 'tamper-src', 'models');
    pristine = path.join(work, 'tamper-repo');
    await fsp.mkdir(src, { recursive: true });
    const rand = prng(seed + 2);
    await makeSource(src, rand);
    await initEncrypted(pristine);
    ids.full = (await ok(lifeboat(['--repo', pristine, '--json', 'backup', src, '--type', 'full'], { env: env() }), 'full')).json().id;
    await writeRandomFile(path.join(src, 'weights.bin'), 4 * SEGMENT_SIZE, rand);
    ids.incr = (await ok(lifeboat(['--repo', pristine, '--json', 'backup', src, '--type', 'incr'], { env: env() }), 'incr')).json().id;
  });

  for (const [name, tamper] of Object.entries(tampers)) {
    it(`${name}: verify --read-data and restore exit 3 naming the object; no target`, async () => {
      const repo = path.join(work, `t-${name.replace(/[^a-z]+/gi, '-')}`);
      await fsp.cp(pristine, repo, { recursive: true });
      const object = await tamper(repo, ids);
      const verify = await lifeboat(['--repo', repo, 'verify', '--read-data'], { env: env() });
      assert.equal(verify.code, 3, `verify exited ${verify.code}: ${verify.stdout}${verify.stderr}`);
      assert.ok(`${verify.stdout}${verify.stderr}`.includes(object), `verify names ${object}: ${verify.stdout}${verify.stderr}`);
      const target = path.join(repo, '..', `${path.basename(repo)}-target`);
      const restore = await lifeboat(['--repo', repo, 'restore', ids.full, '--target', target], { env: env() });
      assert.equal(restore.code, 3, `restore exited ${restore.code}: ${restore.stderr}`);
      assert.ok(restore.stderr.includes(object), `restore names ${object}: ${restore.stderr}`);
      assert.equal(await exists(target), false, 'no target after a failed restore');
    });
  }
});

const hasScript = spawnSync('script', ['--version'], { stdio: 'ignore' }).status === 0;

/** A command on a terminal that `script` lends it: what the terminal shows, keys typed on it, and how the command exits. */
function onScript(argv: string[]) {
  const command = argv.map((a) => JSON.stringify(a)).join(' ');
  const terminal = spawn('script', ['-qefc', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'inherit'], env: { PATH: process.env.PATH } });
  let shown = '';
  terminal.stdout!.on('data', (c: Buffer) => (shown += c.toString('utf8')));
  // Keys typed after the command has exited (it refused at once, as it should) go nowhere: its exit code is what counts.
  terminal.stdin!.on('error', () => undefined);
  return {
    shown: () => shown,
    shows: (text: string) => waitFor(async () => shown.includes(text), 20_000),
    type: (keys: string) => terminal.stdin!.write(keys),
    exited: new Promise<number | null>((resolve) => terminal.on('exit', resolve)),
  };
}

/** Runs a command on a terminal, types `keys` once it shows `asks`, and returns what the terminal showed. */
async function onTerminal(argv: string[], keys: string, asks = 'Password for'): Promise<{ code: number | null; shown: string }> {
  const terminal = onScript(argv);
  const asked = await terminal.shows(asks);
  terminal.type(keys);
  const code = await terminal.exited;
  assert.ok(asked, `no prompt: ${terminal.shown()}`);
  return { code, shown: terminal.shown() };
}

describe('keys', () => {
  let repo: string;

  before(async () => {
    repo = path.join(work, 'keys-repo');
    await initEncrypted(repo);
    const src = path.join(work, 'keys-src');
    await fsp.mkdir(src);
    await fsp.writeFile(path.join(src, 'a.txt'), 'a');
    await ok(lifeboat(['--repo', repo, 'backup', src], { env: env() }), 'backup');
  });

  it('key add, list, remove and passwd; never the key in use, never the last one', async () => {
    const list = async (password: string) => (await ok(lifeboat(['--repo', repo, '--json', 'key', 'list'], { env: env(password) }), 'key list')).json();
    const first = await list(PASSWORD);
    assert.equal(first.length, 1);
    assert.equal(first[0].current, true);
    assert.equal(first[0].kdf.logN, 10);

    // The only key: refused, whatever the selector.
    const last = await lifeboat(['--repo', repo, 'key', 'remove', first[0].id], { env: env() });
    assert.equal(last.code, 2, last.stderr);

    const newFile = path.join(work, 'second-pw');
    await fsp.writeFile(newFile, 'second password\n');
    const added = (await ok(lifeboat(['--repo', repo, '--json', 'key', 'add', '--new-password-file', newFile], { env: env() }), 'key add')).json();
    const both = await list('second password');
    assert.equal(both.length, 2);
    assert.deepEqual(both.filter((k: any) => k.current).map((k: any) => k.id), [added.id]);
    await ok(lifeboat(['--repo', repo, 'list'], { env: env('second password') }), 'list with the second password');

    const inUse = await lifeboat(['--repo', repo, 'key', 'remove', added.id], { env: env('second password') });
    assert.equal(inUse.code, 2);
    assert.match(inUse.stderr, /refusing to remove it/);
    await ok(lifeboat(['--repo', repo, 'key', 'remove', first[0].id.slice(0, 6)], { env: env('second password') }), 'key remove');
    assert.equal((await lifeboat(['--repo', repo, 'list'], { env: env() })).code, 2, 'the removed password no longer opens');

    const changed = (await ok(lifeboat(['--repo', repo, '--json', 'key', 'passwd'], { env: { ...env('second password'), LIFEBOAT_NEW_PASSWORD: 'third password' } }), 'key passwd')).json();
    assert.equal(changed.removed, added.id);
    assert.equal((await lifeboat(['--repo', repo, 'list'], { env: env('second password') })).code, 2);
    const third = await list('third password');
    assert.deepEqual(third.map((k: any) => k.id), [changed.id]);
    assert.equal(third[0].kdf.logN, 10, 'a new key keeps the cost of the key that opened it');
    await ok(lifeboat(['--repo', repo, 'verify', '--read-data'], { env: env('third password') }), 'verify with the new password');
    assert.ok(!(await repoFiles(repo)).some((f) => f.startsWith('locks/')), 'the lock is released');
  });

  it('key passwd and key remove that find the lock held exit 4 without pointing at --retry-lock, which they do not take', async () => {
    const r = path.join(work, 'keys-locked-repo');
    await initEncrypted(r);
    const lockFile = path.join(r, 'locks', 'lock.json');
    await fsp.mkdir(path.dirname(lockFile), { recursive: true });
    const now = new Date().toISOString();
    await fsp.writeFile(lockFile, JSON.stringify({ host: 'gpu-node-7', pid: 4242, command: 'backup', startedAt: now, refreshedAt: now, leaseMs: 1800000 }));
    for (const args of [['key', 'passwd'], ['key', 'remove', '0123']]) {
      const locked = await lifeboat(['--repo', r, ...args], { env: { ...env(), LIFEBOAT_NEW_PASSWORD: 'another password' } });
      assert.equal(locked.code, 4, locked.stderr);
      assert.match(locked.stderr, /^lifeboat: the repository is locked by backup on gpu-node-7, pid 4242, since \S+\n {2}wait for it to finish and run this again; if that process is gone, run `lifeboat unlock`\n$/);
    }
    const backup = await lifeboat(['--repo', r, 'backup', path.join(work, 'keys-src')], { env: env() });
    assert.equal(backup.code, 4, backup.stderr);
    assert.match(backup.stderr, /--retry-lock 30m/, 'a backup takes --retry-lock');

    // The lock of a backup killed on this host is taken over, and said, as a backup says it.
    await fsp.writeFile(lockFile, JSON.stringify({ host: os.hostname(), pid: 2 ** 22 + 4321, command: 'backup', startedAt: now, refreshedAt: now, leaseMs: 1800000 }));
    const changed = await lifeboat(['--repo', r, 'key', 'passwd'], { env: { ...env(), LIFEBOAT_NEW_PASSWORD: 'another password' } });
    assert.equal(changed.code, 0, changed.stderr);
    assert.match(changed.stderr, new RegExp(`warning: took over a stale lock of backup on ${os.hostname()}, pid ${2 ** 22 + 4321}, since \\S+ \\(`));
    assert.ok(!(await repoFiles(r)).some((f) => f.startsWith('locks/')), 'the lock is released');

    // A lock of another host refreshed 10 minutes ago: live by default, stale under the config's lock.staleAfter: 5m, as for a backup.
    const tenMinutesAgo = new Date(Date.now() - 600_000).toISOString();
    await fsp.mkdir(path.dirname(lockFile), { recursive: true });
    await fsp.writeFile(lockFile, JSON.stringify({ host: 'gpu-node-7', pid: 4242, command: 'backup', startedAt: tenMinutesAgo, refreshedAt: tenMinutesAgo, leaseMs: 1800000 }));
    const config = path.join(work, 'keys-locked.yaml');
    await fsp.writeFile(config, `repository: ${r}\nlock: { staleAfter: 5m }\n`);
    const configured = await lifeboat(['--config', config, 'key', 'passwd'], { env: { ...env(), LIFEBOAT_PASSWORD: 'another password', LIFEBOAT_NEW_PASSWORD: 'a third password' } });
    assert.equal(configured.code, 0, configured.stderr);
    assert.match(configured.stderr, /warning: took over a stale lock of backup on gpu-node-7, pid 4242/);
  });

  // A host of its own name needs a UTS namespace: root and unshare.
  const ownHostName = process.getuid?.() === 0 && spawnSync('unshare', ['--uts', 'true']).status === 0;
  it('key list keeps its columns in line when a key was added on a host with a long name (an EC2 host\'s full name)', { skip: !ownHostName && 'needs root and unshare --uts' }, async () => {
    const r = path.join(work, 'long-host');
    await initEncrypted(r);
    const host = 'ip-10-0-12-34.eu-west-1.compute.internal';
    const added = spawnSync('unshare', ['--uts', 'sh', '-c', `hostname ${host} && exec "$@"`, 'sh', process.execPath, BIN, '--repo', r, 'key', 'add'], {
      env: { ...process.env, ...env(), LIFEBOAT_NEW_PASSWORD: 'another password' },
      encoding: 'utf8',
    });
    assert.equal(added.status, 0, added.stderr);
    const list = await ok(lifeboat(['--repo', r, 'key', 'list'], { env: env() }), 'key list');
    const lines = list.stdout.trimEnd().split('\n');
    assert.equal(lines.length, 3, list.stdout);
    assert.ok(lines.some((l) => l.includes(host)), list.stdout);
    // Each column starts where its heading does.
    for (const heading of ['CREATED', 'HOST', 'KDF']) {
      const at = lines[0]!.indexOf(heading);
      for (const line of lines.slice(1)) assert.match(line.slice(at), heading === 'CREATED' ? /^\d{4}-/ : heading === 'HOST' ? /^\S/ : /^scrypt /, list.stdout);
    }
  });

  it('a damaged key file, which key list warns of, is removed by key remove; the genuine keys stay', async () => {
    const r = path.join(work, 'damaged-key');
    await initEncrypted(r);
    const damaged = path.join(r, 'keys', '0123456789abcdef.json');
    await fsp.writeFile(damaged, '{"format": "lifeboat-key", "truncated');
    const list = await ok(lifeboat(['--repo', r, 'key', 'list'], { env: env() }), 'key list');
    assert.match(list.stderr, /keys\/0123456789abcdef\.json is damaged and cannot open the repository; put it back from a copy to keep its password, or `lifeboat key remove 0123456789abcdef` removes it/);
    // A warning, which --quiet does not silence, and a warning line of --log-format json.
    const quiet = await ok(lifeboat(['--repo', r, '--quiet', 'key', 'list'], { env: env() }), 'key list --quiet');
    assert.match(quiet.stderr, /warning: keys\/0123456789abcdef\.json is damaged/);
    const logged = await ok(lifeboat(['--repo', r, '--log-format', 'json', 'key', 'list'], { env: env() }), 'key list --log-format json');
    assert.deepEqual(logged.stderr.trimEnd().split('\n').map((l) => JSON.parse(l)).map(({ level, code }) => ({ level, code })), [{ level: 'warning', code: 'key-damaged' }]);
    // The nightly verify says so too, as a warning: a password lost, found before the day it is needed.
    const verified = await ok(lifeboat(['--repo', r, '--json', 'verify'], { env: env() }), 'verify');
    assert.deepEqual(verified.json().warnings, [
      {
        code: 'key-damaged',
        path: 'keys/0123456789abcdef.json',
        message: 'this key file is damaged and cannot open the repository; put it back from a copy to keep its password, or `lifeboat key remove 0123456789abcdef` removes it',
      },
    ]);
    assert.match(verified.stderr, /warning: keys\/0123456789abcdef\.json: this key file is damaged/);
    const removed = await ok(lifeboat(['--repo', r, '--json', 'key', 'remove', '0123'], { env: env() }), 'key remove of the damaged file');
    assert.equal(removed.json().removed, '0123456789abcdef');
    assert.equal(await exists(damaged), false);
    const clean = await ok(lifeboat(['--repo', r, 'key', 'list'], { env: env() }), 'key list');
    assert.equal(clean.stderr, '');
    assert.deepEqual((await ok(lifeboat(['--repo', r, '--json', 'verify'], { env: env() }), 'verify')).json().warnings, []);
    assert.equal((await lifeboat(['--repo', r, 'key', 'remove', '0123'], { env: env() })).code, 2, 'nothing left to match');
  });

  it('a repository whose config says encrypted but whose keys are gone says what happened, before any password is asked for', async () => {
    // Never finished (an older init wrote its config first): nothing is lost, and it is made again.
    const unfinished = path.join(work, 'config-without-keys');
    await initEncrypted(unfinished);
    await fsp.rm(path.join(unfinished, 'keys'), { recursive: true });
    for (const e of [env(), {}]) {
      const r = await lifeboat(['--repo', unfinished, 'list'], { env: e });
      assert.equal(r.code, 2, r.stderr);
      assert.equal(
        r.stderr,
        `lifeboat: the encrypted repository at ${unfinished} has no key under keys/ and holds no backup, as an init cut short leaves it: nothing is lost\n  remove config.json there and run \`lifeboat init --encryption aes-256-gcm\` again\n`,
      );
    }
    await fsp.mkdir(path.join(unfinished, 'keys'));
    assert.match((await lifeboat(['--repo', unfinished, 'key', 'list'], { env: env() })).stderr, /has no key under keys\/ and holds no backup/);
    await fsp.rm(path.join(unfinished, 'config.json'));
    await initEncrypted(unfinished);

    // Keys removed from a repository that holds backups: its data cannot be read, and the way back is a copy of a key file.
    const { repo: emptied } = await encryptedWithBackup('keys-removed');
    const saved = path.join(work, 'keys-removed-copy');
    await fsp.rename(path.join(emptied, 'keys'), saved);
    for (const args of [['list'], ['key', 'list'], ['verify']]) {
      const r = await lifeboat(['--repo', emptied, ...args]);
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr, /has no key under keys\/: its key files were removed, and its backups cannot be decrypted without one\n {2}put back a key file under keys\/ from a copy of the repository or of its keys/);
    }
    await fsp.rename(saved, path.join(emptied, 'keys'));
    await ok(lifeboat(['--repo', emptied, 'verify', '--read-data'], { env: env() }), 'verify with the key file put back');
  });

  it('a repository that holds backups and lost its config.json says so (exit 3), rather than that there is no repository and init makes one', async () => {
    const { repo: r, src } = await encryptedWithBackup('config-removed');
    const saved = path.join(work, 'config-removed-copy.json');
    await fsp.rename(path.join(r, 'config.json'), saved);
    for (const args of [['list'], ['key', 'list'], ['verify'], ['restore', 'latest', '--target', path.join(work, 'config-removed-out')]]) {
      const missing = await lifeboat(['--repo', r, ...args], { env: env() });
      assert.equal(missing.code, 3, `${args.join(' ')}: ${missing.stderr}`);
      assert.equal(
        missing.stderr,
        `lifeboat: the repository at ${r} holds backups under points/ but its config.json is gone\n  put config.json back from a copy of the repository: it holds the repository id that the key files under keys/ are bound to, and without it no password opens them; \`lifeboat init\` would not make one over existing backups\n`,
      );
    }
    // Unencrypted, the same, without the keys.
    const plain = path.join(work, 'config-removed-plain');
    await ok(lifeboat(['--repo', plain, 'init']), 'init');
    await ok(lifeboat(['--repo', plain, 'backup', src]), 'backup');
    await fsp.rm(path.join(plain, 'config.json'));
    const plainMissing = await lifeboat(['--repo', plain, 'list']);
    assert.equal(plainMissing.code, 3, plainMissing.stderr);
    assert.match(plainMissing.stderr, /holds backups under points\/ but its config\.json is gone\n {2}put config\.json back from a copy of the repository; `lifeboat init` would not/);
    // Damaged is not gone: key list says which, as list does.
    await fsp.writeFile(path.join(r, 'config.json'), (await fsp.readFile(saved, 'utf8')).replace('"volumeSize":', '"volumeSize":1'));
    for (const args of [['list'], ['key', 'list']]) {
      const damaged = await lifeboat(['--repo', r, ...args], { env: env() });
      assert.equal(damaged.code, 3, damaged.stderr);
      assert.match(damaged.stderr, /^lifeboat: repository config config\.json is damaged/);
    }
    // Put back, it opens again; nothing there at all is still no repository.
    await fsp.rename(saved, path.join(r, 'config.json'));
    await ok(lifeboat(['--repo', r, 'verify', '--read-data'], { env: env() }), 'verify with config.json put back');
    const none = await lifeboat(['--repo', path.join(work, 'config-removed-nothing'), 'list'], { env: env() });
    assert.equal(none.code, 2, none.stderr);
    assert.match(none.stderr, /there is no lifeboat repository at/);
  });

  it('planted key files with the costliest scrypt parameters cannot stall unlocking: cheapest first, within a budget', { timeout: 60_000 }, async () => {
    const r = path.join(work, 'planted-keys');
    await initEncrypted(r);
    const keyDir = path.join(r, 'keys');
    const [own] = await fsp.readdir(keyDir);
    const { checksum: _checksum, ...genuine } = JSON.parse(await fsp.readFile(path.join(keyDir, own!), 'utf8'));
    // Each would take scrypt about 40 s and 1 GiB (the most a key may ask for), whatever the password.
    for (let i = 0; i < 3; i++) {
      const id = randomBytes(8).toString('hex');
      const planted = { ...genuine, id, kdf: { name: 'scrypt', logN: 20, r: 8, p: 16 } };
      await fsp.writeFile(path.join(keyDir, `${id}.json`), encodeDocument(planted));
    }
    await ok(lifeboat(['--repo', r, 'list'], { env: env() }), 'the genuine key still opens');
    const wrong = await lifeboat(['--repo', r, 'list'], { env: env('not the password') });
    assert.equal(wrong.code, 2, wrong.stderr);
    assert.match(wrong.stderr, /3 key\(s\) with costlier scrypt parameters than lifeboat creates were not tried/);
  });

  it('key add and key passwd refuse a 65th key file, which would keep every command from opening the repository; more than 64 says what to do', async () => {
    const r = path.join(work, 'full-keys');
    await initEncrypted(r);
    const keyDir = path.join(r, 'keys');
    // Damaged or not, every key file counts: 63 beside the genuine one make the 64 an unlock reads.
    for (let i = 0; i < 63; i++) await fsp.writeFile(path.join(keyDir, `${randomBytes(8).toString('hex')}.json`), '{}');
    const before = await digest(r);
    for (const args of [['key', 'add'], ['key', 'passwd']]) {
      const refused = await lifeboat(['--repo', r, ...args], { env: { ...env(), LIFEBOAT_NEW_PASSWORD: 'one too many' } });
      assert.equal(refused.code, 2, refused.stderr);
      assert.match(refused.stderr, /^lifeboat: the repository has 64 key files under keys\/, the most lifeboat reads; another would keep every command from opening it\n {2}remove a key first: `lifeboat key list` shows them, `lifeboat key remove ID` removes one\n$/);
    }
    assert.deepEqual(await digest(r), before, 'nothing was written');
    await ok(lifeboat(['--repo', r, 'list'], { env: env() }), 'list with 64 key files');
    // Past the limit (planted, or added by an older lifeboat), every command says what to do about it.
    await fsp.writeFile(path.join(keyDir, `${randomBytes(8).toString('hex')}.json`), '{}');
    const over = await lifeboat(['--repo', r, 'list'], { env: env() });
    assert.equal(over.code, 3, over.stderr);
    assert.match(over.stderr, /more than 64 key files under keys\/, more than lifeboat reads, which can mean tampering\n {2}move the key files you do not need .* out of keys\/ by hand, keeping a copy, until at most 64 are left\n$/);
  });

  it('init stores the default scrypt cost; an unknown algorithm is a usage error', async () => {
    const r = path.join(work, 'default-kdf');
    await ok(lifeboat(['--repo', r, 'init', '--encryption', 'aes-256-gcm'], { env: env() }), 'init');
    const config = JSON.parse(await fsp.readFile(path.join(r, 'config.json'), 'utf8'));
    assert.deepEqual(config.encryption, { algorithm: 'aes-256-gcm', segmentSize: SEGMENT_SIZE, kdf: { name: 'scrypt', logN: 14, r: 8, p: 5 } });
    assert.equal((await lifeboat(['--repo', path.join(work, 'bad-alg'), 'init', '--encryption', 'rot13'], { env: env() })).code, 2);
    const none = await lifeboat(['--repo', path.join(work, 'no-pw'), 'init', '--encryption', 'aes-256-gcm']);
    assert.equal(none.code, 2, none.stderr);
    assert.equal(await exists(path.join(work, 'no-pw')), false);
  });

  it('without a password and no terminal, init names the ways init takes one, and the key commands theirs; the way named works', async () => {
    const pwFile = path.join(work, 'named-pw');
    await fsp.writeFile(pwFile, `${PASSWORD}\n`);
    const r = path.join(work, 'hinted');
    const none = await lifeboat(['--repo', r, 'init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10']);
    assert.equal(none.code, 2, none.stderr);
    assert.equal(none.stderr, 'lifeboat: an encrypted repository needs a password, and none was given\n  pass --password-file FILE, or set LIFEBOAT_PASSWORD_FILE, LIFEBOAT_PASSWORD_COMMAND or LIFEBOAT_PASSWORD\n');
    await ok(lifeboat(['--repo', r, '--password-file', pwFile, 'init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10']), 'init --password-file');
    await ok(lifeboat(['--repo', r, 'list'], { env: { LIFEBOAT_PASSWORD_FILE: pwFile } }), 'list with LIFEBOAT_PASSWORD_FILE');
    const locked = await lifeboat(['--repo', r, 'list']);
    assert.equal(locked.code, 2, locked.stderr);
    assert.match(locked.stderr, /no password was given\n {2}pass --password-file FILE, or set LIFEBOAT_PASSWORD_FILE, LIFEBOAT_PASSWORD_COMMAND or LIFEBOAT_PASSWORD\n$/);
    for (const command of ['add', 'passwd']) {
      const noNew = await lifeboat(['--repo', r, 'key', command], { env: env() });
      assert.equal(noNew.code, 2, noNew.stderr);
      assert.equal(noNew.stderr, 'lifeboat: no new password was given\n  pass --new-password-file FILE or set LIFEBOAT_NEW_PASSWORD\n');
    }
    await ok(lifeboat(['--repo', r, 'key', 'add', '--new-password-file', pwFile], { env: env() }), 'key add --new-password-file');
  });

  it('an init killed as soon as it writes leaves no repository without a key: the key comes before the config', { timeout: 60_000 }, async () => {
    const r = path.join(work, 'killed-init');
    // A costly key (2^17: about a second of scrypt) holds a config written first long enough to be seen alone.
    const child = spawnLifeboat(['--repo', r, 'init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '17'], { env: env() });
    child.stdout!.resume();
    child.stderr!.resume();
    const exited = new Promise((resolve) => child.on('exit', resolve));
    const wrote = await waitFor(async () => (await exists(path.join(r, 'config.json'))) || (await exists(path.join(r, 'keys'))), 30_000);
    child.kill('SIGKILL');
    await exited;
    assert.ok(wrote, 'init wrote something');
    const list = await lifeboat(['--repo', r, 'list'], { env: env() });
    if (list.code !== 0) {
      // Cut short before its config: no repository, rather than an encrypted one whose key is missing (exit 3).
      assert.equal(list.code, 2, list.stderr);
      assert.match(list.stderr, /there is no lifeboat repository/);
      assert.equal(await exists(path.join(r, 'config.json')), false);
      const again = () => lifeboat(['--repo', r, 'init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10'], { env: env() });
      if ((await fsp.readdir(path.join(r, 'keys')).catch(() => [])).length === 0) {
        // Killed between making keys/ and renaming the key into it: an empty directory, which holds nothing to keep.
        await ok(again(), 'init over an empty keys/');
      } else {
        const refused = await again();
        assert.equal(refused.code, 2, refused.stderr);
        assert.match(refused.stderr, /holds nothing but keys\/, left by an init that did not finish: remove keys\/ and run init again/);
        await fsp.rm(path.join(r, 'keys'), { recursive: true });
        await ok(again(), 'init once keys/ is removed');
      }
    }
    await ok(lifeboat(['--repo', r, 'list'], { env: env() }), 'list');
  });

  it('on a terminal, --json asks for the password too (prompt on stderr, JSON on stdout); an Enter alone is no password', { skip: hasScript ? false : 'script (util-linux) is not installed', timeout: 30_000 }, async () => {
    const r = path.join(work, 'prompted');
    await initEncrypted(r);
    const typed = await onTerminal([process.execPath, BIN, '--repo', r, '--json', 'key', 'list'], `${PASSWORD}\r`);
    assert.equal(typed.code, 0, typed.shown);
    assert.equal(JSON.parse(typed.shown.slice(typed.shown.indexOf('[')).replaceAll('\r', '')).length, 1);
    assert.ok(!typed.shown.includes(PASSWORD), 'the password is not echoed');

    const started = Date.now();
    const enter = await onTerminal([process.execPath, BIN, '--repo', r, 'list'], '\r');
    assert.equal(enter.code, 2, enter.shown);
    assert.match(enter.shown, /no password was typed/);
    assert.ok(Date.now() - started < 10_000);
  });

  it('a password file may be standard input, a pipe or a device; more than 4 KiB, or a terminal, is refused without waiting', { timeout: 60_000 }, async () => {
    const r = path.join(work, 'piped');
    await initEncrypted(r);
    /** Runs lifeboat through `sh -c`, where "$LIFEBOAT" is the command and "$PW" the password. */
    const shell = async (script: string): Promise<CliRun & { ms: number }> => {
      const started = Date.now();
      const child = spawn('sh', ['-c', script], { cwd: work, env: { PATH: process.env.PATH, PW: PASSWORD, LIFEBOAT: `${process.execPath} ${BIN} --repo ${r}` } });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on('data', (c: Buffer) => out.push(c));
      child.stderr.on('data', (c: Buffer) => err.push(c));
      const code = await new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? 1)));
      const stdout = Buffer.concat(out).toString('utf8');
      return { code, stdout, stderr: Buffer.concat(err).toString('utf8'), json: () => JSON.parse(stdout), ms: Date.now() - started };
    };
    const opened = async (script: string) => {
      const run = await shell(script);
      assert.equal(run.code, 0, `${script}: ${run.stderr}`);
    };
    await opened('printf "%s\\n" "$PW" | $LIFEBOAT --password-file /dev/stdin list');
    await opened('printf "%s" "$PW" | LIFEBOAT_PASSWORD_FILE=/dev/fd/0 $LIFEBOAT list');
    // A named pipe whose writer comes after lifeboat opened it, as a secret manager's would.
    await opened('mkfifo pw.fifo || exit 1; { sleep 1; printf "%s\\n" "$PW" > pw.fifo; } >/dev/null 2>&1 & $LIFEBOAT --password-file pw.fifo list; status=$?; rm -f pw.fifo; exit $status');

    // Standard input that is a socket (a parent process's pipe), which no path opens.
    const socketed = spawn(process.execPath, [BIN, '--repo', r, '--password-file', '/dev/stdin', 'list'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let socketError = '';
    socketed.stderr!.on('data', (c: Buffer) => (socketError += c.toString('utf8')));
    socketed.stdin!.end(`${PASSWORD}\n`);
    assert.equal(await new Promise((resolve) => socketed.on('close', resolve)), 0, socketError);

    const endless = await shell('yes | $LIFEBOAT --password-file /dev/stdin list');
    assert.equal(endless.code, 2, endless.stderr);
    assert.match(endless.stderr, /password file \/dev\/stdin holds more than 4 KiB; it should hold the password alone/);
    assert.ok(endless.ms < 15_000, `refused after ${endless.ms} ms`);
    const zeros = await shell('$LIFEBOAT --password-file /dev/zero list');
    assert.equal(zeros.code, 2, zeros.stderr);
    assert.match(zeros.stderr, /\/dev\/zero holds more than 4 KiB/);
    // A relative password file under cron, whose working directory is the home directory, and an absolute one that is gone.
    const relative = await shell('mkdir -p elsewhere && cd elsewhere && $LIFEBOAT --password-file secrets/pw list');
    assert.equal(relative.code, 2, relative.stderr);
    assert.match(relative.stderr, /lifeboat: password file .*elsewhere\/secrets\/pw does not exist\n {2}a relative path is taken from the working directory \(.*elsewhere\); give the file's absolute path\n$/);
    const gone = await shell('$LIFEBOAT --password-file /nonexistent/pw list');
    assert.match(gone.stderr, /lifeboat: password file \/nonexistent\/pw does not exist\n {2}check the path\n$/);
    const nothing = await shell('true | $LIFEBOAT --password-file /dev/stdin list');
    assert.equal(nothing.code, 2, nothing.stderr);
    assert.match(nothing.stderr, /password file \/dev\/stdin is empty/);
    // Read once: the new password cannot come from the input that gave the current one.
    const twice = await shell('printf "%s\\n" "$PW" | $LIFEBOAT --password-file /dev/stdin key add --new-password-file /dev/stdin');
    assert.equal(twice.code, 2, twice.stderr);
    assert.match(twice.stderr, /new password file \/dev\/stdin is standard input, which gave the password already/);
  });

  it('a password file that is a named pipe no one writes to, or standard input that never ends, stops at an interrupt and is given up after 60 s, writing nothing', { timeout: 120_000 }, async () => {
    const r = path.join(work, 'silent-pipe');
    await initEncrypted(r);
    const fifo = path.join(work, 'silent.fifo');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    const before = await digest(r);
    const run = (args: string[]) => {
      const child = spawn(process.execPath, [BIN, '--repo', r, ...args, 'list'], { stdio: ['pipe', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr!.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
      const closed = new Promise<number>((resolve) => child.on('close', (code, sig) => resolve(code ?? (sig ? 128 : 1))));
      return { child, closed, stderr: () => stderr, started: Date.now() };
    };
    const within = (p: Promise<number>, ms: number) => Promise.race([p, delay(ms).then(() => 'still waiting' as const)]);
    // Nobody will ever write to it: the run gives up on its own, rather than leave a cron job waiting for good.
    const abandoned = run(['--password-file', fifo]);
    try {
      for (const args of [['--password-file', fifo], ['--password-file', '/dev/stdin']]) {
        const waiting = run(args);
        await delay(1500);
        waiting.child.kill('SIGINT');
        const code = await within(waiting.closed, 10_000);
        if (code === 'still waiting') waiting.child.kill('SIGKILL');
        waiting.child.stdin!.destroy();
        assert.equal(code, 130, `${args.join(' ')}: ${waiting.stderr()}`);
        assert.match(waiting.stderr(), /lifeboat: interrupted\n$/);
      }
      const code = await within(abandoned.closed, 75_000);
      assert.equal(code, 2, abandoned.stderr());
      assert.ok(Date.now() - abandoned.started >= 59_000);
      assert.match(abandoned.stderr(), /^lifeboat: password file .*silent\.fifo was not read to its end within 60 s: nothing closed the pipe\n {2}whatever writes the password there must write it and close the pipe/);
    } finally {
      abandoned.child.kill('SIGKILL');
      abandoned.child.stdin!.destroy();
      await fsp.rm(fifo, { force: true });
    }
    assert.deepEqual(await digest(r), before, 'nothing was written');
  });

  it('a wrong password is named by where it came from: a typed one is not blamed on LIFEBOAT_PASSWORD or a file', { skip: hasScript ? false : 'script (util-linux) is not installed', timeout: 30_000 }, async () => {
    const r = path.join(work, 'wrong-typed');
    await initEncrypted(r);
    const typed = await onTerminal([process.execPath, BIN, '--repo', r, 'list'], 'not the password\r');
    assert.equal(typed.code, 2, typed.shown);
    assert.match(typed.shown, /opens with the typed password\r?\n {2}the password is asked once a run: run the command again to type it again/);
    assert.ok(!/LIFEBOAT_PASSWORD|password-file/.test(typed.shown), typed.shown);

    const fromEnv = await lifeboat(['--repo', r, 'list'], { env: env('not the password') });
    assert.equal(fromEnv.code, 2, fromEnv.stderr);
    assert.match(fromEnv.stderr, /opens with LIFEBOAT_PASSWORD\n {2}check LIFEBOAT_PASSWORD\n$/);
    const file = path.join(work, 'wrong-typed-pw');
    await fsp.writeFile(file, 'not the password\n');
    for (const [args, e, named] of [[['--password-file', file], {}, '--password-file'], [[], { LIFEBOAT_PASSWORD_FILE: file }, 'LIFEBOAT_PASSWORD_FILE']] as const) {
      const fromFile = await lifeboat(['--repo', r, ...args, 'list'], { env: e });
      assert.equal(fromFile.code, 2, fromFile.stderr);
      assert.ok(fromFile.stderr.includes(`opens with the password in ${file}\n  check that file (all of it but one trailing newline is the password) and that ${named} names the right one\n`), fromFile.stderr);
    }
  });

  it('LIFEBOAT_PASSWORD_COMMAND: the first line the command prints is the password; a failing one is exit 2 with its stderr, never its output', { timeout: 60_000 }, async () => {
    const r = path.join(work, 'password-command');
    const command = (script: string) => ({ LIFEBOAT_PASSWORD_COMMAND: script, PW: PASSWORD });
    await ok(lifeboat(['--repo', r, 'init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10'], { env: command('printf "%s\\nlogin: backup\\n" "$PW"') }), 'init');
    // Before LIFEBOAT_PASSWORD, which the command does not see: it would print the wrong one if it did.
    await ok(lifeboat(['--repo', r, 'list'], { env: { ...command('echo "${LIFEBOAT_PASSWORD:-$PW}"'), ...env('not the password') } }), 'list');

    const failed = await lifeboat(['--repo', r, 'list'], { env: command('echo "$PW"; echo "gpg: decryption failed: No secret key" >&2; exit 2') });
    assert.equal(failed.code, 2, failed.stderr);
    assert.match(failed.stderr, /^lifeboat: LIFEBOAT_PASSWORD_COMMAND exited with status 2: gpg: decryption failed: No secret key\n {2}run the command yourself/);
    assert.ok(!failed.stderr.includes(PASSWORD), 'the output is not shown');
    const endless = await lifeboat(['--repo', r, 'list'], { env: command('yes "$PW"') });
    assert.equal(endless.code, 2, endless.stderr);
    assert.match(endless.stderr, /LIFEBOAT_PASSWORD_COMMAND printed more than 4 KiB and was stopped/);
    const blank = await lifeboat(['--repo', r, 'list'], { env: command('echo; echo "$PW"') });
    assert.equal(blank.code, 2, blank.stderr);
    assert.match(blank.stderr, /LIFEBOAT_PASSWORD_COMMAND printed no password on its first line/);
    const wrong = await lifeboat(['--repo', r, 'list'], { env: command('echo not the password') });
    assert.equal(wrong.code, 2, wrong.stderr);
    assert.match(wrong.stderr, /opens with the password LIFEBOAT_PASSWORD_COMMAND printed\n {2}check the first line LIFEBOAT_PASSWORD_COMMAND prints\n$/);
    const plain = await lifeboat(['--repo', path.join(work, 'password-command-plain'), 'init'], { env: command('echo "$PW"') });
    assert.equal(plain.code, 2, plain.stderr);
    assert.match(plain.stderr, /a password was given, but the repository would not be encrypted/);
  });

  it('key add asks for the new password right after the current one: typed ahead while scrypt runs, it is not echoed', { skip: hasScript ? false : 'script (util-linux) is not installed', timeout: 120_000 }, async () => {
    const r = path.join(work, 'typed-ahead');
    // A key of the default cost (2^14, p = 5: about 0.2 s of scrypt) leaves time to type ahead while it is checked.
    await ok(lifeboat(['--repo', r, 'init', '--encryption', 'aes-256-gcm'], { env: env() }), 'init');
    const terminal = onScript([process.execPath, BIN, '--repo', r, 'key', 'add']);
    assert.ok(await terminal.shows('Password for'), terminal.shown());
    terminal.type(`${PASSWORD}\r`);
    await delay(30);
    terminal.type('typed ahead\r');
    assert.ok(await terminal.shows('Repeat the new password'), terminal.shown());
    terminal.type('typed ahead\r');
    assert.equal(await terminal.exited, 0, terminal.shown());
    assert.match(terminal.shown(), /added key [0-9a-f]{16}/);
    assert.ok(!terminal.shown().includes('typed ahead'), `the new password showed on the terminal: ${terminal.shown()}`);
    await ok(lifeboat(['--repo', r, 'list'], { env: env('typed ahead') }), 'list with the new password');

    // All three typed at once, before the first prompt has read a key: each prompt takes its line.
    const atOnce = onScript([process.execPath, BIN, '--repo', r, 'key', 'add']);
    assert.ok(await atOnce.shows('Password for'), atOnce.shown());
    atOnce.type('typed ahead\rall at once\rall at once\r');
    assert.equal(await atOnce.exited, 0, atOnce.shown());
    await ok(lifeboat(['--repo', r, 'list'], { env: env('all at once') }), 'list with the password typed at once');
  });

  it('a password file that is a terminal is refused, not read as a line typed in the clear', { skip: hasScript ? false : 'script (util-linux) is not installed', timeout: 30_000 }, async () => {
    const r = path.join(work, 'terminal-file');
    await initEncrypted(r);
    const refused = await onTerminal([process.execPath, BIN, '--repo', r, '--password-file', '/dev/stdin', 'list'], '', 'is a terminal');
    assert.equal(refused.code, 2, refused.shown);
    assert.match(refused.shown, /password file \/dev\/stdin is a terminal; reading it would wait for the password typed in the clear/);
  });

  it('an empty LIFEBOAT_PASSWORD_FILE is no password file, as an empty LIFEBOAT_PASSWORD is; an empty --password-file is refused', async () => {
    const plain = path.join(work, 'empty-pw-file-plain');
    await ok(lifeboat(['--repo', plain, 'init'], { env: { LIFEBOAT_PASSWORD_FILE: '' } }), 'init of an unencrypted repository');
    await ok(lifeboat(['--repo', plain, 'list'], { env: { LIFEBOAT_PASSWORD_FILE: '' } }), 'list of an unencrypted repository');
    const given = await lifeboat(['--repo', plain, 'list'], { env: { LIFEBOAT_PASSWORD_FILE: path.join(work, 'named-pw') } });
    assert.equal(given.code, 2, given.stderr);
    assert.match(given.stderr, /unset LIFEBOAT_PASSWORD, LIFEBOAT_PASSWORD_FILE and LIFEBOAT_PASSWORD_COMMAND/);

    const encrypted = path.join(work, 'empty-pw-file-encrypted');
    await initEncrypted(encrypted);
    const unset = await lifeboat(['--repo', encrypted, 'list'], { env: { LIFEBOAT_PASSWORD_FILE: '' } });
    assert.equal(unset.code, 2, unset.stderr);
    assert.match(unset.stderr, /no password was given/);
    await ok(lifeboat(['--repo', encrypted, 'list'], { env: { ...env(), LIFEBOAT_PASSWORD_FILE: '' } }), 'LIFEBOAT_PASSWORD under an empty LIFEBOAT_PASSWORD_FILE');

    const before = await digest(encrypted);
    for (const args of [['--password-file', '', 'list'], ['key', 'add', '--new-password-file', ''], ['key', 'passwd', '--new-password-file', '']]) {
      const r = await lifeboat(['--repo', encrypted, ...args], { env: env() });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /-password-file "": expected the path of a file/);
    }
    assert.deepEqual(await digest(encrypted), before);
  });

  it('hooks, command sources and smoke tests run without the password in their environment', async () => {
    const dir = path.join(work, 'command-env');
    await fsp.mkdir(path.join(dir, 'models'), { recursive: true });
    await fsp.writeFile(path.join(dir, 'models', 'w.bin'), 'weights');
    await fsp.writeFile(
      path.join(dir, 'lifeboat.yaml'),
      'repository: ./repo\nsources:\n  models: ./models\n  features: { command: "env > source.env; echo state" }\nhooks:\n  preBackup: "env > hook.env"\n',
    );
    await ok(lifeboat(['init', '--encryption', 'aes-256-gcm'], { cwd: dir, env: env() }), 'init');
    await ok(lifeboat(['backup'], { cwd: dir, env: env() }), 'backup');
    const drill = await ok(lifeboat(['--json', 'drill', '--smoke', 'env'], { cwd: dir, env: env() }), 'drill');
    const smoke: string = drill.json().smoke.output;
    assert.match(smoke, /LIFEBOAT_RESTORE_DIR=/, 'the smoke test printed its environment');
    for (const file of ['hook.env', 'source.env']) {
      const seen = await fsp.readFile(path.join(dir, file), 'utf8');
      assert.match(seen, /LIFEBOAT_/, `${file} holds the command's environment`);
      assert.ok(!seen.includes(PASSWORD), `${file} holds the password`);
    }
    assert.ok(!smoke.includes(PASSWORD), 'the smoke output holds the password');
  });
});

describe('an encrypted repository on the S3 test server', () => {
  const s3 = s3ServerForSuite();

  it('round trip: full → incr → diff restore bit-exact; a flipped byte is found; a wrong password exits 2', async () => {
    const { server, bucket } = s3;
    const repoArgs = ['--repo', `s3://${bucket}/enc`, '--s3-endpoint', server.endpoint, '--s3-path-style'];
    const e = { ...server.env, ...env() };
    const src = path.join(work, 's3-src', 'models');
    await fsp.mkdir(src, { recursive: true });
    const rand = prng(seed + 3);
    await makeSource(src, rand);
    await ok(lifeboat([...repoArgs, 'init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '10'], { env: e }), 'init');
    const points: { id: string; tree: Map<string, any> }[] = [];
    for (const [type, change] of [
      ['full', async () => undefined],
      ['incr', async () => writeRandomFile(path.join(src, 'weights.bin'), 2 * SEGMENT_SIZE + 9, rand)],
      ['diff', async () => fsp.writeFile(path.join(src, 'new.txt'), 'new')],
    ] as const) {
      await change();
      const r = await ok(lifeboat([...repoArgs, '--json', 'backup', src, '--type', type], { env: e }), `backup ${type}`);
      points.push({ id: r.json().id, tree: await snapshotTree(src) });
    }
    await ok(lifeboat([...repoArgs, 'verify', '--read-data'], { env: e }), 'verify');
    for (const p of points) {
      const target = path.join(work, `s3-restore-${p.id}`);
      await ok(lifeboat([...repoArgs, 'restore', p.id, '--target', target], { env: e }), `restore ${p.id}`);
      assert.equal(compareSnapshots(p.tree, await snapshotTree(path.join(target, 'models'))), undefined);
    }
    const wrong = await lifeboat([...repoArgs, 'list'], { env: { ...server.env, ...env('nope') } });
    assert.equal(wrong.code, 2, wrong.stderr);

    // Damage one stored volume through the S3 API: verify and restore exit 3 naming it.
    const { S3Client, GetObjectCommand, PutObjectCommand } = await import('@aws-sdk/client-s3');
    const sdk = new S3Client({
      endpoint: server.endpoint,
      region: server.region,
      forcePathStyle: true,
      credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
    });
    try {
      const key = `enc/${volumeOf(points[0]!.id)}`;
      const body = Buffer.from(await (await sdk.send(new GetObjectCommand({ Bucket: bucket, Key: key }))).Body!.transformToByteArray());
      assert.ok(!body.includes(MARKER));
      body[HEADER_SIZE + SEALED + 7]! ^= 2;
      await sdk.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
    } finally {
      sdk.destroy();
    }
    const verify = await lifeboat([...repoArgs, 'verify', '--read-data'], { env: e });
    assert.equal(verify.code, 3);
    assert.ok(verify.stdout.includes(volumeOf(points[0]!.id)), verify.stdout);
    const target = path.join(work, 's3-restore-damaged');
    const restore = await lifeboat([...repoArgs, 'restore', points[0]!.id, '--target', target], { env: e });
    assert.equal(restore.code, 3, restore.stderr);
    assert.match(restore.stderr, /does not authenticate/);
    assert.equal(await exists(target), false);
  });
});

function* chunks(b: Buffer, size: number): Generator<Buffer> {
  for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
  if (b.length === 0) return;
}
