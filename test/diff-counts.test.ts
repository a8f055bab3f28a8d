import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { pick, prng, seedFromEnv, tempDir, writeRandomFile } from './helpers/tree.js';

interface Counts {
  added: number;
  changed: number;
  removed: number;
}

async function workWithRepo(t: { after(fn: () => Promise<void>): void }): Promise<{ src: string; repo: string }> {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  return { src, repo };
}

/** The backup's counts, and what diff says of the same two points, in --json and in its first text line. */
async function backupAndDiff(repo: string, src: string, type = 'incr'): Promise<{ backup: Counts; json: { counts: Counts; directories: Counts; added: string[]; removed: string[]; changed: { path: string; what: string[] }[] }; text: string }> {
  const dry = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', type, '--dry-run']);
  assert.equal(dry.code, 0, dry.stderr);
  const r = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', type]);
  assert.equal(r.code, 0, r.stderr);
  const b = r.json();
  const counted = (x: Record<string, unknown>) => [x.files, x.bytes, x.added, x.changed, x.removed];
  assert.deepEqual(counted(dry.json()), counted(b), 'the dry run counts what the backup then counts');
  const json = await lifeboat(['--repo', repo, '--json', 'diff', b.parent, b.id]);
  assert.equal(json.code, 0, json.stderr);
  const text = await lifeboat(['--repo', repo, 'diff', b.parent, b.id]);
  assert.equal(text.code, 0, text.stderr);
  return { backup: { added: b.added, changed: b.changed, removed: b.removed }, json: json.json(), text: text.stdout };
}

const tally = (c: Counts) => `${c.added} added, ${c.changed} changed, ${c.removed} removed`;

test('diff counts files and links as the backup of the same points does, directories apart, and says what a path whose type changed was and is', async (t) => {
  const { src, repo } = await workWithRepo(t);
  await fsp.mkdir(path.join(src, 'logs'));
  await fsp.writeFile(path.join(src, 'logs', 'a.log'), 'log');
  await fsp.writeFile(path.join(src, 'tokenizer.json'), '{}');
  await fsp.writeFile(path.join(src, 'weights.bin'), 'weights');
  assert.equal((await lifeboat(['--repo', repo, 'backup', src, '--type', 'full'])).code, 0);
  // The logs directory goes, a new version directory comes with one file, and a file becomes a directory.
  await fsp.rm(path.join(src, 'logs'), { recursive: true });
  await fsp.mkdir(path.join(src, 'v2'));
  await fsp.writeFile(path.join(src, 'v2', 'weights.bin'), 'weights 2');
  await fsp.rm(path.join(src, 'tokenizer.json'));
  await fsp.mkdir(path.join(src, 'tokenizer.json'));
  const { backup, json, text } = await backupAndDiff(repo, src);
  assert.deepEqual(backup, { added: 1, changed: 0, removed: 2 }, 'v2/weights.bin added; logs/a.log and the file tokenizer.json removed');
  assert.deepEqual(json.counts, backup, 'diff --json counts what the backup counted');
  assert.deepEqual(json.directories, { added: 2, changed: 0, removed: 1 });
  assert.deepEqual(json.added, ['models/v2', 'models/v2/weights.bin']);
  assert.deepEqual(json.removed, ['models/logs', 'models/logs/a.log']);
  assert.deepEqual(json.changed, [{ path: 'models/tokenizer.json', what: ['type'] }]);
  const lines = text.trimEnd().split('\n');
  assert.match(lines[0]!, / → .*: 1 added, 0 changed, 2 removed \(directories: 2 added, 0 changed, 1 removed\)$/);
  assert.ok(lines.includes('M models/tokenizer.json  (type: file → directory)'), text);

  // A file replaced by a symbolic link is a change of a file or link, counted as one.
  await fsp.rm(path.join(src, 'weights.bin'));
  await fsp.symlink('v2/weights.bin', path.join(src, 'weights.bin'));
  const link = await backupAndDiff(repo, src);
  assert.deepEqual(link.backup, { added: 0, changed: 1, removed: 0 });
  assert.deepEqual(link.json.counts, link.backup);
  assert.match(link.text, /: 0 added, 1 changed, 0 removed\nM models\/weights\.bin {2}\(type: file → symbolic link\)\n?$/);
});

