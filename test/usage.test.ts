/**
 * The command line itself: what commander refuses and flag values that cannot
 * be used, each answered as every other usage error is; the help text; what
 * --quiet leaves out.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { buildProgram } from '../src/cli/main.js';
import { parseConfig } from '../src/config/config.js';
import { lifeboat, runChild, type CliRun } from './helpers/cli.js';
import { smallDeployment } from './helpers/repo.js';
import { tempDir } from './helpers/tree.js';

/** One `lifeboat: …` sentence with its hint on stderr, exit 2, and with --json the error document alone on stdout. */
function assertUsageError(r: CliRun, message: RegExp, hint: RegExp, json: boolean): void {
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, new RegExp(`^lifeboat: ${message.source}\\n {2}${hint.source}\\n$`, 'm'));
  assert.doesNotMatch(r.stderr, /^error:/m);
  if (!json) {
    assert.equal(r.stdout, '');
    return;
  }
  const doc = r.json();
  assert.deepEqual(Object.keys(doc), ['ok', 'error']);
  assert.equal(doc.ok, false);
  assert.equal(doc.error.exitCode, 2);
  assert.match(doc.error.message, message);
  assert.match(doc.error.hint, hint);
}

test('what commander refuses (a missing argument or option, an unknown option or command) is a usage error like any other, with the JSON error document wherever --json stands', async () => {
  assertUsageError(await runChild(['--json', 'diff', 'latest']), /missing required argument 'to'/, /see lifeboat diff --help/, true);
  assertUsageError(await runChild(['list', '--bogus', '--json']), /unknown option '--bogus'/, /see lifeboat list --help/, true);
  assertUsageError(await runChild(['--json', 'pin', 'latest']), /required option '--reason <text>' not specified/, /see lifeboat pin --help/, true);
  assertUsageError(await runChild(['list', '--al']), /unknown option '--al'/, /did you mean --all\? see lifeboat list --help/, false);
  assertUsageError(await runChild(['restore', 'latest', '--json', '--target']), /option '--target <dir>' argument missing/, /see lifeboat restore --help/, true);
  assertUsageError(await runChild(['--json', 'bogus']), /unknown command 'bogus'/, /see lifeboat --help/, true);
  assertUsageError(await runChild(['key', 'add', '--bogus']), /unknown option '--bogus'/, /see lifeboat key add --help/, false);
  // A target or directory given as a second word, as other tools take it: the hint names the option that takes it.
  assertUsageError(await runChild(['failover', 'prod', 'latest']), /too many arguments for 'failover'\. Expected 1 argument but got 2\./, /the target is given with --to: lifeboat failover POINT --to TARGET; see lifeboat failover --help/, false);
  assertUsageError(await runChild(['--json', 'restore', 'latest', '/srv/restore']), /too many arguments for 'restore'\. Expected 1 argument but got 2\./, /the directory to restore into is given with --target: lifeboat restore POINT --target DIR; see lifeboat restore --help/, true);
  assertUsageError(await runChild(['list', 'all']), /too many arguments for 'list'\. Expected 0 arguments but got 1\./, /see lifeboat list --help/, false);
  // commander prints the help of a command that needs a subcommand; the error comes after it.
  const key = await runChild(['--json', 'key']);
  assertUsageError(key, /key needs a command: list, add, remove or passwd/, /see lifeboat key --help/, true);
  assert.match(key.stderr, /^Usage: lifeboat key/);
  // `help` of a command that does not exist says so, in one sentence; not the whole help and "no command given".
  for (const [args, hint] of [[['help', 'bakup'], /see lifeboat --help/], [['--json', 'key', 'help', 'lst'], /see lifeboat key --help/]] as const) {
    const r = await runChild([...args]);
    assertUsageError(r, /unknown command '(bakup|lst)'/, hint, args[0] === '--json');
    assert.equal(r.stderr.split('\n').length, 3, r.stderr);
  }
  // --help after a command that does not exist is refused as the command alone is, not answered with the help above it and exit 0.
  for (const [args, hint] of [[['bogus', '--help'], /see lifeboat --help/], [['--json', 'bakup', '--help'], /did you mean backup\? see lifeboat --help/], [['key', 'lst', '-h'], /did you mean list\? see lifeboat key --help/]] as const) {
    const r = await runChild([...args]);
    assertUsageError(r, /unknown command '(bogus|bakup|lst)'/, hint, args[0] === '--json');
    assert.equal(r.stderr.split('\n').length, 3, r.stderr);
  }
  // So is a word after the help flag that names no command, as `lifeboat help bogus` is, whatever options stand between.
  for (const [args, hint] of [[['--help', 'bogus'], /see lifeboat --help/], [['--help', '--repo', 'x', '--json', 'bakup'], /did you mean backup\? see lifeboat --help/], [['-h', 'key', 'lst'], /did you mean list\? see lifeboat key --help/], [['key', '--help', 'lst'], /did you mean list\? see lifeboat key --help/]] as const) {
    const r = await runChild([...args]);
    assertUsageError(r, /unknown command '(bogus|bakup|lst)'/, hint, (args as readonly string[]).includes('--json'));
    assert.equal(r.stderr.split('\n').length, 3, r.stderr);
  }
  // No command at all is a usage error too: the help, on stderr as for `lifeboat key`, and the sentence that says what is missing.
  for (const args of [[], ['--json'], ['--repo', 'x']]) {
    const bare = await runChild(args);
    assertUsageError(bare, /no command given/, /see lifeboat --help/, args[0] === '--json');
    assert.match(bare.stderr, /^Usage: lifeboat \[options\] \[command\]/);
  }
  // After a `--`, --json is an argument, not the flag.
  assertUsageError(await runChild(['diff', '--', '--json']), /missing required argument 'to'/, /see lifeboat diff --help/, false);
  // An option's value forgotten before another option: commander took `--force` as the target, and restored into ./--force.
  const work = await tempDir();
  for (const args of [['restore', 'latest', '--target', '--force'], ['--repo', '-q', 'list'], ['prune', '--keep-full', '--dry-run', '--json']]) {
    const [flag, next] = args.flatMap((a, i) => (['--target', '--repo', '--keep-full'].includes(a) ? [a, args[i + 1]!] : []));
    assertUsageError(await lifeboat(args, { cwd: work }), new RegExp(`${flag} needs a value, and ${next} after it is an option`), new RegExp(`give ${flag} its value, or write ${flag}=${next} if that is the value meant`), args.includes('--json'));
  }
  assert.deepEqual(await fsp.readdir(work), [], 'nothing made under the option taken for a name');
  // Given with `=`, or after `--`, such a value is the one meant.
  const named = await lifeboat(['--repo=--json', 'list'], { cwd: work });
  assert.match(named.stderr, /there is no lifeboat repository at \S+\/--json/);
  // With --log-format json, stderr holds JSON lines only: not the help commander shows of a command that needs a subcommand.
  for (const args of [['--log-format', 'json', 'key'], ['key', '--log-format=json']]) {
    const needs = await runChild(args);
    assert.equal(needs.code, 2);
    assert.deepEqual(needs.stderr.trimEnd().split('\n').map((l) => JSON.parse(l).msg), ['key needs a command: list, add, remove or passwd']);
  }
  const logLine = await runChild(['--log-format', 'json', 'diff', 'latest']);
  assert.equal(logLine.code, 2);
  assert.deepEqual(
    (({ level, msg, exitCode, hint }) => ({ level, msg, exitCode, hint }))(JSON.parse(logLine.stderr)),
    { level: 'error', msg: "missing required argument 'to'", exitCode: 2, hint: 'see lifeboat diff --help' },
  );

  for (const args of [['--help'], ['diff', '--help'], ['ls', '--help'], ['help', 'diff'], ['help', 'key'], ['--json', 'key', 'add', '--help'], ['--repo', 'x', '--help'], ['--help', '--log-format', 'json']]) {
    const help = await runChild(args);
    assert.equal(help.code, 0, `${args.join(' ')}: ${help.stderr}`);
    assert.match(help.stdout, /^Usage: lifeboat \[options\] \[command\]|^Usage: lifeboat (diff|list\|ls|key) /);
    assert.equal(help.stderr, '');
  }
  // The help flag before a command is its help, as `lifeboat help restore` is, not the general help.
  for (const [args, usage] of [[['--help', 'restore'], /^Usage: lifeboat restore /], [['-h', '-r', 'x', 'key', 'add'], /^Usage: lifeboat key add /]] as const) {
    const help = await runChild([...args]);
    assert.equal(help.code, 0, `${args.join(' ')}: ${help.stderr}`);
    assert.match(help.stdout, usage);
    assert.equal(help.stderr, '');
  }
  // A repeatable option says so; the empty list it starts as is no default worth a word.
  for (const args of [['backup', '--help'], ['restore', '--help']]) {
    const help = await runChild(args);
    assert.match(help.stdout, /\(repeatable\)/);
    assert.doesNotMatch(help.stdout, /\(default: \[\]\)/, help.stdout);
  }
  assert.match((await runChild(['backup', '--help'])).stdout, /--notify-on <events> {2,}when to notify/);
  const version = await runChild(['--version', '--json']);
  assert.equal(version.code, 0);
  assert.match(version.stdout, /^\d+\.\d+\.\d+\n$/);
});

