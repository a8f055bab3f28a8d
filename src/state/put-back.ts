import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { ExitCode, LifeboatError } from '../errors.js';
import type { Manifest } from '../format/manifest.js';
import type { LifeboatConfig } from '../config/config.js';
import { DEFAULT_COMMAND_TIMEOUT_MS, commandTimeoutMs } from './capture.js';
import { COMMAND_OUTPUT_FILE, InterruptedAfterCommandEnded, restoreCommand } from './command.js';
import { restoreSqlite } from './sqlite.js';
import { quoteName } from '../format/quote.js';

/** Whether a point's copy of an empty SQLite database may replace a live one that holds something, and how else the command leaves state alone. */
export interface EmptyCopies {
  /** Put such a copy back all the same (--allow-empty-state). */
  allow?: boolean;
  /** How this command leaves the live state alone, for the hint (`--no-state`, `restore without --state`). */
  leaveAlone: string;
}

export interface PutBackOptions {
  /** What to do about a copy the backup found empty; refused where it would replace a live database that holds something. */
  emptyCopies: EmptyCopies;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** How long each command source's restore command may run, by source (default as long as a capture: 1h). */
  timeouts?: Record<string, number>;
  signal?: AbortSignal;
  /** Told what is done, as it is done. */
  note: (code: string, message: string) => void;
  /** Told each source put back, as it is (a failure later leaves those put back), and where a database's state from before was kept; a command source also when an interrupt came only once its restore command had ended well. */
  putBack?: (name: string, keptAs?: string) => void;
}

/**
 * Puts a point's serving state back where the point says it goes: each SQLite
 * source with `restore` is copied into that database with SQLite's online
 * backup (what it held is kept beside it), and each command source with
 * `restore` has its captured output fed to that command. `root` holds the
 * point's sources as a restore writes them (`<root>/<source>/…`). Returns the
 * sources it put back.
 */
export async function putStateBack(manifest: Manifest, root: string, options: PutBackOptions): Promise<string[]> {
  // Before any source is put back: a refusal must not come after half of them.
  await refuseEmptyCopies(manifest, options.emptyCopies);
  const done: string[] = [];
  for (const s of manifest.sources) {
    if (!s.restore) continue;
    let keptAs: string | undefined;
    if (s.kind === 'sqlite') {
      const copy = path.join(root, s.name, path.basename(s.path));
      options.note('state-restore', `restoring the SQLite database ${quoteName(s.restore)} from ${quoteName(copy)}`);
      const restored = await restoreSqlite(s.name, copy, s.restore, options.signal);
      keptAs = restored.keptAs;
      if (keptAs) options.note('state-kept', `the state ${quoteName(s.restore)} had before is kept as ${quoteName(keptAs)}`);
    } else if (s.kind === 'command') {
      options.note('state-restore', `restoring the state of ${s.name} with \`${s.restore}\``);
      await restoreCommand(s.name, s.restore, path.join(root, s.name, COMMAND_OUTPUT_FILE), {
        cwd: options.cwd,
        env: options.env,
        timeoutMs: options.timeouts?.[s.name] ?? DEFAULT_COMMAND_TIMEOUT_MS,
        signal: options.signal,
      }).catch((err: unknown) => {
        // Interrupted only once it had put its state in place: told as put back, so that what undoes the switch undoes it too.
        if (err instanceof InterruptedAfterCommandEnded) options.putBack?.(s.name);
        throw err;
      });
    } else {
      continue;
    }
    done.push(s.name);
    options.putBack?.(s.name, keptAs);
  }
  return done;
}

/**
 * Refuses to put back a SQLite copy that the backup recorded as empty (`sqlite-empty`: a path the
 * service never wrote to, a database truncated by accident) over a live database that holds
 * something: that would replace a live registry with nothing. Checked before anything is restored
 * or put back; `allow` puts it back all the same. A live database that is missing or of 0 bytes
 * loses nothing, and is let be.
 */
export async function refuseEmptyCopies(manifest: Manifest, empty: EmptyCopies): Promise<void> {
  if (empty.allow) return;
  const recorded = new Set(manifest.warnings.filter((w) => w.code === 'sqlite-empty' && w.path !== undefined).map((w) => w.path));
  for (const s of manifest.sources) {
    if (s.kind !== 'sqlite' || !s.restore || !recorded.has(s.name)) continue;
    const live = s.restore;
    if (!(await fsp.stat(live).then((st) => st.size > 0, () => false))) continue;
    // Exit 2 as a refusal lifted by a flag is, but not a UsageError: a failover still says what the target serves.
    throw new LifeboatError(`point ${manifest.id} holds an empty copy of the SQLite database of source ${s.name} (its backup warned sqlite-empty): putting it back would replace the live database ${quoteName(live)} with one that holds no data`, ExitCode.usage, {
      hint: `choose a point whose copy holds data (lifeboat show POINT lists a point's warnings), leave the live state alone (${empty.leaveAlone}), or put the empty copy back all the same with --allow-empty-state`,
    });
  }
}

/** The state sources of a point that putStateBack puts back. */
export function stateToPutBack(manifest: Manifest): string[] {
  return manifest.sources.filter((s) => s.restore && (s.kind === 'sqlite' || s.kind === 'command')).map((s) => s.name);
}

/**
 * How long the restore command of each command source may run: the `timeout` the config gives the
 * source, which limits its capture too. Putting a dump back takes about as long as taking it.
 */
export function restoreTimeouts(config: LifeboatConfig): Record<string, number> {
  const timeouts: Record<string, number> = {};
  for (const [name, src] of Object.entries(config.sources ?? {})) {
    if (typeof src === 'object' && 'command' in src && src.timeout !== undefined) timeouts[name] = commandTimeoutMs(src.timeout);
  }
  return timeouts;
}
