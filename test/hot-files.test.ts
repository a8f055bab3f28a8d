import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readdirSync, rmSync, symlinkSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { smallDeployment, type SmallDeployment } from './helpers/repo.js';
import { tarBlocks } from './helpers/tar-blocks.js';
import { backup, type BackupResult } from '../src/core/backup.js';
import type { Notice, Progress } from '../src/core/events.js';
import { Repository } from '../src/core/repository.js';
import { scanSource } from '../src/core/scan.js';
import { LocalStorage } from '../src/storage/local.js';
import { prng, writeRandomFile } from './helpers/tree.js';

/** Rewrites random 4 KiB pieces of a file in place, without pause, until killed; says "writing" once started. */
const REWRITER = `
const fs = require('node:fs');
const fd = fs.openSync(process.argv[1], 'r+');
const size = fs.fstatSync(fd).size;
const piece = Buffer.alloc(4096);
let n = 0;
for (;;) {
  piece.fill(n & 0xff);
  fs.writeSync(fd, piece, 0, piece.length, Math.floor(Math.random() * (size - piece.length)));
  if (n++ === 0) process.stdout.write('writing\\n');
}
`;

/** Byte offset of the body of entry `index` (extended headers count with the entry they precede). */
function bodyOffset(volume: Buffer, index: number): number {
  const entry = [...tarBlocks(volume)].filter((b) => b.type !== '' && !b.meta)[index];
  if (!entry) throw new Error(`no entry ${index} in the volume`);
  return entry.body;
}

/** A full backup of the deployment taken while `hot` is rewritten without pause; its point id and manifest. */
async function backupWhileRewriting(d: SmallDeployment, hot: string): Promise<{ id: string; manifest: any }> {
  const writer = spawn(process.execPath, ['-e', REWRITER, hot], { stdio: ['ignore', 'pipe', 'inherit'] });
  let backup;
  try {
    await once(writer.stdout!, 'data');
    backup = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'full']);
  } finally {
    writer.kill('SIGKILL');
    await once(writer, 'exit');
  }
  assert.equal(backup.code, 0, backup.stderr);
  const id: string = backup.json().id;
  return { id, manifest: JSON.parse(await fsp.readFile(path.join(d.repo, 'points', `${id}.json`), 'utf8')) };
}

/**
 * A full backup of the deployment taken in this process; `during` sees its progress reports and
 * says, by returning true, that it has changed the source (it is not called again then).
 */
async function backupChanging(d: SmallDeployment, during: (p: Progress) => boolean, strict = false): Promise<BackupResult> {
  let changed = false;
  const repo = await Repository.open(new LocalStorage(d.repo));
  try {
    return await backup(repo, { sources: [{ name: 'models', path: d.src }], type: 'full', strict, reporter: { progress: (p) => void (changed ||= during(p)) } });
  } finally {
    await repo.storage.close();
    assert.ok(changed, 'the source was changed during the backup');
  }
}

