import * as path from 'node:path';
import { UsageError } from '../errors.js';
import { notADirectoryOnTheWay } from '../format/mkdirs.js';
import { durationExpected, parseDuration, type DurationRule } from '../config/duration.js';

/*
 * Flag values a command cannot use are refused before it does anything (exit 2), naming the flag
 * and what it takes, instead of being read as the default or as no flag at all.
 */

/** A whole number of at least `min`. */
export function count(flag: string, value: string, min: number): number {
  if (!/^\d+$/.test(value) || Number(value) < min) throw new UsageError(`${flag} ${value}: expected a whole number of at least ${min}`);
  return Number(value);
}

/** A duration in milliseconds (undefined when the flag is not given). */
export function durationFlag(flag: string, value: string | undefined, rule: DurationRule = {}): number | undefined {
  if (value === undefined) return undefined;
  const expected = durationExpected(value, rule);
  if (expected !== undefined) throw new UsageError(`${flag} ${value}: expected ${expected}`);
  return parseDuration(value)!;
}

/** A value that must say something: `--smoke ''` would otherwise read as no smoke test at all. */
export function nonEmpty(flag: string, value: string | undefined, what: string): string | undefined {
  if (value === '') throw new UsageError(`${flag} "": expected ${what}`);
  return value;
}

/** The file or directory a flag names, resolved from the working directory. */
export function pathFlag(cwd: string, flag: string, value: string | undefined, what: 'a file' | 'a directory'): string | undefined {
  const given = nonEmpty(flag, value, `the path of ${what}`);
  return given === undefined ? undefined : path.resolve(cwd, given);
}

/**
 * A directory a flag names, made if need be (--work-dir): a file, or a link to one, where it or one
 * of its parents must be a directory is refused here, instead of failing deep in the command as an
 * unexpected error.
 */
export async function directoryFlag(cwd: string, flag: string, value: string | undefined): Promise<string | undefined> {
  const dir = pathFlag(cwd, flag, value, 'a directory');
  const blocker = dir === undefined ? undefined : await notADirectoryOnTheWay(dir);
  if (blocker !== undefined) throw new UsageError(`${flag} ${value}: ${blocker} is not a directory`, { hint: 'give a directory, or a path where one can be made' });
  return dir;
}
