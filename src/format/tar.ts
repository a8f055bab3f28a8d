import { Header } from 'tar/header';
import { Pax } from 'tar/pax';
import { IntegrityError, throwIfAborted } from '../errors.js';
import { readFully, type ObjectReader } from '../storage/storage.js';
import { crc32 } from './checksum.js';

const BLOCK = 512;
const ZERO_BLOCKS = Buffer.alloc(BLOCK * 2);
/** What a torn read is padded with, a piece at a time (read only). */
export const ZERO_FILL = Buffer.alloc(1 << 20);

export interface TarHeaderFields {
  name: string;
  type: 'File' | 'Directory' | 'SymbolicLink';
  size: number;
  mode: number;
  mtime: Date;
  uid?: number;
  gid?: number;
  linkpath?: string;
  /**
   * Start the body at a multiple of 4 KiB in the volume, so it can be written
   * straight from aligned memory with direct I/O (see bodyAligningPax).
   */
  alignBody?: boolean;
}

/** Where a volume's bytes go: resolves once the chunk's memory may be reused (an ObjectWriter). */
export interface ChunkSink {
  write(chunk: Uint8Array): Promise<void>;
}

/** Where aligned bodies start: a multiple of a page, as direct I/O needs. */
const BODY_ALIGN = 4096;

/**
 * A pax extended header for an entry starting at `offset` that ends where
 * the entry's own header then ends on a 4 KiB boundary. It carries the
 * entry's pax fields, if any, and a `comment` record of the right length,
 * which every tar reader ignores (POSIX.1-2001).
 */
function bodyAligningPax(fields: ConstructorParameters<typeof Pax>[0], offset: number): Buffer {
  const bare = Buffer.byteLength(new Pax(fields).encodeBody());
  // The extended header takes one block plus `blocks` of records, the entry's header one more.
  // Eight block counts in a row cover every position in a 4 KiB page; sixteen leave room for a
  // count whose comment record cannot be made to fit exactly.
  const fewest = Math.ceil((bare + 16) / BLOCK);
  for (let blocks = fewest; blocks < fewest + (2 * BODY_ALIGN) / BLOCK; blocks++) {
    if ((offset + BLOCK * (blocks + 2)) % BODY_ALIGN !== 0) continue;
    // A record is "<length> comment=<text>\n", its length counting its own digits.
    const record = blocks * BLOCK - bare;
    const text = record - String(record).length - ' comment=\n'.length;
    if (text < 1) continue;
    const pax = new Pax({ ...fields, comment: '0'.repeat(text) }).encode();
    if ((offset + pax.length + BLOCK) % BODY_ALIGN === 0) return pax;
  }
  throw new Error(`no pax header aligns a body after offset ${offset}`);
}

/** Pieces smaller than this are gathered into one write; larger ones go out as they are. */
const GATHER_BELOW = 256 << 10;
const GATHER_SIZE = 1 << 20;

/**
 * Writes one standard (ustar + pax) tar volume into `sink`, counting bytes,
 * entries and the CRC-32 of its framing: every byte but file bodies, which
 * their files' SHA-256 covers (docs/FORMAT.md). Headers are encoded by node-tar;
 * file bodies are pushed by the caller, so it can hash them in the same pass.
 * Headers, padding and small files are gathered into large writes (two
 * buffers, so one fills while the other is written): a write per tar block
 * would cost a round trip each.
 */
export class TarVolumeWriter {
  size = 0;
  /** CRC-32 of every byte written outside file bodies. */
  framingCrc = 0;
  entries = 0;
  private gather = Buffer.allocUnsafe(GATHER_SIZE);
  private spare = Buffer.allocUnsafe(GATHER_SIZE);
  private gathered = 0;
  private writing: Promise<void> = Promise.resolve();

  constructor(private readonly sink: ChunkSink) {}

  private async push(buf: Uint8Array, isBody = false): Promise<void> {
    if (buf.length === 0) return;
    if (!isBody) this.framingCrc = crc32(buf, this.framingCrc);
    this.size += buf.length;
    if (buf.length < GATHER_BELOW) {
      if (this.gathered + buf.length > GATHER_SIZE) await this.flush();
      this.gather.set(buf, this.gathered);
      this.gathered += buf.length;
      return;
    }
    await this.flush();
    await this.writing;
    await this.sink.write(buf);
  }

