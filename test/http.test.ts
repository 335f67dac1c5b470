/**
 * End to end over real HTTP on 127.0.0.1 against a real SoftHSM2 token: routes, SigV4,
 * every applicable error of the spec, and byte compatibility with the Rust proxy's layout.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { call, META, startTestProxy, type CallOptions, type TestProxy } from './helpers/proxy.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { KNOWN_KEY, TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const execFileP = promisify(execFile);

const PREFIX = '/example/uri/path/prefix';
const OTHER_PREFIX = '/another/tenant/prefix';
const API = `${PREFIX}/kms/xks/v1`;
const CREDS: CallOptions = { accessKeyId: 'AKIDEXAMPLE0000000001', secret: 'c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==' };
const OTHER: CallOptions = { accessKeyId: 'AKIDOTHERTENANT000002', secret: 'b3RoZXItb3RoZXItb3RoZXItb3RoZXItb3RoZXItb3RoZXI=' };
const CTM = Buffer.from('key_version=1');
const ALL_KEYS = [...Object.values(TEST_KEYS), 'not-in-the-hsm'];

let token: TestToken;
let proxy: TestProxy;

beforeAll(async () => {
  token = await makeKeyedToken('xks-http');
  proxy = await startTestProxy({
    token,
    ciphertextMetadataB64: CTM.toString('base64'),
    maxPlaintextB64: 5800,
    maxAadB64: 11000,
    stores: [
      { prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: ALL_KEYS },
      { prefix: OTHER_PREFIX, accessKeyId: OTHER.accessKeyId, secret: OTHER.secret, keys: [TEST_KEYS.ordinary] },
    ],
  });
});

afterAll(async () => {
  await proxy?.stop();
  token?.cleanup();
});

const b64 = (b: Buffer | string): string => Buffer.from(b).toString('base64');

function encryptBody(plaintext: Buffer, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { requestMetadata: META, plaintext: b64(plaintext), encryptionAlgorithm: 'AES_GCM', ...extra };
}

function decryptBody(fields: Record<string, unknown>): Record<string, unknown> {
  return { requestMetadata: { ...META, kmsOperation: 'Decrypt' }, encryptionAlgorithm: 'AES_GCM', ...fields };
}

/** node:crypto in the Rust proxy's AAD layout, with the known key. */
function rustAad(aad: Buffer | undefined, ctm: Buffer | undefined): Buffer {
  const parts = [Buffer.from([aad ? aad.length >> 8 : 0, aad ? aad.length & 0xff : 0])];
  if (aad) parts.push(createHash('sha256').update(aad).digest());
  parts.push(Buffer.from([ctm ? ctm.length : 0]));
  if (ctm) parts.push(ctm);
  return Buffer.concat(parts);
}

function nodeSeal(plaintext: Buffer, aad: Buffer | undefined, ctm: Buffer | undefined) {
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', KNOWN_KEY, iv);
  c.setAAD(rustAad(aad, ctm));
  const ciphertext = Buffer.concat([c.update(plaintext), c.final()]);
  return { iv, ciphertext, tag: c.getAuthTag() };
}

function nodeOpen(ciphertext: Buffer, iv: Buffer, tag: Buffer, aad: Buffer | undefined, ctm: Buffer | undefined): Buffer {
  const d = createDecipheriv('aes-256-gcm', KNOWN_KEY, iv);
  d.setAAD(rustAad(aad, ctm));
  d.setAuthTag(tag);
  return Buffer.concat([d.update(ciphertext), d.final()]);
}

const buf = (v: unknown): Buffer => Buffer.from(String(v), 'base64');

