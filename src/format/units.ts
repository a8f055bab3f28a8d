/** A byte count for people: 512 B, 1.50 KiB, 17.3 GiB. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/** The first three of `items`, and an ellipsis when there are more: a list that fits in one line of a message. */
export function firstFew(items: readonly string[]): string {
  return `${items.slice(0, 3).join(', ')}${items.length > 3 ? ', …' : ''}`;
}
