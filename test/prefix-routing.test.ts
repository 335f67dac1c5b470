/**
 * The prefixes the configuration accepts (issue 11, A.1) are routed by the real server: short
 * ones like the guide's "/xyz", a one-letter one next to a longer one that starts with it,
 * characters KMS does not use (warned about at start-up: "." "~" ":" inside a segment), and
 * a URI path longer than KMS's 128 characters. Each answers signed health and metadata with the
 * right key id; a path outside them is 404.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { call, startTestProxy, type TestProxy } from './helpers/proxy.js';
import { TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const PREFIXES = ['/xyz', '/a', '/a/b', '/v1.0~beta', '/tenant:one', `/${'p'.repeat(150)}`];
const cred = (i: number): { accessKeyId: string; secret: string } => ({
  accessKeyId: `AKIAPREFIXROUTING${'ABCDEFGHIJ'[i]}AAA`,
  secret: `prefix-routing-secret-${i}-0123456789abcdefghijklmnop`,
});

let token: TestToken;
let proxy: TestProxy;

beforeAll(async () => {
  token = await makeKeyedToken('xks-prefixes');
  proxy = await startTestProxy({
    token,
    stores: PREFIXES.map((prefix, i) => ({ prefix, ...cred(i), keys: [TEST_KEYS.ordinary] })),
  });
});

afterAll(async () => {
  await proxy?.stop();
  token?.cleanup();
});

describe('accepted prefixes are routed', () => {
  it.each(PREFIXES.map((p, i) => [p.length > 40 ? `${p.slice(0, 12)}... (${p.length})` : p, i] as const))('%s', async (_name, i) => {
    const api = `${PREFIXES[i]}/kms/xks/v1`;
    const health = await call(
      proxy.base,
      `${api}/health`,
      { requestMetadata: { kmsRequestId: `h-${i}`, kmsOperation: 'KmsHealthCheck' } },
      cred(i),
    );
    expect(health.status, health.text).toBe(200);
    const meta = await call(
      proxy.base,
      `${api}/keys/${TEST_KEYS.ordinary}/metadata`,
      {
        requestMetadata: {
          kmsRequestId: `m-${i}`,
          kmsOperation: 'DescribeKey',
          awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice',
          kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/k',
        },
      },
      cred(i),
    );
    expect(meta.status, meta.text).toBe(200);
    expect(meta.json.keySpec).toBe('AES_256');
    // Another key store's credential is refused here: the prefix decided the key store.
    const other = await call(
      proxy.base,
      `${api}/health`,
      { requestMetadata: { kmsRequestId: `o-${i}`, kmsOperation: 'KmsHealthCheck' } },
      cred((i + 1) % PREFIXES.length),
    );
    expect(other.status).toBe(401);
  });

  it('a prefix that is not configured is 404 InvalidUriPathException', async () => {
    for (const p of ['/xy', '/xyz/extra', '/b', '/tenant:two', '/v1.0']) {
      const r = await call(
        proxy.base,
        `${p}/kms/xks/v1/health`,
        { requestMetadata: { kmsRequestId: 'n', kmsOperation: 'KmsHealthCheck' } },
        cred(0),
      );
      expect(r.status, p).toBe(404);
      expect(r.json.errorName).toBe('InvalidUriPathException');
    }
  });

  it('the start-up log warns about what KMS cannot send', () => {
    const log = proxy.logText();
    expect(log).toMatch(/WARN .*external_key_stores\[3\]\.uri_path_prefix: \\"\/v1\.0~beta\\" has characters KMS does not allow/);
    expect(log).toMatch(/WARN .*external_key_stores\[4\]\.uri_path_prefix: \\"\/tenant:one\\" has characters KMS does not allow/);
    expect(log).toMatch(
      /WARN .*external_key_stores\[5\]\.uri_path_prefix: KMS allows at most 128 characters in the URI path .* this one has 162/,
    );
  });
});
