import * as os from 'node:os';
import { POINT_ID, pointTime } from '../format/ids.js';
import { ownerRuns } from '../format/process-alive.js';
import { keys } from '../format/manifest.js';
import { errorMessage } from '../errors.js';
import { isPermissionRefused, type IncompleteWrite } from '../storage/storage.js';
import type { Notice, Reporter } from './events.js';
import { describeLock, readLock, readersOf, type LockInfo } from './lock.js';
import type { Repository } from './repository.js';

/**
 * Which uncommitted point a live backup may be writing: one whose id is no
 * older than that backup's lock (its id is taken after the lock, by the same clock).
 */
export async function pointBeingWritten(repo: Repository): Promise<(id: string) => LockInfo | undefined> {
  return pointsOfBackup(await liveHolder(repo));
}

async function liveHolder(repo: Repository): Promise<LockInfo | undefined> {
  const holder = await readLock(repo.storage).catch(() => undefined);
  return holder && !holder.stale ? holder.info : undefined;
}

function pointsOfBackup(holder: LockInfo | undefined): (id: string) => LockInfo | undefined {
  if (holder?.command !== 'backup') return () => undefined;
  const since = Date.parse(holder.startedAt);
  return (id) => (POINT_ID.test(id) && pointTime(id) >= since ? holder : undefined);
}

export interface UnfinishedWrites {
  /** Writes whose process is gone: left by a backup (or another command) stopped while it wrote. */
  leftovers: IncompleteWrite[];
  /** Writes that a live backup, prune or reader of the repository, or another live process of this host, is making now, with that process (`backup on vm, pid 4242, since …`). */
  running: { write: IncompleteWrite; by: string }[];
}

/**
 * The repository's incomplete writes (local temporary files, S3 multipart
 * uploads), told apart as uncommitted points are: a write is running when the
 * process that makes it holds the repository lock or a reader's registration
 * (a temporary file is named after its writer's pid, and written since that
 * process started), or, for an upload of a point's volume, when a live backup
 * is writing that point. So is a temporary file whose writer still runs on
 * this host although it holds nothing (another deployment's backup waiting
 * for the lock writes one at each try, a restore one to register, a drill one
 * for the journal): removed, its write would fail. This process's own writes are neither.
 */
export async function unfinishedWrites(repo: Repository): Promise<UnfinishedWrites> {
  const listWrites = async () => {
    const writes: IncompleteWrite[] = [];
    // Only volumes are uploaded in parts; a local temporary file is listed whatever it was for.
    for await (const write of repo.storage.incompleteWrites(keys.dataPrefix)) if (!madeBy(write, process.pid, performance.timeOrigin)) writes.push(write);
    return writes;
  };
  const writes = await listWrites();
  const found: UnfinishedWrites = { leftovers: [], running: [] };
  if (writes.length === 0) return found;
  // Read after the listing: a backup or prune takes the lock, and a reader registers, before it writes.
  const holder = await liveHolder(repo);
  const readers = writes.some((w) => w.pid !== undefined) ? (await readersOf(repo.storage).catch(() => ({ live: [] }))).live.map((r) => r.info) : [];
  const writers = holder ? [holder, ...readers] : readers;
  const backupWriting = pointsOfBackup(holder);
  for (const write of writes) {
    const volumeOf = write.key.startsWith(keys.dataPrefix) ? write.key.slice(keys.dataPrefix.length).split('/')[0]! : undefined;
    const by = write.pid !== undefined ? writers.find((w) => madeBy(write, w.pid, Date.parse(w.startedAt))) : volumeOf !== undefined ? backupWriting(volumeOf) : undefined;
    if (by) found.running.push({ write, by: describeLock(by) });
    else if (write.pid !== undefined && ownerRuns(write.pid, write.since?.getTime())) found.running.push({ write, by: `process ${write.pid} on ${os.hostname()}` });
    else found.leftovers.push(write);
  }
  if (found.leftovers.length === 0) return found;
  // A write its process completed (or abandoned) between the listing and the look at the lock is gone by now.
  const still = new Set((await listWrites()).map(identify));
  found.leftovers = found.leftovers.filter((write) => still.has(identify(write)));
  return found;
}

/** How far the clock that stamps a temporary file may be behind the writer's (a file system on another host). */
const CLOCK_SLACK_MS = 5000;

/**
 * Whether the process `pid`, started at `startedAt` (ms), wrote `write`. Pids are
 * reused (in a container every run may have the same one): a file last written
 * before that process started is another's.
 */
function madeBy(write: IncompleteWrite, pid: number, startedAt: number): boolean {
  return write.pid === pid && (write.since === undefined || Number.isNaN(startedAt) || write.since.getTime() >= startedAt - CLOCK_SLACK_MS);
}

