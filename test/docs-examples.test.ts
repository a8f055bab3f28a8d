/**
 * Every example of README.md, docs/S3.md, docs/SECURITY.md and docs/FORMAT.md that a user would run
 * or rely on, run for real: the `lifeboat …` lines of each shell and cron block, against a fixture
 * deployment and repository built here (and the test S3 server for the S3 examples); each YAML
 * config, parsed and validated, and checked for what its prose says it means; the JSON shapes the
 * prose gives for `--json`, against what the commands print; the example human output, line by
 * line against the real output's shape; the exit codes the prose gives for what it shows.
 *
 * The examples name places of a production host. Before a line runs, these are replaced, and
 * nothing else of it is changed (see `substitute`):
 * - absolute paths of the examples (`/srv/…`, `/etc/triton`, `/etc/lifeboat`, `/backups/…`,
 *   `/var/lib/mlflow/…`, `/etc/ssl/…`) go under a scratch root directory;
 * - a point id of the examples (`20261120-030000-000F`) becomes a real point's id of the same type,
 *   an id prefix (`20261120-030000`) the first point's id up to its seconds, and the example time
 *   (`2026-11-20T03:00:00Z`) a moment just after the first point completed;
 * - `s3://ml-backups/…` becomes a bucket of the test S3 server (a fresh one for each block that
 *   runs `init`), whose address stands for every endpoint (`http://127.0.0.1:9000`,
 *   `https://minio.internal:9000`, AWS itself through AWS_ENDPOINT_URL_S3), and the credentials the
 *   examples' profiles hold are the server's (written into the ini files docs/S3.md shows);
 * - the key id `3f2a9c` becomes the id of the key the line before it added;
 * - the commands a config runs that this machine does not have become commands that leave a trace
 *   (`pg_dump -Fc features` → `cat features.dump`, `pg_restore …` → `cat > features.restored`,
 *   `systemctl reload …` → `echo activated >> activate.log`); the server at `127.0.0.1:8000` and the
 *   notification URL become an HTTP server of this test that answers 200 and records what it was sent;
 * - zsh's `${fpath[1]}` becomes the scratch root, and the CA file of the TLS example is the tests' own.
 * Lines of other tools (`aws`, `mc`, `npm`) are not run; each is listed with the reason. Where the
 * examples are alternatives rather than steps (the restores into one target), the test says what it
 * does between them.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseConfig } from '../src/config/config.js';
import { parseDuration } from '../src/config/duration.js';
import { BIN, lifeboat } from './helpers/cli.js';
import { createTestBucket, startS3Server, type S3TestServer } from './helpers/s3server.js';
import { compareSnapshots, snapshotTree, tempDir, type SnapshotEntry } from './helpers/tree.js';

const hasJq = spawnSync('jq', ['--version']).status === 0;
const CHECKOUT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const DOCS = ['README.md', 'docs/S3.md', 'docs/SECURITY.md', 'docs/FORMAT.md'] as const;

interface Block {
  file: string;
  /** The line of its opening fence. */
  line: number;
  lang: string;
  text: string;
}

/** The fenced code blocks of a document, with their language tag ('' when there is none). */
async function codeBlocks(file: string): Promise<Block[]> {
  const doc = await fsp.readFile(path.join(CHECKOUT, file), 'utf8');
  const lines = doc.split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\S*)\s*$/.exec(lines[i]!);
    if (!open) continue;
    const end = lines.findIndex((l, j) => j > i && /^```\s*$/.test(l));
    assert.ok(end > i, `${file}:${i + 1}: a fence that is never closed`);
    blocks.push({ file, line: i + 1, lang: open[1]!, text: lines.slice(i + 1, end).join('\n') });
    i = end;
  }
  return blocks;
}

const ALL_BLOCKS: Block[] = [];
/** Each block some test below ran or checked, by `file:line`. */
const covered = new Map<string, string>();
const key = (b: Block) => `${b.file}:${b.line}`;

/**
 * Blocks that are not examples a user runs or relies on as shown, each with why; found by a
 * phrase of theirs, so that a block moved by an edit is still found.
 */
const NOT_RUNNABLE: { file: string; contains: string; reason: string }[] = [
  { file: 'docs/SECURITY.md', contains: 'header   "LBEN"', reason: 'a diagram of the encrypted object format (test/encryption.test.ts checks the format)' },
  { file: 'docs/FORMAT.md', contains: 'PARTS="$OUT.parts"', reason: 'the recovery by hand, which test/manual-recovery.test.ts runs as written' },
  { file: 'docs/S3.md', contains: '"lifeboat-abort-incomplete-uploads"', reason: 'a lifecycle rule for AWS S3 (aws s3api put-bucket-lifecycle-configuration), applied by AWS, not by lifeboat; parsed as JSON below' },
  { file: 'docs/S3.md', contains: 'aws s3api put-bucket-lifecycle-configuration', reason: 'a command of the AWS CLI against AWS itself' },
  { file: 'docs/S3.md', contains: '"LifeboatKmsKey"', reason: 'an IAM policy for AWS, which has no server here; parsed as JSON below, its actions checked against README.md' },
  { file: 'docs/S3.md', contains: 'mc admin user add', reason: 'commands of the MinIO client against a MinIO server' },
  { file: 'docs/S3.md', contains: '"arn:aws:iam:::user/lifeboat"', reason: 'the Ceph bucket policy, which test/s3-permissions.test.ts applies and runs every command under' },
  { file: 'docs/S3.md', contains: 'put-bucket-policy', reason: 'a command of the AWS CLI (the bucket owner applying the policy)' },
  { file: 'docs/S3.md', contains: '"arn:aws:iam:::user/lifeboat-append"', reason: 'the append-only Ceph bucket policy, which test/s3-permissions.test.ts applies' },
  { file: 'docs/S3.md', contains: 'trying again (attempt 2 of 6)', reason: 'a log line of a server that does not answer, which test/s3-silence.test.ts makes happen' },
  { file: 'docs/S3.md', contains: 'HTTP 503 SlowDown Please reduce', reason: 'the error after retries of a throttling server, which test/s3-faults.test.ts makes happen' },
  { file: 'docs/S3.md', contains: 'got no answer (the last waited 20 s, s3.timeout)\n  check that', reason: 'the error of a server that never answers, which test/s3-silence.test.ts makes happen' },
  { file: 'docs/S3.md', contains: 'answered nothing to the clean-up after the interruption', reason: 'the warning of a clean-up cut short by a server gone silent, which test/s3-silence.test.ts makes happen' },
  { file: 'README.md', contains: 'mikepenz/action-junit-report', reason: 'a GitHub Actions step; its drill command line is run here from examples/github/nightly-drill.yml' },
  { file: 'README.md', contains: 'npm run bench', reason: 'the development commands: `npm test` is what runs this file, and the bench is not a test' },
  { file: 'README.md', contains: 'npm ci && npm run demo', reason: 'needs the network (npm ci) and builds the checkout; the demo itself is run here from dist/scripts/demo.js' },
];

function notRunnable(b: Block): string | undefined {
  return NOT_RUNNABLE.find((n) => n.file === b.file && b.text.includes(n.contains))?.reason;
}

before(async () => {
  for (const file of DOCS) ALL_BLOCKS.push(...(await codeBlocks(file)));
});

function blockAt(file: string, contains: string, lang?: string): Block {
  const found = ALL_BLOCKS.filter((b) => b.file === file && b.text.includes(contains) && (lang === undefined || b.lang === lang));
  assert.equal(found.length, 1, `${file} has one fenced block holding ${JSON.stringify(contains)}`);
  return found[0]!;
}

// ---------------------------------------------------------------------------------------------
// Running the shell lines of the documents.

/** Other tools' lines in the documents' shell blocks, not run here, with the reason. */
const OTHER_TOOLS: Record<string, string> = {
  aws: 'the AWS CLI, against AWS; the test makes its buckets itself',
  mc: 'the MinIO client, against a MinIO server; the test makes its buckets itself',
  npm: 'npm, which needs the network and rebuilds the checkout',
  head: 'part of the checksum check of docs/FORMAT.md, run by its own test below',
  jq: 'part of the checksum check of docs/FORMAT.md, run by its own test below',
  doc: 'part of the checksum check of docs/FORMAT.md, run by its own test below',
};

/** A line without its trailing `# comment` (a `#` outside quotes, after a blank). */
function stripComment(line: string): string {
  let quote: string | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (quote) {
      if (c === quote) quote = undefined;
    } else if (c === "'" || c === '"') quote = c;
    else if (c === '#' && (i === 0 || /\s/.test(line[i - 1]!))) return line.slice(0, i).trimEnd();
  }
  return line.trimEnd();
}

/** The command lines of a shell or cron block: continuations joined, comments and blank lines left out. */
function commandLines(block: Block): string[] {
  return block.text
    .replace(/\\\n\s*/g, ' ')
    .split('\n')
    .map(stripComment)
    .filter((l) => l.trim() !== '');
}

