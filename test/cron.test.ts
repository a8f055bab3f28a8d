import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import type { AddressInfo } from 'node:net';
import { DeleteObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { lifeboat, runChild, spawnLifeboat, type CliRun } from './helpers/cli.js';
import { tarBlocks } from './helpers/tar-blocks.js';
import { smallDeployment } from './helpers/repo.js';
import { freePort, sleep, waitFor } from './helpers/processes.js';
import { createTestBucket, testClient, startS3Server, type S3TestServer } from './helpers/s3server.js';
import { sendNotification, makeEvent } from '../src/core/notify.js';
import { updateMetricsFile } from '../src/core/metrics.js';

// ---- a strict reader of the Prometheus text exposition format (0.0.4) ----

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * Parses a textfile-collector file and throws on anything node_exporter would
 * refuse or misread: bad names or label syntax, a value that is not a float,
 * a TYPE after its samples or twice, samples of one metric not contiguous,
 * duplicate series, a missing final newline.
 */
function parsePrometheus(text: string): Sample[] {
  assert.ok(text.endsWith('\n'), 'the file ends with a newline');
  const samples: Sample[] = [];
  const typed = new Map<string, string>();
  const helped = new Set<string>();
  const finished = new Set<string>();
  const series = new Set<string>();
  let current: string | undefined;
  const lines = text.slice(0, -1).split('\n');
  for (const [n, line] of lines.entries()) {
    const where = `line ${n + 1}: ${JSON.stringify(line)}`;
    let m: RegExpExecArray | null;
    if ((m = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line))) {
      assert.ok(!helped.has(m[1]!), `second HELP for ${m[1]} (${where})`);
      assert.ok(!/\\[^\\n]/.test(m[2]!.replace(/\\\\/g, '')), `bad escape in HELP (${where})`);
      helped.add(m[1]!);
      continue;
    }
    if ((m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line))) {
      assert.ok(!typed.has(m[1]!), `second TYPE for ${m[1]} (${where})`);
      assert.ok(!samples.some((s) => s.name === m![1]), `TYPE after samples of ${m[1]} (${where})`);
      typed.set(m[1]!, m[2]!);
      continue;
    }
    assert.ok(!line.startsWith('#') || !/^# (HELP|TYPE)/.test(line), `malformed ${where}`);
    if (line.startsWith('#') || line.trim() === '') continue;
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([^ ]+)( -?\d+)?$/.exec(line);
    assert.ok(m, `not a sample: ${where}`);
    const name = m[1]!;
    const labels: Record<string, string> = {};
    if (m[2]) {
      const body = m[2].slice(1, -1);
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/y;
      let consumed = 0;
      while (consumed < body.length) {
        re.lastIndex = consumed;
        const l = re.exec(body);
        assert.ok(l, `bad labels at ${consumed} (${where})`);
        assert.ok(!(l[1]! in labels), `duplicate label ${l[1]} (${where})`);
        labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
        consumed = re.lastIndex;
      }
    }
    const v = m[3]!;
    assert.ok(/^(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN)$/.test(v), `bad value ${v} (${where})`);
    if (current !== name) {
      assert.ok(!finished.has(name), `samples of ${name} are not contiguous (${where})`);
      if (current) finished.add(current);
      current = name;
    }
    const key = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
    assert.ok(!series.has(key), `duplicate series (${where})`);
    series.add(key);
    samples.push({ name, labels, value: v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : Number(v) });
  }
  return samples;
}

const value = (samples: Sample[], name: string, command: string) => samples.find((s) => s.name === name && s.labels.command === command)?.value;

// ---- a local webhook receiver ----

interface Receiver {
  url: string;
  bodies: any[];
  headers: http.IncomingHttpHeaders[];
  close(): Promise<void>;
}

