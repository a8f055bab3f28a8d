import { randomBytes } from 'node:crypto';
import * as os from 'node:os';
import * as z from 'zod';
import { IntegrityError, UsageError } from '../errors.js';
import { decodeDocument, encodeDocument } from '../format/document.js';
import { keys as layout, repositoryConfigSchema, type EncryptionConfig, type RepositoryConfig } from '../format/manifest.js';
import { DATA_KEY_SIZE, SEGMENT_SIZE } from '../crypto/segments.js';
import { DEFAULT_KDF, checkKdf, deriveKey, unwrapKey, wrapKey, type KdfParams } from '../crypto/kdf.js';
import { EncryptedStorage } from '../storage/encrypted.js';
import { SMALL_DOCUMENT_BYTES, isNotFound, type Storage } from '../storage/storage.js';
import { quoteName } from '../format/quote.js';

export const KEYS_PREFIX = 'keys/';
/** Key files tried at most when unlocking, so a flooded keys/ cannot stall an open. */
export const MAX_KEYS = 64;

const KEY_ID = /^[0-9a-f]{16}$/;
const base64 = z.string().max(1024).regex(/^[A-Za-z0-9+/]*={0,2}$/);

const keyFileSchema = z.object({
  format: z.literal('lifeboat-key'),
  version: z.literal(1),
  id: z.string().regex(KEY_ID),
  createdAt: z.string().max(64),
  host: z.string().max(256),
  kdf: z.object({ name: z.literal('scrypt'), logN: z.number().int(), r: z.number().int(), p: z.number().int() }),
  salt: base64,
  /** AES-256-GCM nonce and sealed data key (key, then tag). */
  nonce: base64,
  wrappedKey: base64,
  /** The repository whose data key it wraps (keys made before it was recorded have none). */
  repository: z.string().regex(/^[0-9a-f]{32}$/).optional(),
  /** The key a `key passwd` made it to replace. */
  replaces: z.string().regex(KEY_ID).optional(),
});
export type KeyFile = z.infer<typeof keyFileSchema>;

export interface KeyInfo {
  id: string;
  createdAt: string;
  host: string;
  kdf: KdfParams;
}

/** Where a password came from, for one that opens no key: what to call it, and what to check. */
export interface PasswordOrigin {
  what: string;
  hint: string;
}

/** Where a password comes from; `given` says one was supplied without asking. */
export interface PasswordSource {
  given: boolean;
  get(purpose: string): Promise<string>;
  /** Where the password `get` returned came from. */
  origin?(): PasswordOrigin | undefined;
}

const UNKNOWN_ORIGIN: PasswordOrigin = { what: 'it', hint: 'check the password source' };

export interface UnlockedKey {
  keyId: string;
  dataKey: Buffer;
  kdf: KdfParams;
}

export const keyObject = (id: string) => `${KEYS_PREFIX}${id}.json`;
/** The id a key file's name gives: what `key remove` takes. */
export const keyIdOf = (object: string) => object.slice(KEYS_PREFIX.length, -'.json'.length);

/** What the data key is wrapped with: the repository and the key file, so a key file cannot be moved. */
function wrapContext(repositoryId: string, keyId: string): string {
  return `lifeboat key v1 ${repositoryId} ${keyId}`;
}

export function newDataKey(): Buffer {
  return randomBytes(DATA_KEY_SIZE);
}

export function encryptionSettings(kdf: KdfParams = DEFAULT_KDF): EncryptionConfig {
  checkKdf(kdf);
  return { algorithm: 'aes-256-gcm', segmentSize: SEGMENT_SIZE, kdf: { ...kdf } };
}

/**
 * Writes a new key file that opens `dataKey` with `password`; returns its id. `replaces` names the
 * key a `key passwd` is about to remove, so that one killed in between is said by key list and verify.
 */
export async function addKey(storage: Storage, repositoryId: string, dataKey: Buffer, password: string, kdf: KdfParams, replaces?: string): Promise<string> {
  if (password.length === 0) throw new UsageError('the password is empty');
  // One more than an unlock reads would keep every command, key remove too, from opening the repository.
  let files = 0;
  for await (const { key } of storage.list(KEYS_PREFIX)) if (key.endsWith('.json')) files++;
  if (files >= MAX_KEYS) {
    throw new UsageError(`the repository has ${files} key files under ${KEYS_PREFIX}, the most lifeboat reads; another would keep every command from opening it`, {
      hint: 'remove a key first: `lifeboat key list` shows them, `lifeboat key remove ID` removes one',
    });
  }
  const id = randomBytes(8).toString('hex');
  const salt = randomBytes(32);
  const kek = await deriveKey(password, salt, kdf);
  const wrapped = wrapKey(kek, dataKey, wrapContext(repositoryId, id));
  kek.fill(0);
  const file: KeyFile = {
    format: 'lifeboat-key',
    version: 1,
    id,
    createdAt: new Date().toISOString(),
    host: os.hostname(),
    kdf: { name: 'scrypt', logN: kdf.logN, r: kdf.r, p: kdf.p },
    salt: salt.toString('base64'),
    nonce: wrapped.nonce.toString('base64'),
    wrappedKey: wrapped.sealed.toString('base64'),
    repository: repositoryId,
    ...(replaces === undefined ? {} : { replaces }),
  };
  if (!(await storage.putDocument(keyObject(id), encodeDocument(file), { ifAbsent: true }))) {
    throw new IntegrityError(`key ${id} already exists`);
  }
  return id;
}

