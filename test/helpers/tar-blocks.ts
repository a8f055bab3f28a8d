/** One header block of a tar archive, found by a walk independent of lifeboat's reader. */
export interface TarBlock {
  /** Offset of the header block. */
  header: number;
  /** The type flag ('0' a file, 'x' a pax header, 'L' a GNU long name, ...); '' for a zero block. */
  type: string;
  size: number;
  /** Offsets of the body, of the zero padding after it, and of the next header. */
  body: number;
  padding: number;
  next: number;
  /** Extended headers and long names, which belong to the entry that follows them. */
  meta: boolean;
}

/** Walks an archive's header blocks in order, zero blocks included. */
export function* tarBlocks(archive: Buffer): Generator<TarBlock> {
  for (let pos = 0; pos + 512 <= archive.length; ) {
    const block = archive.subarray(pos, pos + 512);
    const zero = block.every((b) => b === 0);
    const size = zero ? 0 : parseInt(block.subarray(124, 136).toString('latin1').replace(/\0.*$/s, '').trim() || '0', 8);
    const type = zero ? '' : String.fromCharCode(block[156]!);
    const next = pos + 512 + Math.ceil(size / 512) * 512;
    yield { header: pos, type, size, body: pos + 512, padding: pos + 512 + size, next, meta: 'xgLK'.includes(type) && type !== '' };
    pos = next;
  }
}
