import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat, runChild, spawnLifeboat } from './helpers/cli.js';
import { inNamespace, unshare } from './helpers/namespace.js';
import { waitFor } from './helpers/processes.js';
import { exists, repoFiles, smallDeployment } from './helpers/repo.js';
import { prng, tempDir, writeRandomFile } from './helpers/tree.js';
import { findAll, parseXml, type XmlElement } from './helpers/xml.js';
import { drillJUnit } from '../src/core/junit.js';
import { drill, type DrillResult } from '../src/core/drill.js';
import type { Notice } from '../src/core/events.js';
import { Repository } from '../src/core/repository.js';
import { InterruptedError } from '../src/errors.js';
import { LocalStorage } from '../src/storage/local.js';

async function deployment() {
  const d = await smallDeployment();
  const r = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'full']);
  assert.equal(r.code, 0, r.stderr);
  return { ...d, id: r.json().id as string, scratch: await tempDir() };
}

async function junit(file: string): Promise<{ suite: XmlElement; cases: Map<string, XmlElement> }> {
  const root = parseXml(await fsp.readFile(file, 'utf8'));
  assert.equal(root.name, 'testsuites');
  const [suite] = findAll(root, 'testsuite');
  assert.ok(suite, 'one testsuite');
  const cases = new Map(findAll(suite, 'testcase').map((c) => [c.attrs.name!, c]));
  assert.equal(Number(suite.attrs.tests), cases.size);
  assert.equal(Number(suite.attrs.failures), [...cases.values()].filter((c) => findAll(c, 'failure').length > 0).length, 'failures count matches');
  assert.equal(Number(root.attrs.tests), cases.size);
  return { suite, cases };
}

/**
 * Runs `lifeboat --json drill --junit REPORT` with a smoke command that runs `before`, then waits; sends it
 * `signal` once the smoke command waits, and returns its --json document after it exited 130.
 */
async function interruptedInSmoke(d: { repo: string; scratch: string }, report: string, before: string, signal: NodeJS.Signals) {
  const started = path.join(d.scratch, 'smoke-started');
  const child = spawnLifeboat(['--repo', d.repo, '--json', 'drill', '--junit', report, '--smoke', `${before ? `${before}; ` : ''}touch ${started}; exec sleep 60`]);
  const out: Buffer[] = [];
  child.stdout!.on('data', (c: Buffer) => out.push(c));
  const code = new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
  assert.ok(await waitFor(() => exists(started), 30_000), 'the smoke test started');
  child.kill(signal);
  assert.equal(await code, 130);
  return JSON.parse(Buffer.concat(out).toString('utf8'));
}

const failed = (c: XmlElement | undefined) => c !== undefined && c.children.some((x) => x.name === 'failure');
const skipped = (c: XmlElement | undefined) => c !== undefined && c.children.some((x) => x.name === 'skipped');

