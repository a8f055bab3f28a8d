import { randomBytes } from 'node:crypto';
import { UsageError, IntegrityError, errorMessage } from '../errors.js';
import { decodeDocument, encodeDocument } from '../format/document.js';
import { decodeManifest, type ReadOptions } from '../format/manifest-read.js';
import { POINT_ID, parseTimeSelector, pointTime } from '../format/ids.js';
import {
  FORMAT_VERSION,
  deploymentOf,
  deploymentsOf,
  deploymentsSchema,
  keys,
  repositoryConfigSchema,
  summarize,
  summaryIdOf,
  summarySchema,
  volumesNeeded,
  type DeploymentsRecord,
  type EncryptionConfig,
  type Manifest,
  type PointSummary,
  type RepositoryConfig,
  type VolumeRecord,
} from '../format/manifest.js';
import { SMALL_DOCUMENT_BYTES, isNotFound, type Storage } from '../storage/storage.js';
import { runPool } from './pool.js';
import { KEYS_PREFIX } from './keys.js';
import { quoteName } from '../format/quote.js';
import { editDistance, meantWord } from '../format/spelling.js';

export const DEFAULT_VOLUME_SIZE = 256 * 1024 * 1024;

/** Manifest reads in flight at once when many are needed. */
const MANIFEST_READS = 16;
/** The most deployments.json may take: 100,000 names of up to 64 characters. */
const DEPLOYMENTS_BYTES = 16 * 1024 * 1024;

/** A committed point with no summary to read, and why. */
export interface UnreadablePoint {
  id: string;
  reason: string;
}

const VERIFY_HINT = '`lifeboat verify` reports the damage';

/** Nothing where a repository was named: never made there, or its disk or bucket is not what it was. */
export class NoRepository extends UsageError {
  constructor(location: string, why = '') {
    // A backup disk not mounted looks the same as no repository yet: a new, empty one made there would hide the backups.
    super(`there is no lifeboat repository at ${quoteName(location)}${why}`, {
      hint: 'check that --repo, LIFEBOAT_REPO or repository: names it, and that its disk is mounted or its bucket is there; `lifeboat init` makes a new, empty one',
    });
  }
}

/**
 * Why there is no config where one was looked for: nothing there (NoRepository), or a repository
 * whose config.json alone is gone. That one holds backups that `init` would refuse to cover, and,
 * encrypted, the id its keys are bound to: it is put back from a copy, not made anew.
 */
async function missingConfig(storage: Storage): Promise<Error> {
  // The listing only tells the two apart: a storage that will not list says no more than that nothing is there.
  const backups = await holds(storage, keys.pointsPrefix).catch(() => false);
  if (!backups) return new NoRepository(storage.location);
  const encrypted = await holds(storage, KEYS_PREFIX).catch(() => false);
  return new IntegrityError(`the repository at ${quoteName(storage.location)} holds backups under ${keys.pointsPrefix} but its ${keys.config} is gone`, {
    hint: `put ${keys.config} back from a copy of the repository${
      encrypted ? `: it holds the repository id that the key files under ${KEYS_PREFIX} are bound to, and without it no password opens them` : ''
    }; \`lifeboat init\` would not make one over existing backups`,
  });
}

/** Whether anything is stored under `prefix`. */
async function holds(storage: Storage, prefix: string): Promise<boolean> {
  for await (const _ of storage.list(prefix)) return true;
  return false;
}

/**
 * Whether a config.json that does not read as a repository's is another program's (a model directory
 * named as the repository: models have a config.json of their own), rather than a repository's damaged:
 * nothing of lifeboat's config is in it, and there are no backups nor keys beside it.
 */
async function anotherProgramsConfig(storage: Storage, raw: Buffer): Promise<boolean> {
  const text = raw.toString('latin1');
  if (text.includes('lifeboat-repository') || text.includes('"checksum":"sha256:')) return false;
  return !(await holds(storage, keys.pointsPrefix).catch(() => true)) && !(await holds(storage, KEYS_PREFIX).catch(() => true));
}

