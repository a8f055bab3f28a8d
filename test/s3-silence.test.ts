/**
 * An S3 endpoint that takes connections and answers nothing, from the start or
 * from the middle of a backup: each request tried again is reported on stderr
 * as it happens, the command ends within the time s3.timeout allows, and its
 * error names the endpoint that answered nothing. An endpoint given as http://
 * for a server that speaks TLS, or the other way round, is named as such, and
 * so is one that answers with web pages.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { runCli } from '../src/cli/main.js';
import { Repository } from '../src/core/repository.js';
import { S3Storage } from '../src/storage/s3.js';
import { lifeboat, spawnLifeboat } from './helpers/cli.js';
import { createTestBucket, startS3Server, type S3TestServer } from './helpers/s3server.js';
import { prng, tempDir, writeRandomFile } from './helpers/tree.js';

/** A regression waits minutes for the SDK's own limits: fail instead. */
const BOUNDED = { timeout: 90_000 };

interface Relay {
  endpoint: string;
  /** From now on nothing passes, either way, on any connection; connections are still taken. */
  silence(): void;
  /** Connections taken so far. */
  connections(): number;
  /** HTTP requests sent to it so far, passed on or not. */
  requests(): number;
  silenced(): boolean;
  stop(): Promise<void>;
}

/**
 * A TCP relay to `upstream` on 127.0.0.1 (without one, a server that takes connections and never
 * answers). `silenceWhen` sees what each client sends and may silence the relay before it passes on:
 * every connection, or (`scope`) only the one that sent it.
 */
async function startRelay(upstream?: string, silenceWhen: (sent: string) => boolean = () => false, scope: 'all' | 'connection' = 'all'): Promise<Relay> {
  const target = upstream === undefined ? undefined : new URL(upstream);
  let silent = target === undefined;
  let silencedOne = false;
  let connections = 0;
  let requests = 0;
  const sockets = new Set<net.Socket>();
  const keep = (socket: net.Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
  };
  const server = net.createServer((client) => {
    connections++;
    keep(client);
    const server = target && net.connect(Number(target.port), target.hostname);
    if (server) keep(server);
    let connectionSilent = false;
    client.on('data', (chunk: Buffer) => {
      requests += chunk.toString('latin1').match(/(?:^|\r\n)(?:GET|PUT|POST|DELETE|HEAD) \/\S* HTTP\/1\.1\r\n/g)?.length ?? 0;
      if (!silent && !connectionSilent && silenceWhen(chunk.toString('latin1'))) {
        silencedOne = true;
        if (scope === 'all') silent = true;
        else connectionSilent = true;
      }
      if (!silent && !connectionSilent) server?.write(chunk);
    });
    server?.on('data', (chunk: Buffer) => {
      if (!silent && !connectionSilent) client.write(chunk);
    });
    server?.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    silence: () => (silent = true),
    connections: () => connections,
    requests: () => requests,
    silenced: () => silent || silencedOne,
    stop: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Runs the installed program, with when each line of its stderr arrived, in ms from the start. */
async function timedRun(args: string[], options: { cwd: string; env: NodeJS.ProcessEnv; started?: (child: ChildProcess) => void }) {
  const started = Date.now();
  const child = spawnLifeboat(args, options);
  options.started?.(child);
  const out: Buffer[] = [];
  const lines: { at: number; text: string }[] = [];
  let pending = '';
  child.stdout!.on('data', (c: Buffer) => out.push(c));
  child.stderr!.on('data', (c: Buffer) => {
    const parts = (pending + c.toString('utf8')).split('\n');
    pending = parts.pop()!;
    for (const text of parts) lines.push({ at: Date.now() - started, text });
  });
  const code = await new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? 128)));
  if (pending) lines.push({ at: Date.now() - started, text: pending });
  return { code, ms: Date.now() - started, stdout: Buffer.concat(out).toString('utf8'), lines, stderr: lines.map((l) => l.text).join('\n') };
}

