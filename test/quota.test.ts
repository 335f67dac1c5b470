/** Per-keystore quotas: token bucket unit tests and 429 ThrottlingException over HTTP at the configured rate. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenBucket } from '../src/auth/quota.js';
import { call, startTestProxy, type CallOptions, type TestProxy } from './helpers/proxy.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import type { TestToken } from './helpers/softhsm.js';

describe('TokenBucket', () => {
  it('starts full, refills at the rate, never above the burst', () => {
    let t = 0;
    const b = new TokenBucket(10, 3, () => t);
    expect([b.tryTake(), b.tryTake(), b.tryTake(), b.tryTake()]).toEqual([true, true, true, false]);
    t += 100; // one token
    expect([b.tryTake(), b.tryTake()]).toEqual([true, false]);
    t += 10_000; // capped at 3
    expect([b.tryTake(), b.tryTake(), b.tryTake(), b.tryTake()]).toEqual([true, true, true, false]);
    expect(b.sameAs(10, 3)).toBe(true);
    expect(b.sameAs(10, 4)).toBe(false);
  });
});

describe('over HTTP', () => {
  const LIMITED = '/quota/tenant/limited';
  const FREE = '/quota/tenant/free0001';
  const L: CallOptions = { accessKeyId: 'AKIDQUOTALIMITED00001', secret: 'cXVvdGEtc2VjcmV0LXF1b3RhLXNlY3JldC1xdW90YS1zZWM=' };
  const F: CallOptions = { accessKeyId: 'AKIDQUOTAFREE00000002', secret: 'ZnJlZS1zZWNyZXQtZnJlZS1zZWNyZXQtZnJlZS1zZWNyZXQ=' };
  let token: TestToken;
  let proxy: TestProxy;
  beforeAll(async () => {
    token = await makeKeyedToken('xks-quota');
    proxy = await startTestProxy({
      token,
      level: 'INFO',
      stores: [
        { prefix: LIMITED, accessKeyId: L.accessKeyId, secret: L.secret, keys: ['xks-key'], requestsPerSecond: 20, burst: 5 },
        { prefix: FREE, accessKeyId: F.accessKeyId, secret: F.secret, keys: ['xks-key'] },
      ],
    });
  });
  afterAll(async () => {
    await proxy?.stop();
    token?.cleanup();
  });
  const health = { requestMetadata: { kmsRequestId: 'q', kmsOperation: 'KmsHealthCheck' } };

  it('a burst beyond `burst` gets 429 ThrottlingException; other keystores are not affected', async () => {
    const rs = await Promise.all(Array.from({ length: 15 }, () => call(proxy.base, `${LIMITED}/kms/xks/v1/health`, health, L)));
    const ok = rs.filter((r) => r.status === 200).length;
    const throttled = rs.filter((r) => r.status === 429);
    expect(ok).toBeGreaterThanOrEqual(5);
    expect(ok).toBeLessThanOrEqual(7);
    expect(throttled.length).toBe(15 - ok);
    expect(throttled[0]!.json.errorName).toBe('ThrottlingException');
    const free = await Promise.all(Array.from({ length: 15 }, () => call(proxy.base, `${FREE}/kms/xks/v1/health`, health, F)));
    expect(free.every((r) => r.status === 200)).toBe(true);
  });

  it('sustained load is served at requests_per_second', async () => {
    await new Promise((r) => setTimeout(r, 400)); // refill
    const started = performance.now();
    let ok = 0;
    let throttled = 0;
    // ~100 requests/s offered for 1.5 s against 20/s with burst 5.
    while (performance.now() - started < 1500) {
      const r = await call(proxy.base, `${LIMITED}/kms/xks/v1/health`, health, L);
      if (r.status === 200) ok++;
      else if (r.status === 429) throttled++;
      await new Promise((res) => setTimeout(res, 10));
    }
    const seconds = (performance.now() - started) / 1000;
    const expected = 5 + 20 * seconds;
    expect(ok).toBeGreaterThanOrEqual(Math.floor(expected * 0.8));
    expect(ok).toBeLessThanOrEqual(Math.ceil(expected) + 1);
    expect(throttled).toBeGreaterThan(ok);
  });
});
