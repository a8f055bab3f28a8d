import type { Command, Option } from 'commander';
import { UsageError } from '../../errors.js';
import type { CliContext } from '../context.js';
import type { CommandRunner } from '../main.js';
import { printResult } from '../output.js';

/** Options whose value is a path: complete file names there (a repository's directory, too: `--repo /backups/prod`). */
const FILE_VALUES = new Set(['--config', '--metrics-file', '--junit', '--target', '--work-dir', '--password-file', '--new-password-file', '--repo']);
const DIR_VALUES = new Set(['--target', '--work-dir', '--repo']);
/**
 * Options with a fixed set of values that check them themselves, for an error of their own, instead of with
 * commander's choices: completion offers their values all the same.
 */
const OWN_CHOICES: Record<string, readonly string[]> = {
  '--type': ['full', 'diff', 'incr'],
  '--encryption': ['aes-256-gcm', 'none'],
  '--notify-on': ['failure', 'warning', 'success'],
};
const choicesOf = (o: Option): readonly string[] | undefined => (o.argChoices?.length ? o.argChoices : o.long ? OWN_CHOICES[o.long] : undefined);

interface Spec {
  name: string;
  description: string;
  options: Option[];
  /** A command's own commands (`key add`, `key list`…). */
  subcommands: Spec[];
}

function specOf(c: Command): Spec {
  return { name: c.name(), description: c.description(), options: c.options.filter((o) => !o.hidden), subcommands: c.commands.map(specOf) };
}

function specs(program: Command): { global: Option[]; commands: Spec[] } {
  return { global: program.options.filter((o) => !o.hidden), commands: program.commands.map(specOf) };
}

const flagsOf = (o: Option) => [o.long, o.short].filter((f): f is string => Boolean(f));
const takesValue = (o: Option) => o.required || o.optional;

export function bashCompletion(program: Command): string {
  const { global, commands } = specs(program);
  const words = (opts: Option[]) => opts.flatMap(flagsOf).join(' ');
  const nested = commands.flatMap((c) => c.subcommands.map((sub) => ({ ...sub, name: `${c.name} ${sub.name}` })));
  const valued = [...global, ...[...commands, ...nested].flatMap((c) => c.options)].filter(takesValue);
  const fileFlags = [...new Set(valued.filter((o) => o.long && FILE_VALUES.has(o.long)).flatMap(flagsOf))];
  const choiceCases = [...new Map(valued.filter((o) => choicesOf(o)).map((o) => [o.long!, o])).values()].map(
    (o) => `    ${flagsOf(o).join('|')}) COMPREPLY=( $(compgen -W "${choicesOf(o)!.join(' ')}" -- "$cur") ); return ;;`,
  );
  const otherValued = [...new Set(valued.filter((o) => !(o.long && FILE_VALUES.has(o.long)) && !choicesOf(o)).flatMap(flagsOf))];
  return `# bash completion for lifeboat
# Install: lifeboat completion bash > /etc/bash_completion.d/lifeboat
#      or: echo 'source <(lifeboat completion bash)' >> ~/.bashrc
_lifeboat() {
  local cur prev cmd i opts
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev="\${COMP_WORDS[COMP_CWORD-1]}"
  cmd=""
  sub=""
  for ((i = 1; i < COMP_CWORD; i++)); do
    if [[ -z "$cmd" ]]; then
      case "\${COMP_WORDS[i]}" in
        ${commands.map((c) => c.name).join('|')}) cmd="\${COMP_WORDS[i]}" ;;
      esac
    else
      case "$cmd \${COMP_WORDS[i]}" in
        ${nested.length ? nested.map((c) => `"${c.name}"`).join('|') : '"-"'}) sub="\${COMP_WORDS[i]}"; break ;;
      esac
    fi
  done
  case "$prev" in
${choiceCases.join('\n')}
${fileFlags.length ? `    ${fileFlags.join('|')}) COMPREPLY=( $(compgen -f -- "$cur") ); return ;;` : ''}
${otherValued.length ? `    ${otherValued.join('|')}) COMPREPLY=(); return ;;` : ''}
  esac
  if [[ "$cmd" == "completion" ]]; then COMPREPLY=( $(compgen -W "bash zsh" -- "$cur") ); return; fi
  case "$cmd\${sub:+ $sub}" in
${[...commands, ...nested].map((c) => `    "${c.name}") opts="${words(c.options)}" ;;`).join('\n')}
    *) opts="" ;;
  esac
  if [[ "$cur" == -* ]]; then
    COMPREPLY=( $(compgen -W "$opts ${words(global)} --help" -- "$cur") )
  elif [[ -z "$cmd" ]]; then
    COMPREPLY=( $(compgen -W "${commands.map((c) => c.name).join(' ')}" -- "$cur") )
${commands
  .filter((c) => c.subcommands.length)
  .map((c) => `  elif [[ "$cmd" == "${c.name}" && -z "$sub" ]]; then\n    COMPREPLY=( $(compgen -W "${c.subcommands.map((x) => x.name).join(' ')}" -- "$cur") )`)
  .join('\n')}
  else
    COMPREPLY=( $(compgen -f -- "$cur") )
  fi
}
complete -o filenames -F _lifeboat lifeboat
`;
}