async function receiver(status = 204, port = 0): Promise<Receiver> {
  const bodies: any[] = [];
  const headers: http.IncomingHttpHeaders[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      assert.equal(req.method, 'POST');
      assert.match(req.headers['content-type'] ?? '', /application\/json/);
      bodies.push(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      headers.push(req.headers);
      res.writeHead(status).end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/lifeboat?token=secret`;
  return { url, bodies, headers, close: () => new Promise((r) => server.close(() => r())) };
}

test('--metrics-file writes Prometheus text format atomically, keeps other commands\' samples, and carries the last success over a failure', async () => {
  const d = await smallDeployment();
  const metrics = path.join(d.work, 'textfile', 'lifeboat.prom');
  await fsp.mkdir(path.dirname(metrics));
  const before = Date.now() / 1000;
  const b = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--metrics-file', metrics]);
  assert.equal(b.code, 0, b.stderr);
  let samples = parsePrometheus(await fsp.readFile(metrics, 'utf8'));
  assert.equal(value(samples, 'lifeboat_last_run_exit_code', 'backup'), 0);
  assert.equal(value(samples, 'lifeboat_last_run_success', 'backup'), 1);
  const success = value(samples, 'lifeboat_last_success_timestamp_seconds', 'backup')!;
  assert.ok(success >= before - 1 && success <= Date.now() / 1000 + 1, 'last success is now');
  assert.equal(value(samples, 'lifeboat_last_run_bytes', 'backup'), b.json().bytes);
  assert.equal(value(samples, 'lifeboat_last_run_files', 'backup'), b.json().files);
  assert.equal(value(samples, 'lifeboat_points', 'backup'), 1);
  assert.ok(value(samples, 'lifeboat_last_run_duration_seconds', 'backup')! >= 0);

  const v = await lifeboat(['--repo', d.repo, 'verify', '--read-data', '--metrics-file', metrics]);
  assert.equal(v.code, 0, v.stderr);
  const dr = await lifeboat(['--repo', d.repo, 'drill', '--rpo', '1h', '--metrics-file', metrics]);
  assert.equal(dr.code, 0, dr.stderr);
  const pr = await lifeboat(['--repo', d.repo, 'prune', '--keep-full', '3', '--metrics-file', metrics]);
  assert.equal(pr.code, 0, pr.stderr);
  samples = parsePrometheus(await fsp.readFile(metrics, 'utf8'));
  for (const command of ['backup', 'verify', 'drill', 'prune']) assert.equal(value(samples, 'lifeboat_last_run_exit_code', command), 0, command);
  assert.ok(value(samples, 'lifeboat_last_run_bytes', 'verify')! > 0);
  assert.ok(value(samples, 'lifeboat_drill_rto_seconds', 'drill')! >= 0);
  assert.ok(value(samples, 'lifeboat_drill_rpo_seconds', 'drill')! >= 0);
  assert.equal(value(samples, 'lifeboat_drill_objectives_met', 'drill'), 1);

  // A failed backup: its exit status is recorded, its last success is kept.
  const failed = await lifeboat(['--repo', d.repo, 'backup', path.join(d.work, 'missing'), '--metrics-file', metrics]);
  assert.notEqual(failed.code, 0);
  samples = parsePrometheus(await fsp.readFile(metrics, 'utf8'));
  assert.equal(value(samples, 'lifeboat_last_run_exit_code', 'backup'), failed.code);
  assert.equal(value(samples, 'lifeboat_last_run_success', 'backup'), 0);
  assert.equal(value(samples, 'lifeboat_last_success_timestamp_seconds', 'backup'), success);
  assert.equal(value(samples, 'lifeboat_points', 'backup'), 1, 'the count of points is kept too, not dropped for absent()');
  assert.equal(value(samples, 'lifeboat_last_run_warnings', 'backup'), 0, 'a run that failed before it warned says so');
  // One that fails before it opens the repository (a repository not there, a wrong password) too.
  const unopened = await lifeboat(['--repo', path.join(d.work, 'no-repo'), 'backup', d.src, '--metrics-file', metrics]);
  assert.equal(unopened.code, 2, unopened.stderr);
  assert.equal(value(parsePrometheus(await fsp.readFile(metrics, 'utf8')), 'lifeboat_last_run_warnings', 'backup'), 0);
  assert.equal(value(samples, 'lifeboat_last_run_exit_code', 'verify'), 0, 'other commands are untouched');
  assert.deepEqual(await fsp.readdir(path.dirname(metrics)), ['lifeboat.prom'], 'no temporary file is left beside it');

  // A drill that misses its objective says so in its metrics.
  const missed = await lifeboat(['--repo', d.repo, 'drill', '--rpo', '1ms', '--metrics-file', metrics]);
  assert.equal(missed.code, 5);
  samples = parsePrometheus(await fsp.readFile(metrics, 'utf8'));
  assert.equal(value(samples, 'lifeboat_last_run_exit_code', 'drill'), 5);
  assert.equal(value(samples, 'lifeboat_drill_objectives_met', 'drill'), 0);
  await fsp.rm(d.work, { recursive: true, force: true });
});

/**
 * Makes `file` one this process may not delete: immutable (chattr +i) where it may set that (root, which
 * the modes do not stop), else its directory not writable. Returns what undoes it.
 */
async function undeletable(file: string): Promise<() => Promise<void>> {
  if (spawnSync('chattr', ['+i', file]).status === 0) return async () => void spawnSync('chattr', ['-i', file]);
  await fsp.chmod(path.dirname(file), 0o555);
  return () => fsp.chmod(path.dirname(file), 0o755);
}

test('a prune that fails half-way, having removed points, counts in its metrics the points that remain, not those of the run before', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  for (let i = 0; i < 3; i++) {
    await fsp.writeFile(path.join(d.src, 'config.json'), JSON.stringify({ step: i }));
    assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src, '--type', 'full'])).code, 0);
  }
  const metrics = path.join(d.work, 'lifeboat.prom');
  const kept = await lifeboat(['--repo', d.repo, 'prune', '--keep-full', '3', '--metrics-file', metrics]);
  assert.equal(kept.code, 0, kept.stderr);
  assert.equal(value(parsePrometheus(await fsp.readFile(metrics, 'utf8')), 'lifeboat_points', 'prune'), 3);

  // The data of the oldest point cannot be deleted: the prune fails once it has removed the points' manifests.
  const [oldest] = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json().map((p: { id: string }) => p.id) as string[];
  const [volume] = await fsp.readdir(path.join(d.repo, 'data', oldest!));
  const undo = await undeletable(path.join(d.repo, 'data', oldest!, volume!));
  t.after(undo);
  const failed = await lifeboat(['--repo', d.repo, 'prune', '--keep-full', '1', '--metrics-file', metrics]);
  await undo();
  assert.equal(failed.code, 2, failed.stderr);
  assert.match(failed.stderr, new RegExp(`cannot delete data/${oldest}/`));
  assert.equal((await lifeboat(['--repo', d.repo, '--json', 'list'])).json().length, 1, 'the points were removed');
  const samples = parsePrometheus(await fsp.readFile(metrics, 'utf8'));
  assert.equal(value(samples, 'lifeboat_last_run_exit_code', 'prune'), 2);
  assert.equal(value(samples, 'lifeboat_points', 'prune'), 1);
});

test('a metrics file that cannot be written (a full disk, a file-size limit) is a warning that leaves no temporary file beside it, run after run', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  // In a directory whose name ends with a space: the warning quotes the path, as other messages quote names.
  const metrics = path.join(d.work, 'textfile ', 'lifeboat.prom');
  await fsp.mkdir(path.dirname(metrics));
  // Under `ulimit -f 0` no file can take a byte: the metrics file's first write fails as on a full disk.
  for (let run = 0; run < 2; run++) {
    const v = await runChild(['--repo', d.repo, 'verify', '--metrics-file', metrics], { ulimit: { f: 0 } });
    assert.equal(v.code, 0, v.stderr);
    assert.ok(v.stderr.includes(`warning: could not write the metrics file "${metrics}": EFBIG`), v.stderr);
  }
  assert.deepEqual(await fsp.readdir(path.dirname(metrics)), [], 'no temporary file is left there');
});

test('--metrics-file in a directory not made yet makes it; a path that cannot be a file is refused before the run, not warned of after it', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  const drill = (metrics: string) => lifeboat(['--repo', d.repo, '--json', 'drill', '--rpo', '1h', '--metrics-file', metrics], { cwd: d.work });
  const made = await drill('textfile/lifeboat/drill.prom');
  assert.equal(made.code, 0, made.stderr);
  assert.doesNotMatch(made.stderr, /warning/);
  assert.equal(value(parsePrometheus(await fsp.readFile(path.join(d.work, 'textfile', 'lifeboat', 'drill.prom'), 'utf8')), 'lifeboat_drill_objectives_met', 'drill'), 1);

  await fsp.writeFile(path.join(d.work, 'textfile.txt'), '');
  const journal = async () => (await fsp.readdir(path.join(d.repo, 'journal'))).length;
  const drills = await journal();
  for (const [metrics, message] of [
    ['textfile.txt/drill.prom', /^--metrics-file textfile\.txt\/drill\.prom: .*textfile\.txt is not a directory$/],
    ['textfile', /^--metrics-file textfile is a directory$/],
  ] as const) {
    const refused = await drill(metrics);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.json().error.message, message);
    assert.equal(await journal(), drills, 'the drill did not run');
  }
  // As for every command that takes it.
  const backup = await lifeboat(['--repo', d.repo, 'backup', d.src, '--metrics-file', 'textfile'], { cwd: d.work });
  assert.equal(backup.code, 2, backup.stderr);
});

test('--metrics-file shared by the runs of two deployments keeps each one\'s samples apart (label deployment)', async () => {
  const d = await smallDeployment();
  const metrics = path.join(d.work, 'lifeboat.prom');
  const run = (...args: string[]) => lifeboat(['--repo', d.repo, ...args, '--metrics-file', metrics]);
  assert.equal((await run('--deployment', 'a', 'backup', d.src)).code, 0);
  assert.equal((await run('--deployment', 'b', 'backup', d.src)).code, 0);
  assert.notEqual((await run('--deployment', 'b', 'backup', path.join(d.work, 'missing'))).code, 0);
  const samples = parsePrometheus(await fsp.readFile(metrics, 'utf8'));
  const of = (deployment: string) => samples.find((s) => s.name === 'lifeboat_last_run_success' && s.labels.command === 'backup' && s.labels.deployment === deployment)?.value;
  assert.equal(of('a'), 1, "b's failure does not replace a's success");
  assert.equal(of('b'), 0);
  assert.ok(samples.some((s) => s.name === 'lifeboat_last_success_timestamp_seconds' && s.labels.deployment === 'b'), "b's last success is kept over its failure");
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('--notify-url POSTs a JSON event on failure, on success only when asked; notify.url comes from the config too', async () => {
  const d = await smallDeployment();
  const hook = await receiver();
  try {
    const ok = await lifeboat(['--repo', d.repo, 'backup', d.src, '--notify-url', hook.url]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(hook.bodies.length, 0, 'no event for a success by default');

    const bad = await lifeboat(['--repo', d.repo, 'backup', path.join(d.work, 'missing'), '--notify-url', hook.url]);
    assert.notEqual(bad.code, 0);
    assert.equal(hook.bodies.length, 1);
    const e = hook.bodies[0];
    assert.equal(e.source, 'lifeboat');
    assert.equal(e.command, 'backup');
    assert.equal(e.outcome, 'failure');
    assert.equal(e.exitCode, bad.code);
    assert.match(e.message, /missing/);
    assert.equal(e.host, os.hostname());
    assert.equal(e.repository, d.repo);
    assert.equal(e.deployment, null);
    assert.ok(Date.parse(e.startedAt) <= Date.parse(e.endedAt));

    const told = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--notify-url', hook.url, '--notify-on', 'success']);
    assert.equal(told.code, 0, told.stderr);
    assert.equal(hook.bodies.length, 2);
    assert.equal(hook.bodies[1].outcome, 'success');
    assert.equal(hook.bodies[1].exitCode, 0);
    assert.equal(hook.bodies[1].point, told.json().id);
    assert.equal(hook.bodies[1].detail.files, told.json().files);

    await fsp.writeFile(path.join(d.work, 'lifeboat.yaml'), `repository: ${d.repo}\ndeployment: default\nnotify: { url: "${hook.url}", on: [failure] }\n`);
    const drill = await lifeboat(['drill', '--rpo', '1ms'], { cwd: d.work });
    assert.equal(drill.code, 5);
    assert.equal(hook.bodies.length, 3);
    assert.equal(hook.bodies[2].command, 'drill');
    assert.equal(hook.bodies[2].deployment, 'default');
    assert.equal(hook.bodies[2].exitCode, 5);
    assert.equal(typeof hook.bodies[2].detail.rpoMs, 'number');
  } finally {
    await hook.close();
  }
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('a backup that left a file out succeeds, and says so to monitoring: --notify-on warning and lifeboat_last_run_warnings', async () => {
  const d = await smallDeployment();
  const hook = await receiver();
  const metrics = path.join(d.work, 'lifeboat.prom');
  const backup = (...extra: string[]) => lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--notify-url', hook.url, '--notify-on', 'warning', '--metrics-file', metrics, ...extra]);
  try {
    const clean = await backup();
    assert.equal(clean.code, 0, clean.stderr);
    assert.equal(hook.bodies.length, 0, 'no event for a backup without warnings');
    assert.equal(value(parsePrometheus(await fsp.readFile(metrics, 'utf8')), 'lifeboat_last_run_warnings', 'backup'), 0);

    // A name that is not UTF-8 cannot be stored: the file is left out, with a warning.
    await fsp.writeFile(Buffer.from(`${d.src}/bad-\xff-name.bin`, 'latin1'), 'weights');
    const warned = await backup();
    assert.equal(warned.code, 0, warned.stderr);
    assert.equal(hook.bodies.length, 1);
    const e = hook.bodies[0];
    assert.equal(e.outcome, 'success');
    assert.equal(e.point, warned.json().id);
    assert.equal(e.detail.warnings, 1);
    assert.equal(e.warnings.length, 1);
    assert.match(e.warnings[0].message, /not valid UTF-8/);
    assert.equal(typeof e.warnings[0].code, 'string');
    assert.equal(value(parsePrometheus(await fsp.readFile(metrics, 'utf8')), 'lifeboat_last_run_warnings', 'backup'), 1);

    // A backup that fails for its warnings (--strict) reports them with its failure.
    const strict = await backup('--strict');
    assert.equal(strict.code, 3, strict.stderr);
    assert.equal(hook.bodies.length, 2);
    const failure = hook.bodies[1];
    assert.equal(failure.outcome, 'failure');
    assert.equal(failure.detail.warnings, 1);
    assert.match(failure.warnings[0].message, /not valid UTF-8/);
    assert.equal(value(parsePrometheus(await fsp.readFile(metrics, 'utf8')), 'lifeboat_last_run_warnings', 'backup'), 1);

    // Failures are always told; a warning only when asked.
    const quiet = await lifeboat(['--repo', d.repo, 'backup', d.src, '--notify-url', hook.url]);
    assert.equal(quiet.code, 0, quiet.stderr);
    assert.equal(hook.bodies.length, 2);
  } finally {
    await hook.close();
  }
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('a drill that warned (its journal entry could not be written) says so to monitoring: --notify-on warning and lifeboat_last_run_warnings', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  const hook = await receiver();
  t.after(() => hook.close());
  const metrics = path.join(d.work, 'lifeboat.prom');
  const drill = () => lifeboat(['--repo', d.repo, '--json', 'drill', '--notify-url', hook.url, '--notify-on', 'warning', '--metrics-file', metrics]);
  const clean = await drill();
  assert.equal(clean.code, 0, clean.stderr);
  assert.deepEqual(clean.json().warnings, []);
  assert.equal(hook.bodies.length, 0, 'no event for a drill without warnings');
  assert.equal(value(parsePrometheus(await fsp.readFile(metrics, 'utf8')), 'lifeboat_last_run_warnings', 'drill'), 0);

  // A file where the journal's directory should be: the drill passes, its entry cannot be written.
  await fsp.rm(path.join(d.repo, 'journal'), { recursive: true });
  await fsp.writeFile(path.join(d.repo, 'journal'), '');
  const warned = await drill();
  assert.equal(warned.code, 0, warned.stderr);
  assert.match(warned.stderr, /warning: could not record the drill in the journal/);
  assert.deepEqual(warned.json().warnings.map((w: { code: string }) => w.code), ['journal-failed']);
  assert.equal(value(parsePrometheus(await fsp.readFile(metrics, 'utf8')), 'lifeboat_last_run_warnings', 'drill'), 1);
  assert.equal(hook.bodies.length, 1);
  const e = hook.bodies[0];
  assert.equal(e.command, 'drill');
  assert.equal(e.outcome, 'success');
  assert.equal(e.detail.warnings, 1);
  assert.equal(e.warnings[0].code, 'journal-failed');
  assert.match(e.warnings[0].message, /could not record the drill in the journal/);
});

test('a drill stopped early says what it warned about to monitoring as one that finished does, and says when its JUnit report could not be written', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const b = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src]);
  assert.equal(b.code, 0, b.stderr);
  // A flipped byte in the padding after a file body: every file restores intact, the volume's CRC-32 warns.
  const dir = path.join(d.repo, 'data', b.json().id);
  const volume = path.join(dir, (await fsp.readdir(dir))[0]!);
  const bytes = await fsp.readFile(volume);
  const padding = [...tarBlocks(bytes)].find((x) => x.type === '0' && x.size % 512 !== 0)!.padding;
  bytes[padding] ^= 1;
  await fsp.writeFile(volume, bytes);
  const hook = await receiver();
  t.after(() => hook.close());
  const metrics = path.join(d.work, 'lifeboat.prom');
  await fsp.mkdir(path.join(d.work, 'reports'));
  // The smoke test replaces the report's directory with a file, then the CI job times out (SIGTERM to lifeboat).
  const smoke = 'rm -rf reports && echo not a directory > reports; kill -TERM $PPID; exec sleep 30';
  const r = await runChild(['--repo', d.repo, '--json', 'drill', '--smoke', smoke, '--junit', 'reports/drill.xml', '--notify-url', hook.url, '--notify-on', 'warning', '--metrics-file', metrics], { cwd: d.work });
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /warning: .*does not match its recorded size or CRC-32/);
  assert.match(r.stderr, /warning: could not write the JUnit report .*drill\.xml: /, 'a report asked for and not written is said');
  const doc = r.json();
  assert.equal(doc.error.exitCode, 130);
  assert.deepEqual(doc.warnings.map((w: { code: string }) => w.code), ['volume-checksum', 'junit-failed']);
  assert.deepEqual(doc.checks.map((c: { status: string }) => c.status), ['passed', 'passed', 'passed', 'error', 'skipped', 'skipped']);
  const samples = parsePrometheus(await fsp.readFile(metrics, 'utf8'));
  assert.equal(value(samples, 'lifeboat_last_run_exit_code', 'drill'), 130);
  assert.equal(value(samples, 'lifeboat_last_run_warnings', 'drill'), 2);
  assert.equal(hook.bodies.length, 1);
  assert.equal(hook.bodies[0].outcome, 'failure');
  assert.equal(hook.bodies[0].detail.warnings, 2);
  assert.deepEqual(hook.bodies[0].warnings.map((w: { code: string }) => w.code), ['volume-checksum', 'junit-failed']);

  // Stopped by an error before any check (no such point): the report that cannot be written is said too.
  const early = await lifeboat(['--repo', d.repo, '--json', 'drill', 'nosuchpoint', '--junit', path.join(d.work, 'drill.xml'), '--metrics-file', metrics], { cwd: d.work });
  assert.equal(early.code, 2);
  assert.equal(value(parsePrometheus(await fsp.readFile(metrics, 'utf8')), 'lifeboat_last_run_warnings', 'drill'), 0);
});

test('a dead or failing notify URL does not fail the backup; the warning does not show the URL\'s secrets', async () => {
  const d = await smallDeployment();
  const port = await freePort();
  const dead = `http://user:pass@127.0.0.1:${port}/hook?token=secret`;
  const r = await lifeboat(['--repo', d.repo, 'backup', d.src, '--notify-url', dead, '--notify-on', 'success']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /could not notify/);
  assert.ok(!r.stderr.includes('secret') && !r.stderr.includes('pass'), r.stderr);

  const hook = await receiver(500);
  try {
    const r2 = await lifeboat(['--repo', d.repo, 'backup', d.src, '--notify-url', hook.url, '--notify-on', 'success']);
    assert.equal(r2.code, 0);
    assert.match(r2.stderr, /500/);
  } finally {
    await hook.close();
  }

  // A server that never answers is given up on after the timeout.
  const sockets = new Set<import('node:net').Socket>();
  const silent = http.createServer(() => undefined);
  silent.on('connection', (s) => sockets.add(s));
  await new Promise<void>((res) => silent.listen(0, '127.0.0.1', res));
  const started = Date.now();
  const event = makeEvent({ command: 'backup', outcome: 'failure', exitCode: 1, message: 'x', repository: null, deployment: null, point: null, startedAt: '', endedAt: '', durationMs: 0, warnings: [], detail: {} });
  const problem = await sendNotification(`http://127.0.0.1:${(silent.address() as AddressInfo).port}/`, event, 300);
  assert.equal(problem, 'no answer within 0.3 s', 'a timeout is reported, with how long was waited');
  assert.ok(Date.now() - started < 3000);
  for (const s of sockets) s.destroy();
  await new Promise((res) => silent.close(res));
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('runs that end at once and share a metrics file each keep their samples; a lock left by a killed run is taken over', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'lifeboat-test-'));
  try {
    const metrics = path.join(dir, 'lifeboat.prom');
    const runs = ['backup', 'verify', 'prune', 'drill'].flatMap((command) => ['a', 'b', 'c'].map((deployment) => ({ command, deployment })));
    await Promise.all(
      runs.map((run) => updateMetricsFile(metrics, run, [{ name: 'lifeboat_last_run_exit_code', labels: { command: run.command, deployment: run.deployment }, value: 0 }])),
    );
    const samples = parsePrometheus(await fsp.readFile(metrics, 'utf8'));
    assert.equal(samples.length, runs.length, 'no run lost another\'s samples');

    // A real run of the CLI, too, whose metrics file's lock was left behind a minute ago.
    const lock = path.join(dir, '.lifeboat.prom.lock');
    await fsp.writeFile(lock, '');
    const old = new Date(Date.now() - 60_000);
    await fsp.utimes(lock, old, old);
    const r = await runChild(['--quiet', '--repo', path.join(dir, 'missing-repo'), 'verify', '--metrics-file', metrics]);
    assert.notEqual(r.code, 0);
    assert.doesNotMatch(r.stderr, /metrics/);
    const verify = parsePrometheus(await fsp.readFile(metrics, 'utf8')).find((x) => x.name === 'lifeboat_last_run_exit_code' && x.labels.command === 'verify' && !x.labels.deployment);
    assert.equal(verify?.value, r.code);
    assert.deepEqual((await fsp.readdir(dir)).sort(), ['lifeboat.prom'], 'no lock or temporary file is left');
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('a notify URL on a port browsers block (6000, 6665-6669, 10080) gets its event, as curl would send it', async (t) => {
  let hook: Receiver | undefined;
  for (const port of [6000, 6665, 6666, 6667, 6668, 6669, 10080]) {
    hook = await receiver(204, port).catch(() => undefined);
    if (hook) break;
  }
  if (!hook) return t.skip('every such port is taken on this host');
  const d = await smallDeployment();
  try {
    const r = await lifeboat(['--quiet', '--repo', d.repo, 'backup', d.src, '--notify-url', hook.url, '--notify-on', 'success']);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /could not notify/);
    assert.equal(hook.bodies.length, 1, `the event reached ${hook.url}`);
    assert.equal(hook.bodies[0].outcome, 'success');
  } finally {
    await hook.close();
    await fsp.rm(d.work, { recursive: true, force: true });
  }
});

test('a notify URL that redirects (302, 301, 308) gets the event POSTed where it points, without credentials on another host', async () => {
  const d = await smallDeployment();
  const hook = await receiver();
  const seen: { method?: string; authorization?: string }[] = [];
  const moved = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      seen.push({ method: req.method, authorization: req.headers.authorization });
      const status = req.url === '/a' ? 302 : req.url === '/b' ? 301 : 308;
      const next = req.url === '/a' ? '/b' : req.url === '/b' ? '/c' : hook.url;
      res.writeHead(status, { location: next }).end();
    });
  });
  await new Promise<void>((r) => moved.listen(0, '127.0.0.1', r));
  try {
    const url = `http://user:pass@127.0.0.1:${(moved.address() as AddressInfo).port}/a`;
    const r = await lifeboat(['--quiet', '--repo', d.repo, 'backup', path.join(d.work, 'missing'), '--notify-url', url]);
    assert.equal(r.code, 2, r.stderr);
    assert.doesNotMatch(r.stderr, /could not notify/);
    assert.equal(hook.bodies.length, 1, 'the event reached the address the redirects lead to');
    assert.equal(hook.bodies[0].outcome, 'failure');
    assert.deepEqual(seen.map((s) => s.method), ['POST', 'POST', 'POST']);
    assert.ok(seen.every((s) => s.authorization?.startsWith('Basic ')), 'same host: the credentials go along');
    assert.equal(hook.headers[0]!.authorization, undefined, 'another host: they do not');

    // A server that keeps redirecting is given up on, with a warning.
    const loop = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => res.writeHead(307, { location: '/again' }).end());
    });
    await new Promise<void>((r) => loop.listen(0, '127.0.0.1', r));
    const event = makeEvent({ command: 'backup', outcome: 'failure', exitCode: 1, message: 'x', repository: null, deployment: null, point: null, startedAt: '', endedAt: '', durationMs: 0, warnings: [], detail: {} });
    assert.match((await sendNotification(`http://127.0.0.1:${(loop.address() as AddressInfo).port}/`, event)) ?? '', /redirected more than/);
    await new Promise((res) => loop.close(res));
  } finally {
    await hook.close();
    await new Promise((res) => moved.close(res));
    await fsp.rm(d.work, { recursive: true, force: true });
  }
});

