/**
 * `npm run demo`: a guided tour of lifeboat on a small generated model
 * deployment. It runs the real CLI as a child process for every step, prints
 * each command and its output, and checks a restore of an older point byte for
 * byte against a copy of the tree taken when that point was backed up.
 * Exits non-zero if anything fails.
 */
import { spawnSync } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { compareTrees, generateDeployment, mutateDeployment, type Mutation } from '../fixtures/generate.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = path.join(ROOT, 'bin', 'lifeboat.js');
const DEMO = path.join(ROOT, '.demo');
const REPO = 'repo';
const SOURCES = ['deployment/models', 'deployment/serving'];
const DEPLOYED_AT = new Date('2025-06-01T00:00:00Z');

const color = process.stdout.isTTY && !process.env.NO_COLOR;
const bold = (s: string) => (color ? `\x1b[1m${s}\x1b[22m` : s);
const dim = (s: string) => (color ? `\x1b[2m${s}\x1b[22m` : s);
const green = (s: string) => (color ? `\x1b[32m${s}\x1b[39m` : s);

let stepNo = 0;
function step(title: string): void {
  stepNo++;
  console.log(`\n${bold(`${stepNo}. ${title}`)}`);
}

function indent(text: string): string {
  return text
    .replace(/\s+$/, '')
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n');
}

class DemoFailure extends Error {}

/** Runs `lifeboat --repo repo ARGS` in the demo directory, prints it and its output; fails on a non-zero exit. */
function lifeboat(args: string[], options: { quiet?: boolean } = {}): string {
  const argv = ['--repo', REPO, ...args];
  if (!options.quiet) console.log(dim(`  $ lifeboat ${argv.join(' ')}`));
  const r = spawnSync(process.execPath, [BIN, ...argv], {
    cwd: DEMO,
    encoding: 'utf8',
    env: { ...process.env, NO_COLOR: '1' },
    maxBuffer: 64 << 20,
  });
  if (r.error) throw r.error;
  const out = `${r.stdout ?? ''}${r.stderr ? r.stderr : ''}`;
  if (!options.quiet && out.trim()) console.log(indent(out));
  if (r.status !== 0) {
    if (options.quiet && out.trim()) console.log(indent(out));
    throw new DemoFailure(`lifeboat ${argv.join(' ')} exited with ${r.status ?? r.signal}`);
  }
  return r.stdout;
}

interface BackupJson {
  id: string;
  type: string;
  files: number;
  added: number;
  changed: number;
  removed: number;
  storedBytes: number;
}

function backup(type: 'full' | 'incr' | 'diff'): BackupJson {
  const out = lifeboat(['backup', ...SOURCES, '--type', type, '--json']);
  const result = JSON.parse(out) as BackupJson;
  if (result.type !== type) throw new DemoFailure(`asked for a ${type} backup, got ${result.type}`);
  return result;
}

/** Keeps a copy of the tree as it is now, to check a later restore of this point against. */
async function snapshot(id: string): Promise<string> {
  const dir = path.join(DEMO, 'snapshots', id);
  await fsp.cp(path.join(DEMO, 'deployment'), dir, { recursive: true, preserveTimestamps: true });
  console.log(`  kept a copy of the tree as backed up in ${path.relative(DEMO, dir)}/`);
  return dir;
}

function describe(m: Mutation): void {
  for (const p of m.rewritten) console.log(`  rewrote  ${p} (same size, new weights)`);
  for (const p of m.touched) console.log(`  changed  ${p}`);
  for (const p of m.added) console.log(`  added    ${p}`);
  for (const p of m.removed) console.log(`  removed  ${p}`);
}

async function checkRestore(restored: string, expected: string, label: string): Promise<void> {
  let files = 0;
  let bytes = 0;
  const problems: string[] = [];
  for (const source of SOURCES.map((s) => path.basename(s))) {
    const c = await compareTrees(path.join(expected, source), path.join(restored, source));
    files += c.files;
    bytes += c.bytes;
    problems.push(...c.problems.map((p) => `${source}/${p}`));
  }
  const extra = (await fsp.readdir(restored)).filter((n) => !SOURCES.some((s) => path.basename(s) === n));
  problems.push(...extra.map((n) => `unexpected in the target: ${n}`));
  if (problems.length > 0) {
    for (const p of problems.slice(0, 20)) console.log(`    ${p}`);
    throw new DemoFailure(`${label}: ${problems.length} difference(s) between the restore and the tree it should reproduce`);
  }
  console.log(green(`  ✓ ${label}: ${files} files, ${bytes} bytes, identical byte for byte (contents, modes, layout)`));
}

