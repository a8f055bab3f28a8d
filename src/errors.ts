/**
 * Typed errors. Each carries the exit code of DESIGN.md's table so the entry
 * point is the one place that turns a failure into a process exit status.
 */
import * as os from 'node:os';

export const ExitCode = {
  ok: 0,
  runtime: 1,
  usage: 2,
  integrity: 3,
  locked: 4,
  health: 5,
  interrupted: 130,
} as const;

export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

export class LifeboatError extends Error {
  readonly exitCode: ExitCodeValue;
  /** What the user should do about it, shown after the message. */
  readonly hint?: string;
  constructor(message: string, exitCode: ExitCodeValue, options?: { cause?: unknown; hint?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.exitCode = exitCode;
    this.hint = options?.hint;
    this.name = new.target.name;
  }
}

/** I/O, storage or network failure that retries did not cure. */
export class RuntimeFailure extends LifeboatError {
  constructor(message: string, options?: { cause?: unknown; hint?: string }) {
    super(message, ExitCode.runtime, options);
  }
}

/** Bad flags, arguments or configuration. */
export class UsageError extends LifeboatError {
  constructor(message: string, options?: { cause?: unknown; hint?: string }) {
    super(message, ExitCode.usage, options);
  }
}

/**
 * Credentials the storage does not accept (an unknown key, a wrong secret, a session token that ran
 * out): a set-up error, though one that may come part-way through a long run, when temporary
 * credentials expire; what a restore verified until then is worth keeping for the run after.
 */
export class CredentialsRefusedError extends UsageError {}

/** A repository whose S3 bucket does not exist: a set-up mistake to most commands, backups that cannot be reached to `status`. */
export class NoBucketError extends UsageError {}

/**
 * A request the storage refused for want of permission (S3's 403 AccessDenied): exit 2, as a
 * configuration error, since running again changes nothing until the policy or the credentials
 * do. Not a UsageError: a restore keeps what it verified for the run after the fix, and a
 * failover says that nothing was switched, as for a failure of the storage.
 */
export class PermissionRefusedError extends LifeboatError {
  constructor(message: string, options?: { cause?: unknown; hint?: string }) {
    super(message, ExitCode.usage, options);
  }
}

/** Checksum mismatch, missing or unreadable backup data, hostile input. */
export class IntegrityError extends LifeboatError {
  /** The stored volume found damaged or missing, when the failure is in one. */
  volume?: string;
  constructor(message: string, options?: { cause?: unknown; hint?: string; volume?: string }) {
    super(message, ExitCode.integrity, options);
    if (options?.volume !== undefined) this.volume = options.volume;
  }
}

export class LockedError extends LifeboatError {
  constructor(message: string, options?: { cause?: unknown; hint?: string }) {
    super(message, ExitCode.locked, options);
  }
}

/** A health check or a drill objective failed. */
export class HealthError extends LifeboatError {
  constructor(message: string, options?: { cause?: unknown; hint?: string }) {
    super(message, ExitCode.health, options);
  }
}

export class InterruptedError extends LifeboatError {
  constructor(message = 'interrupted', options?: { hint?: string }) {
    super(message, ExitCode.interrupted, options);
  }
}

/** Throws InterruptedError when the signal has fired; called between units of work. */
/** Failures whose exit code was decided before a signal arrived: a signal during the reporting after them does not make them interrupted. */
const decidedBeforeSignal = new WeakSet<object>();

/** Marks a failure as one that a later signal did not cause (a run that failed, then was signalled while it notified). */
export function decidedBeforeInterruption(err: unknown): void {
  if (typeof err === 'object' && err !== null) decidedBeforeSignal.add(err);
}

/** The exit code of a failure: 130 when the run was interrupted, unless the failure came before the signal. */
export function failureExitCode(err: unknown, signal: AbortSignal): number {
  if (signal.aborted && !(typeof err === 'object' && err !== null && decidedBeforeSignal.has(err))) return ExitCode.interrupted;
  return err instanceof LifeboatError ? err.exitCode : ExitCode.runtime;
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new InterruptedError();
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** What to do about a failed file-system call on `where`, for the errors a user can fix. */
export function fileSystemHint(err: unknown, where: string): string | undefined {
  switch ((err as NodeJS.ErrnoException | undefined)?.code) {
    case 'ENOSPC':
    case 'EDQUOT':
    case 'SQLITE_FULL':
      return `free space on the file system of ${where}, or use another place`;
    case 'EFBIG':
      return `a file grew past the largest size that the file system of ${where}, or this process's file-size limit (ulimit -f), allows: raise the limit, or use another file system`;
    case 'EACCES':
    case 'EPERM':
      return `check that this user may write ${where}`;
    case 'EROFS':
      return `${where} is on a read-only file system`;
    case 'EMFILE':
      return OPEN_FILES_HINT;
    case 'ENFILE':
      return 'the system has as many files open as it allows: close what holds many of them, or raise fs.file-max, and run again';
    default:
      return undefined;
  }
}

/** A temporary directory a drill or verify --deep could not make to restore into: where, and how to choose another place. */
export function workDirectoryFailure(err: unknown, parent: string | undefined, purpose: string): RuntimeFailure {
  const where = parent ?? os.tmpdir();
  const hint = fileSystemHint(err, where);
  return new RuntimeFailure(`cannot make a directory to ${purpose}, under ${where}: ${errorMessage(err)}`, {
    cause: err,
    hint: `${hint === undefined ? '' : `${hint}, or `}give another place with --work-dir${parent === undefined ? ' (or TMPDIR)' : ''}`,
  });
}

const OPEN_FILES_HINT = "this process reached its limit of open files: raise it (ulimit -n 4096, or LimitNOFILE= in a systemd unit) and run again";

/**
 * A failure no command words itself, at a limit the user can raise (open files): one sentence that
 * says so, exit 1, rather than an unexpected error. Any other failure is returned as it is.
 */
export function asLimitReached(err: unknown): unknown {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (err instanceof LifeboatError || (code !== 'EMFILE' && code !== 'ENFILE')) return err;
  return new RuntimeFailure(errorMessage(err), { cause: err, hint: fileSystemHint(err, '') });
}