/**
 * Text safe inside a single-quoted _arguments spec: no quotes or brackets. A description (in an option's brackets,
 * or after a command's name and colon) may hold colons, which zsh shows as they are (`s3://bucket/prefix`).
 */
function zshText(s: string): string {
  const t = s.replace(/'/g, '').replace(/[[\]]/g, '').replace(/\s+/g, ' ').trim();
  return t.length <= 90 ? t : `${t.slice(0, 90).replace(/\s+\S*$/, '')} …`;
}

function zshOption(o: Option): string {
  const flags = flagsOf(o);
  const repeatable = o.variadic || /repeatable/.test(o.description);
  // A repeatable option excludes nothing; a single-use one excludes its other spellings once given.
  const prefix = repeatable ? '*' : flags.length > 1 ? `(${flags.join(' ')})` : '';
  const head = flags.length > 1 ? `${prefix}'{${flags.join(',')}}'` : `${prefix}${flags[0]!}`;
  let value = '';
  if (takesValue(o)) {
    // The message goes between the colons of the value's spec: none of its own.
    const what = zshText(o.flags.replace(/^.*[<[]([^>\]]+)[>\]].*$/, '$1')).replace(/:/g, ' ') || 'value';
    const choices = choicesOf(o);
    if (choices) value = `:${what}:(${choices.join(' ')})`;
    else if (o.long && DIR_VALUES.has(o.long)) value = `:${what}:_files -/`;
    else if (o.long && FILE_VALUES.has(o.long)) value = `:${what}:_files`;
    else value = `:${what}: `;
  }
  return `'${head}[${zshText(o.description)}]${value}'`;
}

function zshArguments(c: Spec): string {
  const args = c.name === 'completion' ? ["'1:shell:(bash zsh)'"] : [...c.options.map(zshOption), "'*:file:_files'"];
  return `_arguments ${args.join(' ')}`;
}

/** The case of one command: its options, or for a command of commands (key), their names and then each one's options. */
function zshCommandCase(c: Spec): string {
  if (c.subcommands.length === 0) return `        ${c.name}) ${zshArguments(c)} ;;`;
  const names = c.subcommands.map((sub) => `'${sub.name}:${zshText(sub.description)}'`).join(' ');
  const each = c.subcommands.map((sub) => `${sub.name}) ${zshArguments(sub)} ;;`).join(' ');
  return `        ${c.name}) if (( CURRENT == 2 )); then local -a subcommands; subcommands=(${names}); _describe -t commands 'lifeboat ${c.name} command' subcommands; else words=("\${(@)words[2,-1]}"); (( CURRENT-- )); case $words[1] in ${each} esac; fi ;;`;
}

export function zshCompletion(program: Command): string {
  const { global, commands } = specs(program);
  return `#compdef lifeboat
# zsh completion for lifeboat
# Install: lifeboat completion zsh > "\${fpath[1]}/_lifeboat"   (then restart zsh)
_lifeboat() {
  local -a commands
  local context state state_descr line
  typeset -A opt_args
  commands=(
${commands.map((c) => `    '${c.name}:${zshText(c.description)}'`).join('\n')}
  )
  _arguments -C \\
${global.map((o) => `    ${zshOption(o)} \\`).join('\n')}
    '1: :->command' \\
    '*:: :->args'
  case $state in
    command) _describe -t commands 'lifeboat command' commands ;;
    args)
      case $words[1] in
${commands.map(zshCommandCase).join('\n')}
      esac ;;
  esac
}
_lifeboat "$@"
`;
}

export async function runCompletion(ctx: CliContext, program: Command, shell: string | undefined): Promise<void> {
  const script = shell === 'bash' ? bashCompletion(program) : shell === 'zsh' ? zshCompletion(program) : undefined;
  // With --json, stdout holds one document, as for every command: the script is in it.
  if (script !== undefined) printResult(ctx, { shell, script }, () => script.replace(/\n$/, ''), { shownWhenQuiet: true });
  else throw new UsageError(`completion ${shell ?? ''}: choose bash or zsh`.replace('  ', ' '), { hint: 'lifeboat completion bash > /etc/bash_completion.d/lifeboat' });
}

export function registerCompletion(program: Command, run: CommandRunner): Command {
  return program
    .command('completion')
    .description('print a shell completion script for bash or zsh')
    .argument('<shell>', 'bash or zsh')
    .addHelpText('after', '\nExamples:\n  source <(lifeboat completion bash)\n  lifeboat completion zsh > "${fpath[1]}/_lifeboat"')
    .action(run((ctx, shell: string) => runCompletion(ctx, program, shell)));
}