/** The key files of a repository: those that may open it, damaged ones, and those of another repository. */
export interface FoundKeys {
  keys: KeyFile[];
  damaged: string[];
  /** Key files that say they wrap another repository's data key: left by an init that lost a race to create it, or copied in. */
  foreign: KeyFile[];
}

/** Every readable key file of the repository `repositoryId`; damaged and foreign ones are returned separately, never trusted. */
export async function readKeys(storage: Storage, repositoryId: string): Promise<FoundKeys> {
  const found: KeyFile[] = [];
  const damaged: string[] = [];
  const foreign: KeyFile[] = [];
  let seen = 0;
  for await (const { key, size } of storage.list(KEYS_PREFIX)) {
    if (!key.endsWith('.json')) continue;
    if (++seen > MAX_KEYS) {
      throw new IntegrityError(`the repository has more than ${MAX_KEYS} key files under ${KEYS_PREFIX}, more than lifeboat reads, which can mean tampering`, {
        hint: `move the key files you do not need (each names its creation time and host) out of ${KEYS_PREFIX} by hand, keeping a copy, until at most ${MAX_KEYS} are left`,
      });
    }
    if (size > 64 * 1024) {
      damaged.push(key);
      continue;
    }
    try {
      const file = decodeDocument(await storage.getDocument(key), keyFileSchema, `key ${key}`);
      if (keyObject(file.id) !== key) throw new IntegrityError(`${key} describes key ${file.id}`);
      (file.repository === undefined || file.repository === repositoryId ? found : foreign).push(file);
    } catch (err) {
      if (isNotFound(err)) continue;
      if (!(err instanceof IntegrityError)) throw err;
      damaged.push(key);
    }
  }
  return { keys: found, damaged, foreign };
}

/** What is said of a damaged key file (key list, verify; `subject` when the notice names it already): it opens nothing, and what to do. */
export function damagedKeyMessage(object: string, subject = object): string {
  const id = keyIdOf(object);
  return `${subject} is damaged and cannot open the repository${/^[0-9a-f]+$/.test(id) ? `; put it back from a copy to keep its password, or \`lifeboat key remove ${id}\` removes it` : ''}`;
}

/** What is said of a key file of another repository (`subject` as for damagedKeyMessage). */
export function foreignKeyMessage(file: KeyFile, subject = keyObject(file.id)): string {
  return `${subject} is a key of another repository (${file.repository}) and cannot open this one, as an init that lost a race to create this repository, or a copy from elsewhere, leaves one; \`lifeboat key remove ${file.id}\` removes it`;
}

/** A warning of key list and verify about the key files: one that opens nothing, or a key a `key passwd` did not finish replacing. */
export interface KeyNotice {
  code: 'key-damaged' | 'key-foreign' | 'key-passwd-unfinished';
  path: string;
  message: string;
}

/** What key list and verify say of `found`; `subject` names the file in the message when given (verify names it in `path`). */
export function keyNotices({ keys, damaged, foreign }: FoundKeys, subject?: string): KeyNotice[] {
  const ids = new Set(keys.map((k) => k.id));
  return [
    ...damaged.map((path): KeyNotice => ({ code: 'key-damaged', path, message: damagedKeyMessage(path, subject) })),
    ...foreign.map((file): KeyNotice => ({ code: 'key-foreign', path: keyObject(file.id), message: foreignKeyMessage(file, subject) })),
    ...keys
      .filter((k) => k.replaces !== undefined && ids.has(k.replaces))
      .map((k): KeyNotice => ({
        code: 'key-passwd-unfinished',
        path: keyObject(k.replaces!),
        message: `a key passwd that did not finish was replacing key ${k.replaces} with key ${k.id}: both passwords open the repository until \`lifeboat key remove ${k.replaces}\`, run with the new password, removes it`,
      })),
  ];
}

