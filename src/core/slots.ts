import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import * as z from 'zod';
import * as os from 'node:os';
import { constants as fsConstants } from 'node:fs';
import { LockedError, RuntimeFailure, UsageError, errorMessage, fileSystemHint } from '../errors.js';
import { POINT_ID } from '../format/ids.js';
import { readRegularFile, readRegularFileStats, syncPath, writeFileSynced } from '../format/durable.js';
import { makeDirectories } from '../format/mkdirs.js';
import { ownerRuns, parseStart } from '../format/process-alive.js';
import { sleep } from '../sleep.js';
import { DEFAULT_LEASE_MS, ownProcessStart, refreshInterval, staleLimit } from './lock.js';
import { replaceHolding } from '../storage/local.js';
import { formatDuration } from '../config/duration.js';
import { quoteName, shellWord } from '../format/quote.js';

/** Kept in the slots directory: what the link pointed at before the last switch, and the switches made. */
export const TARGET_STATE_FILE = '.lifeboat-target.json';
const HISTORY = 50;
/** The most the record of switches may take: 50 switches, between paths of up to 4 KiB. */
const TARGET_STATE_LIMIT = 4 * 1024 * 1024;

const switchSchema = z.object({
  at: z.string(),
  from: z.string().nullable(),
  to: z.string(),
  kind: z.string(),
  /** Whether the switch put the point's serving state back (false: --no-state); absent in records from before it was kept. */
  state: z.boolean().optional(),
  /** The serving-state sources of the point switched to, so that a rollback to it knows without its manifest when it has none. */
  stateSources: z.array(z.string()).optional(),
  /**
   * The switch's place among the target's switches (1, 2, …), carried into the journal: hosts' clocks
   * disagree, so this, not the time, says which switch of a target came last. Absent in older records.
   */
  generation: z.number().int().min(1).optional(),
});
export type SwitchRecord = z.infer<typeof switchSchema>;

const targetStateSchema = z.object({
  version: z.literal(1),
  /** Absolute path the link pointed at before the last successful switch (what rollback returns to). */
  previous: z.string().nullable(),
  history: z.array(switchSchema),
  /** The generation of the target's last switch (see SwitchRecord); absent in records from before it was kept. */
  generation: z.number().int().min(0).optional(),
  /**
   * A switch written down just before the link is moved, with the link's path: a process killed after moving
   * the link, before it could record the switch, leaves it here, and it counts as made when the link names `to`.
   */
  pending: switchSchema
    .extend({
      active: z.string(),
      /**
       * Written before a switch whose slot did not get healthy is switched back: `state`, whether the serving state of
       * the slot switched back to (`from`) is still to be put back. A process killed before it was, and before the
       * switch-back was journalled, leaves it here for the next failover or rollback to finish (see unfinishedSwitchBack).
       */
      back: z.object({ at: z.string(), reason: z.string(), state: z.boolean() }).optional(),
    })
    .optional(),
  /**
   * Written before a failover or rollback puts the serving state of the point in `slot` in place, ahead of
   * the switch to it; taken out once the switch is recorded or the state of the point served went back. A
   * process killed in between (or stopped by a second Ctrl-C) leaves it here: while the link names another
   * slot, that slot is served with this point's state (see stateLeftBehind).
   */
  stateOf: z
    .object({
      slot: z.string(),
      point: z.string(),
      at: z.string(),
      /**
       * Once it is in place: the sources it replaced, and for a SQLite database where what it held just before is
       * kept, which is what goes back when the switch is undone (the copy of the point served lacks what was written since).
       */
      changed: z.array(z.object({ name: z.string(), live: z.string().optional(), keptAs: z.string().optional() })).max(10_000).optional(),
    })
    .optional(),
});
type TargetRecord = z.infer<typeof targetStateSchema>;
/** A serving-state source a switch put back: for a SQLite database, the live file and where what it held just before is kept. */
export type StateChange = NonNullable<NonNullable<TargetRecord['stateOf']>['changed']>[number];
export type TargetState = Omit<TargetRecord, 'pending' | 'stateOf'>;