const identify = (write: IncompleteWrite) => `${write.key}\0${write.uploadId ?? ''}`;

/** What a leftover incomplete write is, for messages: `a temporary file of 4096 bytes, left by …`. */
export function describeLeftover(write: IncompleteWrite): string {
  return `${write.size === undefined ? write.what : `${write.what} of ${write.size} bytes`}, left by a write that never finished (a backup or another command that was stopped)`;
}

/**
 * Several leftover incomplete writes in one sentence, for messages: how many of each kind, their bytes
 * where they are known, and the first few keys (`3 incomplete multipart uploads, left by …: data/…`).
 */
export function describeLeftovers(writes: readonly IncompleteWrite[]): string {
  if (writes.length === 1) return describeLeftover(writes[0]!);
  const counts = countLeftovers(writes);
  const sizes = writes.map((write) => write.size);
  const bytes = sizes.every((size) => size !== undefined) ? ` of ${sizes.reduce((a, b) => a + b, 0)} bytes in all` : '';
  return `${counts}${bytes}, left by writes that never finished (backups or other commands that were stopped): ${named(writes.map((write) => write.key))}`;
}

/** How many writes of each kind: `an incomplete multipart upload`, `3 temporary files and an incomplete multipart upload`. */
export function countLeftovers(writes: readonly IncompleteWrite[]): string {
  const kinds = new Map<string, number>();
  for (const write of writes) kinds.set(write.what, (kinds.get(write.what) ?? 0) + 1);
  return [...kinds].map(([what, n]) => (n === 1 ? what : `${n} ${what.replace(/^an? /, '')}s`)).join(' and ');
}

/** The first few of several names, and how many more: `a, b, c and 2 more`, `a and b`. */
function named(names: readonly string[]): string {
  const shown = names.slice(0, LEFTOVERS_NAMED);
  return names.length > LEFTOVERS_NAMED ? `${shown.join(', ')} and ${names.length - LEFTOVERS_NAMED} more` : `${shown.slice(0, -1).join(', ')} and ${shown.at(-1)}`;
}

/**
 * The data of one or more aborted backups, for messages: `3 object(s), 3072 bytes, left by an aborted backup
 * under data/<id>/`, or for several in one sentence, `… left by 5 aborted backups under data/: <id>, <id>,
 * <id> and 2 more` (a host that crashed night after night leaves one each night).
 */
export function describeAbortedBackups(orphans: readonly { id: string; prefix: string; keys: readonly string[]; bytes: number }[]): string {
  const objects = orphans.reduce((n, o) => n + o.keys.length, 0);
  const bytes = orphans.reduce((n, o) => n + o.bytes, 0);
  const by = orphans.length === 1 ? `an aborted backup under ${orphans[0]!.prefix}` : `${orphans.length} aborted backups under ${keys.dataPrefix}: ${named(orphans.map((o) => o.id))}`;
  return `${objects} object(s), ${bytes} bytes, left by ${by}`;
}

/** How many keys a message about several leftovers names. */
const LEFTOVERS_NAMED = 3;

/** Said, and gone on from, when the incomplete writes could not be listed (credentials without s3:ListBucketMultipartUploads). */
export function incompleteWritesUnlisted(err: unknown): Notice {
  return { level: 'info', code: 'incomplete-writes-unlisted', message: `could not look for writes that never finished: ${errorMessage(err)}` };
}

/**
 * Removes the incomplete writes whose process is gone, saying what each was. Needs the repository lock.
 * Credentials that may not list them leave them, said in one line, as verify says it: nothing this
 * command does depends on them.
 */
export async function removeUnfinishedWrites(repo: Repository, reporter: Reporter): Promise<IncompleteWrite[]> {
  const leftovers = await leftoverWrites(repo, reporter);
  if (leftovers.length === 0) return [];
  await repo.storage.removeIncomplete(leftovers);
  // One line, however many there were: a crashed backup of a large model can leave hundreds.
  reporter.notice?.({ level: 'info', code: 'leftovers-removed', ...(leftovers.length === 1 ? { path: leftovers[0]!.key } : {}), message: `removed ${describeLeftovers(leftovers)}` });
  return leftovers;
}

/**
 * The incomplete writes whose process is gone, which removeUnfinishedWrites would remove (what a prune's
 * dry run names). Credentials that may not list them leave none, said in one line.
 */
export async function leftoverWrites(repo: Repository, reporter: Reporter): Promise<IncompleteWrite[]> {
  try {
    return (await unfinishedWrites(repo)).leftovers;
  } catch (err) {
    if (!isPermissionRefused(err)) throw err;
    reporter.notice?.(incompleteWritesUnlisted(err));
    return [];
  }
}
