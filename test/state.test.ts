import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import Database from 'better-sqlite3';
import { lifeboat, runChild, spawnLifeboat } from './helpers/cli.js';
import { exists, repoFiles } from './helpers/repo.js';
import { tempDir } from './helpers/tree.js';
import { ROWS_PER_TXN, crashMidTransaction, startWriter } from './helpers/writer.js';
import { integrityCheck } from '../src/state/sqlite.js';
import { captureSources, stateSource } from '../src/state/capture.js';
import { restoreCommand } from '../src/state/command.js';
import { BackupHooks } from '../src/state/hooks.js';
import { runInNamespace, unshare } from './helpers/namespace.js';
import { waitFor } from './helpers/processes.js';

async function makeRepo(work: string): Promise<string> {
  const repo = path.join(work, 'repo');
  const r = await lifeboat(['--repo', repo, 'init']);
  assert.equal(r.code, 0, r.stderr);
  return repo;
}

/** A database with some bulk, so the online copy has pages to copy while the writer runs. */
function seedDatabase(file: string, journalMode: string): void {
  const db = new Database(file);
  db.pragma(`journal_mode = ${journalMode}`);
  db.exec('CREATE TABLE bulk (id INTEGER PRIMARY KEY, data BLOB NOT NULL)');
  const insert = db.prepare('INSERT INTO bulk (data) VALUES (?)');
  db.transaction(() => {
    for (let i = 0; i < 8000; i++) insert.run(Buffer.alloc(1024, i & 0xff));
  })();
  db.close();
}

/** A directory with a repository, a models tree and a registry database in WAL mode, removed after the test. */
async function modelsAndRegistry(t: { after(fn: () => Promise<unknown>): void }): Promise<string> {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await makeRepo(work);
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'config.json'), '{}');
  seedDatabase(path.join(work, 'registry.db'), 'wal');
  return work;
}

for (const journalMode of ['delete', 'wal']) {
  test(`a SQLite database written to during the backup is copied consistently (journal_mode=${journalMode})`, async () => {
    const work = await tempDir();
    const repo = await makeRepo(work);
    const dbFile = path.join(work, 'state', 'registry.db');
    await fsp.mkdir(path.dirname(dbFile));
    seedDatabase(dbFile, journalMode);
    await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ./repo\nsources:\n  registry: { sqlite: ./state/registry.db }\n`);
    const writer = startWriter(dbFile, journalMode);
    try {
      await writer.ready;
      const before = writer.committed();
      const r = await lifeboat(['--json', 'backup', '--type', 'full'], { cwd: work });
      assert.equal(r.code, 0, r.stderr);
      const id = r.json().id as string;
      // Keep writing a moment after, then stop.
      await new Promise((resolve) => setTimeout(resolve, 100));
      const after = await writer.stop();
      assert.ok(after > before, 'the writer kept committing');

      const target = path.join(work, 'restored');
      const restored = await lifeboat(['--repo', repo, 'restore', id, '--target', target]);
      assert.equal(restored.code, 0, restored.stderr);
      const copy = path.join(target, 'registry', 'registry.db');
      assert.equal(integrityCheck(copy), 'ok');
      assert.ok(!(await exists(`${copy}-wal`)), 'the copy is one self-contained file');
      const db = new Database(copy, { readonly: true });
      try {
        assert.equal((db.prepare('SELECT count(*) AS n FROM bulk').get() as { n: number }).n, 8000);
        const groups = db.prepare('SELECT txn, count(*) AS n FROM t GROUP BY txn ORDER BY txn').all() as { txn: number; n: number }[];
        // A prefix of the committed transactions, each one whole.
        assert.ok(groups.length >= before, `holds at least the ${before} transactions committed before the backup (has ${groups.length})`);
        assert.ok(groups.length <= after, `holds no more than were ever committed (${groups.length} > ${after})`);
        groups.forEach((g, i) => {
          assert.equal(g.txn, i + 1, 'no gap in the committed transactions');
          assert.equal(g.n, ROWS_PER_TXN, `transaction ${g.txn} is whole`);
        });
        assert.equal(db.pragma('journal_mode', { simple: true }), 'delete');
      } finally {
        db.close();
      }
      const manifest = JSON.parse(await fsp.readFile(path.join(repo, 'points', `${id}.json`), 'utf8'));
      assert.deepEqual(
        manifest.sources.map((s: { name: string; kind: string; path: string }) => [s.name, s.kind, s.path]),
        [['registry', 'sqlite', dbFile]],
      );
    } finally {
      await writer.stop();
      await fsp.rm(work, { recursive: true, force: true });
    }
  });
}

test('a command source captures stdout as state; its restore command takes it on stdin', async () => {
  const work = await tempDir();
  const repo = await makeRepo(work);
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'config.json'), '{}');
  // Output larger than a pipe buffer, with stderr chatter that must not end up in the state.
  const cmd = `node -e "for (let i = 0; i < 20000; i++) process.stdout.write('feature ' + i + '\\\\n'); console.error('dumped')"`;
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    `repository: ./repo\nsources:\n  models: ./models\n  features:\n    command: ${JSON.stringify(cmd)}\n    restore: "cat > restored-features.txt"\n    timeout: 30s\n`,
  );
  const r = await lifeboat(['--json', 'backup'], { cwd: work });
  assert.equal(r.code, 0, r.stderr);
  const id = r.json().id as string;
  const manifest = JSON.parse(await fsp.readFile(path.join(repo, 'points', `${id}.json`), 'utf8'));
  const features = manifest.sources.find((s: { name: string }) => s.name === 'features');
  assert.deepEqual(features, { ...features, kind: 'command', path: cmd, restore: 'cat > restored-features.txt' });
  assert.equal(manifest.sources.find((s: { name: string }) => s.name === 'models').kind, 'files');

  const target = path.join(work, 'restored');
  assert.equal((await lifeboat(['--repo', repo, 'restore', id, '--target', target])).code, 0);
  const state = path.join(target, 'features', 'stdout');
  const text = await fsp.readFile(state, 'utf8');
  assert.equal(text.split('\n').length, 20001);
  assert.ok(text.startsWith('feature 0\nfeature 1\n'));
  assert.ok(!text.includes('dumped'));

  await restoreCommand('features', features.restore, state, { cwd: work });
  assert.equal(await fsp.readFile(path.join(work, 'restored-features.txt'), 'utf8'), text);
  await assert.rejects(restoreCommand('features', 'cat >/dev/null; exit 4', state), /restore command of source features exited with status 4/);
  await fsp.rm(work, { recursive: true, force: true });
});

test('show says the kind of each source, and for state put back on a failover what puts it back', async (t) => {
  const work = await modelsAndRegistry(t);
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    'repository: ./repo\nsources:\n  models: ./models\n  registry: { sqlite: ./registry.db, restore: true }\n  features: { command: "echo a, b=c", restore: "cat > features.txt" }\n',
  );
  const r = await lifeboat(['--json', 'backup'], { cwd: work });
  assert.equal(r.code, 0, r.stderr);
  const text = await lifeboat(['show', 'latest'], { cwd: work });
  assert.equal(text.code, 0, text.stderr);
  const db = path.join(work, 'registry.db');
  assert.match(text.stdout, new RegExp(`\\nsources: models=${path.join(work, 'models')} \\(files\\), registry=${db.replace(/[.]/g, '\\.')} \\(sqlite\\), features=\`echo a, b=c\` \\(command\\)\\n`));
  const json = await lifeboat(['--json', 'show', 'latest'], { cwd: work });
  assert.deepEqual(json.json().sources, [
    { name: 'models', kind: 'files', path: path.join(work, 'models') },
    { name: 'registry', kind: 'sqlite', path: db, restore: db },
    { name: 'features', kind: 'command', path: 'echo a, b=c', restore: 'cat > features.txt' },
  ]);
});

