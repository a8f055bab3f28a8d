import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { isatty } from 'node:tty';
import { InterruptedError, RuntimeFailure, UsageError, errorMessage } from '../errors.js';
import { runShell } from '../state/command.js';
import { closeFd, openFd } from '../format/fd.js';
import { nonEmpty } from './flags.js';
import type { PasswordOrigin, PasswordSource } from '../core/keys.js';
import type { CliContext } from './context.js';

/** The most a password file that is no regular file (standard input, a pipe, a device) may hold. */
const STREAM_LIMIT = 4 * 1024;
/** The most a regular password file may hold. */
const FILE_LIMIT = 64 * 1024;

let standardInputRead = false;

/** Whether `st` is this process's standard input (`/dev/stdin`, `/dev/fd/0`), which may be a socket no path opens. */
function isStandardInput(st: fs.Stats): boolean {
  try {
    const stdin = fs.fstatSync(0);
    return stdin.dev === st.dev && stdin.ino === st.ino;
  } catch {
    return false;
  }
}

/** How long a password file that is a pipe may take to be read to its end: as long as LIFEBOAT_PASSWORD_COMMAND may run. */
const STREAM_TIMEOUT_MS = 60_000;

/**
 * Reads a stream to its end, refusing (and no longer reading) one that holds more than `limit` bytes,
 * one that has not ended within STREAM_TIMEOUT_MS (a pipe no one writes to, or never closes), and
 * stopping at once when `signal` aborts.
 */
function readAtMost(stream: Readable, limit: number, errors: { tooLarge: () => Error; tooSlow: () => Error }, signal: AbortSignal): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = (err?: Error) => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      stream.off('data', onData).off('end', onEnd).off('error', done);
      stream.destroy();
      if (err) reject(err);
      else resolve(Buffer.concat(chunks).toString('utf8'));
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) done(errors.tooLarge());
      else chunks.push(chunk);
    };
    const onEnd = () => done();
    const onAbort = () => done(new InterruptedError());
    const timer = setTimeout(() => done(errors.tooSlow()), STREAM_TIMEOUT_MS);
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    stream.on('data', onData).on('end', onEnd).on('error', done);
  });
}

/**
 * A password file that is no regular file, opened without waiting: a named pipe no one has opened
 * for writing would block a plain open, on a thread that no signal and no exit can take back. A
 * pipe or socket is read as the event loop reads standard input, so an interrupt stops the wait.
 */
