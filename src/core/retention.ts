/**
 * Retention as a pure function: points, a policy and a protected set in,
 * a keep/remove decision with reasons for every point out. It never breaks a
 * chain: a kept point keeps everything it depends on (its parent chain, its
 * full, any point holding bytes it references).
 */

export interface RetentionPoint {
  id: string;
  /** The policy applies to each deployment's points on their own. */
  deployment: string;
  type: 'full' | 'diff' | 'incr';
  parent: string | null;
  full: string;
  completedAt: string;
  /** Other points whose volumes hold bytes of this point's files. */
  references?: readonly string[];
}

export interface RetentionPolicy {
  /** Keep the newest N full points (and what depends on them). Unset: every full is kept. */
  keepFull?: number;
  /** Keep the newest N differential points of kept fulls. Unset: every diff of a kept full. */
  keepDiff?: number;
  /** Keep every point completed within this many milliseconds before `now`. */
  keepWithinMs?: number;
  /** keepWithinMs as the user wrote it (`14d`), for the reasons given. */
  keepWithin?: string;
}

export interface RetentionDecision {
  id: string;
  type: RetentionPoint['type'];
  keep: boolean;
  /** Why: `one of the 2 newest fulls`, `needed by 20261122-…I`, `its parent … is not kept by the policy`. */
  reasons: string[];
}

export interface RetentionPlan {
  /** Oldest first. */
  keep: RetentionDecision[];
  /** Oldest first. */
  remove: RetentionDecision[];
}

export interface RetentionOptions {
  now: Date;
  /** Points kept whatever the policy says, with the reason (a pin). */
  protected?: ReadonlyMap<string, string>;
  /** Apply the policy to this deployment's points only and keep the others' (default: to each deployment's). */
  deployment?: string;
}

const plural = (n: number, one: string, many: string) => (n === 1 ? `the newest ${one}` : `one of the ${n} newest ${many}`);

export function planRetention(points: readonly RetentionPoint[], policy: RetentionPolicy, options: RetentionOptions): RetentionPlan {
  const sorted = [...points].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const byId = new Map(sorted.map((p) => [p.id, p]));
  const reasons = new Map<string, string[]>(sorted.map((p) => [p.id, []]));
  const removal = new Map<string, string>();
  const kept = new Set<string>();
  const keep = (id: string, why: string) => {
    kept.add(id);
    reasons.get(id)?.push(why);
  };

  // Deployments sharing a repository are kept apart: one's fulls do not push out another's.
  const deployments = new Map<string, RetentionPoint[]>();
  for (const p of sorted) {
    const own = deployments.get(p.deployment);
    if (own) own.push(p);
    else deployments.set(p.deployment, [p]);
  }
  for (const [deployment, own] of deployments) {
    if (options.deployment !== undefined && deployment !== options.deployment) {
      for (const p of own) keep(p.id, `deployment ${deployment} is not pruned here`);
    } else applyPolicy(own, policy, options.now, keep, removal, options.protected ?? new Map());
  }
  for (const [id, why] of options.protected ?? []) if (byId.has(id)) keep(id, why);

  // Never break a chain: whatever a kept point depends on is kept too.
  const queue = [...kept];
  while (queue.length) {
    const p = byId.get(queue.pop()!);
    if (!p) continue;
    const needs = new Set([p.parent, p.full, ...(p.references ?? [])]);
    for (const dep of needs) {
      if (!dep || dep === p.id || !byId.has(dep)) continue;
      const already = kept.has(dep);
      if (!(reasons.get(dep) ?? []).some((r) => r.startsWith('needed by'))) keep(dep, `needed by ${p.id}`);
      if (!already) queue.push(dep);
    }
  }

  const plan: RetentionPlan = { keep: [], remove: [] };
  for (const p of sorted) {
    if (kept.has(p.id)) plan.keep.push({ id: p.id, type: p.type, keep: true, reasons: reasons.get(p.id)! });
    else plan.remove.push({ id: p.id, type: p.type, keep: false, reasons: [removal.get(p.id) ?? 'not kept by the policy'] });
  }
  return plan;
}

/** The policy over one deployment's points (oldest first): what it keeps, and why the rest goes. */
function applyPolicy(
  sorted: readonly RetentionPoint[],
  policy: RetentionPolicy,
  now: Date,
  keep: (id: string, why: string) => void,
  removal: Map<string, string>,
  pinned: ReadonlyMap<string, string>,
): void {
  const kept = new Set<string>();
  // A pin (or a slot that serves it) keeps its point, not the diffs and incrementals taken against it; nor does
  // being needed by a kept point, so the point they build on may yet be kept: "removed" would contradict its line.
  const notKept = (what: 'full' | 'parent', id: string) => {
    const why = pinned.get(id);
    return why === undefined ? `its ${what} ${id} is not kept by the policy` : `its ${what} ${id} is kept only as ${why}, which keeps that point alone`;
  };
  const keepHere = (id: string, why: string) => {
    kept.add(id);
    keep(id, why);
  };

  // Fulls: the newest keepFull of them.
  const fullsNewestFirst = sorted.filter((p) => p.type === 'full').reverse();
  fullsNewestFirst.forEach((p, i) => {
    if (policy.keepFull === undefined) keepHere(p.id, 'fulls are kept (no keep-full limit)');
    else if (i < policy.keepFull) keepHere(p.id, plural(policy.keepFull, 'full', 'fulls'));
    else removal.set(p.id, `older than the ${policy.keepFull} newest full(s)`);
  });

  // Diffs: live with their full; with keepDiff, only the newest keepDiff of kept fulls.
  const diffsNewestFirst = sorted.filter((p) => p.type === 'diff').reverse();
  let diffsKept = 0;
  for (const p of diffsNewestFirst) {
    if (!kept.has(p.full)) removal.set(p.id, notKept('full', p.full));
    else if (policy.keepDiff === undefined) keepHere(p.id, `its full ${p.full} is kept`);
    else if (diffsKept < policy.keepDiff) {
      diffsKept++;
      keepHere(p.id, plural(policy.keepDiff, 'diff', 'diffs'));
    } else removal.set(p.id, `older than the ${policy.keepDiff} newest diff(s)`);
  }

  // Incrs: live as long as the point they were taken against (oldest first, so parents are decided).
  for (const p of sorted) {
    if (p.type !== 'incr') continue;
    if (p.parent && kept.has(p.parent)) keepHere(p.id, `its parent ${p.parent} is kept`);
    else if (!p.parent) removal.set(p.id, 'it has no parent');
    else removal.set(p.id, notKept('parent', p.parent));
  }

  // Overrides: the newest point, recent points.
  const newest = sorted[sorted.length - 1];
  if (newest) keep(newest.id, 'the newest point');
  if (policy.keepWithinMs !== undefined) {
    const since = now.getTime() - policy.keepWithinMs;
    for (const p of sorted) {
      if (Date.parse(p.completedAt) >= since) keep(p.id, `completed within ${policy.keepWithin ?? describeMs(policy.keepWithinMs)}`);
    }
  }
}

function describeMs(ms: number): string {
  const units: [number, string][] = [
    [604_800_000, 'w'],
    [86_400_000, 'd'],
    [3_600_000, 'h'],
    [60_000, 'm'],
    [1000, 's'],
  ];
  for (const [size, unit] of units) if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}