test('a file rewritten while it is read is read again; every stored copy, superseded ones too, is checked by verify --read-data', async () => {
  const d = await smallDeployment();
  const hot = path.join(d.src, 'hot.bin');
  // Large enough that its read spans many scheduler ticks, even on a busy machine.
  await writeRandomFile(hot, 48 << 20, prng(5));
  const { id, manifest } = await backupWhileRewriting(d, hot);
  const hotEntry = manifest.entries.find((e: { path: string }) => e.path === 'hot.bin');
  assert.ok(manifest.superseded?.length >= 1, 'the copies read before the last are listed');
  for (const copy of manifest.superseded) {
    assert.notEqual(copy.entry, hotEntry.ref.entry, 'the copy that counts is not listed as superseded');
    assert.equal(copy.size, 48 << 20);
  }
  assert.equal((await lifeboat(['--repo', d.repo, 'verify', '--read-data'])).code, 0, 'every copy reads back as stored');

  // A superseded copy is never restored, and no entry's SHA-256 covers it: its own listed digest must.
  const copy = manifest.superseded[0];
  const key: string = manifest.volumes[copy.volume].key;
  const file = path.join(d.repo, ...key.split('/'));
  const at = bodyOffset(await fsp.readFile(file), copy.entry) + 1000;
  const fh = await fsp.open(file, 'r+');
  const byte = Buffer.alloc(1);
  await fh.read(byte, 0, 1, at);
  await fh.write(Buffer.from([byte[0]! ^ 0x40]), 0, 1, at);
  await fh.close();
  const v = await lifeboat(['--repo', d.repo, '--json', 'verify', '--read-data']);
  assert.equal(v.code, 3, v.stdout);
  assert.ok(
    v.json().problems.some((p: { path: string; kind: string; detail: string }) => p.path === key && p.kind === 'checksum-mismatch' && /superseded/.test(p.detail)),
    v.stdout,
  );
  const restore = await lifeboat(['--repo', d.repo, 'restore', id, '--target', path.join(d.work, 'out')]);
  assert.equal(restore.code, 0, `the point itself is intact: ${restore.stderr}`);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('a small file rewritten between the scan and its read is noticed, and stored as it is read the second time', async () => {
  const d = await smallDeployment();
  const hot = path.join(d.src, 'hot-config.json');
  await fsp.writeFile(hot, JSON.stringify({ version: 1 }));
  const result = await backupChanging(d, (p) => {
    // Reported once the source's top directory, which holds it, is scanned: the file changes
    // (same size, new mtime) after its stat was taken and before the backup reads it.
    if (p.phase !== 'scan') return false;
    writeFileSync(hot, JSON.stringify({ version: 2 }));
    utimesSync(hot, new Date(), new Date(Date.now() + 5_000));
    return true;
  });
  const manifest = JSON.parse(await fsp.readFile(path.join(d.repo, 'points', `${result.id}.json`), 'utf8'));
  const entry = manifest.entries.find((e: { path: string }) => e.path === 'hot-config.json');
  // Read again in full (not taken from the reference or the first read): the digest is of the new content.
  assert.equal(entry.sha256, createHash('sha256').update(JSON.stringify({ version: 2 })).digest('hex'));
  assert.equal(entry.mtimeNs, (await fsp.stat(hot, { bigint: true })).mtimeNs.toString(), 'its recorded stat is the one it was read with');
  assert.ok(manifest.superseded?.length >= 1, 'the copy read first is listed as superseded');
  assert.equal((await lifeboat(['--repo', d.repo, 'verify', '--read-data'])).code, 0, 'every copy reads back as stored');
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('a file over 64 MiB that changes while it is read is stored once, as read, with a warning, not read again', async () => {
  const d = await smallDeployment();
  const hot = path.join(d.src, 'growing-checkpoint.bin');
  await writeRandomFile(hot, 80 << 20, prng(6));
  const { manifest } = await backupWhileRewriting(d, hot);
  const entry = manifest.entries.find((e: { path: string }) => e.path === 'growing-checkpoint.bin');
  assert.ok(entry, 'the file is in the point');
  assert.equal(manifest.superseded, undefined, 'no copy read before the last: it was read once');
  assert.ok(manifest.warnings?.some((w: { code: string; message: string }) => w.code === 'file-changed-during-read' && /too large to read again/.test(w.message)), JSON.stringify(manifest.warnings));
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('a model file removed after the scan (an old version cleaned up during the backup) is said to have vanished, not to be an invalid model; --strict refuses it for that', async () => {
  for (const strict of [false, true]) {
    const d = await smallDeployment();
    const tokenizer = path.join(d.src, 'tokenizer.json');
    await fsp.writeFile(tokenizer, JSON.stringify({ model: { type: 'BPE', vocab: { a: 0, b: 1 } } }));
    const removed = (p: Progress) => {
      // Reported once the source's top directory, which holds it, is scanned: the scan saw it, the checks will not.
      if (p.phase !== 'scan') return false;
      rmSync(tokenizer);
      return true;
    };
    const outcome = await backupChanging(d, removed, strict).then(
      (result) => ({ warnings: result.warnings.map((w) => `${w.code} ${w.path}`) }),
      (err: Error) => ({ refused: err.message }),
    );
    if (strict) assert.match((outcome as { refused: string }).refused, /refused by --strict: 1 warning\(s\), first: models\/tokenizer\.json file disappeared/);
    else assert.deepEqual(outcome, { warnings: ['file-vanished models/tokenizer.json'] });
    await fsp.rm(d.work, { recursive: true, force: true });
  }
});

test('a file whose write was still going on when the backup opened it (its times set when the write began, so no stat tells) is read once more, and stored whole, not as a mix of both versions', async () => {
  const d = await smallDeployment();
  const hot = path.join(d.src, 'checkpoint.bin');
  const size = 24 << 20;
  const versions = [Buffer.alloc(size, 0x41), Buffer.alloc(size, 0x42)];
  await fsp.writeFile(hot, versions[0]!);
  // The times the file had when the backup opened it; a write in flight then changes its bytes, not its times.
  const times = path.join(d.work, 'times');
  execFileSync('touch', ['-r', hot, times]);
  const result = await backupChanging(d, (p) => {
    // Reported after the first 8 MiB of it are read.
    if (p.phase !== 'backup' || p.current !== 'models/checkpoint.bin' || p.bytesDone < 8 << 20) return false;
    const fd = openSync(hot, 'r+');
    writeSync(fd, versions[1]!, 0, size, 0);
    closeSync(fd);
    execFileSync('touch', ['-r', times, hot]);
    return true;
  });
  const manifest = JSON.parse(await fsp.readFile(path.join(d.repo, 'points', `${result.id}.json`), 'utf8'));
  const entry = manifest.entries.find((e: { path: string }) => e.path === 'checkpoint.bin');
  const digests = versions.map((v) => createHash('sha256').update(v).digest('hex'));
  assert.ok(digests.includes(entry.sha256), 'the stored copy is one of the versions the file had, not a mix of both');
  assert.equal((await lifeboat(['--repo', d.repo, 'verify', '--read-data'])).code, 0, 'every copy reads back as stored');
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('an entry removed after its directory was listed, before it was looked at, is a file that vanished, not an unreadable one', async (t) => {
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'lifeboat-vanish-'));
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const dir = path.join(work, 'src', 'v1');
  await fsp.mkdir(path.join(dir, 'sub'), { recursive: true });
  const names = Array.from({ length: 40 }, (_, i) => `f${i}.json`);
  for (const name of names) writeFileSync(path.join(dir, name), name);
  // A link the scan warns about as it reaches it: a moment between the listing and the rest of its lstats.
  // Its name is tried until the listing puts it before some files (the order is the file system's).
  let trigger = '';
  let listed: string[] = [];
  for (let i = 0; i < 50 && !listed.slice(listed.indexOf(trigger) + 1).some((n) => n.startsWith('f')); i++) {
    if (trigger) rmSync(path.join(dir, trigger));
    trigger = `a-link${i}`;
    symlinkSync(Buffer.from([0x6f, 0xff]), path.join(dir, trigger));
    listed = readdirSync(dir);
  }
  const after = new Set(listed.slice(listed.indexOf(trigger) + 1));
  assert.ok([...after].some((n) => n.startsWith('f')), `nothing listed after the link: ${listed.join(' ')}`);

  const notices: Notice[] = [];
  const scanned = await scanSource({ name: 'models', path: path.join(work, 'src') }, [], {
    notice: (n) => {
      notices.push(n);
      if (n.code !== 'name-not-utf8') return;
      for (const name of names) rmSync(path.join(dir, name));
      rmSync(path.join(dir, 'sub'), { recursive: true });
    },
  });
  assert.deepEqual(notices.filter((n) => n.code === 'unreadable'), []);
  const vanished = new Set(notices.filter((n) => n.code === 'file-vanished').map((n) => n.path));
  const kept = new Set(scanned.entries.map((e) => `models/${e.path}`));
  // Listed before the link: kept as it was looked at (a directory then found gone is recorded empty, and said so).
  for (const name of listed.filter((n) => n !== trigger)) {
    const at = `models/v1/${name}`;
    assert.equal(kept.has(at), !after.has(name), at);
    assert.equal(vanished.has(at), after.has(name) || name === 'sub', at);
  }
  assert.equal(vanished.size, names.filter((n) => after.has(n)).length + 1);
});
