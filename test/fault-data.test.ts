/**
 * The data path of a careful HSM client (issue 11, B.5, B.6, B.11), through the fault module
 * in front of SoftHSM2: IVs the HSM did not generate are never handed out; data errors keep
 * their session (a flood of tampered ciphertexts opens no session); keys that are not AES-256
 * never encrypt; the PKCS#11 calls of a normal encrypt and decrypt are counted.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { loadConfig } from '../src/config.js';
import { startProxy, type RunningProxy } from '../src/main.js';
import { Hsm } from '../src/hsm/hsm.js';
import { loadAddon, type EngineOptions, type NativeEngine } from '../src/hsm/addon.js';
import { XksError } from '../src/errors.js';
import { spawnProxyCli } from './helpers/cli.js';
import { useFaultyModule, type FaultControl } from './helpers/faulty.js';
import { call, META, settingsToml, type CallOptions, type SettingsSpec } from './helpers/proxy.js';
import { makeToken, rejection, splitSealed, TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const { Engine } = loadAddon();
const KEY = TEST_KEYS.ordinary;
const ENC_ONLY = TEST_KEYS.encryptOnly;
const AES128 = 'xks-aes-128';
const GENERIC = 'xks-generic-secret';
const AAD = Buffer.from('data-aad');
const PREFIX = '/fault/data/prefix';
const API = `${PREFIX}/kms/xks/v1`;
const CREDS: CallOptions = { accessKeyId: 'AKIDFAULTDATA0000001', secret: 'ZGF0YS1kYXRhLWRhdGEtZGF0YS1kYXRhLWRhdGEtZGE=' };

let base: TestToken;
let token: TestToken;
let faults: FaultControl;
let engines: NativeEngine[] = [];

function options(o: Partial<EngineOptions> = {}): EngineOptions {
  return {
    modulePath: token.modulePath,
    userPin: token.pin,
    poolMaxSize: 2,
    poolTimeoutMs: 2000,
    eagerClose: false,
    threads: 2,
    ivMode: 'random',
    operationTimeoutMs: 0,
    ...o,
  };
}

async function open(o: Partial<EngineOptions> = {}): Promise<NativeEngine> {
  const e = new Engine(options(o));
  engines.push(e);
  await e.open();
  return e;
}

/** PKCS#11 calls (by function) that `run` made, as the fault module counted them. */
async function counted(run: () => Promise<unknown>): Promise<Record<string, number>> {
  const before = { ...faults.status().calls_by_fn };
  await run();
  const after = faults.status().calls_by_fn;
  const delta: Record<string, number> = {};
  for (const [fn, n] of Object.entries(after)) if (n - (before[fn] ?? 0) > 0) delta[fn] = n - (before[fn] ?? 0);
  return delta;
}

function tamper(b: Buffer): Buffer {
  const c = Buffer.from(b);
  c[0] = c[0]! ^ 1;
  return c;
}

beforeAll(async () => {
  base = makeToken('xks-fault-data');
  ({ token, faults } = useFaultyModule(base));
  const e = await open();
  await e.createKey(KEY, { encrypt: true, decrypt: true });
  await e.createKey(ENC_ONLY, { encrypt: true, decrypt: false });
  await e.createKey(AES128, { value: Buffer.alloc(16, 7), encrypt: true, decrypt: true });
  execFileSync(
    'pkcs11-tool',
    [
      '--module',
      base.modulePath,
      '--token-label',
      base.label,
      '--login',
      '--pin',
      base.pin,
      '--keygen',
      '--key-type',
      'GENERIC:32',
      '--label',
      GENERIC,
      '--usage-decrypt',
    ],
    { env: { ...process.env, ...base.env }, stdio: 'pipe' },
  );
  await e.close();
  engines = [];
});

afterEach(async () => {
  faults.clear();
  for (const e of engines) await e.close();
  engines = [];
});

afterAll(() => {
  faults?.clear();
  base?.cleanup();
});