/** The slot directory that holds a point. */
export function slotPath(slots: string, point: string): string {
  return path.join(slots, point);
}

/** The point a slot holds, from its name; undefined for directories lifeboat did not make. */
export function slotPoint(slots: string, dir: string | null | undefined): string | undefined {
  if (!dir || path.dirname(dir) !== path.resolve(slots)) return undefined;
  const name = path.basename(dir);
  return POINT_ID.test(name) ? name : undefined;
}

/**
 * `dir` named as the slots directory `slots` names its slots, when it is one of them reached another way: through a
 * symbolic link on the way (the slots directory configured through a link, or a link set by hand to the real path),
 * or a bind mount. Paths of slots are compared as strings everywhere, so they are compared as the directories they
 * are only once each is named so. A slot removed since is judged by its parent directory; anything else is `dir`.
 */
export async function asSlot(slots: string, dir: string): Promise<string> {
  const base = path.resolve(slots);
  if (path.dirname(dir) === base) return dir;
  const real = await fsp.realpath(dir).catch(() => dir);
  for (const candidate of real === dir ? [dir] : [dir, real]) {
    if (await sameDirectory(path.dirname(candidate), base)) return path.join(base, path.basename(candidate));
  }
  return dir;
}

/** Whether two paths lead to the same directory (its device and inode), whatever links lie on the way. */
async function sameDirectory(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([fsp.stat(a).catch(() => undefined), fsp.stat(b).catch(() => undefined)]);
  return x !== undefined && y !== undefined && x.isDirectory() && x.dev === y.dev && x.ino === y.ino;
}

/**
 * Where the `active` link points (absolute), or null when there is no link.
 * Anything else at that path (a real directory) is refused: switching it
 * atomically is impossible, and replacing it would destroy it. Given the
 * target's `slots`, a slot is named as it is there (see asSlot).
 */