  /** Starts writing what is gathered; waits only for the write before it, whose buffer it takes next. */
  private async flush(): Promise<void> {
    if (this.gathered === 0) return;
    await this.writing;
    const full = this.gather.subarray(0, this.gathered);
    [this.gather, this.spare] = [this.spare, this.gather];
    this.gathered = 0;
    this.writing = this.sink.write(full);
    // A failure is reported by the next push or by end().
    this.writing.catch(() => undefined);
  }

  /** Starts an entry; returns its index in the volume and the byte offset where it starts. */
  async header(fields: TarHeaderFields): Promise<{ index: number; offset: number }> {
    const offset = this.size;
    const name = fields.type === 'Directory' ? `${fields.name}/` : fields.name;
    const size = fields.type === 'File' ? fields.size : 0;
    // A time before 1970 is written in whole seconds: node-tar cannot encode a fraction of a negative
    // one (the base-256 field holds whole numbers) and fails on it. The manifest keeps the exact time.
    const ms = fields.mtime.getTime();
    const mtime = ms < 0 ? new Date(Math.floor(ms / 1000) * 1000) : fields.mtime;
    const header = new Header({
      path: name,
      type: fields.type,
      size,
      mode: fields.mode,
      mtime,
      uid: fields.uid ?? 0,
      gid: fields.gid ?? 0,
      linkpath: fields.linkpath,
    });
    // encode() is true when the ustar header cannot hold a field (a long or unicode name, a large size).
    const paxFields = header.encode() ? { path: name, linkpath: fields.linkpath, size, mtime, uid: fields.uid ?? 0, gid: fields.gid ?? 0 } : undefined;
    if (fields.alignBody) await this.push(bodyAligningPax(paxFields ?? { path: name }, offset));
    else if (paxFields) await this.push(new Pax(paxFields).encode());
    await this.push(header.block!);
    return { index: this.entries++, offset };
  }

  /** Appends part of a file's body (the caller hashes it); resolves once `chunk` may be reused. */
  async body(chunk: Uint8Array): Promise<void> {
    await this.push(chunk, true);
  }

  /**
   * Ends a file entry after `written` of its declared `size` bytes: zero-fills
   * a short body (the caller records it as torn) and pads to the block size.
   */
  async endEntry(written: number, size: number): Promise<void> {
    let missing = size - written;
    while (missing > 0) {
      const n = Math.min(missing, ZERO_FILL.length);
      await this.push(ZERO_FILL.subarray(0, n), true);
      missing -= n;
    }
    const pad = (BLOCK - (size % BLOCK)) % BLOCK;
    if (pad) await this.push(ZERO_BLOCKS.subarray(0, pad));
  }

  /** Writes the end-of-archive blocks and everything still gathered. */
  async end(): Promise<void> {
    await this.push(ZERO_BLOCKS);
    await this.flush();
    await this.writing;
  }
}

export interface VolumeEntry {
  index: number;
  name: string;
  type: string;
  size: number;
  mode: number;
  linkpath?: string;
  /**
   * The entry's body; read it or leave it (it is skipped). Each chunk is a
   * view of a recycled buffer, valid until the next chunk is asked for.
   */
  body: AsyncIterable<Buffer>;
}

export interface VolumeReadResult {
  size: number;
  /** CRC-32 of what `checksum` names. */
  crc32: number;
  entries: number;
}

/**
 * What a volume's recorded CRC-32 covers: every byte (volumes of manifest
 * format 1), or its framing, every byte outside file bodies (format 2).
 */
export type VolumeChecksum = 'volume' | 'framing';

export interface ReadVolumeOptions {
  signal?: AbortSignal;
  /** Index of the first entry in `source` (when it starts at an entry's offset, not at 0). */
  firstIndex?: number;
  /** Stop once the entry with this index has been handled (the rest is not read). */
  lastIndex?: number;
  /** What the returned CRC-32 covers (default: the framing). */
  checksum?: VolumeChecksum;
  /**
   * Bytes `source` should hold at most (the recorded size, less the offset it
   * starts at). More is an IntegrityError: a server that streams well-formed
   * entries without end must not keep a reader going forever.
   */
  maxSize?: number;
}