describe('routes', () => {
  it('GET /ping answers pong with the version', async () => {
    const r = await fetch(`${proxy.base}/ping`);
    expect(r.status).toBe(200);
    expect(await r.text()).toMatch(/^pong from xks-proxy v\d+\.\d+\.\d+\n$/);
  });

  it('GetHealthStatus reports the token like the Rust proxy', async () => {
    const r = await call(proxy.base, `${API}/health`, { requestMetadata: { kmsRequestId: 'h-1', kmsOperation: 'KmsHealthCheck' } }, CREDS);
    expect(r.status).toBe(200);
    expect(r.json.xksProxyFleetSize).toBe(1);
    expect(String(r.json.xksProxyModel)).toMatch(/xks-proxy .*v\d+\.\d+\.\d+/);
    expect(String(r.json.ekmVendor)).toMatch(/^SoftHSM project \(serial number: [0-9a-f]+\)$/);
    const fleet = r.json.ekmFleetDetails as { id: string; model: string; healthStatus: string }[];
    expect(fleet).toHaveLength(1);
    expect(fleet[0]).toMatchObject({ id: 'xks-http', healthStatus: 'ACTIVE' });
    expect(fleet[0]!.model).toMatch(/^SoftHSM v2 \(firmware version: \d+\.\d+, hardware version: \d+\.\d+\)$/);
  });

  it('GetKeyMetadata reports AES_256 and the key usage', async () => {
    const cases: [string, string[]][] = [
      [TEST_KEYS.ordinary, ['ENCRYPT', 'DECRYPT']],
      [TEST_KEYS.encryptOnly, ['ENCRYPT']],
      [TEST_KEYS.decryptOnly, ['DECRYPT']],
      [TEST_KEYS.impotent, []],
    ];
    for (const [key, usage] of cases) {
      const r = await call(proxy.base, `${API}/keys/${key}/metadata`, { requestMetadata: { ...META, kmsOperation: 'DescribeKey' } }, CREDS);
      expect(r.status, key).toBe(200);
      expect(r.json).toEqual({ keySpec: 'AES_256', keyUsage: usage, keyStatus: 'ENABLED' });
    }
  });

  it('encrypt then decrypt round-trips, with CDIV and ciphertext metadata', async () => {
    const plaintext = randomBytes(32);
    const aad = randomBytes(64);
    const e = await call(
      proxy.base,
      `${API}/keys/${TEST_KEYS.ordinary}/encrypt`,
      encryptBody(plaintext, { additionalAuthenticatedData: b64(aad), ciphertextDataIntegrityValueAlgorithm: 'SHA_256' }),
      CREDS,
    );
    expect(e.status).toBe(200);
    expect(buf(e.json.ciphertext)).toHaveLength(32);
    expect(buf(e.json.initializationVector)).toHaveLength(12);
    expect(buf(e.json.authenticationTag)).toHaveLength(16);
    expect(e.json.ciphertextMetadata).toBe(b64(CTM));
    const cdiv = createHash('sha256')
      .update(Buffer.concat([aad, CTM, buf(e.json.initializationVector), buf(e.json.ciphertext), buf(e.json.authenticationTag)]))
      .digest('base64');
    expect(e.json.ciphertextDataIntegrityValue).toBe(cdiv);
    const d = await call(
      proxy.base,
      `${API}/keys/${TEST_KEYS.ordinary}/decrypt`,
      decryptBody({
        ciphertext: e.json.ciphertext,
        ciphertextMetadata: e.json.ciphertextMetadata,
        additionalAuthenticatedData: b64(aad),
        initializationVector: e.json.initializationVector,
        authenticationTag: e.json.authenticationTag,
      }),
      CREDS,
    );
    expect(d.status).toBe(200);
    expect(d.json).toEqual({ plaintext: b64(plaintext) });
  });

  it('4,300 bytes of plaintext and 8,192 bytes of AAD work', async () => {
    const plaintext = randomBytes(4300);
    const aad = randomBytes(8192);
    const e = await call(
      proxy.base,
      `${API}/keys/${TEST_KEYS.ordinary}/encrypt`,
      encryptBody(plaintext, { additionalAuthenticatedData: b64(aad) }),
      CREDS,
    );
    expect(e.status).toBe(200);
    const d = await call(
      proxy.base,
      `${API}/keys/${TEST_KEYS.ordinary}/decrypt`,
      decryptBody({
        ciphertext: e.json.ciphertext,
        ciphertextMetadata: e.json.ciphertextMetadata,
        additionalAuthenticatedData: b64(aad),
        initializationVector: e.json.initializationVector,
        authenticationTag: e.json.authenticationTag,
      }),
      CREDS,
    );
    expect(d.json.plaintext).toBe(b64(plaintext));
  });

  it('the second keystore answers on its own prefix with its own credentials only', async () => {
    const ok = await call(
      proxy.base,
      `${OTHER_PREFIX}/kms/xks/v1/keys/${TEST_KEYS.ordinary}/encrypt`,
      encryptBody(Buffer.from('x')),
      OTHER,
    );
    expect(ok.status).toBe(200);
    const crossed = await call(
      proxy.base,
      `${OTHER_PREFIX}/kms/xks/v1/keys/${TEST_KEYS.ordinary}/encrypt`,
      encryptBody(Buffer.from('x')),
      CREDS,
    );
    expect(crossed.status).toBe(401);
    expect(crossed.json.errorName).toBe('AuthenticationFailedException');
    const notInStore = await call(
      proxy.base,
      `${OTHER_PREFIX}/kms/xks/v1/keys/${TEST_KEYS.encryptOnly}/encrypt`,
      encryptBody(Buffer.from('x')),
      OTHER,
    );
    expect(notInStore.json.errorName).toBe('KeyNotFoundException');
  });
});

