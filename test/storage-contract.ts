/**
 * The guarantees every Storage driver gives, as one suite that each driver's
 * test file runs against a real instance.
 */
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { LockedError } from '../src/errors.js';
import { isNotFound, ObjectNotFoundError, listAll, type IncompleteWrite, type Storage } from '../src/storage/storage.js';
import { failingStream, generatedBytes, generatedStream, inParallel, readAll, sha256Of } from './helpers/data.js';

export interface StorageContractOptions {
  /**
   * The size at which the driver splits an upload into parts; objects around
   * it and several times it are stored. Small for drivers without parts.
   */
  partSize: number;
  /** Reasons to skip what the server under test cannot do (printed with the skip). */
  skip?: {
    conditionalPut?: string;
    /** putDocument({ifMatch}) is not atomic there (compared, then written). */
    atomicReplace?: string;
    cleanupIncomplete?: string;
    listOrder?: string;
  };
  /**
   * Leaves behind what an interrupted write of this driver leaves (a temporary
   * file, an incomplete multipart upload) for `key`.
   */
  leaveIncompleteWrite?: (storage: Storage, key: string) => Promise<void>;
  /** Strings that must never appear in the storage's location. */
  secrets?: string[];
}

export function runStorageContract(
  name: string,
  makeStorage: () => Promise<{ storage: Storage; dispose?: () => Promise<void> }>,
  options: StorageContractOptions,
): void {
  describe(`Storage contract: ${name}`, () => {
    let storage: Storage;
    let dispose: (() => Promise<void>) | undefined;
    before(async () => {
      ({ storage, dispose } = await makeStorage());
    });
    after(async () => {
      await storage?.close();
      await dispose?.();
    });

    const part = options.partSize;

    it('round-trips objects of every size class bit-exact', async () => {
      const sizes = [0, 1, 1000, part - 1, part, part + 1, 2 * part, Math.floor(2.5 * part)];
      for (const [i, size] of sizes.entries()) {
        const key = `roundtrip/object-${i}`;
        const info = await storage.put(key, generatedStream(size, i, { irregularChunks: true }));
        assert.deepEqual(info, { key, size }, `put result of ${size} bytes`);
        const expected = await sha256Of(generatedStream(size, i));
        assert.deepEqual(await sha256Of(await storage.get(key)), expected, `content of ${size} bytes`);
        assert.deepEqual(await storage.head(key), { key, size });
      }
    });

    it('put with a size hint stores the same bytes', async () => {
      const size = 2 * part + 17;
      await storage.put('roundtrip/hinted', generatedStream(size, 99), { size });
      assert.deepEqual(await sha256Of(await storage.get('roundtrip/hinted')), await sha256Of(generatedStream(size, 99)));
    });

    it('put replaces an existing object', async () => {
      await storage.put('replace/x', generatedStream(100, 1));
      await storage.put('replace/x', generatedStream(50, 2));
      assert.deepEqual(await readAll(await storage.get('replace/x')), await generatedBytes(50, 2));
    });

    it('reads byte ranges', async () => {
      const size = 2 * part + 12345;
      const data = await generatedBytes(size, 7);
      await storage.put('ranged/object', generatedStream(size, 7));
      const cases: [number | undefined, number | undefined][] = [
        [0, 10],
        [part - 5, 10],
        [part, part + 1],
        [size - 7, undefined],
        [size - 7, 7],
        [1, size - 1],
        [12345, 0],
        [size, undefined],
      ];
      for (const [offset, length] of cases) {
        const got = await readAll(await storage.get('ranged/object', { offset, length }));
        const from = offset ?? 0;
        const to = length === undefined ? size : from + length;
        assert.ok(got.equals(data.subarray(from, to)), `range offset ${offset} length ${length}`);
      }
    });

    it('reads through openReader into the caller\'s buffers, whole and in ranges', async () => {
      const size = 2 * part + 4321;
      const data = await generatedBytes(size, 11);
      await storage.put('reader/object', generatedStream(size, 11));
      const readThrough = async (options: { offset?: number; length?: number }, bufferSize: number): Promise<Buffer> => {
        const reader = await storage.openReader('reader/object', options);
        const into = Buffer.alloc(bufferSize);
        const parts: Buffer[] = [];
        try {
          for (let n = await reader.read(into); n > 0; n = await reader.read(into)) parts.push(Buffer.from(into.subarray(0, n)));
          assert.equal(await reader.read(into), 0, 'a reader at its end stays there');
        } finally {
          await reader.close();
          await reader.close();
        }
        return Buffer.concat(parts);
      };
      for (const bufferSize of [1000, 65536, 3 << 20]) {
        assert.ok((await readThrough({}, bufferSize)).equals(data), `whole object through ${bufferSize}-byte buffers`);
        assert.ok((await readThrough({ offset: part - 3 }, bufferSize)).equals(data.subarray(part - 3)), `from an offset through ${bufferSize}-byte buffers`);
        assert.ok((await readThrough({ offset: 17, length: part }, bufferSize)).equals(data.subarray(17, 17 + part)), `a range through ${bufferSize}-byte buffers`);
      }
      // Closed before its end: nothing more is read and nothing is left open.
      const early = await storage.openReader('reader/object');
      assert.ok((await early.read(Buffer.alloc(100))) > 0);
      await early.close();
      await assert.rejects(storage.openReader('missing/object'), ObjectNotFoundError);
    });

    it('reports missing objects', async () => {
      assert.equal(await storage.head('missing/object'), undefined);
      await assert.rejects(storage.get('missing/object'), (err: unknown) => {
        assert.ok(err instanceof ObjectNotFoundError && isNotFound(err));
        assert.equal(err.key, 'missing/object');
        assert.equal(err.exitCode, 1);
        return true;
      });
      await assert.rejects(storage.get('missing/object', { offset: 10, length: 0 }), ObjectNotFoundError);
      await assert.rejects(storage.getDocument('missing/object'), ObjectNotFoundError);
    });

    it('stores and reads documents', async () => {
      const data = Buffer.from(JSON.stringify({ hello: 'world', n: 1 }));
      assert.equal(await storage.putDocument('docs/a.json', data), true);
      assert.deepEqual(await storage.getDocument('docs/a.json'), data);
      assert.equal(await storage.putDocument('docs/a.json', Buffer.from('second')), true);
      assert.equal((await storage.getDocument('docs/a.json')).toString(), 'second');
      assert.equal(await storage.putDocument('docs/empty', new Uint8Array(0)), true);
      assert.equal((await storage.getDocument('docs/empty')).length, 0);
      // A view into a larger buffer stores only its own bytes.
      const backing = Buffer.from('xxxxINNERyyyy');
      assert.equal(await storage.putDocument('docs/view', backing.subarray(4, 9)), true);
      assert.equal((await storage.getDocument('docs/view')).toString(), 'INNER');
    });

    it('putDocument with ifAbsent creates once and never overwrites', async (t) => {
      if (options.skip?.conditionalPut) return t.skip(options.skip.conditionalPut);
      assert.equal(await storage.putDocument('locks/lock', Buffer.from('first'), { ifAbsent: true }), true);
      assert.equal(await storage.putDocument('locks/lock', Buffer.from('second'), { ifAbsent: true }), false);
      assert.equal((await storage.getDocument('locks/lock')).toString(), 'first');
      // Racing creators: exactly one wins.
      const results = await Promise.all(
        Array.from({ length: 5 }, (_, i) => storage.putDocument('locks/race', Buffer.from(`racer ${i}`), { ifAbsent: true })),
      );
      assert.equal(results.filter(Boolean).length, 1);
    });

    it('putDocument with ifMatch replaces exactly the bytes named, and nothing else', async () => {
      assert.equal(await storage.putDocument('locks/held', Buffer.from('holder 1')), true);
      assert.equal(await storage.putDocument('locks/held', Buffer.from('holder 1, refreshed'), { ifMatch: Buffer.from('holder 2') }), false);
      assert.equal((await storage.getDocument('locks/held')).toString(), 'holder 1');
      assert.equal(await storage.putDocument('locks/held', Buffer.from('holder 1, refreshed'), { ifMatch: Buffer.from('holder 1') }), true);
      assert.equal((await storage.getDocument('locks/held')).toString(), 'holder 1, refreshed');
      assert.equal(await storage.putDocument('locks/held', Buffer.from('again'), { ifMatch: Buffer.from('holder 1') }), false, 'the bytes it had before no longer match');
      assert.equal(await storage.putDocument('locks/gone', Buffer.from('new'), { ifMatch: Buffer.from('old') }), false, 'a document that is not there is not replaced');
      assert.equal(await storage.head('locks/gone'), undefined);
    });

    it('putDocument with ifMatch is atomic: of writers replacing the same bytes at once, one does', async (t) => {
      if (options.skip?.atomicReplace) return t.skip(options.skip.atomicReplace);
      for (let round = 0; round < 5; round++) {
        const key = `locks/contended-${round}`;
        await storage.putDocument(key, Buffer.from('stale'));
        const results = await Promise.all(Array.from({ length: 4 }, (_, i) => storage.putDocument(key, Buffer.from(`taker ${i}`), { ifMatch: Buffer.from('stale') })));
        assert.equal(results.filter(Boolean).length, 1, `round ${round}: ${results.join(', ')}`);
        assert.equal((await storage.getDocument(key)).toString(), `taker ${results.indexOf(true)}`);
      }
    });

    it('putDocument runs beforeVisible while the document is not visible yet, and stores nothing when it throws', async () => {
      let visibleBefore: unknown = 'not called';
      assert.equal(await storage.putDocument('locks/checked', Buffer.from('one'), { ifAbsent: true, beforeVisible: async () => void (visibleBefore = await storage.head('locks/checked')) }), true);
      assert.equal(visibleBefore, undefined);
      const refused = new LockedError('no longer held');
      await assert.rejects(storage.putDocument('locks/refused', Buffer.from('x'), { beforeVisible: async () => Promise.reject(refused) }), (err) => err === refused);
      assert.equal(await storage.head('locks/refused'), undefined);
      await assert.rejects(storage.putDocument('locks/checked', Buffer.from('two'), { ifMatch: Buffer.from('one'), beforeVisible: async () => Promise.reject(refused) }), (err) => err === refused);
      assert.equal((await storage.getDocument('locks/checked')).toString(), 'one');
    });

    // No key is also a "directory" of others: a file system could not hold both.
    const orderKeys = ['order/b/2', 'order/a/1', 'order/a/10', 'order/a/2', 'order/a-x', 'order/ab', 'order/a.json'];
    const inKeyOrder = ['order/a-x', 'order/a.json', 'order/a/1', 'order/a/10', 'order/a/2', 'order/ab', 'order/b/2'];

    it('lists by prefix, with keys relative to the repository', async () => {
      for (const key of orderKeys) await storage.putDocument(key, Buffer.from(key));
      const all = await listAll(storage, 'order/');
      assert.deepEqual(all.map((o) => o.key).sort(), inKeyOrder);
      for (const o of all) assert.equal(o.size, Buffer.byteLength(o.key));
      assert.deepEqual((await listAll(storage, 'order/a/')).map((o) => o.key).sort(), ['order/a/1', 'order/a/10', 'order/a/2']);
      assert.deepEqual((await listAll(storage, 'order/a/1')).map((o) => o.key).sort(), ['order/a/1', 'order/a/10']);
      assert.deepEqual(await listAll(storage, 'order/none'), []);
      assert.deepEqual(await listAll(storage, 'no-such-prefix/'), []);
      assert.ok((await listAll(storage, '')).some((o) => o.key === 'order/b/2'));
    });

    it('lists the folders one level below a prefix, once each, in key order', async () => {
      for (const key of ['tree/b/1', 'tree/a/1', 'tree/a/2', 'tree/a/deep/3', 'tree/a-x/1', 'tree/file', 'treeish/c/1']) await storage.putDocument(key, Buffer.from(key));
      const folders: string[] = [];
      for await (const folder of storage.listPrefixes('tree/')) folders.push(folder);
      assert.deepEqual(folders, ['tree/a-x/', 'tree/a/', 'tree/b/']);
      const deeper: string[] = [];
      for await (const folder of storage.listPrefixes('tree/a/')) deeper.push(folder);
      assert.deepEqual(deeper, ['tree/a/deep/']);
      // A folder whose objects are all deleted is gone, as in an object store.
      await storage.delete(['tree/b/1']);
      const after: string[] = [];
      for await (const folder of storage.listPrefixes('tree/')) after.push(folder);
      assert.deepEqual(after, ['tree/a-x/', 'tree/a/']);
      const none: string[] = [];
      for await (const folder of storage.listPrefixes('no-such-prefix/')) none.push(folder);
      assert.deepEqual(none, []);
    });

    it('lists in key order', async (t) => {
      if (options.skip?.listOrder) return t.skip(options.skip.listOrder);
      for (const key of orderKeys) await storage.putDocument(key, Buffer.from(key));
      assert.deepEqual((await listAll(storage, 'order/')).map((o) => o.key), inKeyOrder);
      assert.deepEqual((await listAll(storage, 'order/a/')).map((o) => o.key), ['order/a/1', 'order/a/10', 'order/a/2']);
      const everything = (await listAll(storage, '')).map((o) => o.key);
      assert.deepEqual(everything, [...everything].sort());
    });

    it('lists and deletes more than 1,000 objects', async () => {
      const keys = Array.from({ length: 1100 }, (_, i) => `many/${String(i).padStart(5, '0')}`);
      await inParallel(keys, 16, (key) => storage.putDocument(key, Buffer.from(key)));
      const listed = await listAll(storage, 'many/');
      assert.deepEqual(
        listed.map((o) => o.key),
        keys,
      );
      await storage.delete([...keys, 'many/not-there']);
      assert.deepEqual(await listAll(storage, 'many/'), []);
      assert.equal(await storage.head(keys[0]!), undefined);
    });

    it('delete removes only the named objects and ignores missing ones', async () => {
      await storage.putDocument('del/keep', Buffer.from('k'));
      await storage.putDocument('del/go', Buffer.from('g'));
      await storage.delete(['del/go', 'del/never-existed']);
      await storage.delete([]);
      assert.deepEqual(
        (await listAll(storage, 'del/')).map((o) => o.key),
        ['del/keep'],
      );
    });

    it('a failing put leaves nothing visible', async () => {
      for (const size of [part >> 1, Math.floor(2.5 * part)]) {
        await assert.rejects(storage.put(`failed/${size}`, failingStream(size, 3)));
        assert.equal(await storage.head(`failed/${size}`), undefined);
      }
      assert.deepEqual(await listAll(storage, 'failed/'), []);
    });

    it('an aborted put leaves nothing visible', async () => {
      const controller = new AbortController();
      const source = generatedStream(3 * part, 4);
      const body = Readable.from(
        (async function* () {
          let sent = 0;
          for await (const chunk of source) {
            sent += (chunk as Buffer).length;
            if (sent > 1.5 * part) controller.abort();
            yield chunk as Buffer;
          }
        })(),
        { objectMode: false },
      );
      await assert.rejects(storage.put('aborted/object', body, { signal: controller.signal }));
      assert.equal(await storage.head('aborted/object'), undefined);
      assert.deepEqual(await listAll(storage, 'aborted/'), []);
    });

    it('a writer stores each chunk as it was when write() resolved, though the caller reuses one buffer', async () => {
      const seed = 77;
      for (const size of [0, 1000, part + 1, Math.floor(2.5 * part)]) {
        const key = `writer/object-${size}`;
        const writer = await storage.openWriter(key);
        // One buffer, refilled with the next chunk as soon as each write resolves, then scribbled over.
        const reused = Buffer.alloc(part);
        let chunk = 0;
        for await (const piece of generatedStream(size, seed, { irregularChunks: true })) {
          for (let at = 0; at < (piece as Buffer).length; ) {
            const n = Math.min(1 + ((chunk++ * 7919) % reused.length), (piece as Buffer).length - at);
            (piece as Buffer).copy(reused, 0, at, at + n);
            await writer.write(reused.subarray(0, n));
            reused.fill(0xee);
            at += n;
          }
        }
        assert.deepEqual(await writer.end(), { key, size });
        assert.deepEqual(await sha256Of(await storage.get(key)), await sha256Of(generatedStream(size, seed)), `content of ${size} bytes`);
      }
    });

    it('an aborted writer leaves nothing visible', async () => {
      const writer = await storage.openWriter('aborted-writer/object');
      for await (const piece of generatedStream(2 * part, 8)) await writer.write(piece as Buffer);
      await writer.abort(new Error('stopped on purpose'));
      assert.equal(await storage.head('aborted-writer/object'), undefined);
      assert.deepEqual(await listAll(storage, 'aborted-writer/'), []);
    });

    it('failed puts leave no incomplete writes behind', async (t) => {
      if (options.skip?.cleanupIncomplete) return t.skip(options.skip.cleanupIncomplete);
      await assert.rejects(storage.put('failed-clean/object', failingStream(2 * part + 1, 5)));
      assert.equal(await storage.cleanupIncomplete(0), 0);
    });

    it('cleanupIncomplete removes interrupted writes older than asked', async (t) => {
      if (options.skip?.cleanupIncomplete) return t.skip(options.skip.cleanupIncomplete);
      if (!options.leaveIncompleteWrite) return t.skip('the driver has no way to leave an interrupted write here');
      await storage.cleanupIncomplete(0);
      await options.leaveIncompleteWrite(storage, 'incomplete/object');
      assert.equal(await storage.cleanupIncomplete(60 * 60 * 1000), 0, 'a fresh write is left alone');
      assert.deepEqual(await listAll(storage, 'incomplete/'), [], 'an interrupted write is not visible');
      // Timestamps of some servers have a resolution of one second.
      await new Promise((resolve) => setTimeout(resolve, 1100));
      assert.equal(await storage.cleanupIncomplete(1000), 1);
      assert.equal(await storage.cleanupIncomplete(0), 0);
    });

    it('incompleteWrites lists an interrupted write, and removeIncomplete removes it', async (t) => {
      if (options.skip?.cleanupIncomplete) return t.skip(options.skip.cleanupIncomplete);
      if (!options.leaveIncompleteWrite) return t.skip('the driver has no way to leave an interrupted write here');
      const incomplete = async () => {
        const found: IncompleteWrite[] = [];
        for await (const write of storage.incompleteWrites()) found.push(write);
        return found;
      };
      await storage.cleanupIncomplete(0);
      assert.deepEqual(await incomplete(), []);
      await options.leaveIncompleteWrite(storage, 'incomplete/listed');
      const found = await incomplete();
      assert.equal(found.length, 1, JSON.stringify(found));
      // A local temporary file does not say what it was to become; an upload does.
      assert.ok(found[0]!.key === 'incomplete/listed' || found[0]!.key.startsWith('.tmp/'), found[0]!.key);
      assert.match(found[0]!.what, /^an? /);
      await storage.removeIncomplete(found);
      assert.deepEqual(await incomplete(), []);
      await storage.removeIncomplete(found);
    });

    it('names its location without secrets', () => {
      assert.ok(storage.location.length > 0);
      for (const secret of options.secrets ?? []) assert.ok(!storage.location.includes(secret));
    });
  });
}
