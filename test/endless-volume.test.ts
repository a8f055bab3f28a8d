import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as http from 'node:http';
import * as path from 'node:path';
import type { AddressInfo } from 'node:net';
import { Header } from 'tar';
import { lifeboat } from './helpers/cli.js';
import { exists, smallDeployment } from './helpers/repo.js';

// A hostile S3 endpoint answers the GET of one volume with its real bytes and then well-formed
// tar entries without end. verify --read-data and restore must stop at the volume's recorded
// size with an integrity failure; the timeout turns a regression into a failure, not a hang.
const BOUNDED = { timeout: 60_000 };

/** One 1 MiB file entry after another, for as long as anyone reads. */
function endlessEntries(res: http.ServerResponse, count: { bytes: number }): void {
  const body = Buffer.alloc(1 << 20, 0x5a);
  let n = 0;
  const pump = () => {
    while (!res.destroyed) {
      const h = new Header({ path: `models/more-${n++}.bin`, type: 'File', size: body.length, mode: 0o644, mtime: new Date(0) });
      h.encode();
      count.bytes += 512 + body.length;
      res.write(h.block!);
      if (!res.write(body)) return void res.once('drain', pump);
    }
  };
  pump();
}

/**
 * Just enough of S3 to read a repository kept in `root` (bucket `bkt`): listings, HEAD, GET with
 * ranges, and PUT/DELETE of small objects. GETs of `endless` never end.
 */
async function readOnlyishS3(root: string, endless: string): Promise<{ endpoint: string; sent: { bytes: number }; stop: () => Promise<void> }> {
  const sent = { bytes: 0 };
  const fileOf = (key: string) => path.join(root, ...key.split('/'));
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://stub');
    const key = decodeURIComponent(url.pathname.replace(/^\/bkt\/?/, ''));
    try {
      if (req.method === 'GET' && url.searchParams.get('list-type') === '2') {
        const prefix = url.searchParams.get('prefix') ?? '';
        const keys = (await fsp.readdir(root, { recursive: true, withFileTypes: true }))
          .filter((d) => d.isFile())
          .map((d) => path.relative(root, path.join(d.parentPath ?? d.path, d.name)).split(path.sep).join('/'))
          .filter((k) => k.startsWith(prefix))
          .sort();
        const contents = await Promise.all(keys.map(async (k) => `<Contents><Key>${k}</Key><Size>${(await fsp.stat(fileOf(k))).size}</Size></Contents>`));
        res.setHeader('content-type', 'application/xml');
        res.end(`<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>bkt</Name><KeyCount>${keys.length}</KeyCount><IsTruncated>false</IsTruncated>${contents.join('')}</ListBucketResult>`);
        return;
      }
      if (req.method === 'GET' && url.searchParams.has('uploads')) {
        res.setHeader('content-type', 'application/xml');
        res.end(`<?xml version="1.0" encoding="UTF-8"?><ListMultipartUploadsResult><Bucket>bkt</Bucket><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>`);
        return;
      }
      if (req.method === 'PUT') {
        const chunks: Buffer[] = [];
        for await (const c of req) chunks.push(c as Buffer);
        await fsp.mkdir(path.dirname(fileOf(key)), { recursive: true });
        await fsp.writeFile(fileOf(key), Buffer.concat(chunks));
        res.setHeader('etag', '"stub"');
        res.end();
        return;
      }
      if (req.method === 'DELETE') {
        await fsp.rm(fileOf(key), { force: true });
        res.statusCode = 204;
        res.end();
        return;
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.statusCode = 501;
        res.end();
        return;
      }
      let data: Buffer;
      try {
        data = await fsp.readFile(fileOf(key));
      } catch {
        res.statusCode = 404;
        res.setHeader('content-type', 'application/xml');
        res.end(req.method === 'HEAD' ? undefined : `<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>`);
        return;
      }
      res.setHeader('etag', '"stub"');
      res.setHeader('last-modified', new Date(0).toUTCString());
      if (req.method === 'HEAD') {
        res.setHeader('content-length', data.length);
        res.end();
        return;
      }
      const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
      const start = range ? Number(range[1]) : 0;
      if (key === endless) {
        // The volume's bytes without its end-of-archive blocks, then entries without end.
        res.writeHead(range ? 206 : 200, { 'content-type': 'application/octet-stream' });
        res.write(data.subarray(start, Math.max(start, data.length - 1024)));
        endlessEntries(res, sent);
        return;
      }
      const end = range && range[2] ? Math.min(Number(range[2]), data.length - 1) : data.length - 1;
      if (range) res.setHeader('content-range', `bytes ${start}-${end}/${data.length}`);
      res.writeHead(range ? 206 : 200, { 'content-type': 'application/octet-stream', 'content-length': end - start + 1 });
      res.end(data.subarray(start, end + 1));
    } catch (err) {
      res.statusCode = 500;
      res.end(String(err));
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const sockets = new Set<import('node:net').Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    sent,
    stop: () => {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

async function hostileEndpoint(t: import('node:test').TestContext) {
  const d = await smallDeployment();
  const id = (await lifeboat(['--repo', d.repo, '--json', 'backup', d.src])).json().id as string;
  const manifest = JSON.parse(await fsp.readFile(path.join(d.repo, 'points', `${id}.json`), 'utf8'));
  const volume = manifest.volumes[0] as { key: string; size: number };
  const stub = await readOnlyishS3(d.repo, volume.key);
  t.after(() => stub.stop());
  const args = ['--repo', 's3://bkt/', '--s3-endpoint', stub.endpoint, '--s3-path-style'];
  const env = { AWS_ACCESS_KEY_ID: 'stub', AWS_SECRET_ACCESS_KEY: 'stub', AWS_REGION: 'us-east-1' };
  return { ...d, id, volume, stub, args, env };
}

test("verify --read-data stops at a volume's recorded size when the server streams it without end (exit 3)", BOUNDED, async (t) => {
  const h = await hostileEndpoint(t);
  const honest = await lifeboat([...h.args, '--json', 'list'], { env: h.env });
  assert.equal(honest.code, 0, honest.stderr);
  assert.deepEqual(honest.json().map((p: { id: string }) => p.id), [h.id]);

  const run = await lifeboat([...h.args, '--json', 'verify', '--read-data'], { env: h.env });
  assert.equal(run.code, 3, run.stderr);
  const problems = run.json().problems as { path: string; detail: string }[];
  assert.ok(problems.some((p) => p.path === h.volume.key && /more than the \d+ bytes recorded/.test(p.detail)), JSON.stringify(problems));
  assert.ok(h.stub.sent.bytes < 64 << 20, `${h.stub.sent.bytes >> 20} MiB were sent before verify gave up`);
});

test("restore stops at a volume's recorded size when the server streams it without end (exit 3, target untouched)", BOUNDED, async (t) => {
  const h = await hostileEndpoint(t);
  const target = path.join(h.work, 'restored');
  const run = await lifeboat([...h.args, 'restore', 'latest', '--target', target], { env: h.env });
  assert.equal(run.code, 3, run.stderr);
  assert.match(run.stderr, /more than the \d+ bytes recorded/);
  assert.equal(await exists(target), false);
  assert.ok(h.stub.sent.bytes < 64 << 20, `${h.stub.sent.bytes >> 20} MiB were sent before restore gave up`);
});
