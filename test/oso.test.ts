/**
 * Secondary authorization with Oso: the Rust sample policy's rules (test/fixtures/oso/policy.polar),
 * unit level and over HTTP (403 with a log line, order 404 -> 403 -> 501, health never subject,
 * engine error -> 400 InvalidStateException).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { OsoAuthorizer } from '../src/auth/oso.js';
import { XksError } from '../src/errors.js';
import type { RequestMetadata } from '../src/validate.js';
import { call, META, startTestProxy, type CallOptions, type TestProxy } from './helpers/proxy.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import type { TestToken } from './helpers/softhsm.js';

const FIX = path.resolve('test/fixtures/oso');
const POLICY = path.join(FIX, 'policy.polar');
const PREFIX = '/oso/tenant/prefix1';
const BROKEN_PREFIX = '/oso/tenant/broken1';
const API = `${PREFIX}/kms/xks/v1`;
const CREDS: CallOptions = { accessKeyId: 'AKIDOSOTEST0000000001', secret: 'b3NvLXNlY3JldC1vc28tc2VjcmV0LW9zby1zZWNyZXQ=' };

const meta = (m: Partial<RequestMetadata>): RequestMetadata => ({ kmsRequestId: 'r', kmsOperation: 'Encrypt', ...m });

describe('OsoAuthorizer with the sample rules', () => {
  let oso: OsoAuthorizer;
  beforeAll(async () => {
    oso = await OsoAuthorizer.fromFile(POLICY, { cache: false });
  });

  it('encrypt: Encrypt directly or via EBS only, and never for the empty prefix', async () => {
    expect(await oso.isAllowed('/p', 'encrypt', meta({}))).toBe(true);
    expect(await oso.isAllowed('/p', 'encrypt', meta({ kmsViaService: 'ebs' }))).toBe(true);
    expect(await oso.isAllowed('/p', 'encrypt', meta({ kmsViaService: 'rds' }))).toBe(false);
    expect(await oso.isAllowed('/p', 'encrypt', meta({ kmsOperation: 'GenerateDataKey' }))).toBe(false);
    expect(await oso.isAllowed('', 'encrypt', meta({}))).toBe(false);
  });

  it('decrypt: Encrypt or Decrypt', async () => {
    expect(await oso.isAllowed('/p', 'decrypt', meta({ kmsOperation: 'Decrypt' }))).toBe(true);
    expect(await oso.isAllowed('/p', 'decrypt', meta({ kmsOperation: 'Encrypt', kmsViaService: 'ebs' }))).toBe(true);
    expect(await oso.isAllowed('/p', 'decrypt', meta({ kmsOperation: 'ReEncrypt' }))).toBe(false);
  });

  it('metadata: DescribeKey only; GetKeyMetadata.kmsKeyArn may be nil', async () => {
    expect(await oso.isAllowed('/p', 'metadata', meta({ kmsOperation: 'DescribeKey' }))).toBe(true);
    expect(await oso.isAllowed('/p', 'metadata', meta({ kmsOperation: 'DescribeKey', kmsKeyArn: 'arn:x' }))).toBe(true);
    expect(await oso.isAllowed('/p', 'metadata', meta({ kmsOperation: 'Encrypt' }))).toBe(false);
  });

  it('health rules load (GetHealthMetadata) and evaluate', async () => {
    expect(await oso.isAllowed('/p', 'health', meta({ kmsOperation: 'CreateCustomKeystore' }))).toBe(true);
    expect(await oso.isAllowed('/p', 'health', meta({ kmsOperation: 'KmsHealthCheck' }))).toBe(false);
  });

  it('absent optional fields are nil, present ones behave like the Rust Option', async () => {
    const p = await OsoAuthorizer.fromString(
      `allow(_p, "encrypt", m: EncryptMetadata) if m.awsSourceVpc = nil and m.awsPrincipalArn = nil;
       allow(_p, "decrypt", m: EncryptMetadata) if "vpc-1" in m.awsSourceVpc and m.awsPrincipalArn = "arn:bob";`,
    );
    expect(await p.isAllowed('/p', 'encrypt', meta({}))).toBe(true);
    expect(await p.isAllowed('/p', 'encrypt', meta({ awsSourceVpc: 'vpc-1' }))).toBe(false);
    expect(await p.isAllowed('/p', 'decrypt', meta({ awsSourceVpc: 'vpc-1', awsPrincipalArn: 'arn:bob' }))).toBe(true);
    expect(await p.isAllowed('/p', 'decrypt', meta({ awsSourceVpc: 'vpc-2', awsPrincipalArn: 'arn:bob' }))).toBe(false);
  });

  it('authorize() maps deny to 403 AccessDeniedException and engine errors to 400 InvalidStateException', async () => {
    const denied = await oso.authorize('/p', 'encrypt', meta({ kmsViaService: 'rds' })).catch((e: unknown) => e);
    expect(denied).toBeInstanceOf(XksError);
    expect((denied as XksError).status).toBe(403);
    expect((denied as XksError).errorName).toBe('AccessDeniedException');
    expect((denied as XksError).detail).toMatch(/no allow rule .* matched action "encrypt" .*kmsViaService="rds"/);
    const broken = await OsoAuthorizer.fromFile(path.join(FIX, 'broken.polar'));
    const err = await broken.authorize('/p', 'encrypt', meta({})).catch((e: unknown) => e);
    expect((err as XksError).errorName).toBe('InvalidStateException');
    expect((err as XksError).status).toBe(400);
    expect((err as XksError).detail).toMatch(/policy engine error .*Application error/);
  });

  it('an action no operation declares is refused as an engine error, never allowed', async () => {
    // An allow-all policy: only the action's lookup in the operations' declarations can refuse.
    const all = await OsoAuthorizer.fromString('allow(_prefix, _action, _metadata);', 'all.polar', { cache: false });
    expect(await all.isAllowed('/p', 'encrypt', meta({}))).toBe(true);
    await expect(all.isAllowed('/p', 'sign', meta({}))).rejects.toThrow(/no operation has the action "sign"/);
    const err = await all.authorize('/p', 'sign', meta({})).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(XksError);
    expect((err as XksError).errorName).toBe('InvalidStateException');
    expect((err as XksError).detail).toMatch(/action "sign".*no operation has the action/);
  });

  it('cached decisions equal fresh ones', async () => {
    const cached = await OsoAuthorizer.fromFile(POLICY);
    for (const m of [meta({}), meta({ kmsViaService: 'rds' }), meta({ kmsViaService: 'ebs' })]) {
      const a = await cached.isAllowed('/p', 'encrypt', m);
      expect(await cached.isAllowed('/p', 'encrypt', m)).toBe(a);
      expect(await oso.isAllowed('/p', 'encrypt', m)).toBe(a);
    }
  });

  it('a file that does not parse is refused with the file named', async () => {
    await expect(OsoAuthorizer.fromFile(path.join(FIX, 'syntax-error.polar'))).rejects.toThrow(
      /syntax-error\.polar: cannot load the Oso policy/,
    );
  });
});

describe('over HTTP', () => {
  let token: TestToken;
  let proxy: TestProxy;
  beforeAll(async () => {
    token = await makeKeyedToken('xks-oso');
    proxy = await startTestProxy({
      token,
      osoPolicy: POLICY,
      maxPlaintextB64: 5800,
      stores: [{ prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: ['xks-key', 'not-in-the-hsm'] }],
    });
  });
  afterAll(async () => {
    await proxy?.stop();
    token?.cleanup();
  });

  const enc = (m: Partial<RequestMetadata>, plaintext = 'aGVsbG8='): Record<string, unknown> => ({
    requestMetadata: { ...META, ...m },
    plaintext,
    encryptionAlgorithm: 'AES_GCM',
  });

  it('allows what the policy allows', async () => {
    const r = await call(proxy.base, `${API}/keys/xks-key/encrypt`, enc({ kmsViaService: 'ebs' }), CREDS);
    expect(r.status).toBe(200);
    const m = await call(proxy.base, `${API}/keys/xks-key/metadata`, { requestMetadata: { ...META, kmsOperation: 'DescribeKey' } }, CREDS);
    expect(m.status).toBe(200);
  });

  it('denies with 403 AccessDeniedException and a log line naming the request and the reason', async () => {
    const r = await call(proxy.base, `${API}/keys/xks-key/encrypt`, enc({ kmsViaService: 'rds', kmsRequestId: 'oso-denied-1' }), CREDS);
    expect(r.status).toBe(403);
    expect(r.json.errorName).toBe('AccessDeniedException');
    const m = await call(proxy.base, `${API}/keys/xks-key/metadata`, { requestMetadata: { ...META, kmsOperation: 'Encrypt' } }, CREDS);
    expect(m.status).toBe(403);
    await proxy.log.flush();
    expect(proxy.logText()).toMatch(
      /op=Encrypt .*keyId=xks-key .*kmsRequestId=oso-denied-1 .*outcome=AccessDeniedException .*status=403 .*no allow rule/,
    );
  });

  it('GetHealthStatus is never subject to the policy (spec; unlike the Rust proxy)', async () => {
    const r = await call(proxy.base, `${API}/health`, { requestMetadata: { kmsRequestId: 'h', kmsOperation: 'KmsHealthCheck' } }, CREDS);
    expect(r.status).toBe(200);
  });

  it('order: key id not in the set (404) before the policy (403) before size limits (501)', async () => {
    const notInSet = await call(proxy.base, `${API}/keys/other-key/encrypt`, enc({ kmsViaService: 'rds' }), CREDS);
    expect(notInSet.status).toBe(404);
    expect(notInSet.json.errorName).toBe('KeyNotFoundException');
    const big = Buffer.alloc(4400).toString('base64');
    const deniedBig = await call(proxy.base, `${API}/keys/xks-key/encrypt`, enc({ kmsViaService: 'rds' }, big), CREDS);
    expect(deniedBig.status).toBe(403);
    const allowedBig = await call(proxy.base, `${API}/keys/xks-key/encrypt`, enc({}, big), CREDS);
    expect(allowedBig.status).toBe(501);
  });

  it('a policy engine error is 400 InvalidStateException (as the Rust proxy)', async () => {
    const brokenToken = token;
    const broken = await startTestProxy(
      {
        token: brokenToken,
        osoPolicy: path.join(FIX, 'broken.polar'),
        stores: [{ prefix: BROKEN_PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: ['xks-key'] }],
      },
      'broken-settings.toml',
    );
    try {
      const r = await call(broken.base, `${BROKEN_PREFIX}/kms/xks/v1/keys/xks-key/encrypt`, enc({}), CREDS);
      expect(r.status).toBe(400);
      expect(r.json.errorName).toBe('InvalidStateException');
    } finally {
      await broken.stop();
    }
  });
});
