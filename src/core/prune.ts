import { IntegrityError, LockedError, throwIfAborted } from '../errors.js';
import { deploymentOf, deploymentsOf, keys, summaryIdOf, volumesNeeded } from '../format/manifest.js';
import { type Reporter, progressAt } from './events.js';
import { appendEvent } from './journal.js';
import { leftoverWrites, pointBeingWritten, removeUnfinishedWrites } from './leftovers.js';
import type { IncompleteWrite } from '../storage/storage.js';
import { acquireWriterLock, describeLock, lockPollMs, readLock, readersOf, releaseAfter, staleLockNotice, type HeldLock } from './lock.js';
import { formatDuration } from '../config/duration.js';
import { sleep } from '../sleep.js';
import type { Repository } from './repository.js';
import { planRetention, type RetentionDecision, type RetentionPolicy } from './retention.js';

export interface PruneOptions {
  policy: RetentionPolicy;
  dryRun?: boolean;
  /** Points kept whatever the policy says, with the reason. */
  protected?: ReadonlyMap<string, string>;
  /** Finds the protected points once the lock is held, so a pin taken meanwhile is not missed. */
  findProtected?: () => Promise<ReadonlyMap<string, string>>;
  /** Prune this deployment's points only (default: each deployment's, on its own). */
  deployment?: string;
  now?: Date;
  /** A lock not refreshed for this long is stale and taken over. */
  lockStaleAfterMs?: number;
  /** How long to wait for the lock while another live process holds it (default: not at all, exit 4). */
  lockRetryMs?: number;
  signal?: AbortSignal;
  reporter?: Reporter;
  /**
   * Told how many points there are (the kept and those to remove, counted as the plan counts them) once the
   * prune has planned, and again after each point it removes: what is true of the repository should it fail
   * or be stopped half-way.
   */
  onPointsLeft?: (points: number) => void;
}

export interface PrunePlan {
  keep: RetentionDecision[];
  remove: RetentionDecision[];
  /** Manifests to delete, in the order they are deleted (newest first). */
  manifests: string[];
  /** Summary documents to delete: the removed points', and any that belong to no point. */
  summaries: string[];
  /** The deployments of the points kept. */
  deployments: string[];
  /** Data objects no kept point references, in key order. */
  data: { key: string; size: number }[];
  bytes: number;
}

export interface PruneResult extends PrunePlan {
  /** Writes that never finished (temporary files, incomplete uploads) whose process is gone: removed, or that a prune would remove. */
  unfinished: IncompleteWrite[];
  dryRun: boolean;
  durationMs: number;
}

/** The plan: what the policy keeps and removes, and exactly which objects would go. Reads only. */
export async function planPrune(repo: Repository, options: Pick<PruneOptions, 'policy' | 'protected' | 'deployment' | 'now'>): Promise<PrunePlan> {
  // Summaries, not manifests: a repository of many large points is planned without reading every file list.
  const { summaries, unreadable } = await repo.readSummaries();
  // What a point that cannot be read depends on, and which data it uses, is not known: any deletion would be a guess.
  if (unreadable.length > 0) {
    const { id, reason } = unreadable[0]!;
    const others = unreadable.length > 1 ? ` (and ${unreadable.length - 1} other point(s))` : '';
    throw new IntegrityError(`backup point ${id}${others} cannot be read: ${reason}; prune removes nothing while what it needs is unknown`, {
      hint: `\`lifeboat verify\` reports the damage; put ${keys.point(id)} back from a copy of the repository, or move it out of the repository to give the point up (verify then names any point that needed it), and prune again`,
    });
  }
  // A deployment named that has no points here (a name mistyped in a cron job) would prune nothing, night after night, and say it succeeded.
  if (options.deployment !== undefined && summaries.length > 0 && !summaries.some((m) => deploymentOf(m) === options.deployment)) {
    throw repo.noPointsOf(options.deployment, deploymentsOf(summaries));
  }
  const byId = new Map(summaries.map((m) => [m.id, m]));
  const retention = planRetention(
    summaries.map((m) => ({
      id: m.id,
      deployment: deploymentOf(m),
      type: m.type,
      parent: m.parent,
      full: m.full,
      completedAt: m.completedAt,
      references: [...new Set(m.uses.map((u) => u.point))],
    })),
    options.policy,
    { now: options.now ?? new Date(), protected: options.protected, deployment: options.deployment },
  );
  const needed = new Set<string>();
  for (const d of retention.keep) for (const key of volumesNeeded(byId.get(d.id)!, byId)) needed.add(key);
  // What a backup running now is writing (a dry run holds no lock to keep it out) is its point to be, not a leftover to delete.
  const writing = await pointBeingWritten(repo);
  const ofRunningBackup = (id: string | undefined) => id !== undefined && writing(id) !== undefined;
  const data: { key: string; size: number }[] = [];
  for await (const { key, size } of repo.storage.list(keys.dataPrefix)) {
    if (!needed.has(key) && !ofRunningBackup(key.slice(keys.dataPrefix.length).split('/')[0])) data.push({ key, size });
  }
  const gaps = await repo.summaryGaps(new Set(byId.keys()));
  const orphans = gaps.orphans.filter((key) => !ofRunningBackup(summaryIdOf(key)));
  // A point written before summaries existed (or whose summary was lost) has none to delete.
  const unsummarised = new Set(gaps.missing);
  const removed = retention.remove.map((d) => d.id).reverse();
  return {
    keep: retention.keep,
    deployments: deploymentsOf(retention.keep.map((d) => byId.get(d.id)!)),
    remove: retention.remove,
    manifests: removed.map((id) => keys.point(id)),
    summaries: [...removed.filter((id) => !unsummarised.has(id)).map((id) => keys.summary(id)), ...orphans],
    data,
    bytes: data.reduce((n, d) => n + d.size, 0),
  };
}

