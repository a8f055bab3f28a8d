import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { prng, tempDir, writeRandomFile } from './helpers/tree.js';
import { Repository } from '../src/core/repository.js';
import { bucketCount, bucketOf, LEDGER_KEY } from '../src/core/verify-ledger.js';
import { LocalStorage } from '../src/storage/local.js';
import { verify } from '../src/core/verify.js';
import { sleep } from './helpers/processes.js';

interface Volume {
  key: string;
  size: number;
}

/** A repository with small volumes, so one backup writes many of them. */
async function manyVolumes(t: { after(fn: () => Promise<void>): void }) {
  const work = await tempDir('lifeboat-ledger-');
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const repo = path.join(work, 'repo');
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  const storage = new LocalStorage(repo);
  await Repository.init(storage, { volumeSize: 32 << 10 });
  await storage.close();
  const rand = prng(9);
  const backup = async (files: number, tag: string) => {
    for (let i = 0; i < files; i++) await writeRandomFile(path.join(src, `${tag}-${i}.bin`), 40_000 + i, rand);
    const r = await lifeboat(['--repo', repo, '--json', 'backup', src]);
    assert.equal(r.code, 0, r.stderr);
    return r.json().id as string;
  };
  const volumesOf = async (id: string): Promise<Volume[]> => {
    const m = JSON.parse(await fsp.readFile(path.join(repo, 'points', `${id}.json`), 'utf8'));
    return m.volumes.map((v: Volume) => ({ key: v.key, size: v.size }));
  };
  return { work, repo, src, backup, volumesOf };
}

const sum = (vs: Volume[]) => vs.reduce((n, v) => n + v.size, 0);

test('after a full --read-data, --since-verified reads only the new point and the sample, and says how old the oldest verification is', async (t) => {
  const { repo, backup, volumesOf } = await manyVolumes(t);
  const first = await backup(30, 'a');
  const old = await volumesOf(first);
  assert.ok(old.length >= 20, `enough volumes to sample from: ${old.length}`);

  const full = await lifeboat(['--repo', repo, '--json', 'verify', '--read-data']);
  assert.equal(full.code, 0, full.stdout);
  assert.equal(full.json().bytesRead, sum(old));
  const verifiedAt = full.json().oldestVerifiedAt as string;
  assert.ok(Date.parse(verifiedAt) <= Date.now());
  const ledger = JSON.parse(await fsp.readFile(path.join(repo, ...LEDGER_KEY.split('/')), 'utf8'));
  assert.deepEqual(Object.keys(ledger.volumes).sort(), old.map((v) => v.key).sort());

  const second = await backup(4, 'b');
  const added = await volumesOf(second);
  assert.ok(added.length > 0);
  // Run 0 of the default 5 % sample: bucket 0 of 20.
  const sampled = old.filter((v) => bucketOf(v.key, bucketCount(5)) === 0);
  const since = await lifeboat(['--repo', repo, '--json', 'verify', '--read-data', '--since-verified']);
  assert.equal(since.code, 0, since.stdout);
  const doc = since.json();
  assert.equal(doc.bytesRead, sum(added) + sum(sampled));
  assert.equal(doc.volumes.fresh, added.length);
  assert.equal(doc.volumes.sampled, sampled.length);
  assert.equal(doc.volumes.read, added.length + sampled.length);
  assert.equal(doc.volumes.neverVerified, 0);
  assert.ok(sampled.length < old.length);
  assert.equal(doc.oldestVerifiedAt, verifiedAt, 'volumes not re-read keep the time of the first run');

  const text = await lifeboat(['--repo', repo, 'verify', '--since-verified', '--sample', '50']);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /read \d+ of \d+ volume\(s\) \(0 never verified, \d+ as the 1-in-2 sample\)/);
  assert.match(text.stdout, /oldest verification: \d{4}-\d\d-\d\dT/);

  // Structure-only verify neither reads nor records.
  const plain = await lifeboat(['--repo', repo, '--json', 'verify']);
  assert.equal(plain.json().bytesRead, 0);
  assert.equal(plain.json().oldestVerifiedAt, undefined);
});

