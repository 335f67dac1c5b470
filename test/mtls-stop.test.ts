/**
 * Stopping a proxy with mTLS on while requests are inside the HSM (the fault module delays C_Encrypt):
 * the terminator stops accepting at once, the requests already sent are answered through it, then it
 * closes. (Before, the terminator closed its connections at the start of stop(), so those requests
 * got a reset instead of their answer.)
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { useFaultyModule, type FaultControl } from './helpers/faulty.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { META, REGION, SERVICE, startTestProxy, type TestProxy } from './helpers/proxy.js';
import { signRequest } from './helpers/sign.js';
import { TEST_KEYS, type TestToken } from './helpers/softhsm.js';
import { CLIENT_DNS_NAME, makePki, type TestPki } from './helpers/tls-certs.js';

const PREFIX = '/mtls/stop/prefix';
const AKID = 'AKIDMTLSSTOP00000001';
const SECRET = 'bXRscy1zdG9wLW10bHMtc3RvcC1tdGxzLXN0b3AtbXRscw==';

let base: TestToken;
let faults: FaultControl;
let pki: TestPki;
let proxy: TestProxy;

beforeAll(async () => {
  pki = makePki();
  base = await makeKeyedToken('xks-mtls-stop');
  let token: TestToken;
  ({ token, faults } = useFaultyModule(base));
  proxy = await startTestProxy({
    token,
    poolMaxSize: 4,
    workerThreads: 4,
    operationTimeoutMs: 5000,
    level: 'INFO',
    stores: [{ prefix: PREFIX, accessKeyId: AKID, secret: SECRET, keys: [TEST_KEYS.ordinary] }],
    tls: { certFile: pki.server.cert, keyFile: pki.server.key, mtls: { caFile: pki.ca, dnsName: CLIENT_DNS_NAME } },
  });
});

afterAll(async () => {
  await proxy?.stop();
  base?.cleanup();
  pki?.cleanup();
});

/** A signed encrypt over mTLS on a new connection; `sent` resolves once the whole request is written. */
async function encrypt(): Promise<{ sent: Promise<void>; status: Promise<number | string> }> {
  const path = `${PREFIX}/kms/xks/v1/keys/${TEST_KEYS.ordinary}/encrypt`;
  const body = JSON.stringify({ requestMetadata: META, plaintext: randomBytes(32).toString('base64'), encryptionAlgorithm: 'AES_GCM' });
  const { headers } = await signRequest({
    url: `https://127.0.0.1:${proxy.port}${path}`,
    body,
    accessKeyId: AKID,
    secretAccessKey: SECRET,
    region: REGION,
    service: SERVICE,
  });
  let sent!: () => void;
  const sentP = new Promise<void>((resolve) => (sent = resolve));
  const status = new Promise<number | string>((resolve) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: proxy.port,
        method: 'POST',
        path,
        headers,
        ca: readFileSync(pki.ca),
        cert: readFileSync(pki.clients.good.cert),
        key: readFileSync(pki.clients.good.key),
        agent: false,
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    req.on('finish', () => sent());
    req.end(body);
  });
  return { sent: sentP, status };
}

it('answers the requests in flight through the terminator when the proxy stops', async () => {
  const warm = await encrypt();
  expect(await warm.status).toBe(200);
  faults.set('delay C_Encrypt 400');
  const calls = await Promise.all([encrypt(), encrypt(), encrypt(), encrypt()]);
  await Promise.all(calls.map((c) => c.sent));
  // Let the requests reach the HSM (each C_Encrypt now takes 400 ms).
  await new Promise((r) => setTimeout(r, 150));
  const stopped = proxy.stop();
  const statuses = await Promise.all(calls.map((c) => c.status));
  await stopped;
  expect(statuses).toEqual([200, 200, 200, 200]);
  expect(proxy.logText()).toMatch(/xks-proxy stopped/);
});