test('--log-format json: every stderr line is one JSON object; results stay on stdout', async () => {
  const d = await smallDeployment();
  const lockFile = path.join(d.repo, 'locks', 'lock.json');
  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  const now = new Date().toISOString();
  await fsp.writeFile(lockFile, JSON.stringify({ host: os.hostname(), pid: 2 ** 22 + 4321, command: 'backup', startedAt: now, refreshedAt: now, leaseMs: 1_800_000 }));
  const r = await lifeboat(['--repo', d.repo, '--log-format', 'json', 'backup', d.src]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /took full backup/);
  const lines = r.stderr.trimEnd().split('\n');
  assert.ok(lines.length >= 1);
  const parsed = lines.map((l) => JSON.parse(l));
  for (const p of parsed) {
    assert.ok(!Number.isNaN(Date.parse(p.time)), 'time');
    assert.ok(['info', 'warning', 'error'].includes(p.level));
    assert.equal(typeof p.msg, 'string');
  }
  assert.ok(parsed.some((p) => p.level === 'warning' && p.code === 'stale-lock'), r.stderr);

  const bad = await lifeboat(['--repo', path.join(d.work, 'nothing'), '--log-format', 'json', 'verify']);
  assert.equal(bad.code, 2);
  const err = JSON.parse(bad.stderr.trim());
  assert.equal(err.level, 'error');
  assert.equal(err.exitCode, 2);
  assert.match(err.msg, /no lifeboat repository/);

  // Without it, a non-terminal gets plain timestamped lines.
  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  await fsp.writeFile(lockFile, JSON.stringify({ host: os.hostname(), pid: 2 ** 22 + 4321, command: 'backup', startedAt: now, refreshedAt: now, leaseMs: 1_800_000 }));
  const plain = await lifeboat(['--repo', d.repo, 'backup', d.src]);
  assert.match(plain.stderr, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z warning: took over a stale lock/m);
  assert.ok(!/\x1b\[/.test(plain.stderr), 'no ANSI escapes');
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('--log-format json: what the entry point says itself (a signal received, results that could not be written) is a JSON line too', { skip: existsSync('/dev/full') ? undefined : 'no /dev/full' }, async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  // The command says when it runs: nothing is printed before its output is captured, and the backup ends soon after.
  const running = path.join(d.work, 'running');
  await fsp.writeFile(path.join(d.work, 'lifeboat.yaml'), `repository: ${JSON.stringify(d.repo)}\nsources:\n  slow: { command: "touch running; sleep 20; echo state" }\n`);
  const child = spawnLifeboat(['--log-format', 'json', 'backup'], { cwd: d.work });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  assert.ok(await waitFor(() => fsp.access(running).then(() => true, () => false), 30_000), `the command source did not start: ${stderr}`);
  child.kill('SIGTERM');
  assert.equal(await exited, 130, stderr);
  const lines = stderr.trimEnd().split('\n').map((l) => JSON.parse(l));
  assert.ok(lines.some((l) => l.level === 'warning' && l.msg === 'SIGTERM received, stopping cleanly…'), stderr);
  assert.equal(lines.at(-1).exitCode, 130);

  const full = openSync('/dev/full', 'w');
  t.after(() => closeSync(full));
  const lost = await runChild(['--repo', d.repo, 'list', '--log-format=json'], { stdout: full });
  assert.equal(lost.code, 1, lost.stderr);
  const line = JSON.parse(lost.stderr);
  assert.deepEqual([line.level, line.msg, line.exitCode], ['error', 'could not write to standard output: no space left on device (ENOSPC)', 1]);
});

// ---- locks that heal themselves, the same on local disk and S3 ----

interface LockBed {
  cli(args: string[]): Promise<CliRun>;
  putLock(info: object): Promise<void>;
  lockExists(): Promise<boolean>;
  src: string;
}

async function staleLockScenario(bed: LockBed): Promise<void> {
  const minutesAgo = (m: number) => new Date(Date.now() - m * 60_000).toISOString();
  const elsewhere = { host: 'batch-node-7', pid: 4242, command: 'backup', startedAt: minutesAgo(60), refreshedAt: minutesAgo(10), leaseMs: 1_800_000 };

  // Refreshed 10 minutes ago with a 30-minute lease: live by default.
  await bed.putLock(elsewhere);
  const blocked = await bed.cli(['backup', bed.src]);
  assert.equal(blocked.code, 4, blocked.stderr);
  assert.match(blocked.stderr, /batch-node-7, pid 4242/);
  assert.equal((await bed.cli(['unlock'])).code, 4, 'unlock refuses a live lock');

  // With a 5-minute threshold it is stale: reported and taken over by the next writer.
  const took = await bed.cli(['backup', bed.src, '--lock-stale-after', '5m']);
  assert.equal(took.code, 0, took.stderr);
  assert.match(took.stderr, /took over a stale lock .*batch-node-7.*10 min|took over a stale lock .*batch-node-7/);
  assert.equal(await bed.lockExists(), false, 'released after the backup');

  await bed.putLock(elsewhere);
  const pruned = await bed.cli(['prune', '--keep-full', '2', '--lock-stale-after', '5m']);
  assert.equal(pruned.code, 0, pruned.stderr);
  assert.match(pruned.stderr, /stale lock/);
  assert.equal(await bed.lockExists(), false);

  await bed.putLock(elsewhere);
  const u = await bed.cli(['--json', 'unlock', '--lock-stale-after', '5m']);
  assert.equal(u.code, 0, u.stderr);
  assert.equal(u.json().removed, true);
  assert.equal(u.json().stale, true);
  assert.equal(await bed.lockExists(), false);

  // A holder on this host whose process is gone is stale at once, without any setting.
  await bed.putLock({ ...elsewhere, host: os.hostname(), pid: 2 ** 22 + 777, refreshedAt: minutesAgo(0) });
  const dead = await bed.cli(['backup', bed.src]);
  assert.equal(dead.code, 0, dead.stderr);
  assert.match(dead.stderr, /no longer runs/);

  // A live holder (this very process, which took it after it started): unlock refuses, --force removes it.
  await bed.putLock({ ...elsewhere, host: os.hostname(), pid: process.pid, startedAt: minutesAgo(0), refreshedAt: minutesAgo(0) });
  assert.equal((await bed.cli(['unlock', '--lock-stale-after', '5m'])).code, 4);
  const forced = await bed.cli(['--json', 'unlock', '--force']);
  assert.equal(forced.code, 0);
  assert.equal(forced.json().stale, false);
  assert.equal(await bed.lockExists(), false);

  // An expired lease (an OOM-killed cron job on another host) heals by itself.
  await bed.putLock({ ...elsewhere, refreshedAt: minutesAgo(45) });
  const healed = await bed.cli(['backup', bed.src]);
  assert.equal(healed.code, 0, healed.stderr);
  assert.match(healed.stderr, /stale lock/);
}

test('stale locks are reported and taken over, with a configurable threshold; unlock refuses a live lock unless --force (local)', async () => {
  const d = await smallDeployment();
  const lockFile = path.join(d.repo, 'locks', 'lock.json');
  await staleLockScenario({
    src: d.src,
    cli: (args) => lifeboat(['--repo', d.repo, ...args]),
    putLock: async (info) => {
      await fsp.mkdir(path.dirname(lockFile), { recursive: true });
      await fsp.writeFile(lockFile, JSON.stringify(info));
    },
    lockExists: () => fsp.access(lockFile).then(() => true, () => false),
  });
  // lock.staleAfter in the config does what the flag does.
  await fsp.writeFile(path.join(d.work, 'lifeboat.yaml'), `repository: ${d.repo}\nlock: { staleAfter: 5m }\n`);
  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  await fsp.writeFile(lockFile, JSON.stringify({ host: 'batch-node-7', pid: 1, command: 'prune', startedAt: new Date().toISOString(), refreshedAt: new Date(Date.now() - 600_000).toISOString(), leaseMs: 1_800_000 }));
  const r = await lifeboat(['backup', d.src], { cwd: d.work });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /stale lock/);
  await fsp.writeFile(path.join(d.work, 'lifeboat.yaml'), `repository: ${d.repo}\nlock: { staleAfter: soon }\n`);
  const bad = await lifeboat(['backup', d.src], { cwd: d.work });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /lock\.staleAfter/);
  await fsp.rm(d.work, { recursive: true, force: true });
});

