#!/usr/bin/env node
import module from 'node:module';
import os from 'node:os';
import path from 'node:path';

// Node 22.1 and later keep compiled code between runs (a faster start for every cron run);
// Node 20 has no such cache, and this is skipped. Node's own place for it is under TMPDIR,
// where lifeboat stages state and tells users to point at a small tmpfs: some 2 MiB of cache
// there would leave that much less room, so it goes where a user's caches go. Where that
// directory cannot be made, Node goes on without the cache and says nothing.
const cache = module.enableCompileCache && compileCacheDirectory();
if (cache) module.enableCompileCache(cache);

/** $XDG_CACHE_HOME/lifeboat/compile-cache, else ~/.cache/lifeboat/compile-cache; undefined with no home to put it in. */
function compileCacheDirectory() {
  let base = process.env.XDG_CACHE_HOME;
  if (!base || !path.isAbsolute(base)) {
    let home;
    try {
      home = os.homedir();
    } catch {
      return undefined;
    }
    if (!path.isAbsolute(home)) return undefined;
    base = path.join(home, '.cache');
  }
  return path.join(base, 'lifeboat', 'compile-cache');
}

// Loading the CLI takes a moment (half a second on a busy host): a signal that comes meanwhile is
// kept for it, so that the run ends as any interrupted one does (exit 130), rather than killed.
// These listeners go only once the CLI has its own: a signal of which nothing is listening any
// more is dropped, and Node 24 may load the CLI without turning to its event loop, so that one
// received during the load is only handed to listeners after it.
const early = [];
const keep = (name) => early.push(name);
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'];
for (const name of SIGNALS) process.on(name, keep);
const { main } = await import('../dist/bundle/main.js');
await main(process.argv, () => {
  for (const name of SIGNALS) process.off(name, keep);
  return early;
});