async function openStream(full: string, terminal: () => Error): Promise<Readable> {
  const fd = await openFd(full, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  try {
    if (isatty(fd)) throw terminal();
    const st = fs.fstatSync(fd);
    if (st.isFIFO() || st.isSocket()) return new net.Socket({ fd, readable: true, writable: false });
    return fs.createReadStream('', { fd, highWaterMark: STREAM_LIMIT + 1 });
  } catch (err) {
    await closeFd(fd).catch(() => undefined);
    throw err;
  }
}

/**
 * A password file's text: a regular file, or standard input, a pipe (`<(pass show backup)`) or a
 * device, read to its end as long as it holds at most STREAM_LIMIT bytes. A terminal is refused:
 * reading it would wait for a line typed in the clear.
 */
async function readPasswordText(full: string, what: string, signal: AbortSignal): Promise<string> {
  const st = await fsp.stat(full);
  if (st.isFile()) {
    if (st.size > FILE_LIMIT) throw new UsageError(`${what} ${full} holds more than ${FILE_LIMIT / 1024} KiB; it should hold the password alone`);
    return fsp.readFile(full, 'utf8');
  }
  if (st.isDirectory()) throw new UsageError(`${what} ${full} is a directory`);
  const errors = {
    tooLarge: () => new UsageError(`${what} ${full} holds more than ${STREAM_LIMIT / 1024} KiB; it should hold the password alone`),
    tooSlow: () =>
      new UsageError(`${what} ${full} was not read to its end within ${STREAM_TIMEOUT_MS / 1000} s: nothing closed the pipe`, {
        hint: 'whatever writes the password there must write it and close the pipe (or end standard input)',
      }),
  };
  const terminal = () => new UsageError(`${what} ${full} is a terminal; reading it would wait for the password typed in the clear`, { hint: 'give no password file to be asked for it on the terminal without echo' });
  if (isStandardInput(st)) {
    if (process.stdin.isTTY) throw terminal();
    // Read to its end once: a second read would wait for an end that has passed.
    if (standardInputRead) throw new UsageError(`${what} ${full} is standard input, which gave the password already`, { hint: 'give each password its own file or pipe' });
    standardInputRead = true;
    return readAtMost(process.stdin, STREAM_LIMIT, errors, signal);
  }
  return readAtMost(await openStream(full, terminal), STREAM_LIMIT, errors, signal);
}

/** Password files may end with one newline, which is not part of the password. */
async function readPasswordFile(ctx: CliContext, file: string, what: string): Promise<string> {
  const full = path.resolve(ctx.cwd, file);
  let text: string;
  try {
    text = await readPasswordText(full, what, ctx.signal);
  } catch (err) {
    if (err instanceof UsageError || err instanceof InterruptedError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    // Under cron the working directory is the home directory: a relative path written for a shell elsewhere is not found.
    const hint =
      code === 'ENOENT' || code === 'ENOTDIR'
        ? `${path.isAbsolute(file) ? 'check the path' : `a relative path is taken from the working directory (${ctx.cwd}); give the file's absolute path`}`
        : code === 'EACCES' || code === 'EPERM'
          ? `run as a user that may read it, or give this user read access (chmod 600 and chown to this user keep it private)`
          : undefined;
    // Said in words, as a missing config file is, rather than as the errno's name.
    const problem =
      code === 'ENOENT' || code === 'ENOTDIR'
        ? `${what} ${full} does not exist`
        : code === 'EACCES' || code === 'EPERM'
          ? `this user may not read ${what} ${full}`
          : `cannot read ${what} ${full}: ${code ?? errorMessage(err)}`;
    throw new UsageError(problem, hint === undefined ? {} : { hint });
  }
  const password = text.replace(/\r?\n$/, '');
  if (password.length === 0) throw new UsageError(`${what} ${full} is empty`);
  return password;
}

/** How long LIFEBOAT_PASSWORD_COMMAND may run: a secret manager may wait for a PIN or a touch of a token. */
const COMMAND_TIMEOUT_MS = 60_000;

/**
 * The first line LIFEBOAT_PASSWORD_COMMAND prints. It runs without the passwords in its
 * environment; its output is never shown, its stderr is when it fails.
 */
async function passwordFromCommand(ctx: CliContext, command: string): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  // Stopped as soon as it prints too much, where it would otherwise print until the timeout.
  const stop = new AbortController();
  const forward = () => stop.abort();
  if (ctx.signal.aborted) stop.abort();
  ctx.signal.addEventListener('abort', forward, { once: true });
  const onStdout = (chunk: Buffer) => {
    size += chunk.length;
    if (size <= STREAM_LIMIT) chunks.push(chunk);
    else stop.abort();
  };
  try {
    await runShell('LIFEBOAT_PASSWORD_COMMAND', command, { cwd: ctx.cwd, env: ctx.env, timeoutMs: COMMAND_TIMEOUT_MS, signal: stop.signal, onStdout });
  } catch (err) {
    if (size > STREAM_LIMIT) throw new UsageError(`LIFEBOAT_PASSWORD_COMMAND printed more than ${STREAM_LIMIT / 1024} KiB and was stopped; it should print the password alone`);
    if (!(err instanceof RuntimeFailure)) throw err;
    throw new UsageError(err.message, { hint: 'run the command yourself to see what it does; lifeboat takes the first line it prints as the password' });
  } finally {
    ctx.signal.removeEventListener('abort', forward);
  }
  const password = Buffer.concat(chunks).toString('utf8').split('\n')[0]!.replace(/\r$/, '');
  if (password.length === 0) throw new UsageError('LIFEBOAT_PASSWORD_COMMAND printed no password on its first line');
  return password;
}

/** The ways to give the password of a repository, said when none was given and there is no terminal to ask on. */
export const GIVE_A_PASSWORD = 'pass --password-file FILE, or set LIFEBOAT_PASSWORD_FILE, LIFEBOAT_PASSWORD_COMMAND or LIFEBOAT_PASSWORD';

/** What key add and key passwd say when no new password was given. */
const NO_NEW_PASSWORD = { message: 'no new password was given', hint: 'pass --new-password-file FILE or set LIFEBOAT_NEW_PASSWORD' };

function canPrompt(ctx: CliContext): boolean {
  return process.stdin.isTTY === true && (ctx.stderr as { isTTY?: boolean }).isTTY === true;
}

/** Reads a line from the terminal without echoing it. */
export function promptHidden(ctx: CliContext, question: string): Promise<string> {
  const stdin = process.stdin;
  // Echo off before the question shows: what is typed as soon as it does must not appear.
  stdin.setRawMode(true);
  ctx.stderr.write(`${question}: `);
  stdin.resume();
  return new Promise((resolve, reject) => {
    let line = '';
    const finish = () => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      ctx.stderr.write('\n');
    };
    const onData = (data: Buffer) => {
      const text = data.toString('utf8');
      for (let i = 0; i < text.length; i++) {
        const ch = text[i]!;
        if (ch === '\r' || ch === '\n') {
          finish();
          // What was typed after Enter (the next password, typed ahead) is for the next prompt.
          const rest = text.slice(ch === '\r' && text[i + 1] === '\n' ? i + 2 : i + 1);
          if (rest) stdin.unshift(Buffer.from(rest, 'utf8'));
          resolve(line);
          return;
        }
        if (ch === '\u0003' || ch === '\u0004') {
          finish();
          reject(new InterruptedError());
          return;
        }
        if (ch === '\u007f' || ch === '\b') line = line.slice(0, -1);
        else line += ch;
      }
    };
    stdin.on('data', onData);
  });
}

