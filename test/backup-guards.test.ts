import { test } from 'node:test';
import assert from 'node:assert/strict';
import { symlinkSync, unlinkSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { tempDir } from './helpers/tree.js';
import { backup } from '../src/core/backup.js';
import { Repository } from '../src/core/repository.js';
import { LocalStorage } from '../src/storage/local.js';

test('a source that held files in the newest point and is empty now (a volume not mounted) is refused unless --allow-empty', async () => {
  const work = await tempDir();
  const repo = path.join(work, 'repo');
  // Its name ends with a space, which the message quotes so that it is seen.
  const models = path.join(work, 'models ');
  const serving = path.join(work, 'serving');
  await fsp.mkdir(path.join(models, 'llama'), { recursive: true });
  await fsp.mkdir(serving);
  await fsp.writeFile(path.join(serving, 'server.yaml'), 'port: 8000\n');
  const sources = ['--source', `models=${models}`, '--source', `serving=${serving}`];
  const backup = (...args: string[]) => lifeboat(['--repo', repo, '--json', 'backup', ...sources, ...args]);
  const points = async () => (await lifeboat(['--repo', repo, '--json', 'list'])).json().length as number;
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);

  // Empty from the first point on: nothing to compare with, so it is taken.
  const first = await backup();
  assert.equal(first.code, 0, first.stderr);
  await fsp.writeFile(path.join(models, 'llama', 'model.safetensors'), 'weights');
  await fsp.symlink('model.safetensors', path.join(models, 'llama', 'current'));
  assert.equal((await backup()).code, 0);

  // The volume behind models/ did not mount: its mount point holds an empty directory at most.
  await fsp.rm(path.join(models, 'llama'), { recursive: true });
  await fsp.mkdir(path.join(models, 'lost+found'));
  for (const args of [[], ['--type', 'full'], ['--type', 'diff'], ['--dry-run']]) {
    const refused = await backup(...args);
    assert.equal(refused.code, 1, `${args.join(' ')}: ${refused.stderr}`);
    assert.match(refused.stderr, new RegExp(`source models is empty: "${models}" holds no files, where the newest point \\S+ has 2 files; is a volume not mounted\\?\\n {2}nothing was stored; if the source is meant to be empty now, run again with --allow-empty`));
    assert.equal(refused.json().ok, false);
  }
  assert.equal(await points(), 2, 'no point was added');

  const allowed = await backup('--allow-empty');
  assert.equal(allowed.code, 0, allowed.stderr);
  assert.equal(allowed.json().removed, 2);
  // Compared with the newest point, which is empty now.
  assert.equal((await backup()).code, 0);
  assert.equal(await points(), 4);
  await fsp.rm(work, { recursive: true, force: true });
});

test('a source that is not there, or a link to nothing (a volume not mounted), is a set-up error (exit 2) that says which, before anything is stored', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./models\n');
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const missing = await lifeboat(['backup'], { cwd: work });
  assert.equal(missing.code, 2, missing.stderr);
  assert.equal(missing.stderr, `lifeboat: source models: ${path.join(work, 'models')} does not exist\n  check the path, and that its volume is mounted\n`);
  symlinkSync('/mnt/lifeboat-not-mounted/models', path.join(work, 'models'));
  const dangling = await lifeboat(['backup'], { cwd: work });
  assert.equal(dangling.code, 2, dangling.stderr);
  assert.match(dangling.stderr, /source models: \S+models is a symbolic link to \/mnt\/lifeboat-not-mounted\/models, which does not exist/);
  assert.deepEqual((await lifeboat(['--json', 'list'], { cwd: work })).json(), []);
});

test('a backup on a host whose clock is behind the newest point gets an id after it, with a warning; --strict refuses it', async () => {
  const work = await tempDir();
  const repo = path.join(work, 'repo');
  const models = path.join(work, 'models');
  await fsp.mkdir(models);
  await fsp.writeFile(path.join(models, 'w.bin'), 'weights');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  // The newest point was taken by a host whose clock ran an hour ahead.
  const ahead = new Date(Date.now() + 3_600_000);
  const storage = new LocalStorage(repo);
  const future = await backup(await Repository.open(storage), { sources: [{ name: 'models', path: models }], type: 'full', now: () => ahead });
  await storage.close();
  const warning = new RegExp(`this host's clock says \\S+, before the newest point ${future.id} \\(started ${ahead.toISOString().replace(/\./g, '\\.')}\\); the new point's id is set just after it`);

  const strict = await lifeboat(['--repo', repo, 'backup', models, '--strict']);
  assert.equal(strict.code, 3, strict.stderr);
  assert.match(strict.stderr, warning);
  await fsp.writeFile(path.join(models, 'w.bin'), 'weights, retrained');
  const taken = await lifeboat(['--repo', repo, '--json', 'backup', models]);
  assert.equal(taken.code, 0, taken.stderr);
  assert.match(taken.stderr, warning);
  const ids = (await lifeboat(['--repo', repo, '--json', 'list'])).json().map((p: { id: string }) => p.id);
  assert.deepEqual(ids, [future.id, taken.json().id], 'in the order they were taken');
  assert.equal(taken.json().parent, future.id);
  assert.equal(taken.json().changed, 1);
  const latest = path.join(work, 'latest');
  assert.equal((await lifeboat(['--repo', repo, 'restore', 'latest', '--target', latest])).code, 0);
  assert.equal(await fsp.readFile(path.join(latest, 'models', 'w.bin'), 'utf8'), 'weights, retrained');
  await fsp.rm(work, { recursive: true, force: true });
});

test('a source under a link that a failover switches during the backup is read from one slot, the one linked when it began', async () => {
  const work = await tempDir();
  const repo = path.join(work, 'repo');
  // /srv/serving/current/models, with current -> slots/a; slot b has other content and one more file.
  for (const [slot, extra] of [['a', []], ['b', ['models/shards/new.bin']]] as const) {
    for (const file of ['models/config.json', 'models/shards/w.bin', ...extra]) {
      await fsp.mkdir(path.dirname(path.join(work, 'slots', slot, file)), { recursive: true });
      await fsp.writeFile(path.join(work, 'slots', slot, file), `${slot}:${file}`);
    }
  }
  const current = path.join(work, 'current');
  await fsp.symlink(path.join('slots', 'a'), current);
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const storage = new LocalStorage(repo);
  let switched = false;
  const taken = await backup(await Repository.open(storage), {
    sources: [{ name: 'models', path: path.join(current, 'models') }],
    type: 'full',
    reporter: {
      progress: () => {
        // Right after the scan's first directory: the link moves to the other slot, as a failover does.
        if (switched) return;
        switched = true;
        unlinkSync(current);
        symlinkSync(path.join('slots', 'b'), current);
      },
    },
  });
  await storage.close();
  assert.ok(switched);
  const restored = path.join(work, 'restored');
  assert.equal((await lifeboat(['--repo', repo, 'restore', taken.id, '--target', restored])).code, 0);
  const files: string[] = [];
  for (const f of await fsp.readdir(path.join(restored, 'models'), { recursive: true })) {
    const abs = path.join(restored, 'models', f);
    if ((await fsp.stat(abs)).isFile()) files.push(`${f}=${await fsp.readFile(abs, 'utf8')}`);
  }
  assert.deepEqual(files.sort(), ['config.json=a:models/config.json', 'shards/w.bin=a:models/shards/w.bin']);
  const shown = await lifeboat(['--repo', repo, 'show', taken.id]);
  assert.match(shown.stdout, new RegExp(`sources: models=${current}/models`), 'the path as given is recorded');
  await fsp.rm(work, { recursive: true, force: true });
});
