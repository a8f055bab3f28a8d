/**
 * A process that uses a local repository's lock (or one small document) with the real code, for tests
 * of several processes at once. Run: node lock-worker.js MODE REPO ARGS... It prints one line of JSON
 * for each thing it says (`{"held": true}`, and at its end what it found).
 *
 * announce REPO COUNT        holds the lock as a prune and says which points it removes, COUNT times
 *                            back to back (as a prune's announcement and lease refreshes rewrite it);
 *                            then waits for its stdin to close, and releases the lock.
 * look REPO STOP             reads the lock as a reader does until the file STOP exists.
 * take REPO STOP             tries to take the lock as a backup until the file STOP exists.
 * race REPO GO NAME KEYS...  once the file GO exists, replaces each key that holds "stale" with NAME.
 * rewrite REPO KEY [N]       rewrites KEY (which holds {"seq":0}) with the next seq over the last it
 *                            wrote, back to back, until a replace finds it changed. With N, it stops
 *                            itself (SIGSTOP) just before its Nth rename onto KEY, saying {"paused": N}:
 *                            after its replace compared what KEY holds, before it writes; it ends
 *                            there, saying {"wrote": N} if that replace went through.
 * switch SLOTS LEASE [HOST]  takes the switch lock of the target whose slots are SLOTS as a failover, with
 *                            a lease of LEASE ms, as if it ran on HOST; says {"held": true}, then refreshes
 *                            it until its stdin closes, looks whether it still holds it, saying {"lost":
 *                            message} or {"lost": null}, and releases it.
 * prune REPO KEEP            prunes as `prune --keep-full KEEP`, stopping itself (SIGSTOP) as it deletes its
 *                            first point's manifest, saying {"paused": key}; says at its end {"removed": ids}
 *                            or {"error": message, "exitCode": code}.
 * read REPO POINT            reads POINT as a restore does, registered as a reader: says {"reading": true} once
 *                            registered, reads the point's manifest when its stdin closes, and says {"read":
 *                            true} or {"error": message, "exitCode": code}.
 * switch-killed SLOTS LEASE  takes the switch lock of SLOTS as `switch` does, says {"held": true}, and stops
 *                            itself (SIGSTOP) at its first lease refresh, just before it renames the new lock
 *                            over the old one, saying {"paused": 1}: for the test to kill it there.
 * churn SLOTS STOP           until the file STOP exists, takes the switch lock of SLOTS, makes the file
 *                            SLOTS/inside with O_EXCL while it holds it (EEXIST: another holds it too),
 *                            removes it, and leaves the lock as a killed failover does (its pid gone), for
 *                            the next to take over; says {taken, busy, both} (both: found another inside).
 */
