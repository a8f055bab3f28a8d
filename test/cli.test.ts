import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { closeSync, existsSync, openSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as https from 'node:https';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BIN, lifeboat, runChild, spawnLifeboat } from './helpers/cli.js';
import { exists, smallDeployment } from './helpers/repo.js';
import { compareSnapshots, snapshotTree, tempDir } from './helpers/tree.js';
import { evict, hasFincore, resident } from './helpers/page-cache.js';
import { RuntimeFailure, asLimitReached } from '../src/errors.js';

/** A YAML document whose aliases expand to 9^6 strings. */
function aliasBomb(): string {
  const lines = ['repository: ./r', `a0: &a0 [${Array(9).fill('"lol"').join(', ')}]`];
  for (let i = 1; i <= 5; i++) lines.push(`a${i}: &a${i} [${Array(9).fill(`*a${i - 1}`).join(', ')}]`);
  return `${lines.join('\n')}\n`;
}

test('config errors exit 2 and name the key', async () => {
  const dir = await tempDir();
  const cases: [string | Buffer, RegExp][] = [
    ['repository: [unclosed', /invalid YAML/],
    // A syntax error names its line, as a tag the parser does not know does: in a long config, which line is the first question.
    ['repository: ./r\nsources:\n  models: /srv/models\n\tserving: /etc/triton\n', /lifeboat\.yaml:4: invalid YAML: Tabs are not allowed as indentation$/m],
    ['repository: ./r\nretention: { keepFull: 4 }\nretention: { keepDiff: 7 }\n', /lifeboat\.yaml:3: invalid YAML: Map keys must be unique$/m],
    ['repository: ./r\ndeployment: "fraud\n', /lifeboat\.yaml:2: invalid YAML: Missing closing "quote$/m],
    // An unknown key: the key it was likely meant to be, and the keys its map takes.
    ['repository: ./r\nretension: { keepFull: 4 }\n', /\(top level\): unknown key "retension"\n {2}did you mean retention\? the keys at the top level are repository, deployment, s3, sources, exclude, hooks, retention, targets, notify and lock$/m],
    ['repository: ./r\nretention: { keep_full: 4 }\n', /retention: unknown key "keep_full"\n {2}did you mean keepFull\? the keys of retention are keepFull, keepDiff and keepWithin$/m],
    ['repository: ./r\nlock: { stale_after: 10m }\n', /lock: unknown key "stale_after"\n {2}did you mean staleAfter\? /],
    ['repository: ./r\ntargets: { prod: { slots: /s, active: /a, health: { url: "http://127.0.0.1/", timout: 5s } } }\n', /targets\.prod\.health: unknown key "timout"\n {2}did you mean timeout\? the keys of targets\.prod\.health are url, /],
    ['repository: ./r\nretention: { keepFull: "four" }\n', /retention\.keepFull: must be a whole number of at least 1$/m],
    ['repository: ./r\nretention: { keepFull: 2.5 }\n', /retention\.keepFull: must be a whole number of at least 1$/m],
    ['repository: ./r\nretention: { keepDiff: -1 }\n', /retention\.keepDiff: must be a whole number of at least 0$/m],
    ['repository: ./r\nretention: { keepFull: 99999999999999999999 }\n', /retention\.keepFull: must be a whole number of at most 9007199254740991$/m],
    ['repository: s3://b/r\ns3: { concurrency: 100 }\n', /s3\.concurrency: must be a whole number from 1 to 64$/m],
    ['repository: ./r\nsurprise: 1\n', /unknown key "surprise"\n {2}the keys at the top level are repository, /],
    // Said in the config's words, not the schema library's ("Invalid URL", "Invalid option: expected one of …").
    ['repository: s3://b/r\ns3: { endpoint: "127.0.0.1:9000" }\n', /s3\.endpoint: must be a URL \(http:\/\/… or https:\/\/…\), not "127\.0\.0\.1:9000"$/m],
    ['repository: ./r\nnotify: { url: "hooks.example.com/lifeboat" }\n', /notify\.url: must be a URL \(http:\/\/… or https:\/\/…\), not "hooks\.example\.com\/lifeboat"$/m],
    ['repository: ./r\nnotify: { url: "https://hooks.example.com/lifeboat", on: [failure, warnings] }\n', /notify\.on\.1: must be failure, warning or success, not "warnings"$/m],
    // Every line under a key commented out leaves the key empty (YAML's null).
    ['repository: ./r\nretention:\n#  keepFull: 4\n', /retention: is empty: give its value, or leave the key out$/m],
    ['repository: ./r\ntargets: { prod: { slots: /s, active: /a, health: } }\n', /targets\.prod\.health: is empty: give its value, or leave the key out$/m],
    // A key its map needs, left out, is named as missing: it was "must be text, not the undefined undefined".
    ['repository: ./r\ntargets: { prod: { slots: /s } }\n', /targets\.prod\.active: is missing: targets\.prod needs it$/m],
    ['repository: ./r\nnotify: { on: [failure] }\n', /notify\.url: is missing: notify needs it$/m],
    // A key written with other capitals is named as written, as unknown, with the key it leaves missing: not that key alone, "missing".
    ['repository: ./r\ntargets: { prod: { Slots: /s, active: /a } }\n', /targets\.prod: unknown key "Slots"; missing: slots \(keys are case-sensitive\)$/m],
    ['repository: ./r\ntargets: { prod: { slot: /s, active: /a } }\n', /targets\.prod: unknown key "slot"; missing: slots$/m],
    ['repository: ./r\nsources: { "bad name!": /srv }\n', /sources\.bad name!: source names use letters, digits, '\.', '_' or '-', starting with a letter, a digit or '_' \(at most 64\)$/m],
    // A deployment's name: YAML reads 2024 as a number, and a name the rule refuses is said with the rule, its first character too.
    ['repository: ./r\ndeployment: 2024\n', /deployment: is read as the number 2024: write the name in quotes \(deployment: "2024"\)$/m],
    ['repository: ./r\ndeployment: .fraud\n', /deployment: is not a deployment name: use letters, digits, '\.', '_' or '-', starting with a letter, a digit or '_' \(at most 64\)$/m],
    ['repository: ./r\ntargets: { prod: { slots: /s, active: /a, health: { timeout: 60s } } }\n', /targets\.prod\.health: needs a url or a command/],
    ['repository: ./r\nretention: { keepWithin: "two weeks" }\n', /retention\.keepWithin: must be a duration/],
    // YAML reads a bare number as a number: the message asks for a duration with its unit, not for a "string".
    ['repository: ./r\nretention: { keepWithin: 1 }\n', /retention\.keepWithin: must be a duration such as 90s, 15m, 2h or 14d, with its unit: 1 alone has none$/m],
    // A bare 0 needs no unit, but is no timeout.
    ['repository: ./r\nlock: { staleAfter: 0 }\n', /lock\.staleAfter: must be a duration longer than 0$/m],
    ['repository: ./r\nhooks: { preBackup: "true", timeout: 60 }\n', /hooks\.timeout: must be a duration such as 90s, 15m, 2h or 14d, with its unit: 60 alone has none$/m],
    ['repository: ./r\nlock: { retry: true }\n', /lock\.retry: must be a duration such as 90s, 15m, 2h or 14d$/m],
    ['repository: ./r\ntargets: { prod: { slots: /s, active: /a, health: { url: "ftp://127.0.0.1/health" } } }\n', /targets\.prod\.health\.url: must be an http:\/\/ or https:\/\/ URL/],
    // A disaster-recovery restore cannot wait hours for a retrieval.
    ['repository: s3://b/r\ns3: { storageClass: DEEP_ARCHIVE }\n', /s3\.storageClass: is an archive class: its objects cannot be read until a retrieval request finishes/],
    ['repository: s3://b/r\ns3: { storageClass: glacier }\n', /s3\.storageClass: is an archive class/],
    // A timeout, interval or lease of 0 would only ever fail: refused where it is read, naming the key.
    ['repository: ./r\nsources: { features: { command: "redis-cli --rdb -", timeout: 0s } }\n', /sources\.features\.timeout: must be a duration longer than 0/],
    ['repository: ./r\nhooks: { preBackup: "true", timeout: 0ms }\n', /hooks\.timeout: must be a duration longer than 0/],
    // A mistake inside a serving-state source is named at its key, not as a source that fits no kind.
    ['repository: ./r\nsources: { registry: { sqlite: ./mlflow.db, restore: yes please } }\n', /sources\.registry\.restore: must be true or false/],
    ['repository: ./r\nsources: { registry: { sqlite: "" } }\n', /sources\.registry\.sqlite: is empty: give the SQLite database file$/m],
    ['repository: ./r\nsources: { features: { command: "pg_dump", restore: true } }\n', /sources\.features\.restore: must be a command, which gets the captured state on its stdin$/m],
    ['repository: ./r\nsources: { features: { command: "pg_dump", timeout: 10 } }\n', /sources\.features\.timeout: must be a duration such as 90s, 15m, 2h or 14d, with its unit: 10 alone has none$/m],
    ['repository: ./r\nsources: { features: { command: "pg_dump", timout: 10m } }\n', /sources\.features: unknown key "timout"\n {2}did you mean timeout\? the keys of sources\.features are command, restore and timeout$/m],
    ['repository: ./r\nsources: { features: { comand: "pg_dump" } }\n', /sources\.features: must be a directory, \{ path: DIR \}, \{ sqlite: DATABASE \} or \{ command: COMMAND \}, not a map of "comand"$/m],
    ['repository: ./r\nsources: { models: 5 }\n', /sources\.models: must be a directory, /],
    ['repository: ./r\ntargets: { prod: { slots: /s, active: /a, health: { url: "http://127.0.0.1/", timeout: 0m } } }\n', /targets\.prod\.health\.timeout: must be a duration longer than 0/],
    ['repository: ./r\ntargets: { prod: { slots: /s, active: /a, health: { command: "true", interval: 0s0ms } } }\n', /targets\.prod\.health\.interval: must be a duration longer than 0/],
    ['repository: ./r\nlock: { staleAfter: 0h }\n', /lock\.staleAfter: must be a duration longer than 0/],
    ['repository: ./r\nretention: { keepWithin: 99999999999999d }\n', /retention\.keepWithin: must be a duration of at most 100 years \(36500d\)/],
    ['repository: ./r\nhooks: { postBackup: "true", timeout: 5300w }\n', /hooks\.timeout: must be a duration of at most 100 years/],
    // Anchors nested so that their expansion would take all memory (the billion laughs): refused by the parser.
    [aliasBomb(), /lifeboat\.yaml: invalid YAML: Excessive alias count/],
    // Nested so deep that the parser overflowed its stack, said as the stack's own words.
    [`repository: ./r\nx: ${'['.repeat(100_000)}${']'.repeat(100_000)}\n`, /lifeboat\.yaml: invalid YAML: nested too deeply to be a lifeboat config$/m],
    [`repository: ./r\nx: ${'{a: '.repeat(20_000)}1${'}'.repeat(20_000)}\n`, /lifeboat\.yaml: invalid YAML: nested too deeply to be a lifeboat config$/m],
    // Saved as Latin-1, the é would have become U+FFFD in the repository's path.
    [Buffer.from('repository: ./mod\xe8les\n', 'latin1'), /lifeboat\.yaml: is not UTF-8 text\n {2}save it as UTF-8/],
    // A tag for another loader is not dropped, leaving its value as plain text.
    ['repository: ./r\nhooks:\n  preBackup: !!js/function "function () {}"\n', /lifeboat\.yaml:3: invalid YAML: Unresolved tag: tag:yaml\.org,2002:js\/function\n {2}lifeboat reads plain YAML/],
    ['repository: !env BACKUP_DIR\n', /lifeboat\.yaml:1: invalid YAML: Unresolved tag: !env/],
    // A value of the wrong kind is said in the config's words, with what was given.
    ['repository: 123\n', /lifeboat\.yaml: repository: must be text, not the number 123$/m],
    ['repository: ./r\nexclude: "*.tmp"\n', /lifeboat\.yaml: exclude: must be a list, not the text "\*\.tmp"$/m],
    ['repository: s3://b/r\ns3: { forcePathStyle: "yes" }\n', /lifeboat\.yaml: s3\.forcePathStyle: must be true or false, not the text "yes"$/m],
    ['repository: !!binary aGVsbG8=\n', /lifeboat\.yaml: repository: must be text, not binary data \(a !!binary tag\)$/m],
    // Named __proto__, a source or a target vanished from the parsed config without a word.
    ['repository: ./r\nsources: { __proto__: ./models }\n', /lifeboat\.yaml: sources\.__proto__: cannot be a name: give it another one$/m],
    ['repository: ./r\ntargets: { __proto__: { slots: /s, active: /a } }\n', /lifeboat\.yaml: targets\.__proto__: cannot be a name/],
  ];
  for (const [yaml, pattern] of cases) {
    await fsp.writeFile(path.join(dir, 'lifeboat.yaml'), yaml);
    const r = await lifeboat(['list'], { cwd: dir });
    assert.equal(r.code, 2, `${String(yaml)}: ${r.stderr}`);
    assert.match(r.stderr, pattern);
    assert.match(r.stderr, /lifeboat\.yaml/);
    assert.doesNotMatch(r.stderr, /unexpected error/);
  }
  const missing = await lifeboat(['--config', path.join(dir, 'nope.yaml'), 'list'], { cwd: dir });
  assert.equal(missing.code, 2);
  const none = await lifeboat(['list'], { cwd: os.tmpdir() === dir ? '/' : await tempDir() });
  assert.equal(none.code, 2);
  assert.match(none.stderr, /no repository given/);
  const repo = path.join(dir, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const root = await lifeboat(['--repo', repo, 'backup', '/', '--dry-run']);
  assert.equal(root.code, 2);
  assert.match(root.stderr, /\/ has no name to give its source\n {2}name it: --source root=\//);
  // An empty path (`lifeboat backup "$MODELS"` with MODELS unset) would name the working directory: refused, not backed up.
  const cwd = await tempDir();
  await fsp.writeFile(path.join(cwd, 'not-a-model.txt'), 'home');
  const unset = await lifeboat(['--repo', repo, '--json', 'backup', ''], { cwd });
  assert.equal(unset.code, 2, unset.stdout);
  assert.equal(unset.json().error.message, 'a path to back up is empty (a variable not set?)');
  assert.deepEqual((await lifeboat(['--repo', repo, '--json', 'list'])).json(), [], 'nothing was backed up');
  await fsp.rm(cwd, { recursive: true, force: true });
  // A single-file model is not a source: its directory is.
  await fsp.writeFile(path.join(dir, 'model.gguf'), 'GGUF');
  const file = await lifeboat(['--repo', repo, 'backup', path.join(dir, 'model.gguf'), '--dry-run']);
  assert.equal(file.code, 2);
  assert.match(file.stderr, new RegExp(`model.gguf is not a directory; a source is a directory, restored as DIR/<source name>/\\n {2}back up the directory that holds it: --source ${path.basename(dir)}=${dir}, with --exclude`));
  await fsp.rm(dir, { recursive: true, force: true });
});

test('a target may take its settings from another through a YAML merge key (<<: *anchor), its own keys winning', async () => {
  const dir = await tempDir();
  await fsp.mkdir(path.join(dir, 'slots-b'));
  await fsp.writeFile(path.join(dir, 'lifeboat.yaml'), [
    'repository: ./r',
    'targets:',
    '  a: &base',
    '    slots: ./slots-a',
    '    active: ./current-a',
    '    health: { command: "true" }',
    '  b:',
    '    <<: *base',
    '    slots: ./slots-b',
    '    active: ./current-b',
    '',
  ].join('\n'));
  assert.equal((await lifeboat(['init'], { cwd: dir })).code, 0);
  const r = await lifeboat(['status', '--json'], { cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  const targets = (JSON.parse(r.stdout) as { targets: { name: string; record: { path: string }; health: { checked: boolean; ok: boolean } }[] }).targets;
  // b's health check is a's, merged in; its slots are its own.
  assert.deepEqual(targets.map((t) => [t.name, path.basename(path.dirname(t.record.path)), t.health.checked && t.health.ok]), [['a', 'slots-a', true], ['b', 'slots-b', true]]);
});

test('the installed program reads a config file, and names the key of a bad one (exit 2)', async () => {
  // In-process runs use the compiled modules; the program users run is the bundle, which loads the YAML parser its own way.
  const dir = await tempDir();
  assert.equal((await lifeboat(['--repo', path.join(dir, 'repo'), 'init'])).code, 0);
  await fsp.writeFile(path.join(dir, 'lifeboat.yaml'), 'repository: ./repo\nretention: { keepFull: 2 }\n');
  const listed = await runChild(['--json', 'list'], { cwd: dir });
  assert.equal(listed.code, 0, listed.stderr);
  assert.deepEqual(listed.json(), []);
  await fsp.writeFile(path.join(dir, 'lifeboat.yaml'), 'repository: ./repo\nretention: { keepFull: "four" }\n');
  const bad = await runChild(['list'], { cwd: dir });
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /lifeboat\.yaml: retention\.keepFull: /);
  // An empty health command would check nothing and pass; an empty hook would drain nothing.
  for (const [yaml, key] of [
    ['targets:\n  prod: { slots: ./slots, active: ./current, health: { command: "" } }', 'targets\.prod\.health\.command'],
    ['targets:\n  prod: { slots: ./slots, active: ./current, deactivate: "" }', 'targets\.prod\.deactivate'],
    ['hooks: { preBackup: "" }', 'hooks\.preBackup'],
  ]) {
    await fsp.writeFile(path.join(dir, 'lifeboat.yaml'), `repository: ./repo\n${yaml}\n`);
    const empty = await runChild(['list'], { cwd: dir });
    assert.equal(empty.code, 2, empty.stderr);
    assert.match(empty.stderr, new RegExp(`lifeboat\\.yaml: ${key}: is empty: give a command, or leave the key out`));
  }
  await fsp.writeFile(path.join(dir, 'lifeboat.yaml'), aliasBomb());
  const bomb = await runChild(['list'], { cwd: dir });
  assert.equal(bomb.code, 2, bomb.stderr);
  assert.match(bomb.stderr, /^lifeboat: \S*lifeboat\.yaml: invalid YAML: Excessive alias count[^\n]*\n$/);

  // `~` in a path of the config file is the home directory, as a shell would have made it.
  const home = path.join(dir, 'home');
  await fsp.mkdir(path.join(home, 'models'), { recursive: true });
  await fsp.writeFile(path.join(home, 'models', 'w.bin'), 'weights');
  await fsp.writeFile(path.join(dir, 'lifeboat.yaml'), 'repository: ~/backups\nsources:\n  models: ~/models\n');
  const env = { HOME: home };
  assert.equal((await runChild(['init'], { cwd: dir, env })).code, 0);
  const none = await runChild(['restore', 'latest', '--target', path.join(dir, 'out')], { cwd: dir, env });
  assert.equal(none.code, 2);
  assert.match(none.stderr, /has no backup points yet\n {2}take one with `lifeboat backup`/);
  const backup = await runChild(['--json', 'backup'], { cwd: dir, env });
  assert.equal(backup.code, 0, backup.stderr);
  assert.equal(backup.json().files, 1);
  assert.match((await runChild(['verify'], { cwd: dir, env })).stdout, /^checked 1 backup point\(s\), 1 file \(structure only/);
  assert.ok(await exists(path.join(home, 'backups', 'config.json')));
  const said = await runChild(['backup', '--type', 'full'], { cwd: dir, env });
  assert.match(said.stdout, /\n {2}1 file, 7 B; /, 'one file, not "1 files"');
  const restored = await runChild(['restore', 'latest', '--target', path.join(dir, 'out')], { cwd: dir, env });
  assert.match(restored.stdout, /: 1 file, 7 B, every checksum verified/);
  await fsp.rm(dir, { recursive: true, force: true });
});

/** An environment in which the AWS chain finds nothing but what `home` holds (the child's environment is laid over the test's own: emptied, not left out). */
function bareAwsEnv(home: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { HOME: home, AWS_REGION: 'us-east-1', AWS_EC2_METADATA_DISABLED: 'true' };
  for (const k of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE', 'AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_WEB_IDENTITY_TOKEN_FILE', 'AWS_ROLE_ARN']) env[k] = '';
  for (const k of Object.keys(process.env)) if (k.startsWith('AWS_CONTAINER_')) env[k] = '';
  return env;
}

test('an S3 repository with no credentials anywhere is a set-up error (exit 2) that says how to provide them', async () => {
  const home = await tempDir();
  const env = bareAwsEnv(home);
  // Nothing listens there: credentials are looked for before any request is sent.
  const r = await runChild(['--repo', 's3://lifeboat-nobody/repo', '--s3-endpoint', 'http://127.0.0.1:9', '--s3-path-style', 'list'], { env });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /no AWS credentials were found/);
  assert.match(r.stderr, /AWS_PROFILE/);

  // With credentials, an endpoint nothing answers at is a runtime failure (exit 1) that points at the endpoint.
  const unreachable = await runChild(['--repo', 's3://lifeboat-nobody/repo', '--s3-endpoint', 'http://127.0.0.1:9', '--s3-path-style', 'list'], {
    env: { ...env, AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE', AWS_SECRET_ACCESS_KEY: 'not-a-secret' },
  });
  assert.equal(unreachable.code, 1, unreachable.stderr);
  assert.match(unreachable.stderr, /: connect ECONNREFUSED 127\.0\.0\.1:9\n {2}check the endpoint \(s3\.endpoint, --s3-endpoint\) and that this host can reach it/);
  assert.doesNotMatch(unreachable.stderr, /ECONNREFUSED.*ECONNREFUSED/, 'the code is said once');

  // An empty --s3-endpoint (a script's unset variable) is refused, not read as none: the bucket would be looked for on AWS itself.
  const empty = await runChild(['--repo', 's3://lifeboat-nobody/repo', '--s3-endpoint', '', '--s3-path-style', 'list'], {
    env: { ...env, AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE', AWS_SECRET_ACCESS_KEY: 'not-a-secret', AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:9' },
  });
  assert.equal(empty.code, 2, empty.stderr);
  assert.equal(empty.stderr, 'lifeboat: --s3-endpoint "": expected the URL of an S3 endpoint\n');
  await fsp.rm(home, { recursive: true, force: true });
});

test('an S3 endpoint that is not an http(s) URL is refused naming where it was given: the flag, the config, or the environment variable', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const env = { ...bareAwsEnv(work), AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE', AWS_SECRET_ACCESS_KEY: 'not-a-secret', AWS_ENDPOINT_URL_S3: '', AWS_ENDPOINT_URL: '' };
  const list = async (args: string[], more: NodeJS.ProcessEnv = {}) => {
    const r = await lifeboat(['--repo', 's3://lifeboat-nobody/repo', ...args, 'list'], { cwd: work, env: { ...env, ...more } });
    assert.equal(r.code, 2, r.stderr);
    return r.stderr;
  };
  assert.equal(await list(['--s3-endpoint', 'ftp://127.0.0.1:9']), 'lifeboat: --s3-endpoint must be an http:// or https:// URL, not ftp://127.0.0.1:9\n');
  assert.equal(await list([], { AWS_ENDPOINT_URL_S3: '127.0.0.1:9' }), 'lifeboat: AWS_ENDPOINT_URL_S3 must be an http:// or https:// URL, not 127.0.0.1:9\n');
  assert.equal(await list([], { AWS_ENDPOINT_URL: 'ftp://127.0.0.1:9' }), 'lifeboat: AWS_ENDPOINT_URL must be an http:// or https:// URL, not ftp://127.0.0.1:9\n');
  assert.match(await list(['--s3-endpoint', 'http://127.0.0.1:9/lifeboat-nobody']), /^lifeboat: --s3-endpoint http:\/\/127\.0\.0\.1:9\/lifeboat-nobody names the bucket lifeboat-nobody in its path/);
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), 's3:\n  endpoint: ftp://127.0.0.1:9\n');
  assert.equal(await list([]), 'lifeboat: s3.endpoint must be an http:// or https:// URL, not ftp://127.0.0.1:9\n');
});

test('AWS_PROFILE naming a profile that is in neither shared file says so, naming the files looked in and the profiles they hold (exit 2)', async () => {
  const home = await tempDir();
  await fsp.mkdir(path.join(home, '.aws'));
  await fsp.writeFile(path.join(home, '.aws', 'credentials'), '[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = not-a-secret\n[backup]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = not-a-secret\n');
  await fsp.writeFile(path.join(home, '.aws', 'config'), '[profile staging]\nregion = eu-west-1\n[sso-session corp]\nsso_region = eu-west-1\n');
  const list = ['--repo', 's3://lifeboat-nobody/repo', '--s3-endpoint', 'http://127.0.0.1:9', '--s3-path-style', 'list'];
  const credentials = path.join(home, '.aws', 'credentials');
  const config = path.join(home, '.aws', 'config');

  const typo = await runChild(list, { env: { ...bareAwsEnv(home), AWS_PROFILE: 'bakup' } });
  assert.equal(typo.code, 2, typo.stderr);
  assert.equal(
    typo.stderr,
    `lifeboat: AWS_PROFILE names the profile bakup, which is not in ${credentials} or ${config}\n` +
      '  profiles there: default, backup, staging; correct AWS_PROFILE, or add the profile (aws configure --profile bakup); AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE name other files\n',
  );

  // The files the variables name are the ones looked in, and one that is not there is said to be missing.
  const elsewhere = path.join(home, 'ci-credentials');
  await fsp.writeFile(elsewhere, '[ci]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = not-a-secret\n');
  const named = await runChild(list, { env: { ...bareAwsEnv(home), AWS_PROFILE: 'backup', AWS_SHARED_CREDENTIALS_FILE: elsewhere, AWS_CONFIG_FILE: path.join(home, 'absent') } });
  assert.equal(named.code, 2, named.stderr);
  assert.match(named.stderr, new RegExp(`^lifeboat: AWS_PROFILE names the profile backup, which is not in ${elsewhere} or ${path.join(home, 'absent')} \\(no such file\\)\n {2}profiles there: ci;`));

  // A profile that is there but gives no credentials is named as such, not as a missing one.
  const empty = await runChild(list, { env: { ...bareAwsEnv(home), AWS_PROFILE: 'staging' } });
  assert.equal(empty.code, 2, empty.stderr);
  assert.match(empty.stderr, new RegExp(`^lifeboat: the AWS profile staging \\(in ${config}\\) gave no credentials\n`));
  await fsp.rm(home, { recursive: true, force: true });
});

test("shared AWS files in a HOME this user may not read (su without -, root's HOME kept) are said to be unreadable, not missing, with what to do (exit 2)", { skip: process.geteuid?.() === 0 ? false : 'needs root to run lifeboat as another user' }, async () => {
  const home = await tempDir();
  await fsp.mkdir(path.join(home, '.aws'));
  await fsp.writeFile(path.join(home, '.aws', 'credentials'), '[backup]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = not-a-secret\n');
  const list = ['--repo', 's3://lifeboat-nobody/repo', '--s3-endpoint', 'http://127.0.0.1:9', '--s3-path-style', 'list'];
  const credentials = path.join(home, '.aws', 'credentials');
  const config = path.join(home, '.aws', 'config');
  const nobody = { uid: 65534, gid: 65534 };
  const unreadable = new RegExp(`this user may not read ${credentials} or ${config}: set HOME to its own home \\(su -, sudo -H\\), or name readable files with AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE\n$`);

  const none = await runChild(list, { env: bareAwsEnv(home), user: nobody, cwd: '/' });
  assert.equal(none.code, 2, none.stderr);
  assert.match(none.stderr, /^lifeboat: no AWS credentials were found for the repository\n/);
  assert.match(none.stderr, unreadable);
  // Said to be "no such file", and the hint was to add the profile, which is there.
  const profile = await runChild(list, { env: { ...bareAwsEnv(home), AWS_PROFILE: 'backup' }, user: nobody, cwd: '/' });
  assert.equal(profile.code, 2, profile.stderr);
  assert.match(profile.stderr, new RegExp(`^lifeboat: AWS_PROFILE names the profile backup, which is not in ${credentials} \\(unreadable: EACCES\\) or ${config} \\(unreadable: EACCES\\)\n`));
  assert.match(profile.stderr, unreadable);
  await fsp.rm(home, { recursive: true, force: true });
});

test('init under a directory this user may not enter names the repository, not "/" (exit 2)', { skip: process.geteuid?.() === 0 ? false : 'needs root to run lifeboat as another user' }, async () => {
  const dir = await tempDir();
  await fsp.chmod(dir, 0o700);
  const repo = path.join(dir, 'repo');
  const r = await runChild(['init', '--repo', repo], { user: { uid: 65534, gid: 65534 }, cwd: '/' });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, new RegExp(`^lifeboat: cannot list the repository ${repo}: EACCES`));
  assert.ok(!existsSync(repo));
  await fsp.rm(dir, { recursive: true, force: true });
});

test('flags override LIFEBOAT_REPO, which overrides the config file; sources come from the config', async () => {
  const d = await smallDeployment();
  const other = path.join(d.work, 'other-repo');
  await fsp.writeFile(path.join(d.work, 'lifeboat.yaml'), `repository: ./nowhere\nsources:\n  models: ./models\nexclude: ["**/tokenizer.json"]\n`);
  const viaEnv = await lifeboat(['--json', 'backup'], { cwd: d.work, env: { LIFEBOAT_REPO: d.repo } });
  assert.equal(viaEnv.code, 0, viaEnv.stderr);
  const shown = (await lifeboat(['--json', 'show', 'latest'], { cwd: d.work, env: { LIFEBOAT_REPO: d.repo } })).json();
  assert.deepEqual(shown.sources.map((s: { name: string }) => s.name), ['models']);
  assert.ok(!shown.entries.some((e: { path: string }) => e.path.endsWith('tokenizer.json')), 'config excludes apply');
  assert.equal((await lifeboat(['--repo', other, 'init'], { cwd: d.work, env: { LIFEBOAT_REPO: d.repo } })).code, 0);
  const flagWins = await lifeboat(['--repo', other, '--json', 'list'], { cwd: d.work, env: { LIFEBOAT_REPO: d.repo } });
  assert.deepEqual(flagWins.json(), []);
  const cfg = path.join(d.work, 'elsewhere.yaml');
  await fsp.writeFile(cfg, `repository: ${d.repo}\n`);
  const viaConfigEnv = await lifeboat(['--json', 'list'], { cwd: '/', env: { LIFEBOAT_CONFIG: cfg } });
  assert.equal(viaConfigEnv.json().length, 1);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('LIFEBOAT_CONFIG set to the empty string counts as unset; a config file that is missing or a directory is said so, in one sentence', async () => {
  const d = await smallDeployment();
  await fsp.writeFile(path.join(d.work, 'lifeboat.yaml'), `repository: ${d.repo}\n`);
  const unsetByEmpty = await lifeboat(['--json', 'list'], { cwd: d.work, env: { LIFEBOAT_CONFIG: '' } });
  assert.equal(unsetByEmpty.code, 0, unsetByEmpty.stderr);
  assert.deepEqual(unsetByEmpty.json(), []);
  const emptyFlag = await lifeboat(['--config', '', 'list'], { cwd: d.work });
  assert.equal(emptyFlag.code, 2);
  assert.equal(emptyFlag.stderr, 'lifeboat: --config "": expected the path of a file\n');
  const missing = await lifeboat(['list'], { cwd: d.work, env: { LIFEBOAT_CONFIG: 'nope.yaml' } });
  assert.equal(missing.code, 2);
  assert.equal(missing.stderr, `lifeboat: config file ${path.join(d.work, 'nope.yaml')} does not exist\n  check the path LIFEBOAT_CONFIG gives\n`);
  const directory = await lifeboat(['--config', d.work, 'list'], { cwd: '/' });
  assert.equal(directory.code, 2);
  assert.equal(directory.stderr, `lifeboat: config file ${d.work} is a directory\n  --config names the file itself (…/lifeboat.yaml)\n`);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('point selectors: id, prefix, latest, ISO time; ambiguous or unknown is exit 2', async () => {
  const d = await smallDeployment();
  const ids: string[] = [];
  for (const type of ['full', 'incr', 'diff']) {
    await fsp.appendFile(path.join(d.src, 'config.json'), ' ');
    const r = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', type]);
    ids.push(r.json().id);
  }
  const list = (await lifeboat(['--repo', d.repo, '--json', 'list'])).json();
  const show = async (sel: string) => lifeboat(['--repo', d.repo, '--json', 'show', sel]);
  assert.equal((await show('latest')).json().id, ids[2]);
  assert.equal((await show(ids[1]!)).json().id, ids[1]);
  assert.equal((await show(ids[1]!.slice(0, -1))).json().id, ids[1], 'unique prefix (the id without its type letter)');
  assert.equal((await show(ids[1]!.toLowerCase())).json().id, ids[1], 'the type letter in lower case');
  assert.equal((await show(list[1].completedAt)).json().id, ids[1], 'ISO time selects the newest point completed at or before it');
  assert.equal((await show('1999-01-01T00:00:00Z')).code, 2);
  const ambiguous = await show(ids[0]!.slice(0, 8));
  assert.equal(ambiguous.code, 2);
  assert.match(ambiguous.stderr, /matches 3 backup points/);
  assert.equal((await show('nomatch')).code, 2);
  const typo = await lifeboat(['--repo', d.repo, 'show', 'lastest']);
  assert.equal(typo.code, 2);
  assert.match(typo.stderr, /no backup point matches "lastest"\n {2}did you mean latest\?/);
  assert.equal((await show('2026-13-45')).code, 2);
  // A day the month lacks is refused, not rolled over into the next month (2026-11-31 read as 2026-12-01).
  const noSuchDay = await show(`${list[1].completedAt.slice(0, 4)}-02-30T00:00:00Z`);
  assert.equal(noSuchDay.code, 2);
  assert.match(noSuchDay.stderr, /-02-30 is not a day of the calendar/);
  // An empty selector (an unset variable in a script) names no point, even where it is a prefix of every id.
  for (const args of [['show', ''], ['verify', ''], ['pin', '', '--reason', 'x'], ['restore', '', '--target', path.join(d.work, 'empty-sel')]]) {
    const empty = await lifeboat(['--repo', d.repo, ...args]);
    assert.equal(empty.code, 2, `${args[0]}: ${empty.stderr}`);
    assert.match(empty.stderr, /the backup point is empty\n {2}give an id/);
  }
  assert.equal(await exists(path.join(d.work, 'empty-sel')), false);
  const single = await smallDeployment();
  await lifeboat(['--repo', single.repo, 'backup', single.src]);
  const onlyOne = await lifeboat(['--repo', single.repo, 'restore', '', '--target', path.join(single.work, 'out')]);
  assert.equal(onlyOne.code, 2, 'with a single point, an empty selector still selects nothing');
  assert.equal(await exists(path.join(single.work, 'out')), false);
  await fsp.rm(single.work, { recursive: true, force: true });
  // A time names its zone: without one it could be read an hour or more off.
  const at = list[1].completedAt.replace(/\.\d+Z$/, '');
  const zoneless = await lifeboat(['--repo', d.repo, 'show', at]);
  assert.equal(zoneless.code, 2);
  assert.match(zoneless.stderr, new RegExp(`${at} has no time zone\n {2}add Z for UTC, as lifeboat shows times \\(${at}Z\\), or the offset meant`));
  const dateOnly = await lifeboat(['--repo', d.repo, 'show', at.slice(0, 10)]);
  assert.equal(dateOnly.code, 2);
  assert.match(dateOnly.stderr, /is a date; a point is chosen by a time, with its zone\n {2}for the state at the end of that day in UTC: \d{4}-\d{2}-\d{2}T23:59:59Z/);
  // The same instant written with an offset.
  const offset = new Date(Date.parse(list[1].completedAt) + 3600_000).toISOString().replace('Z', '+01:00');
  assert.equal((await show(offset)).json().id, ids[1]);
  // ISO 8601 also writes an offset of whole hours as the hours alone.
  assert.equal((await show(offset.replace('+01:00', '+01'))).json().id, ids[1]);
  assert.equal((await show(new Date(Date.parse(list[1].completedAt) - 5 * 3600_000).toISOString().replace('Z', '-05'))).json().id, ids[1]);
  // And a time to the hour alone (the next full hour in UTC, and in a zone an hour ahead), and a fraction after a comma.
  const nextHour = new Date(Math.ceil(Date.parse(list[2].completedAt) / 3600_000) * 3600_000);
  assert.equal((await show(`${nextHour.toISOString().slice(0, 13)}Z`)).json().id, ids[2]);
  assert.equal((await show(`${new Date(nextHour.getTime() + 3600_000).toISOString().slice(0, 13)}+01`)).json().id, ids[2]);
  assert.equal((await show(list[1].completedAt.replace('.', ','))).json().id, ids[1]);
  const zonelessHour = await show(nextHour.toISOString().slice(0, 13));
  assert.equal(zonelessHour.code, 2);
  assert.match(zonelessHour.stderr, /T\d{2} has no time zone\n {2}add Z for UTC, as lifeboat shows times \(\S+T\d{2}Z\)/);
  const diff = (await lifeboat(['--repo', d.repo, '--json', 'diff', ids[0]!, ids[2]!])).json();
  assert.deepEqual(diff.changed.map((c: { path: string }) => c.path), ['models/config.json']);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('--json prints exactly one document on stdout, logs go to stderr', async () => {
  const d = await smallDeployment();
  const r = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'incr']);
  assert.equal(r.code, 0);
  const doc = r.json();
  for (const key of ['id', 'type', 'parent', 'files', 'bytes', 'added', 'changed', 'removed', 'storedBytes', 'durationMs']) assert.ok(key in doc, key);
  assert.equal(doc.type, 'full');
  assert.match(r.stderr, /no full backup exists yet/);
  const failed = await lifeboat(['--repo', d.repo, '--json', 'show', 'nomatch']);
  assert.equal(failed.code, 2);
  assert.equal(failed.json().ok, false, 'a failure is still one JSON document');
  const rr = await lifeboat(['--repo', d.repo, '--json', 'restore', 'latest', '--target', path.join(d.work, 'out')]);
  assert.deepEqual(Object.keys(rr.json()).sort(), ['bytes', 'durationMs', 'files', 'point', 'target', 'warnings']);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('init where a repository already is says so (exit 2) and leaves it as it was', async () => {
  const d = await smallDeployment();
  await lifeboat(['--repo', d.repo, 'backup', d.src]);
  const config = await fsp.readFile(path.join(d.repo, 'config.json'));
  const again = await lifeboat(['--repo', d.repo, 'init']);
  assert.equal(again.code, 2, again.stderr);
  assert.match(again.stderr, /there is a lifeboat repository at .* already; refusing to create another there/);
  assert.match(again.stderr, /lifeboat list/);
  assert.deepEqual(await fsp.readFile(path.join(d.repo, 'config.json')), config);
  assert.equal((await lifeboat(['--repo', d.repo, '--json', 'list'])).json().length, 1);
  // A location whose name ends with a space is quoted in the hint as in the message, so that it can be seen.
  const spaced = path.join(d.work, 'repo ');
  assert.equal((await lifeboat(['--repo', spaced, 'init'])).code, 0);
  const twice = await lifeboat(['--repo', spaced, 'init']);
  assert.equal(twice.code, 2, twice.stderr);
  assert.ok(twice.stderr.endsWith(`to start over, empty "${spaced}" first\n`), twice.stderr);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('config errors quote the config file\'s path as other messages quote names', async (t) => {
  const dir = path.join(await tempDir(), 'conf ');
  t.after(() => fsp.rm(path.dirname(dir), { recursive: true, force: true }));
  await fsp.mkdir(dir);
  const file = path.join(dir, 'lifeboat.yaml');
  for (const [yaml, said] of [
    ['repository: [unclosed', `"${file}":1: invalid YAML: `],
    ['repository: !env BACKUP_DIR\n', `"${file}":1: invalid YAML: `],
    ['repository: 5\n', `"${file}": repository: must be text, not the number 5`],
    ['repository: ./r\ntargets:\n  a: { slots: ./s, active: ./l }\n  b: { slots: ./s, active: ./m }\n', `"${file}": targets.b.slots: "${path.join(dir, 's')}" is also targets.a.slots`],
  ]) {
    await fsp.writeFile(file, yaml!);
    const r = await lifeboat(['--config', file, 'list']);
    assert.equal(r.code, 2, r.stderr);
    assert.ok(r.stderr.startsWith(`lifeboat: ${said}`), r.stderr);
  }
});

test('init inside another repository is refused (exit 2), and a folder under data/ not named as a point is never removed as an aborted backup', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  await lifeboat(['--repo', d.repo, 'backup', d.src]);
  for (const inner of [path.join(d.repo, 'data', 'inner'), path.join(d.repo, 'models', 'deep', 'er')]) {
    const refused = await lifeboat(['--repo', inner, 'init']);
    assert.equal(refused.code, 2, refused.stderr);
    assert.ok(refused.stderr.includes(`${inner} lies inside the lifeboat repository at ${d.repo}; refusing to create a repository there`), refused.stderr);
    assert.equal(await exists(inner), false, 'nothing made there');
  }
  const encrypted = await lifeboat(['--repo', path.join(d.repo, 'data', 'inner'), 'init', '--encryption', 'aes-256-gcm']);
  assert.equal(encrypted.code, 2);
  assert.match(encrypted.stderr, /lies inside the lifeboat repository/, 'said before a password is asked for');
  assert.equal((await lifeboat(['--repo', path.join(d.work, 'beside'), 'init'])).code, 0, 'beside it is fine');

  // What such a repository (or anything put there by hand) held is not the repository's to clean up.
  const foreign = path.join(d.repo, 'data', 'inner', 'points', 'kept.json');
  await fsp.mkdir(path.dirname(foreign), { recursive: true });
  await fsp.writeFile(foreign, '{}');
  await fsp.writeFile(path.join(d.src, 'added.txt'), 'more');
  const next = await lifeboat(['--repo', d.repo, 'backup', d.src]);
  assert.equal(next.code, 0, next.stderr);
  assert.doesNotMatch(next.stderr, /data\/inner/);
  assert.equal(await fsp.readFile(foreign, 'utf8'), '{}');
});

test('restore refuses a non-empty target without --delta or --force; --force replaces it', async () => {
  const d = await smallDeployment();
  await lifeboat(['--repo', d.repo, 'backup', d.src]);
  const target = path.join(d.work, 'out');
  await fsp.mkdir(target);
  await fsp.writeFile(path.join(target, 'keep-me'), 'precious');
  const r = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', target]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /not empty/);
  assert.equal(await fsp.readFile(path.join(target, 'keep-me'), 'utf8'), 'precious');
  const forced = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', target, '--force']);
  assert.equal(forced.code, 0, forced.stderr);
  assert.equal(await exists(path.join(target, 'keep-me')), false);
  assert.equal(await fsp.readFile(path.join(target, 'models', 'config.json'), 'utf8'), await fsp.readFile(path.join(d.src, 'config.json'), 'utf8'));
  // --force with --include would leave only the chosen files: putting a tokenizer back must not remove the weights beside it.
  await fsp.writeFile(path.join(target, 'models', 'tok', 'tokenizer.json'), 'damaged');
  const forcedPart = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', target, '--force', '--include', 'models/tok']);
  assert.equal(forcedPart.code, 2);
  assert.match(forcedPart.stderr, /--force with --include would replace the target with only what the patterns choose\n {2}use --delta/);
  assert.ok(await exists(path.join(target, 'models', 'weights.bin')));
  const deltaPart = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', target, '--delta', '--include', 'models/tok']);
  assert.equal(deltaPart.code, 0, deltaPart.stderr);
  assert.equal(await fsp.readFile(path.join(target, 'models', 'tok', 'tokenizer.json'), 'utf8'), await fsp.readFile(path.join(d.src, 'tok', 'tokenizer.json'), 'utf8'));
  assert.ok(await exists(path.join(target, 'models', 'weights.bin')));
  const only = path.join(d.work, 'only');
  const inc = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', only, '--include', 'models/tok/**']);
  assert.equal(inc.code, 0, inc.stderr);
  assert.ok(await exists(path.join(only, 'models', 'tok', 'tokenizer.json')));
  assert.equal(await exists(path.join(only, 'models', 'weights.bin')), false);
  // A directory, or a source, means what is in it; a pattern that matches nothing is an error, not an empty restore.
  const dir = path.join(d.work, 'dir');
  assert.equal((await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', dir, '--include', 'models/tok'])).code, 0);
  assert.ok(await exists(path.join(dir, 'models', 'tok', 'tokenizer.json')));
  assert.equal(await exists(path.join(dir, 'models', 'config.json')), false);
  const whole = path.join(d.work, 'whole');
  assert.equal((await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', whole, '--include', 'models'])).code, 0);
  assert.ok(await exists(path.join(whole, 'models', 'weights.bin')));
  const typo = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', path.join(d.work, 'typo'), '--include', 'tok/**', '--include', 'models/config.json']);
  assert.equal(typo.code, 2);
  assert.match(typo.stderr, /--include "tok\/\*\*" matches nothing in .*\n.*this point's sources: models/);
  assert.equal(await exists(path.join(d.work, 'typo')), false, 'nothing is restored');
  // A link to the live directory is not followed, nor replaced: it names what it is.
  const live = path.join(d.work, 'live');
  await fsp.symlink(target, live);
  const linked = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', live]);
  assert.equal(linked.code, 2);
  assert.match(linked.stderr, new RegExp(`is a symbolic link \\(to ${target.replaceAll('/', '\\/')}\\)\n.*lifeboat failover`));
  assert.equal((await fsp.lstat(live)).isSymbolicLink(), true);
  const file = path.join(d.work, 'a-file');
  await fsp.writeFile(file, 'x');
  const onFile = await lifeboat(['--repo', d.repo, 'restore', 'latest', '--target', file]);
  assert.equal(onFile.code, 2);
  assert.match(onFile.stderr, /exists and is not a directory/);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('a second writer exits 4 naming the holder; a stale lock is taken over; unlock refuses a live lock', async () => {
  const d = await smallDeployment();
  const lockFile = path.join(d.repo, 'locks', 'lock.json');
  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  const live = { host: os.hostname(), pid: process.pid, command: 'backup', startedAt: new Date().toISOString(), refreshedAt: new Date().toISOString(), leaseMs: 1800000 };
  await fsp.writeFile(lockFile, JSON.stringify(live));
  const blocked = await lifeboat(['--repo', d.repo, 'backup', d.src]);
  assert.equal(blocked.code, 4);
  assert.match(blocked.stderr, new RegExp(`pid ${process.pid}`));
  assert.match(blocked.stderr, new RegExp(os.hostname()));
  assert.equal((await lifeboat(['--repo', d.repo, 'unlock'])).code, 4);

  const stale = { ...live, pid: 2 ** 22 + 12345 };
  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  await fsp.writeFile(lockFile, JSON.stringify(stale));
  const took = await lifeboat(['--repo', d.repo, 'backup', d.src]);
  assert.equal(took.code, 0, took.stderr);
  assert.match(took.stderr, /stale lock/);
  assert.equal(await exists(lockFile), false, 'released after the backup');

  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  await fsp.writeFile(lockFile, JSON.stringify({ ...live, host: 'another-host', refreshedAt: new Date(Date.now() - 3600_000).toISOString() }));
  const u = await lifeboat(['--repo', d.repo, '--json', 'unlock']);
  assert.equal(u.code, 0);
  assert.equal(u.json().stale, true);
  assert.equal(await exists(lockFile), false);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('--retry-lock waits for a live holder to finish (hosts whose cron jobs start together), and gives up with exit 4 when it does not', async () => {
  const d = await smallDeployment();
  const lockFile = path.join(d.repo, 'locks', 'lock.json');
  await fsp.mkdir(path.dirname(lockFile), { recursive: true });
  const live = { host: 'gpu-node-7', pid: 4242, command: 'backup', startedAt: new Date().toISOString(), refreshedAt: new Date().toISOString(), leaseMs: 1800000 };
  await fsp.writeFile(lockFile, JSON.stringify(live));

  const gaveUp = await lifeboat(['--repo', d.repo, 'backup', d.src, '--retry-lock', '600ms']);
  assert.equal(gaveUp.code, 4, gaveUp.stderr);
  assert.match(gaveUp.stderr, /the repository is locked by backup on gpu-node-7, pid 4242, since \S+; waiting up to 600ms for it\n/);
  assert.match(gaveUp.stderr, /lifeboat: the repository is locked by backup on gpu-node-7, pid 4242, since \S+, still after waiting 600ms\n {2}wait longer with --retry-lock/);

  // A wait of a bare 0 is no wait: exit 4 at once, as without the flag.
  const noWait = await lifeboat(['--repo', d.repo, 'backup', d.src, '--retry-lock', '0']);
  assert.equal(noWait.code, 4, noWait.stderr);
  assert.match(noWait.stderr, /^lifeboat: the repository is locked by backup on gpu-node-7, pid 4242, since \S+\n {2}wait for it to finish, or let the command wait with --retry-lock 30m/m);
  assert.doesNotMatch(noWait.stderr, /waiting up to/);
  await fsp.writeFile(path.join(d.work, 'lifeboat.yaml'), `repository: ./repo\nlock: { retry: 0 }\nretention: { keepFull: 1, keepWithin: 0 }\n`);
  const noWaitConfig = await lifeboat(['backup', d.src], { cwd: d.work });
  assert.equal(noWaitConfig.code, 4, noWaitConfig.stderr);
  assert.doesNotMatch(noWaitConfig.stderr, /waiting up to/);

  // The holder finishes while the second backup waits; the config gives the wait this time.
  await fsp.writeFile(path.join(d.work, 'lifeboat.yaml'), `repository: ./repo\nlock: { retry: 30s }\n`);
  const waiting = lifeboat(['--json', 'backup', d.src], { cwd: d.work });
  await new Promise((resolve) => setTimeout(resolve, 500));
  await fsp.rm(lockFile);
  const waited = await waiting;
  assert.equal(waited.code, 0, waited.stderr);
  assert.match(waited.stderr, /the repository is locked by backup on gpu-node-7, pid 4242, since \S+; waiting up to 30\.0s for it/);
  assert.equal(waited.json().type, 'full');
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('init refuses a non-empty location; commands on a missing repository exit 2', async () => {
  const d = await smallDeployment();
  const again = await lifeboat(['--repo', d.repo, 'init']);
  assert.equal(again.code, 2);
  const missing = await lifeboat(['--repo', path.join(d.work, 'nothing'), 'list']);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /lifeboat init/);
  // file://repo names a host, not a relative directory: a usage error that says how to write it, not an unexpected one.
  const fileUrl = `file://${path.relative('/', d.repo)}`;
  const hostUrl = await lifeboat(['--repo', fileUrl, 'list']);
  assert.equal(hostUrl.code, 2, hostUrl.stderr);
  assert.match(hostUrl.stderr, new RegExp(`repository ${fileUrl}: not a file:// URL of a local directory\n {2}a file:// URL takes an absolute path after its third slash`));
  assert.equal((await lifeboat(['--repo', `file://${d.repo}`, 'list'])).code, 0);
  assert.equal((await lifeboat(['--repo', `file://localhost${d.repo}`, 'list'])).code, 0);
  // A scheme is case-insensitive (RFC 3986).
  assert.equal((await lifeboat(['--repo', `FILE://${d.repo}`, 'list'])).code, 0);
  // An S3 or file URL a slash short is a usage error, not a local directory named "s3:" where backups meant for S3 would stay.
  const s3 = 'an S3 location is written s3://bucket/prefix';
  for (const [mistyped, written] of [['s3:/ml-backups/prod', s3], ['s3:ml-backups/prod', s3], ['file:/backups/prod', 'a file location is written file:///path']]) {
    const r = await lifeboat(['--repo', mistyped, 'init'], { cwd: d.work });
    assert.equal(r.code, 2, `${mistyped}: ${r.stderr}`);
    assert.ok(r.stderr.includes(`repository ${mistyped}: not a URL of a repository; ${written}\n`), r.stderr);
  }
  assert.deepEqual((await fsp.readdir(d.work)).filter((n) => n.includes(':')), [], 'no local directory was made');
  // A repository path no file system holds (a name over 255 bytes, a path that leaves no room for the repository's files) is a
  // usage error said in a line, not exit 1 with ENAMETOOLONG and the whole path, from any command.
  for (const [url, problem] of [
    ['y'.repeat(300), /a name in its path has 300 bytes, and a file system takes at most 255/],
    [`file://${d.work}/${'y/'.repeat(2000)}`, /its path has \d+ bytes, and leaves no room for the repository's files \(at most 3712\)/],
  ] as const) {
    for (const command of [['init'], ['list'], ['backup', d.src]]) {
      const r = await lifeboat(['--repo', url, ...command], { cwd: d.work });
      assert.equal(r.code, 2, `${command[0]}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`^lifeboat: repository \\S{1,120}: ${problem.source}\n  give a shorter path\n$`));
    }
  }
  assert.deepEqual((await fsp.readdir(d.work)).filter((n) => n.startsWith('y')), [], 'no directory was made');
  const local = await lifeboat(['--repo', './s3:/ml-backups/prod', 'init'], { cwd: d.work });
  assert.equal(local.code, 0, `a local directory so named, written as one: ${local.stderr}`);
  // A repository path where a file is: init says so (exit 2), and other commands find no repository there (exit 2).
  const file = path.join(d.work, 'notes.txt');
  await fsp.writeFile(file, 'not a repository\n');
  for (const at of [file, path.join(file, 'repo')]) {
    const onFile = await lifeboat(['--repo', at, 'init']);
    assert.equal(onFile.code, 2, onFile.stderr);
    assert.match(onFile.stderr, new RegExp(`the repository ${at} cannot be a directory: ${file} is not one`));
    const listed = await lifeboat(['--repo', at, 'list']);
    assert.equal(listed.code, 2, listed.stderr);
    assert.match(listed.stderr, /there is no lifeboat repository at/);
  }
  assert.equal(await fsp.readFile(file, 'utf8'), 'not a repository\n');
  // A model's directory named as the repository has a config.json of its own: no repository there (exit 2), not a damaged one (exit 3).
  const model = path.join(d.work, 'model');
  await fsp.mkdir(model);
  await fsp.writeFile(path.join(model, 'config.json'), JSON.stringify({ architectures: ['LlamaForCausalLM'], hidden_size: 64 }));
  for (const command of [['list'], ['key', 'list'], ['verify']]) {
    const r = await lifeboat(['--repo', model, ...command]);
    assert.equal(r.code, 2, `${command.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`there is no lifeboat repository at ${model}: its config\\.json is not a lifeboat repository's`));
  }
  // A link to a directory not made yet (a volume not mounted) is said as such, not as a file in the way.
  const link = path.join(d.work, 'backups');
  await fsp.symlink(path.join(d.work, 'volume', 'backups'), link);
  const dangling = await lifeboat(['--repo', link, 'init']);
  assert.equal(dangling.code, 2, dangling.stderr);
  assert.ok(dangling.stderr.includes(`${link} is a symbolic link to ${path.join(d.work, 'volume', 'backups')}, which does not exist`), dangling.stderr);
  // Names that end with a space are quoted, as other messages quote them, so that the space is seen.
  const spaced = path.join(d.work, 'notes ');
  await fsp.writeFile(spaced, 'not a repository\n');
  const onSpaced = await lifeboat(['--repo', path.join(spaced, 'repo'), 'init']);
  assert.equal(onSpaced.code, 2, onSpaced.stderr);
  assert.ok(onSpaced.stderr.startsWith(`lifeboat: the repository "${path.join(spaced, 'repo')}" cannot be a directory: "${spaced}" is not one\n`), onSpaced.stderr);
  const spacedLink = path.join(d.work, 'backups ');
  await fsp.symlink(path.join(d.work, 'volume '), spacedLink);
  const danglingSpaced = await lifeboat(['--repo', path.join(spacedLink, 'repo'), 'init']);
  assert.equal(danglingSpaced.code, 2, danglingSpaced.stderr);
  assert.ok(danglingSpaced.stderr.includes(`: "${spacedLink}" is a symbolic link to "${path.join(d.work, 'volume ')}", which does not exist`), danglingSpaced.stderr);
  // A tag key given twice would keep only the second value.
  const twice = await lifeboat(['--repo', d.repo, 'backup', d.src, '--tag', 'release=v1', '--tag', 'release=v2']);
  assert.equal(twice.code, 2, twice.stderr);
  assert.match(twice.stderr, /--tag release is given twice \(release=v1 and release=v2\)/);
  const proto = await lifeboat(['--repo', d.repo, 'backup', d.src, '--tag', '__proto__=x']);
  assert.equal(proto.code, 2, proto.stderr);
  assert.match(proto.stderr, /--tag __proto__=x: a key is up to 128 letters/);
  const odd = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--tag', 'team/owner=ml-platform', '--tag', 'a=b=c']);
  assert.equal(odd.code, 0, odd.stderr);
  const shown = await lifeboat(['--repo', d.repo, '--json', 'list']);
  assert.deepEqual(shown.json().at(-1).tags, { 'team/owner': 'ml-platform', a: 'b=c' });
  const help = await lifeboat(['restore', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /Exit codes/);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('unchanged files are not read again by an incremental backup; one written in place with its mtime set back is, by its change time', { skip: hasFincore ? false : 'fincore (util-linux) is not installed' }, async () => {
  const d = await smallDeployment();
  // Old mtimes: outside the racy window, so size+mtime+inode+ctime are trusted.
  const old = new Date(Date.now() - 3600_000);
  for (const f of ['config.json', 'weights.bin', 'tok/tokenizer.json']) await fsp.utimes(path.join(d.src, f), old, old);
  const full = (await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'full'])).json();
  // Out of the page cache: a read by the next backup would bring it back.
  const tokenizer = path.join(d.src, 'tok', 'tokenizer.json');
  evict(tokenizer);
  // Same size, mtime and inode, other bytes, as a tool that writes in place and keeps times leaves it.
  const weights = path.join(d.src, 'weights.bin');
  const fh = await fsp.open(weights, 'r+');
  await fh.write(Buffer.from('different'), 0, 9, 0);
  await fh.close();
  await fsp.utimes(weights, old, old);
  await fsp.chmod(path.join(d.src, 'config.json'), 0o600);
  const r = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src, '--type', 'incr']);
  assert.equal(r.code, 0, r.stderr);
  const doc = r.json();
  assert.equal(doc.changed, 2, 'the rewritten file and the chmod');
  assert.equal(resident(tokenizer), 0, 'the unchanged file was not read');
  const after = (await lifeboat(['--repo', d.repo, '--json', 'show', doc.id])).json();
  const entry = (p: string) => after.entries.find((e: { path: string }) => e.path === p);
  assert.equal(entry('weights.bin').storedIn, doc.id, 'the rewrite was found and stored');
  assert.equal(entry('weights.bin').sha256, createHash('sha256').update(await fsp.readFile(weights)).digest('hex'));
  // Its change time moved too, so it was read; its bytes were the same, so they were not stored again.
  assert.equal(entry('config.json').storedIn, full.id);
  assert.equal(entry('config.json').mode, 0o600);
  assert.equal(entry('tok/tokenizer.json').storedIn, full.id);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('a reader that closes the pipe early (lifeboat … | head) is not an error', async () => {
  const child = spawnLifeboat(['--help']);
  child.stdout!.destroy();
  const stderr: Buffer[] = [];
  child.stderr!.on('data', (c: Buffer) => stderr.push(c));
  const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  assert.equal(code, 0, Buffer.concat(stderr).toString());
  assert.doesNotMatch(Buffer.concat(stderr).toString(), /EPIPE|Unhandled/);
});

test('a backup or restore that reaches the limit of open files says which limit and how to raise it, exit 1, not an unexpected error', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const src = path.join(work, 'models');
  for (let d = 0; d < 10; d++) {
    await fsp.mkdir(path.join(src, `d${d}`), { recursive: true });
    for (let i = 0; i < 200; i++) await fsp.writeFile(path.join(src, `d${d}`, `f${i}.txt`), `${d} ${i}\n`);
  }
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const hint = '  this process reached its limit of open files: raise it (ulimit -n 4096, or LimitNOFILE= in a systemd unit) and run again\n';
  // A backup reads ahead only when reads are slow, so how many files it has open at once varies from run to run; one
  // that fails is the error Node gives, which the entry point words.
  const reached = asLimitReached(Object.assign(new Error(`EMFILE: too many open files, open '${src}/d0/f1.txt'`), { code: 'EMFILE', errno: -24, syscall: 'open', path: `${src}/d0/f1.txt` }));
  assert.ok(reached instanceof RuntimeFailure);
  assert.equal(reached.exitCode, 1);
  assert.equal(`  ${reached.hint}\n`, hint);
  assert.equal((await lifeboat(['--repo', repo, 'backup', src, '--type', 'full'])).code, 0);

  const target = path.join(work, 'restored');
  // 32 descriptors: enough for node to start, too few for a restore that writes many small files at once.
  const restore = await runChild(['--repo', repo, 'restore', 'latest', '--target', target], { ulimit: { n: 32 } });
  assert.equal(restore.code, 1, restore.stderr);
  assert.match(restore.stderr, /lifeboat: cannot restore into .*restored: EMFILE: too many open files/);
  assert.ok(restore.stderr.endsWith(hint), restore.stderr);
  const again = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', target]);
  assert.equal(again.code, 0, again.stderr);
  assert.equal(compareSnapshots(await snapshotTree(src), await snapshotTree(path.join(target, 'models'))), undefined);
});

test('results that cannot be written (a full disk, a descriptor not open for writing) are one sentence and exit 1, a reader gone is no failure; never a stack trace', { skip: existsSync('/dev/full') ? undefined : 'no /dev/full' }, async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src, '--type', 'full'])).code, 0);
  const full = openSync('/dev/full', 'w');
  const readOnly = openSync(path.join(d.src, 'config.json'), 'r');
  t.after(() => (closeSync(full), closeSync(readOnly)));
  const noStackTrace = (r: { stderr: string }) => assert.doesNotMatch(r.stderr, /\n\s+at |Error:|Node\.js v/, r.stderr);

  for (const args of [['show', 'latest'], ['--json', 'show', 'latest'], ['list'], ['--help']]) {
    const r = await runChild(['--repo', d.repo, ...args], { stdout: full });
    assert.equal(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stderr, 'lifeboat: could not write to standard output: no space left on device (ENOSPC)\n');
  }
  const badFd = await runChild(['--repo', d.repo, 'list'], { stdout: readOnly });
  assert.equal(badFd.code, 1, badFd.stderr);
  assert.equal(badFd.stderr, 'lifeboat: could not write to standard output: bad file descriptor (EBADF)\n');
  // A command that failed keeps its own exit code; with stderr lost too, nothing is said anywhere.
  const failed = await runChild(['--repo', path.join(d.work, 'nothing'), '--json', 'list'], { stdout: full });
  assert.equal(failed.code, 2, failed.stderr);
  noStackTrace(failed);
  const nowhere = await runChild(['--repo', d.repo, 'show', 'latest'], { stdout: full, stderr: full });
  assert.equal(nowhere.code, 1);

  // The reader of stdout, or of stderr, went away (`| head`): the command ends as it would have.
  for (const stream of ['stdout', 'stderr'] as const) {
    const child = spawnLifeboat(['--repo', d.repo, 'show', 'latest']);
    child[stream]!.destroy();
    const other: Buffer[] = [];
    child[stream === 'stdout' ? 'stderr' : 'stdout']!.on('data', (c: Buffer) => other.push(c));
    const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
    assert.equal(code, 0, Buffer.concat(other).toString());
    if (stream === 'stdout') assert.equal(Buffer.concat(other).toString(), '');
  }
  const gone = spawnLifeboat(['--repo', path.join(d.work, 'nothing'), 'list']);
  gone.stderr!.destroy();
  assert.equal(await new Promise<number | null>((r) => gone.on('close', (c) => r(c))), 2);
});

test('names with newlines, tabs or other control characters are quoted with escapes in text output, so that none can fake a line; --json has them as they are', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  const models = path.join(work, 'models');
  await fsp.mkdir(models);
  await fsp.writeFile(path.join(models, 'keep.txt'), 'k');
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  assert.equal((await lifeboat(['--repo', repo, 'backup', models, '--type', 'full', '--tag', 'note=one\nfake line'])).code, 0);
  // A name that writes a line of its own into the listing, as if the point held a file it does not.
  const forged = 'a.bin\n-rw-r--r--             1  2026-11-20T03:00:00Z  forged.bin';
  for (const name of [forged, 'tab\there.txt', 'esc\u001b[2Jclear.txt', 'bidi\u202eNIGOL.txt', '"quoted".txt']) await fsp.writeFile(path.join(models, name), 'x');
  await fsp.symlink('/', path.join(models, 'root\nlink'));
  const b = await lifeboat(['--repo', repo, 'backup', models]);
  assert.equal(b.code, 0, b.stderr);
  assert.match(b.stderr, /warning: "models\/root\\nlink": /);
  assert.equal(b.stderr.split('\n').filter((l) => /warning/.test(l)).length, 1);

  const show = await lifeboat(['--repo', repo, 'show', 'latest']);
  assert.equal(show.code, 0, show.stderr);
  const quoted = ['"models/a.bin\\n-rw-r--r--             1  2026-11-20T03:00:00Z  forged.bin"', '"models/tab\\there.txt"', '"models/esc\\u001b[2Jclear.txt"', '"models/bidi\\u202eNIGOL.txt"'];
  for (const q of quoted) assert.ok(show.stdout.split('\n').some((l) => l.endsWith(`  ${q}`)), `${q} in:\n${show.stdout}`);
  assert.ok(show.stdout.split('\n').some((l) => l.endsWith('  models/"quoted".txt')), 'a name that needs no escape is shown as it is');
  assert.doesNotMatch(show.stdout, /^-rw-r--r-- +1  2026-11-20T03:00:00Z  forged\.bin/m);
  assert.doesNotMatch(show.stdout, /[\u0000-\u0009\u000b-\u001f\u202e]/);
  const entries = (await lifeboat(['--repo', repo, '--json', 'show', 'latest'])).json().entries.map((e: { path: string }) => e.path);
  assert.ok(entries.includes(forged) && entries.includes('tab\there.txt'), '--json has the names as they are');

  const diff = await lifeboat(['--repo', repo, 'diff', (await lifeboat(['--repo', repo, '--json', 'list'])).json()[0].id, 'latest']);
  assert.equal(diff.code, 0, diff.stderr);
  assert.match(diff.stdout, /^\+ "models\/a\.bin\\n-rw-r--r-- {13}1 {2}2026-11-20T03:00:00Z {2}forged\.bin"$/m);
  assert.equal(diff.stdout.trimEnd().split('\n').length, 1 + 5);
  const list = await lifeboat(['--repo', repo, 'list']);
  assert.match(list.stdout, / "note=one\\nfake line" /);
  assert.equal(list.stdout.trimEnd().split('\n').length, 3, list.stdout);
});

test('errors name a file as a listing does: quoted where a trailing space or a control character would be lost, and a hint\'s command can be pasted', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src])).code, 0);
  const trailing = path.join(d.work, 'models ');
  await fsp.mkdir(trailing);
  await fsp.writeFile(path.join(trailing, 'w.bin'), 'w');
  const refused = async (args: string[], message: string, hint?: string) => {
    const r = await lifeboat(args, { cwd: d.work });
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stderr.split('\n')[0], `lifeboat: ${message}`);
    if (hint !== undefined) assert.equal(r.stderr.split('\n')[1], `  ${hint}`);
  };
  await refused(['--repo', d.repo, 'backup', '--source', 'm=nowhere '], `source m: "${path.join(d.work, 'nowhere ')}" does not exist`);
  // The directory that holds a file given as a source: under a name a source may have, its path as one word of a shell.
  await refused(['--repo', d.repo, 'backup', '--source', 'm=models /w.bin'], `source m: "${trailing}/w.bin" is not a directory; a source is a directory, restored as DIR/<source name>/`, `back up the directory that holds it: --source models_='${trailing}', with --exclude for what else is there`);
  await refused(['--repo', d.repo, 'restore', 'latest', '--target', 'models '], `restore target "${trailing}" is not empty`);
  await refused(['--repo', 'no repo ', 'list'], `there is no lifeboat repository at "${path.join(d.work, 'no repo ')}"`);
  await refused(['--config', 'lifeboat.yaml ', 'list'], `config file "${path.join(d.work, 'lifeboat.yaml ')}" does not exist`);
  await refused(['--repo', d.repo, 'drill', '--junit', 'models '], '--junit "models " is a directory', 'give the file a name, such as "models /drill.xml"');
  // The repository's location, in every sentence that names it.
  const spaced = path.join(d.work, 'repo ');
  assert.equal((await lifeboat(['--repo', 'repo ', 'init'], { cwd: d.work })).code, 0);
  await refused(['--repo', 'repo ', 'init'], `there is a lifeboat repository at "${spaced}" already; refusing to create another there`);
  await refused(['--repo', 'repo ', 'show', 'latest'], `the repository at "${spaced}" has no backup points yet`);
  // A newline is escaped in the quotes, as show quotes it: not a backslash and an n of the name.
  await fsp.mkdir(path.join(d.work, 'two\nlines'));
  await fsp.writeFile(path.join(d.work, 'two\nlines', 'f'), 'f');
  await refused(['--repo', d.repo, 'restore', 'latest', '--target', 'two\nlines'], `restore target "${d.work}/two\\nlines" is not empty`);
});

test('list lines up its columns by the width a terminal gives each character: wide tags (CJK, emoji) push nothing out of line', async (t) => {
  const d = await smallDeployment();
  t.after(() => fsp.rm(d.work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src, '--tag', 'model=版本二', '--tag', 'e=🚀'])).code, 0);
  assert.equal((await lifeboat(['--repo', d.repo, 'backup', d.src, '--tag', 'env=prod'])).code, 0);
  assert.equal((await lifeboat(['--repo', d.repo, 'pin', 'latest', '--reason', '安全'])).code, 0);
  const list = await lifeboat(['--repo', d.repo, 'list']);
  assert.equal(list.code, 0, list.stderr);
  // The columns a terminal shows a text in: two for each of these ideographs and this emoji.
  const columns = (text: string) => [...text].reduce((n, c) => n + (/[\u3000-\u9fff\u{1f300}-\u{1faff}]/u.test(c) ? 2 : 1), 0);
  const lines = list.stdout.trimEnd().split('\n');
  assert.equal(lines.length, 3, list.stdout);
  const starts = lines.map((l) => columns(l.slice(0, l.search(/(PINNED|-|pinned: 安全)$/))));
  assert.deepEqual(starts, [starts[0], starts[0], starts[0]], list.stdout);
});

test('what a hook prints, and a repository path, are shown with control characters escaped: none can redraw the terminal or fake a line', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  await fsp.mkdir(path.join(work, 'models'));
  await fsp.writeFile(path.join(work, 'models', 'config.json'), '{}');
  const repo = path.join(work, 'repo\u001b[2J\nlifeboat: fake');
  const init = await lifeboat(['--repo', repo, 'init']);
  assert.equal(init.code, 0, init.stderr);
  assert.match(init.stdout, /^created lifeboat repository [0-9a-f]{8} at ".*\/repo\\u001b\[2J\\nlifeboat: fake"\n$/);
  await fsp.writeFile(path.join(work, 'lifeboat.yaml'), `repository: ${JSON.stringify(repo)}\nsources:\n  models: ./models\nhooks:\n  preBackup: "printf 'paused\\\\033[2J\\\\rX\\\\n'"\n`);
  const backup = await lifeboat(['backup'], { cwd: work });
  assert.equal(backup.code, 0, backup.stderr);
  assert.match(backup.stderr, /Z paused\\u001b\[2J\\rX\n/);
  assert.doesNotMatch(backup.stderr, /[\u0000-\u0009\u000b-\u001f]/);
  const json = await lifeboat(['--log-format', 'json', 'backup'], { cwd: work });
  assert.ok(json.stderr.split('\n').some((l) => l && JSON.parse(l).msg === 'paused\u001b[2J\rX'), '--log-format json has the line as it is');
});

test('a repository inside a source is left out of its backups, instead of being backed up into itself', async () => {
  const work = await tempDir();
  const src = path.join(work, 'srv');
  await fsp.mkdir(path.join(src, 'models'), { recursive: true });
  await fsp.writeFile(path.join(src, 'models', 'config.json'), '{}');
  // Reached through a symlinked path, so only the directory's identity can tell.
  await fsp.symlink(src, path.join(work, 'srv-link'));
  const repo = path.join(work, 'srv-link', 'backups');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  const first = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'full']);
  assert.equal(first.code, 0, first.stderr);
  assert.match(first.stderr, /srv\/backups: the repository lies inside this source; it is left out of the backup/);
  const second = await lifeboat(['--repo', repo, '--json', 'backup', src, '--type', 'full']);
  assert.equal(second.json().files, 1);
  assert.ok(second.json().storedBytes < 16 * 1024, `the first backup's volumes are not stored again (${second.json().storedBytes} bytes)`);
  const shown = await lifeboat(['--repo', repo, '--json', 'show', 'latest']);
  assert.deepEqual(shown.json().entries.map((e: { path: string }) => e.path).filter((p: string) => p.includes('backups')), []);
  await fsp.rm(work, { recursive: true, force: true });
});

test('a file whose name is not UTF-8 is a warning that says so, and the rest is backed up', async () => {
  const d = await smallDeployment();
  const dir = Buffer.from(d.src);
  await fsp.writeFile(Buffer.concat([dir, Buffer.from('/bad-'), Buffer.from([0xff, 0xfe]), Buffer.from('.bin')]), 'x');
  const r = await lifeboat(['--repo', d.repo, '--json', 'backup', d.src]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.json().warnings?.map((w: { code: string }) => w.code) ?? [], ['name-not-utf8']);
  assert.match(r.stderr, /its name is not valid UTF-8, which lifeboat cannot store; rename it to back it up/);
  await fsp.rm(d.work, { recursive: true, force: true });
});

test('sockets and named pipes in a source are left out with one line, not a warning each run; --strict passes', async () => {
  const dir = await tempDir();
  const src = path.join(dir, 'models');
  await fsp.mkdir(src);
  await fsp.writeFile(path.join(src, 'weights.bin'), 'weights');
  execFileSync('mkfifo', [path.join(src, 'requests.fifo')]);
  // A model server's control socket, as one leaves it beside its files.
  const server = net.createServer().listen(path.join(src, 'server.sock'));
  await once(server, 'listening');
  try {
    const repo = path.join(dir, 'repo');
    assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
    const r = await lifeboat(['--repo', repo, 'backup', src, '--strict']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /models: 2 socket\(s\) and named pipe\(s\) left out, which hold no data \(requests\.fifo, server\.sock\)/);
    assert.doesNotMatch(r.stderr, /warning/);
    const shown = await lifeboat(['--repo', repo, '--json', 'show', 'latest']);
    assert.deepEqual(shown.json().entries.map((e: { path: string }) => e.path), ['weights.bin']);
  } finally {
    server.close();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('an S3 endpoint whose TLS certificate this host does not trust gets a hint to give its CA with NODE_EXTRA_CA_CERTS, which then works', async () => {
  // A self-signed certificate for 127.0.0.1, valid for a century: an on-premises MinIO or Ceph with its own CA.
  const helpers = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../test/helpers');
  const cert = path.join(helpers, 'loopback-tls.crt');
  const server = https.createServer({ cert: await fsp.readFile(cert), key: await fsp.readFile(path.join(helpers, 'loopback-tls.key')) }, (_req, res) => {
    res.writeHead(404, { 'content-type': 'application/xml' }).end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const port = (server.address() as net.AddressInfo).port;
    const env = { AWS_ACCESS_KEY_ID: 'lifeboat-test', AWS_SECRET_ACCESS_KEY: 'lifeboat-test-secret', AWS_REGION: 'us-east-1' };
    const args = ['--repo', 's3://models/prod', '--s3-endpoint', `https://127.0.0.1:${port}`, '--s3-path-style', 'list'];
    const untrusted = await runChild(args, { env });
    assert.equal(untrusted.code, 1, untrusted.stderr);
    assert.match(untrusted.stderr, /SELF_SIGNED.*\n {2}this host does not trust the endpoint's TLS certificate: give the CA that signed it with NODE_EXTRA_CA_CERTS=\/path\/to\/ca\.pem/);
    // Following the hint, the server is reached: it has no repository there.
    const trusted = await runChild(args, { env: { ...env, NODE_EXTRA_CA_CERTS: cert } });
    assert.equal(trusted.code, 2, trusted.stderr);
    assert.match(trusted.stderr, /there is no lifeboat repository at s3:\/\/models\/prod/);
  } finally {
    server.close();
  }
});

test('restore --include makes only the sources its patterns choose something in', async () => {
  const work = await tempDir();
  for (const [name, file] of [['a', 'x.bin'], ['b', 'y.txt']]) {
    await fsp.mkdir(path.join(work, name));
    await fsp.writeFile(path.join(work, name, file), `${name}\n`);
  }
  const repo = path.join(work, 'repo');
  assert.equal((await lifeboat(['--repo', repo, 'init'])).code, 0);
  assert.equal((await lifeboat(['--repo', repo, 'backup', '--source', `a=${path.join(work, 'a')}`, '--source', `b=${path.join(work, 'b')}`])).code, 0);
  const out = path.join(work, 'out');
  const r = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', out, '--include', 'a/*.bin']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(await fsp.readdir(out), ['a']);
  // Into a target holding the other source, a --delta leaves it as it is, mode included.
  await fsp.mkdir(path.join(out, 'b'), { mode: 0o700 });
  await fsp.chmod(path.join(out, 'b'), 0o700);
  await fsp.writeFile(path.join(out, 'b', 'mine.txt'), 'kept\n');
  const delta = await lifeboat(['--repo', repo, 'restore', 'latest', '--target', out, '--delta', '--include', 'a']);
  assert.equal(delta.code, 0, delta.stderr);
  assert.deepEqual((await fsp.readdir(path.join(out, 'b'))).sort(), ['mine.txt']);
  assert.equal((await fsp.stat(path.join(out, 'b'))).mode & 0o777, 0o700);
  await fsp.rm(work, { recursive: true, force: true });
});

test('a config that is a named pipe nothing writes to is refused, exit 2, rather than waited on for ever', async () => {
  const dir = await tempDir();
  const fifo = path.join(dir, 'lifeboat.yaml');
  execFileSync('mkfifo', [fifo]);
  const child = spawnLifeboat(['--config', fifo, 'list']);
  const err: Buffer[] = [];
  child.stderr?.on('data', (c: Buffer) => err.push(c));
  // Before, the read of the pipe waited in a worker thread that no SIGTERM could end: killed after 15 s.
  const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  const [code] = (await once(child, 'close')) as [number | null];
  clearTimeout(killer);
  assert.equal(code, 2, Buffer.concat(err).toString());
  assert.match(Buffer.concat(err).toString(), /^lifeboat: config file \S+lifeboat\.yaml is a named pipe and nothing was written to it\n/);
  // A pipe with a writer, as bash's `--config <(…)` gives, is read to its end.
  const piped = execFileSync('bash', ['-c', `node "$1" --config <(sleep 0.3; printf 'repository: %s\\n' "$2") list 2>&1; echo "exit $?"`, 'bash', BIN, path.join(dir, 'none')], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  assert.match(piped, /there is no lifeboat repository at \S+none\n[^]*exit 2$/m);
  await fsp.rm(dir, { recursive: true, force: true });
});

test('a config file larger than 1 MiB (a log named by mistake, /dev/zero) is refused before it is read, exit 2; /dev/null is an empty config', async () => {
  const dir = await tempDir();
  const big = path.join(dir, 'big.yaml');
  await fsp.writeFile(big, `# ${'x'.repeat(2 << 20)}\nrepository: ${dir}/r\n`);
  for (const config of [big, '/dev/zero']) {
    const r = await runChild(['--config', config, 'list']);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stderr, `lifeboat: config file ${config} holds more than 1 MiB; a lifeboat config is a few KiB\n  check which file --config or LIFEBOAT_CONFIG names\n`);
  }
  const empty = await runChild(['--config', '/dev/null', 'list']);
  assert.equal(empty.code, 2);
  assert.match(empty.stderr, /^lifeboat: no repository given\n/);
  await fsp.rm(dir, { recursive: true, force: true });
});

test('a signal that comes after the command has ended (a supervisor stopping it as it exits) leaves the exit code the command had', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  // A timer loaded before lifeboat keeps the process alive after the command ends, as a slow exit on a loaded host does for a moment.
  const child = spawnLifeboat(['--repo', path.join(work, 'repo'), '--json', 'init'], { env: { NODE_OPTIONS: '--import=data:text/javascript,setTimeout(()=>{},20000)' } });
  let stdout = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  const closed = once(child, 'close') as Promise<[number | null, NodeJS.Signals | null]>;
  while (!stdout.endsWith('\n')) await new Promise((resolve) => setTimeout(resolve, 50));
  // The result is printed; the command has ended well before this.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  child.kill('SIGTERM');
  const [code, signal] = await closed;
  assert.deepEqual({ code, signal }, { code: 0, signal: null });
  assert.equal(typeof JSON.parse(stdout), 'object');
});

test('a SIGTERM that comes while the executable is still loading (half a second on a busy host) ends the run as any interrupted one: exit 130, saying so', async (t) => {
  const work = await tempDir();
  t.after(() => fsp.rm(work, { recursive: true, force: true }));
  assert.equal((await lifeboat(['--repo', path.join(work, 'repo'), 'init'])).code, 0);
  // A module hook sends the signal as the CLI's code is being loaded, before it has run any of it.
  await fsp.writeFile(
    path.join(work, 'hooks.mjs'),
    `export async function load(url, context, next) {\n  if (url.endsWith('/bundle/main.js')) process.kill(process.pid, 'SIGTERM');\n  return next(url, context);\n}\n`,
  );
  await fsp.writeFile(path.join(work, 'register.mjs'), `import { register } from 'node:module';\nregister(${JSON.stringify(new URL(`file://${path.join(work, 'hooks.mjs')}`).href)});\n`);
  const r = await runChild(['--repo', path.join(work, 'repo'), 'list'], { env: { NODE_OPTIONS: `--import=${new URL(`file://${path.join(work, 'register.mjs')}`).href}` } });
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /SIGTERM received, stopping cleanly/);
});
