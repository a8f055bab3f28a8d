/**
 * Fuzzing the command line and the config: against a small real repository with a few points, and
 * an encrypted one, seeded random argument vectors run the CLI (in this process, and one run in
 * ten as a real child process): every command and subcommand the program registers, random
 * subsets of their flags, values drawn from valid ones and near-valid ones (empty, whitespace,
 * unicode, very long, negative, huge, NaN, `--`, a flag as a value, repeated flags, malformed point
 * selectors), random mutations of a valid lifeboat.yaml and LIFEBOAT_* variables with odd values.
 * Every run must end with a code of DESIGN.md's table, say what failed in a sentence without a
 * stack trace or a leaked `undefined`, print one JSON document with --json, write nothing outside
 * the repositories and the places it was told to write, and lose no point except to a prune; at
 * the end both repositories pass `verify --read-data`.
 * LIFEBOAT_TEST_SEED replays a run; LIFEBOAT_TEST_STEPS sets how many command lines are run.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { it } from 'node:test';
import type { Command, Option } from 'commander';
import { parse as parseYaml } from 'yaml';
import { buildProgram, runCli } from '../src/cli/main.js';
import { runChild, type CliRun } from './helpers/cli.js';
import { prng, seedFromEnv, tempDir, writeRandomFile } from './helpers/tree.js';

const STEPS = Number(process.env.LIFEBOAT_TEST_STEPS) > 0 ? Number(process.env.LIFEBOAT_TEST_STEPS) : 180;
const PASSWORD = 'cli fuzz password';
/** A run still going after this long is stopped as Ctrl-C would; one that does not end then hangs. */
const RUN_LIMIT_MS = 60_000;
const EXIT_CODES = new Set([0, 1, 2, 3, 4, 5, 130]);

