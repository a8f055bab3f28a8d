import type { Manifest, ManifestEntry } from '../format/manifest.js';
import { SMALL_FILE } from './file-reader.js';

type Stored = ManifestEntry & { sha256: string; ref: NonNullable<ManifestEntry['ref']> };

/**
 * Files already stored, by content, so that a file new under its name whose
 * bytes are already in the repository (a model directory copied to a new
 * version's, with new times) refers to them instead of storing them again.
 * Small files are found by size and SHA-256, known before they are archived
 * (they are read whole); large ones by size and probe (src/format/probe.ts),
 * then read once to compare their SHA-256 before anything is stored.
 */
export class ContentTwins {
  private readonly small = new Map<string, Stored>();
  private readonly large = new Map<string, Stored>();
  private readonly largeSizes = new Set<number>();

  private reference: Manifest | undefined;

  /** The reference's files are indexed when first needed: an incremental that stores nothing never pays for it. */
  constructor(reference: Manifest | undefined) {
    this.reference = reference;
  }

  private indexed(): this {
    const reference = this.reference;
    this.reference = undefined;
    for (const e of reference?.entries ?? []) this.remember(e);
    return this;
  }

  /** Remembers a file this backup stored. */
  add(e: ManifestEntry): void {
    this.indexed().remember(e);
  }

  private remember(e: ManifestEntry): void {
    if (e.type !== 'file' || e.sha256 === undefined || e.ref === undefined) return;
    const stored = e as Stored;
    if (e.size <= SMALL_FILE) {
      if (!this.small.has(`${e.size}:${e.sha256}`)) this.small.set(`${e.size}:${e.sha256}`, stored);
    } else if (e.probe !== undefined) {
      if (!this.large.has(`${e.size}:${e.probe}`)) this.large.set(`${e.size}:${e.probe}`, stored);
      this.largeSizes.add(e.size);
    }
  }

  /** A stored small file with these bytes. */
  smallTwin(size: number, sha256: string): Stored | undefined {
    return this.indexed().small.get(`${size}:${sha256}`);
  }

  /** Whether a large file of this size may have a twin: worth reading its probe. */
  mayHaveLargeTwin(size: number): boolean {
    return this.indexed().largeSizes.has(size);
  }

  /** A stored large file with this size and probe: a candidate, to be confirmed by its SHA-256. */
  largeCandidate(size: number, probe: string): Stored | undefined {
    return this.indexed().large.get(`${size}:${probe}`);
  }
}
