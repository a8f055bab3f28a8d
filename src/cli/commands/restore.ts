import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Command } from 'commander';
import { RuntimeFailure, UsageError, errorMessage, fileSystemHint } from '../../errors.js';
import { appendEvent } from '../../core/journal.js';
import { checkRestoreTarget, prepareRestore, restore, unrecordedExcludes, type PreparedRestore, type RestoreOptions, type RestoreResult, type StagedRestore } from '../../core/restore.js';
import {
  NotEnoughSpace,
  checkFreeSpace,
  finishMoves,
  leftToPutBack,
  lockRestoreTarget,
  movedByInterruptedRestore,
  putBackFirstNotice,
  putMovesBack,
  recordMoves,
  refusedBeforeWriting,
  removeMoveRecords,
  takeUpInterruptedMoves,
  type MovingRecord,
  type PlannedMove,
} from '../../core/restore-target.js';
import { whileReading } from '../../core/lock.js';
import { directoryFlag, utf8Path } from '../flags.js';
import { sourcesIncluded } from '../../core/restore-plan.js';
import { leftWorkDirectory, type Notice } from '../../core/events.js';
import type { Manifest } from '../../format/manifest.js';
import type { LifeboatConfig } from '../../config/config.js';
import { addReaderLockOptions, readerLockMs, type LockFlags } from '../cron.js';
import type { Repository } from '../../core/repository.js';
import { loadConfig } from '../../config/config.js';
import { makeWorkDirectory } from '../../format/mkdirs.js';
import { isMountPoint } from '../../format/mounts.js';
import { removeTree } from '../../format/remove-tree.js';
import { putStateBack, refuseEmptyCopies, restoreTimeouts, stateToPutBack, type EmptyCopies } from '../../state/put-back.js';
import { openRepository, type CliContext } from '../context.js';
import { withIntactAlternative } from '../damage.js';
import { formatBytes, quoteName, counted, shellWord } from '../format.js';
import { formatDuration } from '../../config/duration.js';
import { ProgressRenderer, printResult, warningsJson } from '../output.js';
import type { CommandRunner } from '../main.js';
import { ALLOW_EMPTY_STATE_HELP } from './failover.js';

interface RestoreFlags extends LockFlags {
  target?: string;
  inPlace?: boolean;
  delta?: boolean;
  deleteExcluded?: boolean;
  force?: boolean;
  include: string[];
  numericOwner?: boolean;
  dryRun?: boolean;
  state?: boolean;
  allowEmptyState?: boolean;
  workDir?: string;
}

const collect = (value: string, previous: string[]) => [...previous, value];

/** What every restore of this command is given, whatever its target. */
function commonOptions(ctx: CliContext, flags: RestoreFlags, config: LifeboatConfig, renderer: ProgressRenderer) {
  return {
    delta: flags.delta,
    deleteExcluded: flags.deleteExcluded,
    excludesWhenUnrecorded: config.exclude,
    force: flags.force,
    include: flags.include,
    numericOwner: flags.numericOwner,
    dryRun: flags.dryRun,
    concurrency: config.s3?.concurrency,
    ...readerLockMs(flags, config),
    signal: ctx.signal,
    reporter: renderer,
  };
}

/**
 * Said once before a --delta from a point taken by an earlier version, which did not record the
 * exclude patterns of its backup: the config's stand in for them, or, without any, what the backup
 * left out is removed with the rest, as before. Returned, for --json's warnings.
 */
function noteUnrecordedExcludes(point: Manifest, flags: RestoreFlags, config: LifeboatConfig, renderer: ProgressRenderer): Notice[] {
  if (!flags.delta || flags.deleteExcluded || flags.include.length > 0) return [];
  const notice = unrecordedExcludes(point, config.exclude ?? [], '--delta');
  if (!notice) return [];
  renderer.notice(notice);
  return [notice];
}

/** Records a restore that succeeded. A restore may run with read-only credentials: failing to journal it must not fail it. */
async function journalRestored(repo: Repository, renderer: ProgressRenderer, result: RestoreResult, detail: Record<string, unknown> = {}): Promise<void> {
  if (result.dryRun) return;
  await appendEvent(repo.storage, { type: 'restore', point: result.point, target: result.target, outcome: 'ok', durationMs: result.durationMs, detail: { files: result.files, bytes: result.bytes, ...detail } }).catch(
    (err: unknown) => renderer.notice({ level: 'warning', code: 'journal', message: `could not record the restore in the journal: ${errorMessage(err)}` }),
  );
}

