import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Header } from 'tar';
import { lifeboat, runChild } from './helpers/cli.js';
import { exists, smallDeployment } from './helpers/repo.js';
import { encodeDocument } from '../src/format/document.js';
import { crc32, sha256Hex } from '../src/format/checksum.js';

interface CraftedEntry {
  name: string;
  type?: 'File' | 'Link' | 'SymbolicLink' | 'Directory';
  body?: string;
  linkpath?: string;
}

/** A tar archive built header by header, as an attacker would. */
function craftTar(entries: CraftedEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const body = Buffer.from(e.body ?? '');
    const h = new Header({ path: e.name, type: e.type ?? 'File', size: body.length, mode: 0o644, mtime: new Date(0), linkpath: e.linkpath });
    h.encode();
    parts.push(h.block!, body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

interface Setup {
  work: string;
  repo: string;
  id: string;
  manifest: Record<string, any>;
}

async function setup(): Promise<Setup> {
  const d = await smallDeployment();
  const id = (await lifeboat(['--repo', d.repo, '--json', 'backup', d.src])).json().id;
  const raw = JSON.parse(await fsp.readFile(path.join(d.repo, 'points', `${id}.json`), 'utf8'));
  delete raw.checksum;
  return { work: d.work, repo: d.repo, id, manifest: raw };
}

/** Replaces the point's only volume and manifest with crafted ones (valid checksums, hostile content). */
async function plant(s: Setup, volume: Buffer | undefined, edit: (m: Record<string, any>) => void): Promise<void> {
  const m = structuredClone(s.manifest);
  if (volume) {
    const key = m.volumes[0].key as string;
    await fsp.writeFile(path.join(s.repo, ...key.split('/')), volume);
    m.volumes[0].size = volume.length;
    // As a manifest of format 1 records it (the CRC-32 of every byte), which lifeboat still reads.
    m.format = 1;
    delete m.volumes[0].framingCrc32;
    m.volumes[0].crc32 = crc32(volume);
  }
  edit(m);
  await fsp.writeFile(path.join(s.repo, 'points', `${s.id}.json`), encodeDocument(m));
}

function fileEntry(m: Record<string, any>, p: string): Record<string, any> {
  return m.entries.find((e: { path: string }) => e.path === p);
}

async function expectRefused(s: Setup, what: string, pattern: RegExp): Promise<void> {
  const target = path.join(s.work, 'target');
  const r = await lifeboat(['--repo', s.repo, 'restore', s.id, '--target', target]);
  assert.equal(r.code, 3, `${what}: ${r.stderr}`);
  assert.match(r.stderr, pattern, what);
  assert.equal(await exists(target), false, `${what}: no target was created`);
  const outside = (await fsp.readdir(s.work)).filter((n) => !['models', 'repo'].includes(n));
  assert.deepEqual(outside, [], `${what}: nothing was written outside the target`);
  assert.equal(await exists('/tmp/lifeboat-evil'), false);
}

test('archive entries with .. or absolute names are refused with exit 3', async () => {
  const s = await setup();
  const body = '{"vocab_size": 32000, "hidden": 64}';
  const sha = sha256Hex(body);
  for (const name of ['../evil', 'models/../../evil', '/tmp/lifeboat-evil']) {
    await plant(s, craftTar([{ name, body }]), (m) => {
      const e = fileEntry(m, 'config.json');
      e.ref = { point: s.id, volume: 0, entry: 0 };
      e.sha256 = sha;
      e.size = body.length;
      m.entries = [e];
    });
    await expectRefused(s, `entry ${name}`, /unsafe/);
  }
  // An unsafe entry is refused even when no file of the point refers to it.
  await plant(s, craftTar([{ name: 'models/config.json', body }, { name: '../evil', body: 'x' }]), (m) => {
    const e = fileEntry(m, 'config.json');
    Object.assign(e, { ref: { point: s.id, volume: 0, entry: 0 }, sha256: sha, size: body.length });
    m.entries = [e];
  });
  await expectRefused(s, 'unreferenced ../evil', /unsafe/);
  const v = await lifeboat(['--repo', s.repo, '--json', 'verify', '--read-data']);
  assert.equal(v.code, 3);
  assert.ok(v.json().problems.some((p: { kind: string }) => p.kind === 'unsafe-entry'));
  await fsp.rm(s.work, { recursive: true, force: true });
});

test('hard links and links in archives are refused', async () => {
  const s = await setup();
  await plant(s, craftTar([{ name: 'models/config.json', type: 'Link', linkpath: '/etc/passwd' }]), (m) => {
    const e = fileEntry(m, 'config.json');
    e.ref = { point: s.id, volume: 0, entry: 0 };
    m.entries = [e];
  });
  await expectRefused(s, 'hard link entry', /type Link/);
  await fsp.rm(s.work, { recursive: true, force: true });
});

test('manifest paths that are absolute, contain .., or lead through a symlink are refused', async () => {
  const s = await setup();
  const cases: [string, (m: Record<string, any>) => void, RegExp][] = [
    ['path with ..', (m) => (fileEntry(m, 'config.json').path = '../escape.json'), /'\.\.'/],
    ['nested ..', (m) => (fileEntry(m, 'config.json').path = 'tok/../../escape.json'), /'\.\.'/],
    ['absolute path', (m) => (fileEntry(m, 'config.json').path = '/tmp/lifeboat-evil'), /absolute/],
    ['unsafe source name', (m) => {
      m.sources[0].name = '..';
      for (const e of m.entries) e.source = '..';
    }, /unsafe source/],
    [
      'write through a symlink',
      (m) => {
        const dir = fileEntry(m, 'tok');
        Object.assign(dir, { type: 'symlink', target: 'tok-real', mode: 0o777 });
        m.entries.push({ ...dir, path: 'tok-real', type: 'dir', mode: 0o755, target: undefined });
      },
      /parent .* is a symlink/,
    ],
    [
      // No entry for tok/sub: the nearest ancestor the manifest lists is the link, two levels up.
      'write through a symlink further up',
      (m) => {
        const dir = fileEntry(m, 'tok');
        Object.assign(dir, { type: 'symlink', target: 'tok-real', mode: 0o777 });
        m.entries.push({ ...dir, path: 'tok-real', type: 'dir', mode: 0o755, target: undefined });
        for (const e of m.entries) if (e.path.startsWith('tok/')) e.path = `tok/sub/${e.path.slice(4)}`;
      },
      /tok\/sub\/.*: its parent models\/tok is a symlink/,
    ],
    [
      'symlink that escapes',
      (m) => m.entries.push({ source: 'models', path: 'escape', type: 'symlink', mode: 0o777, mtimeNs: '0', size: 0, target: '../../../etc' }),
      /leads outside/,
    ],
    ['absolute symlink', (m) => m.entries.push({ source: 'models', path: 'abs', type: 'symlink', mode: 0o777, mtimeNs: '0', size: 0, target: '/etc/passwd' }), /leads outside/],
    [
      'symlink that escapes through another one',
      (m) => {
        const link = { source: 'models', type: 'symlink', mode: 0o777, mtimeNs: '0', size: 0 };
        m.entries.push({ ...link, path: 'tok/s', target: '..' }, { ...link, path: 'up', target: 'tok/s/../..' });
      },
      /refusing symlink models\/up .* leads outside/,
    ],
  ];
  for (const [what, edit, pattern] of cases) {
    await plant(s, undefined, (m) => {
      edit(m);
      m.entries = JSON.parse(JSON.stringify(m.entries));
    });
    await expectRefused(s, what, pattern);
    // verify finds what restore refuses, without reading any data.
    const v = await lifeboat(['--repo', s.repo, '--json', 'verify']);
    assert.equal(v.code, 3, `${what}: verify: ${v.stdout}`);
    const found = v.json().problems.find((p: { kind: string }) => p.kind === 'unsafe-entry');
    assert.ok(found, `${what}: verify reports it`);
    assert.match(found.detail, pattern, what);
  }
  await fsp.rm(s.work, { recursive: true, force: true });
});

test('a point with a link that escapes is still restored in part: a restore whose --include leaves the link out succeeds', async () => {
  const s = await setup();
  await plant(s, undefined, (m) => {
    m.entries.push({ source: 'models', path: 'escape', type: 'symlink', mode: 0o777, mtimeNs: '0', size: 0, target: '/etc' });
  });
  const whole = await lifeboat(['--repo', s.repo, 'restore', s.id, '--target', path.join(s.work, 'whole')]);
  assert.equal(whole.code, 3, whole.stderr);
  assert.match(whole.stderr, /refusing symlink models\/escape .* leads outside the restored tree\n {2}restore the rest with --include/);
  const target = path.join(s.work, 'part');
  const part = await lifeboat(['--repo', s.repo, 'restore', s.id, '--target', target, '--include', 'models/config.json']);
  assert.equal(part.code, 0, part.stderr);
  assert.equal(await fsp.readFile(path.join(target, 'models', 'config.json'), 'utf8'), await fsp.readFile(path.join(s.work, 'models', 'config.json'), 'utf8'));
  assert.equal(await exists(path.join(target, 'models', 'escape')), false);
  await fsp.rm(s.work, { recursive: true, force: true });
});

test('a manifest that does not match its schema is an integrity error, not a crash', async () => {
  const s = await setup();
  await plant(s, undefined, (m) => {
    m.entries[0].size = -5;
  });
  const r = await lifeboat(['--repo', s.repo, 'restore', s.id, '--target', path.join(s.work, 'target')]);
  assert.equal(r.code, 3);
  assert.match(r.stderr, /malformed at entries\.0\.size/);
  assert.doesNotMatch(r.stderr, /at .*\.js:\d+/, 'no stack trace');
  await fsp.rm(s.work, { recursive: true, force: true });
});

test('a document larger than any lifeboat writes is refused before it is read (exit 3)', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const full = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'full']);
  assert.equal(full.code, 0, full.stderr);
  // Sparse: 600 MiB that take no disk space, and would take at least as much memory to read.
  await fsp.truncate(path.join(d.repo, 'points', `${full.json().id}.json`), 600 << 20);
  const before = process.memoryUsage().rss;
  const show = await lifeboat(['--repo', d.repo, 'show', 'latest']);
  assert.equal(show.code, 3, show.stderr);
  assert.match(show.stderr, /larger than the 512 MiB a document may have/);
  assert.ok(process.memoryUsage().rss - before < 256 << 20, 'the document was not read into memory');
});