test('an empty file named as a SQLite source is backed up with a warning, as other warnings are: counted, recorded, shown by show, and refused by --strict', async (t) => {
  const work = await modelsAndRegistry(t);
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./models\n  registry: { sqlite: ./registry.db }\n  empty: { sqlite: ./empty.db }\n');
  // A path the service never wrote to: SQLite opens any empty file as an empty database.
  const empty = path.join(work, 'empty.db');
  await fsp.writeFile(empty, '');
  const r = await lifeboat(['--json', 'backup'], { cwd: work });
  assert.equal(r.code, 0, r.stderr);
  const message = `the SQLite database ${empty} is empty (a file of 0 bytes), so its copy holds no data; check that sources.empty.sqlite names the database the service writes`;
  assert.deepEqual(r.json().warnings, [{ code: 'sqlite-empty', path: 'empty', message }], 'the database with tables is not warned about');
  assert.ok(r.stderr.includes(`warning: empty: ${message}\n`), r.stderr);
  const manifest = JSON.parse(await fsp.readFile(path.join(work, 'repo', 'points', `${r.json().id}.json`), 'utf8'));
  assert.deepEqual(manifest.warnings, [{ code: 'sqlite-empty', path: 'empty', message }]);
  // Whoever looks at the point later learns it too.
  const shown = await lifeboat(['show', r.json().id], { cwd: work });
  assert.equal(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, new RegExp(`\\nwarning: empty: ${message.replace(/[.()]/g, '\\$&')} \\(sqlite-empty\\)\\n`));
  assert.equal((await fsp.stat(empty)).size, 0, 'the file is left as it was');
  const text = await lifeboat(['backup'], { cwd: work });
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /, 1 warning\(s\)\n/);
  const strict = await lifeboat(['backup', '--strict'], { cwd: work });
  assert.equal(strict.code, 3, strict.stderr);
  assert.match(strict.stderr, /backup refused by --strict: 1 warning\(s\), first: empty the SQLite database .* is empty/);
  // A database with a header and no table holds no data either.
  const db = new Database(empty);
  db.pragma('user_version = 1');
  db.close();
  const headerOnly = await lifeboat(['--json', 'backup'], { cwd: work });
  assert.equal(headerOnly.code, 0, headerOnly.stderr);
  assert.match(headerOnly.json().warnings[0].message, /is empty \(no tables\), so its copy holds no data/);
});

test('a failing or hanging command fails the backup, leaves no point and no temporary state', async () => {
  const work = await tempDir();
  const repo = await makeRepo(work);
  for (const [source, pattern] of [
    ['{ command: "echo partial; echo no redis here >&2; exit 3" }', /command of source features exited with status 3: no redis here/],
    ['{ command: "echo partial; sleep 30", timeout: 1s }', /command of source features timed out/],
    ['{ sqlite: ./missing.db }', /source features: cannot read the SQLite database/],
  ] as const) {
    await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ./repo\nsources:\n  features: ${source}\n`);
    const started = Date.now();
    const r = await lifeboat(['backup'], { cwd: work });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, pattern);
    assert.ok(Date.now() - started < 15_000);
  }
  // A file that is not a database, where the config names one: a configuration error, naming the key.
  await fsp.writeFile(path.join(work, 'mlflow.db'), 'runs: []\n');
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  registry: { sqlite: ./mlflow.db }\n');
  const notDb = await lifeboat(['backup'], { cwd: work });
  assert.equal(notDb.code, 2, notDb.stderr);
  assert.match(notDb.stderr, /source registry: \S+mlflow\.db is not a SQLite database\n {2}check the file that sources\.registry\.sqlite names/);
  assert.deepEqual(await fsp.readdir(path.join(repo, 'points')).catch(() => []), []);

  const tmp = path.join(work, 'tmp');
  await fsp.mkdir(tmp);
  await assert.rejects(
    captureSources([{ name: 'models', path: work }, stateSource('a', { command: 'echo ok' }), stateSource('b', { command: 'exit 9' })], { tmpDir: tmp }),
    /exited with status 9/,
  );
  assert.deepEqual(await fsp.readdir(tmp), [], 'a failed capture removes what it made');
  const ok = await captureSources([stateSource('a', { command: 'echo ok' })], { tmpDir: tmp });
  assert.equal(await fsp.readFile(path.join(ok.sources[0]!.path, 'stdout'), 'utf8'), 'ok\n');
  assert.deepEqual(ok.sources[0], { name: 'a', path: ok.sources[0]!.path, kind: 'command', origin: 'echo ok' });
  await ok.cleanup();
  assert.deepEqual(await fsp.readdir(tmp), []);
  await fsp.rm(work, { recursive: true, force: true });
});

test('hooks: pre and post run around the backup; a failing pre-hook fails it and the post-hook still runs', async () => {
  const work = await tempDir();
  const repo = await makeRepo(work);
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'config.json'), '{}');
  const config = (pre: string, timeout = '30s') =>
    fsp.writeFile(
      path.join(work, 'lifeboat.yaml'),
      `repository: ./repo\nsources:\n  models: ./models\nhooks:\n  preBackup: ${JSON.stringify(pre)}\n  postBackup: 'echo "post $LIFEBOAT_BACKUP_OUTCOME $LIFEBOAT_POINT" >> hooks.log'\n  timeout: ${timeout}\n`,
    );
  const hookLog = () => fsp.readFile(path.join(work, 'hooks.log'), 'utf8').catch(() => '');

  await config('echo pre >> hooks.log');
  const ok = await lifeboat(['--json', 'backup'], { cwd: work });
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(await hookLog(), `pre\npost ok ${ok.json().id}\n`);

  await fsp.rm(path.join(work, 'hooks.log'));
  await config('echo pre >> hooks.log; echo cannot pause >&2; exit 7');
  const failed = await lifeboat(['backup'], { cwd: work });
  assert.equal(failed.code, 1);
  assert.match(failed.stderr, /preBackup hook exited with status 7: cannot pause/);
  assert.equal(await hookLog(), 'pre\npost failed \n');

  await fsp.rm(path.join(work, 'hooks.log'));
  // What it said before it hung is what tells why: a timeout shows its stderr, as a failure does.
  await config('echo waiting for the server to drain >&2; sleep 30', '1s');
  const started = Date.now();
  const slow = await lifeboat(['backup'], { cwd: work });
  assert.equal(slow.code, 1);
  assert.match(slow.stderr, /preBackup hook timed out after 1000 ms and was stopped: waiting for the server to drain\n/);
  assert.ok(Date.now() - started < 10_000);
  assert.equal(await hookLog(), 'post failed \n');
  assert.equal((await fsp.readdir(path.join(repo, 'points'))).length, 1, 'only the first backup took a point');

  // A post-hook that fails after a good backup fails the run, and --json's one document says so,
  // with the point that was taken all the same.
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ./repo\nsources:\n  models: ./models\nhooks:\n  postBackup: 'echo cannot resume >&2; exit 3'\n`);
  const postFailed = await lifeboat(['--json', 'backup'], { cwd: work });
  assert.equal(postFailed.code, 1, postFailed.stderr);
  const doc = postFailed.json();
  assert.equal(doc.ok, false);
  assert.deepEqual(doc.error, {
    message: 'postBackup hook exited with status 3: cannot resume',
    exitCode: 1,
    hint: `backup point ${doc.id} was taken and is kept; what the preBackup hook paused may still be paused: see to it by hand`,
  });
  assert.equal(doc.type, 'incr');
  assert.equal((await lifeboat(['--json', 'list'], { cwd: work })).json().at(-1).id, doc.id);

  // A failing post-hook after a good backup is an error too (the server may still be paused).
  const hooks = new BackupHooks({ postBackup: 'exit 2' });
  await assert.rejects(hooks.after({ point: 'x' }), /postBackup hook exited with status 2/);
  const quiet = new BackupHooks({ postBackup: 'exit 2' });
  const reported: string[] = [];
  await quiet.after({ error: new Error('backup failed') }, (m) => reported.push(m));
  assert.match(reported[0]!, /status 2/);
  await fsp.rm(work, { recursive: true, force: true });
});

test('a timeout longer than a timer holds (24.8 days) is waited out, not taken as 1 ms', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const repo = await makeRepo(work);
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'config.json'), '{}');
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    `repository: ./repo\nsources:\n  models: ./models\n  features: { command: "sleep 0.3; echo state", timeout: 5w }\nhooks:\n  preBackup: "sleep 0.3; echo pre >> hooks.log"\n  timeout: 30d\n`,
  );
  const r = await runChild(['--json', 'backup'], { cwd: work });
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /TimeoutOverflowWarning/);
  assert.equal(await fsp.readFile(path.join(work, 'hooks.log'), 'utf8'), 'pre\n');
  const drill = await runChild(['--repo', repo, '--json', 'drill', '--smoke', 'sleep 0.3', '--smoke-timeout', '30d']);
  assert.equal(drill.code, 0, drill.stderr);
  assert.equal(drill.json().smoke.exitCode, 0);
});