export async function readActive(active: string, slots?: string): Promise<string | null> {
  let st;
  try {
    st = await fsp.lstat(active);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  if (!st.isSymbolicLink()) {
    throw new UsageError(`${quoteName(active)} is not a symbolic link`, {
      hint: `move it aside and make it a link to the directory the server reads (ln -s DIR ${shellWord(active)}), so it can be switched atomically`,
    });
  }
  const dir = path.resolve(path.dirname(active), await fsp.readlink(active));
  return slots === undefined ? dir : asSlot(slots, dir);
}

/**
 * Points the link at `dir` atomically: a new link is made beside it and
 * renamed over it, so readers see the old target or the new one, never no
 * link. The link is relative when the slot is near it, so the tree can move.
 * `dir` null removes the link (back to a target that never had one).
 */
export async function switchActive(active: string, dir: string | null): Promise<void> {
  if (dir === null) {
    await fsp.rm(active, { force: true });
    return;
  }
  const parent = path.dirname(active);
  await makeDirectories(parent);
  const tmp = path.join(parent, `${newLinkPrefix(active)}${process.pid}-${randomBytes(4).toString('hex')}`);
  await fsp.symlink(path.relative(parent, dir) || '.', tmp);
  try {
    await fsp.rename(tmp, active);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
  const dirFd = await fsp.open(parent, 'r').catch(() => undefined);
  await dirFd?.sync().catch(() => undefined);
  await dirFd?.close();
}

/** What the new link made beside `active` is named, up to the pid of the process that makes it: `.<active>.lifeboat-<pid>-<random>`. */
function newLinkPrefix(active: string): string {
  return `.${path.basename(active)}.lifeboat-`;
}

/**
 * Removes the new links a switch killed between making one and renaming it over `active` left beside
 * it, those of processes that are gone (never one of a process that runs); returns their names.
 */
export async function removeLeftLinks(active: string): Promise<string[]> {
  const parent = path.dirname(active);
  const prefix = newLinkPrefix(active);
  const removed: string[] = [];
  for (const name of await fsp.readdir(parent).catch(() => [] as string[])) {
    const pid = name.startsWith(prefix) ? /^([1-9][0-9]*)-[0-9a-f]{8}$/.exec(name.slice(prefix.length))?.[1] : undefined;
    if (pid === undefined) continue;
    const leftover = path.join(parent, name);
    const st = await fsp.lstat(leftover).catch(() => undefined);
    // Its time is when it was made: a process given the pid since is not its maker.
    if (!st?.isSymbolicLink() || ownerRuns(Number(pid), st.mtimeMs)) continue;
    await fsp.rm(leftover, { force: true });
    removed.push(name);
  }
  return removed;
}

/**
 * Refuses at once a switch this user could not make: the link is replaced by
 * one made beside it, in its directory. Found only at the switch, it came
 * after the new slot was restored and the old one drained. A directory not
 * made yet is made at the switch, and says then if it cannot be.
 */
export async function checkActiveLinkWritable(active: string, name: string): Promise<void> {
  const parent = path.dirname(active);
  const refused = await fsp.access(parent, fsConstants.W_OK | fsConstants.X_OK).then(() => undefined, (err: NodeJS.ErrnoException) => err);
  if (refused === undefined || !['EACCES', 'EPERM', 'EROFS'].includes(refused.code ?? '')) return;
  throw new RuntimeFailure(`the active link ${quoteName(active)} of target ${name} cannot be switched: ${errorMessage(refused)}`, {
    cause: refused,
    hint: `${fileSystemHint(refused, parent)}, where the link is replaced, or run this as a user who may`,
  });
}

/**
 * The record of switches. A switch written down before the link was moved (a
 * failover or rollback killed before it could record it: kill -9, a power
 * loss while the new slot was checked) counts as made when the link names
 * its slot, so that a rollback returns to the slot served before it, not the
 * one before that; `own`, the switch the caller is recording itself, is left out.
 */
export async function readTargetState(slots: string, own?: Pick<SwitchRecord, 'from' | 'to'>): Promise<TargetState> {
  const record = await readRecord(slots);
  // Missing or damaged: start afresh; the link itself is the truth about what is active.
  if (!record) return { version: 1, previous: null, history: [] };
  const { pending, stateOf: _stateOf, ...state } = record;
  // A switch announced and switched back still had its generation written in the journal: the next one comes after it.
  if (pending?.generation !== undefined) state.generation = Math.max(state.generation ?? 0, pending.generation);
  if (pending && !(own && own.from === pending.from && own.to === pending.to)) {
    const { active, back: _switchedBack, ...made } = pending;
    if ((await readActive(active, slots).catch(() => null)) === made.to) {
      state.history.push(made);
      state.previous = made.from;
    }
  }
  return state;
}

/**
 * Writes down a switch about to be made (see readTargetState), and returns its
 * generation, the one after the target's last. Only as a new copy renamed over
 * the old one: where that cannot be written (a full disk) it is left out, and
 * the switch is recorded once made, as it always was. A record with switches but
 * no count was written by a version that does not keep it (one still running on
 * another host rewrites the record without it): `journalled`, the last
 * generation the journal holds for the target, is where the count goes on from.
 */
export async function announceSwitch(slots: string, active: string, made: Omit<SwitchRecord, 'generation'>, journalled?: () => Promise<number>): Promise<number> {
  const state = await readTargetState(slots);
  let last = state.generation ?? 0;
  if (state.generation === undefined && state.history.length > 0 && journalled) last = Math.max(last, await journalled().catch(() => 0));
  const generation = last + 1;
  // The state put in place for the switch stays said until the switch is recorded.
  const stateOf = (await readRecord(slots))?.stateOf;
  await writeTargetState(slots, { ...state, pending: { ...made, generation, active: path.resolve(active) }, ...(stateOf ? { stateOf } : {}) }, false).catch(() => undefined);
  return generation;
}

/** The record as it is in the file, a switch announced included; undefined when it is missing or does not read. */
async function readRecord(slots: string): Promise<TargetRecord | undefined> {
  try {
    const parsed = targetStateSchema.safeParse(JSON.parse(await readRegularFile(path.join(slots, TARGET_STATE_FILE), TARGET_STATE_LIMIT)));
    return parsed.success ? await slotsNamed(slots, parsed.data) : undefined;
  } catch {
    return undefined;
  }
}

/** The record with each slot it names named as `slots` names it (see asSlot): written while the slots directory was configured another way, it still names the same slots. */
async function slotsNamed(slots: string, record: TargetRecord): Promise<TargetRecord> {
  const named = new Map<string, Promise<string>>();
  const slot = (dir: string) => named.get(dir) ?? named.set(dir, asSlot(slots, dir)).get(dir)!;
  const either = async (dir: string | null) => (dir === null ? null : slot(dir));
  const move = async <T extends { from: string | null; to: string }>(s: T): Promise<T> => ({ ...s, from: await either(s.from), to: await slot(s.to) });
  return {
    ...record,
    previous: await either(record.previous),
    history: await Promise.all(record.history.map(move)),
    ...(record.pending ? { pending: await move(record.pending) } : {}),
    ...(record.stateOf ? { stateOf: { ...record.stateOf, slot: await slot(record.stateOf.slot) } } : {}),
  };
}

/** A switch that was being switched back when its process was stopped: the link names `from` again. */
export type UnfinishedSwitchBack = SwitchRecord & NonNullable<NonNullable<TargetRecord['pending']>['back']>;

/**
 * Writes down, on the switch announced, that it is being switched back (`back.state`: with the serving state of
 * the slot switched back to still to be put back), or that its state went back. Left out where it cannot be written.
 */
export async function announceSwitchBack(slots: string, back: NonNullable<NonNullable<TargetRecord['pending']>['back']>): Promise<void> {
  const record = await readRecord(slots);
  if (record?.pending) await writeTargetState(slots, { ...record, pending: { ...record.pending, back } }, false).catch(() => undefined);
}

/** The switch being switched back that a process stopped before it had put the state back and journalled it, when the link names its `from` again. */
export async function unfinishedSwitchBack(slots: string): Promise<UnfinishedSwitchBack | undefined> {
  const pending = (await readRecord(slots))?.pending;
  if (!pending?.back) return undefined;
  const { active, back, ...made } = pending;
  if ((await readActive(active, slots).catch(() => undefined)) !== made.from) return undefined;
  return { ...made, ...back, at: made.at };
}

/**
 * The switch announced that a process stopped (killed) before it moved the link: the link still names its
 * `from`, which the target's deactivate hook may have drained. Runs that stop otherwise take it out (settlePending).
 */
export async function switchNotMade(slots: string): Promise<SwitchRecord | undefined> {
  const pending = (await readRecord(slots))?.pending;
  if (!pending || pending.back || pending.from === null || pending.from === pending.to) return undefined;
  const { active, back: _back, ...made } = pending;
  return (await readActive(active, slots).catch(() => undefined)) === made.from ? made : undefined;
}

/** Takes the switch announced out of the record, once what it did is journalled. */
export async function settlePending(slots: string): Promise<void> {
  // Made, when the link names its slot after all (stopped before the link went back): then it is recorded as made.
  // Whose serving state is in place stays said: a switch back that could not put the old state back leaves it so.
  const record = await readRecord(slots);
  if (record?.pending) await writeTargetState(slots, { ...(await readTargetState(slots)), ...(record.stateOf ? { stateOf: record.stateOf } : {}) }).catch(() => undefined);
}

/**
 * Writes down that the serving state of `point` (in `slot`) is about to be put in place, or (undefined)
 * that it no longer needs saying. Left out where the record cannot be written, or does not read (it is
 * then reported as damaged, and must not be replaced by this).
 */
export async function markStateOf(slots: string, stateOf: TargetRecord['stateOf']): Promise<void> {
  if (await targetStateDamage(slots)) return;
  const record = (await readRecord(slots)) ?? { version: 1 as const, previous: null, history: [] };
  if (stateOf === undefined && record.stateOf === undefined) return;
  const { stateOf: _before, ...rest } = record;
  await writeTargetState(slots, { ...rest, ...(stateOf ? { stateOf } : {}) }, false).catch(() => undefined);
}

/** What the serving state recorded as in place replaced, when that is recorded (see `stateOf.changed`). */
export async function stateChangedInPlace(slots: string): Promise<NonNullable<TargetRecord['stateOf']>['changed']> {
  return (await readRecord(slots))?.stateOf?.changed;
}

/** The point whose serving state a failover or rollback stopped before its switch left in place, when the link names another slot than that point's. */
export async function stateLeftBehind(slots: string, active: string | null): Promise<NonNullable<TargetRecord['stateOf']> | undefined> {
  const stateOf = (await readRecord(slots))?.stateOf;
  return stateOf && stateOf.slot !== active ? stateOf : undefined;
}

/**
 * Why the record of switches does not read, when it is there but damaged (a
 * crash, or a full disk that cut its last write short); undefined when it reads
 * or was never written.
 */
export async function targetStateDamage(slots: string): Promise<string | undefined> {
  let text: string;
  try {
    text = await readRegularFile(path.join(slots, TARGET_STATE_FILE), TARGET_STATE_LIMIT);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EFTYPE') return 'it is not a regular file';
    if (code === 'EFBIG') return 'it is larger than any record of switches lifeboat writes';
    return code === 'ENOENT' ? undefined : errorMessage(err);
  }
  try {
    return targetStateSchema.safeParse(JSON.parse(text)).success ? undefined : 'it is not a record of switches';
  } catch {
    return text.trim() === '' ? 'it is empty' : 'it is not valid JSON';
  }
}

export async function writeTargetState(slots: string, state: TargetRecord, inPlaceWhenFull = true): Promise<void> {
  await makeDirectories(slots);
  const file = path.join(slots, TARGET_STATE_FILE);
  const tmp = `${file}.${process.pid}-${randomBytes(4).toString('hex')}`;
  const body = `${JSON.stringify({ ...state, history: state.history.slice(-HISTORY) }, null, 2)}\n`;
  // Written under the switch lock: a copy there is one a process killed while writing it left.
  for (const name of await fsp.readdir(slots).catch(() => [] as string[])) {
    if (name.startsWith(`${TARGET_STATE_FILE}.`)) await fsp.rm(path.join(slots, name), { force: true });
  }
  try {
    // Synced before it is renamed into place, and the name after: a switch written down before the link
    // moves must be on disk before the link's new name is, or a power loss could keep the link alone.
    await writeFileSynced(tmp, body);
    await fsp.rename(tmp, file);
    await syncPath(slots).catch(() => undefined);
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    const code = (err as NodeJS.ErrnoException).code;
    // A full disk has no room for the new copy beside the old one, but the old one's blocks are
    // freed as it is rewritten. Torn by a crash, the record reads as empty, never as a wrong way back.
    if ((code !== 'ENOSPC' && code !== 'EDQUOT') || !inPlaceWhenFull) throw err;
    await fsp.writeFile(file, body);
  }
}

export interface SlotInfo {
  name: string;
  path: string;
  point?: string;
  mtimeMs: number;
}

/** The slot directories (hidden entries and staging directories aside), oldest first. */
export async function listSlots(slots: string): Promise<SlotInfo[]> {
  const names = await fsp.readdir(slots).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [] as string[];
    throw err;
  });
  const out: SlotInfo[] = [];
  for (const name of names) {
    if (name.startsWith('.')) continue;
    const p = path.join(slots, name);
    const st = await fsp.lstat(p).catch(() => undefined);
    if (!st?.isDirectory()) continue;
    out.push({ name, path: p, point: POINT_ID.test(name) ? name : undefined, mtimeMs: st.mtimeMs });
  }
  return out.sort((a, b) => a.mtimeMs - b.mtimeMs || a.name.localeCompare(b.name));
}