async function main(): Promise<void> {
  console.log(bold('lifeboat demo: back up a model deployment, change it, and bring back an older point'));
  console.log(dim(`  working directory: .demo/ (wiped first); lifeboat = node bin/lifeboat.js`));
  await fsp.rm(DEMO, { recursive: true, force: true });
  await fsp.mkdir(DEMO, { recursive: true });

  step('Generate a small model deployment');
  const d = await generateDeployment(path.join(DEMO, 'deployment'), {
    seed: 2026,
    shards: 2,
    shardBytes: 1536 << 10,
    onnxBytes: 768 << 10,
    smallFiles: 60,
    // As if written a while ago, like a real deployment: files modified just before a
    // backup are deliberately read again by the next one, which would blur the demo.
    mtime: DEPLOYED_AT,
  });
  console.log(`  deployment/: ${d.files} files, ${(d.bytes / 2 ** 20).toFixed(1)} MiB`);
  console.log(`    models/${d.modelName}/: ${d.shards.length} BF16 safetensors shards, index, config, tokenizer`);
  console.log(`    ${d.onnx}`);
  console.log(`    serving/: Triton configs, live-version, routing, ${d.smallFiles.length} configs, feature files and logs`);
  console.log('  the two sources backed up are deployment/models (named "models") and deployment/serving ("serving")');

  step('Create a repository');
  lifeboat(['init']);

  step('Full backup');
  const full = backup('full');
  const fullCopy = await snapshot(full.id);

  step('Change a few files, then an incremental backup');
  describe(await mutateDeployment(path.join(DEMO, 'deployment'), { seed: 1, touch: 3 }));
  const incr = backup('incr');
  if (incr.changed !== 3 || incr.added !== 0 || incr.removed !== 0) throw new DemoFailure(`expected 3 changed files in the incremental, got ${JSON.stringify(incr)}`);
  const incrCopy = await snapshot(incr.id);

  step('Change more (rewrite a shard, edit, add and remove files), then a differential backup');
  describe(await mutateDeployment(path.join(DEMO, 'deployment'), { seed: 2, rewriteShard: 0, touch: 2, add: 1, remove: 1 }));
  const diff = backup('diff');
  console.log(`  the differential holds everything changed since the full ${full.id}, so it does not depend on the incremental`);

  step('List the backup points');
  lifeboat(['list']);

  step('What changed between the full and the differential');
  lifeboat(['diff', full.id, diff.id]);

  step('Verify the repository, reading back every byte');
  lifeboat(['verify', '--read-data']);

  step(`Restore the incremental point ${incr.id} (not the latest) and check it`);
  const target = `restore-${incr.id}`;
  lifeboat(['restore', incr.id, '--target', target]);
  await checkRestore(path.join(DEMO, target), incrCopy, `restore of ${incr.id}`);
  const current = await compareTrees(path.join(incrCopy, 'models'), path.join(DEMO, 'deployment', 'models'));
  console.log(`  (the live tree has moved on since: ${current.problems.length} difference(s) in models/ alone, as expected)`);

  step(`Bring that directory up to the latest point with --delta`);
  lifeboat(['restore', 'latest', '--target', target, '--delta']);
  await checkRestore(path.join(DEMO, target), path.join(DEMO, 'deployment'), 'delta restore of latest');

  step(`Restore the full backup ${full.id} too`);
  lifeboat(['restore', full.id, '--target', `restore-${full.id}`]);
  await checkRestore(path.join(DEMO, `restore-${full.id}`), fullCopy, `restore of ${full.id}`);

  console.log(`\n${green(bold('demo finished: every step succeeded'))} ${dim('(everything it made is in .demo/)')}`);
}

main().catch((err: unknown) => {
  console.error(`\ndemo failed: ${err instanceof Error ? err.message : String(err)}`);
  if (!(err instanceof DemoFailure) && err instanceof Error && err.stack) console.error(err.stack);
  process.exitCode = 1;
});
