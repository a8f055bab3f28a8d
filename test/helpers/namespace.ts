import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { BIN } from './cli.js';

/**
 * File systems mounted for a test: a private mount namespace lends the test a
 * ramfs, or an /etc/passwd of its own, without touching the machine's mounts;
 * it vanishes with the last process in it. (Run as root, or where user
 * namespaces are allowed.)
 */
function namespaceCommand(): string[] | undefined {
  const candidates = process.getuid?.() === 0 ? [['unshare', '--mount', '--propagation', 'private'], ['unshare', '--map-root-user', '--mount']] : [['unshare', '--map-root-user', '--mount']];
  for (const prefix of candidates) {
    const probe = spawnSync(prefix[0]!, [...prefix.slice(1), 'true'], { stdio: 'ignore' });
    if (probe.status === 0) return prefix;
  }
  return undefined;
}

export const unshare = namespaceCommand();

function withoutLifeboatSettings(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([k]) => !k.startsWith('LIFEBOAT_')));
}

/** Runs a shell script in a new mount namespace (with BIN set); what it leaves on a ramfs must be copied out before it ends. */
export function inNamespace(script: string, env: Record<string, string>): void {
  const run = spawnSync(unshare![0]!, [...unshare!.slice(1), 'sh', '-c', `set -e\n${script}`], {
    env: { ...withoutLifeboatSettings(process.env), BIN, ...env },
    encoding: 'utf8',
    timeout: 120_000,
  });
  assert.equal(run.status, 0, `the run in a mount namespace failed (status ${run.status}):\n${run.stderr}`);
}

/**
 * Runs `lines` in a new mount namespace from `work` (as $WORK), where `out/` is made for what the
 * script writes down; returns a reader of those files.
 */
export async function runInNamespace(work: string, lines: readonly string[]): Promise<(name: string) => Promise<string>> {
  await fsp.mkdir(path.join(work, 'out'), { recursive: true });
  inNamespace(['cd "$WORK"', ...lines].join('\n'), { WORK: work });
  return (name) => fsp.readFile(path.join(work, 'out', name), 'utf8');
}
