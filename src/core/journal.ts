import { randomBytes } from 'node:crypto';
import * as os from 'node:os';
import * as z from 'zod';
import { SMALL_DOCUMENT_BYTES, type Storage } from '../storage/storage.js';
import { runPool } from './pool.js';

const PREFIX = 'journal/';

export const journalEventSchema = z.object({
  /** What happened: failover, rollback, restore, drill, … */
  type: z.string().min(1).max(32),
  at: z.string(),
  user: z.string(),
  host: z.string(),
  point: z.string().nullable(),
  target: z.string().nullable().optional(),
  /** `switching`: a failover or rollback about to move its target's link, written before it does (see SwitchSettling). */
  outcome: z.enum(['ok', 'failed', 'rolled-back', 'switching']),
  durationMs: z.number().int().min(0).optional(),
  /** Type-specific figures (achieved RTO, slot, …); never secrets. */
  detail: z.record(z.string(), z.unknown()).optional(),
});
export type JournalEvent = z.infer<typeof journalEventSchema>;

function whoAmI(): string {
  try {
    return os.userInfo().username;
  } catch {
    return process.env.USER ?? 'unknown';
  }
}

/**
 * The repository's append-only event journal: one small object per event
 * (`journal/<time>-<random>.json`), so appends never rewrite anything and work
 * the same on local disk and S3.
 */
export async function appendEvent(storage: Storage, event: Omit<JournalEvent, 'at' | 'user' | 'host'> & Partial<Pick<JournalEvent, 'at'>>): Promise<JournalEvent> {
  const full: JournalEvent = { at: new Date().toISOString(), user: whoAmI(), host: os.hostname(), ...event };
  const stamp = full.at.replace(/[-:]/g, '').replace('.', '');
  await storage.putDocument(`${PREFIX}${stamp}-${randomBytes(4).toString('hex')}.json`, Buffer.from(JSON.stringify(full)), { ifAbsent: true });
  return full;
}

/** The newest `limit` events, oldest first; unreadable entries are skipped. */
export async function readEvents(storage: Storage, limit = 50): Promise<JournalEvent[]> {
  return readEntries(storage, (await eventKeys(storage)).slice(-limit));
}

/**
 * Every event, newest first; unreadable entries are skipped. Read a batch at a time, several at once:
 * the journal of years of restores, drills and prunes is read to its oldest event without being held whole.
 */
export async function* eventsNewestFirst(storage: Storage): AsyncGenerator<JournalEvent> {
  const keys = (await eventKeys(storage)).reverse();
  for (let i = 0; i < keys.length; i += EVENTS_BATCH) yield* await readEntries(storage, keys.slice(i, i + EVENTS_BATCH));
}

/** The journal's entries, oldest first. */
async function eventKeys(storage: Storage): Promise<string[]> {
  const keys: string[] = [];
  for await (const { key } of storage.list(PREFIX)) if (key.endsWith('.json')) keys.push(key);
  return keys.sort();
}

/** The events of `wanted`, in its order, several read at once; unreadable entries are skipped. */
async function readEntries(storage: Storage, wanted: readonly string[]): Promise<JournalEvent[]> {
  const read: (JournalEvent | undefined)[] = new Array(wanted.length);
  // Several at once: on S3 each is a round trip, and `status` runs from monitoring every few minutes.
  await runPool(wanted, EVENTS_IN_FLIGHT, async (key, i) => {
    try {
      const parsed = journalEventSchema.safeParse(JSON.parse((await storage.getDocument(key, { maxBytes: SMALL_DOCUMENT_BYTES })).toString('utf8')));
      if (parsed.success) read[i] = parsed.data;
    } catch {
      // A damaged journal entry must not hide the others.
    }
  });
  return read.filter((e): e is JournalEvent => e !== undefined);
}

/** A failover's or rollback's place among its target's switches (see SwitchRecord); undefined for other events, and those from before it was kept. */
export function switchGeneration(e: JournalEvent): number | undefined {
  const g = e.detail?.generation;
  return e.target && typeof g === 'number' && Number.isInteger(g) ? g : undefined;
}

