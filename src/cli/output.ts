import chalk, { Chalk, type ChalkInstance } from 'chalk';
import type { Ora } from 'ora';
import type { Notice, Progress, Reporter } from '../core/events.js';
import type { CliContext } from './context.js';
import { escapeUnprintable, formatBytes, quoteName } from './format.js';
import { formatDuration } from '../config/duration.js';
import { LifeboatError, errorMessage } from '../errors.js';

const PLAIN_PROGRESS_EVERY_MS = 5000;

export function paint(ctx: CliContext, stream: 'stdout' | 'stderr'): ChalkInstance {
  return ctx.color[stream] ? new Chalk({ level: chalk.level || 1 }) : new Chalk({ level: 0 });
}

/**
 * The result of a command: JSON document or text, always on stdout. --quiet leaves out the text
 * that reports a task done (a backup taken, a point restored), so that a cron job that succeeded
 * mails nothing; `shownWhenQuiet` marks what the command was run to show (a listing, a diff, what
 * a dry run would do, the problems a verify found), which --quiet keeps, as restic's does.
 */
/** A run's warnings as every --json document gives them: code, path (when there is one) and message. */
export function warningsJson(notices: readonly Notice[]): { code: string; path?: string; message: string }[] {
  return notices.map(({ code, path, message }) => ({ code, path, message }));
}

export function printResult(ctx: CliContext, json: unknown, text: () => string, options: { shownWhenQuiet?: boolean } = {}): void {
  if (ctx.json) {
    if (ctx.keepDocument) ctx.keepDocument(json);
    else ctx.stdout.write(documentText(json));
  } else if (!ctx.quiet || options.shownWhenQuiet) {
    const t = text();
    if (t) ctx.stdout.write(`${t}\n`);
  }
}

export function documentText(document: unknown): string {
  return `${JSON.stringify(document, null, 2)}\n`;
}

/**
 * The document of a command that failed: ok false and the error, after what the command's own
 * document says it did before it failed (the point a backup took before its postBackup hook
 * failed, the problems verify found). A list has no room for them: the error stands alone.
 */
export function failureDocument(err: unknown, exitCode: number, before?: unknown): Record<string, unknown> {
  const hint = err instanceof LifeboatError && err.hint ? { hint: err.hint } : {};
  const done = before !== null && typeof before === 'object' && !Array.isArray(before) ? before : {};
  return { ...done, ok: false, error: { message: errorMessage(err), exitCode, ...hint } };
}

/** One log line as JSON (`--log-format json`): time, level, msg, and any fields. */
export function jsonLogLine(level: 'info' | 'warning' | 'error', message: string, fields: Record<string, unknown> = {}): string {
  return `${JSON.stringify({ time: new Date().toISOString(), level, msg: message, ...fields })}\n`;
}

/**
 * A log line on stderr; timestamped when nobody is watching a terminal. What it quotes (a line a hook
 * printed, a path) has its control characters escaped, as a smoke test's output is, so that it stays
 * one line and cannot redraw the terminal or fake a line of its own.
 */
export function log(ctx: CliContext, message: string): void {
  if (ctx.quiet) return;
  if (ctx.logFormat === 'json') {
    ctx.stderr.write(jsonLogLine('info', message));
    return;
  }
  const prefix = ctx.interactive ? '' : `${new Date().toISOString()} `;
  ctx.stderr.write(`${prefix}${escapeUnprintable(message)}\n`);
}

export function logNotice(ctx: CliContext, n: Notice): void {
  if (ctx.logFormat === 'json') {
    if (n.level === 'warning' || !ctx.quiet) ctx.stderr.write(jsonLogLine(n.level, n.message, { code: n.code, ...(n.path ? { path: n.path } : {}) }));
    return;
  }
  const c = paint(ctx, 'stderr');
  const where = n.path ? `${quoteName(n.path)}: ` : '';
  // A message may name files too: none may add lines of its own.
  const message = escapeUnprintable(n.message);
  if (n.level === 'warning') {
    const prefix = ctx.interactive ? '' : `${new Date().toISOString()} `;
    ctx.stderr.write(`${prefix}${c.yellow('warning:')} ${where}${message}\n`);
  } else log(ctx, `${where}${message}`);
}

