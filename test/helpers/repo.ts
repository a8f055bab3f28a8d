import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './cli.js';
import { prng, tempDir, writeRandomFile } from './tree.js';

export interface SmallDeployment {
  work: string;
  src: string;
  repo: string;
}

/** A repository with one full backup of a small tree (models/ with a few files). */
export async function smallDeployment(options: { bigFiles?: number; bigSize?: number; seed?: number } = {}): Promise<SmallDeployment> {
  const work = await tempDir();
  const src = path.join(work, 'models');
  await fsp.mkdir(path.join(src, 'tok'), { recursive: true });
  const rand = prng(options.seed ?? 7);
  await fsp.writeFile(path.join(src, 'config.json'), JSON.stringify({ vocab_size: 32000, hidden: 64 }));
  await fsp.writeFile(path.join(src, 'tok', 'tokenizer.json'), JSON.stringify({ model: { vocab: { a: 0, b: 1 } } }));
  await writeRandomFile(path.join(src, 'weights.bin'), 300_000, rand);
  for (let i = 0; i < (options.bigFiles ?? 0); i++) {
    await writeRandomFile(path.join(src, `shard-${i}.bin`), options.bigSize ?? 32 << 20, rand);
  }
  const repo = path.join(work, 'repo');
  const init = await lifeboat(['--repo', repo, 'init']);
  if (init.code !== 0) throw new Error(init.stderr);
  return { work, src, repo };
}

export async function exists(p: string): Promise<boolean> {
  return fsp.lstat(p).then(
    () => true,
    () => false,
  );
}

/** The room a local repository keeps aside for a prune on a full disk: no object, and there from the first backup on. */
export const RESERVE_DIR = '.reserve';

/** Every object key under the repository directory (relative, '/'-separated), and what a write in progress or cut short left. */
export async function repoFiles(repo: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string, rel: string) => {
    for (const e of await fsp.readdir(d, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (r === RESERVE_DIR) continue;
      if (e.isDirectory()) await walk(path.join(d, e.name), r);
      else out.push(r);
    }
  };
  await walk(repo, '');
  return out.sort();
}