test('a corrupted old volume is found by --since-verified within ceil(100/PERCENT) runs, and read again until it reads clean', async (t) => {
  const { repo, backup, volumesOf } = await manyVolumes(t);
  const first = await backup(24, 'a');
  assert.equal((await lifeboat(['--repo', repo, 'verify', '--read-data'])).code, 0);
  await backup(2, 'b');
  assert.equal((await lifeboat(['--repo', repo, 'verify', '--since-verified', '--sample', '25'])).code, 0);

  // Flip one byte in the middle of an old volume the sample has not just read.
  const volumes = await volumesOf(first);
  const victim = volumes.find((v) => bucketOf(v.key, 4) === 0) ?? volumes[0]!;
  const file = path.join(repo, ...victim.key.split('/'));
  const bytes = await fsp.readFile(file);
  bytes[Math.floor(bytes.length / 2)]! ^= 0x40;
  await fsp.writeFile(file, bytes);

  let foundAt = 0;
  for (let run = 1; run <= bucketCount(25); run++) {
    const r = await lifeboat(['--repo', repo, '--json', 'verify', '--since-verified', '--sample', '25']);
    if (r.code !== 0) {
      assert.equal(r.code, 3);
      assert.ok(r.json().problems.some((p: { path: string; kind: string }) => p.path === victim.key || p.kind === 'checksum-mismatch'), r.stdout);
      foundAt = run;
      break;
    }
  }
  assert.ok(foundAt > 0, `the damage is found within ${bucketCount(25)} runs`);
  // Runs so far: one before the damage (bucket 0), then buckets 1, 2, 3, 0 …: found exactly when its bucket comes up.
  const bucket = bucketOf(victim.key, 4);
  assert.equal(foundAt, bucket === 0 ? 4 : bucket);
  // A volume that failed is forgotten by the ledger: the next run reads it again, whatever its bucket.
  const next = await lifeboat(['--repo', repo, '--json', 'verify', '--since-verified', '--sample', '25']);
  assert.equal(next.code, 3);
  assert.ok(next.json().volumes.fresh >= 1);
  assert.equal(next.json().volumes.neverVerified, 1);
});

test('--subset reads a random share; flags that do not go together are usage errors', async (t) => {
  const { repo, backup, volumesOf } = await manyVolumes(t);
  const id = await backup(20, 'a');
  const all = await volumesOf(id);
  const subset = await lifeboat(['--repo', repo, '--json', 'verify', '--subset', '30']);
  assert.equal(subset.code, 0, subset.stdout);
  assert.ok(subset.json().bytesRead > 0 && subset.json().bytesRead < sum(all), `read ${subset.json().bytesRead} of ${sum(all)}`);
  assert.equal((await lifeboat(['--repo', repo, 'verify', '--sample', '10'])).code, 2);
  assert.equal((await lifeboat(['--repo', repo, 'verify', '--since-verified', '--subset', '10'])).code, 2);
  assert.equal((await lifeboat(['--repo', repo, 'verify', '--subset', '0'])).code, 2);
});

test("two verify --read-data runs at once (a nightly one beside an operator's of one point) are both recorded: the one that ends last does not write back the record as it found it", async (t) => {
  const { repo, backup, volumesOf } = await manyVolumes(t);
  const first = await backup(3, 'a');
  const second = await backup(3, 'b');
  // The run of the first point reads the record as it starts, and goes on once the other run has written its own.
  let otherDone!: () => void;
  const otherWritten = new Promise<void>((resolve) => (otherDone = resolve));
  let started = false;
  const inner = new LocalStorage(repo);
  const held = new Proxy(inner, {
    get(target, prop) {
      if (prop === 'getDocument') {
        return async (key: string, options?: object) => {
          if (key !== LEDGER_KEY || started) return target.getDocument(key, options);
          started = true;
          const read = target.getDocument(key, options);
          await Promise.allSettled([read, otherWritten]);
          return read;
        };
      }
      const value = Reflect.get(target, prop);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  const repository = await Repository.open(held);
  const firstRun = verify(repository, { point: await repository.manifest(first), readData: true });
  while (!started) await sleep(10);
  const other = await lifeboat(['--repo', repo, '--json', 'verify', second, '--read-data']);
  assert.equal(other.code, 0, other.stderr);
  otherDone();
  assert.equal((await firstRun).ok, true);
  const ledger = JSON.parse(await fsp.readFile(path.join(repo, ...LEDGER_KEY.split('/')), 'utf8'));
  const read = [...new Set([...(await volumesOf(first)), ...(await volumesOf(second))].map((v) => v.key))].sort();
  assert.deepEqual(Object.keys(ledger.volumes).sort(), read);
});