test('a repository config or pin larger than any lifeboat writes is refused before it is read (exit 3 for the config)', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const full = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'full']);
  assert.equal(full.code, 0, full.stderr);
  const id = full.json().id;
  assert.equal((await lifeboat(['--repo', d.repo, 'pin', id, '--reason', 'keep'])).code, 0);
  const config = path.join(d.repo, 'config.json');
  const original = await fsp.readFile(config);
  // Sparse, 20 MiB: read, it was found damaged only once it was held in memory, and then as not JSON.
  await fsp.truncate(config, 20 << 20);
  const list = await lifeboat(['--repo', d.repo, 'list']);
  assert.equal(list.code, 3, list.stderr);
  assert.match(list.stderr, /config\.json is larger than the 1 MiB a document of its kind may have/);
  await fsp.writeFile(config, original);
  await fsp.truncate(path.join(d.repo, 'pins', `${id}.json`), 20 << 20);
  const pinned = await lifeboat(['--repo', d.repo, '--json', 'list']);
  assert.equal(pinned.code, 0, pinned.stderr);
  assert.match(pinned.json()[0].pinReason, /its pin document does not read: .*larger than the 1 MiB a document of its kind may have/);
});

test('a manifest or summary whose volume key leaves the data of the repository is damaged (exit 3), never a key handed to storage', async () => {
  const s = await setup();
  for (const key of ['a/../../b', '/etc/passwd', 'data/../config.json', 'config.json', 'data//v1.tar', 'data/x\0.tar']) {
    await plant(s, undefined, (m) => {
      m.volumes[0].key = key;
    });
    await expectRefused(s, `volume key ${JSON.stringify(key)}`, /malformed at volumes\.0\.key/);
    const verify = await lifeboat(['--repo', s.repo, 'verify']);
    assert.equal(verify.code, 3, `verify, volume key ${JSON.stringify(key)}: ${verify.stderr}`);
  }
  await plant(s, undefined, () => {});
  const summaryFile = path.join(s.repo, 'summaries', `${s.id}.json`);
  const summary = JSON.parse(await fsp.readFile(summaryFile, 'utf8'));
  delete summary.checksum;
  summary.volumes = ['a/../../b'];
  await fsp.writeFile(summaryFile, encodeDocument(summary));
  for (const args of [['list'], ['prune', '--keep-full', '1', '--dry-run'], ['verify']]) {
    const r = await lifeboat(['--repo', s.repo, ...args]);
    assert.ok([0, 3].includes(r.code ?? -1), `${args.join(' ')} with a damaged summary: exit ${r.code}: ${r.stderr}`);
    assert.doesNotMatch(r.stderr, /invalid object key/);
  }
  await fsp.rm(s.work, { recursive: true, force: true });
});