type Rand = () => number;
const pick = <T>(rand: Rand, items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
const chance = (rand: Rand, p: number) => rand() < p;

/** The commands as the program registers them: name path, options, arguments. */
interface CommandSpec {
  words: string[];
  options: Option[];
  args: { name: string; required: boolean; variadic: boolean }[];
}

function commandSpecs(): { global: Option[]; commands: CommandSpec[] } {
  const sink = new PassThrough();
  const program = buildProgram({ stdout: sink, stderr: sink, env: {}, cwd: '/' }, new AbortController().signal, { printed: false });
  const commands: CommandSpec[] = [];
  const walk = (command: Command, words: string[]) => {
    for (const sub of command.commands) {
      if (sub.name() === 'help') continue;
      const w = [...words, sub.name()];
      if (sub.commands.length > 0) walk(sub, w);
      commands.push({ words: w, options: [...sub.options], args: sub.registeredArguments.map((a) => ({ name: a.name(), required: a.required, variadic: a.variadic })) });
    }
  };
  walk(program, []);
  return { global: [...program.options], commands };
}

/** Values that are nearly right: what scripts with unset variables, typos and pasted text give. */
const NEAR = [
  '',
  ' ',
  '\t',
  '\n',
  'é漢字🙂',
  '\uFFFD',
  'x'.repeat(5000),
  '-1',
  '-0',
  '0',
  '99999999999999999999',
  '1e3',
  '0x10',
  'NaN',
  'Infinity',
  'undefined',
  'null',
  '[object Object]',
  '--',
  '--json',
  '-q',
  '--help',
  '%s%n',
  '${HOME}',
  '\u202e',
  '\u0007',
];

interface World {
  root: string;
  repos: { plain: string; encrypted: string };
  passwords: Set<string>;
  /** Repositories a run of init made where the runs name one that is missing: from then on, repositories like the others. */
  made: string[];
}

function pointIds(repo: string): string[] {
  try {
    return fs
      .readdirSync(path.join(repo, 'points'))
      .filter((f) => f.endsWith('.json'))
      .map((f) => f.slice(0, -5))
      .sort();
  } catch {
    return [];
  }
}

function keyIds(repo: string): string[] {
  try {
    return fs.readdirSync(path.join(repo, 'keys')).map((f) => f.replace(/\.json$/, ''));
  } catch {
    return [];
  }
}

function selectors(rand: Rand, world: World): string[] {
  const ids = [...pointIds(world.repos.plain), ...pointIds(world.repos.encrypted)];
  const id = ids.length > 0 ? pick(rand, ids) : 'latest';
  return [
    id,
    id.slice(0, 8),
    id.slice(0, 1),
    'latest',
    new Date().toISOString(),
    '2000-01-01T00:00:00Z',
    '2999-01-01T00:00:00Z',
    // Malformed in the ways the grammar invites: a timestamp without its zone, a date alone, out-of-range fields,
    // a prefix with a typo, a relative selector of another tool, a path.
    '2026-11-20T03:00:00',
    '2026-11-20',
    '2026-13-45T99:00:00Z',
    '2026-02-30T00:00:00Z',
    '+275760-09-13T00:00:00Z',
    '-000001-01-01T00:00:00Z',
    `${id}x`,
    `${id} `,
    ` ${id}`,
    id.toUpperCase(),
    'LATEST',
    'lates',
    'latest~1',
    'HEAD',
    '../x',
    '/',
    '.',
    '*',
    pick(rand, NEAR),
  ];
}

/** Values for an option, from its placeholder (`<duration>`, `<n>`, …) and its name. */
function optionValues(rand: Rand, world: World, option: Option): string[] {
  const long = option.long ?? '';
  const placeholder = /<([^>]+)>/.exec(option.flags)?.[1] ?? '';
  const out = (name: string) => `out/${name}`;
  if (option.argChoices) return option.argChoices;
  switch (long) {
    case '--config':
      return ['lifeboat.yaml', './lifeboat.yaml', path.join(world.root, 'lifeboat.yaml'), 'missing.yaml', 'out', '/dev/null'];
    case '--repo':
      return [world.repos.plain, world.repos.encrypted, 'repo-plain', `file://${world.repos.plain}`, `file://${world.repos.encrypted}`, out('new-repo'), 'missing-repo', 'src/models', 's3://', 'file://', 'ftp://x/y'];
    case '--password-file':
      return ['secrets/password', 'secrets/wrong', 'secrets/empty', 'secrets/missing', 'secrets', '/dev/null'];
    case '--new-password-file':
      return ['secrets/new-password', 'secrets/empty', 'secrets/missing', 'secrets/password'];
    case '--deployment':
      return ['fraud', 'prod-1', 'a', 'A_b.c', '../up', '.hidden'];
    case '--to':
    case '--target':
      if (placeholder === 'target' || placeholder === 'name') return ['prod', 'Prod', 'other'];
      return [out('restore-a'), out('restore-b'), out('restore-c/deeper'), 'src/models', 'targets', 'lifeboat.yaml', out('file')];
    case '--s3-endpoint':
      return ['http://127.0.0.1:9', 'not a url', 'https://'];
    case '--notify-url':
      return ['http://127.0.0.1:9/hook', 'not a url', 'ftp://127.0.0.1/x', 'http://'];
    case '--smoke':
      return ['true', 'false', 'exit 3', 'test -d models'];
    case '--source':
      return ['models=src/models', 'serving=src/serving', 'models=src/missing', '=src/models', 'models=', 'models', 'a b=src/models', 'models=src/models=x'];
    case '--tag':
      return ['env=prod', 'k=v', '=v', 'k=', 'k', 'é=漢字'];
    case '--type':
      return ['full', 'diff', 'incr', 'FULL', 'differential'];
    case '--encryption':
      return ['aes-256-gcm', 'none', 'AES-256-GCM', 'rot13'];
    case '--kdf-log-n':
      return ['10', '11', '9', '21', '1'];
    case '--reason':
      return ['kept for the audit', 'é漢字🙂', '-x'];
  }
  switch (placeholder) {
    case 'duration':
      return ['90s', '15m', '2h', '14d', '0', '1h30m', '1ms', '90', '1y', '36501d', '1.5h', '-5m', 's'];
    case 'n':
      return ['0', '1', '2', '3', '5', '1.5', '-2'];
    case 'percent':
      return ['5', '12.5', '100', '50%', '0', '101', '0.0001'];
    case 'glob':
      return ['**/*.bin', 'tok/**', '*.json', 'models/**', '**', '/abs/**', '../x', '[', '!(x)'];
    case 'events':
      return ['failure', 'warning', 'success', 'failure,warning', 'sometimes', ','];
    case 'file':
    case 'path':
    case 'dir':
      return [out('report'), out('dir/report'), out('work'), 'lifeboat.yaml', out('file'), out('file/below')];
    case 'command':
      return ['true', 'false'];
    case 'text':
      return ['kept', ''];
    case 'shell':
      return ['bash', 'zsh', 'fish'];
  }
  return ['x', 'prod', '1'];
}

function valueFor(rand: Rand, world: World, option: Option): string {
  const valid = optionValues(rand, world, option);
  if (chance(rand, 0.85)) return pick(rand, valid);
  const base = pick(rand, valid);
  return pick(rand, [pick(rand, NEAR), `${base} `, ` ${base}`, `${base}${base}`, base.toUpperCase(), `${base}\u00a0`]);
}

function argumentValues(rand: Rand, world: World, command: CommandSpec, name: string): string[] {
  if (command.words[0] === 'completion') return ['bash', 'zsh', 'fish', ''];
  if (command.words[0] === 'key' && name === 'id') {
    const ids = [...keyIds(world.repos.encrypted)];
    return [...ids, ...ids.map((k) => k.slice(0, 4)), 'nokey', pick(rand, NEAR)];
  }
  if (command.words[0] === 'backup') return ['src/models', 'src/serving', 'src/missing', 'src/models/config.json', 'src/models/', ''];
  return selectors(rand, world);
}

interface Generated {
  argv: string[];
  env: NodeJS.ProcessEnv;
  config: Buffer;
  /** What was done to the config, and whether no command that reads it may accept it. */
  configChange: string;
  configInvalid?: string;
  command: CommandSpec;
}

/** A valid config: the plain or the encrypted repository, one source, a target with a health command. */
function baseConfig(rand: Rand, world: World): Record<string, unknown> {
  return {
    repository: chance(rand, 0.5) ? './repo-plain' : './repo-encrypted',
    sources: { models: './src/models' },
    exclude: ['**/*.tmp'],
    hooks: { preBackup: 'true', timeout: '30s' },
    retention: { keepFull: 2, keepDiff: 3, keepWithin: '0' },
    targets: {
      prod: { slots: './targets/prod/slots', active: './targets/prod/current', health: { command: 'true', timeout: '20s', retries: 0 }, keepSlots: 2 },
    },
    notify: { url: 'http://127.0.0.1:9/hook', on: ['failure'] },
    lock: { staleAfter: '30m' },
  };
}

/** Maps where a key the schema does not know is refused (sources and targets take any name). */
const STRICT_MAPS = new Set(['', 'hooks', 'retention', 'targets.prod', 'targets.prod.health', 'notify', 'lock']);

function leaves(value: unknown, at: string[] = []): string[][] {
  if (value === null || typeof value !== 'object') return [at];
  const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v] as const) : Object.entries(value);
  return [at, ...entries.flatMap(([k, v]) => leaves(v, [...at, k]))];
}

