import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
import * as z from 'zod';
import { IntegrityError } from '../src/errors.js';
import { decodeDocument, encodeDocument } from '../src/format/document.js';
import { seededRandom, testSeed } from './helpers/data.js';

const anything = z.record(z.string(), z.unknown());

function randomValue(random: () => number, depth: number): unknown {
  const letters = ['a', 'z', '0', ' ', '"', '\\', '\n', 'é', '日', '😀', '\u2028', '}', ',', 'checksum'];
  const text = () => Array.from({ length: Math.floor(random() * 12) }, () => letters[Math.floor(random() * letters.length)]).join('');
  const kind = Math.floor(random() * (depth > 2 ? 4 : 6));
  if (kind === 0) return text();
  if (kind === 1) return Math.floor(random() * 2 ** 40) * (random() < 0.5 ? -1 : 1);
  if (kind === 2) return random() < 0.5 ? null : random() < 0.5;
  if (kind === 3) return random() * 1000;
  if (kind === 4) return Array.from({ length: Math.floor(random() * 4) }, () => randomValue(random, depth + 1));
  return Object.fromEntries(Array.from({ length: Math.floor(random() * 4) }, () => [text(), randomValue(random, depth + 1)]));
}

/** A document as versions before compact documents wrote it: indented, the checksum over the compact form. */
function indented(body: Record<string, unknown>): Buffer {
  const checksum = `sha256:${createHash('sha256').update(JSON.stringify(body)).digest('hex')}`;
  return Buffer.from(`${JSON.stringify({ ...body, checksum }, null, 1)}\n`);
}

function sameContent(a: Buffer, b: Buffer): boolean {
  try {
    return isDeepStrictEqual(JSON.parse(a.toString('utf8')), JSON.parse(b.toString('utf8')));
  } catch {
    return false;
  }
}

test('documents are compact, their checksum covers their own bytes, and any changed byte is found; indented ones still read (randomized)', () => {
  const seed = testSeed('documents');
  const random = seededRandom(seed);
  for (let round = 0; round < 300; round++) {
    const body = Object.fromEntries(Array.from({ length: Math.floor(random() * 6) }, (_, i) => [`k${i}${random() < 0.2 ? '"é' : ''}`, randomValue(random, 0)]));
    const encoded = encodeDocument(body);
    const text = encoded.toString('utf8');
    assert.equal(text, `${JSON.stringify({ ...body, checksum: JSON.parse(text).checksum })}\n`, `seed ${seed} round ${round}: compact, checksum last`);
    if (Object.keys(body).length > 0) {
      // The bytes before the checksum, closed, are what it covers: a reader hashes what it got.
      const before = text.slice(0, text.lastIndexOf(',"checksum":')) + '}';
      assert.equal(JSON.parse(text).checksum, `sha256:${createHash('sha256').update(before).digest('hex')}`);
    }
    for (const form of [encoded, indented(body)]) {
      assert.deepEqual(decodeDocument(form, anything, 'doc'), body, `seed ${seed} round ${round}`);
      // Any byte changed (but the final newline, which is not part of the JSON) is damage.
      const at = Math.floor(random() * (form.length - 1));
      const damaged = Buffer.from(form);
      damaged[at] = damaged[at]! ^ (1 << Math.floor(random() * 7));
      // A change of spelling only (the last digit of a fraction that still reads as the same double) leaves the
      // content as it was; the check that older, indented documents get, by content, then passes for either form.
      if (sameContent(damaged, form)) continue;
      assert.throws(() => decodeDocument(damaged, anything, 'doc'), IntegrityError, `seed ${seed} round ${round}: byte ${at} of ${form === encoded ? 'compact' : 'indented'} changed`);
    }
  }
});

test('a compact document with a member appended after its checksum, or one repeated after it, is damaged', () => {
  const text = encodeDocument({ id: 'a', entries: [1, 2] }).toString('utf8').trimEnd();
  const checksum = JSON.parse(text).checksum as string;
  for (const forged of [`${text.slice(0, -1)},"entries":[]}`, `{"id":"a","entries":[1,2],"checksum":"${checksum}","id":"b"}`]) {
    assert.throws(() => decodeDocument(Buffer.from(forged), anything, 'doc'), IntegrityError, forged);
  }
});

test('a document with long arrays is written as JSON.stringify would write it, byte for byte (randomized)', () => {
  const seed = testSeed('long arrays');
  const random = seededRandom(seed);
  for (let round = 0; round < 40; round++) {
    // Arrays of up to a few thousand elements (written some at a time), some of them long non-ASCII strings that
    // outgrow the room judged from the elements before them; members and elements JSON.stringify leaves out or writes as null.
    const element = () => {
      const r = random();
      if (r < 0.02) return undefined;
      if (r < 0.04) return () => 1;
      if (r < 0.06) return '日😀"\\'.repeat(Math.floor(random() * 20_000));
      return randomValue(random, 1);
    };
    const body: Record<string, unknown> = {};
    for (let i = 0; i < 1 + Math.floor(random() * 5); i++) {
      const r = random();
      body[`k${i}`] = r < 0.15 ? undefined : r < 0.6 ? Array.from({ length: Math.floor(random() * 3000) }, element) : randomValue(random, 0);
    }
    const compact = JSON.stringify(body);
    const checksum = `"checksum":"sha256:${createHash('sha256').update(compact).digest('hex')}"`;
    const expected = compact === '{}' ? `{${checksum}}\n` : `${compact.slice(0, -1)},${checksum}}\n`;
    assert.ok(encodeDocument(body).equals(Buffer.from(expected)), `seed ${seed} round ${round}`);
  }
});
