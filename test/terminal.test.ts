/**
 * Colour and the spinner: only on a terminal that shows them, and never
 * where NO_COLOR, FORCE_COLOR=0 or TERM=dumb says not, nor in a log file
 * that stderr is redirected to while stdout is a terminal.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { runCli } from '../src/cli/main.js';
import { BIN } from './helpers/cli.js';
import { tempDir } from './helpers/tree.js';
import { waitFor } from './helpers/processes.js';

/** A stream that says it is a terminal, as process.stdout does on one. */
function stream(isTTY: boolean): { stream: PassThrough & { isTTY?: boolean; columns?: number }; text: () => string } {
  const s = Object.assign(new PassThrough(), isTTY ? { isTTY: true, columns: 80 } : {});
  let text = '';
  s.on('data', (c: Buffer) => (text += c.toString('utf8')));
  return { stream: s, text: () => text };
}

const ESC = '\u001b';

test('an error is red only on a terminal that shows colour: not in a redirected stderr, nor with NO_COLOR, FORCE_COLOR=0, TERM=dumb or --no-color', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const missing = ['--repo', path.join(work, 'nothing'), 'list'];
  const run = async (tty: { stdout: boolean; stderr: boolean }, env: NodeJS.ProcessEnv, args = missing) => {
    const out = stream(tty.stdout);
    const err = stream(tty.stderr);
    const code = await runCli(['node', 'lifeboat', ...args], { stdout: out.stream, stderr: err.stream, env: { PATH: process.env.PATH, ...env }, cwd: work }, new AbortController().signal);
    assert.equal(code, 2, err.text());
    assert.match(err.text(), /there is no lifeboat repository/);
    return err.text();
  };
  assert.ok((await run({ stdout: true, stderr: true }, { TERM: 'xterm' })).includes(`${ESC}[31mlifeboat:`), 'red on a terminal');
  // `lifeboat list 2>>errors.log` typed on a terminal: the log gets the sentence alone.
  assert.ok(!(await run({ stdout: true, stderr: false }, { TERM: 'xterm' })).includes(ESC), 'no escape codes in a redirected stderr');
  for (const env of [{ NO_COLOR: '1' }, { FORCE_COLOR: '0' }, { FORCE_COLOR: 'false' }, { TERM: 'dumb' }]) {
    assert.ok(!(await run({ stdout: true, stderr: true }, { TERM: 'xterm', ...env })).includes(ESC), JSON.stringify(env));
  }
  assert.ok(!(await run({ stdout: true, stderr: true }, { TERM: 'xterm' }, ['--no-color', ...missing])).includes(ESC), '--no-color');
  // commander refuses the command line before any command runs: the same rule.
  const refused = stream(true);
  assert.equal(await runCli(['node', 'lifeboat', '--no-color', 'bogus'], { stdout: stream(true).stream, stderr: refused.stream, env: { TERM: 'xterm' }, cwd: work }, new AbortController().signal), 2);
  assert.equal(refused.text(), "lifeboat: unknown command 'bogus'\n  see lifeboat --help\n");
});

const hasScript = spawnSync('script', ['--version'], { stdio: 'ignore' }).status === 0;

/** A command run by `script` on a terminal 80 columns wide: what the terminal shows, keys typed on it, and its exit code. */
function onScript(args: string[], env: NodeJS.ProcessEnv, cwd: string) {
  const command = `stty cols 80 rows 24; exec ${[process.execPath, BIN, ...args].map((a) => JSON.stringify(a)).join(' ')}`;
  const terminal = spawn('script', ['-qefc', command, '/dev/null'], { cwd, stdio: ['pipe', 'pipe', 'inherit'], env: { PATH: process.env.PATH, ...env } });
  let shown = '';
  terminal.stdout!.on('data', (c: Buffer) => (shown += c.toString('utf8')));
  terminal.stdin!.on('error', () => undefined);
  return {
    shown: () => shown,
    type: (keys: string) => terminal.stdin!.write(keys),
    exited: new Promise<number | null>((resolve) => terminal.on('close', resolve)),
  };
}

async function onTerminal(args: string[], env: NodeJS.ProcessEnv, cwd: string): Promise<{ code: number | null; shown: string }> {
  const terminal = onScript(args, env, cwd);
  const code = await terminal.exited;
  return { code, shown: terminal.shown() };
}

/** A deployment whose backup takes a few seconds: a source that sleeps before it prints. */
async function slowDeployment(work: string, seconds: number): Promise<void> {
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'config.json'), '{}\n');
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ${JSON.stringify(path.join(work, 'repo'))}\nsources:\n  models: ./models\n  slow: { command: "sleep ${seconds}; echo state" }\n`);
  assert.equal((await onTerminal(['init'], { TERM: 'xterm' }, work)).code, 0);
}

test('the spinner of a backup on a terminal has no colour with NO_COLOR, and TERM=dumb gets plain lines without escape codes', { skip: hasScript ? undefined : 'script (util-linux) is not installed' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  // A source that takes a second, so that the spinner turns a few times.
  await slowDeployment(work, 1);

  const spun = await onTerminal(['backup'], { TERM: 'xterm' }, work);
  assert.equal(spun.code, 0, spun.shown);
  assert.ok(spun.shown.includes(`${ESC}[36m`), `a cyan spinner on a terminal: ${JSON.stringify(spun.shown.slice(0, 300))}`);

  const plain = await onTerminal(['backup'], { TERM: 'xterm', NO_COLOR: '1' }, work);
  assert.equal(plain.code, 0, plain.shown);
  assert.match(plain.shown, /\u001b\[1G/, 'still a spinner');
  assert.doesNotMatch(plain.shown, /\u001b\[\d+m/, 'without colour');

  const dumb = await onTerminal(['backup'], { TERM: 'dumb' }, work);
  assert.equal(dumb.code, 0, dumb.shown);
  assert.ok(!dumb.shown.includes(ESC), JSON.stringify(dumb.shown));
  assert.match(dumb.shown, /^\d{4}-\d\d-\d\dT[\d:.]+Z slow: captured /m, 'timestamped lines, as without a terminal');
  assert.match(dumb.shown, /^took incr backup /m);
});

test('Ctrl-C typed while the spinner turns stops the backup (exit 130), and nothing of it is left', { skip: hasScript ? undefined : 'script (util-linux) is not installed' }, async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await slowDeployment(work, 20);
  const terminal = onScript(['backup'], { TERM: 'xterm' }, work);
  const spinning = await waitFor(async () => terminal.shown().includes(' backup'), 20_000);
  assert.ok(spinning, `no spinner: ${JSON.stringify(terminal.shown())}`);
  const typed = Date.now();
  terminal.type('\u0003');
  const code = await terminal.exited;
  assert.equal(code, 130, terminal.shown());
  assert.ok(Date.now() - typed < 15_000, 'stopped, not run to its end');
  assert.match(terminal.shown(), /lifeboat: SIGINT received, stopping cleanly/);
  assert.match(terminal.shown(), /\u001b\[\?25h/, 'the cursor is shown again');
  const list = await onTerminal(['--json', 'list'], { TERM: 'xterm' }, work);
  assert.equal(list.code, 0);
  assert.deepEqual(JSON.parse(list.shown), []);
});