test("--help's exit codes are README.md's, word for word", async () => {
  const readme = await fsp.readFile(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../README.md'), 'utf8');
  const table = readme.split('\n## Exit codes\n')[1]!.split('\n## ')[0]!;
  const documented = [...table.matchAll(/^\| (\d+) \| (.*) \|$/gm)].map(([, code, meaning]) => `${code} ${meaning!.replace(/`/g, '')}`);
  assert.ok(documented.length >= 7, table);
  for (const args of [['--help'], ['backup', '--help']]) {
    const help = (await runChild(args)).stdout.split('\nExit codes:\n')[1]!;
    // A meaning that does not fit a line goes on, indented, on the next.
    const listed = help.trimEnd().replace(/\n {5,}/g, ' ').split('\n').map((line) => line.trim().replace(/\s+/, ' '));
    assert.deepEqual(listed, documented);
  }
});

test('every lifeboat.yaml the documentation prints is a config lifeboat takes, as printed', async () => {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
  const keys = new Set<string>();
  for (const doc of ['README.md', 'docs/S3.md']) {
    const text = await fsp.readFile(path.join(root, doc), 'utf8');
    // A config starts at a key of its own; an indented block (a CI workflow's steps) is no config.
    const configs = [...text.matchAll(/```yaml\n([\s\S]*?)```/g)].map(([, body]) => body!).filter((body) => /^[a-z0-9]+:/m.test(body.split('\n').find((line) => line.trim() !== '' && !line.startsWith('#')) ?? ''));
    assert.ok(configs.length > 0, doc);
    for (const body of configs) {
      // A placeholder (`<ACCOUNT_ID>`) is the reader's to fill in.
      const config = await parseConfig(body.replace(/<[A-Z_]+>/g, 'x'), `${doc}: ${body.split('\n')[0]}`);
      for (const key of Object.keys(config)) keys.add(key);
    }
  }
  // What prune keeps and where failures are sent are set in the config too: an example shows how.
  for (const key of ['repository', 'sources', 'exclude', 'lock', 'retention', 'notify', 'hooks', 'targets', 's3']) assert.ok(keys.has(key), `no example of ${key}:`);
});

test('every point id in the examples of --help has the form of an id, or of a prefix of one', async () => {
  const program = buildProgram({ stdout: new PassThrough(), stderr: new PassThrough(), env: {}, cwd: process.cwd() }, new AbortController().signal, { printed: false });
  const commandLines = (c: Command, words: string[]): string[][] => [words, ...c.commands.flatMap((sub) => commandLines(sub, [...words, sub.name()]))];
  // 20261122-030000-123F: digits where digits are, and the type's letter last.
  const shape = (s: string) => s.replace(/\d/g, '9').replace(/[A-Z]$/, (letter) => ('FDI'.includes(letter) ? 'A' : '?'));
  let ids = 0;
  for (const words of commandLines(program, [])) {
    const help = await lifeboat([...words, '--help']);
    assert.equal(help.code, 0, help.stderr);
    for (const [id] of help.stdout.matchAll(/\b\d{8}\S*/g)) {
      ids++;
      assert.ok('99999999-999999-999A'.startsWith(shape(id)), `lifeboat ${words.join(' ')} --help: ${id} is no point id, nor a prefix of one`);
    }
  }
  assert.ok(ids >= 3, 'the examples of pin, unpin and diff name points');
});

test('a flag value that cannot be used is refused (exit 2) naming the flag and what it takes, not read as the default or as no flag', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const repo = ['--repo', d.repo];
  assert.equal((await lifeboat([...repo, 'backup', d.src])).code, 0);
  const refused: [string[], RegExp][] = [
    [['status', '--events', 'abc'], /--events abc: expected a whole number of at least 0/],
    [['status', '--events', '-1'], /--events -1: expected a whole number of at least 0/],
    [['status', '--events', '2.5'], /--events 2\.5: expected a whole number of at least 0/],
    // Decimal digits alone: Number() would read 0x10 as 16, 1e1 as 10, " 5 " as 5 and "" as 0.
    [['status', '--events', '0x10'], /--events 0x10: expected a whole number of at least 0/],
    [['status', '--events', ''], /--events "": expected a whole number of at least 0/],
    [['prune', '--keep-full', '1e1'], /--keep-full 1e1: expected a whole number of at least 1/],
    [['prune', '--keep-full', '99999999999999999999'], /--keep-full 99999999999999999999: expected a whole number of at most 9007199254740991/],
    [['prune', '--keep-full', '1', '--keep-diff', ' 5 '], /--keep-diff " 5 ": expected a whole number of at least 0/],
    [['verify', '--subset', '0x10'], /--subset 0x10: expected a percentage above 0 and at most 100, such as 5 or 12\.5/],
    [['verify', '--subset', '1e1'], /--subset 1e1: expected a percentage above 0 and at most 100, such as 5 or 12\.5/],
    [['verify', '--subset', ' 5 '], /--subset " 5 ": expected a percentage above 0 and at most 100, such as 5 or 12\.5/],
    [['verify', '--subset', ''], /--subset "": expected a percentage above 0 and at most 100, such as 5 or 12\.5/],
    [['verify', '--subset', '0'], /--subset 0: expected a percentage above 0 and at most 100, such as 5 or 12\.5/],
    [['verify', '--subset', '100.5'], /--subset 100\.5: expected a percentage above 0 and at most 100, such as 5 or 12\.5/],
    [['verify', '--since-verified', '--sample', 'Infinity'], /--sample Infinity: expected a percentage above 0 and at most 100, such as 5 or 12\.5/],
    [['init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '0x10'], /--kdf-log-n 0x10: expected a whole number from 10 to 20/],
    [['init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '1e1'], /--kdf-log-n 1e1: expected a whole number from 10 to 20/],
    [['init', '--encryption', 'aes-256-gcm', '--kdf-log-n', '21'], /--kdf-log-n 21: expected a whole number from 10 to 20/],
    [['backup', d.src, '--notify-on', 'bogus'], /--notify-on bogus: use failure, warning or success/],
    [['backup', d.src, '--notify-on', 'failure,bogus'], /--notify-on bogus: use failure, warning or success/],
    [['backup', d.src, '--notify-on', ''], /--notify-on "": use failure, warning or success/],
    [['backup', d.src, '--type', ''], /--type "": use full, diff or incr/],
    [['backup', '--source', ''], /--source "": expected NAME=PATH/],
    [['backup', d.src, '--tag', ''], /--tag "": expected KEY=VALUE/],
    [['backup', d.src, '--notify-url', ''], /--notify-url "": expected an http:\/\/ or https:\/\/ URL/],
    [['backup', d.src, '--metrics-file', ''], /--metrics-file "": expected the path of a file/],
    [['drill', '--junit', ''], /--junit "": expected the path of a file/],
    [['drill', '--smoke', ''], /--smoke "": expected a shell command/],
    // A script's unset variable must not pick every target, or the only one.
    [['status', '--target', ''], /--target "": expected the name of a target from lifeboat\.yaml/],
    [['failover', '--to', ''], /--to "": expected the name of a target from lifeboat\.yaml/],
    [['rollback', '--to', ''], /--to "": expected the name of a target from lifeboat\.yaml/],
    // A timeout or an objective of 0 could only fail.
    [['drill', '--smoke', 'true', '--smoke-timeout', '0s'], /--smoke-timeout 0s: expected a duration longer than 0/],
    [['drill', '--rto', '0m'], /--rto 0m: expected a duration longer than 0/],
    [['drill', '--rpo', '0h'], /--rpo 0h: expected a duration longer than 0/],
    [['backup', d.src, '--lock-stale-after', '0s'], /--lock-stale-after 0s: expected a duration longer than 0/],
    [['prune', '--keep-full', '1', '--keep-within', 'soon'], /--keep-within soon: expected a duration such as 36h or 14d/],
    // Beyond a hundred years a duration is a typo, and soon no exact number of milliseconds.
    [['prune', '--keep-full', '1', '--keep-within', '99999999999999d'], /--keep-within 99999999999999d: expected a duration of at most 100 years \(36500d\)/],
    [['drill', '--rpo', `${'9'.repeat(400)}ms`], /--rpo 9+ms: expected a duration of at most 100 years \(36500d\)/],
    [['backup', d.src, '--retry-lock', '36500d1ms'], /--retry-lock 36500d1ms: expected a duration of at most 100 years \(36500d\)/],
  ];
  for (const [args, message] of refused) {
    const r = await lifeboat([...repo, '--json', ...args]);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`^lifeboat: ${message.source}\\n`));
    assert.match(r.json().error.message, message);
  }
  assert.equal((await lifeboat([...repo, '--json', 'list'])).json().length, 1, 'no backup was taken by the refused ones');
  assert.equal((await lifeboat([...repo, 'status', '--events', '0'])).code, 0);
  for (const share of ['12.5', '5%', '100']) assert.equal((await lifeboat([...repo, 'verify', '--subset', share])).code, 0, `--subset ${share}`);
  // Where 0 means something (no window of time kept, no wait for the lock), it is taken.
  assert.equal((await lifeboat([...repo, 'prune', '--keep-full', '1', '--keep-within', '0d', '--retry-lock', '0s', '--dry-run'])).code, 0);
  const century = await lifeboat([...repo, 'prune', '--keep-full', '1', '--keep-within', '36500d', '--dry-run']);
  assert.equal(century.code, 0, century.stderr);
  assert.doesNotMatch(century.stdout, /e\+/);
});

test('a file where a restore target or a --work-dir, or one of their parents, must be a directory is a usage error (exit 2) that names it', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const repo = ['--repo', d.repo];
  assert.equal((await lifeboat([...repo, 'backup', d.src])).code, 0);
  const file = path.join(d.work, 'afile');
  await fsp.writeFile(file, 'not a directory');
  await fsp.symlink(path.join(d.work, 'nowhere'), path.join(d.work, 'dangling'));
  const refused: [string[], string][] = [
    [['restore', 'latest', '--target', 'afile/x'], `restore target ${file}/x cannot be made: ${file} is not a directory`],
    [['restore', 'latest', '--target', 'afile/x/y', '--dry-run'], `restore target ${file}/x/y cannot be made: ${file} is not a directory`],
    [['restore', 'latest', '--target', 'afile'], `restore target ${file} exists and is not a directory`],
    [['restore', 'latest', '--target', 'dangling/x'], `restore target ${d.work}/dangling/x cannot be made: ${d.work}/dangling is a symbolic link to ${d.work}/nowhere, which does not exist`],
    [['drill', '--work-dir', 'afile'], `--work-dir afile: ${file} is not a directory`],
    [['drill', '--work-dir', 'afile/x'], `--work-dir afile/x: ${file} is not a directory`],
    [['drill', '--work-dir', 'dangling/x'], `--work-dir dangling/x: ${d.work}/dangling is not a directory`],
    [['verify', '--deep', '--work-dir', 'afile/x'], `--work-dir afile/x: ${file} is not a directory`],
    [['backup', d.src, '--work-dir', 'afile'], `--work-dir afile: ${file} is not a directory`],
  ];
  for (const [args, message] of refused) {
    const r = await lifeboat([...repo, ...args], { cwd: d.work });
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stderr.split('\n')[0], `lifeboat: ${message}`);
    assert.doesNotMatch(r.stderr, /unexpected error|ENOTDIR/);
  }
  // A drill that cannot start still leaves its JUnit report, with the error.
  const report = path.join(d.work, 'drill.xml');
  assert.equal((await lifeboat([...repo, 'drill', '--work-dir', 'afile/x', '--junit', report], { cwd: d.work })).code, 2);
  assert.match(await fsp.readFile(report, 'utf8'), /afile is not a directory/);
  // What is missing on the way is made.
  assert.equal((await lifeboat([...repo, 'drill', '--work-dir', 'made/for/it'], { cwd: d.work })).code, 0);
  assert.deepEqual(await fsp.readdir(path.join(d.work, 'made', 'for', 'it')), []);
});

test('--quiet leaves out progress, notes and the report of a task that succeeded, not what a command is run to show', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const quiet = (...args: string[]) => lifeboat(['--repo', d.repo, '--quiet', ...args], { cwd: d.work });
  const silent = async (...args: string[]) => {
    const r = await quiet(...args);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stdout, '', `${args.join(' ')} reports a task done`);
    assert.equal(r.stderr, '', `${args.join(' ')} has nothing to warn about`);
  };
  const shows = async (pattern: RegExp, ...args: string[]) => {
    const r = await quiet(...args);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stdout, pattern, `${args.join(' ')} shows what it is run to show`);
  };
  assert.equal((await quiet('backup', d.src)).stdout, '');
  await fsp.writeFile(path.join(d.src, 'config.json'), JSON.stringify({ vocab_size: 32000, hidden: 128 }));
  // What cron runs: a backup and a verify that succeed print nothing at all.
  await silent('backup', d.src);
  await silent('verify', '--read-data');
  await silent('restore', 'latest', '--target', 'restored');
  await silent('drill');
  const [first, second] = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json().map((p: { id: string }) => p.id);
  await shows(new RegExp(`${first}[^]*${second}`), 'list');
  await shows(/models\/tok\/tokenizer\.json/, 'show', 'latest');
  await shows(/1 changed[^]*\nM models\/config\.json/, 'diff', first, second);
  await shows(/newest backup/, 'status');
  await shows(/would take incr backup/, 'backup', d.src, '--dry-run');
  await shows(/would restore/, 'restore', 'latest', '--target', 'restored', '--delta', '--dry-run');
  await shows(/would remove 0 point\(s\)/, 'prune', '--keep-full', '1', '--dry-run');
  // A drill that failed says which check did.
  const failed = await quiet('drill', '--smoke', 'exit 3');
  assert.equal(failed.code, 5);
  assert.match(failed.stdout, /FAILED\n[^]*FAIL {2}smoke/);
});

test("every argument of every command is described in its --help, and one that takes a point or a key's id says that a unique prefix of the id will do", () => {
  const program = buildProgram({ stdout: new PassThrough(), stderr: new PassThrough(), env: {}, cwd: process.cwd() }, new AbortController().signal, { printed: false });
  const commandLines = (c: Command, words: string[]): [Command, string[]][] => [[c, words], ...c.commands.flatMap((sub) => commandLines(sub, [...words, sub.name()]))];
  let selectors = 0;
  for (const [command, words] of commandLines(program, [])) {
    for (const argument of command.registeredArguments) {
      const where = `lifeboat ${words.join(' ')} <${argument.name()}>`;
      assert.notEqual(argument.description, '', `${where} has no description`);
      if (!['point', 'from', 'id'].includes(argument.name())) continue;
      selectors++;
      assert.match(argument.description, /unique (id )?prefix/, where);
    }
  }
  assert.ok(selectors >= 9, 'show, diff, verify, restore, pin, unpin, drill, failover and key remove take one');
});
