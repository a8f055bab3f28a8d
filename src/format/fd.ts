import * as fs from 'node:fs';

// File operations on plain descriptors through callbacks. For thousands of small files,
// FileHandle objects and their promises cost more CPU than the reading and writing.

export const openFd = (file: string, flags: number | string, mode?: number): Promise<number> =>
  new Promise((resolve, reject) => fs.open(file, flags, mode, (err, fd) => (err ? reject(err) : resolve(fd))));

/** Reads into the start of `into` from `position`; resolves with how many bytes were read. */
export const readFd = (fd: number, into: Uint8Array, position: number): Promise<number> =>
  new Promise((resolve, reject) => fs.read(fd, into, 0, into.length, position, (err, n) => (err ? reject(err) : resolve(n))));

/** Writes all of `data` from `position`. */
export async function writeFd(fd: number, data: Uint8Array, position: number): Promise<void> {
  for (let at = 0; at < data.length; ) {
    at += await new Promise<number>((resolve, reject) => fs.write(fd, data, at, data.length - at, position + at, (err, n) => (err ? reject(err) : resolve(n))));
  }
}

export const statFd = (fd: number): Promise<fs.BigIntStats> =>
  new Promise((resolve, reject) => fs.fstat(fd, { bigint: true }, (err, stats) => (err ? reject(err) : resolve(stats))));

export const syncFd = (fd: number, dataOnly = false): Promise<void> =>
  new Promise((resolve, reject) => (dataOnly ? fs.fdatasync : fs.fsync)(fd, (err) => (err ? reject(err) : resolve())));

/** Closes `fd`. Closing a written file can report a write error; a caller that only read may ignore it. */
export const closeFd = (fd: number): Promise<void> => new Promise((resolve, reject) => fs.close(fd, (err) => (err ? reject(err) : resolve())));
