import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { lifeboat } from './helpers/cli.js';
import { repoFiles, smallDeployment } from './helpers/repo.js';
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

/** A point as an older lifeboat left it, then damaged: no summary, and bytes of its manifest flipped. */
async function damage(repo: string, id: string): Promise<void> {
  await fsp.rm(summaryFile(repo, id));
  const manifest = await fsp.readFile(manifestFile(repo, id));
  for (const at of [20, 21, 22]) manifest[at]! ^= 0x55;
  await fsp.writeFile(manifestFile(repo, id), manifest);
}

test('a point with no summary and a damaged manifest hides no other: list marks it, selectors pass it over unless it may be the one meant, prune removes nothing', async (t) => {
  const d = await threePoints();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  const listed = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json();
  await damage(d.repo, d.ids[1]!);

  const json = await lifeboat(['--repo', d.repo, '--json', 'list']);
  assert.equal(json.code, 0, json.stderr);
  const points = json.json();
  assert.deepEqual(points.map((p: { id: string }) => p.id), d.ids);
  assert.deepEqual([points[0], points[2]], [listed[0], listed[2]]);
  assert.equal(points[1].type, 'incr');
  assert.equal(points[1].completedAt, null);
  assert.match(points[1].damaged, new RegExp(`manifest of ${d.ids[1]}`));
  assert.match(json.stderr, new RegExp(`warning: backup point ${d.ids[1]} cannot be read: .*; run \`lifeboat verify\``));
  const text = await lifeboat(['--repo', d.repo, '--quiet', 'list']);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, new RegExp(`${d.ids[1]}\\s+incr\\s+\\?\\s+DAMAGED`));
  for (const id of [d.ids[0]!, d.ids[2]!]) assert.match(text.stdout, new RegExp(id));
  assert.match(text.stderr, /warning: backup point/, 'the warning is shown with --quiet too');

  // A time after the newest point, and latest: the newest point, which the damaged one cannot be.
  for (const selector of ['latest', new Date(Date.parse(listed[2].completedAt) + 60_000).toISOString()]) {
    const shown = await lifeboat(['--repo', d.repo, '--json', 'show', selector]);
    assert.equal(shown.code, 0, `${selector}: ${shown.stderr}`);
    assert.equal(shown.json().id, d.ids[2]);
  }
  // A time just after the damaged point started: it may be the one meant; which one is not guessed.
  const between = new Date(Date.parse(listed[2].startedAt) - 1).toISOString();
  const unsure = await lifeboat(['--repo', d.repo, 'show', between]);
  assert.equal(unsure.code, 3, unsure.stderr);
  assert.match(unsure.stderr, new RegExp(`backup point ${d.ids[1]}, which ${between} may select, cannot be read`));
  assert.doesNotMatch(unsure.stderr, /\n\s+at /, 'no stack trace');

  // prune cannot know what the damaged point needs: it deletes nothing, and says why.
  const before = await repoFiles(d.repo);
  for (const args of [['prune', '--keep-full', '1', '--dry-run'], ['prune', '--keep-full', '1']]) {
    const pruned = await lifeboat(['--repo', d.repo, ...args]);
    assert.equal(pruned.code, 3, pruned.stderr);
    assert.match(pruned.stderr, new RegExp(`backup point ${d.ids[1]} cannot be read: .*; prune removes nothing`));
    assert.match(pruned.stderr, /lifeboat verify/);
  }
  assert.deepEqual(await repoFiles(d.repo), before);

  // The newest point damaged: it is what latest means, named rather than passed over.
  await damage(d.repo, d.ids[2]!);
  const latest = await lifeboat(['--repo', d.repo, 'show', 'latest']);
  assert.equal(latest.code, 3, latest.stderr);
  assert.match(latest.stderr, new RegExp(`backup point ${d.ids[2]}, which latest may select, cannot be read`));
  const older = await lifeboat(['--repo', d.repo, '--json', 'show', d.ids[0]!]);
  assert.equal(older.code, 0, older.stderr);
});
