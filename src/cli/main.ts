import { Chalk } from 'chalk';
import { Command, CommanderError, Help, Option, type HelpContext } from 'commander';
import { createRequire } from 'node:module';
import type { Writable } from 'node:stream';
import { ExitCode, LifeboatError, UsageError, asLimitReached, errorMessage, failureExitCode } from '../errors.js';
import type { CliContext, GlobalOptions } from './context.js';
import { documentText, failureDocument, jsonLogLine, paint } from './output.js';
import { escapeUnprintable } from './format.js';
import { leftUndoneNow } from '../left-undone.js';
import { registerInit } from './commands/init.js';
import { registerBackup } from './commands/backup.js';
import { registerList } from './commands/list.js';
import { registerShow } from './commands/show.js';
import { registerDiff } from './commands/diff.js';
import { registerVerify } from './commands/verify.js';
import { registerRestore } from './commands/restore.js';
import { registerUnlock } from './commands/unlock.js';
import { registerPin, registerUnpin } from './commands/pin.js';
import { registerFailover } from './commands/failover.js';
import { registerRollback } from './commands/rollback.js';
import { registerStatus } from './commands/status.js';
import { registerPrune } from './commands/prune.js';
import { registerDrill } from './commands/drill.js';
import { registerCompletion } from './commands/completion.js';
import { registerKey } from './commands/key.js';

export interface CliIo {
  stdout: Writable & { isTTY?: boolean };
  stderr: Writable & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
  cwd: string;
}

/** What every command action receives: its context plus its own arguments and options. */
export type CommandRunner = <A extends unknown[]>(
  action: (ctx: CliContext, ...args: A) => Promise<void>,
) => (...args: unknown[]) => Promise<void>;

/** The table of README.md's "Exit codes", word for word (a test compares them). */
const EXIT_CODES_HELP = `
Exit codes:
  0    success
  1    runtime failure (I/O, storage, network after retries)
  2    usage or configuration error, including credentials or permissions the
       repository refuses
  3    integrity failure: a checksum mismatch, missing or unreadable backup data,
       hostile input
  4    the repository, or a target a failover or restore writes, is locked by
       another live process
  5    a health check or a drill objective failed; a failover that switched back;
       status with an unhealthy target
  130  interrupted (SIGINT, SIGTERM, or SIGHUP when the terminal or SSH session
       goes away); the repository is left consistent`;

function version(): string {
  const require = createRequire(import.meta.url);
  // Compiled modules sit three levels below the package root, the bundle two.
  for (const candidate of ['../../../package.json', '../../package.json']) {
    try {
      const pkg = require(candidate) as { name?: string; version?: string };
      if (pkg.name === 'lifeboat' && pkg.version) return pkg.version;
    } catch {
      // not at this level
    }
  }
  return 'unknown';
}

/** What runCli learns of a command while it runs: its context, whether it wrote to stdout, its --json document. */
export interface RunState {
  printed: boolean;
  ctx?: CliContext;
  document?: unknown;
}