/**
 * Which slots to remove so at most `keep` remain: the least recently used
 * lifeboat slots first, never the active or the previous one (a pure plan).
 */
export function planSlotPrune(slots: SlotInfo[], keep: number, protectedDirs: ReadonlySet<string>, lastUsed: ReadonlyMap<string, number>): SlotInfo[] {
  const used = (s: SlotInfo) => lastUsed.get(s.path) ?? s.mtimeMs;
  const candidates = slots.filter((s) => s.point && !protectedDirs.has(s.path)).sort((a, b) => used(a) - used(b));
  const excess = slots.filter((s) => s.point).length - keep;
  return excess > 0 ? candidates.slice(0, excess) : [];
}

const TARGET_LOCK_FILE = '.lifeboat-switch.lock';

/** How long a lock file may stay empty while its maker writes it; one empty for longer was left so by a crash. */
const BEING_WRITTEN_MS = 10_000;
/** More than a switch lock holds: a host name, a pid, a command and a time. */
const SWITCH_LOCK_LIMIT = 64 * 1024;
/** How often a switch lock is looked at again while it changes hands (released, being written, removed as stale). */
const LOCK_ATTEMPTS = 50;

export interface SwitchLockHolder {
  host?: string;
  pid?: number;
  command?: string;
  startedAt?: string;
  /** When its holder last refreshed its lease (locks of earlier versions have none). */
  refreshedAt?: string;
  leaseMs?: number;
  processStart?: string;
}

