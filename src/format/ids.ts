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