export function buildProgram(io: CliIo, signal: AbortSignal, state: RunState): Command {
  const program = new Command('lifeboat')
    .description('Backup and disaster recovery for machine-learning model deployments.')
    .version(version(), '-V, --version')
    .option('-c, --config <file>', 'config file (default: lifeboat.yaml, or LIFEBOAT_CONFIG)')
    .option('-r, --repo <url>', 'repository: a directory, file:// or s3://bucket/prefix (overrides LIFEBOAT_REPO and the config)')
    .option('--deployment <name>', 'the deployment, in a repository shared by several (overrides LIFEBOAT_DEPLOYMENT and the config)')
    .option('--json', 'print one JSON document on stdout and nothing else there')
    .option('-q, --quiet', 'no progress, notes, or report of a task that succeeded (a backup from cron prints nothing); errors, warnings and what a command is run to show still print: list, show, diff, status, key list, dry runs, the problems verify or drill found')
    .option('--no-color', 'no colour (NO_COLOR is honoured too)')
    .option('--debug', 'show stack traces of errors')
    .addOption(new Option('--log-format <format>', 'log lines on stderr: text, or json (one object per line, for log shippers)').choices(['text', 'json']))
    .addOption(new Option('--s3-endpoint <url>', 'S3 endpoint for MinIO, Ceph, R2 … (or s3.endpoint, AWS_ENDPOINT_URL_S3)'))
    .option('--s3-path-style', 'path-style S3 addressing (s3.forcePathStyle)')
    .option('--password-file <file>', 'password of an encrypted repository (or LIFEBOAT_PASSWORD_FILE, LIFEBOAT_PASSWORD_COMMAND, LIFEBOAT_PASSWORD)')
    .addHelpText('after', EXIT_CODES_HELP)
    .configureHelp({ optionDescription: withoutEmptyDefault })
    .showSuggestionAfterError();

  const run: CommandRunner = (action) =>
    async (...args: unknown[]) => {
      const command = args[args.length - 1] as Command;
      const global = command.optsWithGlobals() as GlobalOptions;
      // A terminal that reports no width (some CI pseudo-terminals) can't redraw a spinner line.
      const columns = (io.stderr as { columns?: number }).columns ?? 0;
      const logFormat = global.logFormat === 'json' ? 'json' : 'text';
      const interactive = io.stderr.isTTY === true && columns > 0 && logFormat === 'text' && !dumbTerminal(io.env);
      const ctx: CliContext = {
        cwd: io.cwd,
        env: io.env,
        stdout: io.stdout,
        stderr: io.stderr,
        interactive,
        color: { stdout: colorFor(io.stdout, io.env, global.color !== false), stderr: colorFor(io.stderr, io.env, global.color !== false) },
        json: global.json === true,
        quiet: global.quiet === true,
        debug: global.debug === true,
        signal,
        global,
        logFormat,
        keepDocument: (document) => (state.document = document),
      };
      state.ctx = ctx;
      const stdoutWrite = io.stdout.write.bind(io.stdout);
      ctx.stdout = new Proxy(io.stdout, {
        get(target, prop, receiver) {
          if (prop === 'write') {
            return (...w: Parameters<typeof stdoutWrite>) => {
              state.printed = true;
              return stdoutWrite(...w);
            };
          }
          return Reflect.get(target, prop, receiver);
        },
      });
      await (action as (ctx: CliContext, ...a: unknown[]) => Promise<void>)(ctx, ...args.slice(0, -1));
    };

  for (const register of [registerInit, registerBackup, registerList, registerShow, registerDiff, registerVerify, registerRestore, registerPin, registerUnpin, registerUnlock, registerPrune, registerDrill, registerFailover, registerRollback, registerStatus, registerKey, registerCompletion]) {
    register(program, run).addHelpText('after', EXIT_CODES_HELP);
  }
  // The help commander shows on stderr before it gives up (a command that needs a subcommand), held until
  // asUsageError knows whether it helps: not for `lifeboat help bogus`, where it is the program's, nor
  // among the JSON lines of --log-format json.
  const heldHelp: string[] = [];
  const showHelp = (show: boolean) => show && program.opts<GlobalOptions>().logFormat !== 'json' && io.stderr.write(heldHelp.join(''));
  for (const command of withSubcommands(program)) {
    command.exitOverride(asUsageError(command, showHelp)).configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => heldHelp.push(s),
      // Its errors are rendered as lifeboat's own, by runCli.
      outputError: () => undefined,
    });
    if (command.commands.length > 0) refuseHelpOfUnknownCommand(command);
  }
  return program;
}

/**
 * An option's line of --help without "(default: [])": a repeatable option (--source, --exclude,
 * --include) starts as an empty list, which says nothing to whoever reads the help. Every command
 * inherits it from the program.
 */
function withoutEmptyDefault(this: Help, option: Option): string {
  const empty = Array.isArray(option.defaultValue) && option.defaultValue.length === 0;
  return Help.prototype.optionDescription.call(this, empty ? Object.assign(Object.create(option) as Option, { defaultValue: undefined }) : option);
}

/** A terminal that cannot move its cursor or show colour (TERM=dumb: an editor's shell buffer, some CI logs). */
function dumbTerminal(env: NodeJS.ProcessEnv): boolean {
  return env.TERM === 'dumb';
}

/**
 * Whether colour may be written to one stream: a terminal, unless --no-color, NO_COLOR (any value but
 * empty), FORCE_COLOR=0 or false, or TERM=dumb says not. Each stream is asked on its own, so that an
 * error log (`2>errors.log`) gets no escape codes while stdout is a terminal, nor stdout in a pipe.
 */