function deep(depth: number): unknown {
  let v: unknown = 'x';
  for (let i = 0; i < depth; i++) v = { [`k${i}`]: v };
  return v;
}

function mutateConfig(rand: Rand, config: Record<string, unknown>): { text: Buffer; change: string; invalid?: string } {
  const stringify = (c: unknown) => `${JSON.stringify(c, null, 2)}\n`; // JSON is YAML
  const roll = rand();
  if (roll < 0.6) return { text: Buffer.from(stringify(config)), change: 'none' };
  if (roll < 0.85) {
    const all = leaves(config).filter((p) => p.length > 0);
    const at = pick(rand, all);
    const parent = at.slice(0, -1).reduce<any>((o, k) => o[k], config);
    const key = at.at(-1)!;
    const old = parent[key];
    const kind = pick(rand, ['null', 'number', 'negative', 'huge-number', 'string', 'huge-string', 'unicode', 'list', 'map', 'deep', 'bool', 'empty', 'unknown-key', 'delete', 'case']);
    const scalar = old === null || typeof old !== 'object';
    let invalid: string | undefined;
    switch (kind) {
      case 'null':
        parent[key] = null;
        if (!Array.isArray(parent)) invalid = key;
        break;
      case 'number':
        parent[key] = 42;
        break;
      case 'negative':
        parent[key] = -1;
        break;
      case 'huge-number':
        parent[key] = 1e300;
        break;
      case 'string':
        parent[key] = 'forty-two';
        break;
      case 'huge-string':
        parent[key] = 'y'.repeat(200_000);
        break;
      case 'unicode':
        parent[key] = 'é漢字🙂\u202e\uFFFD';
        break;
      case 'list':
        parent[key] = [old, old];
        if (scalar && !Array.isArray(parent)) invalid = key;
        break;
      case 'map':
      case 'deep':
        parent[key] = kind === 'map' ? { value: old } : deep(200);
        if (scalar && !Array.isArray(parent) && !['sources', 'targets'].includes(at[0]!) ) invalid = key;
        break;
      case 'bool':
        parent[key] = true;
        break;
      case 'empty':
        parent[key] = '';
        break;
      case 'unknown-key': {
        const map = scalar ? at.slice(0, -1) : at;
        const target = map.reduce<any>((o, k) => o[k], config);
        if (target !== null && typeof target === 'object' && !Array.isArray(target)) {
          target.bogusKey = 1;
          if (STRICT_MAPS.has(map.join('.'))) invalid = 'bogusKey';
        }
        break;
      }
      case 'delete':
        if (Array.isArray(parent)) parent.splice(Number(key), 1);
        else delete parent[key];
        break;
      case 'case':
        if (!Array.isArray(parent)) {
          delete parent[key];
          parent[key.toUpperCase()] = old;
          if (STRICT_MAPS.has(at.slice(0, -1).join('.')) && key.toUpperCase() !== key) invalid = key.toUpperCase();
        }
        break;
    }
    return { text: Buffer.from(stringify(config)), change: `${kind} at ${at.join('.')}`, invalid };
  }
  // Mutations of the text itself.
  const yamlText = [
    `repository: ${config.repository}`,
    'sources:',
    '  models: ./src/models',
    'retention:',
    '  keepFull: 2',
    'targets:',
    '  prod:',
    '    slots: ./targets/prod/slots',
    '    active: ./targets/prod/current',
    '    health: { command: "true", timeout: 20s }',
    '',
  ].join('\n');
  const kind = pick(rand, ['bom', 'tabs', 'latin1', 'duplicate', 'anchor', 'alias-bomb', 'truncate', 'crlf', 'empty', 'document-end', 'top-list', 'huge-file', 'merge-key', 'tag', 'nul']);
  switch (kind) {
    case 'bom':
      return { text: Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(yamlText)]), change: kind };
    case 'tabs':
      return { text: Buffer.from(yamlText.replace(/^ {2}/gm, '\t')), change: kind };
    case 'latin1':
      return { text: Buffer.concat([Buffer.from(yamlText), Buffer.from('exclude: ["caf'), Buffer.from([0xe9]), Buffer.from('"]\n')]), change: kind };
    case 'duplicate':
      return { text: Buffer.from(`${yamlText}retention:\n  keepFull: 3\n`), change: kind };
    case 'anchor':
      return { text: Buffer.from(yamlText.replace('retention:\n  keepFull: 2', 'retention: &keep\n  keepFull: 2\nlock: *keep')), change: kind };
    case 'alias-bomb': {
      const lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]'];
      for (let i = 1; i < 12; i++) lines.push(`${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [*${String.fromCharCode(96 + i)},*${String.fromCharCode(96 + i)},*${String.fromCharCode(96 + i)},*${String.fromCharCode(96 + i)},*${String.fromCharCode(96 + i)},*${String.fromCharCode(96 + i)},*${String.fromCharCode(96 + i)},*${String.fromCharCode(96 + i)},*${String.fromCharCode(96 + i)}]`);
      return { text: Buffer.from(`${yamlText}${lines.join('\n')}\n`), change: kind };
    }
    case 'truncate':
      return { text: Buffer.from(yamlText.slice(0, Math.floor(rand() * yamlText.length))), change: kind };
    case 'crlf':
      return { text: Buffer.from(yamlText.replace(/\n/g, '\r\n')), change: kind };
    case 'empty':
      return { text: Buffer.alloc(0), change: kind };
    case 'document-end':
      return { text: Buffer.from(`${yamlText}---\nrepository: /elsewhere\n`), change: kind };
    case 'top-list':
      return { text: Buffer.from('- repository: ./repo-plain\n'), change: kind };
    case 'huge-file':
      return { text: Buffer.from(`${yamlText}# ${'z'.repeat(1_100_000)}\n`), change: kind };
    case 'merge-key':
      return { text: Buffer.from(yamlText.replace('retention:\n  keepFull: 2', 'base: &b { keepFull: 2 }\nretention:\n  <<: *b')), change: kind };
    case 'tag':
      return { text: Buffer.from(yamlText.replace('keepFull: 2', 'keepFull: !!str 2')), change: kind };
    default:
      return { text: Buffer.from(yamlText.replace('models: ./src/models', 'models: ./src/mo\u0000dels')), change: kind };
  }
}