describe('on S3', () => {
  let server: S3TestServer;
  let bucket: string;
  let sdk: S3Client;
  before(async () => {
    server = await startS3Server();
    bucket = await createTestBucket(server);
    sdk = testClient(server);
  });
  after(async () => {
    sdk?.destroy();
    await server?.stop();
  });

  test('stale locks are taken over and unlock behaves the same on an S3 repository', async (t) => {
    if (!server.capabilities.conditionalPut) {
      t.skip(`${server.kind} ignores If-None-Match: *, so a lock cannot be created exclusively there`);
      return;
    }
    const d = await smallDeployment();
    const repoArgs = ['--repo', `s3://${bucket}/cron-lock`, '--s3-endpoint', server.endpoint, '--s3-path-style'];
    const cli = (args: string[]) => lifeboat([...repoArgs, ...args], { env: server.env });
    assert.equal((await cli(['init'])).code, 0);
    const key = 'cron-lock/locks/lock.json';
    await staleLockScenario({
      src: d.src,
      cli,
      putLock: async (info) => {
        await sdk.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: JSON.stringify(info) }));
      },
      lockExists: async () => {
        const out = await sdk.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: key }));
        return (out.Contents ?? []).some((o) => o.Key === key);
      },
    });
    await sdk.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
    await fsp.rm(d.work, { recursive: true, force: true });
  });
});