function colorFor(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv, allowed: boolean): boolean {
  if (!allowed || env.NO_COLOR || env.FORCE_COLOR === '0' || env.FORCE_COLOR === 'false' || dumbTerminal(env)) return false;
  return stream.isTTY === true;
}

type OutputHelp = (context?: HelpContext | ((str: string) => string)) => void;

/**
 * `lifeboat bogus --help`: commander shows the help of the command above the word it does not know,
 * with exit 0, as if the word were not there; it is refused as `lifeboat bogus` is, an unknown command.
 * The word may come after the flag too (`lifeboat --help bogus`), as `lifeboat help bogus`; and
 * `lifeboat --help restore` shows the help of restore, as `lifeboat help restore` does.
 */
function refuseHelpOfUnknownCommand(command: Command): void {
  const outputHelp = command.outputHelp.bind(command) as OutputHelp;
  // commander's own refusal of an unknown command (with its "did you mean"), not in its typings; it names args[0].
  const unknownCommand = (command as Command & { unknownCommand(): never }).unknownCommand.bind(command);
  command.outputHelp = (context?: HelpContext | ((str: string) => string)) => {
    // What commander has parsed: the words not taken as options, and, after the help flag, all that follows it.
    const words = operands(command, command.args);
    const [word] = words;
    if (word === undefined || word === 'help') return outputHelp(context);
    const sub = command.commands.find((c) => c.name() === word || c.aliases().includes(word));
    if (!sub) {
      command.args = words;
      return unknownCommand();
    }
    sub.args = words.slice(1);
    (sub.outputHelp.bind(sub) as OutputHelp)(context);
  };
}

/** The options a command takes: its own and those of the commands above it. */
const optionsOf = (c: Command | null): Option[] => (c ? [...c.options, ...optionsOf(c.parent)] : []);

/** The words of a command line that are no option nor an option's value, up to a `--`. */
function operands(command: Command, args: readonly string[]): string[] {
  const known = optionsOf(command);
  const words: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--') break;
    if (!arg.startsWith('-') || arg === '-') {
      words.push(arg);
      continue;
    }
    // --repo x, -r x: the next word is the option's value; --repo=x and -rx hold it.
    const option = known.find((o) => o.long === arg || o.short === arg);
    if (option && (option.required || option.optional) && !arg.includes('=')) i++;
  }
  return words;
}

function withSubcommands(command: Command): Command[] {
  return [command, ...command.commands.flatMap(withSubcommands)];
}

/** `lifeboat key add`: the words that run a command, for hints. */
function commandLine(command: Command): string {
  return command.parent ? `${commandLine(command.parent)} ${command.name()}` : command.name();
}

/**
 * What commander finds wrong with the command line (an unknown option, a missing argument or
 * required option, an unknown command, a command that needs a subcommand) becomes a usage error
 * like any other, so that it is rendered as one (`lifeboat: …`, a hint, the JSON error document
 * with --json). --help and --version end with exit 0 as commander ends them.
 */
function asUsageError(command: Command, heldHelp: (show: boolean) => void): (err: CommanderError) => never {
  return (err) => {
    if (err.exitCode === 0) throw err;
    const help = `see ${commandLine(command)} --help`;
    // `lifeboat help bogus`: commander shows the program's help for a command it does not know.
    const [word, unknown] = command.args;
    const helpOfUnknown = err.code === 'commander.help' && word === 'help' && unknown !== undefined;
    heldHelp(!helpOfUnknown);
    if (helpOfUnknown) throw new UsageError(`unknown command '${unknown}'`, { cause: err, hint: help });
    // `lifeboat key` without a subcommand: commander has just printed the help, to stderr.
    if (err.code === 'commander.help') {
      const names = command.commands.map((c) => c.name());
      const which = names.length > 1 ? `${names.slice(0, -1).join(', ')} or ${names.at(-1)}` : names.join('');
      throw new UsageError(command.parent ? `${command.name()} needs a command: ${which}` : 'no command given', { cause: err, hint: help });
    }
    // "error: unknown option '--bogus'\n(Did you mean --all?)"
    const [problem = err.message, ...suggestion] = err.message.replace(/^error: /, '').split('\n');
    const didYouMean = suggestion.join(' ').replace(/^\((.*)\)$/, '$1').replace(/^Did/, 'did');
    throw new UsageError(problem, { cause: err, hint: didYouMean ? `${didYouMean} ${help}` : [excessHint(command, err), help].filter(Boolean).join('; ') });
  };
}

