import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { EncryptedStorage } from '../src/storage/encrypted.js';
import { LocalStorage } from '../src/storage/local.js';
import { runStorageContract } from './storage-contract.js';

runStorageContract(
  'local directory',
  async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'lifeboat-local-'));
    return { storage: new LocalStorage(dir), dispose: () => fsp.rm(dir, { recursive: true, force: true }) };
  },
  {
    partSize: 256 * 1024,
    async leaveIncompleteWrite(storage) {
      // What a writer killed before its rename leaves: a file in the temporary directory.
      const tmp = path.join((storage as LocalStorage).root, '.tmp');
      await fsp.mkdir(tmp, { recursive: true });
      await fsp.writeFile(path.join(tmp, 'interrupted-write'), 'partial');
    },
  },
);

// The encrypting wrapper keeps every guarantee of the driver beneath it.
runStorageContract(
  'encrypted local directory',
  async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'lifeboat-local-encrypted-'));
    return { storage: new EncryptedStorage(new LocalStorage(dir), randomBytes(32)), dispose: () => fsp.rm(dir, { recursive: true, force: true }) };
  },
  {
    // Around the encryption thread's batch (16 segments of 64 KiB), so objects span several.
    partSize: 1 << 20,
    async leaveIncompleteWrite(storage) {
      const tmp = path.join(((storage as unknown as { inner: LocalStorage }).inner).root, '.tmp');
      await fsp.mkdir(tmp, { recursive: true });
      await fsp.writeFile(path.join(tmp, 'interrupted-write'), 'partial');
    },
  },
);
