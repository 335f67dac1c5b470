/**
 * SIGTERM with no deadline (operation_timeout_milli = 0) and a call stuck in the HSM (issue 11,
 * B.9): the real CLI still ends, within the drain grace (10 s) + the engine's close grace
 * (500 ms) + a margin.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { spawnProxyCli } from './helpers/cli.js';
import { useFaultyModule, waitFor, type FaultControl } from './helpers/faulty.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { call, META, settingsToml, type CallOptions } from './helpers/proxy.js';
import { TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const PREFIX = '/fault/stop/prefix';
const API = `${PREFIX}/kms/xks/v1`;
const CREDS: CallOptions = { accessKeyId: 'AKIDFAULTSTOP0000001', secret: 'c3RvcC1zdG9wLXN0b3Atc3RvcC1zdG9wLXN0b3Atc3Q=' };
const DRAIN_MS = 10_000; // startProxy's default drain grace (the CLI sets no other)
const BOUND_MS = DRAIN_MS + 500 + 2_500;

let base: TestToken;
let token: TestToken;
let faults: FaultControl;

beforeAll(async () => {
  base = await makeKeyedToken('xks-fault-stop');
  ({ token, faults } = useFaultyModule(base));
});

afterAll(() => {
  faults?.clear();
  base?.cleanup();
});

it('SIGTERM ends the process within the bound while C_Encrypt is blocked in the HSM', async () => {
  const settings = path.join(token.dir, 'stop.toml');
  writeFileSync(
    settings,
    settingsToml({
      token,
      operationTimeoutMs: 0,
      stores: [{ prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [TEST_KEYS.ordinary] }],
    }),
  );
  const proxy = await spawnProxyCli({ ...token.env, XKS_PROXY_SETTINGS_TOML: settings });
  const base = `http://127.0.0.1:${proxy.port}`;
  const body = { requestMetadata: META, plaintext: Buffer.from('stuck').toString('base64'), encryptionAlgorithm: 'AES_GCM' };
  try {
    expect((await call(base, `${API}/keys/${TEST_KEYS.ordinary}/encrypt`, body, CREDS)).status).toBe(200);
    faults.set('block C_Encrypt');
    const blocked = faults.calls('C_Encrypt');
    const stuck = call(base, `${API}/keys/${TEST_KEYS.ordinary}/encrypt`, body, CREDS).catch(() => 'no answer');
    expect(await waitFor(() => faults.calls('C_Encrypt') > blocked, 5000)).toBe(true); // inside the HSM now
    const t0 = performance.now();
    proxy.child.kill('SIGTERM');
    const code = await Promise.race([proxy.exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), BOUND_MS + 5_000))]);
    const ms = performance.now() - t0;
    expect(code).toBe(0);
    expect(ms).toBeLessThan(BOUND_MS);
    expect(proxy.output()).toMatch(/stopping with requests still in flight/);
    expect(proxy.output()).toMatch(/xks-proxy stopped/);
    await stuck;
  } finally {
    faults.clear();
    proxy.child.kill('SIGKILL');
  }
}, 30_000);