const DELETE_BATCH = 500;

/**
 * The repository lock, once no live reader reads (a restore, drill or verify, perhaps of another
 * deployment's points). With `lockRetryMs`, a live reader is waited for as a live holder is, the
 * lock given back meanwhile so that the reader's own deployment can go on backing up and reading.
 */
async function lockWithoutReaders(repo: Repository, options: PruneOptions, reporter: Reporter): Promise<{ lock: HeldLock; staleReaders: string[] }> {
  const waitMs = options.lockRetryMs ?? 0;
  const deadline = Date.now() + waitMs;
  for (let attempt = 1; ; attempt++) {
    const lock = await acquireWriterLock(repo.storage, 'prune', { ...options, lockRetryMs: Math.max(0, deadline - Date.now()) }, reporter);
    let found;
    try {
      found = await readersOf(repo.storage, { staleAfterMs: options.lockStaleAfterMs });
      if (found.live.length === 0) {
        if (found.stale.length > 0) await repo.storage.delete(found.stale);
        return { lock, staleReaders: found.stale };
      }
    } catch (err) {
      await releaseAfter(lock, true);
      throw err;
    }
    await releaseAfter(lock, false);
    const reading = `${describeLock(found.live[0]!.info)}${found.live.length > 1 ? ` and ${found.live.length - 1} other reader(s)` : ''}`;
    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      throw new LockedError(`the repository is being read by ${reading}${waitMs > 0 ? `, still after waiting ${formatDuration(waitMs)}` : ''}`, {
        hint: `${waitMs > 0 ? 'wait longer with --retry-lock (or lock.retry)' : 'prune again when it has finished, or let the prune wait with --retry-lock 30m'} (a reader that is gone stops counting once its lease runs out, at once on its own host)`,
      });
    }
    if (attempt === 1) reporter.notice?.({ level: 'info', code: 'lock-wait', message: `the repository is being read by ${reading}; waiting up to ${formatDuration(waitMs)} for it` });
    await sleep(Math.min(remaining, lockPollMs(waitMs) * (0.5 + Math.random())), options.signal);
    throwIfAborted(options.signal);
  }
}

/**
 * A reader whose registration this prune removed as stale (stopped, or its host cut off, for longer than
 * its lease) that has come back, written it again, and reads (or does not say what it reads) a point the
 * prune has yet to remove: the prune stops there, exit 4, every point left complete, rather than delete
 * what the reader is reading. Once the manifests are gone, what remains to delete is no point's.
 */
async function throwIfReaderBack(repo: Repository, staleReaders: readonly string[], pending: ReadonlySet<string>, options: PruneOptions): Promise<void> {
  if (pending.size === 0) return;
  for (const key of staleReaders) {
    const reader = await readLock(repo.storage, { staleAfterMs: options.lockStaleAfterMs }, key);
    if (!reader || reader.stale) continue;
    const reads = reader.info.reads?.filter((id) => pending.has(id));
    if (reads?.length === 0) continue;
    const what = reads ? `point ${reads[0]}, which this prune removes` : 'what this prune removes (it does not say which points it reads)';
    throw new LockedError(`the prune stopped: ${describeLock(reader.info)}, taken for gone as the prune started, is reading again ${what}`, {
      hint: `the points it had not removed (${pending.size}) are left whole; prune again when that ${reader.info.command} has finished`,
    });
  }
}