/** timedRun, sent SIGINT as soon as `ready` says so (looked at every 50 ms); `interruptedAt` stays 0 if it never does. */
async function interruptedRun(args: string[], options: { cwd: string; env: NodeJS.ProcessEnv }, ready: () => boolean) {
  let interruptedAt = 0;
  const r = await timedRun(args, {
    ...options,
    started: (child) => {
      const poll = setInterval(() => {
        if (!ready()) return;
        clearInterval(poll);
        interruptedAt = Date.now();
        child.kill('SIGINT');
      }, 50);
      child.on('close', () => clearInterval(poll));
    },
  });
  return { ...r, interruptedAt };
}

const credentials = { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test-secret' };

describe('an S3 endpoint that takes connections and answers nothing', () => {
  let silent: Relay;
  let dir: string;
  before(async () => {
    silent = await startRelay();
    dir = await tempDir('lifeboat-s3-silence-');
    await fsp.writeFile(path.join(dir, 'lifeboat.yaml'), `repository: s3://ml-backups/fraud-detector\ns3:\n  endpoint: ${silent.endpoint}\n  timeout: 1s\n`);
  });
  after(async () => {
    await silent?.stop();
    if (dir) await fsp.rm(dir, { recursive: true, force: true });
  });

  it('reports each retry on stderr as it happens, and ends with exit 1 naming the endpoint that answered nothing', BOUNDED, async () => {
    const r = await timedRun(['--json', 'list'], { cwd: dir, env: credentials });
    assert.equal(r.code, 1, r.stderr);
    const retries = r.lines.filter((l) => / S3 get config\.json: the server at .* answered nothing within 1 s; trying again \(attempt \d of 6\)$/.test(l.text));
    assert.deepEqual(
      retries.map((l) => /attempt (\d)/.exec(l.text)![1]),
      ['2', '3', '4', '5', '6'],
      r.stderr,
    );
    assert.ok(retries[0]!.at < r.ms - 3000, `the first retry was reported at ${retries[0]!.at} ms, the command ended at ${r.ms} ms`);
    assert.ok(r.ms < 30_000, `ended after ${r.ms} ms`);
    // The sixth request in a row without an answer: the server is taken for silent, and said to be.
    const error = `get config.json failed after 6 attempts: the server at ${silent.endpoint} stopped answering: 6 requests in a row got no answer (the last waited 1 s, s3.timeout)`;
    assert.ok(r.stderr.includes(`lifeboat: ${error}\n  check that ${silent.endpoint} is the S3 endpoint`), r.stderr);
    assert.match(r.stderr, /then run the command again: .* the next one takes over and removes; a server that is only slow needs a longer s3\.timeout$/);
    assert.doesNotMatch(r.stderr, /unexpected error|TimeoutError|@smithy/);
    // stdout holds the one document, whatever went to stderr meanwhile.
    const document = JSON.parse(r.stdout);
    assert.equal(document.ok, false);
    assert.equal(document.error.message, error);
    assert.equal(document.error.exitCode, 1);
  });

  it('with --quiet says only the final error; with --log-format json the retries are JSON lines', BOUNDED, async () => {
    const quiet = await lifeboat(['--quiet', 'list'], { cwd: dir, env: credentials });
    assert.equal(quiet.code, 1, quiet.stderr);
    assert.doesNotMatch(quiet.stderr, /trying again/);
    assert.match(quiet.stderr, /stopped answering/);
    const logged = await lifeboat(['--log-format', 'json', 'list'], { cwd: dir, env: credentials });
    assert.equal(logged.code, 1, logged.stderr);
    const lines = logged.stderr.trim().split('\n').map((l) => JSON.parse(l) as { level: string; code?: string; msg: string });
    assert.deepEqual(lines.map((l) => l.level), ['info', 'info', 'info', 'info', 'info', 'error']);
    assert.ok(lines.slice(0, 5).every((l) => l.code === 'storage-retry'), logged.stderr);
  });

  it('Ctrl-C stops a command waiting for the answer at once (exit 130), without waiting out s3.timeout', BOUNDED, async () => {
    const patient = path.join(dir, 'patient.yaml');
    await fsp.writeFile(patient, `repository: s3://ml-backups/fraud-detector\ns3:\n  endpoint: ${silent.endpoint}\n  timeout: 60s\n`);
    const before = silent.connections();
    // Once its request has reached the server: on a loaded host Node may take seconds to start.
    const r = await interruptedRun(['--config', patient, 'list'], { cwd: dir, env: credentials }, () => silent.connections() > before);
    assert.equal(r.code, 130, r.stderr);
    assert.ok(r.interruptedAt > 0);
    assert.ok(Date.now() - r.interruptedAt < 30_000, `stopped ${Date.now() - r.interruptedAt} ms after SIGINT`);
    assert.equal(r.stderr, 'lifeboat: SIGINT received, stopping cleanly…\nlifeboat: interrupted');
  });

  it('a Ctrl-C that came before the first request (while Node started on a loaded host) sends none, and stops at once (exit 130)', BOUNDED, async () => {
    const patient = path.join(dir, 'patient.yaml');
    await fsp.writeFile(patient, `repository: s3://ml-backups/fraud-detector\ns3:\n  endpoint: ${silent.endpoint}\n  timeout: 60s\n`);
    const before = silent.connections();
    const interrupted = new AbortController();
    interrupted.abort();
    const stderr = new PassThrough();
    let said = '';
    stderr.on('data', (c: Buffer) => (said += c.toString()));
    const code = await runCli(['node', 'lifeboat', '--config', patient, 'list'], { stdout: new PassThrough(), stderr, env: { ...credentials, PATH: process.env.PATH }, cwd: dir }, interrupted.signal);
    assert.equal(code, 130, said);
    // A request sent after the interruption would have been let run, to s3.timeout against this server.
    assert.equal(silent.connections(), before);
  });

  it('refuses an s3.timeout that is not a duration (exit 2, naming the key)', async () => {
    const bad = path.join(dir, 'bad.yaml');
    await fsp.writeFile(bad, `repository: s3://ml-backups/fraud-detector\ns3:\n  endpoint: ${silent.endpoint}\n  timeout: 0s\n`);
    const r = await lifeboat(['--config', bad, 'list'], { cwd: dir, env: credentials });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /s3\.timeout/);
  });
});

