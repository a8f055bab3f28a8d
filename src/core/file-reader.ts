import * as fs from 'node:fs';

/**
 * Files up to this size are read whole, synchronously, on the main thread. For
 * thousands of small files the threadpool's round trips, and its threads
 * contending with the main one for two cores, cost more than the reads: a
 * backup of 100,000 files of a few KiB took a third less time this way. tar
 * reads one file at a time too.
 */
export const SMALL_FILE = 1 << 20;

export interface WholeFile {
  /** Up to one byte more than the size the file was expected to have (so growth shows). */
  data: Buffer;
  /** Taken once the file was read. */
  stats: fs.BigIntStats;
}

/**
 * Reads a small file whole with one read of up to `size` + 1 bytes (a read
 * of a regular file comes up short only at its end), then stats it. It is
 * opened with O_NONBLOCK, so a named pipe or a device put there since the scan
 * cannot block the read; one is found by the stat and counts as gone.
 * Undefined when the file is gone.
 */
export function readWholeFile(file: string, size: number): WholeFile | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const data = Buffer.allocUnsafe(size + 1);
    let read: number | { err: unknown };
    try {
      read = fs.readSync(fd, data, 0, data.length, 0);
    } catch (err) {
      read = { err };
    }
    const stats = fs.fstatSync(fd, { bigint: true });
    if (!stats.isFile()) return undefined;
    if (typeof read !== 'number') throw read.err;
    return { data: data.subarray(0, read), stats };
  } finally {
    try {
      fs.closeSync(fd);
    } catch {
      // Only read: a failure to close it is of no consequence.
    }
  }
}