/**
 * Takes the target's switch lock (a file in its slots directory, made with
 * O_EXCL), so two failovers or rollbacks never switch one link at once. Its
 * holder refreshes its lease while it holds it, as the repository lock's does.
 * A lock left by a process that is gone from this host (its pid no longer
 * runs, or now belongs to a process started after the lock was taken), one
 * from another host (a slots directory on NFS) whose lease has not been
 * refreshed for as long as it says (or `staleAfterMs`, lock.staleAfter), or
 * one that does not read (damaged, or
 * left empty by a crash), is taken over: replaced by this process's own in
 * one rename, while it still holds what was judged, so that the lock is
 * never missing and a lock another process took meanwhile stays its own.
 * Exit 4 otherwise.
 */
export async function lockTarget(slots: string, name: string, command: string, leaseMs = DEFAULT_LEASE_MS, staleAfterMs?: number): Promise<SwitchLock> {
  await makeDirectories(slots).catch((err: unknown) => {
    // A path that can never be a directory (a file on the way, a name no file system holds) is the config's
    // to fix, and running again changes nothing: exit 2, as for any other key that cannot work.
    const never = ['ENOTDIR', 'ENAMETOOLONG', 'ELOOP'].includes((err as NodeJS.ErrnoException).code ?? '');
    throw new (never ? UsageError : RuntimeFailure)(`cannot create the slots directory ${quoteName(slots)} of target ${name}: ${errorMessage(err)}`, {
      cause: err,
      hint: `check targets.${name}.slots in the config file`,
    });
  });
  const file = path.join(slots, TARGET_LOCK_FILE);
  const now = new Date().toISOString();
  const holder = { host: os.hostname(), pid: process.pid, command, startedAt: now, refreshedAt: now, leaseMs, ...ownProcessStart() };
  const mine = JSON.stringify(holder);
  for (let attempt = 0; attempt < LOCK_ATTEMPTS; attempt++) {
    let handle: fsp.FileHandle | undefined;
    try {
      handle = await fsp.open(file, 'wx');
      await handle.writeFile(mine);
      await handle.close();
      await removeLeftLockCopies(slots);
      return holdSwitchLock(file, name, holder, mine);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        // Made but not written (a full disk): an empty lock would be left for the next run to judge.
        if (handle) {
          await handle.close().catch(() => undefined);
          await fsp.rm(file, { force: true });
        }
        throw new RuntimeFailure(`cannot take the switch lock of target ${name} in ${quoteName(slots)}: ${errorMessage(err)}`, {
          cause: err,
          hint: fileSystemHint(err, slots) ?? `check targets.${name}.slots in the config file`,
        });
      }
    }
    const found = await readSwitchLock(file).catch((err: unknown) => {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EFTYPE' && code !== 'EFBIG') throw err;
      throw new RuntimeFailure(`cannot take the switch lock of target ${name}: ${quoteName(file)} is not one lifeboat made (${code === 'EFTYPE' ? 'it is not a regular file' : 'it is larger than any switch lock'})`, {
        hint: `remove it, if no failover or rollback of target ${name} runs`,
      });
    });
    // Released since, or made a moment ago and not written yet: looked at again.
    if (found === 'gone') continue;
    if (found === 'being-written') {
      await sleep(20 + attempt * 10);
      continue;
    }
    const other = found.holder;
    if (other && !holderGone(other, staleAfterMs)) {
      const leased = typeof other.leaseMs === 'number' && other.leaseMs > 0 && other.host !== os.hostname();
      throw new LockedError(`target ${name} is being switched by ${other.command ?? 'another process'} (pid ${other.pid ?? '?'} on ${other.host ?? '?'}, since ${other.startedAt ?? '?'})`, {
        hint: leased
          ? `wait for it to finish; if that process is gone, its lock is taken over once its lease has not been refreshed for ${formatDuration(staleLimit(other.leaseMs!, staleAfterMs))} (last at ${other.refreshedAt ?? '?'}; --lock-stale-after or lock.staleAfter shortens that), or remove ${quoteName(file)}`
          : `wait for it to finish; if that process is gone, remove ${quoteName(file)}`,
      });
    }
    if (await replaceSwitchLock(file, mine, found.text)) {
      await removeLeftLockCopies(slots);
      return holdSwitchLock(file, name, holder, mine);
    }
  }
  throw new LockedError(`target ${name}: could not take the switch lock ${quoteName(file)}, which kept changing hands`, { hint: 'another failover or rollback of this target is starting; run this one again when it has finished' });
}