import { existsSync, renameSync, writeFileSync, writeSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import * as path from 'node:path';
import { hostname } from 'node:os';
import { LifeboatError, LockedError } from '../../src/errors.js';
import { acquireLock, readLock } from '../../src/core/lock.js';
import { LocalStorage } from '../../src/storage/local.js';
import { lockTarget } from '../../src/core/slots.js';
import { Repository } from '../../src/core/repository.js';
import { prune } from '../../src/core/prune.js';
import { whileReading } from '../../src/core/lock.js';
import { keys } from '../../src/format/manifest.js';

const [mode, root, ...args] = process.argv.slice(2);
const storage = new LocalStorage(root!);
const say = (what: unknown) => process.stdout.write(`${JSON.stringify(what)}\n`);
/** Whether the file STOP exists, looked at every `every` calls. */
const stopper = (file: string, every: number) => {
  let calls = 0;
  return () => ++calls % every === 0 && existsSync(file);
};

switch (mode) {
  case 'announce': {
    const lock = await acquireLock(storage, 'prune');
    say({ held: true });
    let lost: string | undefined;
    let announced = 0;
    try {
      for (; announced < Number(args[0]); announced++) await lock.announce([`point-${announced}`, `point-${announced + 1}`]);
    } catch (err) {
      lost = (err as Error).message;
    }
    say({ announced, lost });
    process.stdin.resume();
    await new Promise((resolve) => process.stdin.on('end', resolve));
    await lock.release();
    break;
  }
  case 'look': {
    const stop = stopper(args[0]!, 20);
    let looks = 0;
    let missing = 0;
    while (!stop()) {
      looks++;
      if (!(await readLock(storage))) missing++;
    }
    say({ looks, missing });
    break;
  }
  case 'take': {
    const stop = stopper(args[0]!, 5);
    let tries = 0;
    let taken = 0;
    while (!stop()) {
      tries++;
      try {
        const lock = await acquireLock(storage, 'backup');
        taken++;
        await lock.release();
      } catch (err) {
        if (!(err instanceof LockedError)) throw err;
      }
    }
    say({ tries, taken });
    break;
  }
  case 'race': {
    const [go, name, ...keys] = args;
    while (!existsSync(go!)) await new Promise((r) => setTimeout(r, 1));
    const won: string[] = [];
    for (const key of keys) if (await storage.putDocument(key, Buffer.from(name!), { ifMatch: Buffer.from('stale') })) won.push(key);
    say({ won });
    break;
  }
  case 'rewrite': {
    const key = args[0]!;
    const pauseAt = args[1] === undefined ? undefined : Number(args[1]);
    if (pauseAt !== undefined) pauseBeforeRename(path.join(root!, ...key.split('/')), pauseAt);
    let last = Buffer.from(JSON.stringify({ seq: 0 }));
    say({ started: true });
    for (let seq = 1; ; seq++) {
      const next = Buffer.from(JSON.stringify({ seq }));
      if (!(await storage.putDocument(key, next, { ifMatch: last }))) {
        say({ refused: seq });
        break;
      }
      last = next;
      if (seq === pauseAt) {
        say({ wrote: seq });
        break;
      }
    }
    break;
  }
  case 'switch': {
    if (args[1] !== undefined) {
      const os = createRequire(import.meta.url)('node:os') as typeof import('node:os');
      os.hostname = () => args[1]!;
      syncBuiltinESMExports();
    }
    const unlock = await lockTarget(root!, 'prod', 'failover', Number(args[0]));
    say({ held: true });
    process.stdin.resume();
    await new Promise((resolve) => process.stdin.on('end', resolve));
    say({ lost: await unlock.check().then(() => null, (err: Error) => err.message) });
    await unlock();
    break;
  }
  case 'switch-killed': {
    pauseBeforeRename(path.join(root!, '.lifeboat-switch.lock'), 1);
    await lockTarget(root!, 'prod', 'failover', Number(args[0]));
    say({ held: true });
    process.stdin.resume();
    await new Promise((resolve) => process.stdin.on('end', resolve));
    break;
  }
  case 'churn': {
    const stop = stopper(args[0]!, 1);
    const inside = path.join(root!, 'inside');
    const lockFile = path.join(root!, '.lifeboat-switch.lock');
    let taken = 0;
    let busy = 0;
    let both = 0;
    while (!stop()) {
      try {
        await lockTarget(root!, 'prod', 'failover');
      } catch (err) {
        if (!(err instanceof LockedError)) throw err;
        busy++;
        continue;
      }
      taken++;
      const alone = await fsp.writeFile(inside, String(process.pid), { flag: 'wx' }).then(() => true, () => false);
      if (alone) await fsp.rm(inside);
      else both++;
      // Left as a failover killed while it held the lock leaves it: its pid (no process has it) gone.
      const left = `${lockFile}.left-${process.pid}`;
      writeFileSync(left, JSON.stringify({ host: hostname(), pid: 2 ** 22 + 4242, command: 'failover', startedAt: new Date().toISOString() }));
      renameSync(left, lockFile);
    }
    say({ taken, busy, both });
    process.exit(0);
  }
  case 'prune': {
    const remove = storage.delete.bind(storage);
    let paused = false;
    storage.delete = async (keys: readonly string[]) => {
      if (!paused && keys.some((k) => k.startsWith('points/'))) {
        paused = true;
        writeSync(1, `${JSON.stringify({ paused: keys[0] })}\n`);
        process.kill(process.pid, 'SIGSTOP');
      }
      return remove(keys);
    };
    try {
      const result = await prune(await Repository.open(storage), { policy: { keepFull: Number(args[0]) } });
      say({ removed: result.remove.map((d) => d.id) });
    } catch (err) {
      say({ error: (err as Error).message, exitCode: (err as LifeboatError).exitCode });
    }
    break;
  }
  case 'read': {
    try {
      await whileReading(storage, 'restore', { reporter: {}, warnings: [], reads: [args[0]!] }, async () => {
        say({ reading: true });
        process.stdin.resume();
        await new Promise((resolve) => process.stdin.on('end', resolve));
        await storage.getDocument(keys.point(args[0]!));
      });
      say({ read: true });
    } catch (err) {
      say({ error: (err as Error).message, exitCode: (err as LifeboatError).exitCode });
    }
    break;
  }
  default:
    throw new Error(`unknown mode ${mode}`);
}

/**
 * Stops this process just before its `nth` rename onto `file`. The storage code imports node:fs/promises
 * as a namespace, which Node keeps in step with the module's object once told to.
 */
function pauseBeforeRename(file: string, nth: number): void {
  const promises = (createRequire(import.meta.url)('node:fs') as typeof import('node:fs')).promises;
  const rename = promises.rename;
  let renames = 0;
  promises.rename = async (from, to) => {
    if (to === file && ++renames === nth) {
      writeSync(1, `${JSON.stringify({ paused: nth })}\n`);
      process.kill(process.pid, 'SIGSTOP');
    }
    return rename(from, to);
  };
  syncBuiltinESMExports();
}
