import * as os from 'node:os';
import * as z from 'zod';
import { LockedError, UsageError, errorMessage, type LifeboatError } from '../errors.js';
import { decodeDocument, encodeDocument } from '../format/document.js';
import { POINT_ID } from '../format/ids.js';
import { keys } from '../format/manifest.js';
import { SMALL_DOCUMENT_BYTES, isNotFound, type Storage } from '../storage/storage.js';
import { SwitchSettling, appendEvent, eventsNewestFirst, isSwitch, switchGeneration, type JournalEvent } from './journal.js';
import { runPool } from './pool.js';
import { describeLock, readLock } from './lock.js';
import type { Repository } from './repository.js';
import { readActive, readTargetState, slotPoint } from './slots.js';
import type { TargetSpec } from './targets.js';

const PREFIX = 'pins/';
export const pinKey = (id: string) => `${PREFIX}${id}.json`;
/** Pin documents read at once: each is a round trip to S3. */
const PIN_READS_AT_ONCE = 8;

const pinSchema = z.object({
  point: z.string().regex(POINT_ID),
  reason: z.string().min(1).max(1000),
  pinnedAt: z.string(),
  user: z.string(),
  host: z.string(),
});
export type Pin = z.infer<typeof pinSchema>;

function whoAmI(): string {
  try {
    return os.userInfo().username;
  } catch {
    return process.env.USER ?? 'unknown';
  }
}

/** Pins a point (or changes the reason of a pin): prune keeps it, and what it depends on, until it is unpinned. */
export async function pin(repo: Repository, point: string, reason: string, now = new Date()): Promise<{ pin: Pin; replaced?: Pin }> {
  const text = reason.trim();
  if (!text) throw new UsageError('a pin needs a reason: --reason TEXT');
  if (text.length > 1000) throw new UsageError('--reason is longer than 1000 characters');
  // A prune that is running planned without this pin; pinning now would promise what it may not keep.
  const lock = await readLock(repo.storage);
  if (lock && !lock.stale && lock.info.command === 'prune') {
    throw new LockedError(`a prune is running (${describeLock(lock.info)}); pin ${point} when it has finished`);
  }
  const replaced = (await readPins(repo.storage)).get(point);
  const record: Pin = { point, reason: text, pinnedAt: now.toISOString(), user: whoAmI(), host: os.hostname() };
  await repo.storage.putDocument(pinKey(point), encodeDocument(record));
  // Pinned already, the point was kept by any prune meanwhile: only a new pin can have been missed.
  if (!replaced) await confirmPin(repo.storage, point);
  await appendEvent(repo.storage, { type: 'pin', point, outcome: 'ok', detail: { reason: text } }).catch(() => undefined);
  return { pin: record, ...(replaced ? { replaced } : {}) };
}

/**
 * A prune that took the lock between pin's look at it and the writing of the
 * pin may have read the pins without this one. The pin stands when no prune
 * holds the lock now and the point is still there (a prune that missed the pin
 * has finished, without removing it), or when the prune holding the lock has
 * said which points it removes, not this one. Otherwise the pin is taken back
 * and pin fails, saying why.
 */
async function confirmPin(storage: Storage, point: string): Promise<void> {
  const lock = await readLock(storage);
  let failure: LifeboatError | undefined;
  if (lock && !lock.stale && lock.info.command === 'prune') {
    const removing = lock.info.removing;
    if (!removing) {
      failure = new LockedError(`a prune started while ${point} was being pinned (${describeLock(lock.info)}); it was not pinned`, {
        hint: `pin it again when the prune has finished`,
      });
    } else if (removing.includes(point)) {
      failure = new UsageError(`backup point ${point} is being removed by a prune that started while it was being pinned (${describeLock(lock.info)}); it was not pinned`, {
        hint: 'see `lifeboat list` for the points that remain',
      });
    }
  } else if (!(await storage.head(keys.point(point)))) {
    failure = new UsageError(`backup point ${point} was removed by a prune that ran while it was being pinned; it was not pinned`, {
      hint: 'see `lifeboat list` for the points that remain',
    });
  }
  if (!failure) return;
  // A pin left behind would name a point prune removes, or has removed.
  await storage.delete([pinKey(point)]).catch(() => undefined);
  throw failure;
}

/** Removes a pin; an error when the point is not pinned. */
export async function unpin(repo: Repository, point: string): Promise<Pin> {
  const existing = (await readPins(repo.storage)).get(point);
  if (!existing) throw new UsageError(`${point} is not pinned`, { hint: 'see `lifeboat list` for pinned points' });
  await repo.storage.delete([pinKey(point)]);
  await appendEvent(repo.storage, { type: 'unpin', point, outcome: 'ok', detail: { reason: existing.reason } }).catch(() => undefined);
  return existing;
}

/**
 * Every pin, by point. A pin document that does not read still pins its point
 * (named by its key), so a damaged pin can never let prune remove a point.
 */