/** How often each option of the program is given: those that make most runs fail at once less often. */
const GLOBAL_ODDS: Record<string, number> = { '--debug': 0.03, '--json': 0.5, '--quiet': 0.15, '--no-color': 0.1, '--log-format': 0.1, '--repo': 0.1 };

function generate(rand: Rand, world: World, specs: ReturnType<typeof commandSpecs>): Generated {
  const command = pick(rand, specs.commands);
  const flags: string[][] = [];
  const addOption = (option: Option) => {
    const name = option.long ?? option.short!;
    const spelled = option.short && chance(rand, 0.2) ? option.short : name;
    if (!option.required && !option.optional) {
      flags.push([spelled]);
      return;
    }
    const value = valueFor(rand, world, option);
    if (chance(rand, 0.15) && spelled.startsWith('--')) flags.push([`${spelled}=${value}`]);
    else flags.push([spelled, value]);
  };
  const own = command.options.filter((o) => o.long !== '--help');
  for (const option of own) if (chance(rand, 0.2)) addOption(option);
  if (chance(rand, 0.15) && own.length > 0) addOption(pick(rand, own)); // repeated
  const globals: string[][] = [];
  for (const option of specs.global.filter((o) => !['--help', '--version'].includes(o.long ?? ''))) {
    if (chance(rand, GLOBAL_ODDS[option.long ?? ''] ?? 0.05)) {
      const before = flags.length;
      addOption(option);
      globals.push(...flags.splice(before));
    }
  }
  const positional: string[] = [];
  for (const arg of command.args) {
    if (!arg.required && chance(rand, 0.4)) continue;
    if (arg.required && chance(rand, 0.05)) continue;
    const values = argumentValues(rand, world, command, arg.name);
    positional.push(chance(rand, 0.9) ? pick(rand, values) : pick(rand, NEAR));
    if (arg.variadic && chance(rand, 0.3)) positional.push(pick(rand, values));
  }
  if (chance(rand, 0.05)) positional.push(pick(rand, ['extra', '--bogus', '-Z']));
  // Global options before the command, or among its own.
  const tokens: string[] = [];
  const early = globals.filter(() => chance(rand, 0.7));
  for (const g of early) tokens.push(...g);
  tokens.push(...command.words);
  const rest = [...flags, ...globals.filter((g) => !early.includes(g)), ...positional.map((p) => [p])];
  for (let i = rest.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [rest[i], rest[j]] = [rest[j]!, rest[i]!];
  }
  for (const r of rest) tokens.push(...r);
  if (chance(rand, 0.04)) tokens.splice(command.words.length + Math.floor(rand() * (tokens.length - command.words.length + 1)), 0, '--');

  // The repository and its password from the environment, odd values now and then.
  // A password for the encrypted repository, which the plain one refuses.
  const config = baseConfig(rand, world);
  const encrypted = config.repository === './repo-encrypted';
  const env: NodeJS.ProcessEnv = chance(rand, encrypted ? 0.9 : 0.1) ? { LIFEBOAT_PASSWORD: pick(rand, [...world.passwords]) } : {};
  if (chance(rand, 0.2)) env.LIFEBOAT_REPO = pick(rand, [world.repos.plain, world.repos.encrypted, '', ' ', 'missing-repo', pick(rand, NEAR)]);
  if (chance(rand, 0.1)) env.LIFEBOAT_PASSWORD = pick(rand, ['', ' ', 'wrong', pick(rand, NEAR)]);
  if (chance(rand, 0.08)) env.LIFEBOAT_PASSWORD_FILE = pick(rand, ['secrets/password', 'secrets/missing', '', 'secrets']);
  if (chance(rand, 0.06)) env.LIFEBOAT_PASSWORD_COMMAND = pick(rand, [`printf '%s\\n' '${PASSWORD}'`, 'false', 'true', "printf ''", 'exit 7']);
  if (chance(rand, 0.08)) env.LIFEBOAT_CONFIG = pick(rand, ['lifeboat.yaml', '', 'missing.yaml', 'out', pick(rand, NEAR)]);
  if (chance(rand, 0.08)) env.LIFEBOAT_DEPLOYMENT = pick(rand, ['', 'fraud', '../x', pick(rand, NEAR)]);
  if (chance(rand, 0.15)) env.LIFEBOAT_NEW_PASSWORD = pick(rand, ['another password', '', ' ', pick(rand, NEAR)]);
  if (chance(rand, 0.1)) env.NO_COLOR = pick(rand, ['1', '', '0']);
  if (chance(rand, 0.05)) env.TERM = 'dumb';
  if (chance(rand, 0.05)) env.FORCE_COLOR = pick(rand, ['0', '3', 'yes']);
  if (chance(rand, 0.03)) env.LIFEBOAT_BOGUS = 'x';
  for (const [k, v] of Object.entries(env)) if (v?.includes('\u0000')) delete env[k];
  const mutated = mutateConfig(rand, config);
  return { argv: tokens.map((t) => t.replace(/\u0000/g, '')), env, config: mutated.text, configChange: mutated.change, configInvalid: mutated.invalid, command };
}

