import * as path from 'node:path';
import { UsageError } from '../errors.js';
import { parseDuration } from '../config/duration.js';
import type { LifeboatConfig } from '../config/config.js';
import type { HealthSpec } from './health.js';
import { restoreTimeouts } from '../state/put-back.js';

/** A failover target, its paths absolute and its durations in milliseconds. */
export interface TargetSpec {
  name: string;
  /** One directory per restored point. */
  slots: string;
  /** The link the server reads, switched atomically. */
  active: string;
  health?: HealthSpec;
  activate?: string;
  deactivate?: string;
  /** How long activate and deactivate may run (`hookTimeout`; default DEFAULT_HOOK_TIMEOUT_MS). */
  hookTimeoutMs?: number;
  /** Slots kept; older ones are removed, never the active or the previous one. */
  keepSlots?: number;
  /** Where hooks and checks run. */
  cwd: string;
  env?: NodeJS.ProcessEnv;
  /** How long each command source's restore command may run, by source: its timeout in the config. */
  stateTimeouts?: Record<string, number>;
}

type TargetConfig = NonNullable<LifeboatConfig['targets']>[string];

const ms = (d: string | undefined) => (d === undefined ? undefined : parseDuration(d));

/** A target from the config; relative paths are taken from `base` (the config file's directory). */
export function targetFromConfig(name: string, t: TargetConfig, base: string, env?: NodeJS.ProcessEnv): TargetSpec {
  const h = t.health as (TargetConfig['health'] & { preActivate?: string }) | undefined;
  return {
    name,
    slots: path.resolve(base, t.slots),
    active: path.resolve(base, t.active),
    ...(h
      ? {
          health: {
            url: h.url,
            command: h.command,
            preActivate: h.preActivate,
            timeoutMs: ms(h.timeout),
            intervalMs: ms(h.interval),
            retries: h.retries,
          },
        }
      : {}),
    activate: t.activate,
    deactivate: t.deactivate,
    hookTimeoutMs: ms(t.hookTimeout),
    keepSlots: t.keepSlots,
    cwd: base,
    env,
  };
}

/** The target a command names, or the only one there is when it names none. */
export function chooseTarget(config: LifeboatConfig, name: string | undefined, base: string, env?: NodeJS.ProcessEnv): TargetSpec {
  const targets = config.targets ?? {};
  const names = Object.keys(targets);
  if (names.length === 0) {
    throw new UsageError('no targets are configured', { hint: 'add a targets: section to lifeboat.yaml (slots, active, health, activate)' });
  }
  if (name === undefined) {
    if (names.length === 1) return { ...targetFromConfig(names[0]!, targets[names[0]!]!, base, env), stateTimeouts: restoreTimeouts(config) };
    throw new UsageError(`name the target with --to (one of ${names.join(', ')})`);
  }
  const t = targets[name];
  if (!t) throw new UsageError(`there is no target ${JSON.stringify(name)} in the config (targets: ${names.join(', ')})`);
  return { ...targetFromConfig(name, t, base, env), stateTimeouts: restoreTimeouts(config) };
}