test('a hook, command source, health check or smoke test that leaves a process running in the background (a daemon it starts) is done when it exits, not when that process closes its output', { timeout: 90_000 }, async (t) => {
  const work = await tempDir();
  const pids = path.join(work, 'bg.pids');
  t.after(async () => {
    for (const pid of (await fsp.readFile(pids, 'utf8').catch(() => '')).split('\n').filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // gone already
      }
    }
    await fsp.rm(work, { recursive: true, force: true });
  });
  const repo = await makeRepo(work);
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'config.json'), '{}');
  // Each starts a process that outlives it with the command's stdout and stderr, and says so.
  const ran = path.join(work, 'ran.log');
  const daemon = (what: string) => JSON.stringify(`sleep 60 & echo $! >> ${pids}; echo ${what} >> ${ran}; echo ${what}`);
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    [
      'repository: ./repo',
      'sources:',
      '  models: ./models',
      `  features: { command: ${daemon('state')}, timeout: 20s }`,
      'hooks:',
      `  preBackup: ${daemon('paused')}`,
      `  postBackup: ${daemon('resumed')}`,
      '  timeout: 20s',
      'targets:',
      '  prod:',
      '    slots: ./slots',
      '    active: ./current',
      `    health: { command: ${daemon('healthy')}, timeout: 20s, interval: 100ms }`,
      `    activate: ${daemon('activated')}`,
      `    deactivate: ${daemon('drained')}`,
      '',
    ].join('\n'),
  );
  let started = Date.now();
  const backup = await runChild(['--json', 'backup'], { cwd: work });
  assert.equal(backup.code, 0, backup.stderr);
  assert.match(backup.stderr, /paused[^]*resumed/);
  assert.ok(Date.now() - started < 15_000, `the backup took ${Date.now() - started} ms`);
  const target = path.join(work, 'restored');
  assert.equal((await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target])).code, 0);
  assert.equal(await fsp.readFile(path.join(target, 'features', 'stdout'), 'utf8'), 'state\n');

  // The second failover runs deactivate too, before it switches.
  for (const round of [1, 2]) {
    if (round === 2) assert.equal((await lifeboat(['backup'], { cwd: work })).code, 0);
    started = Date.now();
    const failover = await lifeboat(['--json', 'failover', '--to', 'prod'], { cwd: work });
    assert.equal(failover.code, 0, failover.stderr);
    assert.ok(Date.now() - started < 15_000, `the failover took ${Date.now() - started} ms`);
  }
  assert.deepEqual((await fsp.readFile(ran, 'utf8')).split('\n').sort(), ['', 'activated', 'activated', 'drained', 'healthy', 'healthy', 'paused', 'paused', 'resumed', 'resumed', 'state', 'state']);
  const drill = await lifeboat(['--repo', repo, '--json', 'drill', '--smoke', `sleep 60 & echo $! >> ${pids}; echo smoke ok`, '--smoke-timeout', '20s']);
  assert.equal(drill.code, 0, drill.stderr);
  assert.match(drill.json().smoke.output, /smoke ok/);

  // The processes they started run on.
  const running = (await fsp.readFile(pids, 'utf8')).split('\n').filter(Boolean);
  assert.equal(running.length, 12);
  for (const pid of running) process.kill(Number(pid), 0);
});

/**
 * A deployment whose backups run a pre-hook that waits until the file `go` exists, and a command
 * source that says in dumps.log whenever it runs: the first backup holds the lock as long as the test wants.
 */
async function pausingDeployment(work: string): Promise<{ read: (name: string) => Promise<string>; letGo: () => Promise<void> }> {
  await makeRepo(work);
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'config.json'), '{}');
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    [
      'repository: ./repo',
      'sources:',
      '  models: ./models',
      '  features: { command: "echo dumped >> dumps.log; echo state" }',
      'hooks:',
      '  preBackup: "echo pre >> hooks.log; while [ ! -e go ]; do sleep 0.05; done"',
      `  postBackup: 'echo "post $LIFEBOAT_BACKUP_OUTCOME" >> hooks.log'`,
      '  timeout: 60s',
      '',
    ].join('\n'),
  );
  return {
    read: (name) => fsp.readFile(path.join(work, name), 'utf8').catch(() => ''),
    letGo: () => fsp.writeFile(path.join(work, 'go'), ''),
  };
}

test('a backup started while another runs exits 4 at once, before its pre-hook or a capture of serving state runs', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const { read, letGo } = await pausingDeployment(work);
  const first = runChild(['--json', 'backup'], { cwd: work });
  assert.ok(await waitFor(async () => (await read('hooks.log')) === 'pre\n', 30_000), 'the first backup ran its pre-hook');

  // A second backup that ran its pre-hook would wait for `go` as well: made after a while, the test fails instead of hanging.
  const release = setTimeout(() => void letGo(), 10_000);
  const started = Date.now();
  const second = await runChild(['--json', 'backup'], { cwd: work });
  clearTimeout(release);
  assert.equal(second.code, 4, second.stderr);
  assert.match(second.stderr, /the repository is locked by backup on .+, pid \d+/);
  assert.ok(Date.now() - started < 10_000, 'the second backup did not wait');
  assert.equal(await read('hooks.log'), 'pre\n', 'the second backup ran neither hook');
  assert.equal(await read('dumps.log'), '', 'and captured no state');

  await letGo();
  const done = await first;
  assert.equal(done.code, 0, done.stderr);
  assert.equal(await read('hooks.log'), 'pre\npost ok\n');
  assert.equal(await read('dumps.log'), 'dumped\n');
});

test('a backup interrupted in its pre-hook runs the post-hook, exits 130 and releases the lock', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const { read } = await pausingDeployment(work);
  const child = spawnLifeboat(['backup'], { cwd: work });
  const stderr: Buffer[] = [];
  child.stderr!.on('data', (c: Buffer) => stderr.push(c));
  child.stdout!.resume();
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  assert.ok(await waitFor(async () => (await read('hooks.log')) === 'pre\n', 30_000), 'the backup ran its pre-hook');
  assert.ok(await exists(path.join(work, 'repo', 'locks', 'lock.json')), 'under the lock');
  child.kill('SIGINT');
  assert.equal(await exited, 130, Buffer.concat(stderr).toString());
  assert.equal(await read('hooks.log'), 'pre\npost failed\n');
  assert.equal(await read('dumps.log'), '');
  assert.deepEqual(await repoFiles(path.join(work, 'repo')), ['config.json'], 'no lock is left behind');
});

test('backup --dry-run names the serving state it would capture, and neither copies the SQLite database nor runs the command', async (t) => {
  const work = await modelsAndRegistry(t);
  const dump = 'echo dumped >> dumps.log; echo state';
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    `repository: ./repo\nsources:\n  models: ./models\n  registry: { sqlite: ./registry.db }\n  features: { command: ${JSON.stringify(dump)} }\n`,
  );
  const dumps = () => fsp.readFile(path.join(work, 'dumps.log'), 'utf8').catch(() => '');
  const taken = await lifeboat(['--json', 'backup'], { cwd: work });
  assert.equal(taken.code, 0, taken.stderr);
  assert.equal(await dumps(), 'dumped\n');
  assert.equal(taken.json().wouldCapture, undefined, 'a backup that captures does not say it would');

  const dry = await lifeboat(['--json', 'backup', '--dry-run'], { cwd: work });
  assert.equal(dry.code, 0, dry.stderr);
  assert.equal(await dumps(), 'dumped\n', 'the command did not run');
  assert.doesNotMatch(dry.stderr, /copied SQLite database/);
  const result = dry.json();
  assert.equal(result.dryRun, true);
  assert.deepEqual(result.wouldCapture, [
    { name: 'registry', kind: 'sqlite', path: path.join(work, 'registry.db') },
    { name: 'features', kind: 'command', path: dump },
  ]);
  assert.equal(result.files, 1, 'only the files of the tree are counted');
  assert.equal(result.removed, 0, 'the state the last point holds is not counted as removed');

  const text = await lifeboat(['backup', '--dry-run'], { cwd: work });
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /would capture registry: an online copy of the SQLite database .*registry\.db/);
  assert.match(text.stdout, /would capture features: the output of `echo dumped >> dumps\.log; echo state`/);
  assert.equal(await dumps(), 'dumped\n');
});