/** The first word of a line that is not a variable assignment. */
function commandWord(line: string): string {
  const words = line.replace(/^source <\(/, '').split(/\s+/);
  return words.find((w) => !/^[A-Z_][A-Z0-9_]*=/.test(w)) ?? '';
}

interface Run {
  line: string;
  ran: string;
  code: number;
  stdout: string;
  stderr: string;
}

async function bash(script: string, options: { cwd: string; env: NodeJS.ProcessEnv }): Promise<Omit<Run, 'line' | 'ran'>> {
  return new Promise((resolve) => {
    execFile('bash', ['-o', 'pipefail', '-c', script], { cwd: options.cwd, env: options.env, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as NodeJS.ErrnoException).code === 'number' ? Number((err as NodeJS.ErrnoException).code) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

interface Fixture {
  root: string;
  env: NodeJS.ProcessEnv;
  /** The real ids standing for the examples': the first point of each type, the newest, the first point. */
  ids: Partial<Record<'F' | 'D' | 'I', string>>;
  first?: { id: string; completedAt: string };
  keyId?: string;
  s3?: { server: S3TestServer; bucket: string };
  http?: string;
}

/** The paths of the examples that go under the scratch root. */
const HOST_PATHS = /(^|[\s=:'"(<])(\/(?:srv|etc\/triton|etc\/lifeboat|etc\/ssl|backups|var\/lib\/mlflow|var\/lib\/node_exporter)(?=[/\s'"]|$))/g;

/** The example's words for a production host replaced by the fixture's, as the header of this file says. */
function substitute(text: string, fx: Fixture): string {
  let out = text.replace(HOST_PATHS, (_, before: string, p: string) => `${before}${fx.root}${p}`);
  out = out.replace(/\b\d{8}-\d{6}-\d{3}([FDI])\b/g, (id, type: 'F' | 'D' | 'I') => {
    const real = fx.ids[type];
    assert.ok(real, `a point of type ${type} for ${id} in: ${text}`);
    return real;
  });
  out = out.replace(/\b(\d{8}-\d{6})\b(?!-)/g, () => fx.first!.id.slice(0, 15));
  out = out.replace(/\b2026-11-20T03:00:00Z\b/g, () => new Date(Date.parse(fx.first!.completedAt) + 1000).toISOString().replace(/\.\d+Z$/, 'Z'));
  if (fx.keyId) out = out.replace(/\b3f2a9c\b/g, fx.keyId);
  if (fx.s3) {
    out = out.replace(/s3:\/\/ml-backups\//g, `s3://${fx.s3.bucket}/`);
    out = out.replace(/https?:\/\/(127\.0\.0\.1:9000|minio\.internal:9000|rgw\.example\.internal)/g, fx.s3.server.endpoint);
    out = out.replace(/\bAWS_ACCESS_KEY_ID=\S+/g, `AWS_ACCESS_KEY_ID=${fx.s3.server.accessKeyId}`);
    out = out.replace(/\bAWS_SECRET_ACCESS_KEY=\S+/g, `AWS_SECRET_ACCESS_KEY=${fx.s3.server.secretAccessKey}`);
    out = out.replace(/^(aws_access_key_id = ).*$/gm, `$1${fx.s3.server.accessKeyId}`);
    out = out.replace(/^(aws_secret_access_key = ).*$/gm, `$1${fx.s3.server.secretAccessKey}`);
  }
  if (fx.http) {
    out = out.replace(/http:\/\/127\.0\.0\.1:8000/g, fx.http);
    out = out.replace(/https:\/\/hooks\.example\.com\/lifeboat/g, `${fx.http}/notify`);
  }
  out = out.replace(/"pg_dump -Fc features"/g, `"cat ${fx.root}/features.dump"`);
  out = out.replace(/"pg_restore --clean -d features"/g, `"cat > ${fx.root}/features.restored"`);
  out = out.replace(/"systemctl reload [\w-]+"/g, `"echo activated >> ${fx.root}/activate.log"`);
  out = out.replace(/"\$\{fpath\[1\]\}\/_lifeboat"/g, `"${fx.root}/_lifeboat"`);
  return out;
}

/** The exit code a line is expected to end with, when it is not 0, with the passage that says so. */
interface Expect {
  contains: string;
  code: number;
  why: string;
}

/**
 * Runs the command lines of `block` in order (exports carried to the lines after them), each
 * after its `before` step, and checks its exit code; returns what each printed.
 */
async function runBlock(block: Block, fx: Fixture, options: { cwd: string | ((line: string) => string); expect?: Expect[]; before?: Record<string, () => Promise<void>>; env?: NodeJS.ProcessEnv }): Promise<Run[]> {
  covered.set(key(block), 'run');
  const runs: Run[] = [];
  let exports = '';
  for (const line of commandLines(block)) {
    const word = commandWord(line);
    if (word === 'export') {
      exports += `${substitute(line, fx)}\n`;
      continue;
    }
    if (word !== 'lifeboat') {
      assert.ok(OTHER_TOOLS[word], `${key(block)}: a line of ${word}, which is neither lifeboat nor listed in OTHER_TOOLS: ${line}`);
      continue;
    }
    // README.md's Development section: jq is installed where the tests run (CI installs it); without it, its lines are left out.
    if (/\| jq\b/.test(line) && !hasJq) continue;
    for (const [contains, step] of Object.entries(options.before ?? {})) if (line.includes(contains)) await step();
    const ran = substitute(line, fx);
    const cwd = typeof options.cwd === 'string' ? options.cwd : options.cwd(line);
    const r = await bash(`${exports}${ran}`, { cwd, env: { ...fx.env, ...options.env } });
    const expected = options.expect?.find((e) => line.includes(e.contains));
    assert.equal(r.code, expected?.code ?? 0, `${key(block)}: ${line}\n  ran as: ${ran}\n  stdout: ${r.stdout.slice(0, 2000)}\n  stderr: ${r.stderr}`);
    runs.push({ line, ran, ...r });
  }
  return runs;
}

/** The environment every line runs in: `lifeboat` on PATH is this checkout's, and no LIFEBOAT_ setting leaks in. */
async function fixtureEnv(root: string): Promise<NodeJS.ProcessEnv> {
  const bin = path.join(root, 'bin');
  await fsp.mkdir(bin, { recursive: true });
  await fsp.writeFile(path.join(bin, 'lifeboat'), `#!/bin/sh\nexec '${process.execPath}' '${BIN}' "$@"\n`, { mode: 0o755 });
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('LIFEBOAT_') && !k.startsWith('AWS_')) env[k] = v;
  env.PATH = `${bin}:${process.env.PATH}`;
  env.HOME = root;
  return env;
}

/** An HTTP server that answers 200 to everything and keeps what it was sent. */
async function recordingServer(): Promise<{ url: string; requests: { method: string; url: string; body: string }[]; close: () => Promise<void> }> {
  const requests: { method: string; url: string; body: string }[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      requests.push({ method: req.method ?? '', url: req.url ?? '', body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requests, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

// ---------------------------------------------------------------------------------------------
// The JSON shapes the prose gives (`{id, type, parent: id|null, restore: {files, bytes}}`).

type Shape = { kind: 'any' } | { kind: 'object'; keys: Map<string, Shape> } | { kind: 'array'; of: Shape } | { kind: 'enum'; values: unknown[] };

/** Parses the notation of the documents' shapes: keys, nested `{…}`, `[…]` of a shape, `"a"|"b"` literals; other words are any value. */
function parseShape(text: string): Shape {
  let i = 0;
  const skip = () => {
    while (i < text.length && /\s/.test(text[i]!)) i++;
  };
  const value = (): Shape => {
    skip();
    if (text[i] === '{') {
      i++;
      const keys = new Map<string, Shape>();
      for (;;) {
        skip();
        if (text[i] === '}') {
          i++;
          return { kind: 'object', keys };
        }
        if (text.startsWith('...', i) || text[i] === '…') {
          i += text[i] === '…' ? 1 : 3;
        } else {
          const name = /^[A-Za-z_][\w]*|^"[^"]*"/.exec(text.slice(i));
          assert.ok(name, `a key at ${i} of ${text}`);
          i += name[0].length;
          skip();
          let shape: Shape = { kind: 'any' };
          if (text[i] === ':') {
            i++;
            shape = value();
          }
          keys.set(name[0].replace(/"/g, ''), shape);
        }
        skip();
        if (text[i] === ',') i++;
      }
    }
    if (text[i] === '[') {
      i++;
      skip();
      const of = text[i] === '{' || text[i] === '[' ? value() : ({ kind: 'any' } as Shape);
      const close = text.indexOf(']', i);
      assert.ok(close >= 0, `a closing ] in ${text}`);
      i = close + 1;
      return { kind: 'array', of };
    }
    // A word, or literals joined by `|`: up to the next `,` or closing bracket.
    const m = /^[^,}\]]*/.exec(text.slice(i))!;
    i += m[0].length;
    const alternatives = m[0].trim().split('|').map((a) => a.trim());
    if (alternatives.every((a) => /^".*"$|^(true|false|null)$/.test(a))) return { kind: 'enum', values: alternatives.map((a) => JSON.parse(a)) };
    return { kind: 'any' };
  };
  const shape = value();
  return shape;
}

/**
 * What of `shape` the document `real` lacks or has of another kind, as `path: problem` lines. Extra keys are
 * fine (DESIGN.md: shapes are extended, never renamed); a key in `optional` (as `a.b`, the prose saying it
 * appears only when it applies) may be missing; a value `null` stands for any shape.
 */
function shapeProblems(shape: Shape, real: unknown, optional: readonly string[] = [], at = ''): string[] {
  if (real === null || shape.kind === 'any') return [];
  if (shape.kind === 'enum') return shape.values.includes(real) ? [] : [`${at || '.'}: ${JSON.stringify(real)} is none of ${shape.values.map((v) => JSON.stringify(v)).join(', ')}`];
  if (shape.kind === 'array') {
    if (!Array.isArray(real)) return [`${at || '.'}: an array in the docs, ${typeof real} in the output`];
    return real.flatMap((r, n) => shapeProblems(shape.of, r, optional, `${at}[${n}]`));
  }
  if (typeof real !== 'object' || Array.isArray(real)) return [`${at || '.'}: an object in the docs, ${Array.isArray(real) ? 'an array' : typeof real} in the output`];
  const problems: string[] = [];
  for (const [name, sub] of shape.keys) {
    const where = at ? `${at}.${name}` : name;
    // `{"<uid>": name}`: a map, whatever its keys.
    if (name.startsWith('<')) {
      for (const [k, v] of Object.entries(real)) problems.push(...shapeProblems(sub, v, optional, `${at}.${k}`));
      continue;
    }
    if (!(name in (real as Record<string, unknown>))) {
      if (!optional.includes(where.replace(/\[\d+\]/g, '').replace(/^\./, ''))) problems.push(`${where}: missing from the output`);
      continue;
    }
    problems.push(...shapeProblems(sub, (real as Record<string, unknown>)[name], optional, where));
  }
  return problems;
}

function assertShape(what: string, shapeText: string, real: unknown, optional: readonly string[] = []): void {
  const problems = shapeProblems(parseShape(shapeText), real, optional);
  assert.deepEqual(problems, [], `${what}: the documented shape ${shapeText}\ndoes not match the output ${JSON.stringify(real).slice(0, 3000)}`);
}

// ---------------------------------------------------------------------------------------------
// Example human output: each line of the example, made a pattern (ids, numbers, times, paths and `…`
// stand for any), must match a line of the real output, in the same order.

function lineShape(example: string): RegExp {
  const TOKENS: [RegExp, string][] = [
    [/\d{8}-\d{6}-\d{3}[FDI]/g, '\u0001ID\u0001'],
    [/\d{4}-\d\d-\d\dT[\d:.]+Z/g, '\u0001TIME\u0001'],
    [/(?<=\s|^)\/\S*[^\s,.;:)]/g, '\u0001PATH\u0001'],
    [/\S+@\S+(?=\))/g, '\u0001WHO\u0001'],
    [/\d+(\.\d+)?( ?(GiB|MiB|KiB|bytes|B|ms|s|m|h|d)\b)?(\d+(\.\d+)?(ms|s|m|h|d))*/g, '\u0001NUM\u0001'],
  ];
  let s = example;
  for (const [re, mark] of TOKENS) s = s.replace(re, mark);
  const escaped = s
    .split(/(\u0001\w+\u0001|…)/)
    .map((part) => {
      if (part === '\u0001ID\u0001') return '\\d{8}-\\d{6}-\\d{3}[FDI]';
      if (part === '\u0001TIME\u0001') return '\\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z';
      if (part === '\u0001PATH\u0001') return '/\\S*';
      if (part === '\u0001WHO\u0001') return '\\S+@\\S+';
      if (part === '\u0001NUM\u0001') return '\\d+(\\.\\d+)?( ?[A-Za-z]+)?(\\d+(\\.\\d+)?[a-z]+)*';
      if (part === '…') return '.*';
      return part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    })
    .join('');
  return new RegExp(`^${escaped}$`);
}

function assertOutputShape(what: string, example: string, real: string, options: { anyOrder?: boolean } = {}): void {
  const lines = real.split('\n');
  let at = 0;
  for (const wanted of example.split('\n').filter((l) => l.trim() !== '')) {
    const re = lineShape(wanted);
    const found = lines.findIndex((l, n) => n >= at && re.test(l));
    assert.ok(found >= 0, `${what}: the example line\n  ${wanted}\nhas no line of that shape (${re.source}) in the real output after line ${at + 1}:\n${real}`);
    if (!options.anyOrder) at = found + 1;
  }
}

// ---------------------------------------------------------------------------------------------
// The fixture: a host with the examples' paths under a scratch root.

/** What the tests started that outlives the test that started it (the walk-through's host serves the tests after it). */
const closers: (() => Promise<void>)[] = [];
after(async () => {
  for (const close of closers) await close();
});

async function makeHost(): Promise<{ fx: Fixture; work: string; http: Awaited<ReturnType<typeof recordingServer>> }> {
  const root = await tempDir('lifeboat-docs-');
  const server = await recordingServer();
  const fx: Fixture = { root, env: await fixtureEnv(root), ids: {}, http: server.url };
  const models = path.join(root, 'srv/models');
  await fsp.mkdir(path.join(models, 'tokenizer'), { recursive: true });
  await fsp.writeFile(path.join(models, 'config.json'), JSON.stringify({ vocab_size: 8, hidden_size: 4 }));
  await fsp.writeFile(path.join(models, 'tokenizer/tokenizer.json'), JSON.stringify({ model: { vocab: { a: 0, b: 1 } } }));
  await fsp.writeFile(path.join(models, 'weights.bin'), Buffer.alloc(200_000, 7));
  await fsp.mkdir(path.join(root, 'etc/triton'), { recursive: true });
  await fsp.writeFile(path.join(root, 'etc/triton/config.pbtxt'), 'name: "fraud"\n');
  await fsp.mkdir(path.join(root, 'backups'), { recursive: true });
  const work = path.join(root, 'work');
  await fsp.mkdir(work);
  await fsp.writeFile(path.join(work, 'smoke.sh'), '#!/bin/sh\ntest -f "$LIFEBOAT_RESTORE_DIR/models/config.json" && echo "smoke ok for $LIFEBOAT_POINT"\n', { mode: 0o755 });
  await fsp.writeFile(path.join(work, 'ops.pw'), 'an operator password\n');
  await fsp.writeFile(path.join(work, 'new.pw'), 'a new password\n');
  closers.push(server.close);
  // The config of "The config file", as the working directory's lifeboat.yaml.
  const config = blockAt('README.md', 'deployment: fraud-detector       # needed only');
  covered.set(key(config), 'the config of the walk-through');
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), substitute(config.text, fx));
  return { fx, work, http: server };
}

/** The ids of the repository the config in `cwd` names: the first point of each type, and the first point. */
async function refreshIds(fx: Fixture, cwd: string, args: string[] = []): Promise<void> {
  const r = await bash(`lifeboat ${args.join(' ')} list --json`, { cwd, env: fx.env });
  if (r.code !== 0) return;
  const points = JSON.parse(r.stdout) as { id: string; type: string; completedAt: string }[];
  if (points.length === 0) return;
  fx.first = { id: points[0]!.id, completedAt: points[0]!.completedAt };
  for (const p of points) fx.ids[p.type[0]!.toUpperCase() as 'F' | 'D' | 'I'] ??= p.id;
  // The newest incremental stands for the examples' incrementals (`20261122-030000-457I`, "latest").
  const incr = points.filter((p) => p.type === 'incr').at(-1);
  if (incr) fx.ids.I = incr.id;
}

const nextSecond = () => new Promise((resolve) => setTimeout(resolve, 1100 - (Date.now() % 1000)));

let host: Awaited<ReturnType<typeof makeHost>> | undefined;
const walkRuns: Run[] = [];

test("README.md's commands, from init to completion, run in order against a deployment at the examples' paths with the config README.md shows", async () => {
  host = await makeHost();
  const { fx, work } = host;
  const readme = ALL_BLOCKS.filter((b) => b.file === 'README.md' && b.lang === 'sh');
  const from = readme.findIndex((b) => b.text.includes('--repo /backups/fraud-detector init'));
  const to = readme.findIndex((b) => b.text.includes('lifeboat completion bash'));
  // The key commands need an encrypted repository: they run in the encryption test below.
  assert.ok(from >= 0 && to > from);
  const refresh = () => refreshIds(fx, work);
  const includeTrees: Map<string, SnapshotEntry>[] = [];
  let includes = 0;
  for (const block of readme.slice(from, to + 1).filter((b) => !b.text.includes('lifeboat key'))) {
    const runs = await runBlock(block, fx, {
      cwd: work,
      before: {
        // Each backup in a second of its own, so that the example's id prefix (to the second) names one point,
        // and something changed for it to store.
        'lifeboat backup --source models=': async () => {
          await refresh();
          await nextSecond();
          await fsp.writeFile(path.join(fx.root, 'srv/models/x.tmp'), 'scratch');
          await fsp.writeFile(path.join(fx.root, 'srv/models/weights.bin'), Buffer.alloc(200_000, 8));
        },
        'lifeboat backup       ': async () => {
          await nextSecond();
          await fsp.writeFile(path.join(fx.root, 'etc/triton/config.pbtxt'), 'name: "fraud"\nmax_batch_size: 8\n');
        },
        // The restore examples are alternatives: each --include one restores into an empty target, and
        // "the same" is checked: the directory alone restores what its `/**` restored.
        '--target /srv/restore --include': async () => {
          const target = path.join(fx.root, 'srv/restore');
          if (includes++ > 0) includeTrees.push(await snapshotTree(target));
          await fsp.rm(target, { recursive: true, force: true });
        },
        '--delete-excluded': async () => {
          includeTrees.push(await snapshotTree(path.join(fx.root, 'srv/restore')));
          assert.equal(includeTrees.length, 2);
          assert.equal(compareSnapshots(includeTrees[0]!, includeTrees[1]!), undefined, '--include models/tokenizer restores what --include models/tokenizer/** does');
          assert.deepEqual([...includeTrees[0]!.keys()].filter((p) => !p.startsWith('models')).length, 0);
        },
        'lifeboat list': refresh,
        'lifeboat show': refresh,
        'lifeboat diff': refresh,
        'lifeboat restore 2026': refresh,
        'lifeboat pin': refresh,
      },
    });
    walkRuns.push(...runs);
  }
  // What the comments of the lines say.
  const points = JSON.parse((await bash('lifeboat --json list', { cwd: work, env: fx.env })).stdout) as { id: string; type: string; tags: Record<string, string> }[];
  const sources = async (id: string) => (JSON.parse((await bash(`lifeboat --json show ${id}`, { cwd: work, env: fx.env })).stdout).sources as { name: string }[]).map((s) => s.name);
  assert.equal(points[0]!.type, 'full');
  assert.deepEqual(await sources(points[0]!.id), ['models', 'triton'], 'sources "models" and "triton"');
  assert.deepEqual(points[1]!.tags, { release: 'v42' });
  assert.equal(points[2]!.type, 'incr');
  assert.deepEqual(await sources(points[2]!.id), ['models', 'serving'], 'sources from lifeboat.yaml');
  const output = (line: string) => walkRuns.find((r) => r.line === line)?.stdout;
  assert.equal(output('lifeboat ls'), output('lifeboat list'), 'ls is the same as list');
  if (hasJq) assert.equal(output("lifeboat list --json | jq -r '.[-1].id'"), `${points.at(-1)!.id}\n`, 'the id of the newest point');
  const pinnedList = walkRuns.filter((r) => r.line.startsWith('lifeboat list')).at(-1)!.stdout;
  assert.match(pinnedList, /PINNED/, 'list shows a PINNED column once a point is pinned');
});

// ---------------------------------------------------------------------------------------------
// The JSON shapes of the prose, against what the commands print.

/** Every `{…}` or `[{…}]` in backquotes in a document, by its text. */
async function inlineShapes(file: string): Promise<string[]> {
  const doc = await fsp.readFile(path.join(CHECKOUT, file), 'utf8');
  return [...doc.matchAll(/`(?:\w+: )?(\[?\{[^`]*\}\]?)`/g)].map((m) => m[1]!.replace(/\s+/g, ' '));
}

/** Shapes in backquotes that are not JSON a command prints, with why. */
const NOT_SHAPES: Record<string, string> = {
  '{a,b}': 'glob syntax of --include',
  '{ ...entry, extra }': 'JavaScript, in the Performance section',
};
const checkedShapes = new Set<string>();

/** The shape in backquotes that follows `anchor` in README.md. */
async function shapeAfter(anchor: string, file = 'README.md'): Promise<string> {
  const doc = (await fsp.readFile(path.join(CHECKOUT, file), 'utf8')).replace(/\s+/g, ' ');
  const at = doc.indexOf(anchor);
  assert.ok(at >= 0, `${file} says ${JSON.stringify(anchor)}`);
  const m = /`((\w+): )?(\[?\{[^`]*\}\]?)`/.exec(doc.slice(at + anchor.length));
  assert.ok(m, `a shape after ${JSON.stringify(anchor)}`);
  checkedShapes.add(m[3]!);
  // `sources: [{…}]` is the shape of that key of the document.
  return m[2] ? `{${m[2]}: ${m[3]}}` : m[3]!;
}

test("the JSON shapes README.md gives for --json are those the commands print (extra keys allowed, none missing)", async () => {
  assert.ok(host, 'the walk-through ran');
  const { fx, work } = host;
  const json = async (args: string, code = 0) => {
    const r = await bash(`lifeboat --json ${args}`, { cwd: work, env: fx.env });
    assert.equal(r.code, code, `lifeboat --json ${args}: ${r.stderr}`);
    return JSON.parse(r.stdout);
  };
  await fsp.writeFile(path.join(fx.root, 'srv/models/weights.bin'), Buffer.alloc(200_000, 9));
  const backup = await json('backup');
  assertShape('backup --json', await shapeAfter('root\'s). `--json` prints'), backup);
  const dryRun = walkRuns.find((r) => r.line.includes('backup --dry-run --json'));
  assert.ok(dryRun);
  assertShape('backup --dry-run --json', await shapeAfter('root\'s). `--json` prints'), JSON.parse(dryRun.stdout));
  assertShape('list --json', await shapeAfter('# the same as list ``` `--json`:'), await json('list'));
  const show = await json('show latest');
  // "`restore` … present only when the config gave one, and `exclude` only when the backup had patterns".
  assertShape('show --json sources', await shapeAfter('(`models=/srv/models (files, leaving out *.tmp /logs)`); `--json` has them in'), show, ['sources.restore', 'sources.exclude']);
  assertShape('show --json warnings', await shapeAfter('shown after its size (`warning: models/a.bin: cannot read … (unreadable)`; `--json`:'), show);
  const diff = await json(`diff ${fx.first!.id} latest`);
  assertShape('diff --json', await shapeAfter('as `<source>/<path>` (`--json`:'), diff);
  const counts = await shapeAfter('`--json`: `counts` and `directories`, each');
  assertShape('diff --json counts', counts, diff.counts);
  assertShape('diff --json directories', counts, diff.directories);
  assertShape('verify --json', await shapeAfter('check that its models would load ``` `--json`:'), await json('verify'));
  const readData = await json('verify --read-data --since-verified');
  assert.ok('oldestVerifiedAt' in readData, JSON.stringify(readData));
  assertShape('verify --read-data --json', await shapeAfter('then in days; `oldestVerifiedAt` and'), readData);
  const target = path.join(fx.root, 'srv/json-restore');
  assertShape('restore --json', await shapeAfter('nor a file outside the target. `--json`:'), await json(`restore latest --target ${target}`));
  const delta = await json(`restore latest --target ${target} --delta`);
  for (const k of ['rewritten', 'unchanged', 'removed', 'keptExcluded']) assert.ok(k in delta, `restore --delta --json has ${k}: ${JSON.stringify(delta)}`);
  const drill = walkRuns.find((r) => r.line.includes('lifeboat drill 2026'));
  assert.ok(drill);
  assertShape('drill --json', await shapeAfter('not a failed check. `--json`:'), JSON.parse(drill.stdout));
  assertShape('prune --json', await shapeAfter('which is not a leftover (a prune does not run beside a backup).'), await json('prune --keep-full 1 --dry-run'));
  assertShape('completion --json', await shapeAfter('the script is in the one JSON document, as'), await json('completion bash'));
  // The first point was taken with the config's patterns alone, the second with `--exclude '**/*.tmp'` too.
  const second = JSON.parse((await bash('lifeboat --json list', { cwd: work, env: fx.env })).stdout)[1].id as string;
  assertShape('diff --json excludes', await shapeAfter('named on the line after the counts (`exclude patterns of models changed: *.tmp → *.tmp /logs`; `--json`:'), await json(`diff ${fx.first!.id} ${second}`));
  const inPlace = await json('restore latest --in-place --delta');
  assert.equal(inPlace.target, null);
  assertShape('restore --in-place --json', await shapeAfter('`--json` gives `target: null` and'), inPlace);
  // Config snippets of "unlock".
  for (const anchor of ['The 30 minutes are configurable with', '`--retry-lock 30m` (or']) {
    const snippet = await shapeAfter(anchor);
    const config = await parseConfig(snippet, 'lifeboat.yaml');
    assert.ok(config.lock && Object.keys(config.lock).length === 1, `lock: ${snippet} validates`);
  }
  // An error: exit 2 for a point that does not exist, with the document of "Exit codes".
  assertShape('an error with --json', await shapeAfter('With `--json`, stdout also gets'), await json('show 19990101-000000-000F', 2), ['error.hint']);
  // A repository two deployments share: status without a deployment gives the newest point of each.
  assert.equal((await bash(`lifeboat --deployment other backup ${fx.root}/srv/models`, { cwd: work, env: fx.env })).code, 0);
  const shared = await bash(`lifeboat --json --repo ${fx.root}/backups/fraud-detector status`, { cwd: fx.root, env: fx.env });
  assert.equal(shared.code, 0, shared.stderr);
  const sharedStatus = JSON.parse(shared.stdout);
  assert.equal(sharedStatus.newest, null);
  assertShape('status --json of a shared repository', await shapeAfter('`--json`: `newest: null` and'), sharedStatus);
});

// ---------------------------------------------------------------------------------------------
// S3: one server for the file; a bucket of its own for each block that runs `init`.

let s3: S3TestServer | undefined;
before(async () => {
  s3 = await startS3Server();
});
after(async () => {
  await s3?.stop();
});

/** The fixture's environment with the S3 server standing for AWS: its credentials, and its address as AWS_ENDPOINT_URL_S3. */
async function withS3(fx: Fixture): Promise<void> {
  fx.s3 = { server: s3!, bucket: await createTestBucket(s3!) };
  Object.assign(fx.env, s3!.env, { AWS_ENDPOINT_URL_S3: s3!.endpoint });
}

test('"Serving state and failover": its config backs up from the cron line, fails over to the latest point and to a time, rolls back, and status and failover print what README.md shows', async () => {
  const root = await tempDir('lifeboat-docs-');
  const server = await recordingServer();
  closers.push(server.close);
  const fx: Fixture = { root, env: await fixtureEnv(root), ids: {}, http: server.url };
  await withS3(fx);
  // The live slot the server reads through `current`, before any failover: a directory outside the slots.
  const live = path.join(root, 'srv/serving/initial');
  await fsp.mkdir(path.join(live, 'models/tokenizer'), { recursive: true });
  await fsp.mkdir(path.join(live, 'serving'), { recursive: true });
  await fsp.writeFile(path.join(live, 'models/config.json'), JSON.stringify({ vocab_size: 8 }));
  await fsp.writeFile(path.join(live, 'models/tokenizer/tokenizer.json'), JSON.stringify({ model: { vocab: { a: 0 } } }));
  await fsp.writeFile(path.join(live, 'serving/model.pbtxt'), 'v1\n');
  await fsp.symlink('initial', path.join(root, 'srv/serving/current'));
  await fsp.mkdir(path.join(root, 'var/lib/mlflow'), { recursive: true });
  const { default: Database } = await import('better-sqlite3');
  const dbPath = path.join(root, 'var/lib/mlflow/mlflow.db');
  const db = new Database(dbPath);
  db.exec("CREATE TABLE runs (name TEXT); INSERT INTO runs VALUES ('v1')");
  db.close();
  await fsp.writeFile(path.join(root, 'features.dump'), 'features at v1\n');

  const block = blockAt('README.md', '# /etc/lifeboat/lifeboat.yaml');
  covered.set(key(block), 'the config of the failover walk-through');
  const etc = path.join(root, 'etc/lifeboat');
  await fsp.mkdir(etc, { recursive: true });
  await fsp.writeFile(path.join(etc, 'lifeboat.yaml'), substitute(block.text, fx));
  // What the prose says this config means.
  const config = await parseConfig(substitute(block.text, fx), 'lifeboat.yaml');
  assert.deepEqual(config.sources?.registry, { sqlite: dbPath, restore: true });
  assert.equal(config.targets?.prod?.hookTimeout, '10m');
  assert.equal(config.targets?.prod?.keepSlots, 3);
  const init = await bash(`lifeboat --repo s3://${fx.s3!.bucket}/fraud-detector init`, { cwd: etc, env: fx.env });
  assert.equal(init.code, 0, init.stderr);

  // The cron line: with --quiet, a backup that succeeds prints nothing, so cron mails nothing.
  const cron = blockAt('README.md', 'hourly: an RPO of at most an hour');
  const cronRuns = await runCron(cron, fx);
  assert.deepEqual(cronRuns.map((r) => r.stdout + r.stderr), [''], 'the cron line prints nothing');
  assert.deepEqual(server.requests.filter((r) => r.url.startsWith('/admin/')).map((r) => `${r.method} ${r.url}`), ['POST /admin/pause', 'POST /admin/resume'], 'the hooks paused and resumed the server');
  // A second point, with other serving state: the failover to a time then goes back to the first.
  await nextSecond();
  await fsp.writeFile(path.join(live, 'serving/model.pbtxt'), 'v2\n');
  await fsp.writeFile(path.join(root, 'features.dump'), 'features at v2\n');
  assert.equal((await bash('lifeboat --quiet backup', { cwd: etc, env: fx.env })).code, 0);
  await refreshIds(fx, etc);

  const failover = await runBlock(blockAt('README.md', 'lifeboat failover --to prod'), fx, { cwd: etc });
  // The first failover's previous is the directory served before any; the second's, a point, as in the example.
  assertOutputShape('failover', blockAt('README.md', 'failed over prod to').text, failover[1]!.stdout);
  covered.set(key(blockAt('README.md', 'failed over prod to')), 'the output of failover');
  // The time selects the first point, whose state goes back.
  const slots = path.join(root, 'srv/serving/slots');
  const served = () => fsp.realpath(path.join(root, 'srv/serving/current'));
  assert.equal(await served(), path.join(slots, fx.first!.id));
  assert.equal(await fsp.readFile(path.join(root, 'features.restored'), 'utf8'), 'features at v1\n');
  const reread = new Database(dbPath, { readonly: true });
  assert.deepEqual(reread.prepare('SELECT name FROM runs').all(), [{ name: 'v1' }]);
  reread.close();
  assert.ok(server.requests.some((r) => r.url === '/admin/drain'), 'deactivate ran');
  assert.ok(server.requests.some((r) => r.url === '/health'), 'the health check ran');
  assert.match(await fsp.readFile(path.join(root, 'activate.log'), 'utf8'), /activated/);

  await runBlock(blockAt('README.md', 'lifeboat rollback --to prod', 'sh'), fx, { cwd: etc });
  assert.equal(path.basename(await served()), fx.ids.I, 'rolled back to the latest point');
  const status = await runBlock(blockAt('README.md', 'lifeboat status --events 20'), fx, { cwd: etc });
  // The slots are listed by when each was last written, which differs with the history: in the order of their marks here.
  const slotsInOrder = (text: string) => text.replace(/^( {2}slots: )(.*)$/m, (_, lead: string, list: string) => lead + list.split(', ').sort((a, b) => a.replace(/^\S+/, '').localeCompare(b.replace(/^\S+/, ''))).join(', '));
  assertOutputShape('status', slotsInOrder(blockAt('README.md', 'newest backup 20261122-030000-457I, 42m ago (RPO)').text), slotsInOrder(status[0]!.stdout));
  covered.set(key(blockAt('README.md', 'newest backup 20261122-030000-457I, 42m ago (RPO)')), 'the output of status');
  const statusJson = JSON.parse(status.find((r) => r.line.includes('--json'))!.stdout);
  assertShape('status --json', await shapeAfter('(ops@gpu-7) ``` `--json` gives'), statusJson);
  for (const t of statusJson.targets) for (const e of t.events) assertShape('status --json events', await shapeAfter('slots: [{name, point, active, previous}], events}], events}`, each event'), e);
  const fo = await bash('lifeboat --json failover --to prod', { cwd: etc, env: fx.env });
  assert.equal(fo.code, 0, fo.stderr);
  // What README.md says appears only when it applies ("`reused`, `restore`, … and the fields after `durationMs` appear when they apply").
  const failoverShape = await shapeAfter('`failover --json` and `rollback --json` give');
  const readme = (await fsp.readFile(path.join(CHECKOUT, 'README.md'), 'utf8')).replace(/\s+/g, ' ');
  const whenApply = /`reused`.*? appear when they apply/.exec(readme)?.[0];
  assert.ok(whenApply, 'README.md says which fields of failover --json appear when they apply');
  const topKeys = [...(parseShape(failoverShape) as { keys: Map<string, Shape> }).keys.keys()];
  const conditional = [...whenApply.matchAll(/`([\w.]+)`/g)].map((m) => m[1]!).filter((k) => k !== 'durationMs');
  if (whenApply.includes('the fields after `durationMs`')) conditional.push(...topKeys.slice(topKeys.indexOf('durationMs') + 1));
  assertShape('failover --json', failoverShape, JSON.parse(fo.stdout), conditional);

  // A dry run names the state sources it would capture.
  const dry = await bash('lifeboat --json backup --dry-run', { cwd: etc, env: fx.env });
  assert.equal(dry.code, 0, dry.stderr);
  assertShape('backup --dry-run --json', await shapeAfter('(`would capture features: the output of …`; in `--json`,'), JSON.parse(dry.stdout));
  // What status says of a previous slot a restore left part-way, of a damaged record of switches, of a repository it cannot read.
  const previous = JSON.parse((await bash('lifeboat --json status', { cwd: etc, env: fx.env })).stdout).targets[0].previous.path as string;
  const pidMax = Number(await fsp.readFile('/proc/sys/kernel/pid_max', 'utf8'));
  const restoring = path.join(path.dirname(previous), `.${path.basename(previous)}.lifeboat-restoring`);
  await fsp.symlink(`${pidMax + 1}-${Math.floor(Date.now() / 1000)}`, restoring);
  const partWay = await bash('lifeboat --json status', { cwd: etc, env: fx.env });
  assert.equal(partWay.code, 1, partWay.stderr);
  assertShape('status --json of a previous slot restored part-way', `{previous: ${await shapeAfter('a `restore --delta` into it, killed while it rewrote it: its `.<slot>.lifeboat-restoring` lock is still there, its process gone) has')}}`, JSON.parse(partWay.stdout).targets[0]);
  await fsp.rm(restoring);
  const record = path.join(slots, '.lifeboat-target.json');
  const kept = await fsp.readFile(record);
  await fsp.writeFile(record, 'not json');
  const damaged = await bash('lifeboat --json status', { cwd: etc, env: fx.env });
  assert.equal(damaged.code, 1, damaged.stderr);
  assertShape('status --json of a damaged record', await shapeAfter('is said with why ('), JSON.parse(damaged.stdout).targets[0]);
  await fsp.writeFile(record, kept);
  const unread = await bash(`lifeboat --json --repo ${root}/backups/missing status`, { cwd: etc, env: fx.env });
  assert.equal(unread.code, 1, unread.stderr);
  assertShape('status --json without its repository', await shapeAfter('the age of its point, and `--json` has'), JSON.parse(unread.stdout));

  // The nightly cron lines of "Running from cron", from the same directory.
  const nightly = await runCron(blockAt('README.md', 'nightly incremental at 03:00'), fx);
  assert.deepEqual(nightly.map((r) => r.stdout + r.stderr), ['', ''], 'the nightly cron lines print nothing');
});

/** Runs the command of each line of a crontab block (its five time fields checked, then left out) with bash, as cron does. */
async function runCron(block: Block, fx: Fixture): Promise<Run[]> {
  covered.set(key(block), 'run');
  const runs: Run[] = [];
  for (const line of commandLines(block)) {
    const fields = line.split(/\s+/);
    for (const f of fields.slice(0, 5)) assert.match(f, /^(\*|\d+(-\d+)?)(,\d+(-\d+)?)*(\/\d+)?$/, `${key(block)}: a crontab time field: ${line}`);
    const command = line.replace(/^(\S+\s+){5}/, '');
    const ran = substitute(command, fx);
    const r = await bash(ran, { cwd: fx.root, env: fx.env });
    assert.equal(r.code, 0, `${key(block)}: ${line}\n  ran as ${ran}\n${r.stderr}`);
    runs.push({ line, ran, ...r });
  }
  return runs;
}

/** Runs a block whose `init` lines each get a fresh bucket; a block without one uses the bucket of the block before. */
async function runS3Block(block: Block, fx: Fixture, options: Parameters<typeof runBlock>[2]): Promise<Run[]> {
  if (commandLines(block).some((l) => /\binit\b/.test(l) && commandWord(l) === 'lifeboat')) fx.s3 = { server: s3!, bucket: await createTestBucket(s3!) };
  return runBlock(block, fx, options);
}

/** Checks a YAML block of the documents: it parses and validates, and `meaning` checks what its prose says of it. */
async function checkConfig(block: Block, fx: Fixture, meaning: (config: Awaited<ReturnType<typeof parseConfig>>) => void): Promise<void> {
  covered.set(key(block), 'parsed and validated');
  const text = substitute(block.text, fx).replace(/<ACCOUNT_ID>/g, '0123456789abcdef');
  meaning(await parseConfig(text, `${key(block)}.yaml`));
}

test('S3: the AWS, MinIO, Ceph and R2 examples of README.md and docs/S3.md run against the test S3 server, with the profiles docs/S3.md shows; their configs validate', async () => {
  const { fx, work } = await makeHost();
  fx.s3 = { server: s3!, bucket: await createTestBucket(s3!) };
  // No credentials in the environment: the profile files of docs/S3.md give them. The server stands for AWS.
  fx.env.AWS_ENDPOINT_URL_S3 = s3!.endpoint;
  const aws = path.join(fx.root, '.aws');
  await fsp.mkdir(aws);
  for (const [contains, file] of [['[profile backup]', 'config'], ['[backup]', 'credentials']] as const) {
    const ini = blockAt('docs/S3.md', contains, 'ini');
    covered.set(key(ini), 'written as the profile files the S3 examples run with');
    assert.equal(ini.text.split('\n')[0], `# ~/.aws/${file}`);
    // README.md's example exports the same profile: a name of its own there would need a profile file of its own.
    await fsp.writeFile(path.join(aws, file), `${substitute(ini.text, fx)}\n`);
  }
  const ca = path.join(fx.root, 'etc/ssl/internal-ca.pem');
  await fsp.mkdir(path.dirname(ca), { recursive: true });
  await fsp.copyFile(path.join(CHECKOUT, 'test/helpers/loopback-tls.crt'), ca);

  const readmeS3 = blockAt('README.md', '# MinIO, Ceph RGW, Cloudflare R2', 'sh');
  // Its last line has no --repo: the repository comes from the lifeboat.yaml shown after it ("or in lifeboat.yaml").
  const s3Config = blockAt('README.md', 'idleTimeout: 60s', 'yaml');
  await checkConfig(s3Config, fx, (c) => {
    assert.equal(c.s3?.concurrency, 4);
    assert.equal(c.s3?.timeout, '20s');
    assert.equal(c.s3?.forcePathStyle, true);
  });
  const s3Dir = path.join(fx.root, 's3-config');
  await runS3Block(readmeS3, fx, {
    cwd: (line) => (line.includes('--repo') ? work : s3Dir),
    before: {
      '--s3-path-style list': async () => {
        await fsp.mkdir(s3Dir, { recursive: true });
        await fsp.writeFile(path.join(s3Dir, 'lifeboat.yaml'), substitute(s3Config.text, fx));
      },
    },
  });

  // "Encryption": an encrypted repository on S3, with the password file the example names; then the key
  // commands of README.md and docs/SECURITY.md against it, each key id of the examples standing for the key
  // the line before added.
  const password = path.join(fx.root, 'etc/lifeboat/password');
  await fsp.mkdir(path.dirname(password), { recursive: true });
  await fsp.writeFile(password, 'the first password\n', { mode: 0o600 });
  // In the shell where README.md's S3 block exported its profile.
  fx.env.AWS_PROFILE = 'backup';
  await runS3Block(blockAt('README.md', 'init --encryption aes-256-gcm', 'sh'), fx, { cwd: work });
  const encrypted = { LIFEBOAT_REPO: `s3://${fx.s3!.bucket}/prod`, LIFEBOAT_PASSWORD_FILE: password };
  const keysBefore = {
    'lifeboat key remove': async () => {
      const r = await bash('lifeboat --json key list', { cwd: work, env: { ...fx.env, ...encrypted } });
      assert.equal(r.code, 0, r.stderr);
      const keys = JSON.parse(r.stdout) as { id: string; current: boolean }[];
      const other = keys.filter((k) => !k.current);
      assert.equal(other.length, 1, `one key besides the one in use: ${r.stdout}`);
      fx.keyId = other[0]!.id.slice(0, 6);
    },
  };
  for (const [file, contains, newPassword] of [['README.md', 'change the password in use', 'the second password'], ['docs/SECURITY.md', 'adds the new key, then removes the old one', 'the third password']] as const) {
    await fsp.writeFile(path.join(work, 'new.pw'), `${newPassword}\n`);
    const runs = await runBlock(blockAt(file, contains, 'sh'), fx, { cwd: work, env: encrypted, before: keysBefore });
    assert.match(runs[0]!.stdout, /^\* /m, 'key list marks the key in use with *');
    // `key passwd` changed the password in use: the file now holds the new one, and the old one opens nothing.
    const old = await bash('lifeboat key list', { cwd: work, env: { ...fx.env, ...encrypted } });
    assert.equal(old.code, 2, `the old password no longer opens the repository: ${old.stderr}`);
    await fsp.copyFile(path.join(work, 'new.pw'), password);
  }

  // docs/S3.md, in order: AWS with a profile, MinIO with keys in the environment, Ceph through AWS_ENDPOINT_URL_S3.
  delete fx.env.AWS_PROFILE;
  const doc = (contains: string, lang: string) => blockAt('docs/S3.md', contains, lang);
  await runS3Block(doc('aws s3 mb s3://ml-backups', 'sh'), fx, { cwd: work });
  await checkConfig(doc('  region: eu-west-1', 'yaml'), fx, (c) => assert.equal(c.s3?.region, 'eu-west-1'));
  await runS3Block(doc('AWS_PROFILE=backup lifeboat', 'sh'), fx, { cwd: work });
  await runS3Block(doc('mc alias set local', 'sh'), fx, { cwd: work });
  // The MinIO config, as lifeboat.yaml: the endpoint alone, path-style addressing by default.
  const minio = doc('  endpoint: http://127.0.0.1:9000', 'yaml');
  await checkConfig(minio, fx, (c) => assert.equal(c.s3?.endpoint, s3!.endpoint));
  const minioDir = path.join(fx.root, 'minio');
  await fsp.mkdir(minioDir);
  await fsp.writeFile(path.join(minioDir, 'lifeboat.yaml'), substitute(minio.text, fx));
  const listed = await bash('lifeboat list', { cwd: minioDir, env: { ...fx.env, ...s3!.env, AWS_ENDPOINT_URL_S3: '' } });
  assert.equal(listed.code, 0, `lifeboat list with the MinIO config of docs/S3.md: ${listed.stderr}`);
  await runS3Block(doc('export AWS_ENDPOINT_URL_S3=https://rgw.example.internal', 'sh'), fx, { cwd: work });
  await checkConfig(doc('r2.cloudflarestorage.com', 'yaml'), fx, (c) => assert.equal(c.s3?.region, 'auto'));
  await checkConfig(doc('# or AES256 for S3-managed keys', 'yaml'), fx, (c) => {
    assert.deepEqual([c.s3?.storageClass, c.s3?.sse, c.s3?.kmsKeyId], ['STANDARD_IA', 'aws:kms', 'alias/ml-backups']);
  });
  await checkConfig(doc('idleTimeout: 2m', 'yaml'), fx, (c) => {
    assert.deepEqual([parseDuration(c.s3!.timeout!), parseDuration(c.s3!.idleTimeout!)], [45_000, 120_000]);
  });
});

test("the walk-through's host: the drill step of README.md's GitHub Actions workflow (as examples/ has it), a failure's notification, JSON log lines, and the anchors of the targets config", async () => {
  assert.ok(host, 'the walk-through ran');
  const { fx, work, http: server } = host;
  // The workflow's drill step, run as the runner runs it (bash), with a smoke script at the path it names.
  const workflow = blockAt('README.md', 'mikepenz/action-junit-report', 'yaml');
  const { parse } = await import('yaml');
  const steps = parse(workflow.text.replace(/^ {6}/gm, '')) as { name: string; run?: string }[];
  const drillStep = steps.find((s) => s.run?.includes('lifeboat drill'))!.run!.trim();
  const file = parse(await fsp.readFile(path.join(CHECKOUT, 'examples/github/nightly-drill.yml'), 'utf8')) as { jobs: { drill: { steps: { run?: string }[] } } };
  assert.ok(file.jobs.drill.steps.some((s) => s.run?.replace(/\s+/g, ' ').trim() === drillStep.replace(/\s+/g, ' ')), 'examples/github/nightly-drill.yml runs the drill README.md shows');
  await fsp.mkdir(path.join(work, 'scripts'), { recursive: true });
  await fsp.writeFile(path.join(work, 'scripts/smoke.py'), 'import json, os, sys\njson.load(open(os.path.join(sys.argv[1], "config.json")))\nprint("smoke ok")\n');
  const drill = await bash(drillStep, { cwd: work, env: fx.env });
  assert.equal(drill.code, 0, drill.stderr);
  const report = JSON.parse(await fsp.readFile(path.join(work, 'drill.json'), 'utf8'));
  assert.equal(report.ok, true);
  assert.match(await fsp.readFile(path.join(work, 'drill-report.xml'), 'utf8'), /<testsuite[^>]*>[\s\S]*<testcase[^>]*name="[^"]*smoke/);

  // notify: { url, on: [failure, warning] } of the config: a failed run POSTs its event.
  const before = server.requests.length;
  const failed = await bash('lifeboat backup --source models=/nonexistent/models', { cwd: work, env: fx.env });
  assert.notEqual(failed.code, 0);
  const events = server.requests.slice(before).filter((r) => r.url === '/notify');
  assert.equal(events.length, 1, `one notification of the failed backup: ${failed.stderr}`);
  assertShape('the notification', await shapeAfter('as an unknown one in the config is):'), JSON.parse(events[0]!.body));
  assertShape('the notification warnings', `{warnings: [${await shapeAfter('`warnings` holds the first 20 as')}]}`, JSON.parse(events[0]!.body));

  // --log-format json: every line one object of the shape given; a note has its code, the error its exitCode and hint.
  const plain = path.join(fx.root, 'backups/log-format');
  assert.equal((await bash(`lifeboat --repo ${plain} init`, { cwd: work, env: fx.env })).code, 0);
  const shape = (await shapeAfter('`--log-format json` makes every log line on stderr one JSON object (')).replace(/"/g, '');
  const logLines = async (command: string, code: number) => {
    const r = await bash(`lifeboat --log-format json --repo ${plain} ${command}`, { cwd: work, env: fx.env });
    assert.equal(r.code, code, r.stderr);
    const lines = r.stderr.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    for (const l of lines) assert.deepEqual(shapeProblems(parseShape(shape), l), [], `a log line of the shape ${shape}: ${JSON.stringify(l)}`);
    return lines;
  };
  const notes = await logLines(`backup ${fx.root}/srv/models`, 0);
  assert.ok(notes.some((l) => l.code === 'type-fallback'), JSON.stringify(notes));
  const errors = await logLines('show 19990101-000000-000F', 2);
  assert.ok(errors.some((l) => l.level === 'error' && l.exitCode === 2 && typeof l.hint === 'string'), JSON.stringify(errors));

  // Anchors and merge keys: canary takes prod's health check, with slots and a link of its own.
  await checkConfig(blockAt('README.md', '<<: *serving', 'yaml'), fx, (c) => {
    assert.deepEqual(c.targets?.canary?.health, c.targets?.prod?.health);
    assert.deepEqual([c.targets?.canary?.slots, c.targets?.canary?.active], ['/srv/canary/slots', '/srv/canary/current'].map((p) => fx.root + p));
  });
});

test('examples/crontab and examples/systemd run as cron and systemd would run them, with the config of the walk-through in /etc/lifeboat: each exits 0, the cron lines print nothing, and each command leaves its metrics', async () => {
  const { fx } = await makeHost();
  const etc = path.join(fx.root, 'etc/lifeboat');
  await fsp.mkdir(etc, { recursive: true });
  // What the crontab's header says /etc/lifeboat holds: the walk-through's config (repository, sources, retention, notify) and the smoke test.
  await fsp.writeFile(path.join(etc, 'lifeboat.yaml'), substitute(blockAt('README.md', 'deployment: fraud-detector       # needed only').text, fx));
  await fsp.writeFile(path.join(etc, 'smoke.sh'), '#!/bin/sh\ntest -f "$LIFEBOAT_RESTORE_DIR/models/config.json"\n', { mode: 0o755 });
  assert.equal((await bash('lifeboat init', { cwd: etc, env: fx.env })).code, 0);
  const prom = path.join(fx.root, 'var/lib/node_exporter/textfile/lifeboat.prom');

  const crontab = (await fsp.readFile(path.join(CHECKOUT, 'examples/crontab'), 'utf8')).split('\n');
  const environment = crontab.filter((l) => /^[A-Z_]+=/.test(l));
  assert.deepEqual(environment.map((l) => l.split('=')[0]), ['MAILTO', 'PATH']);
  const jobs = crontab.filter((l) => /^[\d*]/.test(l));
  // Sunday's full first, as a new repository's first night would be; then a weekday's incremental and prune; then the drill.
  const byDay = [jobs.find((l) => /^\S+ \S+ \S+ \S+ 0 /.test(l)), jobs.find((l) => /^\S+ \S+ \S+ \S+ 1-6 /.test(l)), jobs.find((l) => l.includes(' drill '))];
  assert.equal(jobs.length, 3, jobs.join('\n'));
  for (const line of byDay) {
    assert.ok(line, `examples/crontab: a Sunday, a weekday and a drill line: ${jobs.join('\n')}`);
    const fields = line.split(/\s+/);
    for (const f of fields.slice(0, 5)) assert.match(f, /^(\*|\d+(-\d+)?)(,\d+(-\d+)?)*(\/\d+)?$/, `a crontab time field: ${line}`);
    // cron runs the line with sh, with the crontab's PATH (here: this checkout's lifeboat before it).
    const ran = substitute(line.replace(/^(\S+\s+){5}/, ''), fx);
    const r = await bash(ran, { cwd: fx.root, env: fx.env });
    assert.equal(r.code, 0, `examples/crontab: ${line}\n  ran as ${ran}\n${r.stderr}`);
    assert.equal(r.stdout + r.stderr, '', `examples/crontab: cron mails whatever a line prints: ${line}`);
  }
  const metrics = await fsp.readFile(prom, 'utf8');
  for (const command of ['backup', 'prune', 'verify', 'drill']) {
    assert.match(metrics, new RegExp(`^lifeboat_last_run_success\\{command="${command}",deployment="fraud-detector"\\} 1$`, 'm'), `the metrics of ${command}:\n${metrics}`);
  }

  // The service's commands, as systemd runs them: in its WorkingDirectory, with its Environment, the binary it names being this checkout's.
  const unit = await fsp.readFile(path.join(CHECKOUT, 'examples/systemd/lifeboat-backup.service'), 'utf8');
  const setting = (name: string) => [...unit.matchAll(new RegExp(`^${name}=(.*)$`, 'gm'))].map((m) => m[1]!);
  assert.deepEqual(setting('WorkingDirectory'), ['/etc/lifeboat']);
  const environmentOf = Object.fromEntries(setting('Environment').map((e) => substitute(e, fx).split(/=(.*)/s).slice(0, 2)));
  assert.deepEqual(Object.keys(environmentOf), ['LIFEBOAT_CONFIG']);
  const commands = [...setting('ExecStart'), ...setting('ExecStartPost')];
  assert.equal(commands.length, 2, unit);
  for (const command of commands) {
    assert.match(command, /^\/usr\/local\/bin\/lifeboat /, 'systemd needs the absolute path of the program');
    const ran = substitute(command.replace(/^\/usr\/local\/bin\/lifeboat /, 'lifeboat '), fx);
    const r = await bash(ran, { cwd: etc, env: { ...fx.env, ...environmentOf } });
    assert.equal(r.code, 0, `examples/systemd: ${command}\n  ran as ${ran}\n${r.stderr}`);
    // --log-format json: one object per journal line, for log shippers.
    for (const l of r.stderr.split('\n').filter(Boolean)) assert.doesNotThrow(() => JSON.parse(l), `a log line of ${command} that is not JSON: ${l}`);
  }
  const timer = await fsp.readFile(path.join(CHECKOUT, 'examples/systemd/lifeboat-backup.timer'), 'utf8');
  assert.match(timer, /^OnCalendar=\*-\*-\* 03:00:00$/m);
});

test("a restore that meets a damaged volume says what README.md shows: the file, the volume, and the newest point that needs nothing of it, with the command to restore it", async () => {
  const { fx, work } = await makeHost();
  const repo = path.join(fx.root, 'backups/fraud-detector');
  const ok = async (command: string) => {
    const r = await bash(command, { cwd: work, env: fx.env });
    assert.equal(r.code, 0, `${command}: ${r.stderr}`);
    return r;
  };
  await ok(`lifeboat --repo ${repo} init`);
  await ok('lifeboat backup --type full');
  await fsp.writeFile(path.join(fx.root, 'srv/models/weights.bin'), Buffer.alloc(200_000, 9));
  const incr = JSON.parse((await ok('lifeboat --json backup')).stdout) as { id: string };
  const volume = path.join(repo, 'data', incr.id, 'v000001.tar');
  const bytes = await fsp.readFile(volume);
  const at = bytes.indexOf(Buffer.alloc(4096, 9));
  assert.ok(at > 0, 'the new weights are in the incremental volume');
  bytes[at + 100] = 0;
  await fsp.writeFile(volume, bytes);
  const example = blockAt('README.md', 'does not match its checksum', 'text');
  covered.set(key(example), 'the error of a restore of a damaged volume');
  const r = await bash(`lifeboat restore latest --target ${fx.root}/srv/restore`, { cwd: work, env: fx.env });
  assert.equal(r.code, 3, r.stderr);
  assertOutputShape('the error of a restore of a damaged volume', example.text, r.stderr);
});

test('the metrics a backup and a drill write are those README.md shows, line by line', async () => {
  const { fx, work } = await makeHost();
  const example = blockAt('README.md', 'lifeboat_last_run_timestamp_seconds', 'text');
  covered.set(key(example), 'the metrics of a backup and a drill');
  const prom = path.join(fx.root, 'metrics/lifeboat.prom');
  // A repository and runs that name no deployment, as the example's labels are.
  const repo = path.join(fx.root, 'backups/plain');
  for (const command of [`init`, `backup ${fx.root}/srv/models --metrics-file ${prom}`, `drill --metrics-file ${prom}`]) {
    const r = await bash(`lifeboat --repo ${repo} ${command}`, { cwd: fx.root, env: fx.env });
    assert.equal(r.code, 0, `${command}: ${r.stderr}`);
  }
  // The order of samples means nothing to Prometheus: each line of the example has its like somewhere in the file.
  assertOutputShape('the metrics file', example.text, (await fsp.readFile(prom, 'utf8')).split('\n').filter((l) => !l.startsWith('#')).join('\n'), { anyOrder: true });
});

test("docs/FORMAT.md's check of a document's checksum with head, sha256sum and jq gives the checksum the document holds", { skip: hasJq ? false : 'jq is not installed' }, async () => {
  const { fx, work } = await makeHost();
  const repo = path.join(fx.root, 'backups/fraud-detector');
  for (const command of [`--repo ${repo} init`, 'backup --type full']) assert.equal((await bash(`lifeboat ${command}`, { cwd: work, env: fx.env })).code, 0);
  const point = (await fsp.readdir(path.join(repo, 'points')))[0]!.replace(/\.json$/, '');
  const block = blockAt('docs/FORMAT.md', 'head -c -87', 'sh');
  covered.set(key(block), 'run with REPO and POINT set');
  const r = await bash(block.text, { cwd: fx.root, env: { ...fx.env, REPO: repo, POINT: point } });
  assert.equal(r.code, 0, r.stderr);
  const [sum, checksum] = r.stdout.trim().split('\n');
  assert.match(checksum!, /^sha256:[0-9a-f]{64}$/);
  assert.equal(`sha256:${sum!.split(/\s+/)[0]}`, checksum);
});

test('"Global options" in README.md names every option the program takes before its command', async () => {
  const { buildProgram } = await import('../src/cli/main.js');
  const { PassThrough } = await import('node:stream');
  const program = buildProgram({ stdout: new PassThrough(), stderr: new PassThrough(), env: {}, cwd: process.cwd() }, new AbortController().signal, { printed: false });
  const readme = await fsp.readFile(path.join(CHECKOUT, 'README.md'), 'utf8');
  const paragraph = /^Global options: [\s\S]*?\n\n/m.exec(readme)?.[0];
  assert.ok(paragraph, 'README.md has a "Global options:" paragraph');
  const missing = program.options.map((o) => o.long!).filter((flag) => !['--version', '--help'].includes(flag) && !paragraph.includes(`\`${flag}`));
  assert.deepEqual(missing, [], 'global options README.md does not name');
});

/**
 * Exit codes README.md gives for what it describes, each made to happen: the passage (which must still be
 * there, word for word), the command, the code. `{root}` is the walk-through's scratch root.
 */
const EXIT_CLAIMS: { says: string; run: string; code: number; config?: string }[] = [
  { says: 'A time without a zone, or a date alone, is refused (exit 2)', run: 'show 2026-11-20T03:00', code: 2 },
  { says: 'A time without a zone, or a date alone, is refused (exit 2)', run: 'show 2026-11-20', code: 2 },
  { says: 'So is a day the month lacks (`2026-11-31T03:00Z`)', run: 'show 2026-11-31T03:00Z', code: 2 },
  { says: '`file://backups` names a host, not a relative directory, and is refused (exit 2)', run: '--repo file://backups list', code: 2 },
  { says: 'So are `s3:/bucket/prefix` and `file:/backups` (a slash short)', run: '--repo s3:/bucket/prefix list', code: 2 },
  { says: 'So are `s3:/bucket/prefix` and `file:/backups` (a slash short)', run: '--repo file:/backups list', code: 2 },
  { says: 'Where a repository already is, it says so and leaves it as it was (exit 2)', run: 'init', code: 2 },
  { says: "an empty one (a script's unset variable) is refused (exit 2)", run: 'backup ""', code: 2 },
  { says: 'A pattern that starts with `!` (in `.gitignore`, re-including what an earlier pattern left out) is refused with exit 2', run: "backup --exclude '!x.tmp'", code: 2 },
  { says: '`--delete-excluded` (with `--delta` only, else exit 2)', run: 'restore latest --target {root}/srv/claims --delete-excluded', code: 2 },
  { says: '`--force` with `--include` is refused (exit 2)', run: 'restore latest --target {root}/srv/restore --force --include models', code: 2 },
  { says: '`--work-dir` without `--state` is exit 2', run: 'restore latest --target {root}/srv/claims --work-dir {root}/scratch', code: 2 },
  { says: 'a pattern that matches nothing in the point is an error (exit 2', run: "restore latest --target {root}/srv/claims --include 'models/nothing-here'", code: 2 },
  { says: 'A target that is a symbolic link is refused (exit 2)', run: 'restore latest --target {root}/srv/link-target', code: 2 },
  { says: 'A deployment given that has no points where others have some', run: 'prune --deployment fraud-detectr --keep-full 1', code: 2 },
  { says: '5 when the smoke command failed or an objective was missed', run: 'drill --rpo 1ms', code: 5 },
  { says: '5 when the smoke command failed or an objective was missed', run: "drill --smoke 'exit 1'", code: 5 },
  { says: '`--events abc: expected a whole number of at least 0`', run: 'status --events abc', code: 2 },
  { says: '`storageClass: GLACIER` or `DEEP_ARCHIVE` is refused (exit 2)', run: 'list', config: 'repository: s3://ml-backups/x\ns3:\n  storageClass: GLACIER\n', code: 2 },
  { says: '`timeout: 60` is refused, naming the key (write `60s`)', run: 'list', config: 'repository: ./repo\ns3:\n  timeout: 60\n', code: 2 },
  { says: 'a key left with nothing after it, its lines commented out: `retention: is empty`', run: 'list', config: 'repository: ./repo\nretention:\n  # keepFull: 4\n', code: 2 },
];

test('the exit codes README.md gives for situations it describes, made to happen', async () => {
  assert.ok(host, 'the walk-through ran');
  const { fx, work } = host;
  const readme = (await fsp.readFile(path.join(CHECKOUT, 'README.md'), 'utf8')).replace(/\s+/g, ' ');
  await fsp.symlink(path.join(fx.root, 'srv/restore'), path.join(fx.root, 'srv/link-target'));
  for (const claim of EXIT_CLAIMS) {
    assert.ok(readme.includes(claim.says), `README.md still says: ${claim.says}`);
    let cwd = work;
    if (claim.config) {
      cwd = await fsp.mkdtemp(path.join(fx.root, 'claim-'));
      await fsp.writeFile(path.join(cwd, 'lifeboat.yaml'), claim.config);
    }
    const run = claim.run.replace(/\{root\}/g, fx.root);
    const r = await bash(`lifeboat ${run}`, { cwd, env: fx.env });
    assert.equal(r.code, claim.code, `"${claim.says}": lifeboat ${run}\n${r.stderr}`);
    assert.match(r.stderr, /^lifeboat: /m, 'one sentence saying what failed');
  }
});

test("every file of the walk-through's repository has its place in docs/FORMAT.md's layout", async () => {
  assert.ok(host, 'the walk-through ran');
  const layout = blockAt('docs/FORMAT.md', 'config.json                         the repository', 'text');
  covered.set(key(layout), "checked against the walk-through's repository");
  const patterns = layout.text.split('\n').map((l) => l.split(/\s{2,}/)[0]!).filter((p) => p !== '');
  const regexes = patterns.map((p) => new RegExp(`^${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/<[^>]+>/g, '[^/]+').replace(/v000001|v000002/, 'v\\d{6}')}$`));
  const repo = path.join(host.fx.root, 'backups/fraud-detector');
  const files: string[] = [];
  const walk = async (dir: string, rel: string) => {
    for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(path.join(dir, e.name), r);
      else files.push(r);
    }
  };
  await walk(repo, '');
  assert.ok(files.some((f) => f.startsWith('journal/')) && files.some((f) => f.startsWith('ledger/')), files.join(' '));
  assert.deepEqual(files.filter((f) => !regexes.some((re) => re.test(f))), [], `files docs/FORMAT.md's layout (${patterns.join(', ')}) does not place`);
});

/** The fields of a table of docs/FORMAT.md under `heading` (up to the next blank line after it): each row's names, whether optional, and its shape. */
async function formatTable(heading: string): Promise<{ names: string[]; optional: boolean; shape?: string }[]> {
  const doc = await fsp.readFile(path.join(CHECKOUT, 'docs/FORMAT.md'), 'utf8');
  const at = doc.indexOf(heading);
  assert.ok(at >= 0, `docs/FORMAT.md has ${heading}`);
  const table = /\| field \| meaning \|\n\| --- \| --- \|\n((?:\|.*\n)+)/.exec(doc.slice(at))![1]!;
  return table
    .trim()
    .split('\n')
    .map((row) => {
      const [, field, meaning] = row.split(/ \| |^\| | \|$/);
      const names = [...field!.matchAll(/`([\w]+)(\[\])?`/g)].map((m) => m[1]!);
      const given = /^(?:optional: )?`(\[?\{[^`]*\}\]?)`/.exec(meaning!.trim())?.[1];
      // `sources[]` is a list of what the shape gives.
      const shape = given && field!.includes('[]`') ? `[${given}]` : given;
      return { names, optional: /^optional|\(absent in|only when/.test(meaning!.trim()) || /absent in manifests|absent means/.test(meaning!), shape };
    });
}

test("the repository's documents have the fields docs/FORMAT.md's tables give them, and no field those tables leave out", async () => {
  assert.ok(host, 'the walk-through ran');
  const repo = path.join(host.fx.root, 'backups/fraud-detector');
  const read = async (p: string) => JSON.parse(await fsp.readFile(path.join(repo, p), 'utf8')) as Record<string, unknown>;
  const check = async (what: string, heading: string, doc: Record<string, unknown>, extraKeys: string[] = [], required?: string[]) => {
    const rows = await formatTable(heading);
    const documented = new Set(rows.flatMap((r) => r.names));
    assert.deepEqual(Object.keys(doc).filter((k) => !documented.has(k) && !extraKeys.includes(k)), [], `${what}: fields docs/FORMAT.md does not give`);
    for (const row of rows) {
      for (const name of row.names) if (required ? required.includes(name) : !row.optional) assert.ok(name in doc, `${what}: ${name}, which docs/FORMAT.md gives, is missing`);
      if (row.shape && row.names.length === 1 && row.names[0]! in doc) {
        // `restore?` and `exclude?`: fields that appear when they apply.
        const optional = [...row.shape.matchAll(/(\w+)\?/g)].map((m) => m[1]!);
        assertShape(`${what}: ${row.names[0]}`, row.shape.replace(/\?/g, '').replace(/ or /g, '|'), doc[row.names[0]!], optional);
      }
    }
  };
  await check('config.json', '### config.json', await read('config.json'), ['checksum']);
  const points = (await fsp.readdir(path.join(repo, 'points'))).sort();
  for (const p of points) {
    const manifest = await read(`points/${p}`);
    await check(`points/${p}`, '### points/&lt;id&gt;.json', manifest, ['checksum']);
    // An entry's fields depend on its type, as the table's meanings say: `(files)`, `(symlinks)`.
    const byType: Record<string, string[]> = { file: ['size', 'sha256', 'ref'], symlink: ['target'], dir: [] };
    for (const entry of manifest.entries as Record<string, unknown>[]) {
      await check(`an entry of points/${p}`, 'Each entry:', entry, [], ['source', 'path', 'type', 'mode', 'mtimeNs', ...byType[entry.type as string]!]);
    }
    await check(`summaries/${p}`, '### summaries/&lt;id&gt;.json', await read(`summaries/${p}`), ['checksum']);
  }
});

/** The `{a, b?, c: {…}}` shape docs/FORMAT.md gives a document in the passage that holds `contains`, parsed into keys (`?` optional) and nested shapes. */
async function braceShape(contains: string): Promise<string> {
  const doc = await fsp.readFile(path.join(CHECKOUT, 'docs/FORMAT.md'), 'utf8');
  const at = doc.indexOf(contains);
  assert.ok(at >= 0, `docs/FORMAT.md has ${contains}`);
  const open = doc.indexOf('{', at);
  let depth = 0;
  for (let i = open; i < doc.length; i++) {
    if (doc[i] === '{') depth++;
    if (doc[i] === '}' && --depth === 0) return doc.slice(open, i + 1);
  }
  assert.fail(`an unclosed shape after ${contains} in docs/FORMAT.md`);
}

/** The keys of a document that its shape in docs/FORMAT.md does not give, and those it gives (not optional) that the document lacks, nested shapes included. */
function keysAgainstShape(what: string, shape: string, doc: unknown, extraKeys: string[] = []): void {
  assert.ok(doc && typeof doc === 'object' && !Array.isArray(doc), `${what}: an object`);
  const inner = shape.trim().slice(1, -1);
  const fields: { name: string; optional: boolean; nested?: string; value?: unknown }[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i <= inner.length; i++) {
    const c = inner[i];
    if (c === '{') depth++;
    if (c === '}') depth--;
    if ((c === ',' && depth === 0) || i === inner.length) {
      const part = inner.slice(start, i).trim();
      start = i + 1;
      const m = /^([\w<>]+)(\?)?(?::\s*(\{.*\})|:\s*("[^"]*"|\d+))?$/s.exec(part);
      assert.ok(m, `${what}: a field of docs/FORMAT.md's shape ${shape}: ${part}`);
      fields.push({ name: m[1]!, optional: m[2] === '?', nested: m[3], value: m[4] === undefined ? undefined : JSON.parse(m[4]) });
    }
  }
  const record = doc as Record<string, unknown>;
  // `{<key>: {…}}`: a map whose every value has the nested shape.
  if (fields.length === 1 && /^<\w+>$/.test(fields[0]!.name)) {
    for (const [k, v] of Object.entries(record)) keysAgainstShape(`${what}.${k}`, fields[0]!.nested!, v);
    return;
  }
  const named = new Set(fields.map((f) => f.name));
  assert.deepEqual(Object.keys(record).filter((k) => !named.has(k) && !extraKeys.includes(k)), [], `${what}: fields docs/FORMAT.md's ${shape} does not give`);
  for (const f of fields) {
    if (!(f.name in record)) {
      assert.ok(f.optional, `${what}: ${f.name}, which docs/FORMAT.md's ${shape} gives, is missing`);
      continue;
    }
    if (f.nested) keysAgainstShape(`${what}.${f.name}`, f.nested, record[f.name]);
    if (f.value !== undefined) assert.equal(record[f.name], f.value, `${what}: ${f.name}, which docs/FORMAT.md gives as ${JSON.stringify(f.value)}`);
  }
}

test("the lock, pins, the ledger and the journal have the fields docs/FORMAT.md's shapes give them, and no other", async () => {
  assert.ok(host, 'the walk-through ran');
  const { fx } = host;
  const repo = path.join(fx.root, 'backups/fraud-detector');
  const inRepo = async (dir: string) => (await fsp.readdir(path.join(repo, dir))).filter((f) => f.endsWith('.json'));
  const read = async (p: string) => JSON.parse(await fsp.readFile(p, 'utf8')) as unknown;
  // The walk-through unpins what it pinned: a pin of its own, taken back after.
  const work = host.work;
  const pin = await bash(`lifeboat pin ${fx.first!.id} --reason "a shape to check"`, { cwd: work, env: fx.env });
  assert.equal(pin.code, 0, pin.stderr);
  const pins = await inRepo('pins');
  assert.equal(pins.length, 1, pins.join(', '));
  keysAgainstShape(`pins/${pins[0]}`, await braceShape('pins/<id>.json'), await read(path.join(repo, 'pins', pins[0]!)), ['checksum']);
  assert.equal((await bash(`lifeboat unpin ${fx.first!.id}`, { cwd: work, env: fx.env })).code, 0);
  keysAgainstShape('ledger/verified.json', await braceShape('ledger/verified.json'), await read(path.join(repo, 'ledger/verified.json')), ['checksum']);
  const events = await inRepo('journal');
  assert.ok(events.length > 0, "the walk-through's journal");
  for (const e of events) keysAgainstShape(`journal/${e}`, await braceShape('journal/<time>-<random>.json'), await read(path.join(repo, 'journal', e)), ['checksum']);

  // The lock exists while a backup holds it: a command source of the backup copies it out.
  const other = path.join(fx.root, 'backups/lock-shape');
  const copy = path.join(fx.root, 'lock-copy.json');
  const config = path.join(fx.root, 'lock-shape.yaml');
  await fsp.writeFile(config, `repository: ${other}\nsources:\n  lock: { command: "cp ${other}/locks/lock.json ${copy} && echo copied" }\n`);
  for (const command of ['init', 'backup']) {
    const r = await bash(`lifeboat --config ${config} ${command}`, { cwd: fx.root, env: fx.env });
    assert.equal(r.code, 0, `${command}: ${r.stderr}`);
  }
  const lock = (await braceShape('`locks/lock.json` is')).replace(/}$/, ', removing?}');
  keysAgainstShape('locks/lock.json', lock, await read(copy), ['checksum']);
});

test("docs/S3.md's JSON documents parse, and its IAM policy grants what README.md says lifeboat needs", async () => {
  for (const block of ALL_BLOCKS.filter((b) => b.lang === 'json')) assert.doesNotThrow(() => JSON.parse(block.text), `${key(block)} is JSON`);
  const policy = JSON.parse(blockAt('docs/S3.md', '"LifeboatKmsKey"', 'json').text) as { Statement: { Action: string[] }[] };
  const granted = new Set(policy.Statement.flatMap((st) => st.Action));
  const readme = (await fsp.readFile(path.join(CHECKOUT, 'README.md'), 'utf8')).replace(/\s+/g, ' ');
  const sentence = /The IAM policy lifeboat needs is: [^;]*\)/.exec(readme)?.[0];
  assert.ok(sentence, 'README.md says which permissions lifeboat needs');
  const needed = new Set([...sentence.matchAll(/`((?:s3|kms):\w+)`/g)].map((m) => m[1]!));
  assert.deepEqual([...granted].sort(), [...needed].sort());
});

test('"status": a source directory part-way through a restore --in-place is in --json as README.md shows', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.mkdir(path.join(work, 'srv', 'models'), { recursive: true });
  await fsp.writeFile(path.join(work, 'srv', 'models', 'w.bin'), 'weights');
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 'repository: ./repo\nsources:\n  models: ./srv/models\n');
  assert.equal((await lifeboat(['init'], { cwd: work })).code, 0);
  const backup = await lifeboat(['--json', 'backup'], { cwd: work });
  assert.equal(backup.code, 0, backup.stderr);
  // What a restore --in-place killed as its moves began leaves beside the directory (docs/FORMAT.md).
  const staging = path.join(work, 'srv', '.models.lifeboat-staging-1-1-0badf00d');
  const record = { point: backup.json().id, phase: 'moving', moves: [{ target: path.join(work, 'srv', 'models'), dev: '0', ino: '0', staging, replaced: `${staging}-replaced` }] };
  await fsp.writeFile(path.join(work, 'srv', '.models.lifeboat-moving'), JSON.stringify(record));
  const status = await lifeboat(['--json', 'status'], { cwd: work });
  assert.equal(status.code, 1, status.stderr);
  assertShape('status --json of a directory part-way through a restore --in-place', await shapeAfter('is said too, with the point and the command that finishes it'), status.json());
});

test('every fenced block of the documents has a language tag and is run, checked, or listed as not runnable with why; every JSON shape of README.md is checked', async () => {
  if (!hasJq) covered.set(key(blockAt('docs/FORMAT.md', 'head -c -87', 'sh')), 'skipped: jq is not installed');
  const untagged = ALL_BLOCKS.filter((b) => b.lang === '').map(key);
  assert.deepEqual(untagged, [], 'blocks without a language tag');
  const missed = ALL_BLOCKS.filter((b) => !covered.has(key(b)) && !notRunnable(b)).map((b) => `${key(b)} (${b.lang}): ${b.text.split('\n')[0]}`);
  assert.deepEqual(missed, [], 'blocks no test ran or checked and NOT_RUNNABLE does not list');
  for (const n of NOT_RUNNABLE) assert.ok(ALL_BLOCKS.some((b) => b.file === n.file && b.text.includes(n.contains)), `NOT_RUNNABLE's ${n.file} block with ${JSON.stringify(n.contains)} is still there`);
  const shapes = (await inlineShapes('README.md')).filter((s) => !NOT_SHAPES[s]);
  const unchecked = shapes.filter((s) => !checkedShapes.has(s));
  assert.deepEqual(unchecked, [], "README.md's JSON shapes no test checked");
});
