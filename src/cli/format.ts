import stringWidth from 'string-width';
export { formatBytes } from '../format/units.js';
export { escapeUnprintable, quoteName, shellWord } from '../format/quote.js';

/**
 * A plain-text table with left-aligned columns, padded by the columns a terminal gives each cell: a
 * wide character (CJK, most emoji) takes two, a combining mark none, so that a tag or a name in them
 * does not push the columns after it out of line.
 */
export function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, stringWidth(cell))));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell + ' '.repeat(widths[i]! - stringWidth(cell)))).join('  ')).join('\n');
}

/** `1 file`, `2 files`: a count with its noun in the number it takes. */
export function counted(n: number, noun: string, plural = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : plural}`;
}
