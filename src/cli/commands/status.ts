import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import type { Command } from 'commander';
import { HealthError, InterruptedError, LifeboatError, NoBucketError, RuntimeFailure, errorMessage } from '../../errors.js';
import { loadConfig } from '../../config/config.js';
import { lockStaleAfterMs } from '../cron.js';
import { status, type TargetStatus } from '../../core/failover.js';
import type { JournalEvent } from '../../core/journal.js';
import { chooseTarget } from '../../core/targets.js';
import { NoRepository } from '../../core/repository.js';
import { openRepository, type CliContext } from '../context.js';
import { formatDuration } from '../../config/duration.js';
import { escapeUnprintable, quoteName, shellWord } from '../format.js';
import { paint, printResult } from '../output.js';
import { count, nonEmpty } from '../flags.js';
import type { CommandRunner } from '../main.js';
import { inPlaceUnfinished, type InPlaceUnfinished } from '../../core/restore-target.js';
import type { LifeboatConfig } from '../../config/config.js';

interface StatusFlags {
  target?: string;
  events?: string;
}

/** Why a failed event failed, where it recorded no reason: a restore's error, a drill's problems (as the drill said them). */
function failedBecause(e: JournalEvent): string | undefined {
  if (typeof e.detail?.error === 'string') return e.detail.error;
  const problems = Array.isArray(e.detail?.problems) ? (e.detail.problems as { check?: unknown; message?: unknown }[]).filter((p) => typeof p?.message === 'string') : [];
  return problems.length ? problems.map((p) => `${String(p.check)}: ${String(p.message)}`).join('; ') : undefined;
}