export async function readPins(storage: Storage): Promise<Map<string, Pin>> {
  const ids: string[] = [];
  for await (const { key } of storage.list(PREFIX)) {
    const id = /^pins\/(.+)\.json$/.exec(key)?.[1];
    if (id && POINT_ID.test(id)) ids.push(id);
  }
  // Read side by side: one after another, hundreds of pins on S3 took a round trip each before `list` printed.
  const pins = new Array<Pin | undefined>(ids.length);
  await runPool(ids, PIN_READS_AT_ONCE, async (id, i) => {
    const key = pinKey(id);
    try {
      pins[i] = decodeDocument(await storage.getDocument(key, { maxBytes: SMALL_DOCUMENT_BYTES }), pinSchema, `pin ${key}`);
    } catch (err) {
      if (isNotFound(err)) return;
      pins[i] = { point: id, reason: `pinned (its pin document does not read: ${errorMessage(err)})`, pinnedAt: '', user: '', host: '' };
    }
  });
  const out = new Map<string, Pin>();
  ids.forEach((id, i) => {
    if (pins[i]) out.set(id, pins[i]!);
  });
  return out;
}

/** Whether a journal event is a switch that left its target serving its point: one that succeeded, or failed with the new slot kept linked. */
function leftServing(e: JournalEvent): boolean {
  return isSwitch(e) && (e.outcome === 'ok' || e.detail?.switched === true);
}

/**
 * What targets serve, from the repository's journal: for each target, its
 * newest switch that left it serving a point names the point now active and
 * (`fromPoint`) the one before it. This is what a host that does not run the
 * targets (a backup server pruning the repository) knows. The whole journal is
 * read: a target that last switched years of drills and restores ago serves that point still.
 * Newest is by the switch's generation, which the target's host counts: the journal's order is that of
 * the hosts' clocks, and a switch made while its host's clock ran ahead would otherwise pass for the last.
 * The newest by time is kept too, for switches recorded without a generation, and for a target whose
 * record of switches was lost (its count started again). A switch announced and not settled since (see
 * SwitchSettling: killed after it moved the link, before it could say so, or running now) may have left
 * its target serving either point: both are kept.
 */
async function journalSlots(storage: Storage, out: Map<string, string>): Promise<void> {
  const newest = new Map<string, JournalEvent>();
  const last = new Map<string, { generation: number; events: JournalEvent[] }>();
  const settling = new SwitchSettling();
  for await (const e of eventsNewestFirst(storage)) {
    settling.see(e);
    if (!leftServing(e)) continue;
    const target = e.target!;
    if (!newest.has(target)) newest.set(target, e);
    const generation = switchGeneration(e);
    if (generation === undefined) continue;
    const had = last.get(target);
    if (!had || generation > had.generation) last.set(target, { generation, events: [e] });
    else if (generation === had.generation) had.events.push(e);
  }
  for (const e of [...newest.values(), ...[...last.values()].flatMap((l) => l.events)]) {
    if (e.point) addReason(out, e.point, `active slot of target ${e.target} (${e.type} ${e.at})`);
    const from = e.detail?.fromPoint;
    if (typeof from === 'string' && POINT_ID.test(from)) addReason(out, from, `previous slot of target ${e.target} (rollback goes there)`);
  }
  for (const e of settling.unsettled()) {
    const unfinished = `a ${e.type} of target ${e.target} that has not said how it ended (${e.at}): running, or stopped after it announced the switch`;
    if (e.point) addReason(out, e.point, `switched to by ${unfinished}`);
    const from = e.detail?.fromPoint;
    if (typeof from === 'string' && POINT_ID.test(from)) addReason(out, from, `served before ${unfinished}`);
  }
}

/** What configured targets on this host serve: the point of the active link's slot and of the previous slot. */
async function localSlots(targets: readonly TargetSpec[], out: Map<string, string>): Promise<void> {
  for (const t of targets) {
    try {
      const active = slotPoint(t.slots, await readActive(t.active, t.slots));
      if (active) addReason(out, active, `active slot of target ${t.name}`);
    } catch {
      // Not a link lifeboat can read here (another host's target): the journal speaks for it.
    }
    const previous = slotPoint(t.slots, (await readTargetState(t.slots)).previous);
    if (previous) addReason(out, previous, `previous slot of target ${t.name} (rollback goes there)`);
  }
}

function addReason(out: Map<string, string>, id: string, reason: string): void {
  const had = out.get(id);
  if (!had) out.set(id, reason);
  else if (!had.includes(reason)) out.set(id, `${had}; ${reason}`);
}

export interface ProtectionOptions {
  /** Targets of this host's config: their links and slot state are read too. */
  targets?: readonly TargetSpec[];
}

/**
 * Points that retention must keep whatever its policy says, with the reason:
 * pinned points, and the points that targets' active and previous slots were
 * restored from (from the journal, and from the configured targets' links
 * when they are on this host). Prune keeps what these depend on as well.
 */
export async function protectedPoints(repo: Repository, options: ProtectionOptions = {}): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const [id, p] of await readPins(repo.storage)) addReason(out, id, `pinned: ${p.reason}`);
  await journalSlots(repo.storage, out);
  await localSlots(options.targets ?? [], out);
  return out;
}
