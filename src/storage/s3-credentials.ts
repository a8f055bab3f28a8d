import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { UsageError, errorMessage } from '../errors.js';

/** What the SDK's credential chain says when none of its links gave anything: it names none of them. */
const NOTHING_FOUND = 'Could not load credentials from any providers';

/**
 * The error for credentials the AWS chain could not provide, found before any
 * request is sent: a set-up mistake. With AWS_PROFILE set, it says whether the
 * profile is in the shared files (and which files those were), since the SDK's
 * own message names neither; otherwise the SDK's reason when it has one (an
 * expired SSO session), else what the chain looks at.
 */
export function credentialsFailure(err: unknown, env: NodeJS.ProcessEnv): UsageError {
  const reason = errorMessage(err);
  const specific = reason !== '' && !reason.startsWith(NOTHING_FOUND) ? `: ${reason}` : '';
  const profile = nonEmpty(env.AWS_PROFILE);
  const files = sharedFiles(env);
  // Run as another user with HOME left to the first one's (su without -, sudo keeping HOME): the files are there, not for this user.
  const closed = files.filter((f) => f.error !== undefined);
  const closedHint = closed.length > 0 ? `; this user may not read ${closed.map((f) => f.file).join(' or ')}: set HOME to its own home (su -, sudo -H), or name readable files with AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE` : '';
  if (profile === undefined) {
    return new UsageError(`no AWS credentials were found for the repository${specific}`, {
      cause: err,
      hint: `set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an instance or container role provides them${closedHint}`,
    });
  }
  const holding = files.filter((f) => f.profiles?.includes(profile));
  if (holding.length === 0) {
    const known = [...new Set(files.flatMap((f) => f.profiles ?? []))];
    const where = files.map((f) => `${f.file}${f.error !== undefined ? ` (unreadable: ${f.error})` : f.profiles === undefined ? ' (no such file)' : ''}`).join(' or ');
    return new UsageError(`AWS_PROFILE names the profile ${profile}, which is not in ${where}`, {
      cause: err,
      hint: closed.length > 0 ? closedHint.slice(2) : `${known.length > 0 ? `profiles there: ${known.join(', ')}; ` : ''}correct AWS_PROFILE, or add the profile (aws configure --profile ${profile}); AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE name other files`,
    });
  }
  return new UsageError(`the AWS profile ${profile} (in ${holding.map((f) => f.file).join(' and ')}) gave no credentials${specific}`, {
    cause: err,
    hint: `give the profile aws_access_key_id and aws_secret_access_key, a credential_process, SSO (then aws sso login --profile ${profile}) or a role to assume`,
  });
}

/**
 * The shared credentials and config files as the SDK finds them, with the profiles each defines (undefined when it
 * cannot be read), and why one that is there could not be read.
 */
function sharedFiles(env: NodeJS.ProcessEnv): { file: string; profiles?: string[]; error?: string }[] {
  const home = nonEmpty(env.HOME) ?? os.homedir();
  return [
    { file: nonEmpty(env.AWS_SHARED_CREDENTIALS_FILE) ?? path.join(home, '.aws', 'credentials'), config: false },
    { file: nonEmpty(env.AWS_CONFIG_FILE) ?? path.join(home, '.aws', 'config'), config: true },
  ].map(({ file, config }) => {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      return code === 'ENOENT' || code === 'ENOTDIR' ? { file } : { file, error: code ?? errorMessage(err) };
    }
    return { file, profiles: profilesIn(text, config) };
  });
}

/** `[name]` sections of a credentials file; `[default]` and `[profile name]` of a config file, whose other sections (sso-session, services) are not profiles. */
function profilesIn(text: string, config: boolean): string[] {
  const names: string[] = [];
  for (const line of text.split(/\r?\n/)) {
    const section = /^\s*\[\s*([^\]]*?)\s*\]/.exec(line)?.[1];
    if (section === undefined) continue;
    if (!config) names.push(section);
    else if (section === 'default') names.push(section);
    else if (/^profile\s/.test(section)) names.push(section.replace(/^profile\s+/, ''));
  }
  return names;
}

/** Keys from the given environment, so a caller's env is honoured; else the SDK's default chain. */
export function staticCredentials(env: NodeJS.ProcessEnv) {
  const accessKeyId = nonEmpty(env.AWS_ACCESS_KEY_ID);
  const secretAccessKey = nonEmpty(env.AWS_SECRET_ACCESS_KEY);
  if (accessKeyId === undefined || secretAccessKey === undefined) return undefined;
  return { accessKeyId, secretAccessKey, sessionToken: nonEmpty(env.AWS_SESSION_TOKEN) };
}

export function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}