function describeEvent(e: JournalEvent): string {
  const rto = typeof e.detail?.rtoMs === 'number' ? `, RTO ${formatDuration(e.detail.rtoMs)}` : '';
  const why = typeof e.detail?.reason === 'string' ? e.detail.reason : e.outcome === 'failed' ? failedBecause(e) : undefined;
  // A switch announced whose end is not journalled: one running now, or one stopped (killed) before it could say how it ended.
  const reason =
    e.outcome === 'switching'
      ? ': its end is not journalled: still running, or stopped (killed) before it could say how it ended'
      : why === undefined
        ? ''
        : `: ${escapeUnprintable(why)}`;
  // A switch to a directory outside the slots (a link moved by hand) has no point: the directory is named instead.
  const what = e.point ?? (typeof e.detail?.slot === 'string' ? quoteName(e.detail.slot) : '');
  // A prune names no point: no gap is left for one.
  return `${e.at}  ${[e.type, what, e.outcome].filter(Boolean).join(' ')}${rto} (${e.user}@${e.host})${reason}`.replace(/\s+\(/, ' (');
}

/**
 * How long ago a point completed; or, when its time is ahead of this host's clock (its host's clock ran
 * ahead, or this one's is behind), that time and by how much, rather than an age of 0 that reads as fresh.
 */
function sinceCompleted(p: { ageMs: number; completedAt: string; aheadMs?: number }): string {
  return p.aheadMs === undefined ? `${formatDuration(p.ageMs)} ago` : `completed ${p.completedAt}, ${formatDuration(p.aheadMs)} ahead of this host's clock`;
}

/** The newest backup's line: its age is the RPO, unless the clocks disagree. */
function newestLine(p: { id: string; ageMs: number; completedAt: string; aheadMs?: number }): string {
  return `newest backup ${p.id}, ${sinceCompleted(p)} (${p.aheadMs === undefined ? 'RPO' : 'RPO not known: check the clocks'})`;
}

function describeTarget(ctx: CliContext, t: TargetStatus): string[] {
  const c = paint(ctx, 'stdout');
  const health = t.health.checked ? (t.health.ok ? c.green(`healthy (${t.health.detail})`) : c.red(`UNHEALTHY (${t.health.detail})`)) : 'health not checked';
  // Without the point's summary (a repository that cannot be read), the switch in the target's own record dates it.
  const when =
    t.active.ageMs !== null && t.active.completedAt !== null
      ? `, ${t.active.aheadMs === undefined ? 'taken ' : ''}${sinceCompleted({ ageMs: t.active.ageMs, completedAt: t.active.completedAt, aheadMs: t.active.aheadMs })}`
      : t.active.since ? `, served since ${t.active.since}` : '';
  const active = t.active.error ?? (t.active.path ? `${t.active.point ?? quoteName(t.active.path)}${when}` : 'no active link');
  const lines = [`target ${t.name}: ${active}; ${health}`];
  if (t.previous.path) lines.push(`  previous: ${t.previous.point ?? quoteName(t.previous.path)}${t.previous.missing ? ' (missing: no rollback to it)' : t.previous.unfinished ? ' (restored part-way: may hold a mix of old and new files)' : ''}`);
  if (t.record.damaged) lines.push(`  record of switches ${quoteName(t.record.path)} is damaged (${t.record.damaged}): a rollback does not know where to go`);
  if (t.slotsError) lines.push(`  slots: ${escapeUnprintable(t.slotsError)}`);
  if (t.slots.length) lines.push(`  slots: ${t.slots.map((s) => `${quoteName(s.name)}${s.active ? ' (active)' : s.previous ? ' (previous)' : ''}`).join(', ')}`);
  if (t.switchLock) {
    const l = t.switchLock;
    const by = l.command === null && l.pid === null ? (l.stale ? 'a failover or rollback, in a lock that does not read (damaged, or left empty)' : 'a failover or rollback writing its lock') : `${l.command ?? 'a process'} (pid ${l.pid ?? '?'} on ${l.host ?? '?'}, since ${l.startedAt ?? '?'})`;
    lines.push(l.stale ? `  switch lock left by ${by}, which is gone: the next failover or rollback takes it over` : `  being switched by ${by}`);
  }
  if (t.switchLockCopies) lines.push(`  left beside the switch lock by a failover or rollback killed while it rewrote it: ${t.switchLockCopies.map(quoteName).join(', ')} (harmless; the next failover or rollback removes ${t.switchLockCopies.length === 1 ? 'it' : 'them'})`);
  for (const e of t.events) lines.push(`  ${describeEvent(e)}`);
  return lines;
}

/**
 * Why the repository could not be read, as status ends on it. A repository missing where the
 * config names it, or its bucket, is exit 1 here, not the usage error of other commands: to a probe it is backups
 * that cannot be reached (a disk not mounted, a bucket gone), like an unreachable storage, and the
 * advice to make a new one with init would be wrong. Other reasons keep their own code.
 */
function unreadableRepository(err: unknown, broken: RuntimeFailure | undefined): LifeboatError {
  const why = errorMessage(err);
  const message = `the repository could not be read, so the age of the newest backup is not known: ${why}${broken ? `; ${broken.message}` : ''}`;
  if (err instanceof NoRepository || err instanceof NoBucketError || !(err instanceof LifeboatError)) {
    return new RuntimeFailure(message, {
      cause: err,
      hint:
        err instanceof NoRepository
          ? 'check that its disk is mounted or its bucket is there, and that --repo, LIFEBOAT_REPO or repository: names it'
          : err instanceof NoBucketError
            ? 'check the bucket name in the repository URL and the endpoint, and that the bucket is still there'
            : undefined,
    });
  }
  return new LifeboatError(message, err.exitCode, { cause: err, hint: err.hint });
}

/**
 * What keeps a target that serves from being rolled back or looked after: a record of switches that
 * does not read, a previous slot that is gone (removed by hand), a slots directory that cannot be
 * listed; and source directories a restore --in-place stopped among its moves left at two points. The target may answer healthy, so this is not exit 5; it is what lifeboat needs from disk
 * failing, exit 1, as a repository that cannot be read is.
 */
function unrecoverable(targets: TargetStatus[], inPlace: readonly InPlaceStatus[] = []): RuntimeFailure | undefined {
  const left = inPlace.filter((d) => !d.running);
  const damaged = targets.filter((t) => t.record.damaged !== undefined);
  const noWayBack = targets.filter((t) => t.record.damaged === undefined && t.previous.missing);
  const unlisted = targets.filter((t) => t.slotsError !== undefined);
  const mixed = targets.filter((t) => t.record.damaged === undefined && t.previous.unfinished !== undefined);
  if (!damaged.length && !noWayBack.length && !unlisted.length && !mixed.length && !left.length) return undefined;
  const said = [
    ...left.map((d) => `${quoteName(d.directory)} (source ${d.source}) is part-way through a restore --in-place of ${d.point} that was stopped before it finished`),
    ...damaged.map((t) => `the record of switches of target ${t.name}, ${quoteName(t.record.path)}, is damaged (${t.record.damaged}), so a rollback does not know where to go`),
    ...noWayBack.map((t) => `the previous slot of target ${t.name}, ${quoteName(t.previous.path!)}, is missing, so there is no rollback to ${t.previous.point ?? 'it'}`),
    ...mixed.map((t) => `the previous slot of target ${t.name}, ${quoteName(t.previous.path!)}, may hold a mix of old and new files: a restore into it (pid ${t.previous.unfinished!.pid}, started ${t.previous.unfinished!.since}) was stopped before it finished, so a rollback would serve that`),
    ...unlisted.map((t) => `target ${t.name}'s slots directory ${t.slotsError}`),
  ];
  const [first] = [...damaged, ...noWayBack];
  const repair = mixed[0];
  const hint = left.length
    ? `${[...new Set(left.map((d) => d.command))].join('; ')} puts back what it moved and restores the point as one`
    : first
    ? `the next failover ${damaged.length ? 'writes the record again' : 'keeps the slot it replaces for a rollback'}; to go back meanwhile, fail over to the point served before: lifeboat failover POINT --to ${first.name}${damaged.length ? ' (the failovers in its events name it)' : ''}`
    : repair
      ? `lifeboat restore ${repair.previous.point ?? 'POINT'} --target ${shellWord(repair.previous.path!)} --delta checks it file by file and repairs it`
      : `check that the slots directory of ${unlisted[0]!.name} is a directory this user may read`;
  return new RuntimeFailure(said.join('; '), { hint });
}

/** For a target served unhealthy that has a slot to go back to: the rollback an operator in an outage looks for. */
function rollbackHint(sick: readonly TargetStatus[]): string | undefined {
  const back = sick.find((t) => t.previous.path !== null && !t.previous.missing && t.previous.unfinished === undefined);
  if (!back) return undefined;
  return `if what ${back.name} serves is the cause, lifeboat rollback --to ${back.name} serves ${back.previous.point ?? quoteName(back.previous.path!)} again`;
}

/** A source directory part-way through a restore --in-place, and the command that finishes it. */
interface InPlaceStatus extends Omit<InPlaceUnfinished, 'replacing' | 'delta'> {
  source: string;
  command: string;
}

/** The directory sources of the config part-way through a restore --in-place (see `.<dir>.lifeboat-moving`). */
async function inPlaceStatus(config: LifeboatConfig): Promise<InPlaceStatus[]> {
  const dirs: { source: string; directory: string }[] = [];
  for (const [source, src] of Object.entries(config.sources ?? {})) {
    const at = typeof src === 'string' ? src : 'path' in src ? src.path : undefined;
    if (at === undefined) continue;
    // Restored in place where a link to it leads, as restore --in-place goes.
    const directory = (await fsp.lstat(at).then((st) => st.isSymbolicLink(), () => false)) ? await fsp.realpath(at).catch(() => at) : at;
    dirs.push({ source, directory });
  }
  const found = await inPlaceUnfinished(dirs.map((d) => d.directory));
  return found.map(({ replacing, delta, ...f }) => ({
    source: dirs.find((d) => d.directory === f.directory)!.source,
    ...f,
    command: `lifeboat restore ${f.point} --in-place${delta ? ' --delta' : replacing ? ' --force' : ''}`,
  }));
}

function describeInPlace(d: InPlaceStatus): string {
  return d.running
    ? `source ${d.source}: ${quoteName(d.directory)} is being restored in place to ${d.point} (${d.phase})`
    : `source ${d.source}: ${quoteName(d.directory)} is part-way through a restore --in-place of ${d.point}, stopped while ${d.phase === 'moved' ? 'it removed what it replaced' : d.phase === 'putting-back' ? 'it put back the directories it had moved' : 'it moved the directories into place'}; ${d.command} finishes it`;
}

export async function runStatus(ctx: CliContext, flags: StatusFlags): Promise<void> {
  const only = nonEmpty('--target', flags.target, 'the name of a target from lifeboat.yaml');
  const { config, file } = await loadConfig({ explicit: ctx.global.config, cwd: ctx.cwd, env: ctx.env });
  const base = file ? path.dirname(file) : ctx.cwd;
  const names = only !== undefined ? [only] : Object.keys(config.targets ?? {});
  const specs = names.map((n) => chooseTarget(config, n, base, ctx.env));
  const events = flags.events === undefined ? 5 : count('--events', flags.events, 0);
  // The repository's events (a host without targets shows them) are ten unless --events says how many.
  const repositoryEvents = flags.events === undefined ? 10 : events;
  // What the targets serve is read from the targets: a repository that cannot be read does not hide it.
  const opened = await openRepository(ctx).catch((err: unknown) => {
    if (err instanceof InterruptedError) throw err;
    return { unreadable: err };
  });
  try {
    const { result, unreadable, noPoints } = await status('repo' in opened ? opened.repo : opened, specs, { events, repositoryEvents, signal: ctx.signal, lockStaleAfterMs: lockStaleAfterMs({}, config) });
    const deployment = 'repo' in opened ? opened.repo.deployment : undefined;
    const inPlace = await inPlaceStatus(config);
    printResult(ctx, inPlace.length > 0 ? { ...result, inPlace } : result, () => {
      const lines = !result.repository.ok
        ? [`repository not read: ${escapeUnprintable(result.repository.error)}`]
        : result.deployments
          ? result.deployments.map((d) => `deployment ${d.deployment}: ${newestLine(d)}`)
          : [
              result.newest
                ? newestLine(result.newest)
                : noPoints
                  ? `no backups of deployment ${deployment} yet (${noPoints.hint})`
                  : 'no backups yet',
            ];
      for (const t of result.targets) lines.push(...describeTarget(ctx, t));
      if (result.targets.length === 0) {
        lines.push('no targets configured');
        for (const e of result.events) lines.push(`  ${describeEvent(e)}`);
      }
      for (const d of inPlace) lines.push(describeInPlace(d));
      return lines.join('\n');
    }, { shownWhenQuiet: true });
    // A dangling or unreadable link is down whether or not a health check is configured.
    const sick = result.targets.filter((t) => (t.health.checked && !t.health.ok) || t.active.error !== undefined);
    // A target that is down is what a probe must hear first: exit 5, whatever the repository says.
    const broken = unrecoverable(result.targets, inPlace);
    if (sick.length) {
      const unlinked = sick.find((t) => t.active.error !== undefined);
      const also = (unreadable === undefined ? '' : `; the repository could not be read either: ${errorMessage(unreadable)}`) + (broken ? `; ${broken.message}` : '');
      throw new HealthError(`unhealthy: ${sick.map((t) => `${t.name} (${t.active.error ?? t.health.detail})`).join(', ')}${also}`, {
        // A server answering from what it loaded before its slot went away will not come back after a restart.
        hint: unlinked ? (unlinked.active.hint ?? `serve a point again: lifeboat failover --to ${unlinked.name}`) : rollbackHint(sick),
      });
    }
    if (unreadable !== undefined) throw unreadableRepository(unreadable, broken);
    if (broken) throw broken;
    if (noPoints) throw noPoints;
  } finally {
    if ('close' in opened) await opened.close();
  }
}

export function registerStatus(program: Command, run: CommandRunner): Command {
  return program
    .command('status')
    .description('per target: the active point, its health, the age of the newest backup (RPO) and the last events; exit 5 when a target is unhealthy, 1 when the repository, a record of switches or a slots directory cannot be read, a previous slot is missing or restored part-way, or a source directory is part-way through a restore --in-place that was stopped (the targets are reported all the same)')
    .option('--target <name>', 'only this target')
    .option('--events <n>', 'journal events shown per target (default 5), and of the repository (default 10)')
    .addHelpText('after', '\nExamples:\n  lifeboat status\n  lifeboat status --json --target prod')
    .action(run((ctx, flags: StatusFlags) => runStatus(ctx, flags)));
}