test('a drill of a good point passes, writes valid JUnit XML with one testcase per check, journals itself and cleans up', async () => {
  const d = await deployment();
  const report = path.join(d.work, 'reports', 'drill.xml');
  await fsp.mkdir(path.dirname(report));
  const smoke = 'test -f "$LIFEBOAT_RESTORE_DIR/models/weights.bin" && test "$LIFEBOAT_POINT" != "" && echo "prediction: 0.93"';
  const r = await lifeboat(
    ['--repo', d.repo, '--json', 'drill', '--smoke', smoke, '--rto', '10m', '--rpo', '1h', '--junit', 'reports/drill.xml', '--work-dir', d.scratch],
    { cwd: d.work },
  );
  assert.equal(r.code, 0, r.stderr + r.stdout);
  const j = r.json();
  assert.equal(j.ok, true);
  assert.equal(j.point, d.id);
  assert.equal(j.files, 3);
  assert.ok(j.rtoMs >= 0 && j.rpoMs >= 0);
  assert.deepEqual(j.problems, []);
  assert.equal(j.objectives.rto.met, true);
  assert.equal(j.objectives.rpo.objectiveMs, 3600_000);
  assert.equal(j.smoke.exitCode, 0);
  assert.match(j.smoke.output, /prediction: 0.93/);

  const { suite, cases } = await junit(report);
  assert.deepEqual([...cases.keys()], ['restore', 'checksums', 'model', 'smoke', 'RTO', 'RPO']);
  assert.equal(suite.attrs.failures, '0');
  assert.equal(suite.attrs.errors, '0');
  for (const c of cases.values()) assert.ok(!failed(c) && !skipped(c), `${c.attrs.name} passed`);
  assert.match(findAll(cases.get('smoke')!, 'system-out')[0]!.text, /prediction: 0.93/);
  const props = new Map(findAll(suite, 'property').map((p) => [p.attrs.name, p.attrs.value]));
  assert.equal(props.get('point'), d.id);

  assert.deepEqual(await fsp.readdir(d.scratch), [], 'the temporary restore is removed');
  const journal = (await repoFiles(d.repo)).filter((f) => f.startsWith('journal/'));
  assert.equal(journal.length, 1);
  const event = JSON.parse(await fsp.readFile(path.join(d.repo, journal[0]!), 'utf8'));
  assert.equal(event.type, 'drill');
  assert.equal(event.point, d.id);
  assert.equal(event.outcome, 'ok');

  // Without objectives or smoke, those checks are skipped, and the text summary says what passed.
  const plain = await lifeboat(['--repo', d.repo, 'drill', '--junit', report]);
  assert.equal(plain.code, 0, plain.stderr);
  assert.match(plain.stdout, /drill of .*: passed/);
  assert.match(plain.stdout, /\n {2}RTO \S+ \(restore \d+ files, [^,]+, verify\), RPO /, 'no smoke test ran, and the RTO does not say one did');
  const again = await junit(report);
  assert.ok(skipped(again.cases.get('smoke')) && skipped(again.cases.get('RTO')) && skipped(again.cases.get('RPO')));
  assert.ok(!failed(again.cases.get('restore')));
  await fsp.rm(d.work, { recursive: true, force: true });
  await fsp.rm(d.scratch, { recursive: true, force: true });
});

test('a failing smoke command fails the drill with exit 5 and the smoke testcase marked', async () => {
  const d = await deployment();
  const report = path.join(d.work, 'drill.xml');
  // A work directory that does not exist yet is made.
  const workDir = path.join(d.scratch, 'made', 'for-the-drill');
  const r = await lifeboat(['--repo', d.repo, '--json', 'drill', '--smoke', 'echo "model failed to load" >&2; exit 7', '--junit', report, '--work-dir', workDir]);
  assert.equal(r.code, 5, r.stderr);
  assert.deepEqual(await fsp.readdir(workDir), []);
  const j = r.json();
  assert.equal(j.ok, false);
  assert.deepEqual(j.error, { message: `drill of ${j.point} failed: smoke: ${j.problems[0].message}`, exitCode: 5 });
  assert.equal(j.smoke.exitCode, 7);
  assert.deepEqual(j.problems.map((p: { check: string }) => p.check), ['smoke']);
  const { cases } = await junit(report);
  assert.ok(failed(cases.get('smoke')));
  assert.match(findAll(cases.get('smoke')!, 'failure')[0]!.attrs.message!, /exited with 7/);
  assert.match(findAll(cases.get('smoke')!, 'system-out')[0]!.text, /model failed to load/);
  assert.ok(!failed(cases.get('restore')) && !failed(cases.get('checksums')));
  assert.deepEqual(await fsp.readdir(d.scratch), ['made']);
  await fsp.rm(d.work, { recursive: true, force: true });
  await fsp.rm(d.scratch, { recursive: true, force: true });
});

