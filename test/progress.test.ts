/**
 * The plain progress line (stderr not a terminal): its rate and ETA count
 * from the phase's first report, not from the start of the command, which
 * may have spent minutes on other work first. The spinner (stderr a
 * terminal): what it names is escaped as a listing's names are.
 */
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import type { CliContext } from '../src/cli/context.js';
import { ProgressRenderer } from '../src/cli/output.js';
import { backup } from '../src/core/backup.js';
import type { Progress } from '../src/core/events.js';
import { Repository } from '../src/core/repository.js';
import { restore } from '../src/core/restore.js';
import { LocalStorage } from '../src/storage/local.js';
import { waitFor } from './helpers/processes.js';
import { tempDir } from './helpers/tree.js';

function plainContext(terminal = false): { ctx: CliContext; lines: () => string[]; text: () => string } {
  // A terminal as ora sees one: it says it is a TTY, has a width, and moves its cursor with escape codes.
  const stderr = terminal
    ? Object.assign(new PassThrough(), {
        isTTY: true,
        columns: 80,
        cursorTo: (x: number) => stderr.write(`\u001b[${x + 1}G`),
        clearLine: () => stderr.write('\u001b[2K'),
        moveCursor: (_x: number, y: number) => stderr.write(`\u001b[${-y}A`),
      })
    : new PassThrough();
  let text = '';
  stderr.on('data', (chunk: Buffer) => (text += chunk.toString()));
  const ctx: CliContext = {
    cwd: process.cwd(),
    env: {},
    stdout: new PassThrough(),
    stderr,
    interactive: terminal,
    color: { stdout: false, stderr: false },
    json: false,
    quiet: false,
    debug: false,
    signal: new AbortController().signal,
    global: {},
  };
  return { ctx, lines: () => text.split('\n').filter(Boolean), text: () => text };
}

const MiB = 1 << 20;
const verify = (bytesDone: number): Progress => ({ phase: 'verify', filesDone: 1, filesTotal: 10, bytesDone, bytesTotal: 1000 * MiB });

test('progress counts its rate and ETA from the first report of its phase', () => {
  const { ctx, lines } = plainContext();
  let clock = 1_000_000;
  const renderer = new ProgressRenderer(ctx, 'verify', () => clock);
  // Two minutes of checking manifests before any data is read.
  clock += 120_000;
  renderer.progress(verify(10 * MiB));
  // Then 90 MiB more in 10 s: 9 MiB/s, and the 900 MiB left take 100 s.
  clock += 10_000;
  renderer.progress(verify(100 * MiB));
  const last = lines().at(-1)!;
  assert.match(last, /verify: {2}100\.0 MiB \/ 1000\.0 MiB \(10%\) {2}1\/10 files {2}9\.0 MiB\/s {2}ETA 1m40s$/);
});

test('a new phase starts its own rate', () => {
  const { ctx, lines } = plainContext();
  let clock = 0;
  const renderer = new ProgressRenderer(ctx, 'restore', () => clock);
  clock += 6_000;
  renderer.progress({ phase: 'compare', filesDone: 5, filesTotal: 5, bytesDone: 500 * MiB, bytesTotal: 500 * MiB });
  clock += 1_000;
  renderer.progress({ phase: 'restore', filesDone: 0, filesTotal: 5, bytesDone: 0, bytesTotal: 200 * MiB });
  clock += 10_000;
  renderer.progress({ phase: 'restore', filesDone: 2, filesTotal: 5, bytesDone: 50 * MiB, bytesTotal: 200 * MiB });
  assert.match(lines().at(-1)!, /restore: {2}50\.0 MiB \/ 200\.0 MiB \(25%\) {2}2\/5 files {2}5\.0 MiB\/s {2}ETA 30\.0s$/);
});

test('a backup and a restore of small files only report each file as it is done, not only large files as their bytes come', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'configs');
  const count = 150;
  for (let i = 0; i < count; i++) {
    await fsp.mkdir(path.join(src, `d${i % 7}`), { recursive: true });
    await fsp.writeFile(path.join(src, `d${i % 7}`, `f${i}.json`), JSON.stringify({ i, pad: 'x'.repeat(i * 13) }));
  }
  const storage = new LocalStorage(path.join(work, 'repo'));
  t.after(() => storage.close());
  await Repository.init(storage, {});
  const repo = await Repository.open(storage);
  // The distinct counts of files done that each phase reported: a bar that moves, file after file.
  const seen = (phase: Progress['phase'], reports: Progress[]) => new Set(reports.filter((p) => p.phase === phase).map((p) => p.filesDone)).size;
  const backedUp: Progress[] = [];
  const taken = await backup(repo, { sources: [{ name: 'configs', path: src }], type: 'full', reporter: { progress: (p) => backedUp.push(p) } });
  assert.ok(seen('backup', backedUp) >= count, `backup reported ${seen('backup', backedUp)} distinct counts for ${count} files`);
  const restored: Progress[] = [];
  await restore(repo, await repo.resolve(taken.id), { target: path.join(work, 'restored'), reporter: { progress: (p) => restored.push(p) } });
  assert.ok(seen('restore', restored) >= count, `restore reported ${seen('restore', restored)} distinct counts for ${count} files`);
  assert.equal(restored.at(-1)!.filesDone, count);
});

test('the spinner names the file it is at as a listing does: a name cannot redraw the terminal', async () => {
  const { ctx, text } = plainContext(true);
  const renderer = new ProgressRenderer(ctx, 'backup');
  const at = { ...verify(10 * MiB), phase: 'backup', current: 'models/w\u001b[2Jcleared\nX.bin' } as const;
  renderer.progress(at);
  // ora is loaded on its own, then draws the spinner; the file is named from the next report on.
  await waitFor(async () => text().includes('backup:'), 5000);
  renderer.progress(at);
  await waitFor(async () => text().includes('cleared'), 5000);
  renderer.stop();
  assert.match(text(), /"models\/w\\u001b\[2Jcleared\\nX\.bin"/);
  assert.ok(!text().includes('\u001b[2J'), JSON.stringify(text()));
  assert.ok(!text().includes('\n'), 'the spinner stays on its line');
});
