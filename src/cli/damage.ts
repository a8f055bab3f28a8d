import { IntegrityError } from '../errors.js';
import type { Repository } from '../core/repository.js';
import type { Manifest } from '../format/manifest.js';

/**
 * A restore that met a damaged or missing volume left nothing behind; at 3 a.m.
 * the next question is which point restores without it. The error gains a
 * hint that names the newest such point and the command that restores it.
 */
export async function withIntactAlternative(err: unknown, repo: Repository, point: Manifest, command: (id: string) => string): Promise<unknown> {
  if (!(err instanceof IntegrityError) || err.volume === undefined) return err;
  const other = await repo.newestWithout(err.volume, point).catch(() => undefined);
  const alternative = other
    ? `${other.id} (completed ${other.completedAt}) needs nothing of ${err.volume}: ${command(other.id)}`
    : `every other point of this deployment needs ${err.volume} too; \`lifeboat verify --read-data\` names all the damage`;
  // What the error itself advises (retrieving an archived volume) comes first.
  const hint = err.hint === undefined ? alternative : `${err.hint}; or restore another point: ${alternative}`;
  return new IntegrityError(err.message, { cause: err, hint, volume: err.volume });
}