/**
 * `failover prod latest`, `restore latest /srv/restore`: a target or directory given as a second
 * word, as other tools take it, is named by an option here.
 */
function excessHint(command: Command, err: CommanderError): string {
  if (err.code !== 'commander.excessArguments') return '';
  const named = (['--to', '--target'] as const).find((flag) => command.options.some((o) => o.long === flag));
  if (!named) return '';
  return `the ${named === '--to' ? 'target' : 'directory to restore into'} is given with ${named}: ${commandLine(command)} POINT ${named} ${named === '--to' ? 'TARGET' : 'DIR'}`;
}

/**
 * `restore latest --target --force`: commander takes the word after an option that needs a value as
 * that value, whatever it is, and the restore went to a directory named `--force`, without the
 * --force meant. A value that is itself an option of the command is refused; `--target=--force`
 * still gives it as the value.
 */
function refuseOptionAsValue(command: Command, argv: readonly string[]): void {
  const known = optionsOf(command);
  const names = new Set(known.flatMap((o) => [o.long, o.short]).filter((n) => n !== undefined));
  const end = argv.indexOf('--');
  const args = argv.slice(2, end === -1 ? undefined : end);
  for (let i = 0; i < args.length - 1; i++) {
    const option = known.find((o) => o.long === args[i] || o.short === args[i]);
    // An option whose value is optional does not take a word starting with a dash; commander leaves it alone too.
    if (!option?.required) continue;
    const given = args[i]!;
    const next = args[++i]!;
    if (names.has(next)) {
      throw new UsageError(`${given} needs a value, and ${next} after it is an option`, { hint: `give ${given} its value, or write ${option.long ?? given}=${next} if that is the value meant` });
    }
  }
}

/** Whether a flag is on the command line before any `--`: what commander could not parse is known from there alone. */
function givenOnCommandLine(argv: readonly string[], flag: string, value?: string): boolean {
  const end = argv.indexOf('--');
  const args = argv.slice(2, end === -1 ? undefined : end);
  if (value === undefined) return args.includes(flag);
  return args.some((a, i) => a === `${flag}=${value}` || (a === flag && args[i + 1] === value));
}

/** Runs the CLI and returns the exit code (the only place failures become codes). */
export async function runCli(argv: string[], io: CliIo, signal: AbortSignal): Promise<number> {
  const state: RunState = { printed: false };
  const program = buildProgram(io, signal, state);
  program.hook('preAction', (_program, command) => refuseOptionAsValue(command, argv));
  try {
    await program.parseAsync(argv);
    if (state.document !== undefined) io.stdout.write(documentText(state.document));
    return ExitCode.ok;
  } catch (caught) {
    // --help and --version: shown; every other complaint of commander's arrives as a UsageError.
    if (caught instanceof CommanderError) return ExitCode.ok;
    const err = asLimitReached(caught);
    // A failure while the run is being interrupted is an interruption, whatever error it surfaced as.
    const code = failureExitCode(caught, signal);
    const ctx = state.ctx;
    // Before a command runs (commander refused the command line), its context does not exist yet.
    const json = ctx ? ctx.json : givenOnCommandLine(argv, '--json');
    const logFormat = ctx ? ctx.logFormat : givenOnCommandLine(argv, '--log-format', 'json') ? 'json' : 'text';
    if (json && !state.printed) io.stdout.write(documentText(failureDocument(err, code, state.document)));
    if (logFormat === 'json') {
      io.stderr.write(jsonLogLine('error', errorMessage(err), { exitCode: code, ...(err instanceof LifeboatError && err.hint ? { hint: err.hint } : {}) }));
      return code;
    }
    const color = ctx ? paint(ctx, 'stderr') : new Chalk({ level: colorFor(io.stderr, io.env, !givenOnCommandLine(argv, '--no-color')) ? 1 : 0 });
    // A message may name a file of the repository or of a source: the failure stays one line, its hint the next.
    const hint = err instanceof LifeboatError && err.hint ? `\n  ${escapeUnprintable(err.hint)}` : '';
    io.stderr.write(`${color.red('lifeboat:')} ${escapeUnprintable(errorMessage(err))}${hint}\n`);
    if (ctx?.debug && err instanceof Error && err.stack) io.stderr.write(`${err.stack}\n`);
    else if (!(err instanceof LifeboatError) && !ctx?.quiet) io.stderr.write('  (an unexpected error: run again with --debug for details)\n');
    return code;
  }
}

