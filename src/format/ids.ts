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

/** When a point was started, from its id (milliseconds since the epoch, UTC). */
export function pointTime(id: string): number {
  return Date.UTC(Number(id.slice(0, 4)), Number(id.slice(4, 6)) - 1, Number(id.slice(6, 8)), Number(id.slice(9, 11)), Number(id.slice(11, 13)), Number(id.slice(13, 15)), Number(id.slice(16, 19)));
}
