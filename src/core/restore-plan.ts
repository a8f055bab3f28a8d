import { Minimatch } from 'minimatch';
import { IntegrityError, UsageError } from '../errors.js';
import type { Manifest, ManifestEntry, VolumeRecord } from '../format/manifest.js';
import { assertSafePath, checkSourceName, comparePaths, linkEscapes, sortByPath } from '../format/paths.js';
import { entryKey } from './backup-plan.js';
import { PathIndex } from './path-index.js';
import type { Repository } from './repository.js';

export interface VolumeJob {
  point: string;
  index: number;
  record: VolumeRecord;
  /** Manifest entries to write, by entry index inside the volume. */
  wanted: Map<number, ManifestEntry[]>;
}

export interface RestorePlan {
  manifest: Manifest;
  /** The sources restored, each into `<target>/<name>`; or, with `asTarget`, the one source written as the target itself. */
  sources: Manifest['sources'];
  asTarget?: string;
  entries: ManifestEntry[];
  /** Every file restored, hard links included. */
  files: ManifestEntry[];
  /** Files restored as another name of a file written before them. */
  links: { entry: ManifestEntry; to: ManifestEntry }[];
  volumes: VolumeJob[];
  bytes: number;
}

/**
 * Checks every entry of a point before anything is written: safe names,
 * nothing written through a link or a file, links that stay inside their
 * source, content references that exist along the chain.
 */
export async function planRestore(
  repo: Repository,
  manifest: Manifest,
  include: readonly string[] = [],
  options: { hardLinks?: boolean; /** Restore only this source, as the target itself. */ asTarget?: string } = {},
): Promise<RestorePlan> {
  const { sources, byPath } = checkEntries(manifest);
  let entries = sortByPath([...manifest.entries], (e) => `${e.source}/${e.path}`);
  // With --include, only the sources it chooses something in are made (and, by a --delta, given their recorded mode).
  let chosenSources: ReadonlySet<string> | undefined;
  if (include.length > 0) ({ entries, sources: chosenSources } = chooseIncluded(manifest, entries, include));
  const only = options.asTarget;
  if (only !== undefined) {
    if (!sources.has(only)) throw new UsageError(`${manifest.id} has no source ${JSON.stringify(only)}`);
    entries = entries.filter((e) => e.source === only);
  }

  // Only links to be restored: one --include leaves out does not keep the rest of the point from being restored.
  refuseEscapingLinks(manifest, byPath, entries);
  const files = entries.filter((e) => e.type === 'file');
  // A hard link is made once the file it names is written; without that file (left out by --include), or
  // when links are not wanted (a delta restore compares and rewrites each name on its own), it is written as a copy.
  const written = new Set(files);
  const links: RestorePlan['links'] = [];
  for (const f of files) {
    const to = f.link === undefined ? undefined : byPath.get(f.source, f.link)!;
    if (to && options.hardLinks !== false && written.has(to)) links.push({ entry: f, to });
  }
  for (const { entry } of links) written.delete(entry);
  const jobs = new Map<string, VolumeJob>();
  // Of each point the files' bytes are in, its volumes alone: the tip of a long chain takes files from many
  // points, whose manifests (each listing every file of its snapshot) are read one at a time, not held together.
  const volumesOf = new Map<string, VolumeRecord[]>([[manifest.id, manifest.volumes]]);
  for (const f of written) {
    const ref = f.ref!;
    const key = `${ref.point}\u0000${ref.volume}`;
    let job = jobs.get(key);
    if (!job) {
      let volumes = volumesOf.get(ref.point);
      if (!volumes) {
        try {
          volumes = await repo.pointVolumes(ref.point);
        } catch (err) {
          throw new IntegrityError(`${f.source}/${f.path} of ${manifest.id} is stored in point ${ref.point}, which cannot be read: ${(err as Error).message}`);
        }
        volumesOf.set(ref.point, volumes);
      }
      const record = volumes[ref.volume];
      if (!record) throw new IntegrityError(`${f.source}/${f.path} of ${manifest.id} refers to volume ${ref.volume} of ${ref.point}, which does not exist`);
      job = { point: ref.point, index: ref.volume, record, wanted: new Map() };
      jobs.set(key, job);
    }
    const list = job.wanted.get(ref.entry) ?? [];
    list.push(f);
    job.wanted.set(ref.entry, list);
  }
  const volumes = [...jobs.values()].sort((a, b) => (a.point === b.point ? a.index - b.index : a.point < b.point ? -1 : 1));
  const restored = manifest.sources.filter((src) => (only === undefined || src.name === only) && (chosenSources === undefined || chosenSources.has(src.name)));
  return { manifest, sources: restored, ...(only === undefined ? {} : { asTarget: only }), entries, files, links, volumes, bytes: files.reduce((n, f) => n + f.size, 0) };
}

/**
 * Checks every entry of a point before anything is written: safe names,
 * nothing written through a link or a file, hard links to an earlier file with
 * the same content, files with a checksum and a reference. Returns the point's
 * sources and its entries by path.
 */
