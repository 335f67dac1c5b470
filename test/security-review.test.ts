/**
 * Security review probes: hostile inputs over real HTTP on 127.0.0.1 to a real proxy on a real
 * SoftHSM2 token, signed by the real AWS signer.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from 'node:net';
import { randomBytes } from 'node:crypto';
import { call, META, startTestProxy, type CallOptions, type TestProxy } from './helpers/proxy.js';
import { signRequest } from './helpers/sign.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const PREFIX = '/security/review/prefix';
const API = `${PREFIX}/kms/xks/v1`;
const CREDS: CallOptions = { accessKeyId: 'AKIDSECURITYREVIEW001', secret: 'c2VjdXJpdHktcmV2aWV3LXNlY3JldC1zZWNyZXQtc2VjcmV0' };
/** A keystore whose secret was left as the Rust samples' "" placeholder, with a real access key id. */
const EMPTY_PREFIX = '/security/review/empty';
const EMPTY: CallOptions = { accessKeyId: 'AKIDEMPTYSECRET000001', secret: '' };

/** A keystore with a small quota (1/s, burst 5). */
const QUOTA_PREFIX = '/security/review/quota';
const QUOTA: CallOptions = { accessKeyId: 'AKIDQUOTAREVIEW000001', secret: 'cXVvdGEtcXVvdGEtcXVvdGEtcXVvdGEtcXVvdGEtcXVvdGE=' };

let token: TestToken;
let proxy: TestProxy;

beforeAll(async () => {
  token = await makeKeyedToken('xks-secrev');
  proxy = await startTestProxy(
    {
      token,
      stores: [
        { prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [TEST_KEYS.ordinary] },
        {
          prefix: QUOTA_PREFIX,
          accessKeyId: QUOTA.accessKeyId,
          secret: QUOTA.secret,
          keys: [TEST_KEYS.ordinary],
          requestsPerSecond: 1,
          burst: 5,
        },
        { prefix: EMPTY_PREFIX, accessKeyId: EMPTY.accessKeyId, secret: '', keys: [TEST_KEYS.ordinary] },
      ],
    },
    'secrev-settings.toml',
  );
});

afterAll(async () => {
  await proxy?.stop();
  token?.cleanup();
});

/** Sends raw bytes, returns everything the server wrote until it closed or `ms` passed. */
function raw(data: (string | Buffer)[], ms = 1500, gapMs = 0): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(proxy.port, '127.0.0.1');
    let out = '';
    const timer = setTimeout(() => {
      s.destroy();
      resolve(out);
    }, ms);
    s.on('data', (c) => (out += c.toString('latin1')));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
    s.on('connect', async () => {
      for (const d of data) {
        if (s.destroyed) break;
        s.write(d);
        if (gapMs > 0) await new Promise((r) => setTimeout(r, gapMs));
      }
    });
  });
}

async function alive(): Promise<void> {
  const r = await fetch(`http://127.0.0.1:${proxy.port}/ping`);
  expect(r.status).toBe(200);
}

async function signedHeaders(path: string, body: string, c: CallOptions = CREDS): Promise<Record<string, string>> {
  const { headers } = await signRequest({
    url: `http://127.0.0.1:${proxy.port}${path}`,
    body,
    accessKeyId: c.accessKeyId,
    secretAccessKey: c.secret,
    region: 'us-east-1',
    service: 'kms-xks-proxy',
  });
  return headers;
}

function headerBlock(h: Record<string, string>): string {
  return Object.entries(h)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
}

const healthBody = JSON.stringify({ requestMetadata: { kmsRequestId: 'sr-1', kmsOperation: 'KmsHealthCheck' } });
const health = (): unknown => JSON.parse(healthBody);
const encryptBody = (): Record<string, unknown> => ({
  requestMetadata: META,
  plaintext: randomBytes(16).toString('base64'),
  encryptionAlgorithm: 'AES_GCM',
});