function hasCommand(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;
}

test('completion bash|zsh completes commands, the commands of key, options and their values, in bash and in an interactive zsh', async (t) => {
  const bash = await lifeboat(['completion', 'bash']);
  assert.equal(bash.code, 0);
  for (const word of ['backup', 'drill', 'prune', 'unlock', '--keep-full', '--metrics-file', '--log-format']) assert.ok(bash.stdout.includes(word), word);
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'lifeboat-completion-'));
  await fsp.writeFile(path.join(dir, 'lifeboat.bash'), bash.stdout);
  execFileSync('bash', ['-n', path.join(dir, 'lifeboat.bash')]);
  // What bash offers after the words typed so far (the last one being completed).
  const offered = (...typed: string[]) =>
    execFileSync('bash', ['-c', 'source "$1"; shift; COMP_WORDS=(lifeboat "$@"); COMP_CWORD=$#; _lifeboat; printf "%s\\n" "${COMPREPLY[@]}"', 'complete', path.join(dir, 'lifeboat.bash'), ...typed], { encoding: 'utf8' }).split('\n').filter(Boolean);
  assert.deepEqual(offered('ba'), ['backup']);
  assert.deepEqual(offered('key', '').sort(), ['add', 'list', 'passwd', 'remove']);
  assert.deepEqual(offered('--repo', '/r', 'key', 'add', '--new'), ['--new-password-file']);
  assert.deepEqual(offered('key', 'add', '--new-password-file', path.join(dir, 'lifeboat.b')), [path.join(dir, 'lifeboat.bash')]);
  // A repository is a directory more often than a URL: its path is completed.
  assert.deepEqual(offered('--repo', path.join(dir, 'lifeboat.b')), [path.join(dir, 'lifeboat.bash')]);
  assert.deepEqual(offered('backup', '--ty'), ['--type']);
  assert.deepEqual(offered('--log-format', '').sort(), ['json', 'text']);
  // Options that check their values themselves have a fixed set all the same.
  assert.deepEqual(offered('backup', '--type', ''), ['full', 'diff', 'incr']);
  assert.deepEqual(offered('backup', '-t', 'd'), ['diff']);
  assert.deepEqual(offered('init', '--encryption', ''), ['aes-256-gcm', 'none']);
  assert.deepEqual(offered('drill', '--notify-on', 'w'), ['warning']);
  const zsh = await lifeboat(['completion', 'zsh']);
  assert.equal(zsh.code, 0);
  assert.match(zsh.stdout, /^#compdef lifeboat/);
  assert.match(zsh.stdout, /'drill:/);
  assert.match(zsh.stdout, /\{--type,-t\}'\[[^\]]*\]:type:\(full diff incr\)'/);
  assert.match(zsh.stdout, /\{--repo,-r\}'\[[^\]]*\]:url:_files -\/'/);
  if (hasCommand('zsh')) {
    await fsp.writeFile(path.join(dir, '_lifeboat'), zsh.stdout);
    execFileSync('zsh', ['-n', path.join(dir, '_lifeboat')]);
    // An interactive zsh in a pseudo-terminal, as a user has it: tab after what is typed, and read the screen.
    const script = [
      'zmodload zsh/zpty',
      "zpty z 'zsh -f -i'",
      // Typed only once compinit is done (slow on a loaded machine): the echo of this line reads RE""ADY, its output READY.
      `zpty -w z 'PS1="> "; fpath=(${dir} $fpath); autoload -Uz compinit; compinit -u -D; function lifeboat { }; print RE""ADY'`,
      "zpty -r z all '*READY*'",
      ...['lifeboat key ', 'lifeboat key add --new', 'lifeboat dri', 'lifeboat d'].flatMap((line) => ['sleep 1', `zpty -w -n z $'\\C-u${line}\\t'`]),
      'sleep 1',
      'while zpty -r -t z chunk; do all+="$chunk"; done',
      "print -r -- \"$all\" | sed 's/\\x1b\\[[0-9;?]*[a-zA-Z]//g'",
      'zpty -d z',
    ].join('\n');
    const screen = execFileSync('zsh', ['-f', '-c', script], { encoding: 'utf8', timeout: 30_000 });
    assert.match(screen, /add +-- add a password/, 'key offers its commands, described');
    assert.match(screen, /passwd +-- change the password/);
    assert.match(screen, /lifeboat key add --new-password-file/, 'an option of key add');
    assert.match(screen, /lifeboat drill /, 'a command');
    // A description is shown as written, colons and all, not with each colon turned into a dash.
    assert.match(screen, /drill +-- prove a point restores: restore it into a temporary directory/);
  } else t.diagnostic('zsh is not installed: its completion script was not run');
  assert.equal((await lifeboat(['completion', 'fish'])).code, 2);
  // With --json, stdout holds one JSON document, as for every command: the script is in it, as printed without.
  for (const [shell, plain] of [['bash', bash], ['zsh', zsh]] as const) {
    const json = await lifeboat(['--json', 'completion', shell]);
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual(json.json(), { shell, script: plain.stdout });
  }
  assert.equal((await lifeboat(['completion', '--quiet', 'bash'])).stdout, bash.stdout);
  const version = await lifeboat(['--version']);
  assert.equal(version.code, 0);
  assert.match(version.stdout, /^\d+\.\d+\.\d+/);
  await fsp.rm(dir, { recursive: true, force: true });
});

