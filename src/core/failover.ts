import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { CredentialsRefusedError, ExitCode, IntegrityError, InterruptedError, LifeboatError, RuntimeFailure, UsageError, errorMessage, fileSystemHint, throwIfAborted } from '../errors.js';
import { aheadOfClock } from '../config/duration.js';
import { deploymentOf, type Manifest, type PointSummary } from '../format/manifest.js';
import { putStateBack, refuseEmptyCopies, stateToPutBack, type EmptyCopies } from '../state/put-back.js';
import { restoreSqlite } from '../state/sqlite.js';
import { DEFAULT_HOOK_TIMEOUT_MS, runHook } from '../state/hooks.js';
import type { Notice, Reporter } from './events.js';
import { DEFAULT_HEALTH_TIMEOUT_MS, attemptLimitAdvice, checkOnce, waitHealthy, type HealthResult } from './health.js';
import { appendEvent, inSwitchOrder, lastSwitchGeneration, readEvents, withoutEndedAnnouncements, type JournalEvent } from './journal.js';
import type { Repository } from './repository.js';
import { restore, unrecordedExcludes } from './restore.js';
import { readerLockOptions, whileReading, type ReaderLockOptions } from './lock.js';
import { NotEnoughSpace, refusedBeforeWriting, removeLeftCopies, removeOtherStaging, restoreLeftUnfinished } from './restore-target.js';
import { validateDirectory } from '../model/validate.js';
import { TARGET_STATE_FILE, announceSwitch, announceSwitchBack, leftLockCopies, switchLockHolder, checkActiveLinkWritable, listSlots, markStateOf, settlePending, stateChangedInPlace, stateLeftBehind, switchNotMade, unfinishedSwitchBack, removeLeftLinks, lockTarget, planSlotPrune, readActive, readTargetState, slotPath, slotPoint, switchActive, targetStateDamage, writeTargetState, type StateChange, type SwitchLock, type SwitchRecord, type TargetState, type UnfinishedSwitchBack } from './slots.js';
import type { TargetSpec } from './targets.js';
import { removeTree } from '../format/remove-tree.js';
import { whileLeftUndone } from '../left-undone.js';
import { quoteName } from '../format/quote.js';

/** `lockStaleAfterMs` judges the target's switch lock as well: one held from another host whose lease was not refreshed for that long is taken over. */
export interface SwitchOptions extends ReaderLockOptions {
  signal?: AbortSignal;
  reporter?: Reporter;
  /**
   * Put the point's serving state back (SQLite copies, restore commands). Default: yes, but for a
   * rollback that undoes a switch made without it, which leaves the state alone as that switch did,
   * and for a failover to the point already served, whose state went back when it was switched to.
   */
  applyState?: boolean;
  /** Put back a SQLite copy the backup found empty over a live database that holds something (refused otherwise). */
  allowEmptyState?: boolean;
  /** Volumes streamed at once while restoring. */
  concurrency?: number;
  hookTimeoutMs?: number;
  /** Each line the activate and deactivate hooks print (on stdout or stderr), to be logged as a backup's hooks' are. */
  onOutput?: (line: string) => void;
  /** The config's exclude patterns: what the check of a reused slot keeps of what a point that does not record its own left out. */
  excludesWhenUnrecorded?: readonly string[];
}

export type SwitchOutcome = 'ok' | 'rolled-back' | 'failed';

export interface SwitchResult {
  ok: boolean;
  outcome: SwitchOutcome;
  target: string;
  /** The point now meant to be served (the one asked for). */
  point: string | null;
  slot: string;
  /** What the link pointed at before. */
  from: { path: string | null; point: string | null };
  /** The link points at `slot` now. */
  switched: boolean;
  /** The slot already held the point (checked file by file) and was reused. */
  reused?: boolean;
  restore?: { files: number; bytes: number; rewritten?: number; unchanged?: number; removed?: number; keptExcluded?: number; durationMs: number };
  health: HealthResult;
  /** Start to healthy: the achieved recovery time. */
  rtoMs: number | null;
  durationMs: number;
  /** When it failed: why. */
  reason?: string;
  /** Stopped by a signal after the link was switched: the slot is served, not confirmed healthy. */
  interrupted?: boolean;
  /** The new slot did not get healthy, and the old one is gone (removed by hand): the new one stays linked. */
  previousMissing?: boolean;
  /** After a failed switch: the link was put back, and whether the old slot answered healthy again. */
  switchedBack?: boolean;
  previousHealthy?: boolean | null;
  /** After switching back: what the old slot's check answered, or why its activate hook failed when no check is configured. */
  previousDetail?: string;
  /** After switching back: no health check is configured, so `previousHealthy` says only whether the activate hook succeeded. */
  previousUnchecked?: boolean;
  /** After switching back: the serving state it had replaced could not be put back (a warning says why), so the slot switched back to is served with the failed point's. */
  stateNotPutBack?: true;
  pruned: string[];
  /** What it warned of (on stderr as it went), and what it said of a point that does not record its exclude patterns. */
  warnings: Notice[];
}

interface Run {
  spec: TargetSpec;
  options: SwitchOptions;
  started: number;
  /** The warnings said so far, for the result. */
  warnings: Notice[];
  /** The link was moved to the new slot: from then on, an error no longer means that nothing changed. */
  linkMoved?: boolean;
  /** The serving-state sources of the point switched to, when its manifest was read. */
  stateSources?: string[];
  /** The switch's generation among the target's switches, once it is announced. */
  generation?: number;
  /** The target's switch lock, looked at once more before the switch is announced. */
  lock?: SwitchLock;
  /** The switch is being switched back: once that is journalled, the record no longer holds it as announced. */
  switchingBack?: boolean;
  /** The switch announced: the slot served and the one switched to. */
  move?: { from: string | null; to: string };
  /** The serving state sources the new point's state replaced, and where what each live database held is kept. */
  stateChanged?: StateChange[];
}

function note(run: Run, code: string, message: string, level: 'info' | 'warning' = 'info'): void {
  const n: Notice = { level, code, message };
  if (level === 'warning') run.warnings.push(n);
  run.options.reporter?.notice?.(n);
}

/** What hooks and health checks of a target see: the environment, with the target, its link, the slot and the point. */
function targetEnv(spec: TargetSpec, slot: string | null, point: string | null): NodeJS.ProcessEnv {
  return {
    ...(spec.env ?? process.env),
    LIFEBOAT_TARGET: spec.name,
    LIFEBOAT_ACTIVE: spec.active,
    LIFEBOAT_SLOT: slot ?? '',
    LIFEBOAT_POINT: point ?? '',
  };
}

function hookEnv(run: Run, slot: string | null, point: string | null): NodeJS.ProcessEnv {
  return targetEnv(run.spec, slot, point);
}

/**
 * Runs the target's activate or deactivate hook. `restoring`: it brings the
 * slot served before back into service, so an interrupt does not stop it (the
 * hook's timeout still does): skipped, it would leave that slot drained.
 */
async function hook(run: Run, name: 'activate' | 'deactivate', slot: string | null, point: string | null, restoring = false): Promise<void> {
  const command = run.spec[name];
  if (!command) return;
  note(run, `hook-${name}`, `running ${name} hook`);
  await runHook(name, command, {
    cwd: run.spec.cwd,
    env: hookEnv(run, slot, point),
    timeoutMs: run.options.hookTimeoutMs ?? run.spec.hookTimeoutMs ?? DEFAULT_HOOK_TIMEOUT_MS,
    signal: restoring ? undefined : run.options.signal,
    onOutput: run.options.onOutput,
  });
}

async function health(run: Run, slot: string | null, point: string | null): Promise<HealthResult> {
  return waitHealthy(run.spec.health, {
    cwd: run.spec.cwd,
    env: hookEnv(run, slot, point),
    signal: run.options.signal,
    onAttempt: (a, n) => {
      if (!a.ok) note(run, 'health-attempt', `health check ${n}: ${a.detail}`);
    },
  });
}

/**
 * Feeds each command source's captured state to its restore command, and copies SQLite sources back where asked.
 * An interrupt stops it, unless `unstoppable` (it puts back the state of what is served after one). `into`: where
 * each source is listed as it is put back, for a caller that undoes them when a later one fails (it then says
 * what it left); without it, a failure part-way is a warning naming what was put back and what not.
 */