test('a missed RPO or RTO objective fails with exit 5 and that testcase marked', async () => {
  const d = await deployment();
  const report = path.join(d.work, 'drill.xml');
  await new Promise((r) => setTimeout(r, 20));
  const r = await lifeboat(['--repo', d.repo, '--json', 'drill', '--rpo', '10ms', '--rto', '1h', '--junit', report]);
  assert.equal(r.code, 5, r.stderr);
  assert.equal(r.json().objectives.rpo.met, false);
  assert.deepEqual(r.json().problems.map((p: { check: string }) => p.check), ['rpo']);
  assert.match(r.stderr, /rpo: achieved RPO \d+(ms|\.\ds) exceeds the objective of 10ms/);
  const { cases } = await junit(report);
  assert.ok(failed(cases.get('RPO')));
  assert.ok(!failed(cases.get('RTO')) && !failed(cases.get('restore')));

  const slow = await lifeboat(['--repo', d.repo, '--json', 'drill', '--smoke', 'sleep 0.2', '--rto', '50ms', '--junit', report]);
  assert.equal(slow.code, 5);
  assert.ok(failed((await junit(report)).cases.get('RTO')));
  await fsp.rm(d.work, { recursive: true, force: true });
  await fsp.rm(d.scratch, { recursive: true, force: true });
});

test('a drill of corrupted data fails with exit 3 and the checksums testcase marked; the smoke test is not run', async () => {
  const d = await deployment();
  const volume = (await repoFiles(d.repo)).find((f) => f.startsWith('data/') && f.endsWith('.tar'))!;
  const file = path.join(d.repo, volume);
  const bytes = await fsp.readFile(file);
  // The middle of the volume is inside weights.bin, by far its largest member.
  bytes[Math.floor(bytes.length / 2)] ^= 0x20;
  await fsp.writeFile(file, bytes);
  const report = path.join(d.work, 'drill.xml');
  const marker = path.join(d.work, 'smoke-ran');
  const r = await lifeboat(['--repo', d.repo, '--json', 'drill', '--smoke', `touch ${marker}`, '--junit', report, '--work-dir', d.scratch]);
  assert.equal(r.code, 3, r.stderr);
  assert.equal(r.json().ok, false);
  assert.ok(r.json().problems.some((p: { check: string }) => p.check === 'checksums'));
  const { cases } = await junit(report);
  assert.ok(failed(cases.get('checksums')));
  assert.ok(skipped(cases.get('smoke')));
  await assert.rejects(fsp.access(marker), 'the smoke command did not run on damaged data');
  assert.deepEqual(await fsp.readdir(d.scratch), [], 'the temporary restore is removed after a failure too');
  const journal = (await repoFiles(d.repo)).filter((f) => f.startsWith('journal/'));
  assert.equal(JSON.parse(await fsp.readFile(path.join(d.repo, journal[0]!), 'utf8')).outcome, 'failed');
  await fsp.rm(d.work, { recursive: true, force: true });
  await fsp.rm(d.scratch, { recursive: true, force: true });
});

test('a drill whose restored models would not load, every checksum matching, says so: its hint names the backup that took them, not a verify that would find nothing', async () => {
  const d = await smallDeployment();
  // A tokenizer without its model section: the backup warns, and stores it as it is.
  await fsp.writeFile(path.join(d.src, 'tok', 'tokenizer.json'), '{}');
  const b = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'full']);
  assert.equal(b.code, 0, b.stderr);
  const id = b.json().id as string;
  const marker = path.join(d.work, 'smoke-ran');
  const r = await lifeboat(['--repo', d.repo, '--json', 'drill', '--smoke', `touch ${marker}`, '--rto', '1h']);
  assert.equal(r.code, 3, r.stderr);
  const j = r.json();
  assert.deepEqual(
    j.checks.map((c: { name: string; status: string }) => `${c.name} ${c.status}`),
    ['restore passed', 'checksums passed', 'model failed', 'smoke skipped', 'rto failed', 'rpo skipped'],
  );
  assert.equal(j.checks[3].message, 'not run: the restored models would not load');
  assert.match(j.error.hint, new RegExp(`lifeboat show ${id}`));
  assert.doesNotMatch(j.error.hint, /verify/, 'verify --read-data finds nothing wrong with these bytes');
  assert.doesNotMatch(r.stderr, /verify --read-data/);
  await assert.rejects(fsp.access(marker), 'the smoke command did not run');
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('a drill that cannot start exits 2 and still leaves a JUnit report with the error', async () => {
  const d = await deployment();
  const report = path.join(d.work, 'drill.xml');
  const r = await lifeboat(['--repo', d.repo, 'drill', 'nosuchpoint', '--junit', report]);
  assert.equal(r.code, 2);
  const root = parseXml(await fsp.readFile(report, 'utf8'));
  const errors = findAll(root, 'error');
  assert.equal(errors.length, 1);
  assert.match(errors[0]!.attrs.message!, /nosuchpoint/);
  await fsp.rm(d.work, { recursive: true, force: true });
  await fsp.rm(d.scratch, { recursive: true, force: true });
});