test('SIGTERM while a failed run still sends its notification: it exits with its own code, the one its metrics and notification say', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  // A slow receiver: it holds its answer until the signal has been sent.
  let answer = () => {};
  let eventArrived: (event: any) => void = () => {};
  const arrived = new Promise<any>((resolve) => (eventArrived = resolve));
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      answer = () => res.writeHead(204).end();
      eventArrived(JSON.parse(Buffer.concat(chunks).toString('utf8')));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const metrics = path.join(d.work, 'lifeboat.prom');
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
  const child = spawnLifeboat(['--repo', d.repo, 'backup', path.join(d.work, 'missing'), '--notify-url', url, '--metrics-file', metrics]);
  const stderr: Buffer[] = [];
  child.stderr?.on('data', (c: Buffer) => stderr.push(c));
  const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));

  const event = await arrived;
  assert.equal(event.outcome, 'failure');
  assert.notEqual(event.exitCode, 130);
  child.kill('SIGTERM');
  await sleep(200);
  answer();
  const code = await exited;
  assert.match(Buffer.concat(stderr).toString('utf8'), /SIGTERM received/);
  assert.equal(code, event.exitCode, Buffer.concat(stderr).toString('utf8'));
  assert.equal(value(parsePrometheus(await fsp.readFile(metrics, 'utf8')), 'lifeboat_last_run_exit_code', 'backup'), event.exitCode);
});
