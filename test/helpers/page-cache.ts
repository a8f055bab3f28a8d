import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';

export const hasFincore = spawnSync('fincore', ['--version'], { stdio: 'ignore' }).status === 0;

/** Bytes of `file` in the page cache, as fincore (util-linux) counts them. */
export function resident(file: string): number {
  const r = spawnSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return Number(r.stdout.trim());
}

/**
 * Drops `file` from the page cache (written back first: dirty pages stay), so
 * that whether a command reads it shows in resident() afterwards.
 */
export function evict(file: string): void {
  execFileSync('sync', [file]);
  execFileSync('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
  assert.equal(resident(file), 0, `${file} left the page cache`);
}