describe('byte compatibility with the Rust proxy (known key, node:crypto)', () => {
  const cases: [string, Buffer | undefined, Buffer | undefined][] = [
    ['no AAD, no metadata', undefined, undefined],
    ['present but empty AAD', Buffer.alloc(0), undefined],
    ['AAD and metadata', randomBytes(100), CTM],
    ['metadata only', undefined, Buffer.from('v2')],
  ];
  for (const [name, aad, ctm] of cases) {
    it(`node:crypto ciphertext decrypts through the proxy: ${name}`, async () => {
      const plaintext = randomBytes(48);
      const s = nodeSeal(plaintext, aad, ctm);
      const fields: Record<string, unknown> = {
        ciphertext: b64(s.ciphertext),
        initializationVector: b64(s.iv),
        authenticationTag: b64(s.tag),
      };
      if (aad) fields.additionalAuthenticatedData = b64(aad);
      if (ctm) fields.ciphertextMetadata = b64(ctm);
      const d = await call(proxy.base, `${API}/keys/${TEST_KEYS.known}/decrypt`, decryptBody(fields), CREDS);
      expect(d.status).toBe(200);
      expect(d.json.plaintext).toBe(b64(plaintext));
    });
  }
  for (const [name, aad] of [
    ['no AAD', undefined],
    ['present but empty AAD', Buffer.alloc(0)],
    ['AAD', randomBytes(33)],
  ] as const) {
    it(`proxy ciphertext opens with node:crypto: ${name}`, async () => {
      const plaintext = randomBytes(20);
      const extra = aad ? { additionalAuthenticatedData: b64(aad) } : {};
      const e = await call(proxy.base, `${API}/keys/${TEST_KEYS.known}/encrypt`, encryptBody(plaintext, extra), CREDS);
      expect(e.status).toBe(200);
      const opened = nodeOpen(buf(e.json.ciphertext), buf(e.json.initializationVector), buf(e.json.authenticationTag), aad, CTM);
      expect(opened.equals(plaintext)).toBe(true);
    });
  }
  it('absent and present-but-empty AAD are different AADs', async () => {
    const s = nodeSeal(Buffer.from('hello'), undefined, undefined);
    const d = await call(
      proxy.base,
      `${API}/keys/${TEST_KEYS.known}/decrypt`,
      decryptBody({
        ciphertext: b64(s.ciphertext),
        initializationVector: b64(s.iv),
        authenticationTag: b64(s.tag),
        additionalAuthenticatedData: '',
      }),
      CREDS,
    );
    expect(d.json.errorName).toBe('InvalidCiphertextException');
  });
});