describe('an endpoint given with the wrong scheme', () => {
  const helpers = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../test/helpers');
  const list = (endpoint: string) => lifeboat(['--repo', 's3://ml-backups/fraud-detector', '--s3-endpoint', endpoint, 'list'], { env: credentials });

  it('http:// for a server that speaks TLS: the server closed the connection, and the hint says to try https://', BOUNDED, async (t) => {
    const server = https.createServer({ cert: await fsp.readFile(path.join(helpers, 'loopback-tls.crt')), key: await fsp.readFile(path.join(helpers, 'loopback-tls.key')) }, (_req, res) => res.end());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise((resolve) => server.close(resolve)));
    const address = `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    const r = await list(`http://${address}`);
    assert.equal(r.code, 1, r.stderr);
    assert.ok(
      r.stderr.endsWith(
        `lifeboat: get config.json failed after 6 attempts: the server at http://${address} closed the connection without answering\n` +
          `  if it serves HTTPS, give the endpoint as https://${address}; else check that it is the S3 endpoint and that its server is up\n`,
      ),
      r.stderr,
    );
    assert.doesNotMatch(r.stderr, /TimeoutError|socket hang up/);
  });

  it('https:// for a server in clear: refused at once, and the hint says to try http://', BOUNDED, async (t) => {
    const server = http.createServer((_req, res) => res.end());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise((resolve) => server.close(resolve)));
    const address = `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    const r = await list(`https://${address}`);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stderr, `lifeboat: get config.json failed: the server at https://${address} does not speak TLS\n  if it serves plain HTTP, give the endpoint as http://${address}\n`);
  });
});