test('JUnit output escapes anything a smoke command prints', () => {
  const nasty = 'a<b>&"c"\'d\u0000\u001b[31m]]>\ud83d\ude00 done';
  const result: DrillResult = {
    ok: false,
    point: '20261122-030000-000F',
    startedAt: new Date().toISOString(),
    rtoMs: 1234,
    rpoMs: 5678,
    objectives: { rto: null, rpo: null },
    files: 1,
    bytes: 2,
    smoke: { command: `run ${nasty}`, exitCode: 1, signal: null, timedOut: false, durationMs: 5, output: nasty },
    problems: [{ check: 'smoke', message: nasty }],
    checks: [{ name: 'smoke', status: 'failed', durationMs: 5, message: nasty, output: nasty }],
    exitCode: 5,
    warnings: [],
  };
  const root = parseXml(drillJUnit(result, 's3://bucket/prefix'));
  const failure = findAll(root, 'failure')[0]!;
  assert.equal(failure.attrs.message, nasty.replace('\u0000', '\ufffd').replace('\u001b', '\ufffd'));
  assert.match(findAll(root, 'system-out')[0]!.text, /\]\]>😀 done/);
});

test('the copy a drill killed with SIGKILL left is removed by the next drill, which says so; those of live runs stay', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  const scratch = path.join(d.work, 'scratch');
  await fsp.mkdir(scratch);
  // A directory of a live process (this one) with a name a drill would give it.
  const live = path.join(scratch, `lifeboat-drill-${process.pid}-abcdef`);
  await fsp.mkdir(live);
  const smokePid = path.join(d.work, 'smoke.pid');
  const child = spawnLifeboat(['--repo', d.repo, 'drill', '--work-dir', scratch, '--smoke', `echo $$ > ${smokePid}; exec sleep 60`]);
  const closed = new Promise((resolve) => child.on('close', resolve));
  await waitFor(() => exists(smokePid), 30_000);
  child.kill('SIGKILL');
  await closed;
  process.kill(Number(await fsp.readFile(smokePid, 'utf8')), 'SIGKILL');
  const left = (await fsp.readdir(scratch)).filter((n) => n.startsWith(`lifeboat-drill-${child.pid}-`));
  assert.equal(left.length, 1, 'the killed drill left its copy of the point');

  // In a process of its own: to it, this one is another live run.
  const next = await runChild(['--repo', d.repo, 'drill', '--work-dir', scratch]);
  assert.equal(next.code, 0, next.stderr);
  assert.match(next.stderr, new RegExp(`removed ${path.join(scratch, left[0]!)}, left by a run that was killed`));
  assert.deepEqual(await fsp.readdir(scratch), [path.basename(live)]);
});

