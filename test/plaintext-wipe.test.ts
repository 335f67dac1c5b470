/**
 * Every copy of request plaintext the proxy makes is zero once the answer is out, on every path:
 * the body's chunk copies, the joined body, the decoded plaintext; success, a bad AAD after a good
 * plaintext, a policy denial, a quota refusal, a body over the limit, a client that leaves mid-body,
 * a non-canonical Base64 plaintext. The proxy shows each copy to a test hook where it makes it
 * (src/http/plaintext-copies.ts, not exported from the command's entry point); the test holds on to
 * them and reads them after the answer. Real proxy, real SoftHSM2 token, raw sockets.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import path from 'node:path';
import { decodeBase64Strict } from '../src/codec.js';
import { watchPlaintextCopies } from '../src/http/plaintext-copies.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { META, REGION, SERVICE, startTestProxy, type CallOptions, type TestProxy } from './helpers/proxy.js';
import { signRequest } from './helpers/sign.js';
import { TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const PREFIX = '/wipe/test/prefix';
const QUOTA_PREFIX = '/wipe/quota/prefix';
const KEY = TEST_KEYS.ordinary;
const CREDS: CallOptions = { accessKeyId: 'AKIDWIPETEST000000001', secret: 'd2lwZS13aXBlLXdpcGUtd2lwZS13aXBlLXdpcGUtd2lwZQ==' };
const QUOTA: CallOptions = { accessKeyId: 'AKIDWIPEQUOTA00000002', secret: 'cXVvdGEtd2lwZS1xdW90YS13aXBlLXF1b3RhLXdpcGUtcXU=' };
const POLICY = path.resolve('test/fixtures/oso/policy.polar');

let token: TestToken;
let proxy: TestProxy;
const copies: Buffer[] = [];

beforeAll(async () => {
  token = await makeKeyedToken('xks-wipe');
  proxy = await startTestProxy(
    {
      token,
      osoPolicy: POLICY,
      stores: [
        { prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [KEY] },
        { prefix: QUOTA_PREFIX, accessKeyId: QUOTA.accessKeyId, secret: QUOTA.secret, keys: [KEY], requestsPerSecond: 1, burst: 1 },
      ],
    },
    'wipe-settings.toml',
  );
  watchPlaintextCopies((b) => copies.push(b));
});

afterEach(() => {
  copies.length = 0;
});

afterAll(async () => {
  watchPlaintextCopies(undefined);
  await proxy?.stop();
  token?.cleanup();
});

/** A signed encrypt as raw bytes, its body split into `parts` writes (chunked transfer coding when `chunked`). */
async function encryptRequest(prefix: string, body: string, parts: number, chunked = false): Promise<string[]> {
  const urlPath = `${prefix}/kms/xks/v1/keys/${KEY}/encrypt`;
  const c = prefix === QUOTA_PREFIX ? QUOTA : CREDS;
  const { headers } = await signRequest({
    url: `http://127.0.0.1:${proxy.port}${urlPath}`,
    body,
    accessKeyId: c.accessKeyId,
    secretAccessKey: c.secret,
    region: REGION,
    service: SERVICE,
  });
  const framing = chunked ? 'transfer-encoding: chunked' : `content-length: ${Buffer.byteLength(body)}`;
  const head = `POST ${urlPath} HTTP/1.1\r\n${Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')}${framing}\r\n\r\n`;
  const size = Math.ceil(body.length / parts);
  const out = [head];
  for (let i = 0; i < body.length; i += size) {
    const part = body.slice(i, i + size);
    out.push(chunked ? `${part.length.toString(16)}\r\n${part}\r\n` : part);
  }
  if (chunked) out.push('0\r\n\r\n');
  return out;
}

/** Writes `parts` 30 ms apart (separate reads: separate chunks); resolves with the status of the answer. */
function send(parts: string[], leaveAfter?: number): Promise<number> {
  return new Promise((resolve) => {
    const s = connect(proxy.port, '127.0.0.1');
    let text = '';
    const done = (status: number): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(status);
    };
    const timer = setTimeout(() => done(0), 3000);
    s.on('data', (c) => {
      text += c.toString('latin1');
      const m = /^HTTP\/1\.1 (\d{3})/.exec(text);
      if (m && text.includes('\r\n\r\n')) done(Number(m[1]));
    });
    s.on('error', () => undefined);
    s.on('connect', async () => {
      for (let i = 0; i < parts.length; i++) {
        if (leaveAfter !== undefined && i === leaveAfter) return done(-1);
        s.write(parts[i]!);
        await new Promise((r) => setTimeout(r, 30));
      }
    });
  });
}