/**
 * Records a restore that failed, unless it was refused before it wrote anything (a target that is not
 * empty, an --include that matches nothing): that changed nothing, and `status` would list it among
 * the failed restores an operator looks into. Failing to journal does not hide the error.
 */
async function journalFailed(repo: Repository, err: unknown, event: { point: string; target?: string; durationMs: number }, detail: Record<string, unknown> = {}): Promise<void> {
  if (refusedBeforeWriting(err)) return;
  await appendEvent(repo.storage, { type: 'restore', outcome: 'failed', ...event, detail: { error: errorMessage(err), ...detail } }).catch(() => undefined);
}

export async function runRestore(ctx: CliContext, selector: string, flags: RestoreFlags): Promise<void> {
  // A --force replaces the whole target: with --include, everything else in it (the weights beside a tokenizer being put back) would be gone.
  if (flags.force && flags.include.length > 0) {
    throw flags.inPlace
      ? new UsageError('--force with --include would replace each source directory with only what the patterns choose', { hint: 'use --delta to restore only those files in place' })
      : new UsageError('--force with --include would replace the target with only what the patterns choose', { hint: 'use --delta to restore only those files into it, or restore into an empty directory' });
  }
  // Directories are staged beside their target, on its own file system; only state has a place of its own to be staged in.
  if (flags.workDir !== undefined && !flags.state) throw new UsageError('--work-dir goes with --state', { hint: 'a restore of directories is staged beside each one, on its own file system' });
  if (flags.allowEmptyState && !flags.state) throw new UsageError('--allow-empty-state goes with --state', { hint: 'only state put back into a live database can replace it with an empty one' });
  // Only a --delta removes what the point lacks; a --force replaces the whole target, left-out files with the rest.
  if (flags.deleteExcluded && !flags.delta) throw new UsageError('--delete-excluded goes with --delta', { hint: 'restore --delta --delete-excluded also removes what the backup left out with its exclude patterns' });
  if (flags.inPlace) return runRestoreInPlace(ctx, selector, flags);
  if (flags.state) throw new UsageError('--state puts serving state back with --in-place', { hint: 'restore --in-place --state, or let `lifeboat failover` put it back' });
  if (!flags.target) throw new UsageError('restore needs --target DIR', { hint: 'or --in-place, to restore each source to the directory it was backed up from' });
  utf8Path('--target', flags.target);
  const again = `--target ${shellWord(flags.target)}`;
  const { repo, config, close } = await openRepository(ctx);
  const renderer = new ProgressRenderer(ctx, 'restore');
  try {
    const point = await repo.resolve(selector);
    const unrecorded = noteUnrecordedExcludes(point, flags, config, renderer);
    const started = Date.now();
    const result = await restore(repo, point, {
      target: flags.target.startsWith('/') ? flags.target : `${ctx.cwd}/${flags.target}`,
      ...commonOptions(ctx, flags, config, renderer),
    }).catch(async (err: unknown) => {
      if (!flags.dryRun) await journalFailed(repo, err, { point: point.id, target: flags.target, durationMs: Date.now() - started });
      throw await withIntactAlternative(err, repo, point, (id) => `lifeboat restore ${id} ${again}`);
    });
    await journalRestored(repo, renderer, result);
    renderer.stop();
    const json = { point: result.point, ...targetFigures(result), durationMs: result.durationMs, warnings: warningsJson([...unrecorded, ...result.warnings]) };
    printResult(ctx, json, () =>
      result.dryRun
        ? `would restore ${result.point} to ${quoteName(result.target)}: ${counted(result.files, 'file')}, ${formatBytes(result.bytes)}${outcomeText(result)}; nothing was written`
        : `restored ${result.point} to ${quoteName(result.target)}: ${counted(result.files, 'file')}, ${formatBytes(result.bytes)}, every checksum verified, in ${formatDuration(result.durationMs)}${outcomeText(result)}`,
      { shownWhenQuiet: result.dryRun },
    );
  } finally {
    renderer.stop();
    await close();
  }
}

/** Where restore --in-place --state restores the state before putting it back. */
interface StateScratch {
  root: string;
  remove(): Promise<void>;
}

/**
 * Makes the directory the state is restored into (under --work-dir, else TMPDIR, often a small
 * tmpfs) and checks that it has room, before any directory source is written: found short only
 * after them, the restore would end with the directories restored and the state not.
 */
