import { IntegrityError } from '../errors.js';
import { ArchivedObjectError } from '../storage/storage.js';
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
  // Retrieving an archived volume is the other way out: it comes first.
  const hint = err instanceof ArchivedObjectError ? `${err.hint}; or use another point: ${alternative}` : alternative;
  return new IntegrityError(err.message, { cause: err, hint, volume: err.volume });
}
