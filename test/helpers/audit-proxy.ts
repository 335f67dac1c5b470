/**
 * One audit test file's set-up: `useAuditProxy` registers the file's beforeAll (a fresh SoftHSM2
 * token holding the test keys and the audit HMAC key, a work directory) and afterAll (both removed),
 * and gives the file's proxy settings (one key store; [audit] with the test HMAC key), the signed
 * XKS calls the audit tests make, and the HSM for set-up.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { Hsm } from '../../src/hsm/hsm.js';
import { AUDIT_HMAC_LABEL, makeAuditToken } from './audit.js';
import { type CallOptions, type CallResult, call, META, type SettingsSpec, settingsToml } from './proxy.js';
import { TEST_KEYS, type TestToken } from './softhsm.js';

export type AuditSpec = NonNullable<SettingsSpec['audit']>;

export interface AuditProxySetup {
  /** The token's label; also names the work directory. */
  label: string;
  /** The key store's URI path prefix. */
  prefix: string;
  /** The key store's SigV4 credential; the calls sign with it. */
  creds: CallOptions;
  /** The key store's keys (default: TEST_KEYS.ordinary). */
  keys?: string[];
}

/** requestMetadata fields over META for one call; `kmsRequestId` is the call's id. */
export type Meta = Partial<Record<keyof typeof META | 'kmsViaService' | 'awsSourceVpc' | 'awsSourceVpce', string>>;

export interface AuditProxy {
  readonly token: TestToken;
  /** A temporary directory for the file's trails, settings and copies. */
  readonly work: string;
  /** `<prefix>/kms/xks/v1`. */
  readonly api: string;
  /**
   * Settings of a proxy writing its trail in `dir`: the key store, level INFO, a 10 s operation
   * timeout (a loaded machine, the suite running files in parallel, must not turn a slow HSM call
   * into a 503), [audit] with the test HMAC key and `audit` over it; `more` over the rest.
   */
  spec(dir: string, audit?: Partial<AuditSpec>, more?: Partial<SettingsSpec>): SettingsSpec;
  /** Writes settingsToml(spec) to `name` in the work directory (for the real CLI); its path. */
  settingsFile(name: string, spec: SettingsSpec): string;
  /** A signed POST of `body` to `<api><urlPath>` (with another credential: `creds`). */
  post(base: string, urlPath: string, body: unknown, creds?: CallOptions): Promise<CallResult>;
  /** Encrypt (AES_GCM) of a plaintext naming `id`, with the key store's first key. */
  encrypt(base: string, id: string, meta?: Meta): Promise<CallResult>;
  /** GetKeyMetadata of the key store's first key. */
  metadata(base: string, id: string, meta?: Meta): Promise<CallResult>;
  /** Runs `fn` with the token open (a set-up's keys), then closes it. */
  withHsm<T>(fn: (hsm: Hsm) => Promise<T>): Promise<T>;
}

export function useAuditProxy(s: AuditProxySetup): AuditProxy {
  let token: TestToken | undefined;
  let work: string | undefined;
  const ready = <T>(v: T | undefined): T => {
    if (v === undefined) throw new Error('useAuditProxy: used before its beforeAll ran');
    return v;
  };
  const keys = s.keys ?? [TEST_KEYS.ordinary];
  const api = `${s.prefix}/kms/xks/v1`;
  const fx: AuditProxy = {
    get token() {
      return ready(token);
    },
    get work() {
      return ready(work);
    },
    api,
    spec: (dir, audit = {}, more = {}) => ({
      token: fx.token,
      level: 'INFO',
      operationTimeoutMs: 10_000,
      stores: [{ prefix: s.prefix, accessKeyId: s.creds.accessKeyId, secret: s.creds.secret, keys }],
      audit: { directory: dir, hmacKeyId: AUDIT_HMAC_LABEL, ...audit },
      ...more,
    }),
    settingsFile(name, spec) {
      const file = path.join(fx.work, name);
      writeFileSync(file, settingsToml(spec));
      return file;
    },
    post: (base, urlPath, body, creds = s.creds) => call(base, `${api}${urlPath}`, body, creds),
    encrypt: (base, id, meta = {}) =>
      fx.post(base, `/keys/${keys[0]}/encrypt`, {
        requestMetadata: { ...META, ...meta, kmsRequestId: id },
        plaintext: Buffer.from(`plaintext of ${id}`).toString('base64'),
        encryptionAlgorithm: 'AES_GCM',
      }),
    metadata: (base, id, meta = {}) =>
      fx.post(base, `/keys/${keys[0]}/metadata`, { requestMetadata: { ...META, ...meta, kmsRequestId: id } }),
    async withHsm(fn) {
      const t = fx.token;
      const hsm = await Hsm.open({
        modulePath: t.modulePath,
        userPin: t.pin,
        poolMaxSize: 2,
        poolTimeoutMs: 5000,
        eagerClose: false,
        threads: 1,
        ivMode: 'random',
      });
      try {
        return await fn(hsm);
      } finally {
        await hsm.close();
      }
    },
  };
  beforeAll(async () => {
    token = await makeAuditToken(s.label);
    work = mkdtempSync(path.join(tmpdir(), `${s.label}-`));
  });
  afterAll(() => {
    token?.cleanup();
    if (work !== undefined) rmSync(work, { recursive: true, force: true });
  });
  return fx;
}