async function stateScratch(workDir: string | undefined, point: Manifest, names: readonly string[], renderer: ProgressRenderer): Promise<StateScratch> {
  const parent = workDir ?? os.tmpdir();
  const elsewhere = 'lifeboat restore --work-dir DIR (or TMPDIR) stages the state elsewhere';
  const scratch = await makeWorkDirectory(workDir, 'lifeboat-state-', (dir) => renderer.notice(leftWorkDirectory(dir))).catch((err: unknown) => {
    throw new RuntimeFailure(`cannot make a directory to restore serving state in, under ${parent}: ${errorMessage(err)}`, { cause: err, hint: fileSystemHint(err, parent) ?? elsewhere });
  });
  const remove = () => removeTree(scratch).catch(() => undefined);
  const files = point.entries.filter((e) => e.type === 'file' && names.includes(e.source));
  await checkFreeSpace(scratch, parent, files).catch(async (err: unknown) => {
    await remove();
    throw err instanceof NotEnoughSpace ? new NotEnoughSpace(`the state to put back needs ${err.message.replace(/^the restore needs /, '')}`, `free space there, or ${elsewhere}`) : err;
  });
  return { root: path.join(scratch, 'point'), remove };
}

/**
 * restore --in-place --state: the point's state sources, restored into a scratch directory and
 * verified as any restore is (before any directory is moved into place), are put back where the
 * point says, as a failover does (SQLite copied into the live database, what it held kept beside
 * it; a command fed its captured output).
 */
async function putStateBackFrom(ctx: CliContext, point: Manifest, names: string[], renderer: ProgressRenderer, putBack: (name: string) => void, scratch: StateScratch, flags: RestoreFlags): Promise<void> {
  const { config, file } = await loadConfig({ explicit: ctx.global.config, cwd: ctx.cwd, env: ctx.env });
  await putStateBack({ ...point, sources: point.sources.filter((s) => names.includes(s.name)) }, scratch.root, {
    cwd: file ? path.dirname(file) : ctx.cwd,
    env: { ...ctx.env, LIFEBOAT_POINT: point.id },
    timeouts: restoreTimeouts(config),
    signal: ctx.signal,
    note: (code, message) => renderer.notice({ level: 'info', code, message }),
    putBack,
    emptyCopies: emptyCopies(flags),
  });
}

function emptyCopies(flags: RestoreFlags): EmptyCopies {
  return { allow: flags.allowEmptyState, leaveAlone: 'restore without --state' };
}

/** A restore's figures for one target, as --json gives them. */
function targetFigures(r: RestoreResult) {
  return {
    target: r.target,
    files: r.files,
    bytes: r.bytes,
    ...(r.rewritten !== undefined ? { rewritten: r.rewritten, unchanged: r.unchanged, removed: r.removed, keptExcluded: r.keptExcluded } : {}),
    ...(r.dryRun ? { dryRun: true, ...(r.replaced !== undefined ? { replaced: r.replaced } : {}), ...(r.removals ? { removals: r.removals } : {}) } : {}),
  };
}

/** What was (or, with --dry-run, would be) done to what was there, in words. */
function outcomeText(r: RestoreResult): string {
  const would = r.dryRun ? 'would be ' : '';
  if (r.rewritten !== undefined) {
    const named = r.removals && r.removals.length > 0 ? `: ${r.removals.map(quoteName).join(', ')}${r.removed! > r.removals.length ? ', …' : ''}` : '';
    const kept = r.keptExcluded ? `, ${r.keptExcluded} left out by the backup ${r.dryRun ? 'would be kept' : 'kept'}` : '';
    return ` (${r.rewritten} ${would}rewritten, ${r.unchanged} unchanged${kept}, ${r.removed} ${would}removed${named})`;
  }
  return r.replaced ? ' (what is there would be replaced)' : '';
}

/** One source of a point and where --in-place puts it back. */
interface SourcePlace {
  name: string;
  path: string;
  /** The symbolic link the source was backed up through, when it was. */
  via?: string;
  /** Whether an interrupted restore --in-place of the point had moved the source's tree into place (see movedByInterruptedRestore). */
  moved?: boolean;
}

/**
 * The tree sources of a point that --in-place restores, each to the directory
 * it was backed up from. State sources (a database copy, a command's output)
 * have no directory of their own: a failover puts them back.
 */
