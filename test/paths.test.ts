import { test } from 'node:test';
import assert from 'node:assert/strict';
import { comparePaths, sortByPath } from '../src/format/paths.js';
import { seededRandom, testSeed } from './helpers/data.js';

/** The order's definition: each '/' sorts below every other character, so a directory's entries follow it. */
function byDefinition(a: string, b: string): number {
  const ka = a.replaceAll('/', '\u0000');
  const kb = b.replaceAll('/', '\u0000');
  return ka < kb ? -1 : ka > kb ? 1 : 0;
}

test('comparePaths orders random paths as its definition does', () => {
  const random = seededRandom(testSeed('comparePaths'));
  // Characters on both sides of '/' (0x2f) in code-unit order, and beyond the BMP.
  const alphabet = ['/', '-', '.', ' ', '0', 'a', 'b', 'Z', '_', 'é', '日', '😀'];
  const randomPath = (): string => {
    let s = '';
    for (let n = Math.floor(random() * 8); n > 0; n--) s += alphabet[Math.floor(random() * alphabet.length)];
    return s;
  };
  for (let i = 0; i < 20_000; i++) {
    const a = randomPath();
    const b = random() < 0.2 ? a : random() < 0.5 ? a + randomPath() : randomPath();
    assert.equal(comparePaths(a, b), byDefinition(a, b), `comparePaths(${JSON.stringify(a)}, ${JSON.stringify(b)})`);
  }
  const sorted = ['a-c', 'a/b', 'a', 'a/b/c', 'a.d'].sort(comparePaths);
  assert.deepEqual(sorted, ['a', 'a/b', 'a/b/c', 'a-c', 'a.d']);
});

test('sortByPath sorts as comparePaths does, and keeps equal paths in their order', () => {
  const random = seededRandom(testSeed('sortByPath'));
  const alphabet = ['/', '-', '.', '0', 'a', 'Z', 'é', '😀'];
  for (let round = 0; round < 200; round++) {
    const items = Array.from({ length: Math.floor(random() * 60) }, (_, i) => {
      let p = '';
      for (let n = 1 + Math.floor(random() * 6); n > 0; n--) p += alphabet[Math.floor(random() * alphabet.length)];
      return { p, i };
    });
    const expected = [...items].sort((a, b) => comparePaths(a.p, b.p));
    const sorted = sortByPath(items, (x) => x.p);
    assert.equal(sorted, items, 'sorted in place');
    assert.deepEqual(sorted, expected);
  }
});
