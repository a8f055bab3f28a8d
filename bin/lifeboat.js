#!/usr/bin/env node
import module from 'node:module';

// Node 22.1 and later keep compiled code between runs (a faster start for every cron run);
// Node 20 has no such cache, and this is skipped.
module.enableCompileCache?.();

const { main } = await import('../dist/bundle/main.js');
await main(process.argv);