test('diff and the backup summary name a state source only when the state changed, not because each backup captured it anew', async (t) => {
  const work = await modelsAndRegistry(t);
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./models\n  registry: { sqlite: ./registry.db }\n  features: { command: "cat features.txt" }\n');
  await fsp.writeFile(path.join(work, 'features.txt'), 'v1\n');
  const backup = async () => {
    const r = await lifeboat(['--json', 'backup'], { cwd: work });
    assert.equal(r.code, 0, r.stderr);
    return r.json() as { id: string; added: number; changed: number; removed: number };
  };
  const { id: a } = await backup();
  const second = await backup();
  const b = second.id;
  const same = await lifeboat(['--json', 'diff', a, b], { cwd: work });
  assert.equal(same.code, 0, same.stderr);
  assert.deepEqual(same.json().changed, [], 'the same state captured twice');
  assert.deepEqual([second.added, second.changed, second.removed], [0, 0, 0], 'the backup summary agrees with diff');
  const text = await lifeboat(['backup'], { cwd: work });
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /entries: 0 added, 0 changed, 0 removed\n/);

  await fsp.writeFile(path.join(work, 'features.txt'), 'v2\n');
  const db = new Database(path.join(work, 'registry.db'));
  db.exec('DELETE FROM bulk WHERE id = 1');
  db.close();
  const third = await backup();
  const changed = await lifeboat(['diff', b, third.id], { cwd: work });
  assert.equal(changed.code, 0, changed.stderr);
  assert.match(changed.stdout, /: 0 added, 2 changed, 0 removed\nM features\/stdout {2}\(content\)\nM registry\/registry\.db {2}\(content\)\n?$/);
  assert.equal(third.changed, 2);
});

/**
 * A deployment in `work` of `models` and the state `sources` (YAML lines), whose first backup, run as
 * `firstBackup` with 1 MiB of room in `$WORK/small`, fails, and whose second, with `--work-dir
 * $WORK/staging/new`, is restored to `$WORK/restored`; `read` gives back what each step left in `out/`.
 */
