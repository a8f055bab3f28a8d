import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { compareSnapshots, listFiles, prng, seedFromEnv, snapshotTree, tempDir, writeRandomFile } from './helpers/tree.js';

/** A repository and a source `models/` to fill; `backup` takes an incremental and gives its JSON. */
async function setUp(t: TestContext) {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed}`);
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const repo = path.join(work, 'repo');
  const models = path.join(work, 'models');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const backup = async () => {
    const run = await lifeboat(['--repo', repo, '--json', 'backup', models]);
    assert.equal(run.code, 0, run.stderr);
    return run.json();
  };
  const dryRun = async () => {
    const run = await lifeboat(['--repo', repo, '--json', 'backup', models, '--dry-run']);
    assert.equal(run.code, 0, run.stderr);
    return run.json();
  };
  const restoresAs = async (expected: Awaited<ReturnType<typeof snapshotTree>>) => {
    const target = path.join(work, 'restored');
    await fsp.rm(target, { recursive: true, force: true });
    const restored = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target]);
    assert.equal(restored.code, 0, restored.stderr);
    assert.equal(compareSnapshots(expected, await snapshotTree(path.join(target, 'models'))), undefined);
  };
  // Files written just before a backup are compared anyway (racy); old ones are trusted by their stat alone.
  const age = async () => {
    const anHourAgo = new Date(Math.floor(Date.now() / 1000) * 1000 - 3600_000);
    for (const file of await listFiles(models)) await fsp.utimes(file, anHourAgo, anHourAgo);
  };
  return { rand: prng(seed), work, repo, models, backup, dryRun, restoresAs, age };
}

test('files copied with their times kept (a failover\'s new slot, cp -a, a remount) are read and compared, not stored again; one whose bytes differ is stored', async (t) => {
  const { rand, work, models, backup, dryRun, restoresAs, age } = await setUp(t);
  await fsp.mkdir(path.join(models, 'llama'), { recursive: true });
  for (let i = 0; i < 4; i++) await writeRandomFile(path.join(models, 'llama', `shard-${i}.safetensors`), 1 << 20, rand);
  await fsp.writeFile(path.join(models, 'llama', 'config.json'), '{"vocab_size": 32000}\n');
  await age();
  const full = await backup();

  // The same files under the same names, with their sizes and times, but new inodes.
  const copy = path.join(work, 'copy');
  execFileSync('cp', ['-a', models, copy]);
  await fsp.rm(models, { recursive: true });
  await fsp.rename(copy, models);
  // A dry run reads and compares them too, and so says what the backup then does.
  const planned = await dryRun();
  assert.deepEqual([planned.changed, planned.storedBytes], [0, 0], 'the dry run foresees nothing to store');
  const copied = await backup();
  assert.deepEqual([copied.added, copied.changed, copied.removed], [0, 0, 0]);
  assert.equal(copied.storedBytes, 0, `stored ${copied.storedBytes} bytes of files it already had`);

  // A file replaced by other bytes of the same size, its mtime set back: only its inode and ctime tell.
  const shard = path.join(models, 'llama', 'shard-2.safetensors');
  const replacement = path.join(work, 'replacement');
  await writeRandomFile(replacement, 1 << 20, rand);
  // touch -r copies the times to the nanosecond, as utimes from JavaScript cannot.
  execFileSync('touch', ['-r', shard, replacement]);
  const before = await fsp.stat(shard, { bigint: true });
  await fsp.rename(replacement, shard);
  const after = await fsp.stat(shard, { bigint: true });
  assert.deepEqual([after.size, after.mtimeNs], [before.size, before.mtimeNs], 'only the inode tells');
  const expected = await snapshotTree(models);
  const plannedReplace = await dryRun();
  assert.deepEqual([plannedReplace.changed, plannedReplace.storedBytes], [1, 1 << 20], 'the dry run foresees the replaced file');
  const replaced = await backup();
  assert.equal(replaced.changed, 1);
  assert.ok(replaced.storedBytes >= 1 << 20 && replaced.storedBytes < 2 << 20, `stored ${replaced.storedBytes} bytes for one changed 1 MiB file`);

  await restoresAs(expected);
  assert.notEqual(full.id, replaced.id);
});

test('a model directory renamed or rotated (current/ → previous/) is compared by inode with its old place and not stored again; swapped files keep their own bytes', async (t) => {
  const { rand, repo, models, backup, restoresAs, age } = await setUp(t);
  await fsp.mkdir(path.join(models, 'current'), { recursive: true });
  for (let i = 0; i < 3; i++) await writeRandomFile(path.join(models, 'current', `shard-${i}.safetensors`), 1 << 20, rand);
  await writeRandomFile(path.join(models, 'current', 'a.bin'), 64 << 10, rand);
  await writeRandomFile(path.join(models, 'current', 'b.bin'), 64 << 10, rand);
  await age();
  await backup();

  // The deployed version is rotated aside and a new one, sharing nothing, comes in; two files trade names.
  await fsp.rename(path.join(models, 'current'), path.join(models, 'previous'));
  await fsp.mkdir(path.join(models, 'current'));
  await fsp.writeFile(path.join(models, 'current', 'config.json'), '{"version": 2}\n');
  const swap = path.join(models, 'previous', 'swap.tmp');
  await fsp.rename(path.join(models, 'previous', 'a.bin'), swap);
  await fsp.rename(path.join(models, 'previous', 'b.bin'), path.join(models, 'previous', 'a.bin'));
  await fsp.rename(swap, path.join(models, 'previous', 'b.bin'));
  const expected = await snapshotTree(models);
  const rotated = await backup();
  assert.ok(rotated.storedBytes < 64 << 10, `stored ${rotated.storedBytes} bytes for a rename and one small new file`);

  await restoresAs(expected);
  assert.equal((await lifeboat(['--repo', repo, 'verify', '--read-data'])).code, 0);
});