describe('round trips of the normal path', () => {
  it('an encrypt makes 2 PKCS#11 calls (its IV buffered) and a decrypt 2, once the key is known', async () => {
    const e = await open({ poolMaxSize: 1, threads: 1 });
    // The session exists, and the IV buffer holds a batch (native/iv_buffer.h).
    let sealed = splitSealed(await e.encrypt(TEST_KEYS.encryptOnly, Buffer.from('warm'), AAD));
    // The first call with a label finds the key and reads its type, size and usage, once.
    expect(await counted(async () => (sealed = splitSealed(await e.encrypt(KEY, Buffer.from('warm'), AAD))))).toEqual({
      C_FindObjectsInit: 1,
      C_FindObjects: 2,
      C_FindObjectsFinal: 1,
      C_GetAttributeValue: 1,
      C_EncryptInit: 1,
      C_Encrypt: 1,
    });
    // The engine's first decrypt learns how much output room SoftHSM2 wants (one extra C_Decrypt).
    await e.decrypt(KEY, sealed.ct, sealed.tag, sealed.iv, AAD);
    expect(await counted(async () => (sealed = splitSealed(await e.encrypt(KEY, Buffer.from('count me'), AAD))))).toEqual({
      C_EncryptInit: 1,
      C_Encrypt: 1,
    });
    expect(await counted(() => e.decrypt(KEY, sealed.ct, sealed.tag, sealed.iv, AAD))).toEqual({ C_DecryptInit: 1, C_Decrypt: 1 });
  });
});

describe('IVs the HSM did not generate (B.5)', () => {
  const ZERO_BUFFER: Partial<EngineOptions> = { ivMode: 'hsm-zero-buffer' };

  it('an HSM that fills the IV buffer passes the start-up test, and its IVs are used', async () => {
    faults.set('iv C_EncryptInit random');
    const e = new Engine(options(ZERO_BUFFER));
    engines.push(e);
    expect((await e.open()).ivCheck).toBe('passed');
    const a = splitSealed(await e.encrypt(KEY, Buffer.from('one'), AAD));
    const b = splitSealed(await e.encrypt(KEY, Buffer.from('two'), AAD));
    expect(a.iv.equals(Buffer.alloc(12))).toBe(false);
    expect(a.iv.equals(b.iv)).toBe(false);
    expect((await e.decrypt(KEY, a.ct, a.tag, a.iv, AAD)).toString()).toBe('one');
  });

  it('an HSM that repeats its IV is refused at start-up', async () => {
    faults.set('iv C_EncryptInit repeat');
    const e = new Engine(options(ZERO_BUFFER));
    engines.push(e);
    expect((await rejection(e.open())).code).toBe('XKS_IV_REPEATED');
  });

  it('the start-up test is skipped when the HSM will not make the temporary key; requests are still checked', async () => {
    faults.set('iv C_EncryptInit random times=1', 'fail C_GenerateKey CKR_FUNCTION_NOT_SUPPORTED');
    const e = new Engine(options(ZERO_BUFFER));
    engines.push(e);
    expect(await e.open()).toMatchObject({ ivCheck: 'skipped', ivCheckCode: 'CKR_FUNCTION_NOT_SUPPORTED', ivCheckFn: 'C_GenerateKey' });
    await e.encrypt(KEY, Buffer.from('good'), AAD); // the one filled IV
    expect((await rejection(e.encrypt(KEY, Buffer.from('zero'), AAD))).code).toBe('XKS_IV_ZERO');
  });

  it('after a good start, an all-zero or repeated IV fails the request and closes its session', async () => {
    faults.set('iv C_EncryptInit random');
    const e = await open({ ...ZERO_BUFFER, poolMaxSize: 1, threads: 1 });
    await e.encrypt(KEY, Buffer.from('fine'), AAD);
    faults.clear(); // SoftHSM2 leaves the buffer zero again
    const closes = faults.calls('C_CloseSession');
    const zero = await rejection(e.encrypt(KEY, Buffer.from('zero'), AAD));
    expect([zero.code, zero.fn]).toEqual(['XKS_IV_ZERO', 'C_Encrypt']);
    expect(zero.message).not.toMatch(/AAAAAAAA|00000000/);
    expect(faults.calls('C_CloseSession')).toBe(closes + 1);
    faults.set('iv C_EncryptInit repeat');
    await e.encrypt(KEY, Buffer.from('first of its kind'), AAD); // differs from the random one before
    expect((await rejection(e.encrypt(KEY, Buffer.from('again'), AAD))).code).toBe('XKS_IV_REPEATED');
    // Another key has its own "previous IV".
    await e.encrypt(ENC_ONLY, Buffer.from('other key'), AAD);
  });
});