describe('errors, each over HTTP with the typed JSON body', () => {
  const enc = `${API}/keys/${TEST_KEYS.ordinary}/encrypt`;
  const dec = `${API}/keys/${TEST_KEYS.ordinary}/decrypt`;

  async function expectError(r: Promise<{ status: number; json: Record<string, unknown> }>, status: number, name: string) {
    const res = await r;
    expect(res.json.errorName, JSON.stringify(res.json)).toBe(name);
    expect(res.status).toBe(status);
    expect(typeof res.json.errorMessage).toBe('string');
    expect(String(res.json.errorMessage)).toMatch(/^[\x20-\x7e]{1,511}$/);
  }

  async function sealed(aad?: Buffer) {
    const e = await call(
      proxy.base,
      enc,
      encryptBody(Buffer.from('secret data'), aad ? { additionalAuthenticatedData: b64(aad) } : {}),
      CREDS,
    );
    return e.json as Record<string, string>;
  }

  it('400 ValidationException for every malformed input', async () => {
    const bad: unknown[] = [
      'not json',
      '[]',
      {},
      { plaintext: 'AA==', encryptionAlgorithm: 'AES_GCM' },
      { requestMetadata: META, encryptionAlgorithm: 'AES_GCM' },
      encryptBody(Buffer.from('x'), { plaintext: 'not base64!' }),
      encryptBody(Buffer.from('x'), { plaintext: 42 }),
      encryptBody(Buffer.from('x'), { encryptionAlgorithm: 'AES_CBC' }),
      encryptBody(Buffer.from('x'), { encryptionAlgorithm: undefined }),
      encryptBody(Buffer.from('x'), { ciphertextDataIntegrityValueAlgorithm: 'MD5' }),
      encryptBody(Buffer.from('x'), { additionalAuthenticatedData: 'QQ' }),
      encryptBody(Buffer.alloc(0)),
      { ...encryptBody(Buffer.from('x')), requestMetadata: { kmsRequestId: 'r', kmsOperation: 'Encrypt' } },
    ];
    for (const body of bad) await expectError(call(proxy.base, enc, body, CREDS), 400, 'ValidationException');
  });

  it('400 ValidationException for bad decrypt sizes: IV not 12/16, tag not 16, metadata over 20 bytes', async () => {
    const s = await sealed();
    const cases = [
      { initializationVector: b64(randomBytes(11)) },
      { initializationVector: b64(randomBytes(13)) },
      { authenticationTag: b64(randomBytes(15)) },
      { ciphertextMetadata: b64(randomBytes(21)) },
      { ciphertext: 'a' },
    ];
    for (const c of cases) {
      await expectError(
        call(
          proxy.base,
          dec,
          decryptBody({
            ciphertext: s.ciphertext,
            initializationVector: s.initializationVector,
            authenticationTag: s.authenticationTag,
            ...c,
          }),
          CREDS,
        ),
        400,
        'ValidationException',
      );
    }
  });

  it('400 InvalidCiphertextException when AAD, IV, tag, ciphertext or metadata differ', async () => {
    const aad = Buffer.from('context');
    const s = await sealed(aad);
    const good = {
      ciphertext: s.ciphertext,
      ciphertextMetadata: s.ciphertextMetadata,
      initializationVector: s.initializationVector,
      authenticationTag: s.authenticationTag,
      additionalAuthenticatedData: b64(aad),
    };
    expect((await call(proxy.base, dec, decryptBody(good), CREDS)).status).toBe(200);
    const flip = (v: string) => {
      const b = buf(v);
      b[0] = b[0]! ^ 1;
      return b64(b);
    };
    const variants = [
      { additionalAuthenticatedData: b64('other') },
      { additionalAuthenticatedData: undefined },
      { initializationVector: flip(s.initializationVector!) },
      { initializationVector: b64(randomBytes(16)) },
      { authenticationTag: flip(s.authenticationTag!) },
      { ciphertext: flip(s.ciphertext!) },
      { ciphertextMetadata: b64('key_version=2') },
      { ciphertextMetadata: undefined },
    ];
    for (const v of variants)
      await expectError(call(proxy.base, dec, decryptBody({ ...good, ...v }), CREDS), 400, 'InvalidCiphertextException');
  });

  it('400 InvalidKeyUsageException when the key cannot do the operation', async () => {
    await expectError(
      call(proxy.base, `${API}/keys/${TEST_KEYS.decryptOnly}/encrypt`, encryptBody(Buffer.from('x')), CREDS),
      400,
      'InvalidKeyUsageException',
    );
    await expectError(
      call(proxy.base, `${API}/keys/${TEST_KEYS.impotent}/encrypt`, encryptBody(Buffer.from('x')), CREDS),
      400,
      'InvalidKeyUsageException',
    );
    // The CDIV's verifying decrypt needs a key that can decrypt (as the AWS test client expects).
    await expectError(
      call(
        proxy.base,
        `${API}/keys/${TEST_KEYS.encryptOnly}/encrypt`,
        encryptBody(Buffer.from('x'), { ciphertextDataIntegrityValueAlgorithm: 'SHA_256' }),
        CREDS,
      ),
      400,
      'InvalidKeyUsageException',
    );
    expect((await call(proxy.base, `${API}/keys/${TEST_KEYS.encryptOnly}/encrypt`, encryptBody(Buffer.from('x')), CREDS)).status).toBe(200);
    const s = await sealed();
    const body = decryptBody({
      ciphertext: s.ciphertext,
      ciphertextMetadata: s.ciphertextMetadata,
      initializationVector: s.initializationVector,
      authenticationTag: s.authenticationTag,
    });
    await expectError(call(proxy.base, `${API}/keys/${TEST_KEYS.encryptOnly}/decrypt`, body, CREDS), 400, 'InvalidKeyUsageException');
    await expectError(call(proxy.base, `${API}/keys/${TEST_KEYS.impotent}/decrypt`, body, CREDS), 400, 'InvalidKeyUsageException');
  });

  it('401 AuthenticationFailedException for missing or bad signatures', async () => {
    const body = encryptBody(Buffer.from('x'));
    await expectError(call(proxy.base, enc, body, { ...CREDS, unsigned: true }), 401, 'AuthenticationFailedException');
    await expectError(call(proxy.base, enc, body, { ...CREDS, secret: OTHER.secret }), 401, 'AuthenticationFailedException');
    await expectError(call(proxy.base, enc, body, { ...CREDS, accessKeyId: 'AKIDUNKNOWN' }), 401, 'AuthenticationFailedException');
    await expectError(call(proxy.base, enc, body, { ...CREDS, region: 'eu-west-1' }), 401, 'AuthenticationFailedException');
    await expectError(call(proxy.base, enc, body, { ...CREDS, service: 'kms' }), 401, 'AuthenticationFailedException');
    await expectError(
      call(proxy.base, enc, body, { ...CREDS, tamperBody: (b) => b.replace('AES_GCM', 'AES_GCM ') }),
      401,
      'AuthenticationFailedException',
    );
    await expectError(
      call(proxy.base, enc, body, { ...CREDS, date: new Date(Date.now() - 6 * 60_000) }),
      401,
      'AuthenticationFailedException',
    );
    await expectError(
      call(proxy.base, enc, body, { ...CREDS, date: new Date(Date.now() + 6 * 60_000) }),
      401,
      'AuthenticationFailedException',
    );
    expect((await call(proxy.base, enc, body, { ...CREDS, date: new Date(Date.now() - 4 * 60_000) })).status).toBe(200);
    expect((await call(proxy.base, enc, body, { ...CREDS, date: new Date(Date.now() + 4 * 60_000) })).status).toBe(200);
  });

  it('404 KeyNotFoundException outside the key set, absent from the HSM, or ambiguous there', async () => {
    const body = encryptBody(Buffer.from('x'));
    await expectError(call(proxy.base, `${API}/keys/some-other-key/encrypt`, body, CREDS), 404, 'KeyNotFoundException');
    await expectError(call(proxy.base, `${API}/keys/not-in-the-hsm/encrypt`, body, CREDS), 404, 'KeyNotFoundException');
    await expectError(call(proxy.base, `${API}/keys/${TEST_KEYS.duplicate}/encrypt`, body, CREDS), 404, 'KeyNotFoundException');
    await expectError(
      call(proxy.base, `${API}/keys/not-in-the-hsm/metadata`, { requestMetadata: { ...META, kmsOperation: 'DescribeKey' } }, CREDS),
      404,
      'KeyNotFoundException',
    );
  });

  it('404 InvalidUriPathException for unknown paths and prefixes, even when well signed', async () => {
    await expectError(
      call(proxy.base, `/wrong/prefix/path/kms/xks/v1/health`, { requestMetadata: META }, CREDS),
      404,
      'InvalidUriPathException',
    );
    await expectError(
      call(proxy.base, `${API}/keys/${TEST_KEYS.ordinary}/sign`, encryptBody(Buffer.from('x')), CREDS),
      404,
      'InvalidUriPathException',
    );
    await expectError(call(proxy.base, `/kms/xks/v1/health`, { requestMetadata: META }, CREDS), 404, 'InvalidUriPathException');
  });

  it('405 for GET on an API route', async () => {
    const r = await fetch(`${proxy.base}${API}/health`);
    expect(r.status).toBe(405);
    expect(r.headers.get('allow')).toBe('POST');
  });

  it('501 UnsupportedOperationException above [limits]', async () => {
    await expectError(call(proxy.base, enc, encryptBody(randomBytes(4400)), CREDS), 501, 'UnsupportedOperationException');
    await expectError(
      call(proxy.base, enc, encryptBody(Buffer.from('x'), { additionalAuthenticatedData: b64(randomBytes(8300)) }), CREDS),
      501,
      'UnsupportedOperationException',
    );
  });

  it('413 for a body far over the limits; the server carries on', async () => {
    const huge = 'A'.repeat(2 * 1024 * 1024);
    const r = await fetch(`${proxy.base}${enc}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: huge }).catch(
      () => undefined,
    );
    if (r) {
      expect(r.status).toBe(413);
      expect(((await r.json()) as { errorName: string }).errorName).toBe('PayloadTooLargeException');
    }
    expect((await fetch(`${proxy.base}/ping`)).status).toBe(200);
  });

  it('never logs plaintext, AAD, secrets or the PIN; logs one line per request with the request id', async () => {
    const marker = Buffer.from('PLAINTEXT-MARKER-0123456789');
    const aadMarker = Buffer.from('AAD-MARKER-abcdef');
    const e = await call(proxy.base, enc, encryptBody(marker, { additionalAuthenticatedData: b64(aadMarker) }), CREDS);
    expect(e.status).toBe(200);
    await proxy.log.flush();
    const text = proxy.logText();
    for (const needle of [marker.toString(), b64(marker), aadMarker.toString(), b64(aadMarker), CREDS.secret, OTHER.secret, token.pin]) {
      expect(text.includes(needle), needle).toBe(false);
    }
    expect(text).toMatch(/op=Encrypt .*kmsRequestId=4112f4d6-db54-4af4-ae30-c55a22a8dfae/);
    // The rest of requestMetadata is logged too (the spec's SHOULD), for CloudTrail correlation.
    expect(text).toMatch(/kmsOperation=Encrypt awsPrincipalArn=arn:aws:iam::123456789012:user\/Alice kmsKeyArn=arn:aws:kms:/);
    expect(text).toMatch(/micros=\d+/);
  });
});

describe('other clients', () => {
  it('curl --aws-sigv4 requests verify', async () => {
    const body = JSON.stringify(encryptBody(Buffer.from('from curl')));
    const { stdout } = await execFileP('curl', [
      '-s',
      '--aws-sigv4',
      'aws:amz:us-east-1:kms-xks-proxy',
      '--user',
      `${CREDS.accessKeyId}:${CREDS.secret}`,
      '-H',
      'Content-Type: application/json',
      '-d',
      body,
      '-w',
      '\n%{http_code}',
      `${proxy.base}${API}/keys/${TEST_KEYS.ordinary}/encrypt`,
    ]);
    const [json, code] = stdout.split('\n');
    expect(code).toBe('200');
    expect(JSON.parse(json!)).toHaveProperty('ciphertext');
  });

  it('many concurrent requests on keep-alive connections all succeed', async () => {
    const all = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        call(proxy.base, `${API}/keys/${TEST_KEYS.ordinary}/encrypt`, encryptBody(Buffer.from(`n${i}`)), CREDS),
      ),
    );
    expect(all.filter((r) => r.status !== 200)).toEqual([]);
  });
});