/** A repository: its config, its committed points, and the storage under them. */
export class Repository {
  private readonly manifests = new Map<string, Manifest>();

  /**
   * The deployment `latest` and times select among. Unset: the repository's
   * only deployment; a repository holding several asks which.
   */
  deployment: string | undefined;

  private constructor(
    readonly storage: Storage,
    readonly config: RepositoryConfig,
  ) {}

  /**
   * Creates a repository in an empty location. `beforeConfig` runs once the location was found
   * empty and before the config is written (an encrypted repository stores its first key there):
   * the config comes last, so an init cut short leaves no repository that lacks what it needs.
   */
  static async init(
    storage: Storage,
    options: { volumeSize?: number; encryption?: EncryptionConfig; beforeConfig?: (config: RepositoryConfig) => Promise<void> } = {},
  ): Promise<Repository> {
    const config: RepositoryConfig = {
      format: 'lifeboat-repository',
      version: FORMAT_VERSION,
      id: randomBytes(16).toString('hex'),
      createdAt: new Date().toISOString(),
      encryption: options.encryption ?? null,
      volumeSize: options.volumeSize ?? DEFAULT_VOLUME_SIZE,
    };
    const notEmpty = (onlyKeys: boolean) =>
      new UsageError(`${quoteName(storage.location)} is not empty; refusing to create a repository there`, {
        hint: onlyKeys
          ? `it holds nothing but ${KEYS_PREFIX}, left by an init that did not finish: remove ${KEYS_PREFIX} and run init again, once no other init is running there`
          : 'choose an empty directory or bucket prefix',
      });
    let existing = false;
    let onlyKeys = true;
    for await (const { key } of storage.list('')) {
      existing = true;
      if (!key.startsWith(KEYS_PREFIX)) {
        onlyKeys = false;
        break;
      }
    }
    if (existing && !onlyKeys && (await storage.head(keys.config))) {
      throw new UsageError(`there is a lifeboat repository at ${quoteName(storage.location)} already; refusing to create another there`, {
        hint: `\`lifeboat list\` shows what it holds; to start over, empty ${quoteName(storage.location)} first`,
      });
    }
    if (existing) throw notEmpty(onlyKeys);
    await options.beforeConfig?.(config);
    if (!(await storage.putDocument(keys.config, encodeDocument(config), { ifAbsent: true }))) {
      // Another init found the location empty too, and wrote its config first.
      throw new UsageError(`another init created a repository at ${quoteName(storage.location)} while this one ran; refusing to create another there`, {
        hint: `\`lifeboat list\` shows what it holds (encrypted, it opens with that init's password); to start over, empty ${quoteName(storage.location)} first`,
      });
    }
    return new Repository(storage, config);
  }

  static async open(storage: Storage, options: { deployment?: string } = {}): Promise<Repository> {
    let raw: Buffer;
    try {
      raw = await storage.getDocument(keys.config, { maxBytes: SMALL_DOCUMENT_BYTES });
    } catch (err) {
      if (isNotFound(err)) throw await missingConfig(storage);
      throw err;
    }
    const head = safeJson(raw);
    if (head && typeof head.version === 'number' && head.version > FORMAT_VERSION) {
      throw new UsageError(`the repository at ${quoteName(storage.location)} has format version ${head.version}; this lifeboat reads up to ${FORMAT_VERSION}`, {
        hint: 'upgrade lifeboat',
      });
    }
    let config: RepositoryConfig;
    try {
      config = decodeDocument(raw, repositoryConfigSchema, `repository config ${keys.config}`);
    } catch (err) {
      // Said as damaged data (exit 3), it sent the user looking for damage in a repository that was never there.
      if (err instanceof IntegrityError && (await anotherProgramsConfig(storage, raw))) throw new NoRepository(storage.location, `: its ${keys.config} is not a lifeboat repository's (is it a model's directory?)`);
      throw err;
    }
    const repo = new Repository(storage, config);
    repo.deployment = options.deployment;
    return repo;
  }