export function keyInfo(file: KeyFile): KeyInfo {
  return { id: file.id, createdAt: file.createdAt, host: file.host, kdf: { ...file.kdf } };
}

async function tryKey(file: KeyFile, repositoryId: string, password: string): Promise<Buffer | undefined> {
  try {
    checkKdf(file.kdf);
  } catch {
    return undefined;
  }
  const kek = await deriveKey(password, Buffer.from(file.salt, 'base64'), file.kdf);
  try {
    return unwrapKey(kek, { nonce: Buffer.from(file.nonce, 'base64'), sealed: Buffer.from(file.wrappedKey, 'base64') }, wrapContext(repositoryId, file.id));
  } finally {
    kek.fill(0);
  }
}

/**
 * Why an encrypted repository has no key to try, and what can be done: an init that an older
 * lifeboat left cut short after its config holds no backup and is made again; a repository whose
 * key files were removed cannot be read without a copy of one.
 */
async function noKey(storage: Storage, repositoryId: string, { damaged, foreign }: FoundKeys): Promise<Error> {
  if (foreign.length) {
    const others = foreign.map((k) => keyObject(k.id));
    return new IntegrityError(
      `the encrypted repository at ${quoteName(storage.location)} has no key of its own under ${KEYS_PREFIX}: ${others.join(', ')} ${others.length === 1 ? 'is a key' : 'are keys'} of another repository, not of ${repositoryId} that ${layout.config} names${damaged.length ? ` (damaged: ${damaged.join(', ')})` : ''}`,
      { hint: `if ${layout.config} was replaced by another repository's, put this repository's back from a copy; if its key files were, put back its own` },
    );
  }
  if (damaged.length) return new IntegrityError(`the encrypted repository at ${quoteName(storage.location)} has no readable key under ${KEYS_PREFIX} (damaged: ${damaged.join(', ')})`);
  let backups = false;
  let others = false;
  for await (const { key } of storage.list('')) {
    if (key.startsWith(layout.pointsPrefix) || key.startsWith(layout.dataPrefix)) {
      backups = true;
      break;
    }
    if (key !== layout.config && !key.startsWith(KEYS_PREFIX)) others = true;
  }
  if (!backups) {
    return new UsageError(`the encrypted repository at ${quoteName(storage.location)} has no key under ${KEYS_PREFIX} and holds no backup, as an init cut short leaves it: nothing is lost`, {
      hint: `${others ? `empty ${storage.location}` : `remove ${layout.config} there`} and run \`lifeboat init --encryption aes-256-gcm\` again`,
    });
  }
  return new IntegrityError(`the encrypted repository at ${quoteName(storage.location)} has no key under ${KEYS_PREFIX}: its key files were removed, and its backups cannot be decrypted without one`, {
    hint: `put back a key file under ${KEYS_PREFIX} from a copy of the repository or of its keys; it opens the repository with its own password`,
  });
}

/** Finds the key that `password` opens among `keys`; a wrong password is a usage error (exit 2). */
async function unlockKey(storage: Storage, repositoryId: string, password: string, { keys, damaged, foreign }: FoundKeys, origin: PasswordOrigin): Promise<UnlockedKey> {
  // Cheapest first, within a budget: key files planted with the costliest parameters allowed
  // (about 40 s of scrypt each) cannot stretch a wrong password's answer to most of an hour.
  const ordered = [...keys].sort((a, b) => kdfWork(a.kdf) - kdfWork(b.kdf));
  let spent = 0;
  let tried = 0;
  for (const file of ordered) {
    if (tried > 0 && spent + kdfWork(file.kdf) > KDF_WORK_BUDGET) break;
    spent += kdfWork(file.kdf);
    tried++;
    const dataKey = await tryKey(file, repositoryId, password);
    if (dataKey) return { keyId: file.id, dataKey, kdf: { ...file.kdf } };
  }
  const untried = ordered.length - tried;
  const notes = [
    ...(untried ? [`${untried} key(s) with costlier scrypt parameters than lifeboat creates were not tried, which can mean tampering`] : []),
    ...(damaged.length ? [`${damaged.length} key file(s) are damaged and were not tried (${damaged.join(', ')})`] : []),
    ...(foreign.length ? [`${foreign.length} key file(s) of another repository were not tried (${foreign.map((k) => keyObject(k.id)).join(', ')})`] : []),
  ];
  throw new UsageError(`wrong password: none of the ${tried} key(s) tried of the repository at ${quoteName(storage.location)} opens with ${origin.what}`, {
    hint: [...notes, origin.hint].join('; '),
  });
}

/** scrypt's work for a key, in units of N × r × p. */
function kdfWork(kdf: KdfParams): number {
  return 2 ** kdf.logN * kdf.r * kdf.p;
}