async function placesOf(point: Manifest, chosen: ReadonlySet<string>, state: boolean, notice: (n: Notice) => void): Promise<SourcePlace[]> {
  const places: SourcePlace[] = [];
  for (const s of point.sources) {
    if (!chosen.has(s.name)) continue;
    if (s.kind !== 'files') {
      if (state && s.restore) continue;
      const how = s.restore ? '--state puts it back, as a failover does' : 'the point records nowhere to put it back (restore: in the config); restore it with --target';
      notice({ level: 'info', code: 'state-not-in-place', message: `${s.name} (${s.kind} state) is not restored in place: ${how}` });
      continue;
    }
    if (!path.isAbsolute(s.path) || path.resolve(s.path) === path.parse(s.path).root) {
      throw new UsageError(`source ${s.name} of ${point.id} was backed up from ${JSON.stringify(s.path)}, which --in-place will not restore into`, { hint: 'restore it with --target DIR' });
    }
    const recorded = path.resolve(s.path);
    const resolved = await throughLink(s.name, recorded);
    places.push({ name: s.name, path: resolved, ...(resolved === recorded ? {} : { via: recorded }) });
  }
  return places;
}

/**
 * A source backed up through a symbolic link (`/srv/models` → `/data/models`)
 * goes back into the directory the link leads to now; a link that leads
 * nowhere is refused, since what it should lead to cannot be guessed.
 */
async function throughLink(name: string, recorded: string): Promise<string> {
  if (!(await fsp.lstat(recorded).then((st) => st.isSymbolicLink(), () => false))) return recorded;
  if (!(await fsp.stat(recorded).then((st) => st.isDirectory(), () => false))) {
    throw new UsageError(`source ${name} was backed up from ${recorded}, a symbolic link that leads to no directory now`, {
      hint: `make the link lead where the source should go, or restore it with --target DIR`,
    });
  }
  return fsp.realpath(recorded);
}

/**
 * restore --in-place: each tree source of the point goes back to the directory
 * it was backed up from, each with the guarantees of a restore into --target
 * (staged beside it, verified, moved into place), and all of them as one: every
 * source is staged and verified (and, with --state, the state restored into its
 * scratch directory) before any directory is moved into place.
 */
