/**
 * The user's guide (shared seed 000, Vault's PKCS#11 provider behind the Rust xks-proxy): its own
 * settings.toml (test/fixtures/config/settings_vault_guide.toml, verbatim) starts the real CLI with
 * only what must differ on a test machine changed: the module (env PKCS11_HSM_MODULE, SoftHSM2 for
 * Vault's library), the PIN (SoftHSM2 needs one), the log directory and a free `port`.
 * `port_http_ping` stays absent, so /ping is on port 80 as in the guide's log: this test needs to
 * bind port 80 (root, or CAP_NET_BIND_SERVICE) and fails saying so otherwise.
 * Key abc123 is made as the guide makes it (pkcs11-tool --keygen -a abc123 --key-type AES:32).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VERSION } from '../src/version.js';
import { spawnProxyCli, type CliProxy } from './helpers/cli.js';
import { call } from './helpers/proxy.js';
import { makeToken, type TestToken } from './helpers/softhsm.js';

const GUIDE = path.resolve(import.meta.dirname, 'fixtures/config/settings_vault_guide.toml');
/** The guide's key store, as its settings.toml has it. */
const GUIDE_STORE = {
  accessKeyId: 'AKIA4GBY3I6JCE5M2HPM',
  secret: '1234567890123456789012345678901234567890123=',
  region: 'ap-northeast-2',
};
const API = '/xyz/kms/xks/v1';
const KEY = 'abc123';
const META = {
  awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice',
  kmsKeyArn: 'arn:aws:kms:ap-northeast-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab',
  kmsRequestId: 'guide-1',
};

let token: TestToken;
let proxy: CliProxy | undefined;
let logDir: string;
let base: string;

/** A port nobody listens on now (the kernel picks it). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a !== null ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

/** Fails with a clear message when port 80 cannot be bound here (not root, or taken). */
function assertPort80Free(): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', (e: NodeJS.ErrnoException) =>
      reject(
        new Error(
          `this test needs port 80 (the guide's port_http_ping default) but cannot bind it: ${e.code ?? e.message}; run it as root or free the port`,
        ),
      ),
    );
    s.listen(80, '0.0.0.0', () => s.close(() => resolve()));
  });
}

/** Exactly one replacement of `from` in `src`. */
function change(src: string, from: string, to: string): string {
  const i = src.indexOf(from);
  if (i === -1 || src.indexOf(from, i + 1) !== -1) throw new Error(`the guide's file does not have exactly one ${from}`);
  return src.replace(from, to);
}

beforeAll(async () => {
  await assertPort80Free();
  token = makeToken('guide');
  // The guide's command, with the login SoftHSM2 needs to store a private key.
  execFileSync(
    'pkcs11-tool',
    ['--module', token.modulePath, '--login', '--pin', token.pin, '--keygen', '-a', KEY, '--key-type', 'AES:32'],
    { env: { ...process.env, ...token.env }, stdio: 'pipe', timeout: 20_000 },
  );
  logDir = path.join(token.dir, 'logs');
  mkdirSync(logDir);
  const port = await freePort();
  let settings = readFileSync(GUIDE, 'utf8');
  settings = change(settings, 'port = 8000', `port = ${port}`);
  settings = change(settings, 'user_pin = ""', `user_pin = "${token.pin}"`);
  settings = change(settings, 'directory = "/var/local/xks-proxy/logs"', `directory = "${logDir}"`);
  const file = path.join(token.dir, 'settings.toml');
  writeFileSync(file, settings, { mode: 0o600 });
  proxy = await spawnProxyCli({ ...token.env, XKS_PROXY_SETTINGS_TOML: file, PKCS11_HSM_MODULE: token.modulePath });
  expect(proxy.port).toBe(port);
  base = `http://127.0.0.1:${port}`;
}, 60_000);

afterAll(async () => {
  if (proxy) {
    proxy.child.kill('SIGTERM');
    await proxy.exited;
  }
  token?.cleanup();
});

/** A line's end: the logger adds ` worker=N` with several event loops. */
const END = '( worker=\\d+)?\\n';
const escapeRe = (s: string): string => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
/** The whole rest of a line, literally. */
const line = (text: string): RegExp => new RegExp(`${escapeRe(text)}${END}`);

const b64 = (b: Buffer | string): string => Buffer.from(b).toString('base64');

