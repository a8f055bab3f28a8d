import { constants as fsConstants, type BigIntStats } from 'node:fs';
import { closeFd, openFd, syncFd, writeFd } from './fd.js';
import * as fsp from 'node:fs/promises';
import { spawn } from 'node:child_process';

/** Writes all of `chunk` at `position`; resolves once the chunk may be reused. */
export async function writeAt(fh: fsp.FileHandle, chunk: Uint8Array, position: number): Promise<void> {
  for (let at = 0; at < chunk.length; ) at += (await fh.write(chunk, at, chunk.length - at, position + at)).bytesWritten;
}

/**
 * Writes a whole file and syncs it before closing (its data only, with
 * `dataOnly`). `flag` 'wx' refuses to replace anything already there.
 */
export async function writeFileSynced(file: string, data: Uint8Array | string, options: { flag?: string; mode?: number; dataOnly?: boolean } = {}): Promise<void> {
  // A plain descriptor: a restore writes thousands of small files this way.
  const fd = await openFd(file, options.flag ?? 'w', options.mode ?? 0o666);
  try {
    await writeFd(fd, typeof data === 'string' ? Buffer.from(data) : data, 0);
    await syncFd(fd, options.dataOnly);
  } catch (err) {
    await closeFd(fd).catch(() => undefined);
    throw err;
  }
  await closeFd(fd);
}

/**
 * Makes what was written to a file (or, for a directory, the names in it)
 * durable: fsync, or fdatasync with `dataOnly` when the file's size is all
 * the metadata that matters.
 */
export async function syncPath(file: string, options: { dataOnly?: boolean } = {}): Promise<void> {
  const fh = await fsp.open(file, 'r');
  try {
    await (options.dataOnly ? fh.datasync() : fh.sync());
  } finally {
    await fh.close();
  }
}

/** Bytes written to a file between the starts of its background writebacks. */
const EARLY_SYNC_BYTES = 32 << 20;

/**
 * Starts writeback of a file being written every 32 MiB, in the background
 * and one at a time, so the fsync that ends it finds little left to write.
 */
export class EarlyWriteback {
  private unsynced = 0;
  private syncing: Promise<void> = Promise.resolve();

  constructor(private readonly fh: fsp.FileHandle) {}

  wrote(bytes: number): void {
    this.unsynced += bytes;
    if (this.unsynced < EARLY_SYNC_BYTES) return;
    this.unsynced = 0;
    // A failure here is found again by the final fsync.
    this.syncing = this.syncing.then(() => this.fh.datasync()).catch(() => undefined);
  }

  /** Waits for the writeback in flight; call before the final fsync or closing the file. */
  settle(): Promise<void> {
    return this.syncing;
  }
}

/** A file opened by openRegularFile, with the stat its type was checked with (taken just after opening). */
export interface OpenedFile {
  handle: fsp.FileHandle;
  stats: BigIntStats;
}

/**
 * Opens a file for reading only if it is a regular file. A named pipe or a
 * device put where a file should be would otherwise block the open (and the
 * thread doing it) for as long as nothing writes to it: with O_NONBLOCK the
 * open returns at once, and the type is checked before anything is read.
 */
export async function openRegularFile(file: string): Promise<OpenedFile> {
  const handle = await fsp.open(file, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  let stats: BigIntStats;
  try {
    stats = await handle.stat({ bigint: true });
  } catch (err) {
    await handle.close();
    throw err;
  }
  if (stats.isFile()) return { handle, stats };
  await handle.close();
  throw Object.assign(new Error(`${file} is not a regular file`), { code: 'EFTYPE', path: file });
}

/** An error saying a path is not there: nothing at its name, or a file where one of its directories should be. */
export function isAbsentPath(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** The error of openRegularFile when the file is gone or is no longer a regular file. */
export function isGoneAsFile(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'EFTYPE';
}

/**
 * A regular file's whole content as UTF-8 (see openRegularFile), refused with
 * EFBIG, before it is read, when it holds more than `limit` bytes.
 */
export async function readRegularFile(file: string, limit: number): Promise<string> {
  return (await readRegularFileStats(file, limit)).text;
}

/** readRegularFile, with the stat taken just after opening. */
export async function readRegularFileStats(file: string, limit: number): Promise<{ text: string; stats: BigIntStats }> {
  const { handle, stats } = await openRegularFile(file);
  try {
    if (stats.size > BigInt(limit)) {
      const most = limit >= 1 << 20 ? `${limit / (1 << 20)} MiB` : `${limit / 1024} KiB`;
      throw Object.assign(new Error(`${file} holds more than ${most}`), { code: 'EFBIG', path: file });
    }
    return { text: await handle.readFile('utf8'), stats };
  } finally {
    await handle.close();
  }
}

/**
 * syncfs(2) on the file system that holds `dir`, through coreutils' `sync -f`
 * (Node has no binding for it). False where it could not be done (not Linux,
 * no `sync`, or one without -f): the caller syncs file by file instead.
 */
export function syncFileSystem(dir: string): Promise<boolean> {
  if (process.platform !== 'linux') return Promise.resolve(false);
  return new Promise((resolve) => {
    const child = spawn('sync', ['-f', dir], { stdio: 'ignore' });
    child.on('error', () => resolve(false));
    child.on('close', (code) => resolve(code === 0));
  });
}
