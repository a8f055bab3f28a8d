import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAX_PARTS, MAX_PART_BYTES, growingPartSize } from '../src/storage/s3-part-writer.js';

const MiB = 1024 * 1024;
/** S3's largest object. */
const MAX_OBJECT_BYTES = 5 * 1024 ** 4;
/** The driver's part size when nothing shrinks it. */
const DEFAULT_PART = 8 * MiB;

// A volume holds a whole file, however large, and is written without knowing its size: its parts
// must grow so that S3's 10,000 parts reach S3's largest object, not stop at a fraction of it
// after the hours it took to upload that fraction.
test('the parts of a volume of unknown size reach S3\'s largest object (5 TiB) within 10,000 parts, each within 5 GiB, and stay 8 MiB for volumes of ordinary size', () => {
  let total = 0;
  let largest = 0;
  for (let n = 1; n <= MAX_PARTS; n++) {
    const size = growingPartSize(DEFAULT_PART, n);
    assert.ok(size >= DEFAULT_PART, `part ${n} is at least the base`);
    total += size;
    largest = Math.max(largest, size);
  }
  assert.ok(total >= MAX_OBJECT_BYTES, `10,000 parts hold ${(total / 1024 ** 4).toFixed(2)} TiB, not the 5 TiB S3 allows`);
  assert.ok(largest <= MAX_PART_BYTES, `the largest part is ${largest / MiB} MiB`);
  let ordinary = 0;
  for (let n = 1; ordinary < 4 * 1024 ** 3; n++) {
    assert.equal(growingPartSize(DEFAULT_PART, n), DEFAULT_PART, `part ${n} of a 4 GiB volume`);
    ordinary += DEFAULT_PART;
  }
});
