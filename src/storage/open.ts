import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UsageError } from '../errors.js';
import { shortenedPath } from '../format/quote.js';
import { LocalStorage } from './local.js';
import type { Storage } from './storage.js';
import type { Reporter } from '../core/events.js';

/** S3 settings from the config file and flags; everything else comes from the AWS chain. */
export interface S3Settings {
  endpoint?: string;
  /** Where `endpoint` was given (`--s3-endpoint`), as messages name it; s3.endpoint when not said. */
  endpointFrom?: string;
  region?: string;
  forcePathStyle?: boolean;
  storageClass?: string;
  sse?: string;
  kmsKeyId?: string;
  /** How many object transfers may run at once. */
  concurrency?: number;
  /** A duration: how long a request waits for the server to begin its answer. */
  timeout?: string;
  /** A duration: how long a connection may go with nothing moving on it. */
  idleTimeout?: string;
}

/** S3's limit on the length of a key, in bytes of UTF-8. */
export const MAX_S3_KEY_BYTES = 1024;
/**
 * The longest prefix a new repository may have: what lifeboat writes below it takes up to 100
 * bytes (a reader's registration, `locks/readers/<host>-<pid>-<random>.json`), and room is kept
 * beside that.
 */
export const MAX_S3_PREFIX_BYTES = MAX_S3_KEY_BYTES - 128 - 1;

export interface RepositoryLocation {
  kind: 'local' | 's3';
  /** Directory for local repositories. */
  dir?: string;
  bucket?: string;
  prefix?: string;
}

export function parseRepositoryUrl(url: string, cwd: string): RepositoryLocation {
  // A URL's scheme is case-insensitive (RFC 3986): S3://bucket is s3://bucket.
  if (/^s3:\/\//i.test(url)) {
    const rest = url.slice('s3://'.length);
    const slash = rest.indexOf('/');
    const bucket = slash < 0 ? rest : rest.slice(0, slash);
    const prefix = slash < 0 ? '' : rest.slice(slash + 1).replace(/^\/+|\/+$/g, '');
    if (bucket.length < 3) throw new UsageError(`repository ${url}: the bucket name must have at least 3 characters`);
    return { kind: 's3', bucket, prefix };
  }
  if (/^file:\/\//i.test(url)) {
    // Node's own error (ERR_INVALID_FILE_URL_HOST) says nothing of a repository: `file://backups` names the host "backups", not a relative directory.
    let dir: string;
    try {
      dir = fileURLToPath(url);
    } catch {
      throw new UsageError(`repository ${url}: not a file:// URL of a local directory`, {
        hint: 'a file:// URL takes an absolute path after its third slash (file:///backups/prod); for a relative directory give the path alone',
      });
    }
    return { kind: 'local', dir: localDirectory(url, dir) };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) {
    throw new UsageError(`repository ${url}: unsupported scheme; use a directory, file:// or s3://`);
  }
  // s3:/bucket/prefix (a slash short) would otherwise be a local directory named "s3:", and the
  // backups meant for S3 would stay on this host without a word.
  const scheme = /^(s3|file):(?!\/\/)/i.exec(url)?.[1];
  if (scheme !== undefined) {
    throw new UsageError(`repository ${url}: not a URL of a repository; ${scheme.toLowerCase() === 's3' ? 'an S3 location is written s3://bucket/prefix' : 'a file location is written file:///path'}`, {
      hint: `for a local directory whose name starts with ${scheme}:, write ./${url}`,
    });
  }
  return { kind: 'local', dir: localDirectory(url, path.resolve(cwd, url)) };
}

/** The longest name in a path, and the longest path, in bytes, that Linux file systems take. */
const NAME_MAX = 255;
const PATH_MAX = 4096;
/** What a repository's own files add under its directory at most (`locks/readers/<host>-<pid>-<random>.json`, a volume's temporary file). */
const LOCAL_KEY_ROOM = 384;

/**
 * A repository directory no file system can hold (a name in it too long, a path that leaves no room
 * for the repository's files) is a usage error: every command failed with exit 1 at the first file
 * it read or wrote, ENAMETOOLONG and the whole path in the message.
 */
function localDirectory(url: string, dir: string): string {
  const long = dir.split(path.sep).find((name) => Buffer.byteLength(name) > NAME_MAX);
  const problem =
    long !== undefined
      ? `a name in its path has ${Buffer.byteLength(long)} bytes, and a file system takes at most ${NAME_MAX}`
      : Buffer.byteLength(dir) > PATH_MAX - LOCAL_KEY_ROOM
        ? `its path has ${Buffer.byteLength(dir)} bytes, and leaves no room for the repository's files (at most ${PATH_MAX - LOCAL_KEY_ROOM})`
        : undefined;
  if (problem !== undefined) throw new UsageError(`repository ${shortenedPath(url)}: ${problem}`, { hint: 'give a shorter path' });
  return dir;
}

export async function openStorage(
  url: string,
  options: { cwd: string; s3?: S3Settings; env?: NodeJS.ProcessEnv; reporter?: Reporter; interrupt?: AbortSignal },
): Promise<Storage> {
  const where = parseRepositoryUrl(url, options.cwd);
  if (where.kind === 'local') return new LocalStorage(where.dir!);
  // Loaded on demand: the AWS SDK costs start-up time that local repositories should not pay.
  const { S3Storage } = await import('./s3.js');
  return S3Storage.create({ bucket: where.bucket!, prefix: where.prefix ?? '', settings: options.s3 ?? {}, env: options.env ?? process.env, reporter: options.reporter, interrupt: options.interrupt });
}

/**
 * The locations that hold `url`'s: each parent directory, or each shorter prefix of the bucket,
 * nearest first.
 */
export function enclosingLocations(url: string, cwd: string): string[] {
  const where = parseRepositoryUrl(url, cwd);
  const out: string[] = [];
  if (where.kind === 'local') {
    for (let dir = where.dir!; path.dirname(dir) !== dir; ) out.push((dir = path.dirname(dir)));
    return out;
  }
  const parts = where.prefix ? where.prefix.split('/') : [];
  for (let n = parts.length - 1; n >= 0; n--) out.push(`s3://${where.bucket}${n === 0 ? '' : `/${parts.slice(0, n).join('/')}`}`);
  return out;
}
