import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { Repository } from '../../core/repository.js';
import { contextConfig, openContextStorage, type CliContext } from '../context.js';
import { printResult } from '../output.js';
import type { CommandRunner } from '../main.js';

interface InitOptions {
  encryption?: string;
}

export async function runInit(ctx: CliContext, options: InitOptions): Promise<void> {
  if (options.encryption !== undefined && options.encryption !== 'none') {
    throw new UsageError(`encryption ${options.encryption} is not available in this version`, { hint: 'create the repository without --encryption' });
  }
  const config = await contextConfig(ctx);
  const storage = await openContextStorage(ctx, config);
  try {
    const repo = await Repository.init(storage);
    printResult(ctx, { repository: storage.location, id: repo.config.id, version: repo.config.version, encryption: null }, () => `created lifeboat repository ${repo.config.id.slice(0, 8)} at ${storage.location}`);
  } finally {
    await storage.close();
  }
}

export function registerInit(program: Command, run: CommandRunner): Command {
  return program
    .command('init')
    .description('create an empty repository; refuses a location that is not empty')
    .option('--encryption <algorithm>', 'client-side encryption (none)')
    .addHelpText('after', '\nExample:\n  lifeboat init --repo /backups/fraud-detector')
    .action(run((ctx, options: InitOptions) => runInit(ctx, options)));
}