test('a file that changed exclude patterns left out of the newer point is listed as removed, and diff says the patterns changed', async (t) => {
  const { src, repo } = await workWithRepo(t);
  await fsp.mkdir(path.join(src, 'logs'));
  await fsp.writeFile(path.join(src, 'logs', 'serve.log'), 'log');
  await fsp.writeFile(path.join(src, 'weights.bin'), 'weights');
  const first = (await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'full', '--exclude', '*.tmp'])).json();
  const second = (await lifeboat(['--repo', repo, '--json', 'backup', src, '--exclude', '*.tmp', '--exclude', '/logs'])).json();
  assert.deepEqual([second.added, second.changed, second.removed], [0, 0, 1]);
  const text = await lifeboat(['--repo', repo, 'diff', first.id, second.id]);
  assert.equal(text.code, 0, text.stderr);
  assert.deepEqual(text.stdout.trimEnd().split('\n').slice(1), ['exclude patterns of models changed: *.tmp → *.tmp /logs', '- models/logs', '- models/logs/serve.log']);
  const json = (await lifeboat(['--repo', repo, '--json', 'diff', first.id, second.id])).json();
  assert.deepEqual(json.excludes, [{ source: 'models', from: ['*.tmp'], to: ['*.tmp', '/logs'] }]);
  // The same patterns in another order leave out the same paths: nothing to say.
  const third = (await lifeboat(['--repo', repo, '--json', 'backup', src, '--exclude', '/logs', '--exclude', '*.tmp'])).json();
  const same = await lifeboat(['--repo', repo, 'diff', second.id, third.id]);
  assert.equal(same.stdout.trimEnd(), `${second.id} → ${third.id}: 0 added, 0 changed, 0 removed`);
  const none = (await lifeboat(['--repo', repo, '--json', 'backup', src])).json();
  assert.match((await lifeboat(['--repo', repo, 'diff', third.id, none.id])).stdout, /^exclude patterns of models changed: \/logs \*\.tmp → none$/m);
});

test('a dry run counts the names of a hard-linked file as the backup does: unchanged ones as unchanged, and a new one stored once', async (t) => {
  const { src, repo } = await workWithRepo(t);
  await fsp.writeFile(path.join(src, 'shard-1.bin'), 'shard');
  await fsp.link(path.join(src, 'shard-1.bin'), path.join(src, 'shard-1-copy.bin'));
  assert.equal((await lifeboat(['--repo', repo, 'backup', src, '--type', 'full'])).code, 0);
  const unchanged = await lifeboat(['--repo', repo, '--json', 'backup', src, '--dry-run']);
  assert.deepEqual([unchanged.json().added, unchanged.json().changed, unchanged.json().removed, unchanged.json().storedBytes], [0, 0, 0, 0]);
  await writeRandomFile(path.join(src, 'shard-2.bin'), 1 << 20, prng(7));
  await fsp.link(path.join(src, 'shard-2.bin'), path.join(src, 'shard-2-copy.bin'));
  const dry = await lifeboat(['--repo', repo, 'backup', src, '--dry-run']);
  assert.match(dry.stdout, /entries: 2 added, 0 changed, 0 removed\n {2}would store 1\.00 MiB /);
  const { backup, json } = await backupAndDiff(repo, src);
  assert.deepEqual(backup, { added: 2, changed: 0, removed: 0 });
  assert.deepEqual(json.counts, backup);
});