/** The status line and the JSON body of the first response in `out` (raw HTTP/1.1 text). */
function firstResponse(out: string): { status: number; json: Record<string, unknown> } {
  const m = /^HTTP\/1\.1 (\d{3})[^\r]*\r\n/.exec(out);
  if (m === null) return { status: 0, json: {} };
  const sep = out.indexOf('\r\n\r\n');
  const len = /content-length: (\d+)/i.exec(out.slice(0, sep));
  const text = out.slice(sep + 4, sep + 4 + (len ? Number(len[1]) : 0));
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // not JSON
  }
  return { status: Number(m[1]), json };
}

describe('SigV4: a credential with an empty secret', () => {
  it('never authenticates, although its access key id is known (Rust sample "" placeholder)', async () => {
    const paths = [
      [`${EMPTY_PREFIX}/kms/xks/v1/health`, health()],
      [`${EMPTY_PREFIX}/kms/xks/v1/keys/${TEST_KEYS.ordinary}/metadata`, { requestMetadata: META }],
      [`${EMPTY_PREFIX}/kms/xks/v1/keys/${TEST_KEYS.ordinary}/encrypt`, encryptBody()],
    ] as const;
    for (const [p, b] of paths) {
      const r = await call(proxy.base, p, b, EMPTY);
      expect(r.status, p).toBe(401);
      expect(r.json.errorName, p).toBe('AuthenticationFailedException');
    }
    // The keystore with a real secret is unaffected.
    expect((await call(proxy.base, `${API}/health`, health(), CREDS)).status).toBe(200);
  });
});

