import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { SourceSpec } from '../core/scan.js';
import { leftWorkDirectory, type Notice } from '../core/events.js';
import { parseDuration } from '../config/duration.js';
import { captureCommand, COMMAND_OUTPUT_FILE, ELSEWHERE } from './command.js';
import { copySqlite } from './sqlite.js';
import { RuntimeFailure, errorMessage, fileSystemHint } from '../errors.js';
import { makeWorkDirectory } from '../format/mkdirs.js';
import { quoteName } from '../format/quote.js';

/** A command that runs without a stated timeout may run this long. */
export const DEFAULT_COMMAND_TIMEOUT_MS = 60 * 60 * 1000;

/** A serving-state source from the config, before it is captured. */
export type StateSource =
  | { name: string; kind: 'sqlite'; database: string }
  | { name: string; kind: 'command'; command: string; restore?: string; timeout?: string };

/** A source as the backup command resolves it: a tree, or serving state still to capture. */
export type PendingSource = SourceSpec | (SourceSpec & { state: StateSource });

export function isStateSource(s: PendingSource): s is SourceSpec & { state: StateSource } {
  return 'state' in s;
}

/** How long a command source's command may run, capturing or restoring: its `timeout`, else DEFAULT_COMMAND_TIMEOUT_MS. */
export function commandTimeoutMs(timeout: string | undefined): number {
  return (timeout !== undefined ? parseDuration(timeout) : undefined) ?? DEFAULT_COMMAND_TIMEOUT_MS;
}

/** The config entry `sources.<name>` when it is serving state, as a pending source. */
export function stateSource(name: string, src: { sqlite: string; restore?: boolean } | { command: string; restore?: string; timeout?: string }): PendingSource {
  if ('sqlite' in src) {
    // The point records where its copy goes back to: the database it was copied from.
    return { name, path: '', kind: 'sqlite', origin: src.sqlite, ...(src.restore ? { restore: src.sqlite } : {}), state: { name, kind: 'sqlite', database: src.sqlite } };
  }
  return {
    name,
    path: '',
    kind: 'command',
    origin: src.command,
    ...(src.restore ? { restore: src.restore } : {}),
    state: { name, kind: 'command', command: src.command, restore: src.restore, timeout: src.timeout },
  };
}

export interface CaptureOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  signal?: AbortSignal;
  /** Where the temporary directories go (default the system's). */
  tmpDir?: string;
  notice?: (n: Notice) => void;
  onOutput?: (line: string) => void;
}

export interface CapturedSources {
  /** Every source, state sources now materialised into directories. */
  sources: SourceSpec[];
  /** What the backup should report with its own warnings (already passed to `notice`). */
  warnings: Notice[];
  /** Removes the temporary directories; safe to call more than once. */
  cleanup(): Promise<void>;
}

/**
 * Materialises each serving-state source into its own temporary directory,
 * which the backup then captures like any tree: a SQLite source becomes
 * `<dir>/<database file name>` (an online copy), a command source
 * `<dir>/stdout` (its output, streamed to disk). The manifest records the kind,
 * the origin (database path or command line) and the restore command. A
 * failure removes whatever was made and fails the whole capture.
 */
export async function captureSources(sources: readonly PendingSource[], options: CaptureOptions = {}): Promise<CapturedSources> {
  const pending = sources.filter(isStateSource);
  if (pending.length === 0) return { sources: [...sources], warnings: [], cleanup: async () => undefined };
  const workDir = options.tmpDir ?? os.tmpdir();
  // A directory that cannot be made (the work directory's disk is full, or not writable) is said with where, and what to do.
  const cannotMake = (what: string, err: unknown) => {
    const hint = fileSystemHint(err, workDir);
    return new RuntimeFailure(`cannot make a directory to capture ${what} in, under ${quoteName(workDir)}: ${errorMessage(err)}`, { cause: err, hint: hint ? `${hint}; ${ELSEWHERE}` : 'give another one with --work-dir' });
  };
  const root = await makeWorkDirectory(options.tmpDir, 'lifeboat-state-', (dir) => options.notice?.(leftWorkDirectory(dir))).catch((err: unknown) => {
    throw cannotMake('serving state', err);
  });
  let cleaned = false;
  const cleanup = async () => {
    if (cleaned) return;
    cleaned = true;
    await fsp.rm(root, { recursive: true, force: true });
  };
  const warnings: Notice[] = [];
  try {
    const out: SourceSpec[] = [];
    for (const s of sources) {
      if (!isStateSource(s)) {
        out.push(s);
        continue;
      }
      const dir = path.join(root, s.name);
      await fsp.mkdir(dir, { mode: 0o700 }).catch((err: unknown) => {
        throw cannotMake(`source ${s.name}`, err);
      });
      const { state } = s;
      if (state.kind === 'sqlite') {
        const file = path.join(dir, path.basename(state.database));
        const copy = await copySqlite(s.name, state.database, file, {
          signal: options.signal,
          tell: (message) => options.notice?.({ level: 'info', code: 'state-waiting', path: s.name, message }),
          rollBackHotJournal: true,
          stagedIn: workDir,
          elsewhere: ELSEWHERE,
        });
        options.notice?.({ level: 'info', code: 'state-captured', path: s.name, message: `copied SQLite database ${quoteName(state.database)} online (${copy.pages} pages, ${copy.durationMs} ms)` });
        if (copy.empty) {
          // SQLite opens any empty file as an empty database: a path that names a file the service never wrote to,
          // or a database truncated by accident, would be backed up as nothing, and put back so by a failover.
          const warning: Notice = {
            level: 'warning',
            code: 'sqlite-empty',
            path: s.name,
            message: `the SQLite database ${quoteName(state.database)} is empty (${copy.pages === 0 ? 'a file of 0 bytes' : 'no tables'}), so its copy holds no data; check that sources.${s.name}.sqlite names the database the service writes`,
          };
          warnings.push(warning);
          options.notice?.(warning);
        }
      } else {
        const timeoutMs = commandTimeoutMs(state.timeout);
        const result = await captureCommand(s.name, state.command, path.join(dir, COMMAND_OUTPUT_FILE), {
          cwd: options.cwd,
          env: { ...(options.env ?? process.env), LIFEBOAT_SOURCE: s.name },
          timeoutMs,
          signal: options.signal,
          onOutput: options.onOutput,
          stagedIn: workDir,
        });
        options.notice?.({ level: 'info', code: 'state-captured', path: s.name, message: `captured ${result.bytes} bytes of output of \`${state.command}\` (${result.durationMs} ms)` });
      }
      const spec: SourceSpec = { name: s.name, path: dir, kind: state.kind, origin: s.origin };
      if (s.restore) spec.restore = s.restore;
      out.push(spec);
    }
    return { sources: out, warnings, cleanup };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
