import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

/**
 * Whether `dir` is where a file system, or a bind mount, is mounted. Nothing
 * can be renamed onto or off such a directory (EBUSY, EXDEV), so work meant to
 * be renamed into it has to be staged inside it.
 */
export async function isMountPoint(dir: string): Promise<boolean> {
  const real = await fsp.realpath(dir);
  const parent = path.dirname(real);
  if (parent === real) return true;
  const [own, above] = await Promise.all([fsp.stat(real), fsp.stat(parent)]);
  if (own.dev !== above.dev) return true;
  // A bind mount of the same file system keeps its device number; Linux lists every mount in mountinfo.
  return (await mountPoints()).includes(real);
}

/** Where file systems are mounted below `dir` (not at it), from /proc/self/mountinfo; none where there is no such file. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const real = await fsp.realpath(dir);
  const prefix = real.endsWith('/') ? real : `${real}/`;
  return (await mountPoints()).filter((m) => m.startsWith(prefix));
}

async function mountPoints(): Promise<string[]> {
  const mountinfo = await fsp.readFile('/proc/self/mountinfo', 'utf8').catch(() => undefined);
  if (mountinfo === undefined) return [];
  return mountinfo.split('\n').flatMap((line) => {
    const field = line.split(' ')[4];
    return field === undefined ? [] : [unescapeOctal(field)];
  });
}

/** mountinfo writes space, tab, newline and backslash in a path as \ooo. */
function unescapeOctal(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}
