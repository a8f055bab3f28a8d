import type { Command } from 'commander';
import { openRepository, type CliContext } from '../context.js';
import { escapeUnprintable, formatBytes, quoteName, counted } from '../format.js';
import { printResult } from '../output.js';
import type { CommandRunner } from '../main.js';
import { pointJson } from './list.js';
import { summariseModels } from '../../model/summary.js';

/** As `ls -l` shows a mode: set-user-ID, set-group-ID and sticky bits in the execute places (`s`, `S`, `t`, `T`). */
function modeString(type: string, mode: number): string {
  const t = type === 'dir' ? 'd' : type === 'symlink' ? 'l' : '-';
  const bits = 'rwxrwxrwx';
  const special: Record<number, [number, string]> = { 2: [0o4000, 's'], 5: [0o2000, 's'], 8: [0o1000, 't'] };
  let s = '';
  for (let i = 0; i < 9; i++) {
    const on = (mode & (1 << (8 - i))) !== 0;
    const [flag, letter] = special[i] ?? [0, ''];
    if (mode & flag) s += on ? letter : letter.toUpperCase();
    else s += on ? bits[i] : '-';
  }
  return t + s;
}

export async function runShow(ctx: CliContext, selector: string): Promise<void> {
  const { repo, close } = await openRepository(ctx);
  try {
    const m = await repo.resolve(selector);
    const files = m.entries.map((e) => ({
      source: e.source,
      path: e.path,
      type: e.type,
      size: e.size,
      mode: e.mode,
      uid: e.uid ?? null,
      gid: e.gid ?? null,
      mtime: new Date(Number(BigInt(e.mtimeNs) / 1_000_000n)).toISOString(),
      sha256: e.sha256 ?? null,
      target: e.target ?? null,
      storedIn: e.ref?.point ?? null,
      ...(e.model ? { model: e.model } : {}),
    }));
    const models = summariseModels(m.entries);
    // `restore`: what a failover puts the state back with (the database, or the command that takes the output on stdin).
    // `exclude`: what the backup left out of a files source, which a restore --delta leaves alone.
    const sources = m.sources.map((s) => ({ name: s.name, kind: s.kind, path: s.path, ...(s.restore ? { restore: s.restore } : {}), ...(s.exclude?.length ? { exclude: s.exclude } : {}) }));
    printResult(ctx, { ...pointJson(m), sources, models, warnings: m.warnings, entries: files }, () => {
      const head = [
        `point ${m.id} (${m.type}${m.parent ? `, parent ${m.parent}` : ''})${m.deployment ? ` of deployment ${m.deployment}` : ''}, completed ${m.completedAt} on ${quoteName(m.host)}`,
        // A command line may hold commas and spaces: it is set apart as the command it is.
        `sources: ${sources.map((s) => `${s.name}=${s.kind === 'command' ? `\`${escapeUnprintable(s.path)}\`` : quoteName(s.path)} (${s.kind}${s.exclude ? `, leaving out ${s.exclude.map(quoteName).join(' ')}` : ''})`).join(', ')}`,
        `${counted(m.stats.files, 'file')}, ${formatBytes(m.stats.bytes)}, ${formatBytes(m.stats.storedBytes)} stored in this point`,
        ...models.map((x) => `model: ${quoteName(x.path)}: ${x.format}, ${escapeUnprintable(x.summary)}`),
        // What the backup warned about (files it left out, an empty database) stays with the point: whoever restores it learns it here.
        ...m.warnings.map((w) => `warning: ${w.path ? `${quoteName(w.path)}: ` : ''}${escapeUnprintable(w.message)} (${w.code})`),
        '',
      ];
      const lines = files.map((f) => {
        const stored = f.storedIn && f.storedIn !== m.id ? `  (in ${f.storedIn})` : '';
        const link = f.target ? ` -> ${quoteName(f.target)}` : '';
        return `${modeString(f.type, f.mode)}  ${String(f.size).padStart(12)}  ${f.mtime.replace(/\.\d+Z$/, 'Z')}  ${quoteName(`${f.source}/${f.path}`)}${link}${stored}`;
      });
      return [...head, ...lines].join('\n');
    }, { shownWhenQuiet: true });
  } finally {
    await close();
  }
}

export function registerShow(program: Command, run: CommandRunner): Command {
  return program
    .command('show')
    .description('the files of one backup point')
    .argument('<point>', 'id, unique id prefix, latest, or an ISO-8601 time')
    .addHelpText('after', '\nExamples:\n  lifeboat show latest\n  lifeboat show 2026-11-20T03:00:00Z --json')
    .action(run((ctx, selector: string) => runShow(ctx, selector)));
}
