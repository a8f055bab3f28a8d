/**
 * A tiny, strict XML reader for test assertions: elements, attributes, text,
 * the five predefined entities and numeric references, comments and the XML
 * declaration. Anything malformed (unclosed or mismatched tags, a bare `&` or
 * `<`, duplicate attributes, text outside the root) throws.
 */
export interface XmlElement {
  name: string;
  attrs: Record<string, string>;
  children: XmlElement[];
  text: string;
}

const NAME = /[A-Za-z_:][-A-Za-z0-9_:.]*/y;

function decode(raw: string, at: number): string {
  if (/<|&(?!(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);)/.test(raw)) throw new Error(`bad character data near offset ${at}`);
  return raw.replace(/&(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);/g, (_, e: string) => {
    if (e.startsWith('#x')) return String.fromCodePoint(parseInt(e.slice(2), 16));
    if (e.startsWith('#')) return String.fromCodePoint(Number(e.slice(1)));
    return ({ amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" } as Record<string, string>)[e]!;
  });
}

export function parseXml(text: string): XmlElement {
  let i = 0;
  const skipMisc = () => {
    for (;;) {
      const ws = /\s*/y;
      ws.lastIndex = i;
      ws.exec(text);
      i = ws.lastIndex;
      if (text.startsWith('<?', i)) {
        const end = text.indexOf('?>', i);
        if (end < 0) throw new Error('unterminated processing instruction');
        i = end + 2;
      } else if (text.startsWith('<!--', i)) {
        const end = text.indexOf('-->', i);
        if (end < 0) throw new Error('unterminated comment');
        i = end + 3;
      } else return;
    }
  };
  const name = () => {
    NAME.lastIndex = i;
    const m = NAME.exec(text);
    if (!m) throw new Error(`expected a name at offset ${i}`);
    i = NAME.lastIndex;
    return m[0];
  };
  const element = (): XmlElement => {
    if (text[i] !== '<') throw new Error(`expected < at offset ${i}`);
    i++;
    const el: XmlElement = { name: name(), attrs: {}, children: [], text: '' };
    for (;;) {
      const ws = /\s*/y;
      ws.lastIndex = i;
      const spaced = ws.exec(text)![0].length > 0;
      i = ws.lastIndex;
      if (text.startsWith('/>', i)) {
        i += 2;
        return el;
      }
      if (text[i] === '>') {
        i++;
        break;
      }
      if (!spaced) throw new Error(`expected whitespace before an attribute at offset ${i}`);
      const key = name();
      if (text[i] !== '=' || (text[i + 1] !== '"' && text[i + 1] !== "'")) throw new Error(`bad attribute ${key} at offset ${i}`);
      const quote = text[i + 1]!;
      const end = text.indexOf(quote, i + 2);
      if (end < 0) throw new Error(`unterminated attribute ${key}`);
      if (key in el.attrs) throw new Error(`duplicate attribute ${key}`);
      el.attrs[key] = decode(text.slice(i + 2, end), i);
      i = end + 1;
    }
    for (;;) {
      const lt = text.indexOf('<', i);
      if (lt < 0) throw new Error(`unclosed element ${el.name}`);
      el.text += decode(text.slice(i, lt), i);
      i = lt;
      if (text.startsWith('<!--', i)) {
        const end = text.indexOf('-->', i);
        if (end < 0) throw new Error('unterminated comment');
        i = end + 3;
      } else if (text.startsWith('</', i)) {
        i += 2;
        const closing = name();
        if (closing !== el.name) throw new Error(`</${closing}> closes <${el.name}>`);
        if (text[i] !== '>') throw new Error(`bad closing tag at offset ${i}`);
        i++;
        return el;
      } else el.children.push(element());
    }
  };
  skipMisc();
  const root = element();
  skipMisc();
  if (i !== text.length) throw new Error(`content after the root element at offset ${i}`);
  return root;
}

/** Every descendant element with this name, in document order. */
export function findAll(el: XmlElement, name: string): XmlElement[] {
  const out: XmlElement[] = [];
  for (const c of el.children) {
    if (c.name === name) out.push(c);
    out.push(...findAll(c, name));
  }
  return out;
}