async function applyState(run: Run, manifest: Manifest, slot: string, unstoppable = false, into?: StateChange[]): Promise<StateChange[]> {
  if (run.options.applyState === false) return [];
  const done: StateChange[] = into ?? [];
  const liveOf = (name: string) => manifest.sources.find((s) => s.name === name && s.kind === 'sqlite')?.restore;
  await putStateBack(manifest, slot, {
    cwd: run.spec.cwd,
    env: hookEnv(run, slot, manifest.id),
    timeouts: run.spec.stateTimeouts,
    signal: unstoppable ? undefined : run.options.signal,
    note: (code, message) => note(run, code, message),
    putBack: (name, keptAs) => done.push({ name, live: liveOf(name), keptAs }),
    emptyCopies: emptyCopies(run),
  }).catch((err: unknown) => {
    // The link has not moved, but the live state has: "nothing was switched" must not hide it, --quiet or not.
    if (done.length > 0 && into === undefined) {
      const kept = done.flatMap((d) => (d.keptAs ? [`what ${d.name} held is kept as ${d.keptAs}`] : []));
      const rest = stateToPutBack(manifest).filter((name) => !done.some((d) => d.name === name));
      const put = `${done.map((d) => d.name).join(', ')} had been put back${kept.length ? ` (${kept.join('; ')})` : ''}`;
      note(run, 'state-partly-put-back', `putting back the state of ${manifest.id} failed after ${put}; ${rest.join(', ')} not put back`, 'warning');
    }
    throw err;
  });
  return done;
}

/**
 * Undoes what putting the new point's state back changed, for the slot `from` still (or again) served. When
 * every source it changed is a SQLite database that held something, each gets back what it held just before
 * (kept beside it), which the slot's own copy of its point would not give (the service has written since that
 * point was taken). Otherwise (a command source, whose state only a point's capture can give) the state of the
 * point `from` holds goes back whole, as it was captured, so that the sources are of one moment; a slot made by
 * hand has no such point, and its databases get back what they held, with an error naming what could not go back.
 */
async function undoState(run: Run, repo: MaybeRepository, changed: readonly StateChange[], from: string, fromPoint: string | null): Promise<void> {
  const kept = changed.filter((c): c is Required<StateChange> => c.live !== undefined && c.keptAs !== undefined);
  const rest = changed.filter((c) => c.keptAs === undefined).map((c) => c.name);
  // A copy removed since (by hand, to free the disk): the database holds the other point's state, and only the point served can replace it.
  const lost: Required<StateChange>[] = [];
  for (const c of kept) if (await fsp.lstat(c.keptAs).then(() => false, (err: NodeJS.ErrnoException) => err.code === 'ENOENT' || err.code === 'ENOTDIR')) lost.push(c);
  const missing = lost.map((c) => `the copy of what ${quoteName(c.live)} held before, ${quoteName(c.keptAs)}, is missing`).join('; ');
  if ((rest.length > 0 || lost.length > 0) && fromPoint !== null) {
    if (lost.length > 0) note(run, 'state-copy-missing', `${missing}: the serving state of ${fromPoint} goes back whole as that point holds it, without what was written since it was taken`, 'warning');
    const old = await stateManifest(repo, run.spec.name, fromPoint);
    await applyState(run, old, from, true);
    return;
  }
  const there = kept.filter((c) => !lost.includes(c));
  for (const c of there) {
    note(run, 'state-restore', `putting back what ${quoteName(c.live)} held before, from ${quoteName(c.keptAs)}`);
    const again = await restoreSqlite(c.name, c.keptAs, c.live);
    if (again.keptAs) note(run, 'state-kept', `the state ${quoteName(c.live)} had before is kept as ${quoteName(again.keptAs)}`);
  }
  const put = there.length > 0 ? ` (${there.map((c) => c.name).join(', ')} put back)` : '';
  if (lost.length > 0) {
    throw new RuntimeFailure(`${missing}, and ${quoteName(from)} holds no point of the repository to take it from: ${lost.map((c) => c.name).join(', ')} keeps the state of the point put in place${put}`, {
      hint: `put the copy back where it was and run this again, or fail over to a point: lifeboat failover POINT --to ${run.spec.name}`,
    });
  }
  if (rest.length > 0) throw new Error(`${quoteName(from)} holds no point of the repository, so ${rest.join(', ')} has no copy to go back to${put}`);
}

function emptyCopies(run: Run): EmptyCopies {
  return { allow: run.options.allowEmptyState, leaveAlone: '--no-state' };
}

/** The repository, or why it could not be opened: a rollback that puts back no state does without it. */
export type MaybeRepository = Repository | { unreadable: unknown };

/**
 * The manifest of the point a rollback returns to, which says what serving state goes back. One
 * that cannot be read (damaged, a storage that fails) stops the rollback before the switch: left
 * out, the target would serve that point with the state of another, and say it rolled back.
 */
async function stateManifest(repo: MaybeRepository, target: string, point: string): Promise<Manifest> {
  const read = 'unreadable' in repo ? Promise.reject(repo.unreadable) : repo.manifest(point);
  return read.catch((err: unknown) => {
    if (err instanceof InterruptedError) throw err;
    throw new LifeboatError(`the serving state of ${point} cannot be put back, since its manifest could not be read: ${errorMessage(err)}`, err instanceof LifeboatError ? err.exitCode : ExitCode.runtime, {
      cause: err,
      hint: `lifeboat rollback --to ${target} --no-state switches the link alone, leaving the serving state as it is`,
    });
  });
}

/**
 * How the last recorded switch went to `slot`: putting its point's serving state back, or leaving the state
 * as it was (--no-state); undefined when the last switch recorded went elsewhere.
 */
async function lastSwitchTo(slots: string, slot: string): Promise<'put back' | 'left' | undefined> {
  const last = (await readTargetState(slots)).history.at(-1);
  if (last?.to !== slot) return undefined;
  return last.state === false ? 'left' : 'put back';
}

/** Whether the target's record says the point in `slot` has no serving state (known only for switches recorded since this was kept). */
function recordedStateless(state: TargetState, slot: string): boolean {
  const last = state.history.findLast((h) => h.to === slot && h.stateSources !== undefined);
  return last?.stateSources?.length === 0;
}

async function isDirectory(p: string): Promise<boolean> {
  return fsp.stat(p).then(
    (st) => st.isDirectory(),
    () => false,
  );
}

function healthFailure(run: Run, h: HealthResult): string {
  const t = run.spec.health?.timeoutMs ?? DEFAULT_HEALTH_TIMEOUT_MS;
  const cut = h.attemptLimitMs === undefined ? '' : `; ${attemptLimitAdvice(h.attemptLimitMs, `targets.${run.spec.name}.health`).reason}`;
  return `not healthy after ${h.attempts} attempt(s) in ${h.ms} ms (limit ${t} ms): ${h.detail}${cut}`;
}

/**
 * Moves the link from `from` to `to`: deactivate → switch → activate → poll
 * health. When the new slot does not become healthy the link is switched
 * back, the old slot's state reapplied and activated, and its health confirmed.
 */
