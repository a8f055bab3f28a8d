import type { Writable } from 'node:stream';
import { loadConfig, type LifeboatConfig } from '../config/config.js';
import { InterruptedError, UsageError, throwIfAborted } from '../errors.js';
import { Repository } from '../core/repository.js';
import { checkDeploymentName } from '../format/paths.js';
import { unlockStorage } from '../core/keys.js';
import { passwordSource } from './password.js';
import { openStorage, type S3Settings } from '../storage/open.js';
import type { Storage } from '../storage/storage.js';
import { storageReporter } from './output.js';
import { nonEmpty } from './flags.js';

/** Everything a command needs from its environment, injectable for tests. */
export interface CliContext {
  cwd: string;
  env: NodeJS.ProcessEnv;
  stdout: Writable;
  stderr: Writable;
  /** stderr is a terminal that can redraw a line: a spinner is allowed there. */
  interactive: boolean;
  /** Whether each stream may have colour (a terminal, and nothing such as NO_COLOR says not). */
  color: { stdout: boolean; stderr: boolean };
  json: boolean;
  quiet: boolean;
  debug: boolean;
  signal: AbortSignal;
  global: GlobalOptions;
  /** `json`: every log line on stderr is one JSON object, for log shippers. */
  logFormat?: 'text' | 'json';
  /**
   * With --json, takes the command's document instead of printing it: the entry point prints it
   * when the command has ended, with ok false and the error if it failed after all (a backup whose
   * postBackup hook fails), so that stdout holds one document that agrees with the exit code.
   */
  keepDocument?: (document: unknown) => void;
}

export interface GlobalOptions {
  config?: string;
  repo?: string;
  deployment?: string;
  json?: boolean;
  quiet?: boolean;
  color?: boolean;
  debug?: boolean;
  s3Endpoint?: string;
  s3PathStyle?: boolean;
  logFormat?: string;
  /** File holding the password of an encrypted repository. */
  passwordFile?: string;
}

export async function contextConfig(ctx: CliContext): Promise<LifeboatConfig> {
  return (await loadConfig({ explicit: ctx.global.config, cwd: ctx.cwd, env: ctx.env })).config;
}

/** flags > environment > config file. */
export function repositoryUrl(ctx: CliContext, config: LifeboatConfig): string {
  const url = ctx.global.repo ?? ctx.env.LIFEBOAT_REPO ?? config.repository;
  if (!url) {
    throw new UsageError('no repository given', { hint: 'pass --repo URL, set LIFEBOAT_REPO, or set repository: in lifeboat.yaml' });
  }
  return url;
}

/** flags > environment > config file; undefined when none names one. */
export function deploymentName(ctx: CliContext, config: LifeboatConfig): string | undefined {
  const fromEnvironment = ctx.global.deployment === undefined && !!ctx.env.LIFEBOAT_DEPLOYMENT;
  const name = ctx.global.deployment ?? (ctx.env.LIFEBOAT_DEPLOYMENT || undefined) ?? config.deployment;
  try {
    if (name !== undefined) checkDeploymentName(name);
  } catch (err) {
    // A variable set by a cron line or a profile is seen nowhere in the command: the message says where the name came from.
    if (fromEnvironment && err instanceof UsageError) throw new UsageError(err.message, { hint: 'it comes from LIFEBOAT_DEPLOYMENT in the environment' });
    throw err;
  }
  return name;
}

export function s3Settings(ctx: CliContext, config: LifeboatConfig): S3Settings {
  const s3: S3Settings = { ...(config.s3 ?? {}) };
  // Empty (a script's unset variable), it would fall back to AWS itself, under the same bucket name.
  if (ctx.global.s3Endpoint !== undefined) {
    s3.endpoint = nonEmpty('--s3-endpoint', ctx.global.s3Endpoint, 'the URL of an S3 endpoint');
    s3.endpointFrom = '--s3-endpoint';
  }
  if (ctx.global.s3PathStyle) s3.forcePathStyle = true;
  return s3;
}

/**
 * Opens the configured storage. A Ctrl-C that came before (while the config was read, or Node started
 * on a loaded host) stops here: a request begun after an interruption is let run to its end, as a
 * clean-up's is, and against a server that does not answer that is s3.timeout.
 */
export async function openContextStorage(ctx: CliContext, config: LifeboatConfig): Promise<Storage> {
  throwIfAborted(ctx.signal);
  const storage = await openStorage(repositoryUrl(ctx, config), { cwd: ctx.cwd, s3: s3Settings(ctx, config), env: ctx.env, reporter: storageReporter(ctx), interrupt: ctx.signal });
  if (ctx.signal.aborted) {
    await storage.close();
    throw new InterruptedError();
  }
  return storage;
}

/** Opens the configured repository; the caller closes `storage` when done. */
export async function openRepository(ctx: CliContext): Promise<{ repo: Repository; config: LifeboatConfig; close: () => Promise<void> }> {
  const config = await contextConfig(ctx);
  let storage = await openContextStorage(ctx, config);
  try {
    // An encrypted repository is unlocked here; the core sees plaintext through the wrapper.
    storage = (await unlockStorage(storage, passwordSource(ctx))).storage;
    throwIfAborted(ctx.signal);
    const repo = await Repository.open(storage, { deployment: deploymentName(ctx, config) });
    return { repo, config, close: () => storage.close() };
  } catch (err) {
    await storage.close();
    throw err;
  }
}
