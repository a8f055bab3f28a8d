import { decodeDocument, rawChecksumMatches, shapeProblem } from './document.js';
import { entryValidator, manifestValidator, type Manifest, type ManifestEntry } from './manifest.js';

/**
 * A manifest read from its document, its entries parsed and checked some
 * hundred at a time as they come in the bytes.
 *
 * JSON.parse of a whole manifest of 100,000 files held its text (36 MB as a
 * string), the tree parsed from it and the schema's checked copy of that tree
 * at once, on top of the document's bytes: some 100 MB more than the manifest
 * kept, at the peak of a restore's memory. Here the members other than
 * `entries` are parsed one by one, and `entries` a slice of its elements at a
 * time, each element checked by the entry schema (entrySchema, compiled) as it
 * is parsed and only the checked copy kept, so what is held at once is the
 * bytes, the entries checked so far and one slice.
 *
 * The same documents are accepted, with the same result, as by JSON.parse and
 * the manifest schema (decodeDocument): the document is cut at the places
 * JSON's grammar puts between members and elements, each piece is parsed by
 * JSON.parse itself, and the separators between them are checked here, so the
 * pieces make a valid document only when the whole is one. Anything this
 * reading does not take as it is (a member named twice, a checksum not written
 * last, a document written indented by older versions, and every document that
 * is refused) is read again the whole way, which says why it is refused in the
 * same words as before.
 */
export function decodeManifest(data: Buffer, what: string, options: ReadOptions = {}): Manifest {
  const manifest = (data.length >= READ_IN_SLICES_FROM ? readInSlices(data, options) : undefined) ?? decodeDocument(data, manifestValidator(), what);
  if (options.entries === false) manifest.entries = [];
  return manifest;
}

export interface ReadOptions {
  /**
   * false: every entry is checked, none kept (the result has none), for a reader that needs the rest
   * of the manifest only, such as the volumes of a point whose files another point refers to.
   */
  entries?: boolean;
}

/**
 * Smaller manifests (some 11,000 entries) are parsed whole, as they take little memory either way: in a
 * fresh process, the entry schema's compiling and the checks of entries one by one before they are
 * optimised took 80 to 105 ms of CPU for 2,000 entries, where parsing them whole took 45 to 73.
 */
const READ_IN_SLICES_FROM = 4 << 20;

/** Elements of `entries` parsed together: a slice of some 100 KB. */
const SLICE_ELEMENTS = 256;
const SLICE_BYTES = 128 << 10;
/** As the manifest schema bounds them. */
const MAX_ENTRIES = 50_000_000;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const COLON = 0x3a;
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;

/** Not parsed: what parseSlice returns for a piece JSON.parse refuses. */
const REFUSED = Symbol('refused');

/** The manifest, or undefined when the document is not one this reading takes (decodeDocument then decides). Exported for the tests. */
export function readInSlices(data: Buffer, options: ReadOptions = {}): Manifest | undefined {
  // What decodeDocument refuses before it parses, and a checksum it would have to compute over a serialisation.
  if (shapeProblem(data) !== undefined || !rawChecksumMatches(data)) return undefined;
  const members: Record<string, unknown> = {};
  const seen = new Set<string>();
  let entries: ManifestEntry[] | undefined;
  let at = skipSpace(data, 0);
  if (data[at] !== OPEN_OBJECT) return undefined;
  at = skipSpace(data, at + 1);
  for (;;) {
    if (data[at] !== QUOTE) return undefined;
    const keyEnd = stringEnd(data, at);
    if (keyEnd < 0) return undefined;
    const key = parseSlice(data, at, keyEnd);
    // A member named twice is one JSON.parse keeps the last of; __proto__ is one an object literal would not keep as a member.
    if (typeof key !== 'string' || seen.has(key) || key === '__proto__') return undefined;
    seen.add(key);
    at = skipSpace(data, keyEnd);
    if (data[at] !== COLON) return undefined;
    at = skipSpace(data, at + 1);
    if (key === 'entries') {
      if (data[at] !== OPEN_ARRAY) return undefined;
      const read = readEntries(data, at, options.entries !== false);
      if (!read) return undefined;
      ({ entries, end: at } = read);
    } else {
      const end = valueEnd(data, at);
      if (end < 0) return undefined;
      const value = parseSlice(data, at, end);
      if (value === REFUSED) return undefined;
      // The checksum, last, was checked over the raw bytes; decodeDocument leaves it out of what the schema checks.
      if (key !== 'checksum') members[key] = value;
      at = end;
    }
    at = skipSpace(data, at);
    if (data[at] === COMMA) {
      at = skipSpace(data, at + 1);
      continue;
    }
    if (data[at] !== CLOSE_OBJECT) return undefined;
    at = skipSpace(data, at + 1);
    break;
  }
  if (at !== data.length || entries === undefined) return undefined;
  // Every other member is checked by the manifest schema, the entries (each checked already) standing aside.
  members.entries = [];
  const checked = manifestValidator().safeParse(members);
  if (!checked.success) return undefined;
  checked.data.entries = entries;
  return checked.data;
}