describe('data errors keep their session (B.6)', () => {
  it('a flood of 200 tampered ciphertexts opens no session and logs in no more; the sessions work on', async () => {
    const e = await open();
    // Warm-up: slow encrypts overlap, so both sessions of the pool open whatever the machine's load.
    faults.set('delay C_Encrypt 30');
    const good = await Promise.all(Array.from({ length: 4 }, (_, i) => e.encrypt(KEY, Buffer.from(`good ${i}`), AAD).then(splitSealed)));
    faults.clear();
    expect(e.stats().sessionsOpen).toBe(2); // warm-up done: both sessions open
    const opens = faults.calls('C_OpenSession');
    const logins = faults.calls('C_Login');
    for (let batch = 0; batch < 10; batch++) {
      const errors = await Promise.all(
        Array.from({ length: 20 }, (_, i) => {
          const s = good[i % good.length]!;
          // wrong tag, wrong ciphertext, wrong AAD, wrong IV
          const variant = i % 4;
          return rejection(
            e.decrypt(
              KEY,
              variant === 1 ? tamper(s.ct) : s.ct,
              variant === 0 ? tamper(s.tag) : s.tag,
              variant === 3 ? tamper(s.iv) : s.iv,
              variant === 2 ? tamper(AAD) : AAD,
            ),
          );
        }),
      );
      for (const err of errors) expect([err.code, err.fn]).toEqual(['CKR_GENERAL_ERROR', 'C_Decrypt']); // SoftHSM2's tag mismatch
    }
    expect(faults.calls('C_OpenSession')).toBe(opens);
    expect(faults.calls('C_Login')).toBe(logins);
    expect(e.stats()).toMatchObject({ sessionsOpen: 2, sessionsIdle: 2, sessionErrors: 0 });
    // No operation was left active: SoftHSM2 would answer the next C_DecryptInit CKR_OPERATION_ACTIVE.
    for (let i = 0; i < 20; i++) {
      const s = good[i % good.length]!;
      expect((await e.decrypt(KEY, s.ct, s.tag, s.iv, AAD)).toString()).toBe(`good ${i % good.length}`);
    }
    expect(faults.calls('C_OpenSession')).toBe(opens);
  });

  it('the other data codes keep the session too; a device error or C_DecryptInit CKR_GENERAL_ERROR does not', async () => {
    const e = await open({ poolMaxSize: 1, threads: 1 });
    const s = splitSealed(await e.encrypt(KEY, Buffer.from('kept'), AAD));
    const opens = faults.calls('C_OpenSession');
    // Real: SoftHSM2 refuses C_DecryptInit on a key without CKA_DECRYPT.
    expect((await rejection(e.decrypt(ENC_ONLY, s.ct, s.tag, s.iv, AAD))).code).toBe('CKR_KEY_FUNCTION_NOT_PERMITTED');
    for (const code of [
      'CKR_ENCRYPTED_DATA_INVALID',
      'CKR_ENCRYPTED_DATA_LEN_RANGE',
      'CKR_DATA_INVALID',
      'CKR_DATA_LEN_RANGE',
      'CKR_AEAD_DECRYPT_FAILED',
    ]) {
      faults.set(`fail C_DecryptInit ${code} times=1`);
      expect((await rejection(e.decrypt(KEY, s.ct, s.tag, s.iv, AAD))).code).toBe(code);
      expect((await e.decrypt(KEY, s.ct, s.tag, s.iv, AAD)).toString()).toBe('kept');
    }
    faults.set('fail C_EncryptInit CKR_DATA_LEN_RANGE times=1');
    expect((await rejection(e.encrypt(KEY, Buffer.from('x'), AAD))).code).toBe('CKR_DATA_LEN_RANGE');
    expect(faults.calls('C_OpenSession')).toBe(opens);
    for (const code of ['CKR_GENERAL_ERROR', 'CKR_DEVICE_ERROR']) {
      faults.set(`fail C_DecryptInit ${code} times=1`);
      const before = faults.calls('C_OpenSession');
      await rejection(e.decrypt(KEY, s.ct, s.tag, s.iv, AAD));
      expect((await e.decrypt(KEY, s.ct, s.tag, s.iv, AAD)).toString()).toBe('kept');
      expect(faults.calls('C_OpenSession')).toBeGreaterThan(before); // dropped and reopened
    }
  });

  it('CKR_AEAD_DECRYPT_FAILED (PKCS#11 3.0, 0x42) answers InvalidCiphertextException', async () => {
    const hsm = await Hsm.open({ ...options(), canGenerateIv: false, isZeroIvRequired: false });
    try {
      const s = await hsm.encrypt(KEY, Buffer.from('aead'), AAD);
      faults.set('fail C_Decrypt CKR_AEAD_DECRYPT_FAILED times=1');
      const err = await hsm.decrypt(KEY, s.ciphertext, s.tag, s.iv, AAD).catch((x: unknown) => x);
      expect(err).toBeInstanceOf(XksError);
      expect((err as XksError).errorName).toBe('InvalidCiphertextException');
    } finally {
      await hsm.close();
    }
  });
});