/**
 * The repository password: --password-file, then LIFEBOAT_PASSWORD_FILE, then
 * LIFEBOAT_PASSWORD_COMMAND, then LIFEBOAT_PASSWORD, then a prompt on a terminal. Never a flag's value, which
 * would show in `ps` and shell history.
 */
export function passwordSource(ctx: CliContext): PasswordSource {
  // An empty variable is no variable, as an empty LIFEBOAT_PASSWORD is: a unit or script that sets
  // LIFEBOAT_PASSWORD_FILE= for every repository must not read the working directory as a password
  // file, nor have an unencrypted repository refused for "a password".
  const flag = nonEmpty('--password-file', ctx.global.passwordFile, 'the path of a file');
  const file = flag ?? (ctx.env.LIFEBOAT_PASSWORD_FILE || undefined);
  const command = ctx.env.LIFEBOAT_PASSWORD_COMMAND || undefined;
  const env = ctx.env.LIFEBOAT_PASSWORD;
  let origin: PasswordOrigin | undefined;
  return {
    given: file !== undefined || command !== undefined || (env !== undefined && env !== ''),
    async get(purpose: string) {
      if (file !== undefined) {
        const named = flag !== undefined ? '--password-file' : 'LIFEBOAT_PASSWORD_FILE';
        origin = { what: `the password in ${path.resolve(ctx.cwd, file)}`, hint: `check that file (all of it but one trailing newline is the password) and that ${named} names the right one` };
        return readPasswordFile(ctx, file, 'password file');
      }
      if (command !== undefined) {
        origin = { what: 'the password LIFEBOAT_PASSWORD_COMMAND printed', hint: 'check the first line LIFEBOAT_PASSWORD_COMMAND prints' };
        return passwordFromCommand(ctx, command);
      }
      if (env !== undefined && env !== '') {
        origin = { what: 'LIFEBOAT_PASSWORD', hint: 'check LIFEBOAT_PASSWORD' };
        return env;
      }
      if (canPrompt(ctx)) {
        // An Enter pressed alone is no try: it would cost a scrypt per key to be called wrong.
        const typed = await promptHidden(ctx, purpose.charAt(0).toUpperCase() + purpose.slice(1));
        if (typed.length === 0) throw new UsageError('no password was typed', { hint: `type the password at the prompt, or ${GIVE_A_PASSWORD}` });
        origin = { what: 'the typed password', hint: 'the password is asked once a run: run the command again to type it again, minding Caps Lock and the keyboard layout' };
        return typed;
      }
      throw new UsageError('this repository is encrypted and no password was given', { hint: GIVE_A_PASSWORD });
    },
    origin: () => origin,
  };
}

/**
 * A new password (key add, key passwd): --new-password-file, LIFEBOAT_NEW_PASSWORD, or asked twice
 * on a terminal. `missing` is the error without any of them: init, which asks for the first
 * password this way, takes it from --password-file and says so.
 */
export async function newPassword(ctx: CliContext, file: string | undefined, missing: { message: string; hint: string } = NO_NEW_PASSWORD): Promise<string> {
  if (file !== undefined) return readPasswordFile(ctx, file, 'new password file');
  const env = ctx.env.LIFEBOAT_NEW_PASSWORD;
  if (env !== undefined && env !== '') return env;
  if (!canPrompt(ctx)) throw new UsageError(missing.message, { hint: missing.hint });
  const first = await promptHidden(ctx, 'New password');
  if (first.length === 0) throw new UsageError('the password is empty');
  const again = await promptHidden(ctx, 'Repeat the new password');
  if (first !== again) throw new UsageError('the two passwords differ');
  return first;
}
