import * as fs from 'node:fs';

/** Whether a process with this pid runs on this host (one that is not ours to signal counts as running). */
export function processRuns(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The clock ticks per second of /proc's times (USER_HZ), fixed at 100 on the architectures Node runs on. */
const USER_HZ = 100;

/**
 * When the process with this pid started (ms since the epoch), where the system says (Linux /proc);
 * undefined elsewhere, or when it is gone. A pid is reused: after a reboot, or in a container where
 * every run of the same command gets the same pid, another process may have the pid a lock names.
 */
export function processStartedAt(pid: number, now = Date.now()): number | undefined {
  try {
    const startTicks = startTicksOf(pid);
    const uptime = Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
    if (!Number.isFinite(startTicks) || !Number.isFinite(uptime)) return undefined;
    return now - (uptime - startTicks / USER_HZ) * 1000;
  } catch {
    return undefined;
  }
}

/** The clock ticks since the boot at which the process with this pid started (/proc/PID/stat's starttime); throws where /proc does not say. */
function startTicksOf(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name, in parentheses, may hold spaces and parentheses: the fields after it are counted from its end.
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
}

/**
 * How much later than the time something was taken (a lock, a work directory) the process with the
 * owner's pid may have started and still be its owner: an owner starts before it takes what it owns;
 * the margin covers the clocks' rounding and a small step.
 */
export const PID_REUSE_MARGIN_MS = 60_000;

/**
 * When the process that now has `pid` started, if that is more than the margin after `takenAt` (ms):
 * then it is not the process that took the lock or made the directory, whose pid was given again.
 * Undefined when it may be the owner, when `takenAt` is unknown (older records) or the system does not say.
 */
export function pidReusedSince(pid: number, takenAt: number | undefined, startedAt: (pid: number) => number | undefined = processStartedAt): number | undefined {
  if (takenAt === undefined || !Number.isFinite(takenAt)) return undefined;
  const started = startedAt(pid);
  return started !== undefined && started > takenAt + PID_REUSE_MARGIN_MS ? started : undefined;
}

/**
 * When a process started, as the system counts it: clock ticks since the boot (/proc/PID/stat's
 * starttime) and the first 8 hex digits of that boot's id. The wall clock plays no part, so a clock
 * stepped while the process runs (NTP after a long suspend, an operator's `date -s`) changes nothing.
 */
export interface ProcessStart {
  ticks: number;
  boot: string;
}

/** When the process with this pid started (see ProcessStart), where the system says (Linux /proc); undefined elsewhere, or when it is gone. */
export function processStart(pid: number): ProcessStart | undefined {
  try {
    const ticks = startTicksOf(pid);
    const boot = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').replace(/[^0-9a-f]/g, '').slice(0, 8);
    return Number.isSafeInteger(ticks) && boot.length === 8 ? { ticks, boot } : undefined;
  } catch {
    return undefined;
  }
}

/** A process start written into a record: `<ticks>-<boot>`. */
export const formatStart = (start: ProcessStart): string => `${start.ticks}-${start.boot}`;

/** This process's start as its records write it (`<ticks>-<boot>`), where the system says. */
export function ownStart(): string | undefined {
  const start = processStart(process.pid);
  return start && formatStart(start);
}

/** The process start a record holds (`<ticks>-<boot>`), or undefined. */
export function parseStart(text: string | undefined): ProcessStart | undefined {
  const m = text === undefined ? null : /^(\d{1,18})-([0-9a-f]{8})$/.exec(text);
  return m ? { ticks: Number(m[1]), boot: m[2]! } : undefined;
}

/**
 * Whether the owner of something taken at `takenAt` (ms; unknown for older records) by the process
 * `pid` of this host may still run: its pid runs, and not as a process started after that. Where the
 * record holds its owner's `start` and the system tells the running process's, the two are compared,
 * and the wall clock is not used: a clock stepped forward by more than a minute while the owner runs
 * would otherwise make it look started after the record was made, and gone.
 */
export function ownerRuns(pid: number, takenAt: number | undefined, start?: ProcessStart): boolean {
  if (!processRuns(pid)) return false;
  const differs = startDiffers(pid, start);
  return differs === undefined ? pidReusedSince(pid, takenAt) === undefined : !differs;
}

/**
 * Whether the process that has `pid` now is not the one that started at `start` (a record's): true or
 * false where both are known, undefined where the record or the system does not say.
 */
export function startDiffers(pid: number, start: ProcessStart | undefined): boolean | undefined {
  const now = start && processStart(pid);
  return start && now ? now.ticks !== start.ticks || now.boot !== start.boot : undefined;
}

/**
 * What a name made by this process (a staging or work directory) says of its owner:
 * `<pid>-<seconds>-<ticks>-<boot>`, its pid, the time (seconds since the epoch) and its start as
 * records write it (see ProcessStart); `<pid>-<seconds>` where the system does not tell the start.
 */
export function ownerMark(now = Date.now()): string {
  const start = ownStart();
  return `${process.pid}-${Math.floor(now / 1000)}${start ? `-${start}` : ''}`;
}

/** The pattern of ownerMark in a name, its pid, seconds and start captured; older names have no seconds, or no start. */
export const OWNER_MARK = '(\\d+)(?:-(\\d{1,12}))?(?:-(\\d{1,18}-[0-9a-f]{8}))?';

/**
 * Whether the owner a name's mark (see OWNER_MARK's captures) names may still run: by its start where
 * the name has one, whatever the clock did; by its seconds otherwise, as ownerRuns judges.
 */
export function markOwnerRuns(pid: number, seconds: string | undefined, start: string | undefined): boolean {
  return ownerRuns(pid, seconds === undefined ? undefined : Number(seconds) * 1000, parseStart(start));
}
