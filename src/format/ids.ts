import { UsageError } from '../errors.js';
export type BackupType = 'full' | 'diff' | 'incr';

const TYPE_LETTER: Record<BackupType, string> = { full: 'F', diff: 'D', incr: 'I' };

/** `20261122-030000-123F`: sorts by time, says its type, safe in object keys. */
export const POINT_ID = /^\d{8}-\d{6}-\d{3}[FDI]$/;

export function makePointId(at: Date, type: BackupType): string {
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  const date = `${at.getUTCFullYear()}${p(at.getUTCMonth() + 1)}${p(at.getUTCDate())}`;
  const time = `${p(at.getUTCHours())}${p(at.getUTCMinutes())}${p(at.getUTCSeconds())}`;
  return `${date}-${time}-${p(at.getUTCMilliseconds(), 3)}${TYPE_LETTER[type]}`;
}

/** The type a point id says (its last letter). */
export function pointType(id: string): BackupType {
  return (Object.keys(TYPE_LETTER) as BackupType[]).find((t) => TYPE_LETTER[t] === id.slice(-1))!;
}

/** When a point was started, from its id (milliseconds since the epoch, UTC). */
export function pointTime(id: string): number {
  return Date.UTC(Number(id.slice(0, 4)), Number(id.slice(4, 6)) - 1, Number(id.slice(6, 8)), Number(id.slice(9, 11)), Number(id.slice(11, 13)), Number(id.slice(13, 15)), Number(id.slice(16, 19)));
}

/** The zone an offset of hours alone (`+01`, valid ISO 8601) stands for, in the form Date.parse reads (`+01:00`). */
const zoneOf = (zone: string) => (/^[+-]\d{2}$/.test(zone) ? `${zone}:00` : zone);

// The time of day to the hour, the minute or the second, its fraction after a point or a comma (both ISO 8601).
const TIME_SELECTOR = /^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}(?::\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?)?)(Z|[+-]\d{2}(?::?\d{2})?)?)?$/i;

/** A time of day in the form Date.parse reads: `05` is `05:00`, `05:00:00,5` is `05:00:00.5`. */
const clockOf = (time: string) => (time.length === 2 ? `${time}:00` : time.replace(',', '.'));

/**
 * The instant an ISO-8601 time selector names. It must carry its zone: a time
 * without one, read as UTC or as this host's zone, could select the state of
 * the wrong hour during an outage, so it is refused with the forms that would do.
 */
export function parseTimeSelector(selector: string): number {
  const m = TIME_SELECTOR.exec(selector);
  const at = m ? Date.parse(`${m[1]}T${clockOf(m[2] ?? '00')}${zoneOf(m[3] ?? 'Z')}`) : NaN;
  // Date.parse rolls a day the month lacks over into the next month (2026-11-31 is read as 2026-12-01), which would select another day's point.
  if (m && Number.isFinite(at) && new Date(Date.parse(`${m[1]}T00:00Z`)).toISOString().slice(0, 10) !== m[1]) {
    throw new UsageError(`${JSON.stringify(selector)} is not a valid ISO-8601 time: ${m[1]} is not a day of the calendar`, { hint: 'such as 2026-11-20T03:00:00Z' });
  }
  if (!m || !Number.isFinite(at)) throw new UsageError(`${JSON.stringify(selector)} is not a valid ISO-8601 time`, { hint: 'such as 2026-11-20T03:00:00Z' });
  if (m[2] === undefined) {
    throw new UsageError(`${selector} is a date; a point is chosen by a time, with its zone`, {
      hint: `for the state at the end of that day in UTC: ${m[1]}T23:59:59Z${endOfLocalDay(m[1]!)}`,
    });
  }
  if (m[3] === undefined) throw new UsageError(`${selector} has no time zone`, { hint: zoneHint(`${m[1]}T${m[2]}`, at) });
  return at;
}

/**
 * The forms of a time given without its zone that would do: in UTC, or with the offset this host's zone
 * has at that time (an example offset could be copied as it is, and select the state of another hour).
 * In the hour the clocks repeat that time has two offsets; in the hour they skip, none. `inUtc` is
 * the instant the wall-clock time names in UTC.
 */
function zoneHint(wall: string, inUtc: number): string {
  const utc = `add Z for UTC, as lifeboat shows times (${wall}Z)`;
  const offsets = localOffsets(inUtc);
  if (offsets.length === 0) return `${utc}; in this host's time zone ${wall} never happens (its clocks jump past it), so give the offset meant`;
  const forms = offsets.map((o) => `${wall}${o}`);
  return offsets.length === 1
    ? `${utc}, or the offset meant (${forms[0]} in this host's time zone)`
    : `${utc}, or the offset meant (${forms.join(' or ')}: this host's clocks show that time twice)`;
}

/** `, in this host's time zone: …T23:59:59-05:00` (the later, if that time comes twice), when its zone is not UTC then. */
function endOfLocalDay(date: string): string {
  const offset = localOffsets(Date.parse(`${date}T23:59:59Z`)).at(-1);
  return offset === undefined || offset === '+00:00' ? '' : `, in this host's time zone: ${date}T23:59:59${offset}`;
}

/** The offsets (`-05:00`) of this host's zone whose wall-clock time at some instant is `wall` (milliseconds, read as UTC). */
function localOffsets(wall: number): string[] {
  const seen = new Set<number>();
  // The offsets in force within a day and a half around it: every zone's lie within 14 hours of UTC.
  for (let t = wall - 36 * 3_600_000; t <= wall + 36 * 3_600_000; t += 1_800_000) seen.add(-new Date(t).getTimezoneOffset());
  const p = (n: number) => String(Math.floor(n)).padStart(2, '0');
  return [...seen]
    .filter((o) => -new Date(wall - o * 60_000).getTimezoneOffset() === o)
    .sort((a, b) => b - a)
    .map((o) => `${o < 0 ? '-' : '+'}${p(Math.abs(o) / 60)}:${p(Math.abs(o) % 60)}`);
}