/** Files, links, empty directories, hard links, and then changes of every kind a deployment sees. */
async function mutate(src: string, rand: () => number, round: number): Promise<string[]> {
  const did: string[] = [];
  for (let i = 0; i < 6; i++) {
    const all = await walk(src);
    const files = all.filter((e) => e.type === 'file');
    const dirs = all.filter((e) => e.type === 'dir');
    const newName = (parent: string) => path.join(parent, pick(rand, ['w', 'модель', 'ü weights', '重み']) + `-${round}-${i}`);
    const op = pick(rand, ['edit', 'append', 'chmod', 'touch', 'rename', 'rename-dir', 'to-dir', 'to-file', 'to-link', 'hard-link', 'delete', 'add', 'add-dir', 'chmod-dir'] as const);
    const f = files.length ? pick(rand, files).abs : undefined;
    const d = dirs.length ? pick(rand, dirs).abs : undefined;
    if (op === 'edit' && f) {
      // In place, its size and time kept.
      const st = await fsp.stat(f);
      if (st.size > 0) {
        const fh = await fsp.open(f, 'r+');
        await fh.write(Buffer.from([Math.floor(rand() * 256) ^ 0x5a]), 0, 1, 0);
        await fh.close();
        await fsp.utimes(f, st.atime, st.mtime);
      }
    } else if (op === 'append' && f) await fsp.appendFile(f, `more ${round}`);
    else if (op === 'chmod' && f) await fsp.chmod(f, pick(rand, [0o644, 0o600, 0o755]));
    else if (op === 'touch' && f) await fsp.utimes(f, new Date(1e12 + round * 1e6 + i), new Date(1e12 + round * 1e6 + i));
    else if (op === 'rename' && f) await fsp.rename(f, newName(path.dirname(f)));
    else if (op === 'rename-dir' && d) await fsp.rename(d, newName(path.dirname(d)));
    else if (op === 'to-dir' && f) {
      await fsp.rm(f);
      await fsp.mkdir(f);
      await fsp.writeFile(path.join(f, 'inner'), `inner ${round}`);
    } else if (op === 'to-file' && d) {
      await fsp.rm(d, { recursive: true });
      await fsp.writeFile(d, `was a directory ${round}`);
    } else if (op === 'to-link' && f && files.length > 1) {
      const other = pick(rand, files).abs;
      if (other === f) continue;
      await fsp.rm(f);
      await fsp.symlink(path.relative(path.dirname(f), other), f);
    } else if (op === 'hard-link' && f) await fsp.link(f, newName(d ?? src));
    else if (op === 'delete' && f) await fsp.rm(f);
    else if (op === 'add') await writeRandomFile(newName(d ?? src), Math.floor(rand() * 70_000), rand);
    else if (op === 'add-dir') await fsp.mkdir(newName(d ?? src));
    else if (op === 'chmod-dir' && d) await fsp.chmod(d, pick(rand, [0o755, 0o700, 0o750]));
    else continue;
    const on = ['rename-dir', 'to-file', 'chmod-dir'].includes(op) ? d : ['add', 'add-dir'].includes(op) ? (d ?? src) : f;
    did.push(`${op} ${path.relative(src, on!)}`);
  }
  return did;
}

async function walk(dir: string, out: { abs: string; type: 'file' | 'dir' | 'symlink' }[] = []): Promise<{ abs: string; type: 'file' | 'dir' | 'symlink' }[]> {
  for (const d of await fsp.readdir(dir, { withFileTypes: true })) {
    const abs = path.join(dir, d.name);
    const type = d.isDirectory() ? 'dir' : d.isSymbolicLink() ? 'symlink' : 'file';
    out.push({ abs, type });
    if (type === 'dir') await walk(abs, out);
  }
  return out;
}

test('randomized: after any mix of changes, the backup counts what diff of its parent and it counts, in --json and in text', async (t) => {
  const seed = seedFromEnv();
  t.diagnostic(`seed ${seed} (replay with LIFEBOAT_TEST_SEED=${seed})`);
  const rand = prng(seed);
  const { src, repo } = await workWithRepo(t);
  for (let i = 0; i < 5; i++) await fsp.mkdir(path.join(src, `d${i}`, 'sub'), { recursive: true });
  for (let i = 0; i < 20; i++) await writeRandomFile(path.join(src, `d${i % 5}`, i % 2 ? 'sub' : '', `f${i}`), Math.floor(rand() * 70_000), rand);
  await fsp.symlink('d0/f0', path.join(src, 'current'));
  assert.equal((await lifeboat(['--repo', repo, 'backup', src, '--type', 'full'])).code, 0);
  for (const [round, type] of ['incr', 'diff', 'incr', 'incr'].entries()) {
    t.diagnostic(`round ${round} (${type}): ${(await mutate(src, rand, round)).join(', ')}`);
    const { backup, json, text } = await backupAndDiff(repo, src, type);
    assert.deepEqual(json.counts, backup, `round ${round}: diff --json counts what the backup counted`);
    const listed = json.directories.added + json.directories.changed + json.directories.removed + backup.added + backup.changed + backup.removed;
    const swapped = json.changed.filter((c) => c.what.includes('type')).length;
    assert.ok(json.added.length + json.changed.length + json.removed.length <= listed, `round ${round}: every path listed is counted`);
    assert.ok(json.added.length + json.changed.length + json.removed.length + swapped >= listed, `round ${round}: nothing counted that is not listed`);
    const head = text.split('\n')[0]!;
    assert.ok(head.includes(`: ${tally(backup)}`), `round ${round}: ${head}`);
    assert.equal(head.includes('(directories: '), json.directories.added + json.directories.changed + json.directories.removed > 0, head);
  }
});
