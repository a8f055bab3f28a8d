import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { LocalStorage } from '../src/storage/local.js';
import { tempDir } from './helpers/tree.js';

test('writers that create and empty the same directories at once never fail (local repository)', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const storage = new LocalStorage(work);
  // Readers register and go under locks/readers/, pins come and go under pins/: each delete of the last
  // document drops the directory, which the next write must make again.
  const churn = (prefix: string, name: string) => async () => {
    for (let i = 0; i < 150; i++) {
      await storage.putDocument(`${prefix}${name}.json`, Buffer.from(`${name} ${i}`));
      await storage.delete([`${prefix}${name}.json`]);
    }
  };
  const exclusive = (name: string) => async () => {
    for (let i = 0; i < 150; i++) {
      if (await storage.putDocument('locks/lock.json', Buffer.from(name), { ifAbsent: true })) await storage.delete(['locks/lock.json']);
    }
  };
  await Promise.all([churn('locks/readers/', 'a'), churn('locks/readers/', 'b'), churn('pins/', 'c'), churn('pins/', 'd'), exclusive('e'), exclusive('f')].map((f) => f()));
});