/** Every file and link of a tree, with what tells a change: type, size and modification time. */
async function snapshot(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (dir: string) => {
    for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
      const abs = path.join(dir, e.name);
      const st = await fsp.lstat(abs);
      if (e.isDirectory()) {
        out.set(abs, 'dir');
        await walk(abs);
      } else out.set(abs, `${e.isSymbolicLink() ? 'link' : 'file'}:${st.size}:${st.mtimeMs}`);
    }
  };
  await walk(root);
  return out;
}

/** The words of argv that commander reads as options of the program or the command (not as values, nor after `--`). */
function optionsGiven(argv: string[], specs: ReturnType<typeof commandSpecs>, command: CommandSpec): Set<string> {
  const known = [...specs.global, ...command.options];
  const given = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') break;
    const name = arg.includes('=') && arg.startsWith('--') ? arg.slice(0, arg.indexOf('=')) : arg;
    const option = known.find((o) => o.long === name || o.short === name);
    if (!option) continue;
    given.add(option.long ?? option.short!);
    if ((option.required || option.optional) && !arg.includes('=')) i++;
  }
  return given;
}

interface Outcome {
  run: CliRun;
  child: boolean;
  ms: number;
}

async function execute(world: World, g: Generated, child: boolean): Promise<Outcome> {
  const started = Date.now();
  if (child) {
    const run = await runChild(g.argv, { cwd: world.root, env: { ...g.env, TMPDIR: path.join(world.root, 'tmp') } });
    return { run, child, ms: Date.now() - started };
  }
  const out = new PassThrough();
  const err = new PassThrough();
  const chunks = { out: [] as Buffer[], err: [] as Buffer[] };
  out.on('data', (c: Buffer) => chunks.out.push(c));
  err.on('data', (c: Buffer) => chunks.err.push(c));
  const controller = new AbortController();
  const stop = setTimeout(() => controller.abort(), RUN_LIMIT_MS);
  let hung: NodeJS.Timeout | undefined;
  try {
    const code = await Promise.race([
      runCli(['node', 'lifeboat', ...g.argv], { stdout: out, stderr: err, env: { PATH: process.env.PATH, HOME: process.env.HOME, ...g.env }, cwd: world.root }, controller.signal),
      new Promise<never>((_, reject) => {
        hung = setTimeout(() => reject(new Error(`did not end within ${RUN_LIMIT_MS / 1000 + 30}s, nor 30s after it was interrupted`)), RUN_LIMIT_MS + 30_000);
      }),
    ]);
    const stdout = Buffer.concat(chunks.out).toString('utf8');
    return { run: { code, stdout, stderr: Buffer.concat(chunks.err).toString('utf8'), json: () => JSON.parse(stdout) }, child, ms: Date.now() - started };
  } finally {
    clearTimeout(stop);
    clearTimeout(hung);
  }
}

