/**
 * mTLS with real certificates (openssl) and real clients (node:https, curl): every bad client is refused
 * before any request is processed (no request line in the proxy log), the good one is served.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { promisify } from 'node:util';
import { startTestProxy, REGION, SERVICE, type TestProxy } from './helpers/proxy.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { signRequest } from './helpers/sign.js';
import { CLIENT_DNS_NAME, makePki, type Pair, type TestPki } from './helpers/tls-certs.js';
import type { TestToken } from './helpers/softhsm.js';

const execFileP = promisify(execFile);
const PREFIX = '/mtls/tenant/prefix';
const AKID = 'AKIDMTLSTEST000000001';
const SECRET = 'bXRscy1zZWNyZXQtbXRscy1zZWNyZXQtbXRscy1zZWNyZXQ=';

let token: TestToken;
let pki: TestPki;
let proxy: TestProxy;

beforeAll(async () => {
  pki = makePki();
  token = await makeKeyedToken('xks-mtls');
  proxy = await startTestProxy({
    token,
    stores: [{ prefix: PREFIX, accessKeyId: AKID, secret: SECRET, keys: ['xks-key'] }],
    tls: { certFile: pki.server.cert, keyFile: pki.server.key, mtls: { caFile: pki.ca, dnsName: CLIENT_DNS_NAME } },
  });
});

afterAll(async () => {
  await proxy?.stop();
  token?.cleanup();
  pki?.cleanup();
});

async function healthBody(id: string): Promise<{ body: string; headers: Record<string, string>; path: string }> {
  const path = `${PREFIX}/kms/xks/v1/health`;
  const body = JSON.stringify({ requestMetadata: { kmsRequestId: id, kmsOperation: 'KmsHealthCheck' } });
  const { headers } = await signRequest({ url: `https://127.0.0.1:${proxy.port}${path}`, body, accessKeyId: AKID, secretAccessKey: SECRET, region: REGION, service: SERVICE });
  return { body, headers, path };
}

/** A signed health check over node:https with the given client certificate (or none). */
async function nodeCall(client: Pair | undefined, id: string, maxVersion: 'TLSv1.2' | 'TLSv1.3' = 'TLSv1.3'): Promise<number> {
  const { body, headers, path } = await healthBody(id);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: proxy.port,
        method: 'POST',
        path,
        headers,
        ca: readFileSync(pki.ca),
        ...(client ? { cert: readFileSync(client.cert), key: readFileSync(client.key) } : {}),
        maxVersion,
        agent: false,
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

async function curlCall(client: Pair | undefined, id: string): Promise<{ code: number; http: string }> {
  const { body, headers, path } = await healthBody(id);
  const args = ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--cacert', pki.ca, '--max-time', '10'];
  if (client) args.push('--cert', client.cert, '--key', client.key);
  for (const [k, v] of Object.entries(headers)) if (k !== 'host') args.push('-H', `${k}: ${v}`);
  args.push('--data-binary', body, `https://127.0.0.1:${proxy.port}${path}`);
  try {
    const { stdout } = await execFileP('curl', args);
    return { code: 0, http: stdout };
  } catch (e) {
    const err = e as { code?: number; stdout?: string };
    return { code: err.code ?? -1, http: err.stdout ?? '' };
  }
}

async function logged(id: string): Promise<boolean> {
  await proxy.log.flush();
  return proxy.logText().includes(`kmsRequestId=${id}`);
}

describe('mTLS', () => {
  it('serves a client with a certificate from the CA valid for mtls_client_dns_name (node:https, TLS 1.3 and 1.2; curl)', async () => {
    expect(await nodeCall(pki.clients.good, 'good-13')).toBe(200);
    expect(await nodeCall(pki.clients.good, 'good-12', 'TLSv1.2')).toBe(200);
    const c = await curlCall(pki.clients.good, 'good-curl');
    expect(c).toEqual({ code: 0, http: '200' });
    expect(await logged('good-13')).toBe(true);
    expect(await logged('good-curl')).toBe(true);
  });

  it('accepts a wildcard SAN covering the name', async () => {
    expect(await nodeCall(pki.clients.wildcard, 'wildcard')).toBe(200);
  });

  const refused: [string, () => Pair | undefined][] = [
    ['no certificate', () => undefined],
    ['a certificate from another CA', () => pki.clients.otherCa],
    ['an expired certificate', () => pki.clients.expired],
    ['a self-signed certificate', () => pki.clients.selfSigned],
    ['a certificate for another DNS name', () => pki.clients.wrongName],
    ['the name only in the subject CN (no SAN)', () => pki.clients.cnOnly],
  ];
  for (const [what, pair] of refused) {
    it(`refuses ${what} without processing a request (node:https, TLS 1.3 and 1.2; curl)`, async () => {
      const slug = what.replace(/\W+/g, '-');
      await expect(nodeCall(pair(), `bad13-${slug}`)).rejects.toThrow();
      await expect(nodeCall(pair(), `bad12-${slug}`, 'TLSv1.2')).rejects.toThrow();
      const c = await curlCall(pair(), `badcurl-${slug}`);
      expect(c.code).not.toBe(0);
      expect(c.http).toBe('000');
      for (const id of [`bad13-${slug}`, `bad12-${slug}`, `badcurl-${slug}`]) expect(await logged(id)).toBe(false);
    });
  }

  it('logs each refusal with its reason', async () => {
    await proxy.log.flush();
    const text = proxy.logText();
    expect(text).toMatch(/mTLS client refused.*certificate is not valid for kms-xks-client\.example\.com/);
    for (const reason of ['no client certificate', 'CERT_HAS_EXPIRED', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY']) {
      expect(text).toMatch(new RegExp(`mTLS client refused .*reason="?${reason}`));
    }
  });

  it('offers only TLS 1.2+ with the spec suites', async () => {
    const s = (args: string[]): Promise<string> =>
      new Promise((resolve) => {
        const child = execFile(
          'openssl',
          ['s_client', '-connect', `127.0.0.1:${proxy.port}`, '-cert', pki.clients.good.cert, '-key', pki.clients.good.key, ...args],
          { timeout: 5000 },
          (_e, stdout) => resolve(String(stdout)),
        );
        child.stdin?.end();
      });
    expect(await s(['-tls1_1'])).not.toMatch(/Cipher is (?!\(NONE\))/);
    expect(await s(['-tls1_3', '-ciphersuites', 'TLS_AES_128_GCM_SHA256'])).not.toMatch(/Cipher is TLS_AES_128/);
    expect(await s(['-tls1_3'])).toMatch(/Cipher is TLS_AES_256_GCM_SHA384/);
    expect(await s(['-tls1_2', '-cipher', 'ECDHE-ECDSA-AES128-GCM-SHA256'])).not.toMatch(/Cipher is ECDHE/);
    expect(await s(['-tls1_2'])).toMatch(/Cipher is ECDHE-ECDSA-AES256-GCM-SHA384/);
  });
});