/** A line on stderr from the entry point itself: a signal received, results that could not be written. */
type Say = (level: 'warning' | 'error', message: string, fields?: Record<string, unknown>) => void;

type OutputFailures = Partial<Record<'stdout' | 'stderr', NodeJS.ErrnoException>>;

/** Write failures that only mean nobody reads any more: the reader closed the pipe (`lifeboat list | head`), the terminal is gone (after a SIGHUP). */
const READER_GONE = new Set(['EPIPE', 'EIO']);

/**
 * The exit code once the writes to stdout and stderr are known: a reader that went away changes
 * nothing, as for any command-line tool; any other failure (a full disk, a descriptor not open for
 * writing) means the results or the messages were lost, which fails a run that had succeeded with
 * exit 1. A lost stdout is said in one sentence on stderr, unless that failed too.
 */
function afterFailedWrites(failed: OutputFailures, code: number, say: Say): number {
  const lost = (['stdout', 'stderr'] as const).filter((name) => failed[name] && !READER_GONE.has(failed[name]!.code ?? ''));
  if (lost.length === 0) return code;
  const err = failed.stdout;
  const exitCode = code === ExitCode.ok ? ExitCode.runtime : code;
  if (lost.includes('stdout') && !failed.stderr && err) {
    // "ENOSPC: no space left on device, write" → "no space left on device (ENOSPC)"
    const reason = err.message.replace(/^[A-Z]+: /, '').replace(/, write$/, '');
    say('error', `could not write to standard output: ${reason}${err.code && !reason.includes(err.code) ? ` (${err.code})` : ''}`, { exitCode });
  }
  return exitCode;
}

/** The process entry: signals become an abort, the exit code is set, never process.exit(). */
/**
 * `handOver`: called once this has its own signal listeners; it removes the executable's and
 * returns the signals that came while the executable was still loading this, in order.
 */
export async function main(argv: string[], handOver: () => readonly string[] = () => []): Promise<void> {
  const controller = new AbortController();
  // What is said here, outside any command, is a log line like the others: one JSON object with --log-format json.
  const jsonLogs = givenOnCommandLine(argv, '--log-format', 'json');
  const say: Say = (level, message, fields) => process.stderr.write(jsonLogs ? jsonLogLine(level, message, fields) : `lifeboat: ${message}\n`);
  let signals = 0;
  const onSignal = (name: string) => {
    signals++;
    if (signals > 1) {
      const left = leftUndoneNow();
      say('error', `${name} again, stopping at once${left ? `: ${left}` : ''}`);
      process.exit(ExitCode.interrupted);
    }
    say('warning', `${name} received, stopping cleanly…`);
    controller.abort();
  };
  // A write to stdout or stderr that fails is reported by the stream, a moment later; the first of each is kept.
  const failedWrites: OutputFailures = {};
  for (const name of ['stdout', 'stderr'] as const) {
    process[name].on('error', (err: NodeJS.ErrnoException) => {
      failedWrites[name] ??= err;
    });
  }
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  // A terminal or SSH session that goes away mid-restore: stop as cleanly as on Ctrl-C, not at once.
  process.on('SIGHUP', () => onSignal('SIGHUP'));
  for (const name of handOver()) onSignal(name);
  const ran = await runCli(argv, { stdout: process.stdout, stderr: process.stderr, env: process.env, cwd: process.cwd() }, controller.signal);
  // The failure of the last write arrives on the next turn of the event loop.
  await new Promise((resolve) => setImmediate(resolve));
  const code = afterFailedWrites(failedWrites, ran, say);
  process.exitCode = code;
  // A signal in the moment between the end of the command and the end of the process (a supervisor
  // stopping it as it exits) changes nothing: its result is printed, and its own code stands.
  for (const name of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.removeAllListeners(name);
    process.on(name, () => process.exit(code));
  }
}