/** Whether a text holds exactly one JSON document (and nothing else but white space). */
function oneDocument(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

function problemsOf(g: Generated, o: Outcome, given: Set<string>): string[] {
  const problems: string[] = [];
  const { code, stdout, stderr } = o.run;
  const helpOrVersion = g.argv.some((a, i) => ['--help', '-h', '--version', '-V'].includes(a) && !g.argv.slice(0, i).includes('--'));
  if (!EXIT_CODES.has(code)) problems.push(`exit code ${code} is not in DESIGN.md's table`);
  if (code === 130) problems.push('exit 130 with no signal sent (the run took longer than the limit)');
  if (code === 4) problems.push('exit 4: locked, with no other process running');
  // The repositories are whole: only a backup told to fail on warnings may end with an integrity failure.
  if (code === 3 && !given.has('--strict')) problems.push('exit 3: an integrity failure of a repository that is whole');
  // Only --debug shows one.
  if (!given.has('--debug') && /^\s+at .+(:\d+:\d+\)?|\(native\))$/m.test(stderr)) problems.push('a stack trace on stderr');
  // What the command line or the environment gave may be quoted back; anything else is the program's own words.
  let said = stderr;
  // A value given as --flag=VALUE is quoted back as VALUE alone (`unknown encryption "NaN"`).
  const givenValues = [...g.argv, ...g.argv.map((a) => (/^--[^=]+=/.test(a) ? a.slice(a.indexOf('=') + 1) : '')), ...Object.values(g.env)];
  for (const v of givenValues.sort((a, b) => (b?.length ?? 0) - (a?.length ?? 0))) if (v && v.length > 1) said = said.split(v).join('');
  for (const word of ['undefined', '[object Object]', 'NaN']) if (said.includes(word)) problems.push(`"${word}" in a message`);
  if (said.includes('an unexpected error')) problems.push('an error nobody worded (an unexpected error)');
  if (code !== 0 && stderr.trim() === '') problems.push('failed without a word on stderr');
  if (given.has('--json') && !helpOrVersion) {
    if (code === 0 && !oneDocument(stdout)) problems.push('--json: stdout is not exactly one JSON document');
    if (code !== 0 && stdout !== '' && !oneDocument(stdout)) problems.push('--json: stdout on failure is neither empty nor one JSON document');
    if (code !== 0 && oneDocument(stdout)) {
      const doc = JSON.parse(stdout) as { ok?: unknown; error?: { exitCode?: unknown } };
      if (!Array.isArray(doc) && doc.error && doc.error.exitCode !== code) problems.push(`--json: the document's error.exitCode ${String(doc.error.exitCode)} is not the exit code ${code}`);
    }
  }
  if (g.configInvalid && code === 0 && g.command.words[0] !== 'completion' && !helpOrVersion && !given.has('--config') && g.env.LIFEBOAT_CONFIG === undefined) {
    problems.push(`the config was accepted although ${g.configChange} is invalid`);
  }
  // A flag whose value is the config's name (`--work-dir lifeboat.yaml: … is not a directory`) is not a config error.
  if (code === 2 && /(?<!--[\w-]+ \S*)lifeboat\.yaml(:\d+)?: /.test(stderr) && g.configInvalid && !given.has('--config') && g.env.LIFEBOAT_CONFIG === undefined && !stderr.toLowerCase().includes(g.configInvalid.toLowerCase())) {
    problems.push(`a config error that does not name the key ${g.configInvalid}`);
  }
  return problems;
}

/** Paths that a run may change: the repositories, the targets, and what its flags name. */
function allowedRoots(world: World, g: Generated, given: Set<string>): string[] {
  const roots = [world.repos.plain, world.repos.encrypted, path.join(world.root, 'targets')];
  const writers = ['--target', '--junit', '--metrics-file', '--work-dir'];
  for (let i = 0; i < g.argv.length; i++) {
    const arg = g.argv[i]!;
    for (const flag of writers) {
      let value: string | undefined;
      if (arg === flag) value = g.argv[i + 1];
      else if (arg.startsWith(`${flag}=`)) value = arg.slice(flag.length + 1);
      // What a restore stages beside its target, and the directories made on the way, are in the parent.
      if (value) roots.push(path.dirname(path.resolve(world.root, value)));
    }
  }
  roots.push(...world.made, ...initRoots(world, g));
  if (given.has('--in-place')) roots.push(path.join(world.root, 'src'));
  if (['failover', 'rollback'].includes(g.command.words[0]!)) roots.push(...targetRoots(world, g));
  return roots;
}

/** The slots and active links of the config's targets, wherever the config (changed at random) puts them: a failover makes them. */
function targetRoots(world: World, g: Generated): string[] {
  let config: unknown;
  try {
    config = parseYaml(g.config.toString('utf8'));
  } catch {
    return [];
  }
  const targets = (config as { targets?: unknown } | null)?.targets;
  if (!targets || typeof targets !== 'object') return [];
  return Object.values(targets as Record<string, unknown>).flatMap((t) =>
    ['slots', 'active'].map((k) => (t as Record<string, unknown> | null)?.[k]).filter((v): v is string => typeof v === 'string').map((v) => path.resolve(world.root, v)),
  );
}