export function checkEntries(manifest: Manifest): { sources: Set<string>; byPath: PathIndex<ManifestEntry> } {
  const sources = new Set<string>();
  for (const s of manifest.sources) {
    try {
      checkSourceName(s.name);
    } catch {
      throw new IntegrityError(`manifest of ${manifest.id} names an unsafe source ${JSON.stringify(s.name)}`);
    }
    sources.add(s.name);
  }
  const byPath = new PathIndex<ManifestEntry>();
  for (const e of manifest.entries) {
    if (!sources.has(e.source)) throw new IntegrityError(`manifest of ${manifest.id}: ${e.path} belongs to unknown source ${e.source}`);
    assertSafePath(e.path, `manifest path in ${manifest.id}:`);
    if (byPath.has(e.source, e.path)) throw new IntegrityError(`manifest of ${manifest.id} lists ${e.source}/${e.path} twice`);
    byPath.set(e.source, e.path, e);
  }
  for (const e of manifest.entries) {
    // Every ancestor must be a directory of the point: a write never goes through a link or a file. The
    // nearest ancestor the point lists settles it, since its own ancestors are checked with it.
    for (let end = e.path.lastIndexOf('/'); end > 0; end = e.path.lastIndexOf('/', end - 1)) {
      const parent = byPath.get(e.source, e.path.slice(0, end));
      if (!parent) continue;
      if (parent.type !== 'dir') {
        throw new IntegrityError(`refusing ${e.source}/${e.path} of ${manifest.id}: its parent ${e.source}/${parent.path} is a ${parent.type}, not a directory`);
      }
      break;
    }
    if (e.type === 'file' && (!e.sha256 || !e.ref)) {
      throw new IntegrityError(`manifest of ${manifest.id}: file ${e.source}/${e.path} has no checksum or content reference`);
    }
    if (e.link !== undefined) {
      const to = byPath.get(e.source, e.link);
      if (e.type !== 'file' || !to || to.type !== 'file' || to.link !== undefined || comparePaths(to.path, e.path) >= 0 || to.sha256 !== e.sha256 || to.size !== e.size) {
        throw new IntegrityError(`refusing ${e.source}/${e.path} of ${manifest.id}: it is recorded as a hard link to ${JSON.stringify(e.link)}, which is not an earlier file with the same content`);
      }
    }
  }

  return { sources, byPath };
}

/** Refuses a link of `entries` that leads out of the restored tree, read as the kernel would follow it through the point's other links. */
export function refuseEscapingLinks(manifest: Manifest, byPath: PathIndex<ManifestEntry>, entries: readonly ManifestEntry[]): void {
  const linkAt = (source: string) => (p: string) => {
    const e = byPath.get(source, p);
    return e?.type === 'symlink' ? (e.target ?? '/') : undefined;
  };
  for (const e of entries) {
    if (e.type === 'symlink' && (!e.target || linkEscapes(e.path, e.target, linkAt(e.source)))) {
      throw new IntegrityError(`refusing symlink ${e.source}/${e.path} of ${manifest.id}: its target ${JSON.stringify(e.target)} leads outside the restored tree`, {
        hint: 'restore the rest with --include naming what you need, which leaves this link out',
      });
    }
  }
}

/** The sources in which `include` chooses something (every source without patterns); a pattern that matches nothing is an error. */
export function sourcesIncluded(manifest: Manifest, include: readonly string[]): Set<string> {
  if (include.length === 0) return new Set(manifest.sources.map((s) => s.name));
  const sorted = sortByPath([...manifest.entries], (e) => `${e.source}/${e.path}`);
  return chooseIncluded(manifest, sorted, include).sources;
}

/**
 * The entries `include` chooses, and the sources they are in: those a
 * pattern matches, everything under a directory a pattern matches
 * (`models/tokenizer` or `models/tokenizer/` means the directory's contents), and the directories
 * that lead to them. A pattern that matches nothing is a mistake to say, not
 * a restore of nothing.
 */
function chooseIncluded(manifest: Manifest, entries: ManifestEntry[], include: readonly string[]): { entries: ManifestEntry[]; sources: Set<string> } {
  const patterns = include.map((g) => ({ glob: g, matcher: new Minimatch(g, { dot: true }), used: false }));
  // A directory matches with a slash after its name too (`models/tokenizer/`, as a shell completes it).
  const matches = (name: string, dir: boolean) => {
    let any = false;
    for (const p of patterns) {
      if (p.matcher.match(name) || (dir && p.matcher.match(`${name}/`))) any = p.used = true;
    }
    return any;
  };
  // A source's name stands for all of it.
  const chosenDirs = new Set(manifest.sources.map((s) => s.name).filter((name) => matches(name, true)));
  const chosen = new Set<ManifestEntry>();
  for (const e of entries) {
    const name = `${e.source}/${e.path}`;
    // Entries come sorted, a directory before what is in it.
    const parent = name.slice(0, name.lastIndexOf('/'));
    if (matches(name, e.type === 'dir') || chosenDirs.has(parent)) {
      chosen.add(e);
      if (e.type === 'dir') chosenDirs.add(name);
    }
  }
  const unused = patterns.filter((p) => !p.used).map((p) => p.glob);
  if (unused.length > 0) {
    throw new UsageError(`--include ${unused.map((g) => JSON.stringify(g)).join(', ')} matches nothing in ${manifest.id}`, {
      hint: `patterns match <source>/<path>; this point's sources: ${manifest.sources.map((s) => s.name).join(', ')} (see \`lifeboat show ${manifest.id}\`)`,
    });
  }
  const leading = new Set<string>();
  for (const e of chosen) {
    const parts = e.path.split('/');
    for (let i = 1; i < parts.length; i++) leading.add(entryKey(e.source, parts.slice(0, i).join('/')));
  }
  // A source named by a pattern counts even when it is empty.
  const sources = new Set([...manifest.sources.map((s) => s.name).filter((name) => chosenDirs.has(name)), ...[...chosen].map((e) => e.source)]);
  return { entries: entries.filter((e) => chosen.has(e) || (e.type === 'dir' && leading.has(entryKey(e.source, e.path)))), sources };
}