describe('an endpoint that is a web server, not S3', () => {
  const webServer = async (t: { after: (fn: () => Promise<unknown>) => void }, status: number) => {
    let requests = 0;
    const server = http.createServer((_req, res) => {
      requests++;
      res.writeHead(status, { 'content-type': 'text/html; charset=utf-8' });
      res.end('<!doctype html><html><body><h1>Welcome</h1></body></html>');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise((resolve) => server.close(resolve)));
    return { endpoint: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, requests: () => requests };
  };
  const run = (endpoint: string, command: string[]) => lifeboat(['--repo', 's3://ml-backups/fraud-detector', '--s3-endpoint', endpoint, ...command], { env: credentials });

  for (const status of [200, 404, 403]) {
    it(`a web page with HTTP ${status} is named as such at once (exit 2), not taken for a damaged or missing repository`, BOUNDED, async (t) => {
      const web = await webServer(t, status);
      for (const command of [['list'], ['init']]) {
        const r = await run(web.endpoint, command);
        assert.equal(r.code, 2, r.stderr);
        assert.match(r.stderr, new RegExp(`the server at ${web.endpoint} answered with a web page \\(HTTP ${status}, text/html\\), not as an S3 server`));
        assert.match(r.stderr, /is the address of the S3 API/);
        assert.doesNotMatch(r.stderr, /not valid JSON|no lifeboat repository|credentials/);
      }
      assert.equal(web.requests(), 2, 'one request each, none retried');
    });
  }

  it("a proxy's web page for a status worth retrying (502) is retried as one", BOUNDED, async (t) => {
    const web = await webServer(t, 502);
    const r = await run(web.endpoint, ['list']);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /get config\.json failed after 6 attempts: HTTP 502/);
    assert.equal(web.requests(), 6);
  });
});