/** Releases a target's switch lock when called; `check` throws (exit 4) unless it is still this holder's. */
export type SwitchLock = (() => Promise<void>) & { check(): Promise<void> };

/**
 * Keeps the switch lock `written` refreshed until it is released, each refresh made only over what this
 * holder last wrote: a lock taken over meanwhile (this process was stopped past its lease) is never
 * written back, and `check` says so before the link is switched.
 */
function holdSwitchLock(file: string, name: string, holder: SwitchLockHolder & { leaseMs: number; command: string }, written: string): SwitchLock {
  let stored = written;
  let refreshing: Promise<unknown> = Promise.resolve();
  const timer = setInterval(() => {
    refreshing = refreshing
      .then(async () => {
        const next = JSON.stringify({ ...holder, refreshedAt: new Date().toISOString() });
        if (await replaceSwitchLock(file, next, stored)) stored = next;
        else clearInterval(timer);
      })
      // A refresh that fails is tried again at the next one.
      .catch(() => undefined);
  }, refreshInterval(holder.leaseMs));
  timer.unref();
  // What the lock holds once the refresh under way (if any) is done: this holder's own while `stored`.
  const current = async () => {
    await refreshing;
    return fsp.readFile(file, 'utf8').catch(() => '');
  };
  const release = async () => {
    clearInterval(timer);
    if ((await current()) === stored) await fsp.rm(file, { force: true });
  };
  const check = async () => {
    const now = await current();
    if (now === stored) return;
    let by = 'it was removed';
    try {
      const other = JSON.parse(now) as SwitchLockHolder;
      by = `${other.command ?? 'another process'} (pid ${other.pid ?? '?'} on ${other.host ?? '?'}) took it over`;
    } catch {
      // removed, or being written
    }
    throw new LockedError(`this ${holder.command} lost the switch lock of target ${name}: ${by}, this process having been stopped or slowed past its lease`, {
      hint: 'it stopped before switching the link; see lifeboat status, and run it again once the other has finished',
    });
  };
  return Object.assign(release, { check });
}