describe('quota', () => {
  it("unauthenticated traffic (bad secret, another keystore's credential, no signature) takes no token", async () => {
    const url = `${QUOTA_PREFIX}/kms/xks/v1/health`;
    for (let i = 0; i < 10; i++) {
      expect((await call(proxy.base, url, health(), { ...QUOTA, secret: 'd3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmctd3Jvbmc=' })).status).toBe(
        401,
      );
      expect((await call(proxy.base, url, health(), CREDS)).status).toBe(401);
      expect((await call(proxy.base, url, health(), { ...QUOTA, unsigned: true })).status).toBe(401);
    }
    const results = await Promise.all(Array.from({ length: 5 }, () => call(proxy.base, url, health(), QUOTA)));
    expect(results.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    // And the quota does bite for authenticated traffic (so the test above can fail).
    const more = await Promise.all(Array.from({ length: 3 }, () => call(proxy.base, url, health(), QUOTA)));
    expect(more.map((r) => r.json.errorName)).toContain('ThrottlingException');
  });
});

describe('hostile HTTP framing: a typed answer or a closed connection, and the process stays up', () => {
  it('a chunked body and a body sent one byte per write are served', async () => {
    const h = await signedHeaders(`${API}/health`, healthBody);
    const half = healthBody.length >> 1;
    const chunked =
      [healthBody.slice(0, half), healthBody.slice(half)].map((c) => `${c.length.toString(16)}\r\n${c}\r\n`).join('') + '0\r\n\r\n';
    const a = await raw([`POST ${API}/health HTTP/1.1\r\n${headerBlock(h)}transfer-encoding: chunked\r\n\r\n`, chunked], 1000);
    expect(firstResponse(a).status).toBe(200);
    const parts: string[] = [`POST ${API}/health HTTP/1.1\r\n${headerBlock(h)}content-length: ${healthBody.length}\r\n\r\n`];
    for (const c of healthBody) parts.push(c);
    const b = await raw(parts, 1500, 1);
    expect(firstResponse(b).status).toBe(200);
    await alive();
  });

  it('content-length lies, CL+TE, aborted bodies, garbage and oversized headers', async () => {
    const h = await signedHeaders(`${API}/health`, healthBody);
    const head = `POST ${API}/health HTTP/1.1\r\n${headerBlock(h)}`;
    // Shorter than the body: the truncated body does not verify.
    const short = firstResponse(await raw([`${head}content-length: 10\r\n\r\n${healthBody}`], 800));
    expect(short).toMatchObject({ status: 401, json: { errorName: 'AuthenticationFailedException' } });
    // Longer, negative, huge, CL and TE together, garbage, oversized headers: never a 200.
    for (const req of [
      `${head}content-length: 1000\r\n\r\n${healthBody}`,
      `${head}content-length: -5\r\n\r\n${healthBody}`,
      `${head}content-length: 99999999999999999999\r\n\r\n${healthBody}`,
      `${head}content-length: ${healthBody.length}\r\ntransfer-encoding: chunked\r\n\r\n${healthBody}`,
      'GARBAGE\r\n\r\n',
      `${head}x-big: ${'a'.repeat(200_000)}\r\ncontent-length: ${healthBody.length}\r\n\r\n${healthBody}`,
    ]) {
      expect(firstResponse(await raw([req], 500)).status).not.toBe(200);
    }
    for (let i = 0; i < 5; i++) await raw([`${head}content-length: ${healthBody.length}\r\n\r\n${healthBody.slice(0, 10)}`], 50);
    await alive();
  });
});

describe('hostile JSON and paths', () => {
  const k = `${API}/keys/${TEST_KEYS.ordinary}/encrypt`;
  const meta = JSON.stringify(META);
  const pt = randomBytes(16).toString('base64');

  it('duplicate keys, __proto__, deep nesting, non-UTF-8, empty: 400 ValidationException', async () => {
    const bodies: [string, RegExp][] = [
      [`{"requestMetadata":${meta},"plaintext":"${pt}","encryptionAlgorithm":"AES_GCM","encryptionAlgorithm":"X"}`, /encryptionAlgorithm/],
      [`{"__proto__":{"plaintext":"${pt}"},"requestMetadata":${meta},"encryptionAlgorithm":"AES_GCM"}`, /Missing plaintext/],
      [`${'['.repeat(20000)}${']'.repeat(20000)}`, /JSON object/],
      [`{"requestMetadata":${'{"a":'.repeat(6000)}1${'}'.repeat(6000)}}`, /requestMetadata/],
      ['{\xff\xfe}', /not valid JSON/],
      ['', /not valid JSON/],
    ];
    for (const [b, why] of bodies) {
      const r = await call(proxy.base, k, b, CREDS);
      expect(r.status, b.slice(0, 30)).toBe(400);
      expect(r.json.errorName).toBe('ValidationException');
      expect(String(r.json.errorMessage)).toMatch(why);
      expect(r.text).not.toContain(pt);
    }
  });

  it('long or percent-encoded key ids are 404 KeyNotFoundException, never another key', async () => {
    const pct = TEST_KEYS.ordinary.replace(/^./, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
    for (const id of ['k'.repeat(20_000), pct, encodeURIComponent('a/b')]) {
      const r = await call(proxy.base, `${API}/keys/${id}/encrypt`, encryptBody(), CREDS);
      expect(r.status).toBe(404);
      expect(r.json.errorName).toBe('KeyNotFoundException');
    }
    const r = await call(proxy.base, `${PREFIX}/kms/xks/v1/%68ealth`, health(), CREDS);
    expect(r.json.errorName).toBe('InvalidUriPathException');
    await alive();
  });
});

describe('aborted requests', () => {
  it('requests aborted mid-body leave nothing in flight: stop() does not wait for them', async () => {
    const h = await signedHeaders(`${API}/health`, healthBody);
    for (let i = 0; i < 5; i++) {
      await raw(
        [`POST ${API}/health HTTP/1.1\r\n${headerBlock(h)}content-length: ${healthBody.length}\r\n\r\n${healthBody.slice(0, 10)}`],
        100,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
    const t0 = Date.now();
    const p = proxy;
    proxy = undefined as unknown as TestProxy;
    await p.stop();
    expect(Date.now() - t0).toBeLessThan(2000);
  });
});