/** The highest generation among the journalled switches of `target`; 0 when none carries one. */
export async function lastSwitchGeneration(storage: Storage, target: string): Promise<number> {
  let last = 0;
  for await (const e of eventsNewestFirst(storage)) {
    const generation = e.target === target ? switchGeneration(e) : undefined;
    if (generation !== undefined && generation > last) last = generation;
  }
  return last;
}

/**
 * `events` (oldest first, by the clocks of the hosts that wrote them) with each target's switches in the
 * order they were made: a switch made while its host's clock ran ahead is listed before the ones made after
 * the clock was set right. Other events keep their places.
 */
export function inSwitchOrder(events: readonly JournalEvent[]): JournalEvent[] {
  const out = [...events];
  const places = new Map<string, number[]>();
  events.forEach((e, i) => {
    if (switchGeneration(e) !== undefined) places.set(e.target!, [...(places.get(e.target!) ?? []), i]);
  });
  for (const at of places.values()) {
    const ordered = at.map((i) => events[i]!).sort((a, b) => switchGeneration(a)! - switchGeneration(b)!);
    at.forEach((i, n) => (out[i] = ordered[n]!));
  }
  return out;
}

const SWITCHES = new Set(['failover', 'rollback']);

/** Whether a journal event is a failover or rollback of a target (an announcement of one included). */
export function isSwitch(e: JournalEvent): boolean {
  return SWITCHES.has(e.type) && typeof e.target === 'string';
}

/**
 * Which announced switches are not settled. A failover or rollback writes an entry (outcome `switching`,
 * `point` the point switched to, `detail.fromPoint` the one served) before it moves the link, and another
 * when it is done, of the same generation. Killed in between, only the announcement says that the target
 * may serve the new point now: it stays unsettled until its own end (found whatever the clocks said) or
 * an entry of a later switch of the target is written. For a target whose count started
 * again (its record of switches lost), or switches recorded without one, an announcement newer than every
 * other switch of the target is unsettled too. Fed the journal newest first.
 */
export class SwitchSettling {
  private readonly settledGeneration = new Map<string, number>();
  private readonly settledSeen = new Set<string>();
  private readonly announced: { event: JournalEvent; newest: boolean }[] = [];
  private readonly ended = new Set<string>();

  see(e: JournalEvent): void {
    if (!isSwitch(e)) return;
    const target = e.target!;
    if (e.outcome === 'switching') {
      this.announced.push({ event: e, newest: !this.settledSeen.has(target) });
      return;
    }
    this.settledSeen.add(target);
    const g = switchGeneration(e);
    if (g === undefined) return;
    this.ended.add(switchKey(e));
    this.settledGeneration.set(target, Math.max(g, this.settledGeneration.get(target) ?? 0));
  }

  /** The announcements no later entry settles, newest first. */
  unsettled(): JournalEvent[] {
    return this.announced
      .filter(({ event, newest }) => {
        const g = switchGeneration(event);
        if (g !== undefined && this.ended.has(switchKey(event))) return false;
        return newest || (g !== undefined && g > (this.settledGeneration.get(event.target!) ?? 0));
      })
      .map(({ event }) => event);
  }
}

/**
 * `events` without the announcements of switches whose own end (an entry of their target, generation, slot
 * and slot served before) is among them: each switch is listed once. One whose end never came (killed, or
 * still running) stays. Matched whatever the order, which is that of the clocks.
 */
export function withoutEndedAnnouncements(events: readonly JournalEvent[]): JournalEvent[] {
  const ended = new Set(events.filter((e) => isSwitch(e) && e.outcome !== 'switching').map(switchKey));
  return events.filter((e) => e.outcome !== 'switching' || !ended.has(switchKey(e)));
}

/** What an announced switch and the entry of its end have in common. */
function switchKey(e: JournalEvent): string {
  return JSON.stringify([e.target, switchGeneration(e) ?? null, e.detail?.slot ?? null, e.detail?.from ?? null]);
}

/** Journal entries held at once when the whole journal is read. */
const EVENTS_BATCH = 256;

/** Journal entries read at once. */
const EVENTS_IN_FLIGHT = 16;