describe("the guide's settings.toml", () => {
  it('serves health, metadata, encrypt and decrypt of key abc123 under /xyz, signed with its credentials', async () => {
    const health = await call(
      base,
      `${API}/health`,
      { requestMetadata: { kmsRequestId: 'guide-h', kmsOperation: 'CreateCustomKeyStore' } },
      GUIDE_STORE,
    );
    expect(health.status, health.text).toBe(200);
    expect(health.json.xksProxyFleetSize).toBe(1);

    const meta = await call(base, `${API}/keys/${KEY}/metadata`, { requestMetadata: { ...META, kmsOperation: 'CreateKey' } }, GUIDE_STORE);
    expect(meta.status, meta.text).toBe(200);
    expect(meta.json).toMatchObject({ keySpec: 'AES_256', keyStatus: 'ENABLED' });
    expect(meta.json.keyUsage).toEqual(expect.arrayContaining(['ENCRYPT', 'DECRYPT']));

    const plaintext = Buffer.from('plaintext of the guide');
    const aad = Buffer.from('context');
    const enc = await call(
      base,
      `${API}/keys/${KEY}/encrypt`,
      {
        requestMetadata: { ...META, kmsOperation: 'Encrypt' },
        plaintext: b64(plaintext),
        additionalAuthenticatedData: b64(aad),
        encryptionAlgorithm: 'AES_GCM',
      },
      GUIDE_STORE,
    );
    expect(enc.status, enc.text).toBe(200);
    const dec = await call(
      base,
      `${API}/keys/${KEY}/decrypt`,
      {
        requestMetadata: { ...META, kmsOperation: 'Decrypt' },
        ciphertext: enc.json.ciphertext,
        initializationVector: enc.json.initializationVector,
        authenticationTag: enc.json.authenticationTag,
        additionalAuthenticatedData: b64(aad),
        encryptionAlgorithm: 'AES_GCM',
      },
      GUIDE_STORE,
    );
    expect(dec.status, dec.text).toBe(200);
    expect(Buffer.from(String(dec.json.plaintext), 'base64')).toEqual(plaintext);

    // Another secret for the guide's access key id is refused: SigV4 is really on.
    const forged = await call(
      base,
      `${API}/health`,
      { requestMetadata: { kmsRequestId: 'guide-f', kmsOperation: 'CreateCustomKeyStore' } },
      {
        ...GUIDE_STORE,
        secret: 'x'.repeat(44),
      },
    );
    expect(forged.status).toBe(401);
  });

  it("answers GET /ping on port 80, port_http_ping's default", async () => {
    const res = await fetch('http://127.0.0.1:80/ping');
    expect(res.status).toBe(200);
    expect(await res.text()).toBe(`pong from xks-proxy v${VERSION}\n`);
  });

  it("logs to the file and stdout at DEBUG the facts of the guide's Rust start-up log", async () => {
    expect((await fetch(`${base}/no/such/path`)).status).toBe(404); // logged at DEBUG
    const files = readdirSync(logDir);
    expect(files).toHaveLength(1);
    expect(files[0]).toMatch(/^xks-proxy\.log\.\d{4}-\d\d-\d\d-\d\d$/);
    const deadline = Date.now() + 5000;
    let log = '';
    while (Date.now() < deadline) {
      log = readFileSync(path.join(logDir, files[0]!), 'utf8');
      // Both lines may come from either event loop: a worker thread's lines reach the file in batches.
      if (log.includes(' WARN request op=GetHealthStatus') && log.includes(' DEBUG no route ')) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const port = proxy!.port;
    // Rust: Tracing level="DEBUG" is_file_writer_enabled=true / Tracing file rotation_kind="HOURLY"
    expect(log).toMatch(
      line(' INFO tracing level=DEBUG is_stdout_writer_enabled=true is_file_writer_enabled=true rotation_kind=HOURLY file_mode=0640'),
    );
    // Rust: Starting service=... region=... / is_sigv4_enabled=true is_tls_enabled=false ... /
    // Ciphertext Metadata is not configured. / TCP Keepalive secs=Some(60s) interval_secs=Some(1s) retries=Some(3)
    expect(log).toMatch(
      line(
        ' INFO settings service=kms-xks-proxy region=ap-northeast-2 is_sigv4_enabled=true is_tls_enabled=false is_mtls_enabled=false' +
          ' secondary_auth=none ciphertext_metadata="not configured" tcp_keepalive_secs=60 tcp_keepalive_interval_secs=1 tcp_keepalive_retries=3',
      ),
    );
    // Rust: http://0.0.0.0:80/ping available for health check
    expect(log).toMatch(line(' INFO health check available url=http://0.0.0.0:80/ping'));
    // Rust: v3.1.2-unknown listening on 0.0.0.0:8000 for traffic
    expect(log).toMatch(new RegExp(escapeRe(` INFO xks-proxy v${VERSION} listening url=http://0.0.0.0:${port} `)));
    // ... in the Rust proxy's order: the settings first, the ping listener, then "listening".
    const at = (text: string): number => log.indexOf(text);
    expect(at(' INFO tracing ')).toBeLessThan(at(' INFO settings '));
    expect(at(' INFO settings ')).toBeLessThan(at(' INFO health check available '));
    expect(at(' INFO health check available ')).toBeLessThan(at(` INFO xks-proxy v${VERSION} listening `));
    // Rust: WARN ... SigV4 failure: ...
    expect(log).toMatch(/ WARN request op=GetHealthStatus prefix=\/xyz .*outcome=AuthenticationFailedException status=401/);
    expect(log).toMatch(line(' DEBUG no route method=get path=/no/such/path'));
    // The same lines went to stdout.
    expect(proxy!.output()).toContain(' INFO settings service=kms-xks-proxy region=ap-northeast-2 ');
    // Neither the secret nor the PIN is in the log.
    expect(log).not.toContain(GUIDE_STORE.secret);
    expect(log).not.toContain(token.pin);
  });
});