async function stagedOnASmallDisk(t: { after(fn: () => Promise<unknown>): void }, sources: string, firstBackup: string, before?: (work: string) => Promise<void>) {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights');
  await before?.(work);
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ./repo\nsources:\n  models: ./models\n${sources}`);
  const read = await runInNamespace(work, [
    'mkdir small && mount -t tmpfs -o size=1m tmpfs small',
    'node "$BIN" init > /dev/null',
    `status=0; ${firstBackup} 2> out/full.txt || status=$?`,
    'echo "$status" > out/status.txt',
    'ls -A small > out/left.txt',
    'node "$BIN" --json backup --work-dir "$WORK/staging/new" > out/backup.json',
    'node "$BIN" restore latest --target "$WORK/restored" > /dev/null',
  ]);
  assert.equal((await read('status.txt')).trim(), '1');
  assert.equal((await read('left.txt')).trim(), '', 'what did not fit was removed');
  assert.equal(JSON.parse(await read('backup.json')).files, 2);
  assert.deepEqual(await fsp.readdir(path.join(work, 'staging', 'new')), [], 'the staging directory is emptied');
  return { work, read };
}

test('a command source whose output does not fit where it is staged fails the backup saying so; --work-dir stages it elsewhere', { skip: unshare ? false : 'unshare cannot make a mount namespace here' }, async (t) => {
  // TMPDIR on a 1 MiB file system: the 3 MB dump does not fit there.
  const { work, read } = await stagedOnASmallDisk(t, '  features: { command: "head -c 3000000 /dev/zero" }\n', 'TMPDIR="$WORK/small" node "$BIN" backup');
  assert.match(await read('full.txt'), new RegExp(`could not keep the output of the command of source features in ${work}/small: ENOSPC: .*\\n {2}free space on the file system of ${work}/small, or use another place; lifeboat backup --work-dir DIR \\(or TMPDIR\\) stages serving state elsewhere`));
  assert.equal((await fsp.stat(path.join(work, 'restored', 'features', 'stdout'))).size, 3_000_000);
});

test('a SQLite copy that does not fit where it is staged says which file system is full, not that the database is; --work-dir stages it elsewhere', { skip: unshare ? false : 'unshare cannot make a mount namespace here' }, async (t) => {
  // The 3 MB database's copy does not fit in a 1 MiB work directory.
  const { work, read } = await stagedOnASmallDisk(t, '  registry: { sqlite: ./registry.db }\n', 'node "$BIN" backup --work-dir "$WORK/small"', async (dir) => {
    const db = new Database(path.join(dir, 'registry.db'));
    db.exec('CREATE TABLE runs (id INTEGER PRIMARY KEY, blob BLOB)');
    const insert = db.prepare('INSERT INTO runs (blob) VALUES (?)');
    for (let i = 0; i < 300; i++) insert.run(Buffer.alloc(10_000, i));
    db.close();
  });
  assert.equal(
    await read('full.txt'),
    `lifeboat: source registry: the copy of ${work}/registry.db does not fit in ${work}/small: no space left on device (SQLITE_FULL)\n` +
      `  free space on the file system of ${work}/small, or use another place; lifeboat backup --work-dir DIR (or TMPDIR) stages serving state elsewhere\n`,
  );
  assert.equal((await fsp.stat(path.join(work, 'restored', 'registry', 'registry.db'))).size, (await fsp.stat(path.join(work, 'registry.db'))).size);
});

test('a backup whose work directory has no inode left for the serving state says that file system is full, wherever it ran out, and leaves nothing there', { skip: unshare ? false : 'unshare cannot make a mount namespace here' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'w.bin'), 'weights');
  const db = new Database(path.join(work, 'registry.db'));
  db.exec('CREATE TABLE runs (id INTEGER PRIMARY KEY, blob BLOB)');
  db.prepare('INSERT INTO runs (blob) VALUES (?)').run(Buffer.alloc(10_000, 1));
  db.close();
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./models\n  registry: { sqlite: ./registry.db }\n');
  // Besides the root and `w`: no inode for the capture's directory (2), for the source's (3), for the copy (4), for its journal (5).
  const inodes = [2, 3, 4, 5];
  const read = await runInNamespace(work, [
    'node "$BIN" init > /dev/null',
    ...inodes.map((n) =>
      [
        `mkdir -p small-${n} && mount -t tmpfs -o size=4m,nr_inodes=${n} tmpfs small-${n} && mkdir small-${n}/w`,
        `status=0; node "$BIN" backup --work-dir "$WORK/small-${n}/w" 2> out/${n}.txt || status=$?`,
        `echo "$status" > out/${n}-status.txt; ls -A small-${n}/w > out/${n}-left.txt`,
      ].join('\n'),
    ),
  ]);
  for (const n of inodes) {
    assert.equal((await read(`${n}-status.txt`)).trim(), '1', `${n} inodes`);
    const said = await read(`${n}.txt`);
    assert.match(said, new RegExp(`^lifeboat: (cannot make a directory to capture (serving state|source registry) in, under ${work}/small-${n}/w: ENOSPC: .*|source registry: the copy of ${work}/registry.db does not fit in ${work}/small-${n}/w: no space or no inode left on its file system \\(SQLITE_CANTOPEN\\))\n {2}free space on the file system of ${work}/small-${n}/w, or use another place; lifeboat backup --work-dir DIR \\(or TMPDIR\\) stages serving state elsewhere\n$`), `${n} inodes`);
    assert.equal(await read(`${n}-left.txt`), '', `${n} inodes: nothing is left in the work directory`);
  }
});

/** A served deployment: its models in `live/models`, its registry database to be in `state/registry.db`. */
async function servedWithRegistry(t: { after(fn: () => Promise<unknown>): void }): Promise<{ work: string; dbFile: string }> {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.mkdir(path.join(work, 'live', 'models'), { recursive: true });
  await fsp.writeFile(path.join(work, 'live', 'models', 'config.json'), '{}\n');
  await fsp.mkdir(path.join(work, 'state'));
  return { work, dbFile: path.join(work, 'state', 'registry.db') };
}

test('a SQLite source with restore: true is copied back into the live database by failover and rollback, under a reader that stays open; the state it replaced is kept', async (t) => {
  const { work, dbFile } = await servedWithRegistry(t);
  await fsp.mkdir(path.join(work, 'serving'));
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    [
      'repository: ./repo',
      'sources:',
      '  models: ./live/models',
      '  registry: { sqlite: ./state/registry.db, restore: true }',
      'targets:',
      '  prod: { slots: ./serving/slots, active: ./serving/current, health: { command: "true" } }',
      '',
    ].join('\n'),
  );
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const live = new Database(dbFile);
  live.pragma('journal_mode = wal');
  live.exec("CREATE TABLE stage (model TEXT PRIMARY KEY, version TEXT); INSERT INTO stage VALUES ('fraud', 'A')");
  const backup = async () => {
    const r = await lifeboat(['--json', 'backup'], { cwd: work });
    assert.equal(r.code, 0, r.stderr);
    return r.json().id as string;
  };
  const pointA = await backup();
  live.exec("UPDATE stage SET version = 'B'");
  const pointB = await backup();
  // Written after the last backup: only the kept copy will have it.
  live.exec("UPDATE stage SET version = 'C'");
  const version = () => (live.prepare("SELECT version FROM stage WHERE model = 'fraud'").get() as { version: string }).version;
  const move = async (...args: string[]) => {
    const r = await lifeboat(['--json', ...args], { cwd: work });
    assert.equal(r.code, 0, r.stderr);
    return r;
  };

  const toA = await move('failover', pointA, '--to', 'prod');
  assert.equal(version(), 'A', 'the open connection reads the restored state');
  const kept = (await fsp.readdir(path.join(work, 'state'))).filter((f) => f.startsWith('registry.db.lifeboat-replaced-'));
  assert.equal(kept.length, 1);
  assert.match(toA.stderr, new RegExp(`the state ${dbFile.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} had before is kept as \\S+${kept[0]}`));
  const keptDb = new Database(path.join(work, 'state', kept[0]!), { readonly: true });
  assert.equal((keptDb.prepare('SELECT version FROM stage').get() as { version: string }).version, 'C');
  keptDb.close();

  await move('failover', pointB, '--to', 'prod');
  assert.equal(version(), 'B');
  await move('rollback', '--to', 'prod');
  assert.equal(version(), 'A');
  await move('failover', pointB, '--to', 'prod', '--no-state');
  assert.equal(version(), 'A', '--no-state leaves the database alone');
  // One kept state per restore, however quickly they follow each other.
  assert.equal((await fsp.readdir(path.join(work, 'state'))).filter((f) => f.startsWith('registry.db.lifeboat-replaced-')).length, 3);
  assert.equal(live.pragma('journal_mode', { simple: true }), 'wal', 'the live database keeps its journal mode');
  live.close();
  assert.equal(integrityCheck(dbFile), 'ok');
});

test('a failover, rollback or restore --state refuses to put back a SQLite copy the backup found empty over a live database, unless --allow-empty-state', async (t) => {
  const { work, dbFile } = await servedWithRegistry(t);
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    'repository: ./repo\nsources:\n  models: ./live/models\n  registry: { sqlite: ./state/registry.db, restore: true }\ntargets:\n  prod: { slots: ./slots, active: ./current }\n',
  );
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const run = async (code: number, ...args: string[]) => {
    const r = await lifeboat(args, { cwd: work });
    assert.equal(r.code, code, r.stderr);
    return r;
  };
  // Taken before the service first wrote its database: the copy holds nothing.
  await fsp.writeFile(dbFile, '');
  const empty = (await run(0, '--json', 'backup')).json();
  assert.equal(empty.warnings[0].code, 'sqlite-empty');
  const live = new Database(dbFile);
  t.after(() => live.close());
  live.exec("CREATE TABLE stage (model TEXT); INSERT INTO stage VALUES ('fraud')");
  const full = (await run(0, '--json', 'backup')).json().id as string;
  await run(0, 'failover', full);
  const rows = () => (live.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name = 'stage'").get() as { n: number }).n;
  const kept = async () => (await fsp.readdir(path.join(work, 'state'))).filter((f) => f.startsWith('registry.db.lifeboat-replaced-')).length;
  assert.equal(await kept(), 1);

  const refused = await run(2, 'failover', empty.id);
  assert.equal(
    refused.stderr,
    `lifeboat: failover of prod to ${empty.id} failed before the switch: point ${empty.id} holds an empty copy of the SQLite database of source registry (its backup warned sqlite-empty): putting it back would replace the live database ${dbFile} with one that holds no data; prod still serves ${full}, nothing was switched\n` +
      "  choose a point whose copy holds data (lifeboat show POINT lists a point's warnings), leave the live state alone (--no-state), or put the empty copy back all the same with --allow-empty-state\n",
  );
  assert.equal(rows(), 1, 'the live registry keeps its data');
  assert.equal(await kept(), 1, 'nothing was put back');
  assert.equal(await exists(path.join(work, 'slots', empty.id)), false, 'refused before its slot was restored');
  assert.equal(await readlinkOf(path.join(work, 'current')), path.join(work, 'slots', full));

  // Without the state, the point is served and the registry left alone.
  await run(0, 'failover', empty.id, '--no-state');
  await run(0, 'rollback', '--state');
  const back = await run(2, 'rollback');
  assert.match(back.stderr, new RegExp(`^lifeboat: rollback of prod to ${empty.id} failed before the switch: point ${empty.id} holds an empty copy .*; prod still serves ${full}, nothing was switched\n`));
  assert.equal(rows(), 1);

  const inPlace = await run(2, 'restore', empty.id, '--in-place', '--delta', '--state');
  assert.match(inPlace.stderr, /holds an empty copy [^]* leave the live state alone \(restore without --state\)/);
  assert.equal(rows(), 1);
  assert.match((await run(2, 'restore', empty.id, '--in-place', '--delta', '--allow-empty-state')).stderr, /--allow-empty-state goes with --state/);

  // Asked for in so many words: put back, what the registry held kept beside it.
  await run(0, 'rollback', '--allow-empty-state');
  assert.equal(rows(), 0, 'the empty copy was put back');
  assert.equal(await kept(), 3);
});

/**
 * A deployment whose registry (`restore: true`, and any `more` sources) was backed up twice: at
 * version A, then at version B; `version()` reads what the live registry holds now.
 */
async function twoRegistryPoints(t: { after(fn: () => Promise<unknown>): void }, more = '', target = '{ slots: ./slots, active: ./current }') {
  const { work, dbFile } = await servedWithRegistry(t);
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    `repository: ./repo\nsources:\n  models: ./live/models\n  registry: { sqlite: ./state/registry.db, restore: true }\n${more}targets:\n  prod: ${target}\n`,
  );
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const live = new Database(dbFile);
  t.after(async () => live.close());
  live.exec("CREATE TABLE stage (version TEXT); INSERT INTO stage VALUES ('A')");
  const pointA = (await lifeboat(['--json', 'backup'], { cwd: work })).json().id as string;
  live.exec("UPDATE stage SET version = 'B'");
  const pointB = (await lifeboat(['--json', 'backup'], { cwd: work })).json().id as string;
  const version = () => (live.prepare('SELECT version FROM stage').get() as { version: string }).version;
  /** What the service writes to the live registry. */
  const write = (v: string) => live.prepare('UPDATE stage SET version = ?').run(v);
  /** Runs lifeboat there, which must succeed. */
  const run = async (...args: string[]) => {
    const r = await lifeboat(args, { cwd: work });
    assert.equal(r.code, 0, r.stderr);
    return r;
  };
  return { work, pointA, pointB, version, write, run };
}

test('a failover or rollback whose restore command fails, or is interrupted, after a SQLite database went back gives the database what it held just before, so the serving state is all of one moment; exit 1 says so', async (t) => {
  const { work, pointA, pointB, version, write, run } = await twoRegistryPoints(t, '  features: { command: "echo features", restore: "cat >/dev/null; test ! -e refuse && { test ! -e hang || sleep 60; }" }\n');
  const keptCopies = async () => (await fsp.readdir(path.join(work, 'state'))).filter((f) => f.startsWith('registry.db.lifeboat-replaced-'));
  // Nothing served yet: there is no state of one to go back to, and a warning, even with --quiet, says what was put back.
  await fsp.writeFile(path.join(work, 'refuse'), '');
  const first = await lifeboat(['--quiet', 'failover', pointA], { cwd: work });
  assert.equal(first.code, 1, first.stderr);
  const kept = (await keptCopies()).sort().at(-1)!;
  assert.match(first.stderr, new RegExp(`warning: putting back the state of ${pointA} failed after registry had been put back \\(what registry held is kept as \\S+/${kept.replace(/[.]/g, '\\.')}\\); features not put back\n`));
  assert.match(first.stderr, /prod still serves nothing, nothing was switched\n/);
  await fsp.rm(path.join(work, 'refuse'));

  await run('--quiet', 'failover', pointB);
  write('written since B');
  await fsp.writeFile(path.join(work, 'refuse'), '');
  const r = await lifeboat(['--quiet', 'failover', pointA], { cwd: work });
  assert.equal(r.code, 1, r.stderr);
  assert.equal(version(), 'written since B', 'what the registry held before the failover went back');
  assert.doesNotMatch(r.stderr, /warning/);
  assert.match(r.stderr, new RegExp(`lifeboat: failover of prod to ${pointA} failed before the switch: restore command of source features exited with status 1; prod still serves ${pointB} with its serving state as it was, nothing was switched`));
  const status = await lifeboat(['status'], { cwd: work });
  assert.equal(status.code, 0, status.stdout + status.stderr);
  assert.doesNotMatch(status.stdout, /serving state is that of/);

  // A rollback the same way (its point is A, served before B).
  await fsp.rm(path.join(work, 'refuse'));
  await run('failover', pointA);
  write('written since A');
  await fsp.writeFile(path.join(work, 'refuse'), '');
  const back = await lifeboat(['rollback'], { cwd: work });
  assert.equal(back.code, 1, back.stderr);
  assert.match(back.stderr, new RegExp(`rollback of prod to ${pointB} failed before the switch: .*; prod still serves ${pointA} with its serving state as it was, nothing was switched`));
  assert.equal(version(), 'written since A');
  await fsp.rm(path.join(work, 'refuse'));

  // Ctrl-C while the restore command runs, the registry already replaced.
  await fsp.writeFile(path.join(work, 'hang'), '');
  const before = (await keptCopies()).length;
  const child = spawnLifeboat(['failover', pointB], { cwd: work });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  assert.ok(await waitFor(async () => (await keptCopies()).length > before && version() === 'B' && stderr.includes('with `cat'), 30_000), stderr);
  child.kill('SIGINT');
  assert.equal(await exited, 130, stderr);
  assert.match(stderr, new RegExp(`interrupted before the switch: prod still serves ${pointA}, and its serving state was put back; nothing was switched`));
  assert.equal(version(), 'written since A');
});

