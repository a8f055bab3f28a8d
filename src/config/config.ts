import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import * as z from 'zod';
import { UsageError, errorMessage } from '../errors.js';
import { NAME, NAME_RULE } from '../format/paths.js';
import { excludePatternProblem } from '../core/scan.js';
import { ARCHIVE_STORAGE_CLASSES } from '../storage/storage.js';
import { durationExpected, type DurationRule } from './duration.js';
import { quoteName } from '../format/quote.js';
import { meantWord } from '../format/spelling.js';

/**
 * A duration; `positive` where zero makes no sense (a timeout, an interval, a lease). YAML reads
 * `timeout: 60` as a number: the message asks for the unit, not for a "string".
 */
const durationOf = (rule: DurationRule) =>
  z.preprocess(
    // A bare 0, which YAML reads as a number, needs no unit.
    (value) => (value === 0 ? '0' : value),
    z
      .string({
        error: (issue) =>
          typeof issue.input === 'number'
            ? `must be ${durationExpected('', rule)}, with its unit: ${issue.input} alone has none`
            : `must be ${durationExpected('', rule)}`,
      })
      .superRefine((text, ctx) => {
        const expected = durationExpected(text, rule);
        if (expected !== undefined) ctx.addIssue({ code: 'custom', message: `must be ${expected}` });
      }),
  );
/** A whole number from `min` (to `max`), said as the flags say it rather than in the schema library's words. */
const wholeNumber = (min: number, max?: number) => {
  const expected = `must be a whole number ${max === undefined ? `of at least ${min}` : `from ${min} to ${max}`}`;
  return z.number({ error: expected }).superRefine((n, ctx) => {
    if (!Number.isInteger(n) || n < min || (max !== undefined && n > max)) ctx.addIssue({ code: 'custom', message: expected });
    // Past this a number no longer counts one by one: YAML's 99999999999999999999 reads as 1e20.
    else if (!Number.isSafeInteger(n)) ctx.addIssue({ code: 'custom', message: `must be a whole number of at most ${Number.MAX_SAFE_INTEGER}` });
  });
};
const duration = durationOf({});
const positiveDuration = durationOf({ positive: true });

/**
 * A command the config names. An empty one would run nothing and pass: a
 * health check that checks nothing, a hook that does not drain the server.
 */
const commandLine = z.string().min(1, 'is empty: give a command, or leave the key out');

const SOURCE_KINDS = 'a directory, { path: DIR }, { sqlite: DATABASE } or { command: COMMAND }';
const sourcePath = (what: string) => z.string({ error: `must be ${what}` }).min(1, `is empty: give ${what}`);
const directorySource = sourcePath('a directory');
const pathSource = z.object({ path: directorySource }).strict();
const sqliteSource = z
  .object({
    sqlite: sourcePath('the SQLite database file'),
    // restore: a failover or rollback copies the point's state back into this database.
    restore: z.boolean({ error: 'must be true or false: true copies the state back into this database on a failover or rollback' }).optional(),
  })
  .strict();
const commandSource = z
  .object({
    command: z.string({ error: 'must be a command, whose output is the state' }).pipe(commandLine),
    restore: z.string({ error: 'must be a command, which gets the captured state on its stdin' }).pipe(commandLine).optional(),
    timeout: positiveDuration.optional(),
  })
  .strict();
type SourceEntry = string | z.infer<typeof pathSource> | z.infer<typeof sqliteSource> | z.infer<typeof commandSource>;

/** The kind of a source written as a map, told by its key. */
function sourceKind(value: object): typeof pathSource | typeof sqliteSource | typeof commandSource | undefined {
  if ('sqlite' in value) return sqliteSource;
  if ('command' in value) return commandSource;
  if ('path' in value) return pathSource;
  return undefined;
}

/**
 * A source: its kind is told by its key (`sqlite`, `command`, `path`, or a
 * directory alone), and checked as that kind, so that a mistake is reported at
 * the key that has it rather than as a value that fits no kind.
 */
