import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { IntegrityError, errorMessage, throwIfAborted, workDirectoryFailure } from '../errors.js';
import type { Manifest } from '../format/manifest.js';
import { validateDirectory } from '../model/validate.js';
import type { Reporter } from './events.js';
import type { Repository } from './repository.js';
import { restore } from './restore.js';
import { refuseWorkDirInRepository } from './restore-target.js';
import { makeWorkDirectory } from '../format/mkdirs.js';
import { removeTree } from '../format/remove-tree.js';

export interface DeepProblem {
  point: string;
  path: string;
  kind: 'model-invalid' | 'restore-failed';
  detail: string;
}

export interface DeepOptions {
  /** Where the temporary restores go (default: the system's temporary directory). */
  tmpDir?: string;
  concurrency?: number;
  signal?: AbortSignal;
  reporter?: Reporter;
}

/**
 * verify --deep: restores each point, one at a time, into a temporary
 * directory (every file checked against its SHA-256 as it is written), runs
 * the model validators on what was restored, and removes it again.
 */
export async function deepCheck(repo: Repository, points: readonly Manifest[], options: DeepOptions = {}): Promise<DeepProblem[]> {
  const problems: DeepProblem[] = [];
  await refuseWorkDirInRepository(repo.storage.location, options.tmpDir, 'verify --deep');
  for (const m of points) {
    throwIfAborted(options.signal);
    const work = await makeWorkDirectory(options.tmpDir, 'lifeboat-deep-').catch((err: unknown) => {
      throw workDirectoryFailure(err, options.tmpDir, `restore ${m.id} into for its model checks`);
    });
    try {
      const target = path.join(work, m.id);
      try {
        // verify holds a reader's registration for what it checks: one per restored point would be a second, and
        // where none can be made (read-only credentials), a second warning that it could not.
        await restore(repo, m, { target, concurrency: options.concurrency, disposable: true, registered: true, signal: options.signal, reporter: options.reporter });
      } catch (err) {
        // Only damaged data is a problem of the point; no room in the work directory or a storage error ends the run with its own error.
        if (options.signal?.aborted || !(err instanceof IntegrityError)) throw err;
        problems.push({ point: m.id, path: '', kind: 'restore-failed', detail: errorMessage(err) });
        continue;
      }
      const { findings } = await validateDirectory(target, { signal: options.signal });
      for (const f of findings) problems.push({ point: m.id, path: f.path, kind: 'model-invalid', detail: `${f.format}: ${f.reason}` });
    } finally {
      await removeTree(work);
    }
  }
  return problems;
}
