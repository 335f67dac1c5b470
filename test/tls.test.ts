/** TLS without mTLS (uWS SSLApp): TLS 1.2/1.3 only, the spec's TLS 1.2 suites, real clients. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { REGION, SERVICE, startTestProxy, type TestProxy } from './helpers/proxy.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { signRequest } from './helpers/sign.js';
import { makePki, type TestPki } from './helpers/tls-certs.js';
import type { TestToken } from './helpers/softhsm.js';

const PREFIX = '/tls/tenant/prefix01';
const AKID = 'AKIDTLSTEST0000000001';
const SECRET = 'dGxzLXNlY3JldC10bHMtc2VjcmV0LXRscy1zZWNyZXQtdGw=';

let token: TestToken;
let pki: TestPki;
let proxy: TestProxy;

beforeAll(async () => {
  pki = makePki();
  token = await makeKeyedToken('xks-tls');
  proxy = await startTestProxy({
    token,
    stores: [{ prefix: PREFIX, accessKeyId: AKID, secret: SECRET, keys: ['xks-key'] }],
    tls: { certFile: pki.server.cert, keyFile: pki.server.key },
  });
});
afterAll(async () => {
  await proxy?.stop();
  token?.cleanup();
  pki?.cleanup();
});

function sClient(args: string[]): Promise<string> {
  return new Promise((resolve) => {
    const child = execFile('openssl', ['s_client', '-connect', `127.0.0.1:${proxy.port}`, ...args], { timeout: 5000 }, (_e, stdout) =>
      resolve(String(stdout)),
    );
    child.stdin?.end();
  });
}

describe('TLS', () => {
  it('serves a signed request over node:https (TLS 1.3 and 1.2)', async () => {
    const path = `${PREFIX}/kms/xks/v1/health`;
    for (const maxVersion of ['TLSv1.3', 'TLSv1.2'] as const) {
      const body = JSON.stringify({ requestMetadata: { kmsRequestId: `tls-${maxVersion}`, kmsOperation: 'KmsHealthCheck' } });
      const { headers } = await signRequest({
        url: `${proxy.base}${path}`,
        body,
        accessKeyId: AKID,
        secretAccessKey: SECRET,
        region: REGION,
        service: SERVICE,
      });
      const status = await new Promise<number>((resolve, reject) => {
        const req = request(
          { host: '127.0.0.1', port: proxy.port, method: 'POST', path, headers, ca: readFileSync(pki.ca), maxVersion, agent: false },
          (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode ?? 0));
          },
        );
        req.on('error', reject);
        req.end(body);
      });
      expect(status).toBe(200);
    }
  });

  it('refuses TLS 1.1 and TLS 1.2 suites outside the spec; offers the spec suites', async () => {
    expect(await sClient(['-tls1_1'])).not.toMatch(/Cipher is (?!\(NONE\))/);
    expect(await sClient(['-tls1_2', '-cipher', 'ECDHE-ECDSA-AES128-GCM-SHA256'])).not.toMatch(/Cipher is ECDHE/);
    expect(await sClient(['-tls1_2', '-cipher', 'AES256-GCM-SHA384'])).not.toMatch(/Cipher is AES/);
    expect(await sClient(['-tls1_2'])).toMatch(/Cipher is ECDHE-ECDSA-AES256-GCM-SHA384/);
    expect(await sClient(['-tls1_3', '-ciphersuites', 'TLS_CHACHA20_POLY1305_SHA256'])).toMatch(/Cipher is TLS_CHACHA20_POLY1305_SHA256/);
    expect(await sClient(['-tls1_3'])).toMatch(/Cipher is TLS_AES_256_GCM_SHA384/);
  });

  it('curl gets /ping over https', async () => {
    const out = await new Promise<string>((resolve, reject) =>
      execFile('curl', ['-s', '--cacert', pki.ca, `https://127.0.0.1:${proxy.port}/ping`], (e, stdout) =>
        e ? reject(e) : resolve(stdout),
      ),
    );
    expect(out).toMatch(/^pong from xks-proxy v/);
  });
});
