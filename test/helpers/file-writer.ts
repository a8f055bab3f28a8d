/**
 * A process that keeps changing a deployment's files at random, as a live
 * server and its operators do, and logs every state it leaves a path in.
 * Usage: node file-writer.js WORK SEED LOG. It makes WORK/models (a files
 * source), WORK/state/counter.txt (read by a command source) and WORK/tmp
 * (where files are staged before a rename), prints `ready` once the first
 * tree is written, and runs until SIGTERM, then prints `stopped`.
 *
 * Each line of LOG is one state of one path (`p`, relative to WORK):
 * `{p, h, s, t0, t1}` for a file (`h` its SHA-256, `s` its size, `h` null when
 * it is gone), `{p, link, t0, t1}` for a symbolic link (`link` null when gone).
 * The state came to be at some time between `t0` and `t1` (ms since the epoch);
 * every state a path passes through is logged, those between the write calls
 * of one rewrite too, so a copy that matches none of them is a mix no reader
 * could have seen whole.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { seededRandom } from './data.js';

const [work, seedArg, logFile] = process.argv.slice(2);
if (!work || !seedArg || !logFile) throw new Error('usage: file-writer WORK SEED LOG');
const rand = seededRandom(Number(seedArg));
const log = fs.openSync(logFile, 'a');
const models = path.join(work, 'models');
const tmp = path.join(work, 'tmp');
/** What each file holds, by path relative to WORK. */
const files = new Map<string, Buffer>();
let version = 0;
let counter = 0;
let made = 0;

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const abs = (p: string) => path.join(work, p);
const int = (n: number) => Math.floor(rand() * n);
const pick = <T>(items: readonly T[]): T => items[int(items.length)]!;

function record(line: object): void {
  fs.writeSync(log, `${JSON.stringify(line)}\n`);
}

/** The names of files with several (hard links, as versions that share unchanged shards have): one set for all names of one file. */
const names = new Map<string, Set<string>>();

/** `p` becomes a name of its own file (replaced by a rename, removed). */
function detach(p: string): void {
  names.get(p)?.delete(p);
  names.delete(p);
}

/** Runs `change` (the system calls that make one new state) and logs what `p`, and every other name of its file, holds after it. */
function fileState(p: string, content: Buffer | undefined, change: () => void): void {
  const t0 = Date.now();
  change();
  const t1 = Date.now();
  for (const q of content ? [...(names.get(p) ?? [p])] : [p]) {
    if (content) files.set(q, content);
    else files.delete(q);
    record({ p: q, h: content ? sha(content) : null, s: content?.length ?? 0, t0, t1 });
  }
}

function linkState(p: string, target: string | null, change: () => void): void {
  const t0 = Date.now();
  change();
  record({ p, link: target, t0, t1: Date.now() });
}

/** Sizes on either side of the 1 MiB a backup reads small files whole up to. */
function size(): number {
  const r = rand();
  return r < 0.1 ? 0 : r < 0.8 ? 1 + int(64 << 10) : r < 0.95 ? (1 << 20) - 4 + int(8) : (1 << 20) + int(2 << 20);
}

function bytes(n: number): Buffer {
  return randomBytes(n);
}

/** A new file, written with O_TRUNC and one write: empty for a moment, then whole. */
function create(p: string, content: Buffer): void {
  let fd = -1;
  fileState(p, Buffer.alloc(0), () => (fd = fs.openSync(abs(p), 'w')));
  fileState(p, content, () => {
    fs.writeSync(fd, content, 0, content.length, 0);
    fs.closeSync(fd);
  });
}

/** A whole new content put in place by a rename, as editors and deploy tools do. */
function replace(p: string, content: Buffer): void {
  const staged = path.join(tmp, `staged-${made++}`);
  fs.writeFileSync(staged, content);
  detach(p);
  fileState(p, content, () => fs.renameSync(staged, abs(p)));
}

function setUp(): void {
  fs.mkdirSync(path.join(models, 'versions'), { recursive: true });
  fs.mkdirSync(path.join(models, 'logs'), { recursive: true });
  fs.mkdirSync(path.join(work, 'state'), { recursive: true });
  fs.mkdirSync(tmp, { recursive: true });
  replace('models/config.json', Buffer.from(JSON.stringify({ vocab_size: 32000, version: 0 })));
  create('models/logs/serve.log', Buffer.alloc(0));
  for (let i = 0; i < 6; i++) create(`models/f${i}.bin`, bytes(size()));
  for (let d = 0; d < 2; d++) {
    fs.mkdirSync(abs(`models/scratch/d${d}`), { recursive: true });
    for (let i = 0; i < 3; i++) create(`models/scratch/d${d}/part-${i}`, bytes(1 + int(8 << 10)));
  }
  newVersion();
  replace('state/counter.txt', Buffer.from(`counter ${counter}\n`));
}

/** Versions kept, the live one among them. */
const KEEP_VERSIONS = 8;

