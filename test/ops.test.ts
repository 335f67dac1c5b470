/**
 * The operations' declarations (src/ops/index.ts): the XKS routes and names of the spec, a key
 * parameter exactly where a route names one, each Oso class under one name, and Encrypt and Decrypt
 * seen by policies as the Rust proxy's EncryptMetadata. Their behaviour over HTTP is in
 * http.test.ts, oso.test.ts and the other HTTP tests.
 */
import { describe, expect, it } from 'vitest';
import { OPERATIONS } from '../src/ops/index.js';

/** The XKS API's operations (a later one may join them: it is then one file and one line). */
const XKS = OPERATIONS.filter((o) => ['GetHealthStatus', 'GetKeyMetadata', 'Encrypt', 'Decrypt'].includes(o.name));

describe('the operations registry', () => {
  it('serves the four XKS operations on the spec paths, in registration order', () => {
    expect(XKS.map((o) => [o.name, o.route])).toEqual([
      ['GetHealthStatus', '/health'],
      ['GetKeyMetadata', '/keys/:keyId/metadata'],
      ['Encrypt', '/keys/:keyId/encrypt'],
      ['Decrypt', '/keys/:keyId/decrypt'],
    ]);
  });

  it('names a key exactly when the route has the :keyId parameter, as its only parameter', () => {
    for (const o of OPERATIONS) {
      const params = o.route.split('/').filter((s) => s.startsWith(':'));
      expect(params, o.name).toEqual(o.namesKey ? [':keyId'] : []);
    }
  });

  it('gives every operation its own name, route and Oso action; one class per Oso class name', () => {
    const distinct = (xs: string[]): number => new Set(xs).size;
    expect(distinct(OPERATIONS.map((o) => o.name))).toBe(OPERATIONS.length);
    expect(distinct(OPERATIONS.map((o) => o.route))).toBe(OPERATIONS.length);
    expect(distinct(OPERATIONS.map((o) => o.policy.action))).toBe(OPERATIONS.length);
    const byName = new Map<string, unknown>();
    for (const { policy } of OPERATIONS) {
      const seen = byName.get(policy.className);
      if (seen !== undefined) expect(seen, policy.className).toBe(policy.resource);
      byName.set(policy.className, policy.resource);
    }
  });

  it('declares the Rust proxy policy actions and classes; health is not asked', () => {
    expect(XKS.map((o) => [o.name, o.policy.action, o.policy.className, o.policy.enforced])).toEqual([
      ['GetHealthStatus', 'health', 'GetHealthMetadata', false],
      ['GetKeyMetadata', 'metadata', 'GetKeyMetadata', true],
      ['Encrypt', 'encrypt', 'EncryptMetadata', true],
      ['Decrypt', 'decrypt', 'EncryptMetadata', true],
    ]);
  });
});