test('a drill stopped by SIGTERM (a CI job timing out) still writes its JUnit report and --json document, with the checks that passed and the interrupted one marked', async () => {
  const d = await deployment();
  const report = path.join(d.work, 'drill.xml');
  const j = await interruptedInSmoke(d, report, '', 'SIGTERM');
  const { suite, cases } = await junit(report);
  assert.deepEqual([...cases.keys()], ['restore', 'checksums', 'model', 'smoke', 'RTO', 'RPO']);
  for (const name of ['restore', 'checksums', 'model']) assert.equal(cases.get(name)!.children.filter((x) => x.name !== 'system-out').length, 0, `${name} passed`);
  assert.match(findAll(cases.get('smoke')!, 'error')[0]?.attrs.message ?? '', /interrupted/);
  assert.ok(skipped(cases.get('RTO')) && skipped(cases.get('RPO')));
  assert.equal(suite.attrs.errors, '1');
  assert.equal(j.ok, false);
  assert.equal(j.error.exitCode, 130);
  assert.equal(j.point, d.id);
  assert.deepEqual(
    j.checks.map((c: { name: string; status: string }) => `${c.name} ${c.status}`),
    ['restore passed', 'checksums passed', 'model passed', 'smoke error', 'rto skipped', 'rpo skipped'],
  );
  assert.match(j.checks[3].message, /interrupted/);
  assert.equal(new Map(findAll(suite, 'property').map((p) => [p.attrs.name, p.attrs.value])).get('point'), d.id, 'the report names the point drilled, not "latest"');
  assert.equal(suite.attrs.name, `lifeboat drill ${d.id}`);
  // The journal has it, so that status does not show the last drill that finished as the last one.
  const status = await lifeboat(['--repo', d.repo, 'status']);
  assert.match(status.stdout, new RegExp(`\\n {2}\\S+ {2}drill ${d.id} failed \\(.*\\): interrupted\\n`));
  await fsp.rm(d.work, { recursive: true, force: true });
  await fsp.rm(d.scratch, { recursive: true, force: true });
});

test('a drill interrupted during its restore says nothing of files kept for a next restore: its copy is removed', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  await fsp.mkdir(src);
  const storage = new LocalStorage(path.join(work, 'repo'));
  // A volume per file, fetched one at a time: the interrupt comes after some files are written and before the last.
  await Repository.init(storage, { volumeSize: 1 << 20 });
  const rand = prng(11);
  for (let i = 0; i < 8; i++) await writeRandomFile(path.join(src, `shard-${i}.bin`), (1 << 20) + 4096, rand);
  assert.equal((await lifeboat(['--repo', path.join(work, 'repo'), 'backup', src])).code, 0);
  const repo = await Repository.open(storage);
  const scratch = path.join(work, 'scratch');
  const stop = new AbortController();
  const notices: Notice[] = [];
  await assert.rejects(
    drill(repo, await repo.resolve('latest'), {
      workDir: scratch,
      concurrency: 1,
      signal: stop.signal,
      reporter: {
        progress: (p) => {
          if (p.filesDone >= 3) stop.abort();
        },
        notice: (n) => notices.push(n),
      },
    }),
    InterruptedError,
  );
  assert.deepEqual(
    notices.filter((n) => n.level === 'warning').map((n) => n.message),
    [],
    'no warning of restored files kept for a next restore',
  );
  assert.deepEqual(await fsp.readdir(scratch), [], 'nothing is left in the work directory');
});

test('a drill or verify --deep whose work directory has no room for the point exits 1 saying so, not as a failed drill or damaged data', { skip: unshare ? false : 'unshare cannot make a mount namespace here' }, async (t) => {
  const d = await deployment();
  t.after(() => Promise.all([d.work, d.scratch].map((p) => fsp.rm(p, { recursive: true, force: true }))));
  await fsp.mkdir(path.join(d.work, 'out'));
  inNamespace(
    [
      'cd "$WORK"',
      'mkdir small && mount -t tmpfs -o size=64k tmpfs small',
      'set +e',
      'node "$BIN" --repo repo --json drill --work-dir small --junit out/drill.xml > out/drill.json; echo $? > out/drill.code',
      'node "$BIN" --repo repo --json verify --deep --work-dir small > out/verify.json; echo $? > out/verify.code',
      'ls -A small > out/left.txt',
    ].join('\n'),
    { WORK: d.work },
  );
  const out = (name: string) => fsp.readFile(path.join(d.work, 'out', name), 'utf8');
  for (const run of ['drill', 'verify']) {
    assert.equal((await out(`${run}.code`)).trim(), '1', `${run} exits 1`);
    const { error } = JSON.parse(await out(`${run}.json`));
    assert.match(error.message, /needs .* free/, run);
    assert.match(error.hint, /--work-dir/, run);
  }
  const errors = findAll(parseXml(await out('drill.xml')), 'error');
  assert.match(errors[0]?.attrs.message ?? '', /needs .* free/, 'the JUnit report says why the drill could not run');
  assert.equal(await out('left.txt'), '', 'nothing is left in the work directory');
});

