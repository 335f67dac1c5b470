/**
 * mTLS with real certificates (openssl) and real clients (node:https, curl, openssl s_client): every bad
 * client is refused inside the TLS handshake with an alert, before any request is processed (no request
 * line in the proxy log); the good one is served.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
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
  const { headers } = await signRequest({
    url: `https://127.0.0.1:${proxy.port}${path}`,
    body,
    accessKeyId: AKID,
    secretAccessKey: SECRET,
    region: REGION,
    service: SERVICE,
  });
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
    ['a not-yet-valid certificate', () => pki.clients.notYetValid],
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
    const reasons = [
      'no client certificate',
      'CERT_HAS_EXPIRED',
      'CERT_NOT_YET_VALID',
      'DEPTH_ZERO_SELF_SIGNED_CERT',
      'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
    ];
    for (const reason of reasons) {
      expect(text).toMatch(new RegExp(`mTLS client refused .*reason="?${reason}`));
    }
  });

  /** Runs a client process to its end (bounded), stdin closed; stdout and stderr together. */
  const output = (cmd: string, args: string[]): Promise<string> =>
    new Promise((resolve) => {
      const child = execFile(cmd, args, { timeout: 10_000 }, (_e, stdout, stderr) => resolve(`${String(stdout)}${String(stderr)}`));
      child.stdin?.end();
    });
  const curlVerbose = (client: Pair | undefined, version: '1.2' | '1.3'): Promise<string> =>
    output('curl', [
      '-v',
      '-s',
      '-o',
      '/dev/null',
      '--max-time',
      '8',
      '--cacert',
      pki.ca,
      ...(client ? ['--cert', client.cert, '--key', client.key] : []),
      ...(version === '1.2' ? ['--tlsv1.2', '--tls-max', '1.2'] : ['--tlsv1.3']),
      `https://127.0.0.1:${proxy.port}/ping`,
    ]);
  const sClient = (client: Pair | undefined, version: '1.2' | '1.3'): Promise<string> =>
    output('openssl', [
      's_client',
      '-connect',
      `127.0.0.1:${proxy.port}`,
      '-CAfile',
      pki.ca,
      '-ign_eof',
      version === '1.2' ? '-tls1_2' : '-tls1_3',
      ...(client ? ['-cert', client.cert, '-key', client.key] : []),
    ]);

  // What the AWS test client's negative mTLS probes look for, and what rustls sends.
  const badCertificates: [string, () => Pair][] = [
    ['expired', () => pki.clients.expired],
    ['not yet valid', () => pki.clients.notYetValid],
    ['self-signed', () => pki.clients.selfSigned],
    ['from another CA', () => pki.clients.otherCa],
    ['for another name', () => pki.clients.wrongName],
    ['with the name only in the CN', () => pki.clients.cnOnly],
  ];
  for (const [what, pair] of badCertificates) {
    it(`answers a certificate ${what} with a handshake_failure alert inside the handshake (curl -v, s_client; TLS 1.2 and 1.3)`, async () => {
      for (const version of ['1.2', '1.3'] as const) {
        const curl = await curlVerbose(pair(), version);
        expect(curl).toContain(`TLSv${version} (IN), TLS alert, handshake failure`);
        expect(curl).not.toMatch(/Connection reset|< HTTP/);
        const s = await sClient(pair(), version);
        expect(s).toMatch(/sslv3 alert handshake failure.*SSL alert number 40/);
      }
    });
  }

  it('answers a client without a certificate with an alert (TLS 1.2: handshake_failure, TLS 1.3: certificate_required)', async () => {
    expect(await curlVerbose(undefined, '1.2')).toContain('TLSv1.2 (IN), TLS alert, handshake failure');
    expect(await curlVerbose(undefined, '1.3')).toMatch(/tlsv13 alert certificate required/);
    expect(await sClient(undefined, '1.2')).toMatch(/SSL alert number 40/);
    expect(await sClient(undefined, '1.3')).toMatch(/alert certificate required.*SSL alert number 116/);
  });

  it('serves several requests on one kept-alive connection, with bodies over one TLS record each way (TLS 1.3 and 1.2)', async () => {
    for (const maxVersion of ['TLSv1.3', 'TLSv1.2'] as const) {
      const agent = new Agent({
        keepAlive: true,
        maxSockets: 1,
        ca: readFileSync(pki.ca),
        cert: readFileSync(pki.clients.good.cert),
        key: readFileSync(pki.clients.good.key),
        maxVersion,
      });
      try {
        const post = async (p: string, payload: unknown): Promise<{ status: number; json: Record<string, unknown>; reused: boolean }> => {
          const body = JSON.stringify(payload);
          const { headers } = await signRequest({
            url: `https://127.0.0.1:${proxy.port}${p}`,
            body,
            accessKeyId: AKID,
            secretAccessKey: SECRET,
            region: REGION,
            service: SERVICE,
          });
          return new Promise((resolve, reject) => {
            const req = request({ host: '127.0.0.1', port: proxy.port, method: 'POST', path: p, headers, agent }, (res) => {
              const chunks: Buffer[] = [];
              res.on('data', (c: Buffer) => chunks.push(c));
              res.on('end', () =>
                resolve({
                  status: res.statusCode ?? 0,
                  json: JSON.parse(Buffer.concat(chunks).toString()) as Record<string, unknown>,
                  reused: req.reusedSocket,
                }),
              );
            });
            req.on('error', reject);
            req.end(body);
          });
        };
        const keyPath = `${PREFIX}/kms/xks/v1/keys/xks-key`;
        const reused: boolean[] = [];
        for (let i = 0; i < 4; i++) {
          // 4,096 bytes of plaintext and 8,192 of AAD: a request body of about 16.5 KiB (more than one TLS record).
          const plaintext = Buffer.alloc(4096, i + 1).toString('base64');
          const aad = Buffer.alloc(8192, 0x41 + i).toString('base64');
          const meta = {
            requestMetadata: {
              kmsRequestId: `ka-${maxVersion}-${i}`,
              kmsOperation: 'Encrypt',
              awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice',
              kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/k',
            },
          };
          const enc = await post(`${keyPath}/encrypt`, {
            ...meta,
            plaintext,
            additionalAuthenticatedData: aad,
            encryptionAlgorithm: 'AES_GCM',
          });
          expect(enc.status).toBe(200);
          reused.push(enc.reused);
          const dec = await post(`${keyPath}/decrypt`, {
            ...meta,
            requestMetadata: { ...meta.requestMetadata, kmsOperation: 'Decrypt' },
            ciphertext: enc.json.ciphertext,
            initializationVector: enc.json.initializationVector,
            authenticationTag: enc.json.authenticationTag,
            additionalAuthenticatedData: aad,
            encryptionAlgorithm: 'AES_GCM',
          });
          expect(dec.status).toBe(200);
          expect(dec.json.plaintext).toBe(plaintext);
          reused.push(dec.reused);
        }
        // One connection for all eight requests.
        expect(reused).toEqual([false, true, true, true, true, true, true, true]);
      } finally {
        agent.destroy();
      }
    }
  });

  it('never resumes a session: every connection verifies its certificate (TLS 1.2 and 1.3)', async () => {
    for (const version of ['-tls1_2', '-tls1_3']) {
      const out = await output('openssl', [
        's_client',
        '-connect',
        `127.0.0.1:${proxy.port}`,
        '-CAfile',
        pki.ca,
        version,
        '-reconnect',
        '-cert',
        pki.clients.good.cert,
        '-key',
        pki.clients.good.key,
      ]);
      expect(out).toMatch(/^New, /m);
      expect(out).not.toMatch(/^Reused, /m);
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
