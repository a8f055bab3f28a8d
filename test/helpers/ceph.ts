/**
 * A throwaway single-node Ceph cluster serving S3 through radosgw, for tests:
 * one monitor, one OSD on memstore (data lives in RAM), no manager, cephx off,
 * everything on 127.0.0.1 in a temporary directory. It starts in a few seconds.
 *
 * Settings that matter (each one was needed, see the comments in the config):
 * a short paxos propose interval, `ms mon client mode = crc secure` for radosgw,
 * and a short garbage-collection delay so deleted data leaves memstore's RAM.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { ProcessGroup, freePort, run, sleep, stderrTail, waitForPort } from './processes.js';

export const CEPH_TEST_ACCESS_KEY = 'LIFEBOATTESTKEY00001';
export const CEPH_TEST_SECRET_KEY = 'lifeboat-test-secret-key-not-a-real-one-0001';

export interface CephS3 {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** Makes another radosgw user (owning nothing) and returns its keys. */
  createUser(uid: string): Promise<{ accessKeyId: string; secretAccessKey: string }>;
  stop(): Promise<void>;
}

/** Whether the Ceph binaries this needs are installed. */
export async function cephAvailable(): Promise<boolean> {
  for (const binary of ['ceph-mon', 'ceph-osd', 'radosgw', 'radosgw-admin', 'monmaptool', 'ceph']) {
    try {
      await run('sh', ['-c', `command -v ${binary}`]);
    } catch {
      return false;
    }
  }
  return true;
}

export async function startCephS3(options: { memstoreBytes?: number } = {}): Promise<CephS3> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'lifeboat-ceph-'));
  const processes = new ProcessGroup(dir);
  try {
    return await bringUp(dir, processes, options.memstoreBytes ?? 2 * 1024 ** 3);
  } catch (err) {
    await processes.stop(0);
    await fsp.rm(dir, { recursive: true, force: true });
    throw err;
  }
}

async function bringUp(dir: string, processes: ProcessGroup, memstoreBytes: number): Promise<CephS3> {
  const fsid = randomUUID();
  const monV2 = await freePort();
  const monV1 = await freePort();
  const rgwPort = await freePort();
  const monAddrs = `[v2:127.0.0.1:${monV2},v1:127.0.0.1:${monV1}]`;
  const conf = path.join(dir, 'ceph.conf');
  await fsp.writeFile(
    conf,
    `[global]
fsid = ${fsid}
mon host = ${monAddrs}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = ${memstoreBytes}
# Without this each pool radosgw creates waits seconds for a paxos commit.
paxos propose interval = 0.1
mon allow pool delete = true
mon warn on pool no redundancy = false
run dir = ${dir}/run
log file = ${dir}/log/$name.log
admin socket = ${dir}/run/$name.asok
pid file = ${dir}/run/$name.pid
mon data = ${dir}/mon/$name
osd data = ${dir}/osd/$name
keyring = ${dir}/keyring.$name
crash dir = ${dir}/crash
debug ms = 0

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:${rgwPort} tcp_nodelay=1
rgw data = ${dir}/rgw
# With cephx off radosgw otherwise hangs at start (get_initial_auth_request returned -13).
ms mon client mode = crc secure
# memstore keeps deleted data in RAM until garbage collection runs (2 h by default).
rgw gc obj min wait = 15
rgw gc processor period = 15
rgw enable usage log = false
`,
  );
  for (const sub of ['run', 'log', 'mon', 'osd', 'rgw', 'crash']) {
    await fsp.mkdir(path.join(dir, sub), { recursive: true });
  }

  const monmap = path.join(dir, 'monmap');
  await run('monmaptool', ['--create', '--fsid', fsid, '--addv', 'a', monAddrs, monmap]);
  await run('ceph-mon', ['-c', conf, '--mkfs', '-i', 'a', '--monmap', monmap]);
  const mon = processes.spawn('ceph-mon', ['-c', conf, '-f', '-i', 'a']);
  await waitForPort(monV2, 20_000, 'ceph-mon').catch((err) => {
    throw new Error(`${(err as Error).message}\n${stderrTail(mon)}`);
  });

  const ceph = (...args: string[]) => run('ceph', ['-c', conf, '--connect-timeout', '20', ...args], 30_000);
  const osdUuid = randomUUID();
  const osdId = (await ceph('osd', 'new', osdUuid)).trim();
  await fsp.mkdir(path.join(dir, 'osd', `osd.${osdId}`), { recursive: true });
  await run('ceph-osd', ['-c', conf, '-i', osdId, '--mkfs', '--osd-uuid', osdUuid]);
  processes.spawn('ceph-osd', ['-c', conf, '-f', '-i', osdId]);
  await waitFor(20_000, 'osd up', async () => {
    const dump = JSON.parse(await ceph('osd', 'dump', '--format', 'json')) as { osds: { osd: number; up: number }[] };
    return dump.osds.some((o) => String(o.osd) === osdId && o.up === 1);
  });

  const rgw = processes.spawn('radosgw', ['-c', conf, '-f', '-n', 'client.rgw.a']);
  await waitForPort(rgwPort, 60_000, 'radosgw').catch((err) => {
    throw new Error(`${(err as Error).message}\n${stderrTail(rgw)}`);
  });
  const createUser = async (uid: string, accessKeyId: string, secretAccessKey: string) => {
    await run('radosgw-admin', [
      '-c',
      conf,
      '-n',
      'client.rgw.a',
      'user',
      'create',
      `--uid=${uid}`,
      `--display-name=${uid}`,
      `--access-key=${accessKeyId}`,
      `--secret-key=${secretAccessKey}`,
    ]);
    return { accessKeyId, secretAccessKey };
  };
  await createUser('lifeboat-test', CEPH_TEST_ACCESS_KEY, CEPH_TEST_SECRET_KEY);

  return {
    endpoint: `http://127.0.0.1:${rgwPort}`,
    accessKeyId: CEPH_TEST_ACCESS_KEY,
    secretAccessKey: CEPH_TEST_SECRET_KEY,
    createUser: (uid) => createUser(uid, randomBytes(10).toString('hex').toUpperCase(), randomBytes(20).toString('hex')),
    async stop() {
      // Data is throwaway: no need to wait for a clean shutdown.
      await processes.stop(1000);
      await fsp.rm(dir, { recursive: true, force: true });
    },
  };
}

async function waitFor(timeoutMs: number, what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}