test('a failover to a point whose models would not load leaves the live serving state as the service last wrote it, whether the slot served holds a point or was made by hand', async (t) => {
  const { work, pointB, version, write, run } = await twoRegistryPoints(t);
  // A shard whose header says it is longer than the file: the backup warns, the failover must refuse it.
  const broken = Buffer.alloc(64);
  broken.writeBigUInt64LE(1n << 40n);
  await fsp.writeFile(path.join(work, 'live', 'models', 'model.safetensors'), broken);
  const bad = await lifeboat(['--json', 'backup'], { cwd: work });
  assert.equal(bad.code, 0, bad.stderr);
  const pointC = bad.json().id as string;
  const keptCopies = async () => (await fsp.readdir(path.join(work, 'state'))).filter((f) => f.startsWith('registry.db.lifeboat-replaced-'));

  // A slot made by hand before lifeboat managed the target: no point's state could be put back over it.
  await fsp.mkdir(path.join(work, 'slots', 'initial', 'models'), { recursive: true });
  await fsp.symlink(path.join('slots', 'initial'), path.join(work, 'current'));
  write('written by the service');
  const onHandMade = await lifeboat(['--json', 'failover', pointC], { cwd: work });
  assert.equal(onHandMade.code, 5, onHandMade.stderr);
  assert.match(onHandMade.json().reason, /would not load/);
  assert.equal(version(), 'written by the service');
  assert.deepEqual(await keptCopies(), [], 'the live database was never replaced');

  // Served from a point: its backup copy would lose what the service wrote since it was taken.
  await run('failover', pointB);
  write('written since B');
  const before = (await keptCopies()).length;
  const onPoint = await lifeboat(['--json', 'failover', pointC], { cwd: work });
  assert.equal(onPoint.code, 5, onPoint.stderr);
  assert.equal(version(), 'written since B');
  assert.equal((await keptCopies()).length, before);
  assert.doesNotMatch(onPoint.stderr, /warning/);
  const status = await lifeboat(['status'], { cwd: work });
  assert.equal(status.code, 0, status.stdout + status.stderr);
});

test('a failover switched back after a failed health check, or stopped by a failed pre-activation check, gives each SQLite database what it held just before, not the copy of the point served, which lacks what was written since', async (t) => {
  const { work, pointA, pointB, version, write, run } = await twoRegistryPoints(
    t,
    '',
    '{ slots: ./slots, active: ./current, health: { command: "test \\"$LIFEBOAT_POINT\\" != \\"$(cat unhealthy 2>/dev/null)\\"", preActivate: "test ! -e refused", timeout: 2s, interval: 100ms } }',
  );
  const failsOver = async (flag: string, expected: RegExp) => {
    await fsp.writeFile(path.join(work, flag), pointB);
    const r = await lifeboat(['--json', 'failover', pointB], { cwd: work });
    await fsp.rm(path.join(work, flag));
    assert.equal(r.code, 5, r.stderr);
    assert.match(r.json().reason, expected);
    assert.doesNotMatch(r.stderr, /could not be put back|NOT put back|no copy to go back|NOT healthy/, 'everything it changed went back');
    return r;
  };

  await run('failover', pointA);
  write('written since A');
  await failsOver('unhealthy', /not healthy/);
  assert.equal(version(), 'written since A', 'switched back');
  await failsOver('refused', /pre-activation check failed/);
  assert.equal(version(), 'written since A', 'stopped before the switch');
  assert.equal((await lifeboat(['status'], { cwd: work })).code, 0);

  // A slot made by hand holds no point: what the database held is all there is to go back to.
  await fsp.mkdir(path.join(work, 'slots', 'initial', 'models'), { recursive: true });
  await fsp.rm(path.join(work, 'current'));
  await fsp.symlink(path.join('slots', 'initial'), path.join(work, 'current'));
  write('served from a slot made by hand');
  await failsOver('refused', /pre-activation check failed/);
  assert.equal(version(), 'served from a slot made by hand');
  await failsOver('unhealthy', /not healthy/);
  assert.equal(version(), 'served from a slot made by hand');
  // Its health command cannot pass there (no point to compare); status must not say the state is another point's.
  assert.doesNotMatch((await lifeboat(['status'], { cwd: work })).stdout, /serving state is that of/);
  // Rolled back to it from a point whose state went in, the live state stays that point's, and the operator hears so.
  await run('failover', pointA);
  assert.equal(version(), 'A');
  await fsp.writeFile(path.join(work, 'unhealthy'), 'no point');
  const back = await lifeboat(['rollback'], { cwd: work });
  assert.equal(back.code, 0, back.stderr);
  assert.match(back.stderr, new RegExp(`warning: .*slots/initial holds no point of the repository, so no serving state goes back with it: registry keeps the state ${pointA} put in place`));
  assert.equal(version(), 'A');
});

test('a switch undone after the copy kept of what a SQLite database held was removed (by hand, to free the disk) puts back the state of the point served, as that point holds it, and says so; from a slot made by hand, it says what is left', async (t) => {
  // The health check removes the copies kept, as an operator freeing the disk would, then fails.
  const { work, pointA, pointB, version, write, run } = await twoRegistryPoints(
    t,
    '',
    '{ slots: ./slots, active: ./current, health: { command: "test \\"$LIFEBOAT_POINT\\" != \\"$(cat unhealthy 2>/dev/null)\\" || { rm -f state/registry.db.lifeboat-replaced-*; false; }", timeout: 1s, interval: 100ms } }',
  );
  await run('failover', pointA);
  write('written since A');
  await fsp.writeFile(path.join(work, 'unhealthy'), pointB);
  const r = await lifeboat(['failover', pointB], { cwd: work });
  assert.equal(r.code, 5, r.stderr);
  assert.match(r.stderr, new RegExp(`warning: the copy of what \\S+registry\\.db held before, \\S+registry\\.db\\.lifeboat-replaced-\\S+, is missing: the serving state of ${pointA} goes back whole as that point holds it, without what was written since it was taken`));
  assert.doesNotMatch(r.stderr, /could not be put back|NOT put back/);
  assert.equal(version(), 'A', 'the state of the point served, not that of the point that failed');
  const status = await lifeboat(['status'], { cwd: work });
  assert.equal(status.code, 0, status.stdout + status.stderr);

  // Served from a slot made by hand, no point holds its state: what is left is said, with exit 5 for the failed switch.
  await fsp.mkdir(path.join(work, 'slots', 'initial', 'models'), { recursive: true });
  await fsp.rm(path.join(work, 'current'));
  await fsp.symlink(path.join('slots', 'initial'), path.join(work, 'current'));
  write('served from a slot made by hand');
  const onHandMade = await lifeboat(['failover', pointB], { cwd: work });
  assert.equal(onHandMade.code, 5, onHandMade.stderr);
  assert.match(onHandMade.stderr, /warning: the copy of what \S+registry\.db held before, \S+, is missing, and \S+initial holds no point of the repository to take it from: registry keeps the state of the point put in place/);
  assert.match(onHandMade.stderr, new RegExp(`failover of prod to ${pointB} failed: .*; switched back to \\S+initial, which is healthy again, but with the serving state of ${pointB}, which could not be undone \\(see the warning above\\)\n`));
  assert.equal(version(), 'B');
});