const sourceSchema = z.unknown().transform((value, ctx): SourceEntry => {
  let schema: z.ZodType<SourceEntry> = directorySource;
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const kind = sourceKind(value);
    if (kind) schema = kind;
    else {
      const keys = Object.keys(value);
      ctx.addIssue({ code: 'custom', message: `must be ${SOURCE_KINDS}${keys.length > 0 ? `, not a map of ${keys.map((k) => JSON.stringify(k)).join(', ')}` : ''}` });
      return z.NEVER;
    }
  } else if (value !== null && typeof value !== 'string') {
    ctx.addIssue({ code: 'custom', message: `must be ${SOURCE_KINDS}` });
    return z.NEVER;
  }
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  for (const issue of result.error.issues) ctx.addIssue(issue as Parameters<typeof ctx.addIssue>[0]);
  return z.NEVER;
});

const healthSchema = z
  .object({
    url: z.string().url().refine((u) => /^https?:\/\//i.test(u), 'must be an http:// or https:// URL').optional(),
    command: commandLine.optional(),
    /** A command run against the new slot before the link is switched; failing it aborts the failover. */
    preActivate: commandLine.optional(),
    timeout: positiveDuration.optional(),
    interval: positiveDuration.optional(),
    retries: wholeNumber(0).optional(),
  })
  .strict()
  .refine((h) => h.url !== undefined || h.command !== undefined, 'needs a url or a command');

export const configSchema = z
  .object({
    repository: z.string().min(1).describe('where backups live: a directory, file:// or s3://bucket/prefix').optional(),
    deployment: z
      // YAML reads `deployment: 2024` as a number: the name it was meant to be is written in quotes.
      .string({ error: (issue) => (typeof issue.input === 'number' ? `is read as the number ${issue.input}: write the name in quotes (deployment: "${issue.input}")` : undefined) })
      .regex(NAME, `is not a deployment name: ${NAME_RULE}`)
      .optional(),
    s3: z
      .object({
        endpoint: z.string().url().optional(),
        region: z.string().optional(),
        forcePathStyle: z.boolean().optional(),
        storageClass: z
          .string()
          .refine(
            (c) => !ARCHIVE_STORAGE_CLASSES.has(c.toUpperCase()),
            'is an archive class: its objects cannot be read until a retrieval request finishes, hours later, so a restore could not start; use a class read at once (STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER_IR)',
          )
          .optional(),
        sse: z.string().optional(),
        kmsKeyId: z.string().optional(),
        concurrency: wholeNumber(1, 64).optional(),
        timeout: positiveDuration.describe('how long a request waits for the server to begin its answer (default 20s)').optional(),
        idleTimeout: positiveDuration.describe('how long a connection may go with nothing moving on it (default 60s)').optional(),
      })
      .strict()
      .optional(),
    sources: z.record(z.string().regex(NAME, `source names ${NAME_RULE}`), sourceSchema).optional(),
    exclude: z
      .array(
        z.string().superRefine((pattern, ctx) => {
          const refused = excludePatternProblem(pattern);
          if (refused) ctx.addIssue({ code: 'custom', message: `${pattern}: ${refused.problem}`, params: { hint: refused.hint } });
        }),
      )
      .optional(),
    hooks: z
      .object({ preBackup: commandLine.optional(), postBackup: commandLine.optional(), timeout: positiveDuration.optional() })
      .strict()
      .optional(),
    retention: z
      .object({ keepFull: wholeNumber(1).optional(), keepDiff: wholeNumber(0).optional(), keepWithin: duration.optional() })
      .strict()
      .optional(),
    targets: z
      .record(
        z.string(),
        z
          .object({
            slots: z.string(),
            active: z.string(),
            health: healthSchema.optional(),
            activate: commandLine.optional(),
            deactivate: commandLine.optional(),
            hookTimeout: positiveDuration.describe('how long activate and deactivate may run (default 5m)').optional(),
            keepSlots: wholeNumber(2).optional(),
          })
          .strict(),
      )
      .optional(),
    notify: z.object({ url: z.string().url(), on: z.array(z.enum(['failure', 'warning', 'success'])).optional() }).strict().optional(),
    lock: z
      .object({
        staleAfter: positiveDuration.describe('a lock whose lease was not refreshed for this long is stale and taken over (default 30m)').optional(),
        retry: duration.describe('how long backup and prune wait for a lock another live process holds (default: not at all), and restore, verify, drill and failover for a running prune (default 30m)').optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

export type LifeboatConfig = z.infer<typeof configSchema>;

export interface LoadedConfig {
  config: LifeboatConfig;
  /** The file it came from; undefined when none was found (the default file is optional). */
  file?: string;
}

async function mayEnter(dir: string): Promise<boolean> {
  return fsp.access(dir, fs.constants.X_OK).then(() => true, () => false);
}

/**
 * Finds and validates the config: `--config`, else LIFEBOAT_CONFIG, else
 * `lifeboat.yaml` in the working directory if present (and where this user
 * may enter that directory). Relative paths inside
 * it are resolved against the file's directory.
 */
export async function loadConfig(options: { explicit?: string; cwd: string; env: NodeJS.ProcessEnv }): Promise<LoadedConfig> {
  if (options.explicit === '') throw new UsageError('--config "": expected the path of a file');
  // Set to the empty string (a unit's `Environment=LIFEBOAT_CONFIG=`), the variable counts as unset, as LIFEBOAT_REPO does:
  // read as a path, it named the working directory.
  const fromEnv = options.env.LIFEBOAT_CONFIG === '' ? undefined : options.env.LIFEBOAT_CONFIG;
  const named = options.explicit ?? fromEnv;
  const file = path.resolve(options.cwd, named ?? 'lifeboat.yaml');
  let bytes: Buffer;
  try {
    const read = await readConfigFile(file);
    bytes = read.bytes;
    if (read.pipe && bytes.length === 0) throw new UsageError(`config file ${quoteName(file)} is a named pipe and nothing was written to it`, { hint: 'name the config file itself' });
  } catch (err) {
    if (err instanceof UsageError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && named === undefined) return { config: {} };
    // A working directory this user may not enter (`sudo -u svc lifeboat …` run from /root) holds no config for it.
    if (code === 'EACCES' && named === undefined && !(await mayEnter(options.cwd))) return { config: {} };
    const by = options.explicit !== undefined ? '--config' : named !== undefined ? 'LIFEBOAT_CONFIG' : undefined;
    if (code === 'ENOENT') throw new UsageError(`config file ${quoteName(file)} does not exist`, { hint: `check the path ${by} gives` });
    if (code === 'EISDIR') throw new UsageError(`config file ${quoteName(file)} is a directory`, { hint: by ? `${by} names the file itself (…/lifeboat.yaml)` : 'move it aside, or name the config with --config FILE' });
    throw new UsageError(`cannot read config file ${quoteName(file)}: ${(err as Error).message}`);
  }
  let text: string;
  try {
    // Read leniently, bytes that are not UTF-8 (a file saved as Latin-1) became U+FFFD inside a path or a
    // command, which then named a directory that is not there, or ran something else.
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new UsageError(`${quoteName(file)}: is not UTF-8 text`, { hint: 'save it as UTF-8 (iconv -f latin1 -t utf-8)' });
  }
  return { config: await parseConfig(text, file), file };
}

const MiB = 1024 * 1024;
const CONFIG_LIMIT = MiB;

/**
 * The config's bytes. The file is opened without waiting: a named pipe that nothing writes to
 * blocked the open for ever, and no signal could stop it (the open waits in a worker thread that
 * the process then waits for). A pipe is read until its writer closes it (`--config <(…)`).
 */
async function readConfigFile(file: string): Promise<{ bytes: Buffer; pipe: boolean }> {
  const handle = await fsp.open(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  // A config is a few KiB: a larger one (a log named by mistake, /dev/zero) is refused before it is read into memory.
  const tooLarge = () => new UsageError(`config file ${quoteName(file)} holds more than ${CONFIG_LIMIT / MiB} MiB; a lifeboat config is a few KiB`, { hint: 'check which file --config or LIFEBOAT_CONFIG names' });
  try {
    const st = await handle.stat();
    if (st.isFile()) {
      if (st.size > CONFIG_LIMIT) throw tooLarge();
      return { bytes: await handle.readFile(), pipe: false };
    }
    // A pipe (`--config <(…)`) or a device, read to its end, as far as the limit.
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const buffer = Buffer.alloc(64 * 1024);
      try {
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
        if (bytesRead === 0) return { bytes: Buffer.concat(chunks), pipe: st.isFIFO() };
        total += bytesRead;
        if (total > CONFIG_LIMIT) throw tooLarge();
        chunks.push(buffer.subarray(0, bytesRead));
      } catch (err) {
        // The writer has the pipe open but has not written yet.
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
  } finally {
    await handle.close();
  }
}

/** The parser recurses once per level: a file nested thousands deep overflows the stack, which says nothing to an operator. */
function tooDeep(file: string, cause: unknown): UsageError {
  return new UsageError(`${quoteName(file)}: invalid YAML: nested too deeply to be a lifeboat config`, { cause, hint: 'a lifeboat config is a few levels deep: check which file --config or LIFEBOAT_CONFIG names' });
}

/** The line (from 1) of an offset of the text; one past its end (an unclosed quote) is its last line. */
const lineAt = (text: string, offset: number) => text.slice(0, Math.min(offset, text.trimEnd().length)).split('\n').length;

/** The stack's own words, whether the parser threw them or reported them among its errors. */
const isStackOverflow = (message: string) => /call stack/i.test(message);

export async function parseConfig(text: string, file: string): Promise<LifeboatConfig> {
  // Most runs have no config file; the YAML parser is loaded only for those that do. It is a
  // CommonJS package: bundled, its exports arrive as the default export only.
  const yaml: typeof import('yaml') & { default?: typeof import('yaml') } = await import('yaml');
  const { parseDocument } = yaml.default ?? yaml;
  let doc: ReturnType<typeof parseDocument>;
  try {
    // Merge keys (`<<: *base`) are YAML 1.1's, not 1.2's; a config reusing one target's settings for
    // another writes them as docker-compose files do, and was refused as an unknown key `<<`.
    doc = parseDocument(text, { prettyErrors: false, merge: true });
  } catch (err) {
    if (err instanceof RangeError && isStackOverflow(err.message)) throw tooDeep(file, err);
    throw err;
  }
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    if (e.code === 'RESOURCE_EXHAUSTION' && isStackOverflow(e.message)) throw tooDeep(file, e);
    // The parser gives an error's offset in the text; its line (`linePos`) only when it words the error itself, which it is not asked to.
    throw new UsageError(`${quoteName(file)}:${lineAt(text, e.pos[0])}: invalid YAML: ${e.message.split('\n')[0]}`);
  }
  // A tag the parser does not know (`!!js/function`, `!env`, `!include`) was dropped, its value taken as
  // plain text: a config written for another tool's loader would run with a meaning it never had.
  const unknownTag = doc.warnings.find((w) => w.code === 'TAG_RESOLVE_FAILED');
  if (unknownTag) {
    throw new UsageError(`${quoteName(file)}:${lineAt(text, unknownTag.pos[0])}: invalid YAML: ${unknownTag.message.split('\n')[0]}`, { hint: 'lifeboat reads plain YAML: remove the tag and write the value itself' });
  }
  let raw: unknown;
  try {
    raw = doc.toJS() ?? {};
  } catch (err) {
    if (err instanceof RangeError && isStackOverflow(err.message)) throw tooDeep(file, err);
    // What the parser refuses only once it builds the data (an alias bomb: anchors nested so that
    // their expansion would take all memory) is a config error like any other.
    throw new UsageError(`${quoteName(file)}: invalid YAML: ${errorMessage(err).split('\n')[0]}`, { cause: err });
  }
  // `__proto__` as the name of a source or a target was dropped by the schema without a word: the
  // source was not backed up, the target not known.
  for (const section of ['sources', 'targets'] as const) {
    const entries = raw !== null && typeof raw === 'object' ? (raw as Record<string, unknown>)[section] : undefined;
    if (entries !== null && typeof entries === 'object' && Object.hasOwn(entries, '__proto__')) {
      throw new UsageError(`${quoteName(file)}: ${section}.__proto__: cannot be a name: give it another one`);
    }
  }
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const issues = result.error.issues;
    const at = (i: (typeof issues)[number]) => i.path.map(String).join('.');
    /** The keys the map at `map`'s path is missing: its wrong types one level below it. */
    const missingUnder = (map: (typeof issues)[number]) => issues.filter((m) => m.code === 'invalid_type' && m.path.length === map.path.length + 1 && at(m).startsWith(at(map)));
    // A key written with other capitals (`Slots:`) is the unknown key it is, named as written, rather than the key it meant, "missing".
    const misspelt = issues.find((i) => i.code === 'unrecognized_keys' && missingUnder(i).length > 0);
    const issue = misspelt ?? issues[0]!;
    const key = at(issue) || '(top level)';
    let message = issue.message;
    if (issue.code === 'unrecognized_keys') message = `unknown key ${issue.keys.map((k) => JSON.stringify(k)).join(', ')}`;
    if (misspelt) {
      const missing = missingUnder(issue).map((m) => String(m.path.at(-1)));
      const capitals = issue.code === 'unrecognized_keys' && issue.keys.some((k) => missing.some((m) => m.toLowerCase() === k.toLowerCase()));
      message += `; missing: ${missing.join(', ')}${capitals ? ' (keys are case-sensitive)' : ''}`;
    }
    // A key a record refuses (a source's name) is said with the rule it broke, not as an invalid key alone.
    if (issue.code === 'invalid_key' && issue.issues[0]) message = issue.issues[0].message;
    // A key with nothing after it (`retention:` whose lines were all commented out) is YAML's null.
    const given = issue.path.reduce<unknown>((v, k) => (v !== null && typeof v === 'object' ? (v as Record<PropertyKey, unknown>)[k] : undefined), raw);
    if (issue.code === 'invalid_type' && given === null) message = 'is empty: give its value, or leave the key out';
    // A key its map needs, left out (a target without its active link): read as "undefined", it was "not the undefined undefined".
    else if (issue.code === 'invalid_type' && given === undefined && issue.path.length > 1) message = `is missing: ${issue.path.slice(0, -1).map(String).join('.')} needs it`;
    // The schema library's own words ("Invalid input: expected string, received number") said as the config's.
    else if (issue.code === 'invalid_type' && message.startsWith('Invalid input')) message = `must be ${valueKind(issue.expected)}, not ${givenKind(given)}`;
    // An endpoint or a notification URL without its scheme (`127.0.0.1:9000`), and a word not among those a key takes.
    else if (issue.code === 'invalid_format' && issue.format === 'url') message = `must be a URL (http://… or https://…), not ${JSON.stringify(given)}`;
    else if (issue.code === 'invalid_value' && message.startsWith('Invalid option')) message = `must be ${orList(issue.values.map(String))}, not ${JSON.stringify(given)}`;
    // A check of lifeboat's own may say what to write instead; an unknown key, the keys its map takes.
    let hint = issue.code === 'custom' && typeof issue.params?.hint === 'string' ? issue.params.hint : undefined;
    if (issue.code === 'unrecognized_keys') hint = knownKeysHint(issue.keys[0]!, issue.path, given);
    throw new UsageError(`${quoteName(file)}: ${key}: ${message}`, { hint });
  }
  const config = result.data;
  const base = path.dirname(file);
  const resolve = (p: string) => resolveConfigPath(base, p);
  if (config.repository && !/^[a-z][a-z0-9+.-]*:\/\//i.test(config.repository)) config.repository = resolve(config.repository);
  if (config.sources) {
    for (const [name, src] of Object.entries(config.sources)) {
      if (typeof src === 'string') config.sources[name] = resolve(src);
      else if ('path' in src) src.path = resolve(src.path);
      else if ('sqlite' in src) src.sqlite = resolve(src.sqlite);
    }
  }
  // Each target owns its slots directory: the switch record, the lock and the slot pruning there
  // know only that target's link, so a second target sharing it would have its served slot removed.
  const owners = new Map<string, string>();
  for (const [name, target] of Object.entries(config.targets ?? {})) {
    target.slots = resolve(target.slots);
    target.active = resolve(target.active);
    for (const [key, dir] of [['slots', target.slots], ['active', target.active]] as const) {
      const other = owners.get(dir);
      if (other !== undefined) {
        throw new UsageError(`${quoteName(file)}: targets.${name}.${key}: ${quoteName(dir)} is also ${other}; each target needs a slots directory and an active link of its own`, {
          hint: `give targets.${name} its own ${key} (a failover of one target would remove or switch what the other serves)`,
        });
      }
      owners.set(dir, `targets.${name}.${key}`);
    }
  }
  return config;
}

/** The parts of a schema's definition that say which keys a map of the config takes. */
interface SchemaNode {
  _zod: { def: { type: string; innerType?: SchemaNode; shape?: Record<string, SchemaNode>; valueType?: SchemaNode } };
}

/** The keys the config's map at `at` (`given`) takes: those of its kind for a source, else those the schema lists. */
function keysAt(at: readonly PropertyKey[], given: unknown): string[] | undefined {
  if (at.length === 2 && at[0] === 'sources' && given !== null && typeof given === 'object') {
    const kind = sourceKind(given);
    return kind && Object.keys(kind.shape);
  }
  let node: SchemaNode | undefined = configSchema as unknown as SchemaNode;
  for (let i = 0; node !== undefined; ) {
    const def: SchemaNode['_zod']['def'] = node._zod.def;
    if (def.type === 'optional') node = def.innerType;
    else if (def.type === 'object' && def.shape) {
      if (i === at.length) return Object.keys(def.shape);
      node = def.shape[String(at[i++])];
    } else if (def.type === 'record' && i < at.length) {
      i++;
      node = def.valueType;
    } else return undefined;
  }
  return undefined;
}

/** What a key the config does not know was meant to be (`retension`, `keep_full`), and which keys its map takes. */
function knownKeysHint(key: string, at: readonly PropertyKey[], given: unknown): string | undefined {
  const known = keysAt(at, given);
  if (!known) return undefined;
  const meant = meantWord(key, known);
  const takes = `the keys ${at.length === 0 ? 'at the top level' : `of ${at.map(String).join('.')}`} are ${andList(known)}`;
  return meant === undefined ? takes : `did you mean ${meant}? ${takes}`;
}

const KINDS: Record<string, string> = { string: 'text', array: 'a list', object: 'a map of keys', boolean: 'true or false', number: 'a number' };
const valueKind = (expected: string) => KINDS[expected] ?? expected;
/** `a, b or c`; `a, b and c`. */
const wordList = (words: readonly string[], last: string) => (words.length > 1 ? `${words.slice(0, -1).join(', ')} ${last} ${words.at(-1)}` : (words[0] ?? ''));
const orList = (words: readonly string[]) => wordList(words, 'or');
const andList = (words: readonly string[]) => wordList(words, 'and');
/** What YAML made of the value given: `!!binary` gives bytes, `[a]` a list, `5` a number. */
function givenKind(given: unknown): string {
  if (given instanceof Uint8Array) return 'binary data (a !!binary tag)';
  if (Array.isArray(given)) return 'a list';
  if (typeof given === 'string') return `the text ${JSON.stringify(given)}`;
  if (typeof given === 'object' && given !== null) return 'a map of keys';
  return `${typeof given === 'boolean' ? '' : `the ${typeof given} `}${String(given)}`;
}

/**
 * A path of the config file: relative to the file's directory, and `~` or
 * `~/…` under the home directory, as a shell would have expanded it on the
 * command line (YAML does not).
 */
export function resolveConfigPath(base: string, p: string): string {
  if (p === '~' || p.startsWith('~/')) return path.join(os.homedir(), p.slice(1));
  return path.resolve(base, p);
}