describe('keys that are not AES-256 (B.11)', () => {
  it('an AES-128 key and a generic secret never reach C_EncryptInit / C_DecryptInit; key info still says what they are', async () => {
    const e = await open({ poolMaxSize: 1, threads: 1 });
    const good = splitSealed(await e.encrypt(KEY, Buffer.from('aes-256'), AAD));
    for (const label of [AES128, GENERIC]) {
      const calls = await counted(async () => {
        expect((await rejection(e.encrypt(label, Buffer.from('no'), AAD))).code).toBe('XKS_KEY_SPEC');
        expect((await rejection(e.decrypt(label, good.ct, good.tag, good.iv, AAD))).code).toBe('XKS_KEY_SPEC');
      });
      expect(calls.C_EncryptInit ?? 0).toBe(0);
      expect(calls.C_DecryptInit ?? 0).toBe(0);
    }
    // Read once with the lookup: a second refusal makes no PKCS#11 call at all.
    expect(await counted(() => rejection(e.encrypt(AES128, Buffer.from('no'), AAD)))).toEqual({});
    expect(await e.keyInfo(AES128)).toMatchObject({ keyType: 'AES', bits: 128 });
    expect(await e.keyInfo(GENERIC)).toMatchObject({ keyType: 'GENERIC_SECRET', bits: 256 });
    expect(e.stats().sessionsOpen).toBe(1);
  });

  it('with session key copies too', async () => {
    const e = await open({ keyCopies: true });
    expect((await rejection(e.encrypt(AES128, Buffer.from('no'), AAD))).code).toBe('XKS_KEY_SPEC');
    await e.encrypt(KEY, Buffer.from('yes'), AAD);
  });
});