async function transition(
  run: Run,
  repo: MaybeRepository,
  from: string | null,
  to: string,
  point: string | null,
  kind: 'failover' | 'rollback',
): Promise<Pick<SwitchResult, 'ok' | 'health' | 'reason' | 'switchedBack' | 'previousHealthy' | 'previousDetail' | 'previousUnchecked' | 'stateNotPutBack' | 'rtoMs' | 'interrupted' | 'previousMissing'>> {
  const fromPoint = slotPoint(run.spec.slots, from) ?? null;
  // Written down before anything is drained: in the target's record, and in the journal, which a prune on
  // another host reads. Killed once the link moved, before the end is journalled, the point now served is kept.
  const journalled = 'unreadable' in repo ? undefined : () => lastSwitchGeneration(repo.storage, run.spec.name);
  // Taken over while this process was stopped past its lease (on another host sharing the slots): nothing is switched.
  await run.lock?.check();
  run.generation = await announceSwitch(run.spec.slots, run.spec.active, switchRecord(run, from, to, kind), journalled);
  run.move = { from, to };
  await announceInJournal(run, repo, kind, point);
  // Whether the old slot may be drained: its deactivate hook ran (or was started), and whether it succeeded.
  let drained = false;
  let deactivated = false;
  try {
    if (from) {
      drained = true;
      await hook(run, 'deactivate', from, fromPoint);
      deactivated = true;
    }
    for (const name of await removeLeftLinks(run.spec.active)) note(run, 'link-leftover-removed', `removed ${quoteName(name)}, a new link left by a switch that was stopped before it could rename it over ${quoteName(run.spec.active)}`);
    await switchActive(run.spec.active, to).catch((err: unknown) => {
      // A raw rename error would read as a bug: say which link, and what the file system refused.
      throw new RuntimeFailure(`the active link ${quoteName(run.spec.active)} could not be switched to ${quoteName(to)}: ${errorMessage(err)}`, {
        cause: err,
        hint: fileSystemHint(err, path.dirname(run.spec.active)) ?? `lifeboat status --target ${run.spec.name} shows what is in the link's place`,
      });
    });
  } catch (err) {
    // Nothing was switched: bring the old slot back to service before failing, whatever failed after it was drained.
    if (drained) await reactivate(run, from!, fromPoint, deactivated ? err : undefined);
    throw err;
  }
  run.linkMoved = true;
  note(run, 'switched', `${quoteName(run.spec.active)} → ${quoteName(to)}`);
  let reason: string | undefined;
  let h: HealthResult = { ok: false, attempts: 0, ms: 0, detail: 'not checked' };
  try {
    try {
      await hook(run, 'activate', to, point);
    } catch (err) {
      throwIfAborted(run.options.signal);
      reason = errorMessage(err);
    }
    if (!reason) {
      h = await health(run, to, point);
      if (h.ok) return { ok: true, health: h, rtoMs: Date.now() - run.started };
      reason = healthFailure(run, h);
    }
  } catch (err) {
    // Stopped while the new slot was being activated or checked: it stays linked (it may be about to
    // answer), and the caller records the switch so that a rollback returns to `from`.
    if (err instanceof InterruptedError) return { ok: false, health: h, reason: 'interrupted before the new slot was confirmed healthy', interrupted: true, rtoMs: null };
    throw err;
  }
  if (from && !(await isDirectory(from))) {
    // Switching back would leave the link dangling: the new slot at least holds a verified point.
    note(run, 'previous-missing', `${quoteName(to)} failed (${reason}); ${quoteName(from)} is missing, so ${quoteName(to)} stays linked`, 'warning');
    return { ok: false, health: h, reason, previousMissing: true, rtoMs: null };
  }
  note(run, 'switching-back', `${quoteName(to)} failed (${reason}); switching back to ${from === null ? 'no link' : quoteName(from)}`, 'warning');
  // Written down first: killed before the old slot's state is back, the next failover or rollback puts it back and journals this one.
  // What this run put in place of the serving state is undone: by this run, or, killed first, by the next.
  const undo = from !== null && run.options.applyState !== false && (run.stateChanged?.length ?? 0) > 0;
  run.switchingBack = true;
  await announceSwitchBack(run.spec.slots, { at: new Date().toISOString(), reason, state: undo });
  await hook(run, 'deactivate', to, point).catch((err) => note(run, 'hook-failed', `deactivate hook: ${errorMessage(err)}`, 'warning'));
  await switchActive(run.spec.active, from).catch(async (err: unknown) => {
    // The link still names the new slot, just drained: activated again, it is as it was before the switch back began.
    const served = point ?? quoteName(to);
    await hook(run, 'activate', to, point, true).catch((failed: unknown) => note(run, 'hook-failed', `activate hook: ${errorMessage(failed)}; ${served} may stay drained`, 'warning'));
    // Recorded as made, so that the rollback the hint names returns to the slot served before.
    await remember(run, from, to, kind).catch(() => undefined);
    const back = fromPoint ?? (from === null ? 'no link' : quoteName(from));
    throw new RuntimeFailure(`${served} was not healthy (${reason}), and switching back to ${back} failed: the active link ${quoteName(run.spec.active)} could not be switched: ${errorMessage(err)}; ${run.spec.name} still serves ${served}`, {
      cause: err,
      hint: `${fileSystemHint(err, path.dirname(run.spec.active)) ?? 'once the cause is fixed'}, lifeboat rollback --to ${run.spec.name} switches back to ${back}`,
    });
  });
  let previousHealthy: boolean | null = null;
  let previousDetail: string | undefined;
  let previousUnchecked: boolean | undefined;
  let stateBack = true;
  if (from) {
    if (undo) {
      // Not stopped by an interrupt, as the activate hook below is not: the slot served again needs its state.
      const again = fromPoint ? `; lifeboat failover ${fromPoint} --to ${run.spec.name} puts it back` : '';
      await whileLeftUndone(`the serving state is that of ${point ?? to} while ${run.spec.name} serves ${fromPoint ?? quoteName(from)} again${again}`, () => undoState(run, repo, run.stateChanged ?? [], from, fromPoint))
        .then(() => markStateOf(run.spec.slots, undefined))
        .catch((err) => {
          stateBack = false;
          note(run, 'state-restore-failed', errorMessage(err), 'warning');
        });
      await announceSwitchBack(run.spec.slots, { at: new Date().toISOString(), reason, state: false });
    }
    let reactivated: string | undefined;
    await hook(run, 'activate', from, fromPoint, true).catch((err) => {
      reactivated = errorMessage(err);
      note(run, 'hook-failed', `activate hook: ${reactivated}`, 'warning');
    });
    const back = await health(run, from, fromPoint).catch((err: unknown) => {
      if (!(err instanceof InterruptedError)) throw err;
      // "interrupted" alone would leave the operator to find out what is served, and with which state.
      const state = undo ? (stateBack ? ', its serving state put back' : ', its serving state NOT put back (see the warning above)') : '';
      throw new InterruptedError(`interrupted after switching back: ${run.spec.name} serves ${fromPoint ?? from} again${state}, not confirmed healthy (${point ?? to} was not healthy: ${reason})`, {
        hint: `lifeboat status --target ${run.spec.name} shows whether it answers healthy`,
      });
    });
    // Without a health check, only the activate hook tells: one that failed leaves the old slot in doubt, not healthy.
    previousUnchecked = back.unchecked;
    previousHealthy = back.unchecked ? reactivated === undefined : back.ok;
    previousDetail = back.unchecked ? reactivated : back.detail;
    const said = previousHealthy ? (back.unchecked ? 'activated again (no health check configured)' : 'healthy again') : back.unchecked ? `not activated again (${reactivated})` : 'NOT healthy either';
    note(run, previousHealthy ? 'previous-healthy' : 'previous-unhealthy', `${quoteName(from)} is ${said}`, previousHealthy ? 'info' : 'warning');
  }
  return { ok: false, health: h, reason, switchedBack: true, previousHealthy, ...(previousDetail ? { previousDetail } : {}), ...(previousUnchecked ? { previousUnchecked } : {}), ...(stateBack ? {} : { stateNotPutBack: true as const }), rtoMs: null };
}

/**
 * Runs `activate` again on the slot still linked, drained by its `deactivate` hook (or by a hook
 * that failed or was stopped part-way); `after`: what stopped the switch once the hook had succeeded.
 */
async function reactivate(run: Run, from: string, fromPoint: string | null, after: unknown): Promise<void> {
  if (!run.spec.activate) return;
  // After a deactivate hook that failed, its error says why: only a failure after it drained the slot is news.
  if (after !== undefined && !(after instanceof InterruptedError)) note(run, 'reactivating', `the switch failed before the link moved (${errorMessage(after)}): activating ${fromPoint ?? quoteName(from)} again`, 'warning');
  await hook(run, 'activate', from, fromPoint, true).catch((failed: unknown) => {
    note(run, 'hook-failed', `activate hook: ${errorMessage(failed)}; ${fromPoint ?? quoteName(from)} is still linked but may stay drained: see to it by hand`, 'warning');
  });
}

function switchRecord(run: Run, from: string | null, to: string, kind: string): SwitchRecord {
  return {
    at: new Date().toISOString(),
    from,
    to,
    kind,
    state: run.options.applyState !== false,
    ...(run.stateSources ? { stateSources: run.stateSources } : {}),
    ...(run.generation !== undefined ? { generation: run.generation } : {}),
  };
}

async function remember(run: Run, from: string | null, to: string, kind: string): Promise<void> {
  const state = await readTargetState(run.spec.slots, { from, to });
  state.previous = from;
  state.history.push(switchRecord(run, from, to, kind));
  if (run.generation !== undefined) state.generation = Math.max(state.generation ?? 0, run.generation);
  await writeTargetState(run.spec.slots, state).catch((err: unknown) => {
    // The link has already moved: an operator must not take this for a failure before the switch.
    const fromPoint = slotPoint(run.spec.slots, from);
    const back = from === null ? '' : fromPoint ? `; lifeboat failover ${fromPoint} --to ${run.spec.name} returns to what was served before` : `; what was served before is ${quoteName(from)}`;
    throw new RuntimeFailure(`${run.spec.name} now serves ${slotPoint(run.spec.slots, to) ?? to}, but the switch could not be recorded for a rollback: ${errorMessage(err)}`, {
      cause: err,
      hint: `${fileSystemHint(err, run.spec.slots) ?? `check that ${quoteName(run.spec.slots)} can be written`}${back}`,
    });
  });
}

/**
 * Takes in what a transition left. A link left on the new slot (healthy, or
 * kept because the old slot is gone) is remembered, so that a rollback
 * returns; an interrupt ends the command; otherwise it was switched back.
 */
async function settle(run: Run, kind: 'failover' | 'rollback', result: SwitchResult, t: Awaited<ReturnType<typeof transition>>): Promise<void> {
  Object.assign(result, t);
  if (t.interrupted) await interruptedAfterSwitch(run, kind, result);
  if (!t.ok && !t.previousMissing) {
    result.outcome = 'rolled-back';
    return;
  }
  result.switched = true;
  if (t.ok) result.outcome = 'ok';
  await remember(run, result.from.path, result.slot, kind);
}

