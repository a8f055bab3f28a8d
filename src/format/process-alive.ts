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