const encryptBody = (plaintext: string, extra: Record<string, unknown> = {}): string =>
  JSON.stringify({ requestMetadata: META, plaintext, encryptionAlgorithm: 'AES_GCM', ...extra });

/** The copies seen: at least `n` of them, every one all zero. */
function expectWiped(n: number): void {
  expect(copies.length).toBeGreaterThanOrEqual(n);
  for (const [i, c] of copies.entries())
    expect(
      c.every((b) => b === 0),
      `copy ${i} of ${copies.length} (${c.length} bytes)`,
    ).toBe(true);
}

describe('every plaintext copy is zero once the answer is out', () => {
  it('an encrypt whose body came in three chunks: chunk copies, joined body, decoded plaintext', async () => {
    const plaintext = randomBytes(3000);
    expect(await send(await encryptRequest(PREFIX, encryptBody(plaintext.toString('base64')), 3))).toBe(200);
    expectWiped(5);
    expect(copies.some((c) => c.length === plaintext.length)).toBe(true);
  });

  it('a bad AAD after a good plaintext: 400, and the decoded plaintext is wiped too', async () => {
    const plaintext = randomBytes(64);
    expect(
      await send(await encryptRequest(PREFIX, encryptBody(plaintext.toString('base64'), { additionalAuthenticatedData: 'not*base64' }), 1)),
    ).toBe(400);
    expectWiped(2);
    expect(copies.some((c) => c.length === plaintext.length)).toBe(true);
  });

  it('a policy denial (403) of a body in chunks', async () => {
    const body = encryptBody(randomBytes(2000).toString('base64'), { requestMetadata: { ...META, kmsViaService: 'rds' } });
    expect(await send(await encryptRequest(PREFIX, body, 3))).toBe(403);
    expectWiped(4);
  });

  it('a quota refusal (429) of a body in chunks', async () => {
    const body = encryptBody(randomBytes(2000).toString('base64'));
    await send(await encryptRequest(QUOTA_PREFIX, body, 1));
    copies.length = 0;
    expect(await send(await encryptRequest(QUOTA_PREFIX, body, 3))).toBe(429);
    expectWiped(4);
  });

  it('a chunked body that grows over the limit after some chunks (413)', async () => {
    const body = encryptBody(randomBytes(45_000).toString('base64'));
    expect(await send(await encryptRequest(PREFIX, body, 8, true))).toBe(413);
    expectWiped(2);
  });

  it('a client that leaves mid-body', async () => {
    const body = encryptBody(randomBytes(3000).toString('base64'));
    expect(await send(await encryptRequest(PREFIX, body, 4), 3)).toBe(-1);
    await new Promise((r) => setTimeout(r, 200));
    expectWiped(2);
  });
});

describe('a non-canonical Base64 plaintext', () => {
  it("is refused and what it decoded to is wiped (no copy left in Buffer's pool)", () => {
    const marker = randomBytes(48);
    // Canonical Base64 of the marker plus a character the decoder skips: decodes to the marker, is refused.
    const b64 = marker.toString('base64');
    const sneaky = `${b64.slice(0, 8)}****${b64.slice(8)}`;
    expect(sneaky.length % 4).toBe(0);
    // Start a fresh pool slab so that the decoding lands in it.
    let probe = Buffer.allocUnsafe(1);
    for (let i = 0; i < 64 && probe.byteOffset > 1024; i++) probe = Buffer.allocUnsafe(1024);
    probe = Buffer.allocUnsafe(1);
    expect(probe.byteOffset).toBeLessThan(2048);
    expect(decodeBase64Strict(sneaky)).toBeUndefined();
    const after = Buffer.allocUnsafe(1);
    expect(after.buffer).toBe(probe.buffer);
    const slab = Buffer.from(after.buffer);
    expect(slab.indexOf(marker.subarray(0, 6))).toBe(-1);
  });
});