  /** Ids of committed points, oldest first. */
  async pointIds(): Promise<string[]> {
    const ids: string[] = [];
    for await (const { key } of this.storage.list(keys.pointsPrefix)) {
      const m = /^points\/(.+)\.json$/.exec(key);
      if (m && POINT_ID.test(m[1]!)) ids.push(m[1]!);
    }
    return ids.sort();
  }

  async manifest(id: string): Promise<Manifest> {
    const cached = this.manifests.get(id);
    if (cached) return cached;
    const manifest = await this.loadManifest(id);
    this.manifests.set(id, manifest);
    return manifest;
  }

  /**
   * The volumes a point's manifest records, the manifest read and checked whole but its entries not kept: a
   * restore needs no more of the points its files' bytes are stored in, each of which lists every file of its own.
   */
  async pointVolumes(id: string): Promise<VolumeRecord[]> {
    return (this.manifests.get(id) ?? (await this.loadManifest(id, { entries: false }))).volumes;
  }

  /** Reads and checks a manifest without keeping it: work over many points must not hold every manifest in memory. */
  async loadManifest(id: string, options?: ReadOptions): Promise<Manifest> {
    let raw: Buffer;
    try {
      raw = await this.storage.getDocument(keys.point(id));
    } catch (err) {
      if (isNotFound(err)) throw new IntegrityError(`backup point ${id} is missing its manifest ${keys.point(id)}`);
      throw err;
    }
    const manifest = decodeManifest(raw, `manifest of ${id}`, options);
    if (manifest.id !== id) throw new IntegrityError(`manifest ${keys.point(id)} describes ${manifest.id}, not ${id}`);
    return manifest;
  }

  /**
   * A committed point's summary document; derived from its manifest for a
   * point without one (written before summaries existed) or with a damaged
   * one (which verify reports).
   */
  async summary(id: string): Promise<PointSummary> {
    const cached = this.manifests.get(id);
    if (cached) return summarize(cached);
    const stored = await this.storedSummary(id).catch((err: unknown) => {
      if (err instanceof IntegrityError) return undefined;
      throw err;
    });
    return stored ?? summarize(await this.loadManifest(id));
  }