describe('a real S3 server that stops answering in the middle of a backup', () => {
  let server: S3TestServer;
  let bucket: string;
  let dir: string;
  before(async () => {
    server = await startS3Server();
    bucket = await createTestBucket(server);
    dir = await tempDir('lifeboat-s3-silence-');
  });
  after(async () => {
    await server?.stop();
    if (dir) await fsp.rm(dir, { recursive: true, force: true });
  });

  // Each request, and each of its attempts, had waited out its own time limit: a backup took 31 s here (with limits
  // of 1 s), about 7 minutes with the default ones. Once as many requests in a row as a request makes attempts got no
  // answer, the server is taken for silent: the rest fail at once, a clean-up's too, and the command ends.
  for (const command of ['backup', 'restore', 'verify'] as const) {
    it(`a ${command} whose server goes silent ends with exit 1 once 6 requests in a row got no answer, sending no more`, BOUNDED, async (t) => {
      const src = path.join(dir, `silent-${command}`);
      await fsp.mkdir(src);
      const rand = prng(11);
      for (let i = 0; i < 3; i++) await writeRandomFile(path.join(src, `shard-${i}.bin`), 256 * 1024, rand);
      const prefix = `silent-${command}`;
      await fsp.writeFile(path.join(dir, `${prefix}-direct.yaml`), `repository: s3://${bucket}/${prefix}\ns3:\n  endpoint: ${server.endpoint}\n`);
      const direct = (...args: string[]) => lifeboat(['--config', `${prefix}-direct.yaml`, ...args], { cwd: dir, env: server.env });
      assert.equal((await direct('init')).code, 0);
      if (command !== 'backup') assert.equal((await direct('backup', src, '--type', 'full')).code, 0);
      // The server answers until the first request for a volume, and then nothing more.
      const relay = await startRelay(server.endpoint, (sent) => sent.startsWith(`${command === 'backup' ? 'PUT' : 'GET'} /${bucket}/${prefix}/data/`));
      t.after(() => relay.stop());
      let sentBefore = -1;
      const poll = setInterval(() => {
        if (sentBefore < 0 && relay.silenced()) sentBefore = relay.requests();
      }, 5);
      t.after(() => clearInterval(poll));
      await fsp.writeFile(path.join(dir, `${prefix}-relayed.yaml`), `repository: s3://${bucket}/${prefix}\ns3:\n  endpoint: ${relay.endpoint}\n  timeout: 1s\n  idleTimeout: 1s\n`);
      const args = command === 'backup' ? ['backup', src, '--type', 'full'] : command === 'restore' ? ['restore', 'latest', '--target', `${prefix}-restored`] : ['verify', '--read-data'];
      const r = await timedRun(['--config', `${prefix}-relayed.yaml`, '--json', ...args], { cwd: dir, env: server.env });
      clearInterval(poll);
      t.diagnostic(`${command} against a server gone silent: exit ${r.code} after ${r.ms} ms, ${relay.requests() - sentBefore} requests sent after: ${r.stderr.split('\n').join(' | ')}`);
      assert.ok(relay.silenced(), `the server went silent during the ${command}`);
      assert.equal(r.code, 1, r.stderr);
      // The request that met the silence and its retries (a ranged read of a volume resumed may count one more), none after.
      assert.ok(relay.requests() - sentBefore <= 7, `${relay.requests() - sentBefore} requests sent after the server went silent: ${r.stderr}`);
      const volume = /(?:put|get) (data\/\d{8}-\d{6}-\d{3}F\/v\d{6}\.tar)/.exec(r.stderr)?.[1];
      assert.ok(volume, r.stderr);
      assert.match(r.stderr, new RegExp(` S3 (put|get) ${volume.replace(/\./g, '\\.')}: .*trying again \\(attempt 2 of 6\\)`));
      assert.match(
        r.stderr,
        new RegExp(`lifeboat: .*the server at ${relay.endpoint} stopped answering: [67] requests in a row got no answer \\(the last waited 1 s, s3\\.(timeout|idleTimeout)\\)\\n {2}check that ${relay.endpoint} is the S3 endpoint`),
      );
      assert.match(r.stderr, /then run the command again: what this run could not remove \(its lock, volumes, an incomplete upload\) the next one takes over and removes/);
      assert.doesNotMatch(r.stderr, /unexpected error/);
      const document = JSON.parse(r.stdout);
      assert.equal(document.ok, false);
      assert.equal(document.error.exitCode, 1);
      // What it left (a lock, volumes, a reader's registration), the next run takes over.
      relay.stop();
      const again = command === 'backup' ? await direct('backup', src, '--type', 'full') : command === 'restore' ? await direct('restore', 'latest', '--target', `${prefix}-restored`) : await direct('verify', '--read-data');
      assert.equal(again.code, 0, again.stderr);
    });
  }

  it('a request that gets no answer while the server answers others is retried as before, and the server is not taken for silent', BOUNDED, async (t) => {
    const direct = await S3Storage.create({ bucket, prefix: 'one-stalled', settings: { endpoint: server.endpoint, forcePathStyle: true }, env: server.env });
    await direct.putDocument('stalled.json', Buffer.from('{}'));
    await direct.putDocument('answered.json', Buffer.from('{}'));
    await direct.close();
    // Each connection that asks for stalled.json goes silent; the others pass.
    const relay = await startRelay(server.endpoint, (sent) => sent.startsWith(`GET /${bucket}/one-stalled/stalled.json`), 'connection');
    t.after(() => relay.stop());
    const storage = await S3Storage.create({
      bucket,
      prefix: 'one-stalled',
      settings: { endpoint: relay.endpoint, forcePathStyle: true },
      env: server.env,
      tuning: { answerTimeoutMs: 1000, retry: { maxAttempts: 6, baseDelayMs: 5, maxDelayMs: 20 } },
    });
    t.after(() => storage.close());
    let answered = 0;
    let stalledDone = false;
    const others = (async () => {
      while (!stalledDone) {
        await storage.getDocument('answered.json');
        answered++;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    })();
    await assert.rejects(storage.getDocument('stalled.json'), (err: Error) => {
      assert.match(err.message, new RegExp(`^get stalled\\.json failed after 6 attempts: the server at ${relay.endpoint} answered nothing within 1 s$`));
      return true;
    });
    stalledDone = true;
    await others;
    assert.ok(answered >= 5, `${answered} requests answered meanwhile`);
    // Still sent, and answered: the server was not taken for silent.
    assert.deepEqual(JSON.parse((await storage.getDocument('answered.json')).toString()), {});
  });

  it('Ctrl-C stops a backup waiting on a silent upload at once, and its clean-up still reaches the server', BOUNDED, async (t) => {
    const src = path.join(dir, 'weights');
    await fsp.mkdir(src);
    const rand = prng(12);
    for (let i = 0; i < 3; i++) await writeRandomFile(path.join(src, `shard-${i}.bin`), 256 * 1024, rand);
    const direct = `repository: s3://${bucket}/interrupted\ns3:\n  endpoint: ${server.endpoint}\n`;
    await fsp.writeFile(path.join(dir, 'direct.yaml'), direct);
    assert.equal((await lifeboat(['--config', 'direct.yaml', 'init'], { cwd: dir, env: server.env })).code, 0);
    // Only the connection that carries the first volume goes silent: the clean-up's requests pass.
    const relay = await startRelay(server.endpoint, (sent) => sent.startsWith(`PUT /${bucket}/interrupted/data/`), 'connection');
    t.after(() => relay.stop());
    await fsp.writeFile(path.join(dir, 'relayed.yaml'), `repository: s3://${bucket}/interrupted\ns3:\n  endpoint: ${relay.endpoint}\n  timeout: 60s\n  idleTimeout: 60s\n`);
    const { interruptedAt, ...r } = await interruptedRun(['--config', 'relayed.yaml', 'backup', src, '--type', 'full'], { cwd: dir, env: server.env }, () => relay.silenced());
    const stoppedAfter = Date.now() - interruptedAt;
    t.diagnostic(`interrupted backup: exit ${r.code}, ${stoppedAfter} ms after SIGINT: ${r.stderr.split('\n').join(' | ')}`);
    assert.ok(interruptedAt > 0, 'the upload went silent');
    assert.equal(r.code, 130, r.stderr);
    // Well within the 60 s the silent upload would otherwise be given, six times over.
    assert.ok(stoppedAfter < 30_000, `stopped ${stoppedAfter} ms after SIGINT`);
    assert.doesNotMatch(r.stderr, /trying again|unexpected error/);
    // The clean-up ran: no point, the lock released, and the next backup goes through at once.
    const list = await lifeboat(['--config', 'direct.yaml', '--json', 'list'], { cwd: dir, env: server.env });
    assert.deepEqual(list.json(), []);
    const next = await lifeboat(['--config', 'direct.yaml', 'backup', src, '--type', 'full'], { cwd: dir, env: server.env });
    assert.equal(next.code, 0, next.stderr);
    assert.doesNotMatch(next.stderr, /waiting|lock/);
    assert.equal((await lifeboat(['--config', 'direct.yaml', 'verify'], { cwd: dir, env: server.env })).code, 0);
  });

  // The clean-up's requests (a batch delete of the volumes or of a reader's registration, the journal) had each
  // waited for an answer on their own: a minute for a delete (s3.idleTimeout), request after request.
  for (const command of ['backup', 'restore'] as const) {
    it(`Ctrl-C stops a ${command} whose server went silent altogether after one s3.timeout of clean-up, not a wait per request`, BOUNDED, async (t) => {
      const src = path.join(dir, `${command}-models`);
      await fsp.mkdir(src);
      const rand = prng(13);
      for (let i = 0; i < 3; i++) await writeRandomFile(path.join(src, `shard-${i}.bin`), 256 * 1024, rand);
      const prefix = `gone-${command}`;
      await fsp.writeFile(path.join(dir, `${prefix}-direct.yaml`), `repository: s3://${bucket}/${prefix}\ns3:\n  endpoint: ${server.endpoint}\n`);
      const direct = (...args: string[]) => lifeboat(['--config', `${prefix}-direct.yaml`, ...args], { cwd: dir, env: server.env });
      assert.equal((await direct('init')).code, 0);
      if (command === 'restore') assert.equal((await direct('backup', src, '--type', 'full')).code, 0);
      // From the first request for a volume on, nothing passes on any connection: the server is gone.
      const volumes = `${command === 'backup' ? 'PUT' : 'GET'} /${bucket}/${prefix}/data/`;
      const relay = await startRelay(server.endpoint, (sent) => sent.startsWith(volumes), 'all');
      t.after(() => relay.stop());
      await fsp.writeFile(path.join(dir, `${prefix}-relayed.yaml`), `repository: s3://${bucket}/${prefix}\ns3:\n  endpoint: ${relay.endpoint}\n  timeout: 2s\n  idleTimeout: 45s\n`);
      const args = command === 'backup' ? ['backup', src, '--type', 'full'] : ['restore', 'latest', '--target', `${prefix}-restored`];
      let sentBefore = 0;
      const ready = () => {
        sentBefore = relay.requests();
        return relay.silenced();
      };
      const { interruptedAt, ...r } = await interruptedRun(['--config', `${prefix}-relayed.yaml`, ...args], { cwd: dir, env: server.env }, ready);
      const stoppedAfter = Date.now() - interruptedAt;
      t.diagnostic(`interrupted ${command}: exit ${r.code}, ${stoppedAfter} ms after SIGINT: ${r.stderr.split('\n').join(' | ')}`);
      assert.ok(interruptedAt > 0, 'the server went silent');
      assert.equal(r.code, 130, r.stderr);
      // One s3.timeout (2 s) for the first clean-up request, and no other sent after it; without the bound, 45 s for each delete.
      assert.equal(relay.requests() - sentBefore, 1, 'requests sent after the interruption');
      assert.ok(stoppedAfter < 20_000, `stopped ${stoppedAfter} ms after SIGINT`);
      assert.doesNotMatch(r.stderr, /trying again|unexpected error/);
      // What the clean-up left is said, once: the requests not sent are not reported as the first one's failure.
      const cutShort = r.lines.filter((l) => l.text.includes('answered nothing to the clean-up after the interruption'));
      assert.equal(cutShort.length, 1, r.stderr);
      assert.match(
        cutShort[0]!.text,
        new RegExp(`warning: the server at ${relay.endpoint} answered nothing to the clean-up after the interruption \\(it waited 2 s, s3\\.timeout\\): the rest of the clean-up was not sent, and what it would have removed \\(.*\\) stays until the next backup or prune takes it over and removes it`),
      );
      assert.match(r.stderr, /lifeboat: interrupted$/);
      // What the clean-up could not remove, the next run on this host does.
      const again = command === 'backup' ? await direct('backup', src, '--type', 'full') : await direct('restore', 'latest', '--target', `${prefix}-restored`);
      assert.equal(again.code, 0, again.stderr);
      assert.equal((await direct('verify')).code, 0);
    });
  }
});

/**
 * A TCP relay to `upstream` whose answers on a connection slow to `bytesPerSecond` once a request
 * on it matches `slowWhen`; `slowedAt` is when the first such request passed (0 before).
 */
async function startSlowRelay(upstream: string, slowWhen: (sent: string) => boolean, bytesPerSecond: number) {
  const target = new URL(upstream);
  const sockets = new Set<net.Socket>();
  let slowedAt = 0;
  const server = net.createServer((client) => {
    const up = net.connect(Number(target.port), target.hostname);
    for (const socket of [client, up]) {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => undefined);
    }
    let slow = false;
    client.on('data', (chunk: Buffer) => {
      if (!slow && slowWhen(chunk.toString('latin1'))) {
        slow = true;
        slowedAt ||= Date.now();
      }
      up.write(chunk);
    });
    up.on('data', (chunk: Buffer) => {
      client.write(chunk);
      if (!slow) return;
      up.pause();
      setTimeout(() => up.resume(), Math.ceil((chunk.length / bytesPerSecond) * 1000));
    });
    up.on('close', () => client.destroy());
    client.on('close', () => up.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    slowedAt: () => slowedAt,
    /** Forgets the slow request seen so far. */
    reset: () => {
      slowedAt = 0;
    },
    stop: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

describe('Ctrl-C while an answer is still arriving from S3', () => {
  let server: S3TestServer;
  let dir: string;
  let relay: Awaited<ReturnType<typeof startSlowRelay>>;
  before(async () => {
    server = await startS3Server();
    const bucket = await createTestBucket(server);
    dir = await tempDir('lifeboat-s3-slow-');
    // Some thousands of files make a manifest of about a MiB, which the relay then takes many seconds to pass on.
    const src = path.join(dir, 'tokenizers');
    for (let d = 0; d < 10; d++) {
      await fsp.mkdir(path.join(src, `vocab-${d}`), { recursive: true });
      for (let i = 0; i < 300; i++) await fsp.writeFile(path.join(src, `vocab-${d}`, `merges-of-a-long-tokenizer-name-${i}.json`), `${d}/${i}`);
    }
    await fsp.writeFile(path.join(dir, 'direct.yaml'), `repository: s3://${bucket}/slow\ns3:\n  endpoint: ${server.endpoint}\n`);
    assert.equal((await lifeboat(['--config', 'direct.yaml', 'init'], { cwd: dir, env: server.env })).code, 0);
    const backup = await lifeboat(['--config', 'direct.yaml', 'backup', src, '--type', 'full'], { cwd: dir, env: server.env });
    assert.equal(backup.code, 0, backup.stderr);
    relay = await startSlowRelay(server.endpoint, (sent) => sent.startsWith(`GET /${bucket}/slow/points/`), 64 * 1024);
    await fsp.writeFile(path.join(dir, 'relayed.yaml'), `repository: s3://${bucket}/slow\ns3:\n  endpoint: ${relay.endpoint}\n`);
  });
  after(async () => {
    await relay?.stop();
    await server?.stop();
    if (dir) await fsp.rm(dir, { recursive: true, force: true });
  });

  for (const command of [['restore', 'latest', '--target', 'restored'], ['verify', '--read-data'], ['show', 'latest']]) {
    it(`stops ${command[0]} reading a manifest at once (exit 130), not when the manifest has arrived`, BOUNDED, async () => {
      relay.reset();
      const ready = () => relay.slowedAt() > 0 && Date.now() - relay.slowedAt() >= 500;
      const { interruptedAt, ...r } = await interruptedRun(['--config', 'relayed.yaml', ...command], { cwd: dir, env: server.env }, ready);
      const stoppedAfter = Date.now() - interruptedAt;
      assert.ok(interruptedAt > 0, `the manifest was being read: ${r.stderr}`);
      assert.equal(r.code, 130, r.stderr);
      // The whole manifest takes about 15 s to arrive.
      assert.ok(stoppedAfter < 3000, `stopped ${stoppedAfter} ms after SIGINT`);
      assert.equal(r.stderr, 'lifeboat: SIGINT received, stopping cleanly…\nlifeboat: interrupted');
      assert.deepEqual((await fsp.readdir(dir)).filter((name) => name.includes('restored')), [], 'no target or staging directory');
    });
  }
});