test('a failover killed (kill -9) before its switch leaves the next failover to give each SQLite database what it held before the killed one, not the copy of the point served; with a command source among the state, the point served goes back whole, every source of one moment', async (t) => {
  const target = "{ slots: ./slots, active: ./current, deactivate: 'test ! -e kill-draining || kill -9 $PPID' }";
  const killedWhileDraining = async (work: string, point: string) => {
    await fsp.writeFile(path.join(work, 'kill-draining'), '');
    assert.notEqual((await runChild(['failover', point], { cwd: work })).code, 0, 'killed');
    await fsp.rm(path.join(work, 'kill-draining'));
  };
  {
    const { work, pointA, pointB, version, write, run } = await twoRegistryPoints(t, '', target);
    await run('failover', pointA);
    write('written since A');
    await killedWhileDraining(work, pointB);
    assert.equal(version(), 'B');
    assert.equal((await lifeboat(['failover', pointA], { cwd: work })).code, 0);
    assert.equal(version(), 'written since A', 'what the killed failover replaced went back');
    assert.equal((await lifeboat(['status'], { cwd: work })).code, 0);
  }
  {
    const features = '  features: { command: "echo features", restore: "cat >/dev/null; echo $LIFEBOAT_POINT > features.live" }\n';
    const { work, pointA, pointB, version, write, run } = await twoRegistryPoints(t, features, target);
    await run('failover', pointA);
    write('written since A');
    await killedWhileDraining(work, pointB);
    assert.equal(await fsp.readFile(path.join(work, 'features.live'), 'utf8'), `${pointB}\n`);
    assert.equal((await lifeboat(['failover', pointA], { cwd: work })).code, 0);
    assert.equal(version(), 'A', 'the registry of the moment the features were captured');
    assert.equal(await fsp.readFile(path.join(work, 'features.live'), 'utf8'), `${pointA}\n`);
  }
});

test('a rollback whose point has a manifest that cannot be read stops before the switch, rather than serve that point with the state of another and call it rolled back', async (t) => {
  const { work, pointA, pointB, version } = await twoRegistryPoints(t);
  for (const p of [pointA, pointB]) assert.equal((await lifeboat(['--quiet', 'failover', p], { cwd: work })).code, 0);
  assert.equal(version(), 'B');
  // A's manifest is gone (damaged, or a storage that fails): what state goes back with A is not known.
  const manifest = path.join(work, 'repo', 'points', `${pointA}.json`);
  await fsp.rename(manifest, `${manifest}.away`);
  const r = await lifeboat(['rollback'], { cwd: work });
  assert.equal(r.code, 3, r.stderr);
  assert.match(
    r.stderr,
    new RegExp(`^lifeboat: rollback of prod to ${pointA} failed before the switch: the serving state of ${pointA} cannot be put back, since its manifest could not be read: backup point ${pointA} is missing its manifest .*; prod still serves ${pointB}, nothing was switched\n  lifeboat rollback --to prod --no-state switches the link alone, leaving the serving state as it is\n$`),
  );
  assert.equal(await readlinkOf(path.join(work, 'current')), path.join(work, 'slots', pointB));
  assert.equal(version(), 'B');
  // Asked for in so many words: the link alone.
  assert.equal((await lifeboat(['--quiet', 'rollback', '--no-state'], { cwd: work })).code, 0);
  assert.equal(await readlinkOf(path.join(work, 'current')), path.join(work, 'slots', pointA));
  assert.equal(version(), 'B');
  await fsp.rename(`${manifest}.away`, manifest);
  assert.equal((await lifeboat(['--quiet', 'rollback'], { cwd: work })).code, 0);
  assert.equal((await lifeboat(['--quiet', 'rollback', '--state'], { cwd: work })).code, 0);
  assert.equal(version(), 'A', 'with its manifest back, the rollback puts its state back');
});

test('a rollback of a failover made with --no-state leaves the serving state alone as that failover did, instead of putting back an old copy over it; --state puts it back', async (t) => {
  const { work, pointA, pointB, version, run } = await twoRegistryPoints(t);
  await run('--quiet', 'failover', pointA);
  assert.equal(version(), 'A');
  // Only the model is to change: the registry is live and right.
  await run('--quiet', 'failover', pointB, '--no-state');
  const db = new Database(path.join(work, 'state', 'registry.db'));
  db.exec("UPDATE stage SET version = 'written since'");
  db.close();
  const back = await run('rollback');
  assert.match(back.stderr, new RegExp(`the failover to ${pointB} left the serving state as it was, so this rollback does too \\(--state puts the state of ${pointA} back\\)`));
  assert.equal(version(), 'written since', 'the registry is left alone');
  // Rolling back that rollback leaves it alone too.
  assert.match((await run('rollback')).stderr, new RegExp(`the rollback to ${pointA} left the serving state as it was`));
  assert.equal(version(), 'written since');
  await run('--quiet', 'rollback', '--state');
  assert.equal(version(), 'A', 'asked for, the state goes back');
  // A rollback of a switch that put the state back puts it back, as before.
  await run('--quiet', 'rollback');
  assert.equal(version(), 'B');
});

test('a failover run again for the point served leaves the serving state alone when that point was switched to with --no-state, as when its state went back then; --state puts it back', async (t) => {
  const { work, pointA, pointB, version, run } = await twoRegistryPoints(t);
  await run('--quiet', 'failover', pointA);
  const written = (what: string) => {
    const db = new Database(path.join(work, 'state', 'registry.db'));
    db.exec(`UPDATE stage SET version = '${what}'`);
    db.close();
  };
  for (const [how, by] of [['failover', ['failover', pointB, '--no-state']], ['rollback', ['rollback', '--no-state']]] as const) {
    await run('--quiet', ...by);
    written(`written since the ${how}`);
    // Run again to repair the slot served: the registry the service wrote to stays.
    const again = await run('failover', how === 'failover' ? pointB : pointA);
    assert.equal(version(), `written since the ${how}`, `the registry is left alone after a ${how} made with --no-state`);
    assert.match(again.stderr, /the state is left as it is \(--state puts it back again\)/);
  }
  await run('--quiet', 'failover', pointA, '--state');
  assert.equal(version(), 'A', 'asked for, the state goes back');
});

async function readlinkOf(link: string): Promise<string> {
  return path.resolve(path.dirname(link), await fsp.readlink(link));
}

test('a backup waiting for a writer that holds a SQLite database locked says so, and Ctrl-C stops it at once', { timeout: 60_000 }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await makeRepo(work);
  const dbFile = path.join(work, 'registry.db');
  seedDatabase(dbFile, 'delete');
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  registry: { sqlite: ./registry.db }\n');
  // A rollback-journal database in an exclusive transaction: no reader may open it until it ends.
  const writer = new Database(dbFile);
  t.after(() => writer.close());
  writer.exec("BEGIN EXCLUSIVE; INSERT INTO bulk (data) VALUES (x'00')");

  const child = spawnLifeboat(['backup', '--type', 'full'], { cwd: work });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  const closed = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  assert.ok(await waitFor(async () => /registry: .*registry\.db is locked by a writer; waiting/.test(stderr), 20_000), `no word of the wait: ${stderr}`);
  const interruptedAt = Date.now();
  child.kill('SIGINT');
  const code = await closed;
  const took = Date.now() - interruptedAt;
  assert.equal(code, 130, stderr);
  assert.ok(took < 3000, `stopped ${took} ms after SIGINT`);
  assert.match(stderr, /interrupted/);
  writer.exec('ROLLBACK');
  assert.equal((await lifeboat(['backup', '--type', 'full'], { cwd: work })).code, 0, 'the lock was released');
});