async function runRestoreInPlace(ctx: CliContext, selector: string, flags: RestoreFlags): Promise<void> {
  if (flags.target) throw new UsageError('--in-place restores each source to the directory it was backed up from: it takes no --target');
  const workDir = await directoryFlag(ctx.cwd, '--work-dir', flags.workDir);
  const { repo, config, close } = await openRepository(ctx);
  const renderer = new ProgressRenderer(ctx, 'restore');
  let scratch: StateScratch | undefined;
  const unlocks: (() => Promise<void>)[] = [];
  try {
    const point = await repo.resolve(selector);
    const chosen = sourcesIncluded(point, flags.include);
    const places = await placesOf(point, chosen, flags.state === true, (n) => renderer.notice(n));
    const state = flags.state ? stateToPutBack(point).filter((name) => chosen.has(name)) : [];
    if (places.length === 0 && state.length === 0) {
      throw new UsageError(`${point.id} has no directory source to restore in place${flags.state ? ', nor state to put back' : ''}`, { hint: 'restore it with --target DIR' });
    }
    // Every directory's lock first: another restore writing one of them must not find this one after it wrote the others.
    if (!flags.dryRun) for (const p of places) unlocks.push(await lockRestoreTarget(path.resolve(p.path), await isMountPoint(p.path).catch(() => false)));
    // What an interrupted restore --in-place left among its moves is put back (or, all made, finished) before anything is judged.
    const { moved, putBack, finished } = flags.dryRun ? { moved: await movedByInterruptedRestore(places.map((p) => p.path), point.id), putBack: [], finished: [] } : await takeUpInterruptedMoves(places.map((p) => p.path), point.id);
    for (const r of putBack.filter((r) => r.targets.length > 0)) {
      renderer.notice({ level: 'info', code: 'in-place-put-back', message: `put back ${r.targets.map(quoteName).join(', ')} as they were before an interrupted restore --in-place of ${r.point}; this restore goes on from what it had staged` });
    }
    for (const n of finished) renderer.notice(n);
    // A dry run puts nothing back: it says what the restore would put back first.
    const leftBehind = flags.dryRun ? (await leftToPutBack(places.map((p) => p.path))).map(putBackFirstNotice) : [];
    for (const n of leftBehind) renderer.notice(n);
    // A directory an interrupted restore of this point had moved into place holds the point: it is compared, not refused or staged again.
    for (const p of places) p.moved = moved.has(p.path);
    // Every directory is checked before any is written: a refusal must not come after half the sources were restored.
    for (const p of places) await checkRestoreTarget(p.path, { ...flags, delta: flags.delta || p.moved, inPlace: true }, repo.storage.location);
    if (state.length > 0) await refuseEmptyCopies({ ...point, sources: point.sources.filter((s) => state.includes(s.name)) }, emptyCopies(flags));
    scratch = state.length > 0 && !flags.dryRun ? await stateScratch(workDir, point, state, renderer) : undefined;
    const unrecorded = noteUnrecordedExcludes(point, flags, config, renderer);
    for (const p of places) renderer.notice({ level: 'info', code: 'in-place', message: `${p.name} ${flags.dryRun ? 'would go' : 'goes'} back to ${quoteName(p.path)}${p.via ? ` (through the link ${quoteName(p.via)})` : ''}` });
    for (const p of places.filter((p) => p.moved)) {
      renderer.notice({ level: 'info', code: 'in-place-moved', message: `${p.name} was moved into ${quoteName(p.path)} by an interrupted restore of ${point.id}: it is compared with the point, as --delta does` });
    }
    const started = Date.now();
    const options = (place: SourcePlace): RestoreOptions => ({ target: place.path, asTarget: place.name, targetLocked: true, ...commonOptions(ctx, flags, config, renderer), delta: flags.delta || place.moved });
    const failed = async (place: SourcePlace, err: unknown): Promise<unknown> => {
      if (!flags.dryRun) await journalFailed(repo, err, { point: point.id, target: place.path, durationMs: Date.now() - started }, { source: place.name });
      return withIntactAlternative(err, repo, point, (id) => `lifeboat restore ${id} --in-place`);
    };
    const done: (RestoreResult & { source: string })[] = [];
    /** What registering as a reader of the point said (a repository lock taken over), for --json's warnings. */
    const reading: Notice[] = [];
    if (flags.dryRun) {
      for (const place of places) done.push({ ...(await restore(repo, point, options(place)).catch(async (err: unknown) => Promise.reject(await failed(place, err)))), source: place.name });
      for (const name of state) renderer.notice({ level: 'info', code: 'state-restore', message: `would put back the state of ${name}` });
    } else {
      await whileReading(repo.storage, 'restore', { signal: ctx.signal, reporter: renderer, warnings: reading, reads: [point.id] }, () =>
        restoreAsOne(repo, point, places, options, scratch && { names: state, root: scratch.root, options: commonOptions(ctx, flags, config, renderer) }, renderer, failed, done),
      );
      for (const d of done) await journalRestored(repo, renderer, d, { source: d.source });
      if (state.length > 0) {
        const putBack: string[] = [];
        await putStateBackFrom(ctx, point, state, renderer, (name) => putBack.push(name), scratch!, flags).catch((err: unknown) => {
          // The directories (and any state put back before the failure) stay as restored: say which.
          const restored = [...done.map((d) => `${d.source} to ${quoteName(d.target)}`), ...putBack.map((name) => `the state of ${name}`)];
          if (restored.length > 0) {
            renderer.notice({ level: 'warning', code: 'in-place-partial', message: `restored before the state failed: ${restored.join(', ')}; ${state.filter((n) => !putBack.includes(n)).join(', ')} not put back` });
          }
          throw err;
        });
      }
    }
    renderer.stop();
    const durationMs = Date.now() - started;
    const files = done.reduce((n, d) => n + d.files, 0);
    const bytes = done.reduce((n, d) => n + d.bytes, 0);
    const json = {
      point: point.id,
      target: null,
      files,
      bytes,
      durationMs,
      ...(flags.dryRun ? { dryRun: true } : {}),
      sources: done.map((d) => ({ source: d.source, ...targetFigures(d) })),
      ...(flags.state ? { state } : {}),
      warnings: warningsJson([...leftBehind, ...unrecorded, ...reading, ...done.flatMap((d) => d.warnings)]),
    };
    printResult(ctx, json, () =>
      [
        flags.dryRun
          ? `would restore ${point.id} in place: ${counted(files, 'file')}, ${formatBytes(bytes)}; nothing was written`
          : `restored ${point.id} in place: ${counted(files, 'file')}, ${formatBytes(bytes)}, every checksum verified, in ${formatDuration(durationMs)}`,
        ...done.map((d) => `  ${d.source} → ${quoteName(d.target)}: ${counted(d.files, 'file')}${outcomeText(d)}`),
        ...(state.length > 0 ? [`  state ${flags.dryRun ? 'to put back' : 'put back'}: ${state.join(', ')}`] : []),
      ].join('\n'),
      { shownWhenQuiet: flags.dryRun },
    );
  } finally {
    renderer.stop();
    await scratch?.remove();
    for (const unlock of unlocks) await unlock();
    await close();
  }
}