/** The elements of the entries array that starts at `start`, each checked (and kept, with `keep`), and where the array ends; undefined when one is refused. */
function readEntries(data: Buffer, start: number, keep: boolean): { entries: ManifestEntry[]; end: number } | undefined {
  const validator = entryValidator();
  const entries: ManifestEntry[] = [];
  // The same source and point names over and over: one string each, not one per entry.
  const names = new Map<string, string>();
  const once = (name: string) => {
    const known = names.get(name);
    if (known !== undefined) return known;
    names.set(name, name);
    return name;
  };
  let count = 0;
  let at = skipSpace(data, start + 1);
  if (data[at] === CLOSE_ARRAY) return { entries, end: at + 1 };
  for (;;) {
    const sliceStart = at;
    let sliceEnd: number;
    let elements = 0;
    let last = false;
    for (;;) {
      const end = valueEnd(data, at);
      if (end < 0) return undefined;
      elements++;
      at = skipSpace(data, end);
      if (data[at] === CLOSE_ARRAY) {
        sliceEnd = end;
        last = true;
        break;
      }
      if (data[at] !== COMMA) return undefined;
      at = skipSpace(data, at + 1);
      if (elements === SLICE_ELEMENTS || end - sliceStart >= SLICE_BYTES) {
        sliceEnd = end;
        break;
      }
    }
    const parsed = parseSlice(data, sliceStart, sliceEnd, true);
    if (!Array.isArray(parsed) || parsed.length !== elements) return undefined;
    for (const element of parsed) {
      const checked = validator.safeParse(element);
      if (!checked.success || ++count > MAX_ENTRIES) return undefined;
      if (!keep) continue;
      const entry = checked.data;
      entry.source = once(entry.source);
      if (entry.ref) entry.ref.point = once(entry.ref.point);
      entries.push(entry);
    }
    if (last) return { entries, end: at + 1 };
  }
}

/** JSON.parse of the bytes from `start` to `end` (as the elements of an array, with `elements`); REFUSED when it is not JSON. */
function parseSlice(data: Buffer, start: number, end: number, elements = false): unknown {
  try {
    const text = data.toString('utf8', start, end);
    return JSON.parse(elements ? `[${text}]` : text);
  } catch {
    return REFUSED;
  }
}

function skipSpace(data: Buffer, at: number): number {
  for (;;) {
    const c = data[at];
    if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) return at;
    at++;
  }
}

/** Where the string whose opening quote is at `at` ends (after its closing quote); -1 when it does not. */
function stringEnd(data: Buffer, at: number): number {
  let end = data.indexOf(QUOTE, at + 1);
  for (;;) {
    if (end < 0) return -1;
    // A quote after an odd run of backslashes is escaped.
    let slashes = 0;
    while (data[end - 1 - slashes] === BACKSLASH) slashes++;
    if (slashes % 2 === 0) return end + 1;
    end = data.indexOf(QUOTE, end + 1);
  }
}

/**
 * Where the JSON value that starts at `at` ends, as far as the bytes tell: the close of its object or
 * array, of its string, or the next delimiter after a number or literal. JSON.parse says whether the
 * bytes up to there are a value; -1 when there is no end.
 */
function valueEnd(data: Buffer, at: number): number {
  const c = data[at];
  if (c === QUOTE) return stringEnd(data, at);
  if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
    let depth = 0;
    for (let i = at; i < data.length; i++) {
      const b = data[i];
      if (b === QUOTE) {
        const end = stringEnd(data, i);
        if (end < 0) return -1;
        i = end - 1;
      } else if (b === OPEN_OBJECT || b === OPEN_ARRAY) depth++;
      else if ((b === CLOSE_OBJECT || b === CLOSE_ARRAY) && --depth === 0) return i + 1;
    }
    return -1;
  }
  let i = at;
  for (; i < data.length; i++) {
    const b = data[i];
    if (b === COMMA || b === CLOSE_OBJECT || b === CLOSE_ARRAY || b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09) break;
  }
  return i;
}