/** A repository a run of init was told to make, wherever it was named. */
function initRoots(world: World, g: Generated): string[] {
  if (g.command.words[0] !== 'init') return [];
  const roots: string[] = [];
  for (let i = 0; i < g.argv.length; i++) {
    const value = ['--repo', '-r'].includes(g.argv[i]!) ? g.argv[i + 1] : g.argv[i]!.startsWith('--repo=') ? g.argv[i]!.slice(7) : undefined;
    if (value) roots.push(path.resolve(world.root, value.replace(/^file:\/\//, '')));
  }
  if (g.env.LIFEBOAT_REPO) roots.push(path.resolve(world.root, g.env.LIFEBOAT_REPO.replace(/^file:\/\//, '')));
  return roots;
}

/** A run of the test's own, outside the random ones: it reads no config. */
const setupRun = (argv: string[], env: NodeJS.ProcessEnv): Generated => ({ argv, env, config: Buffer.alloc(0), configChange: '', command: { words: [], options: [], args: [] } });

async function makeWorld(seed: number): Promise<World> {
  const root = await tempDir('lifeboat-cli-fuzz-');
  const world: World = { root, repos: { plain: path.join(root, 'repo-plain'), encrypted: path.join(root, 'repo-encrypted') }, passwords: new Set([PASSWORD]), made: [] };
  const rand = prng(seed);
  const models = path.join(root, 'src', 'models');
  await fsp.mkdir(path.join(models, 'tok'), { recursive: true });
  await fsp.mkdir(path.join(root, 'src', 'serving'), { recursive: true });
  await fsp.writeFile(path.join(root, 'src', 'serving', 'config.pbtxt'), 'name: "m"\n');
  await fsp.writeFile(path.join(models, 'config.json'), JSON.stringify({ hidden_size: 64 }));
  await fsp.writeFile(path.join(models, 'tok', 'tokenizer.json'), '{"model":{}}');
  await writeRandomFile(path.join(models, 'weights.bin'), 40_000, rand);
  await fsp.mkdir(path.join(root, 'out'));
  await fsp.writeFile(path.join(root, 'out', 'file'), 'a file where a directory may be asked for');
  await fsp.mkdir(path.join(root, 'targets', 'prod', 'slots'), { recursive: true });
  await fsp.mkdir(path.join(root, 'secrets'));
  await fsp.mkdir(path.join(root, 'tmp'));
  await fsp.writeFile(path.join(root, 'secrets', 'password'), `${PASSWORD}\n`);
  await fsp.writeFile(path.join(root, 'secrets', 'new-password'), 'a new password\n');
  await fsp.writeFile(path.join(root, 'secrets', 'wrong'), 'wrong\n');
  await fsp.writeFile(path.join(root, 'secrets', 'empty'), '');
  for (const [repo, encrypted] of [[world.repos.plain, false], [world.repos.encrypted, true]] as const) {
    const env: NodeJS.ProcessEnv = encrypted ? { LIFEBOAT_PASSWORD: PASSWORD } : {};
    const init = await execute(world, setupRun(['--repo', repo, 'init', ...(encrypted ? ['--encryption', 'aes-256-gcm', '--kdf-log-n', '10'] : [])], env), false);
    assert.equal(init.run.code, 0, init.run.stderr);
    for (const type of ['full', 'incr', 'diff']) {
      await fsp.writeFile(path.join(models, 'config.json'), JSON.stringify({ hidden_size: 64, type, encrypted }));
      const backup = await execute(world, setupRun(['--repo', repo, 'backup', 'src/models', '--type', type], env), false);
      assert.equal(backup.run.code, 0, backup.run.stderr);
    }
  }
  return world;
}

it('random command lines, flags, configs and environments end with a code of the table, a sentence, one JSON document, and nothing written astray', { timeout: 24 * 3600_000 }, async () => {
  const seed = seedFromEnv();
  console.log(`# cli-fuzz: seed ${seed}, ${STEPS} runs (replay with LIFEBOAT_TEST_SEED=${seed}; LIFEBOAT_TEST_STEPS sets the number of runs)`);
  const specs = commandSpecs();
  const world = await makeWorld(seed);
  const savedTmp = process.env.TMPDIR;
  // A drill's or a deep verify's temporary restore lands in the sandbox, where what is left is seen.
  process.env.TMPDIR = path.join(world.root, 'tmp');
  const rand = prng(seed ^ 0x5eed);
  const failures: string[] = [];
  const codes = new Map<string, number>();
  const runtimeFailures: string[] = [];
  try {
    for (let step = 0; step < STEPS && failures.length < 20; step++) {
      const g = generate(rand, world, specs);
      await fsp.writeFile(path.join(world.root, 'lifeboat.yaml'), g.config);
      const child = chance(rand, 0.1) && !g.argv.some((a) => a.includes('/dev/stdin'));
      const before = await snapshot(world.root);
      const pointsBefore = { plain: pointIds(world.repos.plain), encrypted: pointIds(world.repos.encrypted) };
      let outcome: Outcome;
      try {
        outcome = await execute(world, g, child);
      } catch (err) {
        failures.push(`run ${step}: ${String(err)}\n  argv ${JSON.stringify(g.argv)}\n  env ${JSON.stringify(g.env)}\n  config ${g.configChange}`);
        break;
      }
      const given = optionsGiven(g.argv, specs, g.command);
      const problems = problemsOf(g, outcome, given);
      const after = await snapshot(world.root);
      const allowed = allowedRoots(world, g, given);
      const inside = (p: string) => allowed.some((r) => p === r || p.startsWith(`${r}${path.sep}`));
      // A directory made on the way to a place the run may write is its own.
      const onTheWay = (p: string) => allowed.some((r) => r.startsWith(`${p}${path.sep}`));
      for (const [p, what] of after) if (before.get(p) !== what && !inside(p) && !(what === 'dir' && (before.get(p) === 'dir' || onTheWay(p)))) problems.push(`${before.has(p) ? 'changed' : 'made'} ${path.relative(world.root, p)}`);
      for (const p of before.keys()) if (!after.has(p) && !inside(p)) problems.push(`removed ${path.relative(world.root, p)}`);
      const pruned = g.command.words[0] === 'prune' && outcome.run.code === 0 && !given.has('--dry-run');
      for (const name of ['plain', 'encrypted'] as const) {
        const lost = pointsBefore[name].filter((id) => !pointIds(world.repos[name]).includes(id));
        if (lost.length > 0 && !pruned) problems.push(`points of the ${name} repository lost: ${lost.join(', ')}`);
      }
      if (outcome.run.code === 0) world.made.push(...initRoots(world, g));
      // A password that key passwd or key add set opens the encrypted repository from now on.
      if (outcome.run.code === 0 && g.command.words[0] === 'key' && ['add', 'passwd'].includes(g.command.words[1]!)) {
        const at = g.argv.findIndex((a) => a === '--new-password-file' || a.startsWith('--new-password-file='));
        const file = !given.has('--new-password-file') ? undefined : g.argv[at]!.includes('=') ? g.argv[at]!.slice(g.argv[at]!.indexOf('=') + 1) : g.argv[at + 1];
        const password = file ? fs.readFileSync(path.resolve(world.root, file), 'utf8').replace(/\r?\n$/, '') : g.env.LIFEBOAT_NEW_PASSWORD;
        if (password) world.passwords.add(password);
      }
      // A runtime failure against a local repository is worth a look: each is listed with the summary.
      if (outcome.run.code === 1) runtimeFailures.push(`run ${step}: ${JSON.stringify(g.argv).slice(0, 200)}: ${outcome.run.stderr.trim().split('\n').at(-1)?.slice(0, 300)}`);
      const key = `${g.command.words.join(' ')} ${outcome.run.code}`;
      codes.set(key, (codes.get(key) ?? 0) + 1);
      if (process.env.LIFEBOAT_TEST_VERBOSE) console.log(`# ${step} ${outcome.child ? 'child' : 'in'} ${outcome.ms}ms exit ${outcome.run.code} ${JSON.stringify(g.argv).slice(0, 300)} ${g.configChange}\n#   ${outcome.run.stderr.split('\n')[0]?.slice(0, 300)}`);
      if (problems.length > 0) {
        failures.push(
          `run ${step} (${outcome.child ? 'child process' : 'in process'}), exit ${outcome.run.code}: ${problems.join('; ')}\n  argv ${JSON.stringify(g.argv).slice(0, 2000)}\n  env ${JSON.stringify(g.env).slice(0, 500)}\n  config ${g.configChange}\n  stdout ${JSON.stringify(outcome.run.stdout.slice(0, 600))}\n  stderr ${JSON.stringify(outcome.run.stderr.slice(0, 1500))}`,
        );
      }
    }
  } finally {
    if (savedTmp === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = savedTmp;
  }
  console.log(`# cli-fuzz: exit codes by command: ${[...codes].sort().map(([k, n]) => `${k}: ${n}`).join(', ')}`);
  for (const line of runtimeFailures) console.log(`# cli-fuzz: exit 1, ${line}`);
  // Whatever the runs did, both repositories still read back whole, with one of the passwords set.
  await fsp.writeFile(path.join(world.root, 'lifeboat.yaml'), '');
  for (const repo of [world.repos.plain, world.repos.encrypted]) {
    let verified: Outcome | undefined;
    for (const password of repo === world.repos.plain ? [undefined] : world.passwords) {
      verified = await execute(world, setupRun(['--repo', repo, 'verify', '--read-data'], password === undefined ? {} : { LIFEBOAT_PASSWORD: password }), false);
      if (verified.run.code !== 2) break;
    }
    if (verified!.run.code !== 0) failures.push(`verify --read-data of ${path.basename(repo)} after the runs: exit ${verified!.run.code}\n${verified!.run.stdout}${verified!.run.stderr}`);
  }
  assert.deepEqual(failures, [], `seed ${seed} (LIFEBOAT_TEST_SEED=${seed}):\n${failures.join('\n\n')}`);
});
