/**
 * Run with `node --allow-natives-syntax shape-probe.js REPO SOURCE`: takes a
 * full and then an incremental backup of SOURCE (the repository must exist),
 * and prints as JSON how many distinct hidden classes (V8 maps) the scan's
 * entries of regular files, and the files' entries in each manifest, came in.
 * Objects of one shape made the same way share one; an object made with its
 * own costs about 400 bytes more and slows every access to it.
 */
import { backup } from '../../src/core/backup.js';
import { Repository } from '../../src/core/repository.js';
import { scanSource } from '../../src/core/scan.js';
import type { Manifest, ManifestEntry } from '../../src/format/manifest.js';
import { LocalStorage } from '../../src/storage/local.js';

// V8 intrinsics parse only in a function compiled at run time, in a process started with the flag.
const sameMap = new Function('a', 'b', 'return %HaveSameMap(a, b)') as (a: object, b: object) => boolean;

/** Objects of `objects` whose hidden class differs from that of every object before it (at most 2 classes kept). */
function hiddenClasses(objects: object[]): number {
  const seen: object[] = [];
  let distinct = 0;
  for (const o of objects) {
    if (seen.some((s) => sameMap(s, o))) continue;
    distinct++;
    if (seen.length < 2) seen.push(o);
    else seen[1] = o;
  }
  return distinct;
}

const [repoDir, sourceDir] = process.argv.slice(2) as [string, string];
const scanned = await scanSource({ name: 'models', path: sourceDir }, [], {});
const report: Record<string, number> = { scannedFiles: hiddenClasses(scanned.entries.filter((e) => e.type === 'file')) };

const commit = Repository.prototype.commitManifest;
const manifests: Manifest[] = [];
Repository.prototype.commitManifest = function (this: Repository, manifest: Manifest) {
  manifests.push(manifest);
  return commit.call(this, manifest);
};
const repo = await Repository.open(new LocalStorage(repoDir));
for (const type of ['full', 'incr'] as const) {
  await backup(repo, { sources: [{ name: 'models', path: sourceDir }], type });
  const files = manifests.at(-1)!.entries.filter((e: ManifestEntry) => e.type === 'file');
  report[`${type}Files`] = files.length;
  report[`${type}Entries`] = hiddenClasses(files);
}
console.log(JSON.stringify(report));