/** Total scrypt work one unlock may spend: 64 keys with the default parameters (about 13 s). */
const KDF_WORK_BUDGET = MAX_KEYS * kdfWork(DEFAULT_KDF);

/** Reads the repository config without trusting it further than its schema; undefined when absent or unreadable. */
async function readConfig(storage: Storage): Promise<RepositoryConfig | undefined> {
  try {
    return decodeDocument(await storage.getDocument(layout.config, { maxBytes: SMALL_DOCUMENT_BYTES }), repositoryConfigSchema, `repository config ${layout.config}`);
  } catch (err) {
    if (isNotFound(err) || err instanceof IntegrityError) return undefined; // Repository.open says what is wrong
    throw err;
  }
}

/**
 * Prepares a repository's storage for Repository.open: an encrypted repository
 * asks for its password, unlocks a key and returns the decrypting wrapper; an
 * unencrypted one is returned as it is. Nothing is written.
 */
export async function unlockStorage(
  storage: Storage,
  password: PasswordSource,
  /** Runs once the password is had, before scrypt: where another prompt follows, it comes at once. */
  beforeUnlocking: () => Promise<void> = async () => undefined,
): Promise<{ storage: Storage; key?: UnlockedKey; config?: RepositoryConfig }> {
  const config = await readConfig(storage);
  if (!config) return { storage };
  if (!config.encryption) {
    if (password.given) {
      throw new UsageError(`the repository at ${quoteName(storage.location)} is not encrypted, but a password was given`, {
        hint: 'unset LIFEBOAT_PASSWORD, LIFEBOAT_PASSWORD_FILE and LIFEBOAT_PASSWORD_COMMAND (and drop --password-file) for this repository, or create an encrypted one with `lifeboat init --encryption aes-256-gcm`',
      });
    }
    // A repository with keys but a config that says "no encryption" was altered: writing plaintext into it would leak.
    for await (const _ of storage.list(KEYS_PREFIX)) {
      throw new IntegrityError(`the repository config ${layout.config} at ${quoteName(storage.location)} says it is not encrypted, but the repository has keys; refusing to use it`, {
        hint: 'the config may have been altered; see docs/SECURITY.md',
      });
    }
    return { storage, config };
  }
  if (config.encryption.segmentSize !== SEGMENT_SIZE) {
    throw new UsageError(`the repository at ${quoteName(storage.location)} uses ${config.encryption.segmentSize}-byte encrypted segments; this lifeboat reads ${SEGMENT_SIZE}`, { hint: 'upgrade lifeboat' });
  }
  // Before the password is asked for: a repository without a key opens with none.
  const found = await readKeys(storage, config.id);
  if (found.keys.length === 0) throw await noKey(storage, config.id, found);
  const given = await password.get(`password for ${storage.location}`);
  await beforeUnlocking();
  const key = await unlockKey(storage, config.id, given, found, password.origin?.() ?? UNKNOWN_ORIGIN);
  return { storage: new EncryptedStorage(storage, key.dataKey), key, config };
}

/** Removes a key file; refuses the key in use and the last key. */
export async function removeKey(storage: Storage, repositoryId: string, current: string, selector: string, beforeRemoving: () => Promise<void> = async () => undefined): Promise<string> {
  const { keys, damaged, foreign } = await readKeys(storage, repositoryId);
  const matches = keys.filter((k) => k.id.startsWith(selector));
  if (matches.length === 0) {
    // A damaged key file, or one of another repository, opens nothing: `key list` warns of it, and it is removed by the id in its name.
    const unusable = [...damaged, ...foreign.map((k) => keyObject(k.id))];
    const broken = selector.length === 0 ? [] : unusable.filter((name) => keyIdOf(name).startsWith(selector));
    if (broken.length > 1) throw new UsageError(`${JSON.stringify(selector)} matches ${broken.length} key files that open nothing; give more of the id`);
    if (broken.length === 1) {
      await beforeRemoving();
      await storage.delete(broken);
      return keyIdOf(broken[0]!);
    }
    throw new UsageError(`no key matches ${JSON.stringify(selector)}`, { hint: 'see `lifeboat key list`' });
  }
  if (matches.length > 1) throw new UsageError(`${JSON.stringify(selector)} matches ${matches.length} keys; give more of the id`);
  const target = matches[0]!;
  if (target.id === current) {
    throw new UsageError(`key ${target.id} is the one this password opened; refusing to remove it`, {
      hint: 'unlock with another password to remove this key, or use `lifeboat key passwd` to change this password',
    });
  }
  if (keys.length <= 1) throw new UsageError('refusing to remove the last key of the repository');
  await beforeRemoving();
  await storage.delete([keyObject(target.id)]);
  return target.id;
}
