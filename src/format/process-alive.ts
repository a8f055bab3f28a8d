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
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name, in parentheses, may hold spaces and parentheses: the fields after it are counted from its end.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const startTicks = Number(fields[19]);
    const uptime = Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
    if (!Number.isFinite(startTicks) || !Number.isFinite(uptime)) return undefined;
    return now - (uptime - startTicks / USER_HZ) * 1000;
  } catch {
    return undefined;
  }
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
 * Whether the owner of something taken at `takenAt` (ms; unknown for older records) by the process
 * `pid` of this host may still run: its pid runs, and not as a process started after that.
 */
export function ownerRuns(pid: number, takenAt: number | undefined): boolean {
  return processRuns(pid) && pidReusedSince(pid, takenAt) === undefined;
}