/** Size of the buffers a volume is read into: whole blocks, so no header straddles two. */
const READ_BUFFER = 1 << 20;
/** Buffers per volume being read: one with the caller, the others filled ahead. */
const READ_BUFFERS = 3;
/** Largest extended header (pax record, GNU long name) accepted, as node-tar bounds it. */
const MAX_META = 1 << 20;
const META_TYPES = new Set([
  'ExtendedHeader',
  'OldExtendedHeader',
  'GlobalExtendedHeader',
  'NextFileHasLongPath',
  'OldGnuLongPath',
  'NextFileHasLongLinkpath',
]);
const EMPTY = Buffer.alloc(0);

/**
 * Reads an object ahead into a few recycled buffers, counting its size.
 * Reads are issued one after another (an ObjectReader is sequential);
 * a buffer goes back to be refilled when the caller asks for the next one.
 */
class ReadAhead {
  size = 0;
  private readonly queue: Promise<{ buffer: Buffer; data: Buffer }>[] = [];
  private tail: Promise<unknown> = Promise.resolve();
  private held?: Buffer;
  private ended = false;
  private stopped = false;

  constructor(
    private readonly reader: ObjectReader,
    private readonly maxSize: number,
    private readonly tooLong: () => Error,
  ) {
    for (let i = 0; i < READ_BUFFERS; i++) this.schedule(Buffer.allocUnsafe(READ_BUFFER));
  }

  private schedule(buffer: Buffer): void {
    const filled = this.tail.then(() => this.fill(buffer));
    // A failed read ends the chain; next() reports it.
    this.tail = filled.catch(() => {
      this.stopped = true;
    });
    filled.catch(() => undefined);
    this.queue.push(filled);
  }

  private async fill(buffer: Buffer): Promise<{ buffer: Buffer; data: Buffer }> {
    const n = this.ended || this.stopped ? 0 : await readFully(this.reader, buffer);
    if (n < buffer.length) this.ended = true;
    this.size += n;
    if (this.size > this.maxSize) throw this.tooLong();
    return { buffer, data: buffer.subarray(0, n) };
  }

  /** The next bytes of the object (a full buffer but at its end), or undefined at the end. */
  async next(): Promise<Buffer | undefined> {
    if (this.held) this.schedule(this.held);
    this.held = undefined;
    const { buffer, data } = await this.queue.shift()!;
    if (data.length === 0) return undefined;
    this.held = buffer;
    return data;
  }

  /** Lets the read in flight finish, starts no other, and releases the object. */
  async close(): Promise<void> {
    this.stopped = true;
    await this.tail;
    await this.reader.close();
  }
}

/**
 * Reads a tar volume from `source`, calling `onEntry` for each entry in order.
 * node-tar decodes every header and extended header; this loop only frames
 * the blocks, so the volume flows through a few recycled buffers instead of a
 * stream that allocates one per chunk. Damaged headers and truncated volumes
 * are IntegrityErrors.
 */
