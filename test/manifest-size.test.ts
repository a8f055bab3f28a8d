import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeDocument } from '../src/format/document.js';
import { MANIFEST_FORMAT, MAX_MANIFEST_CHARS, estimateManifestChars, type Manifest, type ManifestEntry } from '../src/format/manifest.js';
import { seededRandom, testSeed } from './helpers/data.js';

/** Entries as a backup records them: files with checksum, reference, owner and inode; directories; links. */
function randomEntries(random: () => number, count: number): ManifestEntry[] {
  const letters = ['a', 'b', 'z', '0', '9', '-', '_', '.', 'é', '日', ' ', '"', '\\\\'];
  const name = (n: number) => Array.from({ length: n }, () => letters[Math.floor(random() * letters.length)]).join('');
  const big = () => Math.floor(random() * 2 ** 40);
  return Array.from({ length: count }, (_, i) => {
    const path = `${name(1 + Math.floor(random() * 40))}/${name(1 + Math.floor(random() * 200))}-${i}`;
    const common = { source: 'models', path, mode: 0o644, mtimeNs: String(BigInt(big()) * 1000n + 999n), uid: 4_294_967_294, gid: 4_294_967_294 };
    const kind = random();
    if (kind < 0.1) return { ...common, type: 'dir', size: 0 };
    if (kind < 0.15) return { ...common, type: 'symlink', size: 0, target: name(1 + Math.floor(random() * 100)) };
    return { ...common, type: 'file', size: big(), ino: String(big()), sha256: 'f'.repeat(64), ref: { point: '20261122-030000-000F', volume: 99_999, entry: 9_999_999, offset: big() } };
  });
}

test('the manifest size estimate is never below the real size and stays close to it (randomized)', () => {
  const random = seededRandom(testSeed('manifest size'));
  for (let round = 0; round < 5; round++) {
    const entries = randomEntries(random, 2000 + Math.floor(random() * 3000));
    const manifest: Manifest = {
      format: MANIFEST_FORMAT, id: '20261122-040000-000I', type: 'incr', parent: '20261122-030000-000F', full: '20261122-030000-000F',
      startedAt: new Date().toISOString(), completedAt: new Date().toISOString(), host: 'h', tags: {}, sources: [{ name: 'models', kind: 'files', path: '/srv/models' }],
      volumes: [], entries, stats: { files: 0, bytes: 0, added: 0, changed: 0, removed: 0, storedBytes: 0 }, warnings: [],
    };
    const actual = encodeDocument(manifest).toString('utf8').length;
    const estimate = estimateManifestChars(entries);
    assert.ok(estimate >= actual, `estimate ${estimate} below the real ${actual} characters`);
    assert.ok(estimate < 1.6 * actual, `estimate ${estimate} far above the real ${actual} characters`);
  }
  // Where the limit falls for names like a deployment's: about 1.2 million entries.
  const typical = { source: 'models', path: 'logs/2026/11/run-123456/events.out.tfevents.123456' };
  const limit = Math.floor(MAX_MANIFEST_CHARS / estimateManifestChars([typical]));
  assert.ok(limit > 1_000_000 && limit < 1_400_000, `${limit}`);
});
