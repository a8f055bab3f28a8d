import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { UsageError } from '../errors.js';
import { quoteName } from '../format/quote.js';
import { notADirectoryOnTheWay } from '../format/mkdirs.js';
import { durationExpected, parseDuration, type DurationRule } from '../config/duration.js';

/*
 * Flag values a command cannot use are refused before it does anything (exit 2), naming the flag
 * and what it takes, instead of being read as the default or as no flag at all.
 */

/**
 * A flag's value as an error shows it: an empty one (a script's unset variable) as "", not as nothing,
 * and one that a listing would quote (a trailing space, a control character) quoted as it would be.
 */
export const shownValue = (value: string): string => (value === '' ? '""' : quoteName(value));

/** The error for a flag value that cannot be used. */
const refused = (flag: string, value: string, expected: string) => new UsageError(`${flag} ${shownValue(value)}: expected ${expected}`);

/*
 * Numbers are read as decimal digits alone: Number() would also take `0x10` (16), `1e3`, ` 5 ` and
 * `` (0), and a typo or an unset variable would become a number nobody wrote.
 */

/** A whole number of at least `min` (and at most `max`). */
export function count(flag: string, value: string, min: number, max?: number): number {
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!(n >= min && (max === undefined || n <= max))) throw refused(flag, value, `a whole number ${max === undefined ? `of at least ${min}` : `from ${min} to ${max}`}`);
  // Past this a number no longer counts one by one (the config refuses it too): 99999999999999999999 would read as 1e20.
  if (!Number.isSafeInteger(n)) throw refused(flag, value, `a whole number of at most ${Number.MAX_SAFE_INTEGER}`);
  return n;
}

/** A percentage above 0 and at most 100 (`5`, `12.5`, `5%`); undefined when the flag is not given. */
export function percentFlag(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = /^\d+(\.\d+)?%?$/.test(value) ? Number(value.replace(/%$/, '')) : NaN;
  if (!(n > 0 && n <= 100)) throw refused(flag, value, 'a percentage above 0 and at most 100, such as 5 or 12.5');
  return n;
}

/** A duration in milliseconds (undefined when the flag is not given). */
export function durationFlag(flag: string, value: string | undefined, rule: DurationRule = {}): number | undefined {
  if (value === undefined) return undefined;
  const expected = durationExpected(value, rule);
  if (expected !== undefined) throw refused(flag, value, expected);
  return parseDuration(value)!;
}

/** A value that must say something: `--smoke ''` would otherwise read as no smoke test at all. */
export function nonEmpty(flag: string, value: string | undefined, what: string): string | undefined {
  if (value === '') throw new UsageError(`${flag} "": expected ${what}`);
  return value;
}

/**
 * A path a command creates or writes, refused when it holds U+FFFD: a path given with bytes that are
 * not UTF-8 reaches lifeboat with U+FFFD in their place (process.argv, and the environment, are
 * decoded so), and would be made under that other name. One that holds U+FFFD itself cannot be told
 * from it, and is refused too.
 */
export function utf8Path<T extends string | undefined>(flag: string, value: T): T {
  if (value?.includes('\uFFFD')) {
    throw new UsageError(`${flag} ${shownValue(value)}: the path is not valid UTF-8 (lifeboat receives U+FFFD in place of the bytes that are not, and would make a file or directory of another name)`, {
      hint: 'use a UTF-8 name',
    });
  }
  return value;
}

/** The file or directory a flag names, resolved from the working directory. */
export function pathFlag(cwd: string, flag: string, value: string | undefined, what: 'a file' | 'a directory'): string | undefined {
  const given = utf8Path(flag, nonEmpty(flag, value, `the path of ${what}`));
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
  if (blocker !== undefined) throw new UsageError(`${flag} ${shownValue(value!)}: ${quoteName(blocker)} is not a directory`, { hint: 'give a directory, or a path where one can be made' });
  return dir;
}

/**
 * The file a report is written to after the command ran (--junit, --metrics-file): a path that
 * cannot be a file (a file where one of its directories must be, a directory) is refused here, before
 * the command does anything, instead of after a drill or a backup of an hour; a directory that is
 * missing is made when the report is written.
 */
export async function reportFileFlag(cwd: string, flag: string, value: string | undefined, example: string): Promise<string | undefined> {
  const file = pathFlag(cwd, flag, value, 'a file');
  if (file === undefined) return undefined;
  const blocker = await notADirectoryOnTheWay(path.dirname(file));
  if (blocker !== undefined) throw new UsageError(`${flag} ${shownValue(value!)}: ${quoteName(blocker)} is not a directory`, { hint: 'give a file in a directory, or where one can be made' });
  if ((await fsp.stat(file).catch(() => undefined))?.isDirectory()) throw new UsageError(`${flag} ${shownValue(value!)} is a directory`, { hint: `give the file a name, such as ${quoteName(path.join(value!, example))}` });
  return file;
}