test('a document that nests deeper, or holds more values for its size, than any lifeboat writes is damaged (exit 3) and is not parsed', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const full = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'full']);
  assert.equal(full.code, 0, full.stderr);
  const config = path.join(d.repo, 'config.json');
  const original = await fsp.readFile(config);
  // 100,000 levels deep, with a checksum to check: serialising it again to do so overflowed the stack (exit 1).
  await fsp.writeFile(config, `{"format":${'['.repeat(100_000)}${']'.repeat(100_000)},"checksum":"sha256:${'0'.repeat(64)}"}`);
  const deep = await lifeboat(['--repo', d.repo, 'list']);
  assert.equal(deep.code, 3, deep.stderr);
  assert.match(deep.stderr, /repository config config\.json is damaged: it nests more than 64 levels deep/);
  await fsp.writeFile(config, original);
  // Empty arrays, three bytes apiece, with a checksum that matches: parsed, each took 15 times its bytes of memory.
  const manifest = path.join(d.repo, 'points', `${full.json().id}.json`);
  await fsp.writeFile(manifest, encodeDocument({ format: 2, entries: Array.from({ length: 300_000 }, () => []) }));
  for (const args of [['show', 'latest'], ['verify']]) {
    const r = await lifeboat(['--repo', d.repo, ...args]);
    assert.equal(r.code, 3, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stdout + r.stderr, /is damaged: it holds more objects, arrays or values for its \d+ bytes than any document lifeboat writes/, args.join(' '));
  }
});

test('a repository lock of many tiny values is found unreadable without being parsed, in bounded memory', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  // 30 MB of empty arrays: parsed, they took some 450 MB, in every command that looked at the lock.
  await fsp.mkdir(path.join(d.repo, 'locks'), { recursive: true });
  await fsp.writeFile(path.join(d.repo, 'locks', 'lock.json'), `{"host":[${'[],'.repeat(10_000_000)}[]]}`);
  const rssFile = path.join(d.work, 'rss');
  const preload = path.join(path.dirname(fileURLToPath(import.meta.url)), 'helpers', 'max-rss.js');
  const backup = await runChild(['--repo', d.repo, 'backup', d.src], { env: { NODE_OPTIONS: `--import ${preload}`, MAX_RSS_FILE: rssFile } });
  assert.equal(backup.code, 0, backup.stderr);
  assert.match(backup.stderr, /took over the repository lock, whose document was unreadable/);
  const mib = Number(await fsp.readFile(rssFile, 'utf8')) / 1024;
  assert.ok(mib < 200, `peak RSS ${mib.toFixed(0)} MiB`);
});