export async function readVolume(
  source: ObjectReader,
  what: string,
  onEntry: (entry: VolumeEntry) => Promise<void>,
  options: ReadVolumeOptions = {},
): Promise<VolumeReadResult> {
  const invalid = (reason: string) => new IntegrityError(`${what} is not a readable tar volume: ${reason}`);
  const maxSize = options.maxSize ?? Number.MAX_SAFE_INTEGER;
  const feed = new ReadAhead(source, maxSize, () => new IntegrityError(`${what} holds more than the ${maxSize} bytes recorded for it`));
  let buf: Buffer = EMPTY;
  let pos = 0;
  /** Makes sure unread bytes are at hand; false at the end of the volume. */
  const refill = async (): Promise<boolean> => {
    if (pos < buf.length) return true;
    throwIfAborted(options.signal);
    const next = await feed.next();
    if (!next) return false;
    if (next.length % BLOCK !== 0) throw invalid(`it ends inside a block (${feed.size} bytes)`);
    buf = next;
    pos = 0;
    return true;
  };
  // The CRC-32 of every byte up to `pos` that the checksum covers.
  let crc = 0;
  const bodiesChecksummed = options.checksum === 'volume';
  /** Up to `max` bytes, as a view of the current buffer. */
  const take = async (max: number, isBody = false): Promise<Buffer> => {
    if (!(await refill())) throw invalid(`it ends inside an entry (${feed.size} bytes)`);
    const n = Math.min(max, buf.length - pos);
    pos += n;
    const part = buf.subarray(pos - n, pos);
    if (!isBody || bodiesChecksummed) crc = crc32(part, crc);
    return part;
  };
  const skip = async (n: number, isBody = false): Promise<void> => {
    while (n > 0) n -= (await take(n, isBody)).length;
  };

  let index = options.firstIndex ?? 0;
  let ex: Pax | undefined;
  let gex: Pax | undefined;
  let sawNullBlock = false;
  try {
    while (await refill()) {
      let header: Header;
      try {
        header = new Header(buf, pos, ex, gex);
      } catch (err) {
        throw invalid(`entry ${index} has an undecodable header (${(err as Error).message})`);
      }
      crc = crc32(buf.subarray(pos, pos + BLOCK), crc);
      pos += BLOCK;
      if (header.nullBlock) {
        if (sawNullBlock) break;
        sawNullBlock = true;
        continue;
      }
      sawNullBlock = false;
      const type = header.type;
      const isLink = type === 'Link' || type === 'SymbolicLink';
      if (!header.cksumValid) throw invalid(`the header of entry ${index} fails its checksum`);
      if (!header.path) throw invalid(`entry ${index} has no path`);
      if (isLink && !header.linkpath) throw invalid(`link entry ${index} has no target`);
      if (!isLink && !/^(Global)?ExtendedHeader$/.test(type) && header.linkpath) throw invalid(`entry ${index} has a link target but is a ${type}`);
      const size = header.size ?? 0;
      if (!Number.isSafeInteger(size) || size < 0) throw invalid(`entry ${index} declares an impossible size`);
      const padding = (BLOCK - (size % BLOCK)) % BLOCK;

      if (META_TYPES.has(type)) {
        if (size > MAX_META) throw invalid(`an extended header of ${size} bytes precedes entry ${index}`);
        const meta = Buffer.allocUnsafe(size);
        for (let got = 0; got < size; ) {
          const part = await take(size - got);
          part.copy(meta, got);
          got += part.length;
        }
        await skip(padding);
        const text = meta.toString('utf8');
        if (type === 'GlobalExtendedHeader') gex = Pax.parse(text, gex, true);
        else if (type === 'ExtendedHeader' || type === 'OldExtendedHeader') ex = Pax.parse(text, ex, false);
        else {
          ex ??= new Pax({});
          const value = text.replace(/\0.*/s, '');
          if (type === 'NextFileHasLongLinkpath') ex.linkpath = value;
          else ex.path = value;
        }
        continue;
      }

      // As node-tar's ReadEntry: an extended header's path and link target win over the
      // header's own fields (which decode() set before adding the ustar prefix).
      const name = ex?.path ?? header.path;
      const linkpath = ex?.linkpath ?? gex?.linkpath ?? header.linkpath;
      ex = undefined;
      const current = index++;
      let remain = size;
      let live = true;
      const body: AsyncIterable<Buffer> = {
        async *[Symbol.asyncIterator]() {
          while (live && remain > 0) {
            const part = await take(remain, true);
            remain -= part.length;
            yield part;
          }
        },
      };
      try {
        await onEntry({ index: current, name, type, size, mode: header.mode ?? 0, linkpath: linkpath || undefined, body });
      } finally {
        live = false;
      }
      if (options.lastIndex !== undefined && current >= options.lastIndex) return { size: feed.size, crc32: crc, entries: index };
      await skip(remain, true);
      await skip(padding);
    }
    // Whatever follows the end-of-archive blocks still counts toward the volume's size and CRC-32.
    while (await refill()) {
      crc = crc32(buf.subarray(pos), crc);
      pos = buf.length;
    }
    return { size: feed.size, crc32: crc, entries: index };
  } finally {
    await feed.close();
  }
}