  /** The summary document of a point as stored, undefined when there is none; IntegrityError when it is damaged. */
  async storedSummary(id: string): Promise<PointSummary | undefined> {
    let raw: Buffer;
    try {
      raw = await this.storage.getDocument(keys.summary(id));
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
    const summary = decodeDocument(raw, summarySchema, `summary of ${id}`);
    if (summary.id !== id) throw new IntegrityError(`summary ${keys.summary(id)} describes ${summary.id}, not ${id}`);
    return summary;
  }

  /** Every committed point's summary, oldest first; IntegrityError when one cannot be read. */
  async allSummaries(): Promise<PointSummary[]> {
    const { summaries, unreadable } = await this.readSummaries();
    if (unreadable.length > 0) throw new IntegrityError(unreadable[0]!.reason, { hint: VERIFY_HINT });
    return summaries;
  }

  /**
   * Every committed point's summary, oldest first, read several at a time (each is a round trip on
   * S3); apart, the points that have none to read: no summary, or a damaged one, and a manifest that is
   * damaged or missing. Those are for the caller to name, not to fail on: one damaged point hides no other.
   */
  async readSummaries(): Promise<{ summaries: PointSummary[]; unreadable: UnreadablePoint[] }> {
    const ids = await this.pointIds();
    const read: (PointSummary | UnreadablePoint)[] = new Array(ids.length);
    await runPool(ids, MANIFEST_READS, async (id, i) => {
      read[i] = await this.summary(id).catch((err: unknown) => {
        if (err instanceof IntegrityError) return { id, reason: errorMessage(err) };
        throw err;
      });
    });
    const summaries: PointSummary[] = [];
    const unreadable: UnreadablePoint[] = [];
    for (const r of read) {
      if ('reason' in r) unreadable.push(r);
      else summaries.push(r);
    }
    return { summaries, unreadable };
  }

  /**
   * The newest point of `deployment`, read newest first and stopping there:
   * in a repository of one deployment, that is the newest summary alone.
   */
  async newestOf(deployment: string, ids?: readonly string[]): Promise<PointSummary | undefined> {
    return (await this.newestOfEach([deployment], ids)).get(deployment);
  }

  /**
   * The newest point of each of `deployments`, in one pass read newest first that stops once each is
   * found: a deployment retired years of points ago costs that pass once, not once per deployment.
   */
  async newestOfEach(deployments: readonly string[], ids?: readonly string[]): Promise<Map<string, PointSummary>> {
    const all = ids ?? (await this.pointIds());
    const wanted = new Set(deployments);
    const found = new Map<string, PointSummary>();
    let end = all.length;
    for (let batch = 1; end > 0 && found.size < wanted.size; batch = MANIFEST_READS) {
      const start = Math.max(0, end - batch);
      const summaries = await Promise.all(all.slice(start, end).map((id) => this.summary(id)));
      for (const s of summaries.reverse()) {
        const d = deploymentOf(s);
        if (wanted.has(d) && !found.has(d)) found.set(d, s);
      }
      end = start;
    }
    return found;
  }

  /**
   * The points `latest` and times select among, oldest first: those of the
   * chosen deployment, or of the only one. A repository of several
   * deployments and none chosen is a usage error that names them.
   * `unreadable`: points whose deployment is not known, which may be the chosen one's.
   */
  private inScope(all: PointSummary[], unreadable: readonly UnreadablePoint[]): PointSummary[] {
    const names = deploymentsOf(all);
    if (this.deployment !== undefined) {
      const chosen = all.filter((s) => deploymentOf(s) === this.deployment);
      if (chosen.length === 0 && all.length > 0 && unreadable.length === 0) throw this.noPointsOf(this.deployment, names);
      return chosen;
    }
    if (names.length > 1) {
      throw new UsageError(`the repository at ${quoteName(this.storage.location)} holds the backups of ${names.length} deployments (${names.join(', ')}); say which`, {
        hint: `add --deployment ${names[0]} (or deployment: in lifeboat.yaml), or give a point id`,
      });
    }
    return all;
  }

  /** That `deployment` has no points, though the repository holds others' (`names`): a new deployment, or a name mistyped. */
  noPointsOf(deployment: string, names: readonly string[]): UsageError {
    const meant = meantWord(deployment, names);
    return new UsageError(`the repository at ${quoteName(this.storage.location)} has no backup points of deployment ${deployment}`, {
      hint: `${meant === undefined ? '' : `did you mean ${meant}? `}its deployments: ${names.join(', ')}`,
    });
  }

  /**
   * The point `latest` (no `at`) or a time selects: the newest point in scope, or the newest completed
   * at or before `at`. A point that cannot be read is passed over when it cannot be the one meant (it is
   * older than the choice, or was started after `at`); one that may be is named (exit 3), not guessed past.
   */
  private async selectInScope(selector: string, at?: number): Promise<PointSummary | undefined> {
    return (await this.selectAmong(selector, at)).best;
  }

  /** selectInScope, with the point in scope that completed first: what a time before every point is told instead. */
  private async selectAmong(selector: string, at?: number): Promise<{ best: PointSummary | undefined; first: PointSummary | undefined }> {
    const { summaries, unreadable } = await this.readSummaries();
    let best: PointSummary | undefined;
    const scope = this.inScope(summaries, unreadable);
    // The last in the order points were taken (their ids) of those completed by then, not the one whose
    // completion time is the latest: a point from a host whose clock ran ahead has a time later than
    // the points taken after it, and would otherwise be chosen over them, an older state of the model.
    for (const m of scope) if (at === undefined || Date.parse(m.completedAt) <= at) best = m;
    const meant = unreadable.filter((u) => (best === undefined || u.id > best.id) && (at === undefined || pointTime(u.id) <= at)).at(-1);
    if (meant) {
      throw new IntegrityError(`backup point ${meant.id}, which ${selector} may select, cannot be read: ${meant.reason}`, {
        hint: `${VERIFY_HINT}; to use another point, give its id (\`lifeboat list\` shows them)`,
      });
    }
    // The point that completed first, which the oldest by id is not when that one's host's clock ran ahead: a time after it selects a point.
    const first = scope.reduce<PointSummary | undefined>((a, m) => (a === undefined || Date.parse(m.completedAt) < Date.parse(a.completedAt) ? m : a), undefined);
    return { best, first };
  }

  /**
   * The newest point of `point`'s deployment, other than it, whose restore
   * reads nothing of `volume`: what to restore instead when that volume is
   * damaged or missing. Nor does it take anything of a point that cannot be read.
   */
  async newestWithout(volume: string, point: Pick<Manifest, 'id' | 'deployment'>): Promise<PointSummary | undefined> {
    const { summaries: all, unreadable } = await this.readSummaries();
    const byId = new Map(all.map((s) => [s.id, s]));
    const damaged = new Set(unreadable.map((u) => u.id));
    const deployment = deploymentOf(point);
    return all
      .filter((s) => s.id !== point.id && deploymentOf(s) === deployment && !volumesNeeded(s, byId).includes(volume) && !s.uses.some((u) => damaged.has(u.point)))
      .at(-1);
  }

  /**
   * The newest point `latest` selects, undefined when there is none (`ids`:
   * what pointIds gave, when the caller has it). Where the quick answers do
   * not apply, every summary is read: a point that cannot be read and may be
   * the newest is named, and a repository of several deployments asks which.
   */
  async latestInScope(ids?: readonly string[]): Promise<PointSummary | undefined> {
    const all = ids ?? (await this.pointIds());
    try {
      if (this.deployment !== undefined) {
        const found = await this.newestOf(this.deployment, all);
        if (found) return found;
      } else {
        // One recorded deployment: the newest point is the answer, read alone (status probes every few minutes).
        const recorded = await this.recordedDeployments();
        if (recorded && recorded.length <= 1) return all.length ? await this.summary(all[all.length - 1]!) : undefined;
      }
    } catch (err) {
      // A point that cannot be read: the look at every point says whether it is the one meant.
      if (!(err instanceof IntegrityError)) throw err;
    }
    return this.selectInScope('latest');
  }

  /** The deployments that have points: as `deployments.json` records them, else from every point's summary. */
  async deploymentNames(): Promise<string[]> {
    return (await this.recordedDeployments()) ?? deploymentsOf(await this.allSummaries());
  }

  /** The names `deployments.json` records; undefined when it is missing or damaged (repositories written before it). */
  async recordedDeployments(): Promise<string[] | undefined> {
    const record = await this.deploymentsRecord();
    return 'names' in record ? record.names : undefined;
  }

  /** `deployments.json` as stored: its names, missing (repositories written before it), or why it is damaged. */
  async deploymentsRecord(): Promise<{ names: string[] } | { missing: true } | { damaged: string }> {
    try {
      return { names: decodeDocument(await this.storage.getDocument(keys.deployments, { maxBytes: DEPLOYMENTS_BYTES }), deploymentsSchema, keys.deployments).names };
    } catch (err) {
      if (isNotFound(err)) return { missing: true };
      if (err instanceof IntegrityError) return { damaged: errorMessage(err) };
      throw err;
    }
  }

  /**
   * Records the deployments with points, before a point of `adding` is
   * committed (`adding`) or after a prune (`names`, exactly). Callers hold the
   * repository lock (`recorded`: the record as read under it). Missing, the
   * record is made from every point's summary.
   */
  async recordDeployments(change: { adding: string } | { names: readonly string[] }, recorded: Promise<string[] | undefined> = this.recordedDeployments()): Promise<void> {
    const before = await recorded;
    let names: string[];
    if ('names' in change) names = [...new Set(change.names)].sort();
    else names = [...new Set([...(before ?? deploymentsOf(await this.allSummaries())), change.adding])].sort();
    if (before && before.length === names.length && before.every((n, i) => n === names[i])) return;
    await this.storage.putDocument(keys.deployments, encodeDocument({ format: 1, names } satisfies DeploymentsRecord));
  }

  /** Summary documents of no committed point (`committed`: the ids pointIds gave): left by a backup stopped just before its commit, or a prune. */
  async orphanSummaries(committed: ReadonlySet<string>): Promise<string[]> {
    return (await this.summaryGaps(committed)).orphans;
  }

  /** Summary documents of no committed point, and committed points without a summary (written before summaries existed). */
  async summaryGaps(committed: ReadonlySet<string>): Promise<{ orphans: string[]; missing: string[] }> {
    const summarised = new Set<string>();
    const orphans: string[] = [];
    for await (const { key } of this.storage.list(keys.summariesPrefix)) {
      const id = summaryIdOf(key);
      if (id !== undefined && committed.has(id)) summarised.add(id);
      else orphans.push(key);
    }
    return { orphans, missing: [...committed].filter((id) => !summarised.has(id)) };
  }

  async writeSummary(manifest: Manifest): Promise<void> {
    await this.storage.putDocument(keys.summary(manifest.id), encodeDocument(summarize(manifest)));
  }

  /**
   * Stores the point's summary, then commits its manifest: the manifest makes
   * the point exist. `beforeVisible` runs once the manifest is stored, just
   * before it becomes visible (the backup checks it still holds the lock); when
   * it throws, the point is not committed.
   */
  async commitManifest(manifest: Manifest, options: { beforeVisible?: () => Promise<void> } = {}): Promise<void> {
    await this.writeSummary(manifest);
    const ok = await this.storage.putDocument(keys.point(manifest.id), encodeDocument(manifest), { ifAbsent: true, beforeVisible: options.beforeVisible }).catch(async (err: unknown) => {
      // The manifest may have landed all the same: on S3 a server finishes a request whose answer never came (the
      // command interrupted while it was on its way, the connection lost). Then the point is committed, and the
      // backup must not remove its data as if it were not. Only this backup writes this id, so one there is its own.
      if (await this.storage.head(keys.point(manifest.id)).catch(() => undefined)) return true;
      // The point was not committed (a full disk, the lock lost): its summary would be a leftover for verify to report.
      await this.storage.delete([keys.summary(manifest.id)]).catch(() => undefined);
      throw err;
    });
    if (!ok) throw new IntegrityError(`backup point ${manifest.id} already exists`);
    this.manifests.set(manifest.id, manifest);
  }

  /**
   * Resolves a point selector: an id, a unique prefix of one, `latest`, or an
   * ISO-8601 time (the newest point completed at or before it). `latest` and
   * times select among the points of the deployment in scope.
   */
  async resolve(selector: string): Promise<Manifest> {
    const ids = await this.pointIds();
    if (ids.length === 0) {
      throw new UsageError(`the repository at ${quoteName(this.storage.location)} has no backup points yet`, { hint: 'take one with `lifeboat backup`, or check --repo (and LIFEBOAT_REPO, the config) if it should have some' });
    }
    // An empty selector (a script's unset variable) is a prefix of every id: with one point it would select that point, as if it had been named.
    if (selector.trim() === '') throw new UsageError('the backup point is empty', { hint: 'give an id, a unique prefix of one, latest, or a time such as 2026-11-20T03:00:00Z' });
    if (selector === 'latest') return this.chosen(selector, (await this.latestInScope(ids))!);
    if (/^\d{4}-\d{2}-\d{2}/.test(selector)) {
      const { best, first } = await this.selectAmong(selector, parseTimeSelector(selector));
      if (!best) {
        // In a repository several deployments share, other deployments' points may well be older: say whose are not.
        const whose = this.deployment === undefined ? '' : ` of deployment ${this.deployment}`;
        throw new UsageError(`no backup point${whose} completed at or before ${selector}`, {
          ...(first ? { hint: `the first point${whose} to complete is ${first.id}, at ${first.completedAt}` } : {}),
        });
      }
      return this.chosen(selector, best);
    }
    // Ids hold digits, dashes and one capital letter: a type letter copied or typed in lower case means the same point.
    const wanted = selector.toUpperCase();
    const matches = ids.filter((id) => id.startsWith(wanted));
    if (matches.length === 0) {
      const hint = /^[a-z]+$/i.test(selector) && editDistance(selector.toLowerCase(), 'latest') <= 2 ? 'did you mean latest?' : 'see `lifeboat list`';
      throw new UsageError(`no backup point matches ${JSON.stringify(selector)}`, { hint });
    }
    if (matches.length > 1 && !matches.includes(wanted)) {
      const shown = matches.slice(0, 5).join(', ') + (matches.length > 5 ? ', …' : '');
      throw new UsageError(`${JSON.stringify(selector)} matches ${matches.length} backup points (${shown}); give more of the id`);
    }
    return this.manifest(matches.includes(wanted) ? wanted : matches[0]!);
  }

  /**
   * The manifest of the point `latest` or a time chose. When it cannot be read, the point before it of
   * its deployment is named: what an operator who must restore now would take instead, by its id.
   */
  private async chosen(selector: string, point: PointSummary): Promise<Manifest> {
    try {
      return await this.manifest(point.id);
    } catch (err) {
      if (!(err instanceof IntegrityError)) throw err;
      const earlier = await this.readSummaries().then(
        ({ summaries }) => summaries.filter((s) => s.id < point.id && deploymentOf(s) === deploymentOf(point)).at(-1),
        () => undefined,
      );
      const instead = earlier ? `; the point before it is ${earlier.id} (completed ${earlier.completedAt}): give its id to use it` : '';
      throw new IntegrityError(`${selector} selects backup point ${point.id}, which cannot be read: ${err.message}`, { cause: err, hint: VERIFY_HINT + instead });
    }
  }

  /** Data prefixes (`data/<id>/`) that belong to no committed point (`committed`: the ids pointIds gave): leftovers of aborted backups. */
  async orphanDataPrefixes(committed: ReadonlySet<string>): Promise<{ id: string; prefix: string; keys: string[]; bytes: number }[]> {
    const orphans: { id: string; prefix: string; keys: string[]; bytes: number }[] = [];
    // One entry per point's folder, not per volume: only the folders of uncommitted points are listed in full.
    for await (const folder of this.storage.listPrefixes(keys.dataPrefix)) {
      const id = folder.slice(keys.dataPrefix.length, -1);
      // Only a folder named as a point is a backup's: anything else there (another repository made
      // inside this one, files put there by hand) is not lifeboat's to remove.
      if (committed.has(id) || !POINT_ID.test(id)) continue;
      const orphan = { id, prefix: keys.pointData(id), keys: [] as string[], bytes: 0 };
      for await (const { key, size } of this.storage.list(folder)) {
        orphan.keys.push(key);
        orphan.bytes += size;
      }
      if (orphan.keys.length > 0) orphans.push(orphan);
    }
    return orphans;
  }
}

function safeJson(raw: Buffer): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(raw.toString('utf8'));
    return typeof v === 'object' && v !== null ? v : undefined;
  } catch {
    return undefined;
  }
}