test('a smoke command that outlives --smoke-timeout is stopped with SIGTERM first and fails the drill saying it ran too long, not that something killed it', async (t) => {
  const d = await deployment();
  t.after(() => Promise.all([d.work, d.scratch].map((p) => fsp.rm(p, { recursive: true, force: true }))));
  const report = path.join(d.work, 'drill.xml');
  // A smoke test that started a server shuts it down on SIGTERM; SIGKILL would leave it no chance.
  const drained = path.join(d.work, 'drained');
  const smoke = `trap 'echo drained > "${drained}"; exit 143' TERM; echo loading; sleep 30 & wait`;
  const r = await lifeboat(['--repo', d.repo, '--json', 'drill', '--smoke', smoke, '--smoke-timeout', '1s', '--junit', report]);
  assert.equal(r.code, 5, r.stderr);
  assert.equal(await fsp.readFile(drained, 'utf8').catch(() => 'not drained'), 'drained\n');
  const j = r.json();
  assert.equal(j.smoke.timedOut, true);
  assert.deepEqual(j.problems.map((p: { check: string }) => p.check), ['smoke']);
  assert.match(j.problems[0].message, /^the smoke command ran longer than 1(\.0)?s \(--smoke-timeout\) and was killed$/);
  // Its line follows the smoke command's last, with no empty line between them in the output's tail.
  assert.match(j.smoke.output, /loading\n\[lifeboat: the smoke command ran longer than 1(\.0)?s and was killed\]\n$/);
  const { cases } = await junit(report);
  assert.match(findAll(cases.get('smoke')!, 'failure')[0]!.attrs.message!, /ran longer than 1(\.0)?s \(--smoke-timeout\)/);
});

test('--junit into a directory not made yet makes it; a report path that cannot be a file is refused before the drill runs', async (t) => {
  const d = await deployment();
  t.after(() => Promise.all([d.work, d.scratch].map((p) => fsp.rm(p, { recursive: true, force: true }))));
  const r = await lifeboat(['--repo', d.repo, 'drill', '--junit', 'reports/nightly/drill.xml'], { cwd: d.work });
  assert.equal(r.code, 0, r.stderr);
  assert.equal((await junit(path.join(d.work, 'reports', 'nightly', 'drill.xml'))).suite.attrs.failures, '0');

  await fsp.writeFile(path.join(d.work, 'reports.txt'), '');
  for (const [report, message] of [
    ['reports.txt/drill.xml', /--junit reports\.txt\/drill\.xml: .*reports\.txt is not a directory/],
    ['reports', /--junit reports is a directory/],
  ] as const) {
    const refused = await lifeboat(['--repo', d.repo, '--json', 'drill', '--junit', report, '--work-dir', d.scratch], { cwd: d.work });
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.json().error.message, message);
    assert.doesNotMatch(refused.stderr, /warning/, 'the refusal says it all: no report is tried, nor warned about');
    assert.equal(refused.json().warnings, undefined);
    assert.deepEqual(await fsp.readdir(d.scratch), [], 'nothing was restored');
  }
  const journal = (await repoFiles(d.repo)).filter((f) => f.startsWith('journal/'));
  assert.equal(journal.length, 1, 'only the first drill ran');
});