/** The renderer of each command that shows progress, while it does: notices from below the core go through it, so they do not tear its spinner. */
const renderers = new WeakMap<CliContext, ProgressRenderer>();

/** Where the storage reports what it does on its own, such as a request tried again: the command's progress renderer, or stderr. */
export function storageReporter(ctx: CliContext): Reporter {
  return {
    notice: (n) => {
      const renderer = renderers.get(ctx);
      if (renderer) renderer.notice(n);
      else logNotice(ctx, n);
    },
  };
}

/**
 * Renders core progress: an ora spinner with bytes, MiB/s and ETA on a
 * terminal, a plain line every few seconds otherwise, nothing with --quiet.
 */
export class ProgressRenderer implements Reporter {
  private spinner?: Ora;
  private stopped = false;
  private readonly started: number;
  private lastPlain = 0;
  private last?: Progress;
  /**
   * When the current phase sent its first progress, and its bytes then: its rate and ETA count from
   * there, not from the start of the command (a verify --read-data may check manifests for minutes first).
   */
  private phase = { started: 0, bytes: 0 };

  constructor(
    private readonly ctx: CliContext,
    private readonly label: string,
    private readonly now: () => number = Date.now,
  ) {
    this.started = now();
    renderers.set(ctx, this);
    if (ctx.interactive && !ctx.quiet) {
      // ora (and its terminal-width tables) is loaded only when there is a terminal to spin on. It is not
      // let put the terminal in raw mode to swallow what is typed: Ctrl-C would no longer interrupt.
      void import('ora').then(({ default: ora }) => {
        if (this.stopped) return;
        this.spinner = ora({ text: this.last ? this.describe(this.last) : label, stream: ctx.stderr as NodeJS.WriteStream, color: ctx.color.stderr ? 'cyan' : false, isEnabled: true, discardStdin: false }).start();
      });
    }
  }

  progress(p: Progress): void {
    if (this.last?.phase !== p.phase) this.phase = { started: this.now(), bytes: p.bytesDone };
    this.last = p;
    if (this.ctx.quiet) return;
    if (this.spinner) {
      this.spinner.text = this.describe(p);
      return;
    }
    const now = this.now();
    if (now - this.lastPlain >= PLAIN_PROGRESS_EVERY_MS) {
      if (this.lastPlain !== 0 || now - this.started >= PLAIN_PROGRESS_EVERY_MS) log(this.ctx, this.describe(p));
      this.lastPlain = now;
    }
  }

  notice(n: Notice): void {
    if (this.ctx.quiet && n.level !== 'warning') return;
    if (this.spinner) {
      this.spinner.clear();
      logNotice(this.ctx, n);
      this.spinner.render();
    } else logNotice(this.ctx, n);
  }

  private describe(p: Progress): string {
    const elapsed = (this.now() - this.phase.started) / 1000;
    if (p.phase === 'scan') return `${this.label}: scanning, ${p.filesDone} entries, ${formatBytes(p.bytesDone)}`;
    const rate = elapsed > 0 ? (p.bytesDone - this.phase.bytes) / elapsed : 0;
    const parts = [p.phase === 'compare' ? `${this.label}: checking what is already there,` : `${this.label}:`];
    if (p.bytesTotal > 0) {
      parts.push(`${formatBytes(p.bytesDone)} / ${formatBytes(p.bytesTotal)} (${Math.floor((100 * p.bytesDone) / p.bytesTotal)}%)`);
    } else parts.push(formatBytes(p.bytesDone));
    parts.push(`${p.filesDone}${p.filesTotal ? `/${p.filesTotal}` : ''} files`);
    parts.push(`${(rate / (1 << 20)).toFixed(1)} MiB/s`);
    if (rate > 0 && p.bytesTotal > p.bytesDone) parts.push(`ETA ${formatDuration(((p.bytesTotal - p.bytesDone) / rate) * 1000)}`);
    if (p.current && this.spinner) {
      // The file being read or written, named as a listing names it: no name may redraw the terminal.
      const current = quoteName(p.current);
      parts.push(current.length > 60 ? `…${current.slice(-59)}` : current);
    }
    return parts.join('  ');
  }

  stop(): void {
    if (renderers.get(this.ctx) === this) renderers.delete(this.ctx);
    this.stopped = true;
    this.spinner?.stop();
    this.spinner = undefined;
  }
}