/** An interrupt after the link was switched, whose message says what is served now; `result`, what the switch did. */
export class InterruptedAfterSwitch extends InterruptedError {
  constructor(
    message: string,
    options: { hint?: string },
    readonly result: SwitchResult,
  ) {
    super(message, options);
  }
}

/**
 * An error before the switch says that nothing changed and what is still served: at 3 a.m. "the deactivate hook
 * failed" or a checksum mismatch alone leaves the operator to find out whether the target was touched. After
 * the switch, the error already says what is served; a refused command line (exit 2) changed nothing to begin with.
 */
function beforeTheSwitch(err: unknown, run: Run, what: string, served: string, again: string, stateBack?: boolean): unknown {
  if (err instanceof InterruptedAfterSwitch || run.linkMoved) return err;
  if (err instanceof InterruptedError) {
    const state = stateBack === undefined ? '' : stateBack ? `, and its serving state was put back` : `, but its serving state could not be put back (see the warning above)`;
    return new InterruptedError(`interrupted before the switch: ${run.spec.name} still serves ${served}${state}; nothing was switched`, { hint: again });
  }
  // Refused credentials are no refused command line: they come part-way (temporary ones that ran out), and the operator needs to know what is served.
  if ((err instanceof UsageError && !(err instanceof CredentialsRefusedError)) || !(err instanceof Error)) return err;
  // The same error, its class, exit code, hint and damaged volume kept: only what it says grows.
  const state = stateBack === undefined ? '' : stateBack ? ` with its serving state as it was` : `, but its serving state could not be put back as it was (see the warning above)`;
  err.message = `${what} failed before the switch: ${err.message}; ${run.spec.name} still serves ${served}${state}, nothing was switched`;
  return err;
}

/**
 * After an interrupt that left `result.slot` linked: the switch is recorded as
 * any other, so a rollback returns to the slot served before; then the command
 * ends (exit 130, journalled as a failure) saying what is served now.
 */
async function interruptedAfterSwitch(run: Run, kind: 'failover' | 'rollback', result: SwitchResult): Promise<never> {
  await remember(run, result.from.path, result.slot, kind);
  const back = result.from.path
    ? `lifeboat rollback --to ${run.spec.name} switches back to ${result.from.point ?? result.from.path}`
    : `lifeboat status --target ${run.spec.name} shows whether it answers healthy`;
  result.switched = true;
  result.durationMs = Date.now() - run.started;
  throw new InterruptedAfterSwitch(`interrupted after the switch: ${run.spec.name} now serves ${result.point ?? result.slot}, not confirmed healthy`, { hint: back }, result);
}

/**
 * Removes the least recently used slots beyond `keep` (keepSlots); never the
 * active or the previous one.
 */
async function pruneSlots(run: Run, active: string | null, previous: string | null, keep = run.spec.keepSlots): Promise<string[]> {
  if (keep === undefined) return [];
  const state = await readTargetState(run.spec.slots);
  const lastUsed = new Map<string, number>();
  for (const h of state.history) lastUsed.set(h.to, Date.parse(h.at));
  const protectedDirs = new Set([active, previous].filter((d): d is string => d !== null));
  const doomed = planSlotPrune(await listSlots(run.spec.slots), keep, protectedDirs, lastUsed);
  for (const s of doomed) {
    await removeTree(s.path);
    note(run, 'slot-removed', `removed old slot ${s.name}`);
  }
  return doomed.map((s) => s.name);
}

async function journal(run: Run, repo: MaybeRepository, type: string, result: SwitchResult): Promise<void> {
  try {
    if ('unreadable' in repo) throw repo.unreadable;
    await appendEvent(repo.storage, {
      type,
      point: result.point,
      target: run.spec.name,
      outcome: result.outcome,
      durationMs: result.durationMs,
      detail: {
        slot: result.slot,
        from: result.from.path,
        fromPoint: result.from.point,
        rtoMs: result.rtoMs,
        reused: result.reused,
        healthAttempts: result.health.attempts,
        // Whether the link stayed on the new slot (a failure that kept it there too), and the switch's place among the target's.
        switched: result.switched,
        ...(run.generation !== undefined ? { generation: run.generation } : {}),
        ...(result.reason ? { reason: result.reason } : {}),
        ...(result.previousHealthy !== undefined ? { previousHealthy: result.previousHealthy } : {}),
      },
    });
  } catch (err) {
    note(run, 'journal-failed', `could not record the ${type} in the journal: ${errorMessage(err)}`, 'warning');
  }
  if (run.switchingBack) await settlePending(run.spec.slots);
}

async function journalError(run: Run, repo: MaybeRepository, type: string, point: string | null, err: unknown): Promise<void> {
  // Stopped while it switched back, it has said what it left: no later run is to finish it. Stopped before
  // the link moved, it has activated the slot still served again: the record says no switch under way.
  if (run.switchingBack || (run.move && !run.linkMoved)) await settlePending(run.spec.slots);
  // Refused before anything changed (no previous slot, a target being switched): no failed switch for status to list.
  if ('unreadable' in repo || refusedBeforeWriting(err)) return;
  const { move } = run;
  // Stopped once the new slot was linked (interrupted, or the switch could not be recorded): the target serves it, and a prune elsewhere must keep it.
  const switched = move !== undefined && run.linkMoved === true && (await readActive(run.spec.active, run.spec.slots).catch(() => null)) === move.to;
  await appendEvent(repo.storage, {
    type,
    point,
    target: run.spec.name,
    outcome: 'failed',
    durationMs: Date.now() - run.started,
    detail: {
      reason: errorMessage(err),
      // Once announced, the end of the switch, which settles the announcement (see SwitchSettling).
      ...(move ? { slot: move.to, from: move.from, fromPoint: slotPoint(run.spec.slots, move.from) ?? null, switched } : {}),
      ...(run.generation !== undefined ? { generation: run.generation } : {}),
    },
  }).catch(() => undefined);
}

/**
 * Writes in the journal that the target is about to switch to `point` (outcome `switching`), before the link
 * moves: a prune on another host reads the journal, not the target's record, and keeps both points until the
 * switch's end is journalled. A journal that cannot take it is a warning: the switch goes on.
 */
async function announceInJournal(run: Run, repo: MaybeRepository, kind: 'failover' | 'rollback', point: string | null): Promise<void> {
  const { move } = run;
  if (!move || 'unreadable' in repo) return;
  await appendEvent(repo.storage, {
    type: kind,
    point,
    target: run.spec.name,
    outcome: 'switching',
    detail: { slot: move.to, from: move.from, fromPoint: slotPoint(run.spec.slots, move.from) ?? null, ...(run.generation !== undefined ? { generation: run.generation } : {}) },
  }).catch((err: unknown) => {
    note(run, 'journal-failed', `could not record in the journal that ${run.spec.name} is switching to ${point ?? move.to}: ${errorMessage(err)}; a prune on another host does not know of it until the switch ends`, 'warning');
  });
}

/** What a switch stopped while it was switched back left undone, said for `status` and for the error of the run that finishes it. */
function leftUndone(spec: TargetSpec, back: UnfinishedSwitchBack): string {
  const point = slotPoint(spec.slots, back.from) ?? (back.from === null ? 'no link' : quoteName(back.from));
  return `the ${back.kind} of ${spec.name} to ${slotPoint(spec.slots, back.to) ?? quoteName(back.to)} was switched back to ${point} (${back.reason}), but was stopped before it put back the serving state of ${point}`;
}

/**
 * Finishes a switch that a process killed while it switched back left (see
 * unfinishedSwitchBack): puts back the serving state of the slot linked again
 * and activates it, as that process was about to (unless this run leaves the
 * state alone, --no-state), and journals the switch. Where the state cannot be
 * put back, the error says so, and that the live state is the other point's.
 */
