/*
 * Names as text shows them: in listings and in the sentences of errors and warnings alike, so that a
 * name is never taken for another (a trailing space, a newline, a quote of its own).
 */

/**
 * Characters that could break or fake the lines of text output: C0 and C1 controls and DEL (a
 * newline, a tab, a carriage return, a terminal escape), the Unicode line and paragraph separators,
 * the bidirectional overrides that reorder what is shown, and the bytes of a name that are not
 * UTF-8 (kept as lone U+DC80 to U+DCFF by nameFromBytes), shown as `\xNN`.
 */
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]|(?<![\ud800-\udbff])[\udc80-\udcff]/g;
const ESCAPES: Record<string, string> = { '\n': '\\n', '\t': '\\t', '\r': '\\r', '\b': '\\b', '\f': '\\f', '\v': '\\v', '"': '\\"', '\\': '\\\\' };

function escape(c: string): string {
  const code = c.charCodeAt(0);
  if (code >= 0xdc80 && code <= 0xdcff) return `\\x${(code - 0xdc00).toString(16)}`;
  return ESCAPES[c] ?? `\\u${code.toString(16).padStart(4, '0')}`;
}

/**
 * A path or name from the repository or the file system (a file, a link's target, a tag, a pin's
 * reason) as text output shows it: as it is, unless it holds a character that could break or fake
 * the lines of a listing; then in double quotes with C-style escapes (`"models/a\nb.bin"`), as git
 * and `ls -b` show such names. A name that itself starts with a double quote is quoted too, so that
 * a quoted name is never taken for a plain one, and so is one with a component that starts or ends
 * with a space, which would not be seen (`"models/v2 "`). --json shows every name as it is.
 */
export function quoteName(name: string): string {
  UNPRINTABLE.lastIndex = 0;
  if (!UNPRINTABLE.test(name) && !name.startsWith('"') && !/(^|\/) | ($|\/)/.test(name)) return name;
  return `"${name.replace(/["\\]/g, escape).replace(UNPRINTABLE, escape)}"`;
}

/** Free text that may hold such names (a warning's message): every unprintable character escaped, in place. */
export function escapeUnprintable(text: string): string {
  return text.replace(UNPRINTABLE, escape);
}

/** A path as one word of a shell command: as it is when nothing in it is special, else quoted (`$'…'` when it holds a control character). */
export function shellWord(p: string): string {
  if (/^[A-Za-z0-9_./:@%+=,-]+$/.test(p)) return p;
  if (escapeUnprintable(p) === p) return `'${p.replace(/'/g, `'\\''`)}'`;
  return `$'${escapeUnprintable(p.replace(/\\/g, '\\\\').replace(/'/g, "\\'"))}'`;
}

/** A long path as its start and end (`/srv/models/aaa…aaa/weights.bin`), for a message. */
export function shortenedPath(p: string): string {
  return p.length <= 120 ? p : `${p.slice(0, 50)}…${p.slice(-60)}`;
}
