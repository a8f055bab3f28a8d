import type { RetentionPoint } from '../../src/core/retention.js';

/**
 * Which points a prune keeps, written from README's words ("prune — apply the
 * retention policy" and "pin / unpin") and not from the implementation:
 *
 * - The policy applies to each deployment's points on their own; with a
 *   deployment given, only that deployment's points are pruned (the others are kept).
 * - `--keep-full N` keeps the newest N fulls; `--keep-diff N` the newest N diffs
 *   of those fulls (without it, every diff of those fulls); an incr lives as long
 *   as these keep the point it was taken against.
 * - `--keep-within D` keeps every point completed in that window.
 * - The newest point is always kept.
 * - A prune never breaks a chain: a kept incr keeps its whole chain, a kept diff
 *   its full, and data a kept point references stays (so does the point holding it).
 *   A point kept only for that keeps nothing else taken against it.
 * - A pinned point (or one a target serves) is kept with every point it depends
 *   on; a pin keeps its point alone: what was taken against it goes when the
 *   policy does not keep it.
 */

/** A point as the planner takes it; `references`: other points holding bytes of its files. */
export type OraclePoint = RetentionPoint;

export interface OraclePolicy {
  keepFull: number;
  keepDiff?: number;
  keepWithinMs?: number;
}

export function oracleKeep(
  points: readonly OraclePoint[],
  policy: OraclePolicy,
  options: { now: Date; protected?: Iterable<string>; deployment?: string },
): Set<string> {
  const byId = new Map(points.map((p) => [p.id, p]));
  // What a point needs to be restored: the point it was taken against, its full, and the points holding its bytes.
  const needs = (p: OraclePoint): string[] =>
    [...(p.type === 'full' ? [] : [p.full]), ...(p.parent ? [p.parent] : []), ...(p.references ?? [])].filter((id) => id !== p.id && byId.has(id));
  const withNeeds = (start: Iterable<string>): Set<string> => {
    const out = new Set<string>();
    const todo = [...start].filter((id) => byId.has(id));
    while (todo.length > 0) {
      const id = todo.pop()!;
      if (out.has(id)) continue;
      out.add(id);
      todo.push(...needs(byId.get(id)!));
    }
    return out;
  };

  const keep = new Set<string>();
  const deployments = new Set(points.map((p) => p.deployment));
  for (const deployment of deployments) {
    // Newest last: ids sort by time.
    const own = points.filter((p) => p.deployment === deployment).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    if (options.deployment !== undefined && deployment !== options.deployment) {
      for (const p of own) keep.add(p.id);
      continue;
    }
    const newestFulls = new Set(newest(own.filter((p) => p.type === 'full'), policy.keepFull).map((p) => p.id));
    const diffsOfThem = own.filter((p) => p.type === 'diff' && newestFulls.has(p.full));
    // The chains the counts keep: the newest fulls, their diffs (the newest N of them with --keep-diff),
    // and every incr taken against a point of these chains (not against a point kept for another reason).
    const living = new Set<string>([...newestFulls, ...(policy.keepDiff === undefined ? diffsOfThem : newest(diffsOfThem, policy.keepDiff)).map((p) => p.id)]);
    for (const p of own) if (p.type === 'incr' && p.parent !== null && living.has(p.parent)) living.add(p.id);
    if (policy.keepWithinMs !== undefined) {
      const from = options.now.getTime() - policy.keepWithinMs;
      for (const p of own) if (Date.parse(p.completedAt) >= from) living.add(p.id);
    }
    if (own.length > 0) living.add(own[own.length - 1]!.id);
    for (const id of withNeeds(living)) keep.add(id);
  }
  for (const id of withNeeds(options.protected ?? [])) keep.add(id);
  return keep;
}

function newest<T>(sorted: readonly T[], n: number): T[] {
  return n <= 0 ? [] : sorted.slice(Math.max(0, sorted.length - n));
}