/** Replaces the switch lock with `text` only while it still holds `judged`. */
async function replaceSwitchLock(file: string, text: string, judged: string): Promise<boolean> {
  const tmp = `${file}.${lockCopyName(process.pid)}`;
  try {
    await fsp.writeFile(tmp, text, { flag: 'wx' });
    return await replaceHolding(file, tmp, Buffer.from(judged), quoteName(file));
  } finally {
    await fsp.rm(tmp, { force: true });
  }
}

/** What follows the lock's name in the copy a refresh or takeover writes beside it before it replaces the lock: `<pid>-<random>`. */
const lockCopyName = (pid: number) => `${pid}-${randomBytes(4).toString('hex')}`;
const LOCK_COPY = /^([1-9][0-9]*)-[0-9a-f]{8}$/;

/**
 * Removes the copies of the switch lock a process killed while it refreshed or took over the lock left
 * beside it (`.lifeboat-switch.lock.<pid>-<random>`), which nothing else reads or removes: those whose
 * process no longer runs on this host, and that are older than a write of the lock takes (the name
 * does not say on which host its process ran: slots on NFS may be shared). Called by the lock's new
 * holder; a copy of a process still replacing the lock is left alone.
 */
async function removeLeftLockCopies(slots: string): Promise<void> {
  for (const name of await leftLockCopies(slots)) await fsp.rm(path.join(slots, name), { force: true });
}

