import { createHash, randomInt } from 'node:crypto';
import * as z from 'zod';
import { decodeDocument, encodeDocument } from '../format/document.js';
import { errorMessage } from '../errors.js';
import { isNotFound, type Storage } from '../storage/storage.js';

/** Where verify --read-data records which volumes it read back, and when. */
export const LEDGER_KEY = 'ledger/verified.json';
export const DEFAULT_SAMPLE_PERCENT = 5;

const ledgerSchema = z.object({
  format: z.literal('lifeboat-verify-ledger'),
  version: z.literal(1),
  /** --since-verified runs so far: run N re-reads sample bucket N mod buckets. */
  runs: z.number().int().min(0),
  volumes: z.record(
    z.string(),
    z.object({
      verifiedAt: z.string(),
      /** The volume as it was read; a volume recorded with other figures counts as never verified. */
      size: z.number().int().min(0),
      /** The CRC-32 its manifest records (of the whole volume, or of its framing). */
      crc32: z.number().int().min(0),
    }),
  ),
});
export type Ledger = z.infer<typeof ledgerSchema>;

export interface LedgerVolume {
  key: string;
  size: number;
  crc32: number;
}

export function emptyLedger(): Ledger {
  return { format: 'lifeboat-verify-ledger', version: 1, runs: 0, volumes: {} };
}

/** The ledger, or an empty one when there is none; a damaged ledger is reported and started afresh (so everything is read). */
export async function readLedger(storage: Storage, onDamaged: (message: string) => void): Promise<Ledger> {
  try {
    return decodeDocument(await storage.getDocument(LEDGER_KEY), ledgerSchema, `verification ledger ${LEDGER_KEY}`);
  } catch (err) {
    if (!isNotFound(err)) onDamaged(`${errorMessage(err)}; every volume counts as never verified`);
    return emptyLedger();
  }
}

export async function writeLedger(storage: Storage, ledger: Ledger): Promise<void> {
  await storage.putDocument(LEDGER_KEY, encodeDocument(ledger));
}

/**
 * Records what a run read in the ledger as it stands now, read again just before: another verify
 * that ran meanwhile (a nightly --since-verified beside an operator's verify of one point) recorded
 * what it read too, and writing back the ledger as this run found it, minutes or hours before, would
 * undo that, a volume that run found damaged included. What the other run recorded of volumes this
 * one did not list (written since) stays. Returns what was written.
 */
export async function recordInLedger(storage: Storage, found: Ledger, ok: readonly LedgerVolume[], failed: readonly string[], existing: ReadonlySet<string>, at: Date, countRun: boolean): Promise<Ledger> {
  const current = await readLedger(storage, () => undefined);
  const listed = new Set(existing);
  for (const key of Object.keys(current.volumes)) if (!(key in found.volumes)) listed.add(key);
  const updated = updateLedger(current, ok, failed, listed, at, false);
  // Two runs that read the same sample bucket at once move on to the next one, not past it.
  if (countRun) updated.runs = Math.max(current.runs, found.runs + 1);
  await writeLedger(storage, updated);
  return updated;
}

export function isVerified(ledger: Ledger, v: LedgerVolume): boolean {
  const rec = ledger.volumes[v.key];
  return rec !== undefined && rec.size === v.size && rec.crc32 === v.crc32;
}

/** Sample buckets for a percentage: every volume is re-read at least once every `buckets` runs. */
export function bucketCount(percent: number): number {
  return Math.max(1, Math.ceil(100 / percent));
}

/** A volume's sample bucket: a hash of its key, so the choice is the same on every host and run. */
export function bucketOf(key: string, buckets: number): number {
  return createHash('sha256').update(key).digest().readUInt32BE(0) % buckets;
}

export interface Selection<T> {
  read: T[];
  /** Never verified (or recorded with other figures). */
  fresh: number;
  /** Verified before and re-read as this run's sample. */
  sampled: number;
  skipped: number;
  run: number;
  buckets: number;
}

/**
 * --since-verified: every volume never verified, plus the volumes of sample
 * bucket `run mod buckets`. Over any `buckets` consecutive runs each bucket
 * comes up once, so no volume goes unread for longer than that.
 */
export function selectSinceVerified<T extends { volume: LedgerVolume }>(jobs: readonly T[], ledger: Ledger, percent: number): Selection<T> {
  const buckets = bucketCount(percent);
  const run = ledger.runs;
  const bucket = run % buckets;
  const read: T[] = [];
  let fresh = 0;
  let sampled = 0;
  for (const job of jobs) {
    if (!isVerified(ledger, job.volume)) {
      fresh++;
      read.push(job);
    } else if (bucketOf(job.volume.key, buckets) === bucket) {
      sampled++;
      read.push(job);
    }
  }
  return { read, fresh, sampled, skipped: jobs.length - read.length, run, buckets };
}

/** --subset PERCENT: a random share of the volumes (at least one when there are any). */
export function selectSubset<T>(jobs: readonly T[], percent: number): T[] {
  const read = jobs.filter(() => randomInt(1_000_000) < percent * 10_000);
  if (read.length === 0 && jobs.length > 0) read.push(jobs[randomInt(jobs.length)]!);
  return read;
}

/**
 * Records the volumes read without a problem, forgets those read with one
 * (so they count as never verified until they read clean) and those no
 * longer in the repository.
 */
export function updateLedger(ledger: Ledger, ok: readonly LedgerVolume[], failed: readonly string[], existing: ReadonlySet<string>, at: Date, countRun: boolean): Ledger {
  const volumes: Ledger['volumes'] = {};
  for (const [key, rec] of Object.entries(ledger.volumes)) if (existing.has(key)) volumes[key] = rec;
  for (const key of failed) delete volumes[key];
  for (const v of ok) volumes[v.key] = { verifiedAt: at.toISOString(), size: v.size, crc32: v.crc32 };
  return { ...ledger, runs: ledger.runs + (countRun ? 1 : 0), volumes };
}

/** The oldest verification among these volumes, and how many were never verified. */
export function oldestVerification(ledger: Ledger, volumes: readonly LedgerVolume[]): { oldestVerifiedAt: string | null; neverVerified: number } {
  let oldest: string | null = null;
  let never = 0;
  for (const v of volumes) {
    if (!isVerified(ledger, v)) {
      never++;
      continue;
    }
    const at = ledger.volumes[v.key]!.verifiedAt;
    if (oldest === null || at < oldest) oldest = at;
  }
  return { oldestVerifiedAt: oldest, neverVerified: never };
}
