import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
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