async function finishSwitchBack(run: Run, repo: MaybeRepository): Promise<void> {
  const back = await unfinishedSwitchBack(run.spec.slots);
  if (!back) return;
  const { spec } = run;
  const point = slotPoint(spec.slots, back.from) ?? null;
  const failed = slotPoint(spec.slots, back.to) ?? null;
  let after = 'stopped before the serving state of the slot switched back to was put back';
  const changed = await stateChangedInPlace(spec.slots);
  if (back.state && back.from && (point || changed)) {
    if (run.options.applyState === false) {
      after += ', and left so by a run with --no-state';
      note(run, 'state-left', `${leftUndone(spec, back)}: --no-state leaves the serving state of ${failed ?? quoteName(back.to)} live`, 'warning');
    } else {
      note(run, 'finishing-switch-back', `${leftUndone(spec, back)}: putting it back now`, 'warning');
      const slot = back.from;
      // What the killed run replaced goes back as it would have; a record of an earlier version says only whose state it was.
      await (changed ? undoState(run, repo, changed, slot, point) : stateManifest(repo, spec.name, point!).then((manifest) => applyState(run, manifest, slot)))
        .then(() => markStateOf(spec.slots, undefined))
        .catch((err: unknown) => {
          if (err instanceof InterruptedError) throw err;
          throw new LifeboatError(`${leftUndone(spec, back)}, so its serving state is that of ${failed ?? quoteName(back.to)}, and putting it back failed: ${errorMessage(err)}`, err instanceof LifeboatError ? err.exitCode : ExitCode.runtime, {
            cause: err,
            hint: `once the cause is fixed, ${point ? `lifeboat failover ${point} --to ${spec.name} puts it back` : `lifeboat rollback --to ${spec.name} tries again`}; --no-state goes on, leaving the serving state as it is`,
          });
        });
      await hook(run, 'activate', slot, point, true).catch((err) => note(run, 'hook-failed', `activate hook: ${errorMessage(err)}`, 'warning'));
      after += ', which the next run put back';
    }
  }
  const notJournalled = (err: unknown) => note(run, 'journal-failed', `could not record the ${back.kind} to ${failed ?? quoteName(back.to)} in the journal: ${errorMessage(err)}`, 'warning');
  if ('unreadable' in repo) notJournalled(repo.unreadable);
  else {
    await appendEvent(repo.storage, {
      type: back.kind,
      at: back.at,
      point: failed,
      target: spec.name,
      outcome: 'rolled-back',
      detail: { slot: back.to, from: back.from, fromPoint: point, reason: `${back.reason}; ${after}`, switched: false, ...(back.generation !== undefined ? { generation: back.generation } : {}) },
    }).catch(notJournalled);
  }
  await settlePending(spec.slots);
}

/**
 * Puts the serving state of `point` in place (`put`) for a switch from `from` to `slot`, written down first in
 * the target's record while another slot is served: a process killed before the switch (or the state of the
 * point served back) leaves it said there, for status. Put in place for the slot served, it is said no more.
 */
async function stateInPlace(run: Run, point: string, slot: string, from: string | null, put: () => Promise<void>): Promise<void> {
  const putting = run.options.applyState !== false;
  const said = putting && from !== slot && run.stateSources?.length !== 0 ? { slot, point, at: new Date().toISOString() } : undefined;
  if (said) await markStateOf(run.spec.slots, said);
  try {
    await put();
  } finally {
    // What it replaced (all, or what went back before a source failed), for a run killed before the switch is undone: the next one puts back what was there.
    if (said && run.stateChanged?.length) await markStateOf(run.spec.slots, { ...said, changed: run.stateChanged });
  }
  if (putting && from === slot) await markStateOf(run.spec.slots, undefined);
}

/**
 * Puts back the serving state of the point in `from`, still served, which a failover or rollback stopped
 * before the switch had replaced with that of `point`; a warning says when it cannot. After an interrupt
 * too, which does not stop it (a second one stops the process at once, which then says what is left to do).
 * Returns whether it was put back; undefined when none of it had been replaced (a first source that failed).
 */
async function servedStateBack(run: Run, repo: MaybeRepository, from: string, point: string | null, interrupted: boolean): Promise<boolean | undefined> {
  if (!run.stateChanged?.length) {
    await markStateOf(run.spec.slots, undefined);
    return undefined;
  }
  const fromPoint = slotPoint(run.spec.slots, from);
  const served = fromPoint ?? quoteName(from);
  const left = `the serving state is that of ${point ?? 'the point rolled back to'} while ${run.spec.name} serves ${served}${fromPoint ? `; lifeboat failover ${fromPoint} --to ${run.spec.name} --state puts it back` : ''}`;
  note(run, 'state-back', `putting back the serving state of ${served}, which ${run.spec.name} still serves${interrupted ? ' (interrupt again to stop at once, leaving the other point\'s state live)' : ''}`);
  const putBack = whileLeftUndone(left, () => undoState(run, repo, run.stateChanged ?? [], from, fromPoint ?? null));
  return putBack.then(
    async () => {
      await markStateOf(run.spec.slots, undefined);
      return true;
    },
    (err: unknown) => {
      note(run, 'state-restore-failed', `the serving state of ${served} could not be put back (${errorMessage(err)}): ${left}`, 'warning');
      return false;
    },
  );
}

/**
 * Fails a target over to a point: restore it into its slot (or check and
 * reuse the slot that holds it, repairing what differs) → check its models →
 * put the serving state back → pre-activation check → deactivate → switch
 * the link atomically → activate → poll health. A target that does not get
 * healthy is switched back (outcome rolled-back). Every outcome is journalled.
 * Errors before the switch (a restore that fails verification, a failed
 * pre-activation check) leave the link untouched.
 */
export async function failover(repo: Repository, manifest: Manifest, spec: TargetSpec, options: SwitchOptions = {}): Promise<SwitchResult> {
  // Registered as a reader of the point until its switch is journalled, not only while its slot is restored:
  // a prune started while the state goes back or the old slot drains would otherwise find it neither read nor
  // served, and remove the point the target is about to serve.
  const context = { ...readerLockOptions(options), reporter: options.reporter ?? {}, warnings: [], reads: [manifest.id] };
  return whileReading(repo.storage, 'failover', context, () => failoverRegistered(repo, manifest, spec, options));
}

