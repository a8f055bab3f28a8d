const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/**
 * The longest duration taken anywhere: 100 years, past any timeout or retention window. Longer ones
 * are typos (`99999999999999d`), and their milliseconds soon stop being exact numbers.
 */
export const MAX_DURATION_MS = 36_500 * UNITS.d!;

/** `90s`, `15m`, `2h`, `14d`, `1h30m`, and `0` (no time in any unit) → milliseconds; undefined when malformed or longer than MAX_DURATION_MS. */
export function parseDuration(text: string): number | undefined {
  const ms = sumDuration(text);
  return ms !== undefined && ms <= MAX_DURATION_MS ? ms : undefined;
}

function sumDuration(text: string): number | undefined {
  // Nothing of any unit needs none: `--retry-lock 0`, `keepWithin: 0`.
  if (text === '0') return 0;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/y;
  let total = 0;
  let matched = false;
  re.lastIndex = 0;
  while (re.lastIndex < text.length) {
    const m = re.exec(text);
    if (!m) return undefined;
    total += Number(m[1]) * UNITS[m[2]!]!;
    matched = true;
  }
  return matched ? total : undefined;
}

/** What a duration must be where it is used: `positive` where zero makes no sense (a timeout of 0 stops a command before it starts). */
export interface DurationRule {
  positive?: boolean;
  /** The forms named in the message, for the kind of value it is (`36h or 14d`). */
  example?: string;
}

/** The kind of value that was expected, when `text` is not a usable duration; undefined when it is. */
export function durationExpected(text: string, rule: DurationRule = {}): string | undefined {
  const ms = sumDuration(text);
  if (ms === undefined) return `a duration such as ${rule.example ?? '90s, 15m, 2h or 14d'}`;
  if (ms > MAX_DURATION_MS) return 'a duration of at most 100 years (36500d)';
  if (rule.positive && ms === 0) return 'a duration longer than 0';
  return undefined;
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${Math.round(s % 60)}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h${m % 60}m`;
  return `${Math.floor(h / 24)}d${h % 24}h`;
}

/** How far apart the clocks of hosts kept by NTP may be: a point completed further ahead of this host's clock says that they are not. */
const CLOCKS_DRIFT_MS = 60_000;

/** How far `completedAt` is ahead of `now`, when by more than clocks drift apart (its host's clock ran ahead, or this one's is behind): the point's age is not known. */
export function aheadOfClock(completedAt: string, now: number): number | undefined {
  const by = Date.parse(completedAt) - now;
  return by > CLOCKS_DRIFT_MS ? by : undefined;
}
