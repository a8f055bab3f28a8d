import { errorMessage } from '../errors.js';
import { parseDuration } from '../config/duration.js';
import { runShell, type CommandOptions } from './command.js';

/** A hook that states no timeout gets this long. */
export const DEFAULT_HOOK_TIMEOUT_MS = 5 * 60 * 1000;

export interface BackupHooksConfig {
  preBackup?: string;
  postBackup?: string;
  timeout?: string;
}

export interface HookOptions extends Omit<CommandOptions, 'timeoutMs'> {
  timeoutMs?: number;
}

/** Runs one hook command; rejects (exit 1) when it fails or runs out of time. */
export async function runHook(name: string, command: string, options: HookOptions = {}): Promise<void> {
  await runShell(`${name} hook`, command, {
    ...options,
    timeoutMs: options.timeoutMs ?? DEFAULT_HOOK_TIMEOUT_MS,
    env: { ...(options.env ?? process.env), LIFEBOAT_HOOK: name },
  });
}

/**
 * The pre- and post-backup hooks around one backup. `before()` runs the
 * pre-hook; `after(outcome)` runs the post-hook exactly once, whatever
 * happened before it (a failed pre-hook or backup included), and tells the
 * hook the outcome through LIFEBOAT_BACKUP_OUTCOME and LIFEBOAT_POINT.
 */
export class BackupHooks {
  private postDone = false;
  private readonly timeoutMs: number;

  constructor(
    private readonly config: BackupHooksConfig | undefined,
    private readonly options: Omit<HookOptions, 'timeoutMs'> = {},
  ) {
    this.timeoutMs = (config?.timeout !== undefined ? parseDuration(config.timeout) : undefined) ?? DEFAULT_HOOK_TIMEOUT_MS;
  }

  async before(): Promise<void> {
    if (!this.config?.preBackup) return;
    await runHook('preBackup', this.config.preBackup, { ...this.options, timeoutMs: this.timeoutMs });
  }

  /**
   * Runs the post-hook. With `error` (the backup failed) a failing post-hook
   * is only reported through `onFailure`, never hiding the first error; after
   * a successful backup a failing post-hook rejects.
   */
  async after(outcome: { point?: string; error?: unknown }, onFailure?: (message: string) => void): Promise<void> {
    if (this.postDone || !this.config?.postBackup) return;
    this.postDone = true;
    const env = {
      ...(this.options.env ?? process.env),
      LIFEBOAT_BACKUP_OUTCOME: outcome.error === undefined ? 'ok' : 'failed',
      ...(outcome.point ? { LIFEBOAT_POINT: outcome.point } : {}),
    };
    try {
      await runHook('postBackup', this.config.postBackup, { ...this.options, env, signal: undefined, timeoutMs: this.timeoutMs });
    } catch (err) {
      if (outcome.error === undefined) throw err;
      onFailure?.(errorMessage(err));
    }
  }
}