async function failoverRegistered(repo: Repository, manifest: Manifest, spec: TargetSpec, options: SwitchOptions): Promise<SwitchResult> {
  const run: Run = { spec, options, started: Date.now(), warnings: [] };
  const slot = slotPath(spec.slots, manifest.id);
  const unlock = await lockTarget(spec.slots, spec.name, `failover ${manifest.id}`, undefined, options.lockStaleAfterMs);
  run.lock = unlock;
  /** What the target served when the failover started, said when it is interrupted before the switch. */
  let served = 'nothing';
  /** Once the new point's serving state went back: puts back that of the point still served, for a failover stopped before the switch (interrupted or not). */
  let putServedStateBack: ((interrupted: boolean) => Promise<boolean | undefined>) | undefined;
  try {
    await finishSwitchBack(run, repo);
    const from = await readActive(spec.active, spec.slots);
    const fromPoint = slotPoint(spec.slots, from) ?? null;
    served = fromPoint ?? from ?? 'nothing';
    await checkActiveLinkWritable(spec.active, spec.name);
    // Run again for the point already served (to repair its slot, or unsure whether the first run went through),
    // a failover must not put the backup's state over what the service has written since it was switched to,
    // nor over the state a switch with --no-state kept. Unless a run stopped before its switch left another
    // point's state in place: then it goes back.
    const last = from === slot && options.applyState === undefined ? await lastSwitchTo(spec.slots, slot) : undefined;
    if (last !== undefined && !(await stateLeftBehind(spec.slots, from))) {
      run.options = { ...options, applyState: false };
      const when = last === 'put back' ? 'was put back when it was switched to' : 'was left as it was when it was switched to (--no-state)';
      if (stateToPutBack(manifest).length > 0) note(run, 'state-left', `${spec.name} already serves ${manifest.id}, whose serving state ${when}; the state is left as it is (--state puts it back again)`);
    }
    // Refused before the slot is restored, which may take long: the operator hears it at once.
    if (run.options.applyState !== false) await refuseEmptyCopies(manifest, emptyCopies(run));
    const reused = await isDirectory(slot);
    const unrecorded = reused ? unrecordedExcludes(manifest, options.excludesWhenUnrecorded ?? [], 'the check of its slot') : undefined;
    if (unrecorded) {
      run.warnings.push(unrecorded);
      options.reporter?.notice?.(unrecorded);
    }
    for (const name of await removeOtherStaging(slot)) note(run, 'staging-removed', `removed ${quoteName(name)}, left by an interrupted failover to another point`);
    note(run, reused ? 'slot-check' : 'slot-restore', reused ? `checking slot ${quoteName(slot)} file by file` : `restoring ${manifest.id} into ${quoteName(slot)}`);
    // The server loads the slot right after the switch: the weights are left in memory for it.
    const restoreSlot = () =>
      restore(repo, manifest, { target: slot, delta: reused, excludesWhenUnrecorded: options.excludesWhenUnrecorded, concurrency: options.concurrency, pageCache: true, registered: true, signal: options.signal, reporter: options.reporter });
    const explained = (err: unknown): unknown => {
      if (!(err instanceof NotEnoughSpace)) return err;
      const kept = spec.keepSlots === undefined ? 'set keepSlots to have old slots removed' : `keepSlots (${spec.keepSlots}) never removes the active slot or the previous one, kept for a rollback`;
      return new NotEnoughSpace(err.message, `free space on the file system of ${spec.slots} (lifeboat status lists the slots; ${kept})`);
    };
    // Old slots stay until the new one is healthy, unless the disk cannot hold one more: then the slots a
    // success would remove make room first (a refused restore has written nothing), so the disk needs
    // room for keepSlots slots, not one more.
    let madeRoom: string[] = [];
    const r = await restoreSlot().catch(async (err: unknown) => {
      if (!(err instanceof NotEnoughSpace) || reused || spec.keepSlots === undefined) throw explained(err);
      madeRoom = await pruneSlots(run, from, (await readTargetState(spec.slots)).previous, Math.max(0, spec.keepSlots - 1));
      if (madeRoom.length === 0) throw explained(err);
      return restoreSlot().catch((again: unknown) => {
        throw explained(again);
      });
    });
    run.warnings.push(...r.warnings.filter((w) => w.level === 'warning'));
    const changed = (r.rewritten ?? 0) + (r.removed ?? 0);
    if (reused) note(run, 'slot-reused', changed ? `slot ${quoteName(slot)} repaired: ${r.rewritten} rewritten, ${r.removed} removed` : `slot ${quoteName(slot)} holds ${manifest.id} intact`);
    const result: SwitchResult = {
      ok: false,
      outcome: 'failed',
      target: spec.name,
      point: manifest.id,
      slot,
      from: { path: from, point: fromPoint },
      switched: false,
      reused,
      restore: { files: r.files, bytes: r.bytes, rewritten: r.rewritten, unchanged: r.unchanged, removed: r.removed, keptExcluded: r.keptExcluded, durationMs: r.durationMs },
      health: { ok: false, attempts: 0, ms: 0, detail: 'not checked' },
      rtoMs: null,
      durationMs: 0,
      pruned: madeRoom,
      warnings: run.warnings,
    };
    const finish = async (): Promise<SwitchResult> => {
      result.durationMs = Date.now() - run.started;
      await journal(run, repo, 'failover', result);
      return result;
    };

    // A slot whose bytes verified can still hold a model that will not load: checked before anything switches, and
    // before the serving state goes back, which a slot refused here must leave as the service last wrote it.
    if (from !== slot) {
      const models = await validateDirectory(slot, { signal: options.signal });
      if (models.findings.length > 0) {
        note(run, 'model-invalid', `${models.findings.length} model problem(s) in ${quoteName(slot)}`);
        result.reason = `the model in ${quoteName(slot)} would not load: ${models.findings.slice(0, 3).map((f) => `${f.path}: ${f.reason}`).join('; ')}`;
        return finish();
      }
    }

    run.stateSources = stateToPutBack(manifest);
    // Left in place by a run stopped before its switch away from this slot: what that run replaced goes back, as it would have.
    const leftBehind = from === slot && options.applyState === undefined ? await stateLeftBehind(spec.slots, from) : undefined;
    // Set first: a restore command that fails (or is interrupted) after a database went back leaves what went back to undo,
    // listed as it goes back; with nothing served to go back to, a warning names it.
    if (from && from !== slot && run.options.applyState !== false && run.stateSources.length > 0) putServedStateBack = (interrupted) => servedStateBack(run, repo, from, manifest.id, interrupted);
    await stateInPlace(run, manifest.id, slot, from, async () => {
      if (leftBehind?.changed) await undoState(run, repo, leftBehind.changed, slot, manifest.id);
      else run.stateChanged = await applyState(run, manifest, slot, false, putServedStateBack && (run.stateChanged = []));
    });

    if (from === slot) {
      // Already serving this point: the slot was checked; reload only if it had to be repaired, or if a switch
      // away from it was killed before the link moved, after its deactivate hook may have drained it.
      const drained = spec.deactivate !== undefined && (await switchNotMade(spec.slots))?.from === slot;
      if (changed || drained) await hook(run, 'activate', slot, manifest.id);
      if (drained) await settlePending(spec.slots);
      result.health = await health(run, slot, manifest.id);
      result.switched = true;
      result.ok = result.health.ok;
      result.outcome = result.ok ? 'ok' : 'failed';
      result.rtoMs = result.ok ? Date.now() - run.started : null;
      if (!result.ok) result.reason = healthFailure(run, result.health);
      return finish();
    }

    /**
     * Stopped before the switch by a check of the new slot, once its point's serving state went back: the
     * state of the point still served goes back too, or the target would serve it with another's state.
     */
    const notSwitched = async (): Promise<SwitchResult> => {
      await putServedStateBack?.(false);
      return finish();
    };

    const pre = spec.health?.preActivate;
    if (pre) {
      note(run, 'pre-activate', `checking ${quoteName(slot)} before activating it`);
      const check = await checkOnce({ command: pre }, spec.health?.timeoutMs ?? DEFAULT_HEALTH_TIMEOUT_MS, { cwd: spec.cwd, env: hookEnv(run, slot, manifest.id), signal: options.signal, commandName: 'health.preActivate' });
      if (!check.ok) {
        result.reason = `pre-activation check failed: ${check.detail}`;
        return notSwitched();
      }
    }

    const t = await transition(run, repo, from, slot, manifest.id, 'failover');
    await settle(run, 'failover', result, t);
    if (t.ok) result.pruned = [...madeRoom, ...(await pruneSlots(run, slot, from))];
    return finish();
  } catch (err) {
    const stateBack = run.linkMoved ? undefined : await putServedStateBack?.(err instanceof InterruptedError);
    await journalError(run, repo, 'failover', manifest.id, err);
    throw beforeTheSwitch(err, run, `failover of ${spec.name} to ${manifest.id}`, served, `lifeboat failover ${manifest.id} --to ${spec.name} starts again, going on from what was restored`, stateBack);
  } finally {
    await unlock();
  }
}

function noPreviousSlot(spec: TargetSpec): UsageError {
  return new UsageError(`target ${spec.name} has no previous slot to roll back to`, { hint: `fail over to a chosen point instead: lifeboat failover POINT --to ${spec.name}` });
}

/**
 * Switches a target back to the slot it served before its last switch, with
 * the same health checking (and switching back again if that slot is not
 * healthy). Rolling back twice returns to where it started.
 */
export async function rollback(repo: MaybeRepository, spec: TargetSpec, options: SwitchOptions = {}): Promise<SwitchResult> {
  const run: Run = { spec, options, started: Date.now(), warnings: [] };
  let to: string | null = null;
  let served = 'nothing';
  /** See failover. */
  let putServedStateBack: ((interrupted: boolean) => Promise<boolean | undefined>) | undefined;
  // A target never failed over has no slots directory: nothing to roll back to, and nothing to make for it.
  const slots = await fsp.lstat(spec.slots).catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? undefined : null));
  if (slots === undefined) throw noPreviousSlot(spec);
  const unlock = await lockTarget(spec.slots, spec.name, 'rollback', undefined, options.lockStaleAfterMs);
  run.lock = unlock;
  try {
    await finishSwitchBack(run, repo);
    const state = await readTargetState(spec.slots);
    const from = await readActive(spec.active, spec.slots);
    served = slotPoint(spec.slots, from) ?? from ?? 'nothing';
    to = state.previous;
    if (!to) {
      // A damaged record is not a target that never switched: say so, or the operator looks for a mistake of theirs.
      const damage = await targetStateDamage(spec.slots);
      if (damage) {
        throw new RuntimeFailure(`the record of the switches of target ${spec.name}, ${path.join(spec.slots, TARGET_STATE_FILE)}, is damaged (${damage}), so the slot to roll back to is not known`, {
          hint: `fail over to the point served before: lifeboat status --target ${spec.name} lists the last failovers and the slots; lifeboat failover POINT --to ${spec.name}`,
        });
      }
      throw noPreviousSlot(spec);
    }
    if (!(await isDirectory(to))) {
      throw new UsageError(`the previous slot ${quoteName(to)} of target ${spec.name} no longer exists`, { hint: `fail over to a chosen point instead: lifeboat failover ${slotPoint(spec.slots, to) ?? 'POINT'} --to ${spec.name}` });
    }
    if (to === from) throw new UsageError(`target ${spec.name} already serves ${quoteName(to)}`);
    // A restore into it killed while it rewrote it (a failover to its point): serving it would serve a mix of points.
    const unfinished = await restoreLeftUnfinished(to);
    if (unfinished) {
      throw new IntegrityError(`the previous slot ${quoteName(to)} of target ${spec.name} may hold a mix of old and new files: a restore into it (pid ${unfinished.pid}, started ${unfinished.since}) was stopped before it finished`, {
        hint: `lifeboat failover ${slotPoint(spec.slots, to) ?? 'POINT'} --to ${spec.name} checks it file by file, repairs it and switches to it`,
      });
    }
    await checkActiveLinkWritable(spec.active, spec.name);
    for (const p of await removeLeftCopies(to)) note(run, 'copy-leftover-removed', `removed ${p}, a copy left by a restore that was stopped while it copied a file into place`);
    const point = slotPoint(spec.slots, to) ?? null;
    // Undoing a switch that left the serving state alone (--no-state) leaves it alone too, unless told otherwise:
    // the live state was kept for a reason, and the point's copy would replace what was written since.
    const undone = state.history.at(-1);
    if (options.applyState === undefined && undone?.to === from && undone.state === false) {
      run.options = { ...options, applyState: false };
      note(run, 'state-left', `the ${undone.kind} to ${slotPoint(spec.slots, from) ?? quoteName(from)} left the serving state as it was, so this rollback does too (--state puts the state of ${point ?? quoteName(to)} back)`);
    }
    const result: SwitchResult = {
      ok: false,
      outcome: 'failed',
      target: spec.name,
      point,
      slot: to,
      from: { path: from, point: slotPoint(spec.slots, from) ?? null },
      switched: false,
      health: { ok: false, attempts: 0, ms: 0, detail: 'not checked' },
      rtoMs: null,
      durationMs: 0,
      pruned: [],
      warnings: run.warnings,
    };
    const intoLive = state.history.findLast((h) => h.to === from);
    if (!point && run.options.applyState !== false && intoLive?.state !== false && (intoLive?.stateSources?.length ?? 0) > 0) {
      // A slot made by hand has no copy of any state: the operator must hear that the live state stays the other point's.
      const left = intoLive!.stateSources!.join(', ');
      note(run, 'state-none', `${quoteName(to)} holds no point of the repository, so no serving state goes back with it: ${left} keep${intoLive!.stateSources!.length === 1 ? 's' : ''} the state ${served} put in place (what a SQLite database held before is kept beside it)`, 'warning');
    }
    if (point && run.options.applyState !== false) {
      const slot = to;
      const manifest = await stateManifest(repo, spec.name, point).catch((err: unknown) => {
        // A point the target's record says has no serving state needs no manifest: the link alone goes back.
        if (err instanceof InterruptedError || !recordedStateless(state, slot)) throw err;
        const why = err instanceof Error && err.cause !== undefined ? err.cause : err;
        note(run, 'state-none', `the manifest of ${point} could not be read (${errorMessage(why)}), but it has no serving state to put back, as recorded when it was switched to: the link alone goes back`, 'warning');
        return undefined;
      });
      if (manifest) {
        run.stateSources = stateToPutBack(manifest);
        if (from && run.stateSources.length > 0) putServedStateBack = (interrupted) => servedStateBack(run, repo, from, point, interrupted);
        await stateInPlace(run, point, slot, from, async () => void (run.stateChanged = await applyState(run, manifest, slot, false, putServedStateBack && (run.stateChanged = []))));
      } else run.stateSources = [];
    }
    await settle(run, 'rollback', result, await transition(run, repo, from, to, point, 'rollback'));
    result.durationMs = Date.now() - run.started;
    await journal(run, repo, 'rollback', result);
    return result;
  } catch (err) {
    const stateBack = run.linkMoved ? undefined : await putServedStateBack?.(err instanceof InterruptedError);
    await journalError(run, repo, 'rollback', slotPoint(spec.slots, to) ?? null, err);
    throw beforeTheSwitch(err, run, `rollback of ${spec.name}${to ? ` to ${slotPoint(spec.slots, to) ?? to}` : ''}`, served, `lifeboat rollback --to ${spec.name} starts again`, stateBack);
  } finally {
    await unlock();
  }
}

