import { readFileSync } from 'node:fs';

/**
 * User and group names from /etc/passwd and /etc/group, as `tar` and `borg`
 * use them: a backup records the names of its files' owners, and a restore as
 * root on another host gives each file the local id of that name. System
 * accounts (the user a model server runs as) get whatever id was free when
 * they were created, so the same name often has another number elsewhere.
 * Directory services (LDAP, through NSS) are not consulted; ids without a
 * local name are kept as numbers.
 */
export interface Accounts {
  users: NameTable;
  groups: NameTable;
}

export interface NameTable {
  byId: Map<number, string>;
  byName: Map<string, number>;
}

/** Reads `name:password:id:…` lines; a missing or unreadable file is an empty table. */
function readTable(file: string): NameTable {
  const table: NameTable = { byId: new Map(), byName: new Map() };
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return table;
  }
  for (const line of text.split('\n')) {
    const [name, , idText] = line.split(':');
    if (!name || name.startsWith('#') || !idText || !/^\d+$/.test(idText)) continue;
    const id = Number(idText);
    // The first line of a name or id wins, as getpwnam and getpwuid read them.
    if (!table.byId.has(id)) table.byId.set(id, name);
    if (!table.byName.has(name)) table.byName.set(name, id);
  }
  return table;
}

let cached: Accounts | undefined;

/** This host's accounts, read once per process. */
export function localAccounts(): Accounts {
  cached ??= { users: readTable('/etc/passwd'), groups: readTable('/etc/group') };
  return cached;
}

/** Names of the ids in `ids` that have one in `table`, keyed by the id as text (a JSON object). */
export function namesOf(ids: Iterable<number>, table: NameTable): Record<string, string> {
  const names: Record<string, string> = {};
  for (const id of ids) {
    const name = table.byId.get(id);
    if (name !== undefined) names[String(id)] = name;
  }
  return names;
}

/**
 * Maps recorded ids to local ones: an id whose recorded name exists here
 * becomes that name's local id; any other id stays as it was.
 */
export function idMapper(recorded: Record<string, string> | undefined, table: NameTable): (id: number) => number {
  if (!recorded) return (id) => id;
  const map = new Map<number, number>();
  for (const [idText, name] of Object.entries(recorded)) {
    const local = table.byName.get(name);
    if (local !== undefined) map.set(Number(idText), local);
  }
  return (id) => map.get(id) ?? id;
}