/** A new model version, then the live link switched to it with one rename. */
function newVersion(): void {
  version++;
  const dir = `models/versions/v${version}`;
  fs.mkdirSync(abs(dir));
  const weights = `${dir}/weights.bin`;
  const before = `models/versions/v${version - 1}/weights.bin`;
  if (files.has(before) && rand() < 0.5) {
    // Unchanged weights shared with the version before, as cp -al or rsync --link-dest leave them.
    const shared = names.get(before) ?? new Set([before]);
    shared.add(weights);
    names.set(before, shared);
    names.set(weights, shared);
    fileState(weights, files.get(before), () => fs.linkSync(abs(before), abs(weights)));
  } else create(weights, bytes(rand() < 0.5 ? (1 << 20) + int(1 << 20) : 1 + int(256 << 10)));
  replace(`${dir}/tokenizer.json`, Buffer.from(JSON.stringify({ version, model: { type: 'BPE', vocab: { a: 0, b: 1 } } })));
  const staged = path.join(tmp, `link-${made++}`);
  const target = `versions/v${version}`;
  fs.symlinkSync(target, staged);
  linkState('models/current', target, () => fs.renameSync(staged, abs('models/current')));
  // Versions before the last few are removed, as a deploy tool keeps some to roll back to.
  const old = `models/versions/v${version - KEEP_VERSIONS}`;
  if (version > KEEP_VERSIONS) {
    const t0 = Date.now();
    fs.rmSync(abs(old), { recursive: true });
    const t1 = Date.now();
    for (const p of [...files.keys()].filter((q) => q.startsWith(`${old}/`))) {
      detach(p);
      files.delete(p);
      record({ p, h: null, s: 0, t0, t1 });
    }
  }
}

function regularFiles(): string[] {
  // JSON files (config, tokenizer) are left as written or replaced whole by a rename: torn, they would be model problems to warn of.
  return [...files.keys()].filter((p) => p.startsWith('models/') && !p.endsWith('.json'));
}

function step(): void {
  const op = rand() < 0.01 ? 'switch' : pick(['inplace', 'inplace', 'overwrite', 'overwrite', 'rewrite', 'append', 'append', 'truncate', 'replace', 'replace', 'recreate', 'rename-dir', 'counter', 'chmod'] as const);
  const p = pick(regularFiles());
  const old = files.get(p)!;
  switch (op) {
    case 'inplace': {
      // Pieces written one call at a time: between the calls the file is a mix, a state of its own.
      if (old.length === 0) break;
      const fd = fs.openSync(abs(p), 'r+');
      let content = Buffer.from(old);
      for (let n = 1 + int(3); n > 0; n--) {
        const at = int(old.length);
        const piece = bytes(Math.min(old.length - at, 1 + int(64 << 10)));
        content = Buffer.from(content);
        piece.copy(content, at);
        fileState(p, content, () => fs.writeSync(fd, piece, 0, piece.length, at));
      }
      fs.closeSync(fd);
      break;
    }
    case 'overwrite': {
      // All of it rewritten in place with one call, at the same size: no stat before and after can tell.
      const content = bytes(old.length);
      fileState(p, content, () => {
        const fd = fs.openSync(abs(p), 'r+');
        fs.writeSync(fd, content, 0, content.length, 0);
        fs.closeSync(fd);
      });
      break;
    }
    case 'rewrite': {
      let fd = -1;
      const content = bytes(size());
      fileState(p, Buffer.alloc(0), () => (fd = fs.openSync(abs(p), 'w')));
      fileState(p, content, () => {
        fs.writeSync(fd, content, 0, content.length, 0);
        fs.closeSync(fd);
      });
      break;
    }
    case 'append': {
      const more = bytes(1 + int(16 << 10));
      fileState(p, Buffer.concat([old, more]), () => fs.appendFileSync(abs(p), more));
      break;
    }
    case 'truncate': {
      const to = int(old.length + 1);
      fileState(p, old.subarray(0, to), () => fs.truncateSync(abs(p), to));
      break;
    }
    case 'replace':
      replace(p, bytes(size()));
      break;
    case 'recreate':
      detach(p);
      fileState(p, undefined, () => fs.unlinkSync(abs(p)));
      create(p, bytes(size()));
      break;
    case 'rename-dir': {
      const scratch = abs('models/scratch');
      const from = pick(fs.readdirSync(scratch));
      const to = `d${made++}`;
      const t0 = Date.now();
      fs.renameSync(path.join(scratch, from), path.join(scratch, to));
      const t1 = Date.now();
      for (const [q, content] of [...files]) {
        if (!q.startsWith(`models/scratch/${from}/`)) continue;
        const moved = `models/scratch/${to}/${q.slice(`models/scratch/${from}/`.length)}`;
        files.delete(q);
        files.set(moved, content);
        const shared = names.get(q);
        if (shared) {
          detach(q);
          shared.add(moved);
          names.set(moved, shared);
        }
        record({ p: q, h: null, s: 0, t0, t1 });
        record({ p: moved, h: sha(content), s: content.length, t0, t1 });
      }
      break;
    }
    case 'switch':
      newVersion();
      break;
    case 'counter':
      counter++;
      replace('state/counter.txt', Buffer.from(`counter ${counter}\n`));
      replace('models/config.json', Buffer.from(JSON.stringify({ vocab_size: 32000, version: counter })));
      break;
    case 'chmod':
      fs.chmodSync(abs(p), pick([0o644, 0o600, 0o640, 0o444]));
      break;
  }
}

let stopping = false;
process.on('SIGTERM', () => {
  stopping = true;
});

function loop(): void {
  if (stopping) {
    fs.closeSync(log);
    process.stdout.write('stopped\n');
    return;
  }
  // Bursts of changes, then a pause: some backups read while nothing moves.
  const burst = 1 + int(4);
  for (let i = 0; i < burst; i++) step();
  setTimeout(loop, int(3) === 0 ? 50 + int(150) : int(5));
}

setUp();
process.stdout.write('ready\n');
loop();
