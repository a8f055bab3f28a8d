/** Levenshtein distance, for telling a typo of a word lifeboat knows from another word. */
export function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) next[j] = Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    row = next;
  }
  return row[b.length]!;
}

/**
 * The word of `known` that `word` is a slip of: the same but for capitals, `_` or `-`
 * (`keep_full` for `keepFull`), or one or two letters off (`retension`); undefined when none is,
 * or when two are equally close.
 */
export function meantWord(word: string, known: readonly string[]): string | undefined {
  const plain = (w: string) => w.toLowerCase().replace(/[-_]/g, '');
  const allowed = plain(word).length >= 5 ? 2 : 1;
  let best: string | undefined;
  let bestDistance = allowed + 1;
  let tie = false;
  for (const candidate of known) {
    const d = editDistance(plain(word), plain(candidate));
    if (d < bestDistance) [best, bestDistance, tie] = [candidate, d, false];
    else if (d === bestDistance) tie = true;
  }
  return best !== undefined && !tie && bestDistance <= allowed ? best : undefined;
}
