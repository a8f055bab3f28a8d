import * as path from 'node:path';
import type { Manifest } from '../format/manifest.js';
import type { LifeboatConfig } from '../config/config.js';
import { DEFAULT_COMMAND_TIMEOUT_MS, commandTimeoutMs } from './capture.js';
import { COMMAND_OUTPUT_FILE, restoreCommand } from './command.js';
import { restoreSqlite } from './sqlite.js';

export interface PutBackOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** How long each command source's restore command may run, by source (default as long as a capture: 1h). */
  timeouts?: Record<string, number>;
  signal?: AbortSignal;
  /** Told what is done, as it is done. */
  note: (code: string, message: string) => void;
  /** Told each source put back, as it is (a failure later leaves those put back). */
  putBack?: (name: string) => void;
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
  const done: string[] = [];
  for (const s of manifest.sources) {
    if (!s.restore) continue;
    if (s.kind === 'sqlite') {
      const copy = path.join(root, s.name, path.basename(s.path));
      options.note('state-restore', `restoring the SQLite database ${s.restore} from ${copy}`);
      const restored = await restoreSqlite(s.name, copy, s.restore, options.signal);
      if (restored.keptAs) options.note('state-kept', `the state ${s.restore} had before is kept as ${restored.keptAs}`);
    } else if (s.kind === 'command') {
      options.note('state-restore', `restoring the state of ${s.name} with \`${s.restore}\``);
      await restoreCommand(s.name, s.restore, path.join(root, s.name, COMMAND_OUTPUT_FILE), {
        cwd: options.cwd,
        env: options.env,
        timeoutMs: options.timeouts?.[s.name] ?? DEFAULT_COMMAND_TIMEOUT_MS,
        signal: options.signal,
      });
    } else {
      continue;
    }
    done.push(s.name);
    options.putBack?.(s.name);
  }
  return done;
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