/**
 * Prune: lock → plan → delete the manifests of removed points one at a time,
 * newest first (a point's dependents are newer than it, so every visible point
 * keeps a complete chain whenever this stops) → delete data objects no kept
 * point references (what an interruption leaves here is unreferenced data,
 * which verify reports and the next prune or backup removes).
 */
export async function prune(repo: Repository, options: PruneOptions): Promise<PruneResult> {
  const started = Date.now();
  const reporter = options.reporter ?? {};
  const { lock, staleReaders } = options.dryRun ? { lock: undefined, staleReaders: [] } : await lockWithoutReaders(repo, options, reporter);
  let failed = true;
  try {
    const protectedPoints = options.findProtected ? await options.findProtected() : options.protected;
    const plan = await planPrune(repo, { ...options, protected: protectedPoints });
    let pointsLeft = plan.keep.length + plan.remove.length;
    options.onPointsLeft?.(pointsLeft);
    if (options.dryRun) {
      // The lock a killed writer left is not among the objects: the prune takes it over, and says so, as it would here.
      const stale = await readLock(repo.storage, { staleAfterMs: options.lockStaleAfterMs });
      if (stale?.stale) reporter.notice?.(staleLockNotice(stale, 'would take over'));
      return { ...plan, unfinished: await leftoverWrites(repo, reporter), dryRun: true, durationMs: Date.now() - started };
    }
    // Readers of the points kept (and of what they depend on, kept with them) need not wait for this prune.
    await lock?.announce(plan.remove.map((d) => d.id));

    // Before each deletion, a look that the lock is still this prune's: one paused (a suspended VM, a hung mount) for
    // longer than others' staleness threshold has been taken over, and a backup may now build on what it planned to remove.
    // And that no reader it took for gone is back to read a point it has yet to remove.
    const pending = new Set(plan.remove.map((d) => d.id));
    const stillHeld = async () => {
      throwIfAborted(options.signal);
      await lock?.check();
      await throwIfReaderBack(repo, staleReaders, pending, options);
    };
    const total = plan.manifests.length + plan.summaries.length + plan.data.length;
    const progress = { phase: 'verify' as const, filesDone: 0, filesTotal: total, bytesDone: 0, bytesTotal: plan.bytes };
    for (const key of plan.manifests) {
      await stillHeld();
      await repo.storage.delete([key]);
      pending.delete(key.slice(keys.pointsPrefix.length, -'.json'.length));
      options.onPointsLeft?.(--pointsLeft);
      progress.filesDone++;
      reporter.progress?.(progressAt(progress, key));
    }
    await stillHeld();
    // A summary left without its manifest is ignored, and removed by the next prune.
    if (plan.summaries.length > 0) await repo.storage.delete(plan.summaries);
    await repo.recordDeployments({ names: plan.deployments });
    progress.filesDone += plan.summaries.length;
    for (let i = 0; i < plan.data.length; i += DELETE_BATCH) {
      await stillHeld();
      const batch = plan.data.slice(i, i + DELETE_BATCH);
      await repo.storage.delete(batch.map((d) => d.key));
      progress.filesDone += batch.length;
      progress.bytesDone += batch.reduce((n, d) => n + d.size, 0);
      reporter.progress?.(progressAt(progress, batch[batch.length - 1]!.key));
    }
    await stillHeld();
    const unfinished = await removeUnfinishedWrites(repo, reporter);
    const durationMs = Date.now() - started;
    await appendEvent(repo.storage, {
      type: 'prune',
      point: null,
      outcome: 'ok',
      durationMs,
      detail: { kept: plan.keep.length, removed: plan.remove.map((d) => d.id), dataObjects: plan.data.length, dataBytes: plan.bytes },
    });
    // The room a prune on a full disk took for its lock is kept aside again, now that there is room,
    // last: what the prune freed goes to its own journal entry first.
    await repo.storage.keepReserve().catch(() => undefined);
    failed = false;
    return { ...plan, unfinished, dryRun: false, durationMs };
  } finally {
    await releaseAfter(lock, failed);
  }
}