export interface TargetStatus {
  name: string;
  /** `since`: when the target's record of switches last switched the link to this slot (null when it has no such switch). */
  active: { path: string | null; slot: string | null; point: string | null; completedAt: string | null; ageMs: number | null; /** See StatusResult's newest. */ aheadMs?: number; since: string | null; error?: string; /** What to do about `error`, when it is not to fail over again. */ hint?: string };
  /**
   * `missing`: the slot was removed since (by hand): a rollback has nowhere to go. `unfinished`: a restore into
   * it (a failover repairing it, a restore --delta) was stopped part-way, leaving its lock: it may hold a mix of points.
   */
  previous: { path: string | null; point: string | null; missing?: true; unfinished?: { pid: number; since: string } };
  /** The record of switches in the slots directory; `damaged` says why it does not read (a rollback then does not know where to go). */
  record: { path: string; damaged?: string };
  health: { ok: boolean; detail: string; ms: number; checked: boolean };
  /** Age of the newest backup point: the data a failure now would lose at most. */
  rpoMs: number | null;
  slots: { name: string; point: string | null; active: boolean; previous: boolean }[];
  /** Why the slots directory could not be listed, when it could not. */
  slotsError?: string;
  /**
   * The target's switch lock, when there is one: what holds it (null where the lock does not say), and `stale`, whether that
   * process is gone (or the lock does not read), so that the next failover or rollback takes it over; else one runs now.
   */
  switchLock?: { command: string | null; host: string | null; pid: number | null; startedAt: string | null; refreshedAt: string | null; stale: boolean };
  /** Copies of the switch lock left beside it by processes killed while they rewrote it: harmless, removed by the next failover or rollback. */
  switchLockCopies?: string[];
  events: JournalEvent[];
}

export interface StatusResult {
  /** Whether the repository could be read; when not, the targets are still reported from their links, records and slots. */
  repository: { ok: true } | { ok: false; error: string };
  /** The newest point of the deployment named, or of the only one; null when there is none, or several and none was named. */
  /**
   * `aheadMs`: how far the point's completion time is ahead of this host's clock, when more than clocks
   * drift apart (its host's clock ran ahead, or this one's is behind): its age, 0 then, is not known.
   */
  newest: { id: string; completedAt: string; ageMs: number; aheadMs?: number } | null;
  /** In a repository of several deployments with none named: the newest point of each. */
  deployments?: { deployment: string; id: string; completedAt: string; ageMs: number; aheadMs?: number }[];
  targets: TargetStatus[];
  /** The newest journal events of the repository, oldest first. */
  events: JournalEvent[];
}

/**
 * The events of the deployment the repository was opened for, when one was named: a probe of one
 * deployment of a shared repository is not told of another's failed drill. Events of no point (a
 * prune), and of points whose deployment cannot be read any more (pruned since), are kept.
 */
async function newestOfDeployment(repo: Repository | undefined, events: readonly JournalEvent[], wanted: number): Promise<JournalEvent[]> {
  const deployment = repo?.deployment;
  if (repo === undefined || deployment === undefined) return newestOf(events, wanted);
  const kept: JournalEvent[] = [];
  // Newest first, and no further than needed: each point's deployment is one read of its summary.
  for (let i = events.length - 1; i >= 0 && kept.length < wanted; i--) {
    const e = events[i]!;
    const of = e.point === null ? undefined : await repo.summary(e.point).then(deploymentOf, () => undefined);
    if (of === undefined || of === deployment) kept.unshift(e);
  }
  return kept;
}

/** The last `n` events: none for 0, where `slice(-0)` gave them all (`status --events 0`). */
function newestOf(events: readonly JournalEvent[], n: number): JournalEvent[] {
  return n > 0 ? events.slice(-n) : [];
}

/**
 * Per target: what is active, whether it is healthy, the RPO, the slots and the last events.
 * `repo` is the repository, or why it could not be opened: what the targets serve is read from
 * the targets themselves, so a probe still learns it when the repository is missing or unreachable.
 * A repository that fails while it is read is reported the same way; `unreadable` is why, either way.
 */
