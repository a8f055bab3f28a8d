import { randomBytes } from 'node:crypto';
import * as os from 'node:os';
import * as z from 'zod';
import type { Storage } from '../storage/storage.js';
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
  outcome: z.enum(['ok', 'failed', 'rolled-back']),
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
  const keys: string[] = [];
  for await (const { key } of storage.list(PREFIX)) if (key.endsWith('.json')) keys.push(key);
  keys.sort();
  const wanted = keys.slice(-limit);
  const read: (JournalEvent | undefined)[] = new Array(wanted.length);
  // Several at once: on S3 each is a round trip, and `status` runs from monitoring every few minutes.
  await runPool(wanted, EVENTS_IN_FLIGHT, async (key, i) => {
    try {
      const parsed = journalEventSchema.safeParse(JSON.parse((await storage.getDocument(key)).toString('utf8')));
      if (parsed.success) read[i] = parsed.data;
    } catch {
      // A damaged journal entry must not hide the others.
    }
  });
  return read.filter((e): e is JournalEvent => e !== undefined);
}

/** Journal entries read at once. */
const EVENTS_IN_FLIGHT = 16;