/** The names of the copies of the switch lock in `slots` that processes killed while they replaced the lock left (see removeLeftLockCopies). */
export async function leftLockCopies(slots: string): Promise<string[]> {
  const left: string[] = [];
  for (const name of await fsp.readdir(slots).catch(() => [] as string[])) {
    const pid = name.startsWith(`${TARGET_LOCK_FILE}.`) ? LOCK_COPY.exec(name.slice(TARGET_LOCK_FILE.length + 1))?.[1] : undefined;
    if (pid === undefined) continue;
    const st = await fsp.lstat(path.join(slots, name)).catch(() => undefined);
    if (!st?.isFile() || Date.now() - st.mtimeMs < BEING_WRITTEN_MS || ownerRuns(Number(pid), st.mtimeMs)) continue;
    left.push(name);
  }
  return left.sort();
}

/**
 * Whether the holder of a switch lock is gone. On this host, its pid tells for certain: it no longer
 * runs, or was given again to another process (its recorded start differs; in a lock without one, it
 * started after the lock was taken); a failover stopped here (Ctrl-Z) keeps its lock. On another host
 * (slots on NFS), once its lease has not been refreshed for as long as it says, or for `staleAfterMs`
 * (lock.staleAfter), as the repository lock's; a lock of an earlier version, which records no lease,
 * is never judged from there.
 */
function holderGone(holder: SwitchLockHolder, staleAfterMs?: number): boolean {
  const { host, pid, startedAt, refreshedAt, leaseMs, processStart } = holder;
  if (host === os.hostname()) return typeof pid === 'number' && !ownerRuns(pid, typeof startedAt === 'string' ? Date.parse(startedAt) : undefined, parseStart(processStart));
  const refreshed = typeof refreshedAt === 'string' ? Date.parse(refreshedAt) : Number.NaN;
  return Number.isFinite(refreshed) && typeof leaseMs === 'number' && leaseMs > 0 && Date.now() - refreshed > staleLimit(leaseMs, staleAfterMs);
}

/**
 * What holds the switch lock of the target in `slots`: its holder (absent when the lock does not read, or is being written),
 * and whether that is gone; undefined when there is no lock. A failover or rollback runs now when it is not `stale`.
 */
export async function switchLockHolder(slots: string, staleAfterMs?: number): Promise<{ holder?: SwitchLockHolder; stale: boolean } | undefined> {
  const found = await readSwitchLock(path.join(slots, TARGET_LOCK_FILE)).catch(() => 'gone' as const);
  if (found === 'gone') return undefined;
  if (found === 'being-written') return { stale: false };
  return { ...(found.holder ? { holder: found.holder } : {}), stale: found.holder === undefined || holderGone(found.holder, staleAfterMs) };
}

/** The switch lock as it is now: its holder (none when it does not read), or why there is none to judge. */
async function readSwitchLock(file: string): Promise<'gone' | 'being-written' | { text: string; holder?: SwitchLockHolder }> {
  let text: string;
  let mtimeMs: number;
  try {
    // A named pipe put there blocked the open for ever, and a file of 300 MB was read whole.
    const read = await readRegularFileStats(file, SWITCH_LOCK_LIMIT);
    text = read.text;
    mtimeMs = Number(read.stats.mtimeMs);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'gone';
    throw err;
  }
  if (text === '' && Date.now() - mtimeMs < BEING_WRITTEN_MS) return 'being-written';
  try {
    const holder = JSON.parse(text) as unknown;
    if (holder && typeof holder === 'object' && !Array.isArray(holder)) return { text, holder: holder as SwitchLockHolder };
  } catch {
    // damaged
  }
  return { text };
}