export async function status(
  repo: MaybeRepository,
  specs: TargetSpec[],
  options: { now?: Date; events?: number; repositoryEvents?: number; signal?: AbortSignal; /** When a switch lock held from another host is stale (lock.staleAfter). */ lockStaleAfterMs?: number } = {},
): Promise<{ result: StatusResult; unreadable?: unknown; noPoints?: UsageError }> {
  const now = (options.now ?? new Date()).getTime();
  let newest: StatusResult['newest'] = null;
  let deployments: StatusResult['deployments'];
  let events: JournalEvent[] = [];
  let unreadable = 'unreadable' in repo ? repo.unreadable : undefined;
  // The deployment named has no points in a repository others' points are in (a new deployment, or a name mistyped): the repository was read.
  let noPoints: UsageError | undefined;
  const readable = 'unreadable' in repo ? undefined : repo;
  const age = (completedAt: string) => Math.max(0, now - Date.parse(completedAt));
  const ahead = (completedAt: string) => {
    const by = aheadOfClock(completedAt, now);
    return by === undefined ? {} : { aheadMs: by };
  };
  // The age of each deployment's newest point, as read: a target's RPO is that of the deployment it serves.
  const ages = new Map<string, number | null>();
  let ids: readonly string[] = [];
  if (readable) {
    try {
      // Summaries: status runs from monitoring every few minutes and needs no file list.
      ids = await readable.pointIds();
      const names = readable.deployment === undefined ? await readable.deploymentNames() : [];
      if (names.length > 1) {
        // A central probe of a shared repository: the RPO of every deployment, rather than a question.
        deployments = [];
        const newestOfEach = await readable.newestOfEach(names, ids);
        for (const name of names) {
          const p = newestOfEach.get(name);
          if (p) deployments.push({ deployment: name, id: p.id, completedAt: p.completedAt, ageMs: age(p.completedAt), ...ahead(p.completedAt) });
          ages.set(name, p ? age(p.completedAt) : null);
        }
      } else {
        // The only deployment, its name just read, or the one named.
        const m =
          names.length === 1
            ? await readable.newestOf(names[0]!, ids)
            : await readable.latestInScope(ids).catch((err: unknown) => {
                if (!(err instanceof UsageError) || readable.deployment === undefined) throw err;
                noPoints = err;
                return undefined;
              });
        if (m) {
          newest = { id: m.id, completedAt: m.completedAt, ageMs: age(m.completedAt), ...ahead(m.completedAt) };
          ages.set(deploymentOf(m), newest.ageMs);
        }
      }
      events = withoutEndedAnnouncements(inSwitchOrder(await readEvents(readable.storage, 200)));
    } catch (err) {
      if (err instanceof InterruptedError) throw err;
      unreadable = err;
      newest = null;
      deployments = undefined;
    }
  }
  /** The RPO of a target serving `served`: the age of its deployment's newest point (that named, when what it serves is not known). */
  const rpoOf = async (served: PointSummary | undefined): Promise<number | null> => {
    if (!served || !readable || unreadable !== undefined) return newest?.ageMs ?? null;
    const deployment = deploymentOf(served);
    if (!ages.has(deployment)) {
      const p = await readable.newestOf(deployment, ids).catch(() => undefined);
      ages.set(deployment, p ? age(p.completedAt) : null);
    }
    return ages.get(deployment) ?? null;
  };
  const wanted = options.events ?? 5;
  const targets: TargetStatus[] = [];
  for (const spec of specs) {
    let activePath: string | null = null;
    let error: string | undefined;
    let hint: string | undefined;
    try {
      activePath = await readActive(spec.active, spec.slots);
      // A slot removed by hand leaves the link dangling: the server has nothing to load after a restart.
      if (activePath && !(await isDirectory(activePath))) error = `${quoteName(spec.active)} links to ${quoteName(activePath)}, which is missing`;
    } catch (err) {
      error = errorMessage(err);
      // A directory where the link should be: a failover would refuse it too, so the fix is to move it aside.
      if (err instanceof LifeboatError) hint = err.hint;
    }
    const point = slotPoint(spec.slots, activePath) ?? null;
    const m = point && unreadable === undefined ? await readable?.summary(point).catch(() => undefined) : undefined;
    // A slots directory that cannot be read (a file there, no permission for a probe's user) is said, and the rest still reported.
    let slotsError: string | undefined;
    const slots = await listSlots(spec.slots).catch((err: unknown) => {
      slotsError = `${quoteName(spec.slots)} cannot be read: ${errorMessage(err)}`;
      return [];
    });
    const state = await readTargetState(spec.slots);
    const damaged = slotsError === undefined ? await targetStateDamage(spec.slots) : undefined;
    // No link where the record of switches says one was made (removed by hand, a cleanup script): the server has nothing to load after a restart.
    const lastServed = state.history.at(-1)?.to;
    if (activePath === null && error === undefined && lastServed !== undefined) {
      const served = slotPoint(spec.slots, lastServed);
      error = `${quoteName(spec.active)} is missing, though the record of switches has ${spec.name} serving ${served ?? quoteName(lastServed)}`;
      hint = `serve it again: lifeboat failover ${served ?? 'POINT'} --to ${spec.name}`;
    }
    // Who holds the switch lock: while a switch runs, what it has yet to finish is not reported as left undone.
    const lock = await switchLockHolder(spec.slots, options.lockStaleAfterMs);
    const running = lock?.stale === false;
    const lockCopies = await leftLockCopies(spec.slots);
    // A switch stopped while it was switched back: the slot linked again serves with another point's state.
    const back = error === undefined && !running ? await unfinishedSwitchBack(spec.slots) : undefined;
    if (back?.state && slotPoint(spec.slots, back.from)) {
      error = `${leftUndone(spec, back)}: the serving state is that of ${slotPoint(spec.slots, back.to) ?? quoteName(back.to)}`;
      hint = `lifeboat failover ${slotPoint(spec.slots, back.from)} --to ${spec.name} puts it back, and records the ${back.kind} in the journal`;
    }
    // A switch stopped (killed, or by a second Ctrl-C) after it put its point's state in place, before the link moved.
    const stateLeft = error === undefined && !running ? await stateLeftBehind(spec.slots, activePath) : undefined;
    if (stateLeft) {
      error = `the serving state is that of ${stateLeft.point}, put in place at ${stateLeft.at} by a failover or rollback to it that did not leave it served, while ${spec.name} serves ${point ?? activePath ?? 'nothing'}`;
      hint = point ? `lifeboat failover ${point} --to ${spec.name} puts back the serving state of ${point}` : `lifeboat failover ${stateLeft.point} --to ${spec.name} serves the point whose state is in place`;
    }
    // A switch killed after it announced itself, before the link moved: the slot still served may be drained.
    const notMade = (error === undefined || stateLeft) && !running && spec.deactivate ? await switchNotMade(spec.slots) : undefined;
    if (notMade) {
      const served = slotPoint(spec.slots, notMade.from) ?? notMade.from!;
      const drained = `which its deactivate hook may have drained: the ${notMade.kind} to ${slotPoint(spec.slots, notMade.to) ?? notMade.to} was stopped (${notMade.at}) before it moved the link`;
      error = stateLeft ? `${error}, ${drained}` : `${spec.name} still serves ${served}, ${drained}`;
      hint = `lifeboat failover ${served} --to ${spec.name} activates it again${stateLeft ? ' and puts back its serving state' : ''}`;
    }
    // A restore into the slot served (a failover run again to repair it) killed part-way: some files are the new ones, some not.
    const unfinished = activePath && (await isDirectory(activePath)) ? await restoreLeftUnfinished(activePath) : undefined;
    if (unfinished && activePath) {
      const left = `${quoteName(activePath)}, which ${spec.name} serves, may hold a mix of old and new files: a restore into it (pid ${unfinished.pid}, started ${unfinished.since}) was stopped before it finished`;
      error = error === undefined ? left : `${error}; ${left}`;
      hint ??= `lifeboat failover ${point ?? 'POINT'} --to ${spec.name} checks it file by file and repairs it`;
    }
    const previousUnfinished = state.previous && state.previous !== activePath && (await isDirectory(state.previous)) ? await restoreLeftUnfinished(state.previous) : undefined;
    const h = spec.health && (spec.health.url || spec.health.command)
      ? await checkOnce(spec.health, Math.min(spec.health.timeoutMs ?? 5000, 5000), { cwd: spec.cwd, env: targetEnv(spec, activePath, point), signal: options.signal })
      : undefined;
    targets.push({
      name: spec.name,
      active: {
        path: activePath,
        slot: activePath ? path.basename(activePath) : null,
        point,
        completedAt: m?.completedAt ?? null,
        ageMs: m ? age(m.completedAt) : null,
        ...(m ? ahead(m.completedAt) : {}),
        since: state.history.findLast((s) => s.to === activePath)?.at ?? null,
        ...(error ? { error } : {}),
        ...(hint ? { hint } : {}),
      },
      previous: {
        path: state.previous,
        point: slotPoint(spec.slots, state.previous) ?? null,
        ...(state.previous && !(await isDirectory(state.previous)) ? { missing: true as const } : {}),
        ...(previousUnfinished ? { unfinished: previousUnfinished } : {}),
      },
      record: { path: path.join(spec.slots, TARGET_STATE_FILE), ...(damaged ? { damaged } : {}) },
      health: h ? { ok: h.ok, detail: h.detail, ms: h.ms, checked: true } : { ok: activePath !== null && error === undefined, detail: error ?? 'no health check configured', ms: 0, checked: false },
      rpoMs: await rpoOf(m),
      slots: slots.map((s) => ({ name: s.name, point: s.point ?? null, active: s.path === activePath, previous: s.path === state.previous })),
      ...(slotsError ? { slotsError } : {}),
      ...(lock ? { switchLock: { command: lock.holder?.command ?? null, host: lock.holder?.host ?? null, pid: lock.holder?.pid ?? null, startedAt: lock.holder?.startedAt ?? null, refreshedAt: lock.holder?.refreshedAt ?? null, stale: lock.stale } } : {}),
      ...(lockCopies.length > 0 ? { switchLockCopies: lockCopies } : {}),
      events: newestOf(events.filter((e) => e.target === spec.name), wanted),
    });
  }
  const result: StatusResult = {
    repository: unreadable === undefined ? { ok: true } : { ok: false, error: errorMessage(unreadable) },
    newest,
    ...(deployments ? { deployments } : {}),
    targets,
    events: await newestOfDeployment(readable, events, options.repositoryEvents ?? Math.max(wanted, 10)),
  };
  return unreadable === undefined ? { result, ...(noPoints ? { noPoints } : {}) } : { result, unreadable };
}