test("the text summary shows a failed smoke command's output with its control characters escaped: it cannot rewrite the operator's terminal", async (t) => {
  const d = await deployment();
  t.after(() => Promise.all([d.work, d.scratch].map((p) => fsp.rm(p, { recursive: true, force: true }))));
  // A colour, a screen clear, a progress line rewritten with \r, a line ending in \r\n.
  const smoke = String.raw`printf 'loading\033[2J\033[31m red\033[0m\r50%%\r100%%\nwindows line\r\nlast\n'; exit 1`;
  const r = await lifeboat(['--repo', d.repo, 'drill', '--smoke', smoke, '--work-dir', d.scratch]);
  assert.equal(r.code, 5, r.stderr);
  assert.doesNotMatch(r.stdout, /[\u001b\r]/, 'no escape sequence or carriage return reaches the terminal');
  assert.match(r.stdout, /\n {4}loading\\u001b\[2J\\u001b\[31m red\\u001b\[0m\\r50%\\r100%\n {4}windows line\n {4}last$/m);
});

test("a character of the smoke command's output whose bytes arrive in two reads is kept whole, not shown as two unknown characters", async (t) => {
  const d = await deployment();
  t.after(() => Promise.all([d.work, d.scratch].map((p) => fsp.rm(p, { recursive: true, force: true }))));
  // "€" is E2 82 AC: the first two bytes on stdout, the last a moment later; "é" likewise on stderr.
  const smoke = String.raw`printf 'price \342\202'; sleep 0.3; printf '\254 5\n'; printf 'caf\303' >&2; sleep 0.3; printf '\251\n' >&2; exit 1`;
  const report = path.join(d.work, 'drill.xml');
  const r = await lifeboat(['--repo', d.repo, '--json', 'drill', '--smoke', smoke, '--work-dir', d.scratch, '--junit', report]);
  assert.equal(r.code, 5, r.stderr);
  const output: string = r.json().smoke.output;
  assert.equal(output, 'price € 5\ncafé\n');
  assert.doesNotMatch(output, /\ufffd/);
  assert.match(findAll((await junit(report)).cases.get('smoke')!, 'system-out')[0]!.text, /price € 5/);
});

test('a JUnit report that cannot be written after the drill ran still leaves its result printed; a passed drill then exits 1, a failed one keeps its own exit code', async (t) => {
  const d = await deployment();
  t.after(() => Promise.all([d.work, d.scratch].map((p) => fsp.rm(p, { recursive: true, force: true }))));
  // The report's directory is there when the drill starts, and a file by the time the report is written.
  const replace = 'rm -rf reports && echo not a directory > reports';
  const run = (...args: string[]) => lifeboat(['--repo', d.repo, ...args, '--junit', 'reports/drill.xml', '--work-dir', d.scratch], { cwd: d.work });
  await fsp.mkdir(path.join(d.work, 'reports'));
  const json = await run('--json', 'drill', '--smoke', `${replace}; echo prediction`);
  assert.equal(json.code, 1, json.stderr);
  const j = json.json();
  assert.equal(j.point, d.id);
  assert.deepEqual(j.checks.map((c: { status: string }) => c.status), ['passed', 'passed', 'passed', 'passed', 'skipped', 'skipped'], 'the checks the drill made');
  // Said as the summaries say it, not as a raw byte count beside a KiB figure.
  assert.match(j.checks[0].message, /^restored \d+ files?, [\d.]+ (B|KiB|MiB)$/);
  assert.match(j.smoke.output, /prediction/);
  assert.equal(j.error.exitCode, 1);
  assert.match(j.error.message, /^could not write the JUnit report .*drill\.xml: /);

  await fsp.rm(path.join(d.work, 'reports'));
  await fsp.mkdir(path.join(d.work, 'reports'));
  const text = await run('drill', '--smoke', replace);
  assert.equal(text.code, 1, text.stderr);
  assert.match(text.stdout, /^drill of \S+: passed\n/);
  assert.match(text.stderr, /lifeboat: could not write the JUnit report/);

  // A failed smoke test is what CI must see: exit 5, the report's failure told besides.
  await fsp.rm(path.join(d.work, 'reports'));
  await fsp.mkdir(path.join(d.work, 'reports'));
  const failed = await run('--json', 'drill', '--smoke', `${replace}; exit 4`);
  assert.equal(failed.code, 5, failed.stderr);
  assert.equal(failed.json().error.exitCode, 5);
  assert.match(failed.json().error.message, /smoke: the smoke command exited with 4/);
  assert.match(failed.stderr, /warning: could not write the JUnit report/);
  assert.deepEqual(failed.json().warnings.map((w: { code: string }) => w.code), ['junit-failed']);
});

test('the JUnit report\'s path is quoted as other messages quote names, when it was written and when it could not be', async (t) => {
  const d = await deployment();
  t.after(() => Promise.all([d.work, d.scratch].map((p) => fsp.rm(p, { recursive: true, force: true }))));
  // A directory whose name ends with a space, which unquoted would not be seen.
  const dir = path.join(d.work, 'reports ');
  const shown = `"${path.join(dir, 'drill.xml')}"`;
  const run = (...args: string[]) => lifeboat(['--repo', d.repo, 'drill', '--junit', path.join(dir, 'drill.xml'), '--work-dir', d.scratch, ...args], { cwd: d.work });
  const wrote = await run();
  assert.equal(wrote.code, 0, wrote.stderr);
  assert.ok(wrote.stderr.includes(`wrote the JUnit report ${shown}\n`), wrote.stderr);
  // The directory replaced by a file while the drill runs.
  const failed = await run('--smoke', `rm -rf 'reports ' && echo not a directory > 'reports '`);
  assert.equal(failed.code, 1, failed.stderr);
  assert.ok(failed.stderr.includes(`lifeboat: could not write the JUnit report ${shown}: `), failed.stderr);
});

test('a drill interrupted (SIGINT) during its smoke test keeps what the smoke command had printed in the interrupted check of the JUnit report and --json', async (t) => {
  const d = await deployment();
  t.after(() => Promise.all([d.work, d.scratch].map((p) => fsp.rm(p, { recursive: true, force: true }))));
  const report = path.join(d.work, 'drill.xml');
  const j = await interruptedInSmoke(d, report, String.raw`printf 'loading <model> & "weights" \033[1mbold\033[0m\n'`, 'SIGINT');
  const printed = 'loading <model> & "weights" \u001b[1mbold\u001b[0m\n';
  assert.equal(j.checks[3].name, 'smoke');
  assert.equal(j.checks[3].status, 'error');
  assert.equal(j.checks[3].output, printed, '--json has the output as it is');
  const { cases } = await junit(report);
  const smokeCase = cases.get('smoke')!;
  assert.match(findAll(smokeCase, 'error')[0]?.attrs.message ?? '', /interrupted/);
  assert.equal(findAll(smokeCase, 'system-out')[0]?.text, printed.replaceAll('\u001b', '\ufffd'), 'the report has it escaped');
});

test('a --work-dir inside the repository is refused as the flag it is (exit 2), by drill and verify --deep, before anything is made there', async (t) => {
  const d = await deployment();
  t.after(() => Promise.all([d.work, d.scratch].map((p) => fsp.rm(p, { recursive: true, force: true }))));
  const before = await fsp.readdir(d.repo);
  for (const [args, who] of [
    [['drill', '--work-dir', path.join(d.repo, 'data')], 'the drill'],
    [['verify', '--deep', '--work-dir', d.repo], 'verify --deep'],
  ] as const) {
    const r = await lifeboat(['--repo', d.repo, ...args]);
    assert.equal(r.code, 2, r.stderr);
    // It was "restore target …/lifeboat-drill-…/restore lies inside the repository", a directory the operator never named.
    assert.match(r.stderr, new RegExp(`^lifeboat: --work-dir \\S+ lies inside the repository \\S+\\n {2}give ${who} a --work-dir outside the repository`));
  }
  assert.deepEqual(await fsp.readdir(d.repo), before);
  assert.deepEqual((await fsp.readdir(path.join(d.repo, 'data'))).filter((n) => n.startsWith('lifeboat-')), []);
});