test('a SQLite database a writer crashed in, its transaction left in a hot journal, is backed up with its last committed state, saying the transaction was rolled back', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await makeRepo(work);
  const dbFile = path.join(work, 'registry.db');
  const db = new Database(dbFile);
  db.exec("CREATE TABLE versions (name TEXT); INSERT INTO versions VALUES ('v1'), ('v2')");
  db.close();
  crashMidTransaction(dbFile);
  assert.ok(await exists(`${dbFile}-journal`), 'the crash left a hot journal');
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  registry: { sqlite: ./registry.db }\n');

  const r = await lifeboat(['backup', '--type', 'full'], { cwd: work });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /registry: \S+registry\.db held a transaction a writer left unfinished \(registry\.db-journal\); it was rolled back/);
  const restored = path.join(work, 'restored');
  assert.equal((await lifeboat(['restore', 'latest', '--target', restored], { cwd: work })).code, 0);
  const copy = new Database(path.join(restored, 'registry', 'registry.db'), { readonly: true });
  t.after(() => copy.close());
  assert.deepEqual(copy.prepare('SELECT name FROM versions').all(), [{ name: 'v1' }, { name: 'v2' }]);
  assert.deepEqual(copy.prepare('SELECT count(*) AS n FROM uncommitted').get(), { n: 0 }, 'nothing of the unfinished transaction');
});

test('a failover run again for the point already served leaves the serving state written since alone; --state puts the backup copy back', async (t) => {
  const { work, pointB, version } = await twoRegistryPoints(t);
  const run = async (...args: string[]) => {
    const r = await lifeboat(args, { cwd: work });
    assert.equal(r.code, 0, r.stderr);
    return r;
  };
  await run('--quiet', 'failover', pointB);
  assert.equal(version(), 'B');
  // The service writes; the operator, unsure the first run went through, runs it again.
  const db = new Database(path.join(work, 'state', 'registry.db'));
  db.exec("UPDATE stage SET version = 'written since'");
  db.close();
  const again = await run('failover', pointB);
  assert.match(again.stderr, new RegExp(`prod already serves ${pointB}, whose serving state was put back when it was switched to; the state is left as it is \\(--state puts it back again\\)`));
  assert.equal(version(), 'written since', 'the registry is left alone');
  await run('--quiet', 'failover', pointB, '--state');
  assert.equal(version(), 'B', 'asked for, the state goes back');
});

test('a SQLite source this user may only read: a database it may not read, or one in WAL mode that no process has open in a directory it may not write, is one sentence with exit 2; open, it is copied', { skip: process.geteuid?.() === 0 ? false : 'needs root to run lifeboat as another user' }, async (t) => {
  const NOBODY = 65534;
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.chmod(work, 0o755);
  // The server's databases are root's, in root's directory; the backup runs as nobody, into its own repository.
  const registry = path.join(work, 'registry.db');
  seedDatabase(registry, 'wal');
  const secret = path.join(work, 'secret.db');
  seedDatabase(secret, 'delete');
  await fsp.chmod(secret, 0o600);
  const own = path.join(work, 'nobody');
  await fsp.mkdir(own);
  await fsp.chown(own, NOBODY, NOBODY);
  const run = (...args: string[]) => runChild(args, { cwd: own, user: { uid: NOBODY, gid: NOBODY } });
  assert.equal((await run('--repo', 'repo', 'init')).code, 0);
  const backup = async (database: string) => {
    await fsp.writeFile(path.join(own, 'lifeboat.yaml'), `repository: ./repo\nsources:\n  registry: { sqlite: ${database} }\n`);
    return run('backup');
  };

  // SQLite said "attempt to write a readonly database", and "unable to open database file", exit 1.
  const closed = await backup(registry);
  assert.equal(closed.code, 2, closed.stderr);
  assert.match(closed.stderr, new RegExp(`source registry: cannot read the SQLite database ${registry} as this user: it is in WAL mode and no process has it open, so reading it needs its -wal and -shm files made beside it, in ${work}, which this user may not write`));
  assert.match(closed.stderr, /run the backup as a user who may write .*, or while the server that writes the database has it open/);
  const unreadable = await backup(secret);
  assert.equal(unreadable.code, 2, unreadable.stderr);
  assert.match(unreadable.stderr, new RegExp(`source registry: cannot read the SQLite database ${secret}: EACCES`));
  assert.match(unreadable.stderr, /run the backup as a user who may read it/);
  assert.doesNotMatch(closed.stderr + unreadable.stderr, /unable to open|readonly database/);

  // While the server has it open, its -wal and -shm files are there to read through.
  const server = new Database(registry);
  t.after(() => server.close());
  server.prepare('INSERT INTO bulk (data) VALUES (?)').run(Buffer.from('written while open'));
  const open = await backup(registry);
  assert.equal(open.code, 0, open.stderr);
});

test('a SQLite database in a directory whose name ends in a space is named in quotes in what the backup says of it, as listings name it, so that the space is seen', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await makeRepo(work);
  const dbFile = path.join(work, 'state ', 'registry.db');
  await fsp.mkdir(path.dirname(dbFile));
  seedDatabase(dbFile, 'delete');
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ./repo\nsources:\n  registry: { sqlite: "./state /registry.db" }\n`);
  const r = await lifeboat(['backup'], { cwd: work });
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.stderr.includes(`copied SQLite database ${JSON.stringify(dbFile)} online`), r.stderr);
  // A file that is no database: the error names it the same way.
  await fsp.writeFile(dbFile, 'not a database at all, just some text that is long enough to have a header');
  const refused = await lifeboat(['backup'], { cwd: work });
  assert.equal(refused.code, 2, refused.stderr);
  assert.ok(refused.stderr.includes(`source registry: ${JSON.stringify(dbFile)} is not a SQLite database`), refused.stderr);
});

test('a postBackup hook that fails after a failed backup is a warning: --quiet still prints it (what preBackup paused may still be paused), and --log-format json gives it as one', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await makeRepo(work);
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'config.json'), '{}');
  await fsp.writeFile(
    path.join(work, 'lifeboat.yaml'),
    `repository: ./repo\nsources:\n  models: ./models\n  features: { command: "exit 1" }\nhooks:\n  preBackup: "true"\n  postBackup: 'echo cannot resume >&2; exit 3'\n`,
  );
  const quiet = await lifeboat(['--quiet', 'backup'], { cwd: work });
  assert.equal(quiet.code, 1, quiet.stderr);
  assert.match(quiet.stderr, /warning: postBackup hook exited with status 3: cannot resume\n/);
  assert.match(quiet.stderr, /^lifeboat: command of source features exited with status 1$/m);
  const json = await lifeboat(['--log-format', 'json', 'backup'], { cwd: work });
  assert.equal(json.code, 1, json.stderr);
  const lines = json.stderr.trimEnd().split('\n').map((l) => JSON.parse(l) as { level: string; msg: string; code?: string });
  assert.deepEqual(lines.filter((l) => l.code === 'hook-failed').map(({ level, msg }) => ({ level, msg })), [{ level: 'warning', msg: 'postBackup hook exited with status 3: cannot resume' }]);
});

// better-sqlite3 12 built against Node 24's headers: an object of it garbage-collected takes itself off
// Node's clean-up list at exit, which Node 24 aborts on during a collection (exit 134, a native stack).
test('the databases, statements and backups of SQLite copies, restores and checks are never collected, so that no collection after them aborts the process', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const db = path.join(work, 'registry.db');
  seedDatabase(db, 'wal');
  const script = [
    `import { copySqlite, integrityCheck, restoreSqlite } from ${JSON.stringify(new URL('../src/state/sqlite.js', import.meta.url).href)};`,
    `const [db, work] = process.argv.slice(1);`,
    `for (let i = 0; i < 5; i++) {`,
    `  await copySqlite('registry', db, work + '/copy' + i + '.db');`,
    `  if (integrityCheck(work + '/copy' + i + '.db') !== 'ok') throw new Error('copy ' + i);`,
    `  await restoreSqlite('registry', work + '/copy' + i + '.db', db);`,
    `  globalThis.gc();`,
    `}`,
    `process.stdout.write('ok');`,
  ].join('\n');
  const run = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script, db, work], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(run.status, 0, run.stderr);
  assert.equal(run.stdout, 'ok', run.stderr);
});
