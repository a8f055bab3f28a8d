import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { smallDeployment } from './helpers/repo.js';
import { decodeDocument, encodeDocument } from '../src/format/document.js';
import { summarySchema } from '../src/format/manifest.js';

/** Three points (full, incr, incr), each changing one file. */
async function threePoints() {
  const d = await smallDeployment();
  const ids: string[] = [];
  for (const [i, type] of ['full', 'incr', 'incr'].entries()) {
    await fsp.writeFile(path.join(d.src, 'config.json'), JSON.stringify({ step: i }));
    const r = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', type]);
    assert.equal(r.code, 0, r.stderr);
    ids.push(r.json().id);
  }
  return { ...d, ids };
}

const summaryFile = (repo: string, id: string) => path.join(repo, 'summaries', `${id}.json`);
const manifestFile = (repo: string, id: string) => path.join(repo, 'points', `${id}.json`);

test('list, time selectors and prune read each point\'s summary, not its manifest; a point without one is summarised from its manifest', async (t) => {
  const d = await threePoints();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const listed = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json();
  assert.deepEqual(listed.map((p: { id: string }) => p.id), d.ids);

  // Each incremental uses the full's volume for the files it did not change.
  const summary = decodeDocument(await fsp.readFile(summaryFile(d.repo, d.ids[2]!)), summarySchema, 'summary');
  assert.deepEqual(summary.volumes, [`data/${d.ids[2]}/v000001.tar`]);
  assert.ok(summary.uses.some((u) => u.point === d.ids[0]), 'the newest incremental uses the full');

  // With the full's manifest unreadable, list still shows it, from its summary; verify reports the damage.
  const manifest = await fsp.readFile(manifestFile(d.repo, d.ids[0]!));
  await fsp.writeFile(manifestFile(d.repo, d.ids[0]!), 'not a manifest');
  const fromSummaries = await lifeboat(['--repo', d.repo, '--json', 'list']);
  assert.equal(fromSummaries.code, 0, fromSummaries.stderr);
  assert.deepEqual(fromSummaries.json(), listed);
  const verified = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  assert.equal(verified.code, 3);
  assert.ok(verified.json().problems.some((p: { kind: string; point: string }) => p.kind === 'manifest-unreadable' && p.point === d.ids[0]));
  await fsp.writeFile(manifestFile(d.repo, d.ids[0]!), manifest);

  // Without summaries (a repository written before them), everything is read from the manifests, with the same result.
  await fsp.rm(path.join(d.repo, 'summaries'), { recursive: true });
  assert.deepEqual((await lifeboat(['--repo', d.repo, '--json', 'list'])).json(), listed);
  const at = new Date(Date.parse(listed[1].completedAt) + 1).toISOString();
  const shown = await lifeboat(['--repo', d.repo, '--json', 'show', at]);
  assert.equal(shown.code, 0, shown.stderr);
  assert.equal(shown.json().id, d.ids[1]);
  const kept = await lifeboat(['--repo', d.repo, '--json', 'prune', '--keep-full', '1', '--dry-run']);
  assert.equal(kept.code, 0, kept.stderr);
  assert.deepEqual(kept.json().keep.map((p: { id: string }) => p.id).sort(), [...d.ids].sort());
  assert.deepEqual(kept.json().objects, []);
  const clean = await lifeboat(['--repo', d.repo, '--json', 'verify', '--read-data']);
  assert.equal(clean.code, 0, clean.stdout);

  // The next backup writes the summaries the older points lack, once.
  const next = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'incr']);
  assert.equal(next.code, 0, next.stderr);
  for (const id of [...d.ids, next.json().id]) {
    const written = decodeDocument(await fsp.readFile(summaryFile(d.repo, id)), summarySchema, 'summary');
    assert.equal(written.id, id);
  }
  assert.deepEqual((await lifeboat(['--repo', d.repo, '--json', 'list'])).json().slice(0, 3), listed);
  assert.equal((await lifeboat(['--repo', d.repo, 'verify'])).code, 0);
});

test('verify reports a summary that disagrees with its manifest or is damaged; a summary of no point is a leftover the next backup removes', async (t) => {
  const d = await threePoints();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const file = summaryFile(d.repo, d.ids[1]!);
  const original = await fsp.readFile(file);

  // Well-formed, correctly checksummed, and wrong: it would let prune delete a volume the point needs.
  const lying = { ...decodeDocument(original, summarySchema, 'summary'), uses: [] };
  await fsp.writeFile(file, encodeDocument(lying));
  const mismatch = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  assert.equal(mismatch.code, 3);
  assert.deepEqual(
    mismatch.json().problems.map((p: { kind: string; point: string; path: string }) => [p.kind, p.point, p.path]),
    [['summary-mismatch', d.ids[1], `summaries/${d.ids[1]}.json`]],
  );
  // Reported once: the summary is written again from the manifest, and the next verify passes.
  assert.match(mismatch.json().problems[0].detail, /written again from the manifest/);
  assert.deepEqual(await fsp.readFile(file), original);
  assert.equal((await lifeboat(['--repo', d.repo, 'verify'])).code, 0);

  const damaged = Buffer.from(original);
  damaged[damaged.indexOf('"type"') + 9] ^= 0x01;
  await fsp.writeFile(file, damaged);
  const broken = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  assert.equal(broken.code, 3);
  assert.match(broken.json().problems[0].detail, /summary of .* is damaged/);
  assert.equal((await lifeboat(['--repo', d.repo, 'verify'])).code, 0, 'repaired');
  await fsp.writeFile(file, damaged);
  // list reads past a damaged summary, from the manifest.
  const listed = await lifeboat(['--repo', d.repo, '--json', 'list']);
  assert.equal(listed.code, 0, listed.stderr);
  assert.equal(listed.json()[1].type, 'incr');
  await fsp.writeFile(file, original);

  const stray = summaryFile(d.repo, '20990101-000000-000F');
  await fsp.copyFile(file, stray);
  const warned = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  assert.equal(warned.code, 0, warned.stdout);
  assert.deepEqual(warned.json().warnings.map((w: { code: string; path: string }) => [w.code, w.path]), [['leftovers', 'summaries/20990101-000000-000F.json']]);
  const next = await lifeboat(['--repo', d.repo, 'backup', d.src, '--type', 'incr']);
  assert.equal(next.code, 0, next.stderr);
  await assert.rejects(fsp.access(stray), 'the next backup removes it');
  const after = await lifeboat(['--repo', d.repo, '--json', 'verify']);
  assert.deepEqual(after.json().warnings, []);
});