/**
 * Restores the directory sources of a point in place as one: the state into its scratch directory
 * first (`state`), then every source staged beside its directory and verified, with room for all of
 * them at once; only then each staged tree moved into place, one after the other. A failure before
 * the moves leaves every directory as it was, the staging directories kept for the next restore (or
 * removed) as a restore into --target keeps its own. The moves are recorded beside each directory
 * first (see recordMoves), so that the next restore --in-place of the point finishes what a restore
 * killed among them left. Each result is pushed onto `done` once its source is in place.
 */
async function restoreAsOne(
  repo: Repository,
  point: Manifest,
  places: readonly SourcePlace[],
  options: (place: SourcePlace) => RestoreOptions,
  state: { names: string[]; root: string; options: Omit<RestoreOptions, 'target'> } | undefined,
  renderer: ProgressRenderer,
  failed: (place: SourcePlace, err: unknown) => Promise<unknown>,
  done: (RestoreResult & { source: string })[],
): Promise<void> {
  if (state) await restore(repo, point, { ...state.options, registered: true, delta: false, force: false, include: state.names, target: state.root });
  const prepared: PreparedRestore[] = [];
  const staged: StagedRestore[] = [];
  let place: SourcePlace | undefined;
  try {
    for (place of places) prepared.push(await prepareRestore(repo, point, { ...options(place), registered: true }));
    place = undefined;
    await checkRoomForAll(prepared);
    for (const [i, p] of prepared.entries()) {
      place = places[i];
      staged.push(await p.stage());
    }
  } catch (err) {
    // Nothing is in place yet: every source's staging directory goes, or stays for the next restore, as the failed one's does.
    for (const p of prepared) await p.abandon(err);
    throw place ? await failed(place, err) : err;
  }
  // Each directory is told which trees go where before the first is moved, durably; what each held is
  // set aside, not removed, until every move is made, so that a move that fails can have the others put back.
  const planned: PlannedMove[] = [];
  for (const s of staged) planned.push(await s.plannedMove());
  const record = await recordMoves(point.id, planned);
  // Whole moves first, a rename or two each to put back; a --delta rewrites and removes file by file.
  const order = [...staged.keys()].sort((a, b) => Number(planned[a]!.delta === true) - Number(planned[b]!.delta === true));
  const results: (RestoreResult & { source: string })[] = [];
  const committed: number[] = [];
  for (const i of order) {
    const result = await staged[i]!.commit(true).catch(async (err: unknown) => {
      for (const j of order.slice(order.indexOf(i) + 1)) await staged[j]!.abandon(err);
      throw await undoMoves(record, err, { place: places[i]!, staged: staged[i]! }, committed.map((j) => ({ place: places[j]!, staged: staged[j]! })), renderer, failed);
    });
    committed.push(i);
    results[i] = { ...result, source: places[i]!.name };
  }
  const dropped = (n: Notice | undefined, i: number) => {
    if (!n) return;
    renderer.notice(n);
    results[i]?.warnings.push(n);
  };
  for (const n of await finishMoves(record)) dropped(n, staged.findIndex((s) => s.target === record.moves.find((m) => m.replaced === n.path)?.target));
  done.push(...results);
  await removeMoveRecords(places.map((p) => p.path));
}

/**
 * After the move into `failing` failed with `err`: puts back the moves made before it (a directory
 * renamed whole goes back to its staging directory and what it held is renamed back from where it
 * was set aside; a --delta's changes are undone, the last first), and returns the error to throw,
 * saying that every directory was left as it was; or, when some could not be put back, a warning
 * names them. A record of moves that could not all be put back stays, for the next restore to finish
 * putting them back.
 */
