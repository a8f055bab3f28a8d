import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

const OWNER_ALL = 0o700;

/**
 * Gives this user read, write and search rights on every directory it owns
 * under `root` (the owner's bits only), so that files there can be added,
 * replaced and removed. A restored tree keeps the modes it was backed up with,
 * and model stores are often made read-only (0555) against accidents: as any
 * user but root, nothing in such a directory can be renamed or removed.
 * Directories of other users are left as they are; what cannot be done there
 * then fails with its own error. `opening` is told of each directory (with
 * its mode) before it is opened, a directory before those in it.
 */
export async function openDirectories(root: string, opening?: (dir: string, mode: number) => void): Promise<void> {
  const st = await fsp.lstat(root).catch(() => undefined);
  if (!st?.isDirectory()) return;
  if ((st.mode & OWNER_ALL) !== OWNER_ALL && st.uid === process.geteuid?.()) {
    opening?.(root, st.mode & 0o7777);
    await fsp.chmod(root, (st.mode & 0o7777) | OWNER_ALL).catch(() => undefined);
  }
  const entries = await fsp.readdir(root, { withFileTypes: true }).catch(() => []);
  for (const d of entries) if (d.isDirectory()) await openDirectories(path.join(root, d.name), opening);
}

/** Whether open directories would let this user change what is in them (root's rights do not depend on modes). */
export const directoriesNeedOpening = (): boolean => process.geteuid?.() !== 0;

/**
 * `rm -rf` for a tree lifeboat restored or staged, which may hold read-only
 * directories: where removing is refused, the directories are opened
 * (openDirectories) and it tries once more.
 */
export async function removeTree(where: string): Promise<void> {
  try {
    await fsp.rm(where, { recursive: true, force: true });
    return;
  } catch (err) {
    if (!['EACCES', 'EPERM'].includes((err as NodeJS.ErrnoException).code ?? '')) throw err;
  }
  await openDirectories(where);
  await fsp.rm(where, { recursive: true, force: true });
}