describe('over HTTP', () => {
  const stores: SettingsSpec['stores'] = [
    { prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [KEY, AES128, GENERIC] },
  ];
  let proxy: RunningProxy | undefined;
  let logText = '';

  async function start(spec: Partial<SettingsSpec>, capabilities?: { canGenerateIv: boolean; isZeroIvRequired: boolean }): Promise<string> {
    let toml = settingsToml({ token, stores, operationTimeoutMs: 0, ...spec });
    if (capabilities) {
      toml = toml
        .replace('can_generate_iv = false', `can_generate_iv = ${capabilities.canGenerateIv}`)
        .replace('is_zero_iv_required = false', `is_zero_iv_required = ${capabilities.isZeroIvRequired}`);
    }
    const file = path.join(token.dir, 'data-settings.toml');
    writeFileSync(file, toml);
    const out = new PassThrough();
    logText = '';
    out.on('data', (c: Buffer) => (logText += c.toString('utf8')));
    proxy = await startProxy(loadConfig(file), { stdout: out });
    return `http://127.0.0.1:${proxy.port}`;
  }

  afterEach(async () => {
    await proxy?.stop();
    proxy = undefined;
  });

  const encryptBody = (text: string, cdiv = false) => ({
    requestMetadata: META,
    plaintext: Buffer.from(text).toString('base64'),
    encryptionAlgorithm: 'AES_GCM',
    ...(cdiv ? { ciphertextDataIntegrityValueAlgorithm: 'SHA_256' } : {}),
  });

  it('an AES-128 key: Encrypt answers 400 InvalidKeyUsageException, GetKeyMetadata says AES_128', async () => {
    const url = await start({});
    const r = await call(url, `${API}/keys/${AES128}/encrypt`, encryptBody('no'), CREDS);
    expect([r.status, r.json.errorName]).toEqual([400, 'InvalidKeyUsageException']);
    const m = await call(url, `${API}/keys/${AES128}/metadata`, { requestMetadata: { ...META, kmsOperation: 'DescribeKey' } }, CREDS);
    expect([m.status, m.json.keySpec]).toEqual([200, 'AES_128']);
    const g = await call(url, `${API}/keys/${GENERIC}/metadata`, { requestMetadata: { ...META, kmsOperation: 'DescribeKey' } }, CREDS);
    expect(g.json.keySpec).toBe('GENERIC_SECRET_256');
  });

  it('CDIV: a verifying decrypt that returns other bytes than the plaintext issues no ciphertext', async () => {
    const url = await start({});
    expect((await call(url, `${API}/keys/${KEY}/encrypt`, encryptBody('verified', true), CREDS)).status).toBe(200);
    faults.set('flip C_Decrypt');
    const r = await call(url, `${API}/keys/${KEY}/encrypt`, encryptBody('verified', true), CREDS);
    expect([r.status, r.json.errorName]).toEqual([500, 'InternalException']);
    expect(r.json.ciphertext).toBeUndefined();
    expect(r.text).not.toContain(Buffer.from('verified').toString('base64'));
  });

  it('zero IVs after a good start: 500, and one ERROR per minute naming [hsm_capabilities] without the IV', async () => {
    faults.set('iv C_EncryptInit random');
    const url = await start({}, { canGenerateIv: true, isZeroIvRequired: true });
    await proxy!.log.flush();
    expect(logText).toMatch(
      /INFO.*\[hsm_capabilities\] can_generate_iv = true, is_zero_iv_required = true: test encryptions got HSM-generated IVs/,
    );
    expect((await call(url, `${API}/keys/${KEY}/encrypt`, encryptBody('ok'), CREDS)).status).toBe(200);
    faults.clear();
    for (let i = 0; i < 3; i++) {
      const r = await call(url, `${API}/keys/${KEY}/encrypt`, encryptBody(`zero ${i}`), CREDS);
      expect([r.status, r.json.errorName]).toEqual([500, 'InternalException']);
      expect(r.json.initializationVector).toBeUndefined();
    }
    await proxy!.log.flush();
    const errors = logText.split('\n').filter((l) => /ERROR/.test(l) && /\[hsm_capabilities\]/.test(l));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/all-zero GCM IV/);
    expect(logText).not.toContain('AAAAAAAAAAAAAAAA');
  });

  it('the real CLI refuses to serve with the CloudHSM settings on SoftHSM2 (which leaves the IV zero), with one line', async () => {
    const file = path.join(token.dir, 'cloudhsm-like.toml');
    // The plain SoftHSM2 module (no fault module): its real behaviour.
    writeFileSync(
      file,
      settingsToml({ token: base, stores })
        .replace('can_generate_iv = false', 'can_generate_iv = true')
        .replace('is_zero_iv_required = false', 'is_zero_iv_required = true'),
    );
    const err = await spawnProxyCli({ ...base.env, XKS_PROXY_SETTINGS_TOML: file }).then(
      () => 'started',
      (e: unknown) => (e instanceof Error ? e.message : String(e)),
    );
    expect(err).toMatch(/proxy exited 1/);
    const lines = err.split('\n').filter((l) => l.includes('[hsm_capabilities]'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/can_generate_iv = true, is_zero_iv_required = true cannot work with this HSM: .*all-zero IV/);
  });
});