async function undoMoves(
  record: MovingRecord,
  err: unknown,
  failing: { place: SourcePlace; staged: StagedRestore },
  committed: { place: SourcePlace; staged: StagedRestore }[],
  renderer: ProgressRenderer,
  failed: (place: SourcePlace, err: unknown) => Promise<unknown>,
): Promise<unknown> {
  // A --delta's changes are put back from its journal with the rest, its staging directory kept with the files it had rewritten.
  const notPutBack = await putMovesBack(record);
  const stayed: { place: SourcePlace; why: string }[] = [];
  for (const c of [...committed, failing]) {
    const f = notPutBack.find((n) => n.target === c.place.path);
    if (f) stayed.push({ place: c.place, why: errorMessage(f.err) });
    else if (!c.staged.deltaUndo() && c !== failing) await c.staged.abandon(err, true);
  }
  const error = await failed(failing.place, err);
  if (stayed.length > 0) {
    renderer.notice({
      level: 'warning',
      code: 'in-place-partial',
      message: `not put back as they were after ${failing.place.name} failed: ${stayed.map((s) => `${s.place.name} in ${quoteName(s.place.path)} (${s.why})`).join(', ')}${notPutBack.length > 0 ? '; the next restore --in-place puts back what it can first' : ''}`,
    });
  } else if (error instanceof Error) {
    error.message += committed.length > 0 ? '; the directories moved before it were put back: every directory was left as it was' : '; every directory was left as it was';
  }
  return error;
}

/**
 * Refuses (before anything is fetched) sources that cannot all be staged at once: those on one file
 * system need room for what each fetches, together, since none is moved into place before all are staged.
 */
async function checkRoomForAll(prepared: readonly PreparedRestore[]): Promise<void> {
  const byDevice = new Map<bigint, PreparedRestore[]>();
  for (const p of prepared) {
    const { dev } = await fsp.stat(p.staging, { bigint: true });
    byDevice.set(dev, [...(byDevice.get(dev) ?? []), p]);
  }
  for (const group of byDevice.values()) {
    await checkFreeSpace(group[0]!.staging, group.length === 1 ? group[0]!.target : group.map((p) => p.target), group.flatMap((p) => p.toFetch));
  }
}

export function registerRestore(program: Command, run: CommandRunner): Command {
  return addReaderLockOptions(
    program
      .command('restore')
      .description('restore a backup point into a directory, verifying every file; each source lands in DIR/<source>/ (or, --in-place, where it was backed up from)')
      .argument('<point>', 'id, unique id prefix, latest, or an ISO-8601 time')
      .option('--target <dir>', 'where to restore (must be empty or absent, unless --delta or --force)')
      .option('--in-place', 'restore each directory source to the directory it was backed up from, all staged and verified before any is moved into place (with --delta: only what differs)')
      .option('--delta', 'update an existing target: rewrite only files whose content differs, remove what the point lacks, except what its backup left out')
      .option('--delete-excluded', 'with --delta: also remove what the backup left out with its exclude patterns, and sockets and pipes')
      .option('--force', 'replace a non-empty target')
      .option('--state', 'with --in-place: put serving state back too (SQLite copied into the live database, restore commands fed their captured output), as a failover does')
      .option('--allow-empty-state', `with --state: ${ALLOW_EMPTY_STATE_HELP}`)
      .option('--work-dir <dir>', 'with --state: where the state is restored before it is put back (default: the system temporary directory)')
      .option('-n, --dry-run', 'say what would be written, rewritten and removed (a --delta target is read and compared), and write nothing')
      .option('--numeric-owner', 'as root, give files the recorded uid and gid numbers instead of the local ids of the recorded user and group names')
      .option('-i, --include <glob>', 'restore only matching <source>/<path> entries; a directory or source name means all in it (repeatable)', collect, []),
  )
    .addHelpText(
      'after',
      '\nExamples:\n  lifeboat restore latest --target /srv/restore\n  lifeboat restore 2026-11-20T03:00:00Z --target /srv/models-prev --delta\n  lifeboat restore latest --target /tmp/tok --include models/tokenizer\n  lifeboat restore latest --in-place --delta        # a rebuilt or damaged host: every source where it was\n  lifeboat restore latest --in-place --delta --dry-run   # what that would rewrite and remove',
    )
    .action(run((ctx, selector: string, flags: RestoreFlags) => runRestore(ctx, selector, flags)));
}
