/**
 * `xks-proxy doctor [FILE]` as a process against a real SoftHSM2 token and real certificates
 * (openssl): each check fails on a setting or token made to fail it, and the finding names the
 * error KMS would report.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { rootCertificates } from 'node:tls';
import { promisify } from 'node:util';
import { kmsTrusts, parseJavaDn } from '../src/doctor/trusted-cas.js';
import { TRUSTED_CAS, TRUSTED_CAS_SOURCE } from '../src/doctor/trusted-cas-list.js';
import { loadAddon } from '../src/hsm/addon.js';
import { BIN } from './helpers/cli.js';
import { FAULTY_MODULE, FaultControl } from './helpers/faulty.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { settingsToml, type SettingsSpec } from './helpers/proxy.js';
import { TEST_KEYS, type TestToken } from './helpers/softhsm.js';
import { makeCa, makeKeyAndCsr, makePki, signCsr, type TestPki } from './helpers/tls-certs.js';

const execFileP = promisify(execFile);

interface Finding {
  group: string;
  check: string;
  status: 'ok' | 'warn' | 'fail';
  detail: string;
  kms?: string;
  fix?: string;
}
interface Report {
  result: string;
  findings: Finding[];
}

const AKID = 'AKIAIOSFODNN7EXAMPLEAB';
const SECRET = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYab12';
const AES128 = 'xks-aes128';

let token: TestToken;
let pki: TestPki;
let n = 0;

beforeAll(async () => {
  token = await makeKeyedToken('xks-doctor');
  const { Engine } = loadAddon();
  const engine = new Engine({
    modulePath: token.modulePath,
    userPin: token.pin,
    poolMaxSize: 1,
    poolTimeoutMs: 1000,
    eagerClose: false,
    threads: 1,
    ivMode: 'random',
  });
  await engine.open();
  await engine.createKey(AES128, { value: Buffer.alloc(16, 7), encrypt: true, decrypt: true });
  await engine.close();
  pki = makePki();
}, 60000);

afterAll(() => {
  token?.cleanup();
  pki?.cleanup();
});

function spec(over: Partial<SettingsSpec> & { keys?: string[]; accessKeyId?: string } = {}): SettingsSpec {
  return {
    token,
    stores: [{ prefix: '/xyz', accessKeyId: over.accessKeyId ?? AKID, secret: SECRET, keys: over.keys ?? [TEST_KEYS.ordinary] }],
    ...over,
  };
}

/** Writes the settings (edited by `edit`) and runs `xks-proxy doctor --json FILE`. */
async function doctor(
  s: SettingsSpec,
  edit: (toml: string) => string = (t) => t,
  env: Record<string, string> = {},
): Promise<{ code: number; report: Report; table: string }> {
  const file = path.join(token.dir, `doctor-${++n}.toml`);
  writeFileSync(file, edit(settingsToml(s)), { mode: 0o600 });
  const run = async (args: string[]): Promise<{ code: number; stdout: string }> => {
    try {
      const { stdout } = await execFileP(process.execPath, [BIN, 'doctor', ...args], {
        env: { ...process.env, ...token.env, ...env },
        timeout: 30000,
      });
      return { code: 0, stdout };
    } catch (e) {
      const err = e as { code?: number; stdout?: string };
      return { code: typeof err.code === 'number' ? err.code : -1, stdout: err.stdout ?? '' };
    }
  };
  const json = await run(['--json', file]);
  const table = await run([file]);
  expect(table.code, 'the table run exits like the JSON run').toBe(json.code);
  return { code: json.code, report: JSON.parse(json.stdout) as Report, table: table.stdout };
}

const failures = (r: Report): Finding[] => r.findings.filter((f) => f.status === 'fail');
const find = (r: Report, group: string, check: string): Finding => {
  const f = r.findings.find((x) => x.group === group && x.check === check);
  if (!f) throw new Error(`no finding ${group}/${check} in ${JSON.stringify(r.findings)}`);
  return f;
};

describe('xks-proxy doctor FILE', () => {
  it('passes a good setting: every check ok, exit 0, and the table says so', async () => {
    const { code, report, table } = await doctor(spec());
    expect(
      report.findings.filter((f) => f.status !== 'ok'),
      table,
    ).toEqual([]);
    expect(code).toBe(0);
    expect(report.result).toBe('ok');
    for (const c of ['module', 'token', 'login']) expect(find(report, 'hsm', c).status).toBe('ok');
    expect(find(report, `key ${TEST_KEYS.ordinary}`, 'latency').detail).toMatch(/encrypt \+ decrypt in [\d.]+ ms/);
    expect(table).toMatch(/^STATUS +GROUP +CHECK +DETAIL\n/);
    expect(table).toMatch(/\n\d+ ok, 0 warn, 0 fail\n$/);
    // No secret in the output.
    expect(table).not.toContain(SECRET);
    expect(table).not.toContain(token.pin);
  });

  it('a key id with no object in the HSM: XksKeyNotFoundException, exit 2', async () => {
    const { code, report, table } = await doctor(spec({ keys: [TEST_KEYS.ordinary, 'no-such-key'] }));
    expect(code).toBe(2);
    const f = find(report, 'key no-such-key', 'exists');
    expect(f.status).toBe('fail');
    expect(f.kms).toMatch(/XksKeyNotFoundException/);
    expect(f.fix).toMatch(/--keygen --key-type AES:32 --label no-such-key/);
    expect(failures(report)).toHaveLength(1);
    expect(table).toMatch(/FAIL +key no-such-key +exists[^\n]*\n +KMS: CreateKey with this XksKeyId: XksKeyNotFoundException/);
  });

  it('a label on two objects: not unique, XksKeyNotFoundException', async () => {
    const { code, report } = await doctor(spec({ keys: [TEST_KEYS.duplicate] }));
    expect(code).toBe(2);
    const f = find(report, `key ${TEST_KEYS.duplicate}`, 'unique');
    expect(f.status).toBe('fail');
    expect(f.detail).toMatch(/two or more secret-key objects/);
    expect(f.kms).toMatch(/XksKeyNotFoundException/);
  });

  it('an AES-128 key: XksKeyInvalidConfigurationException (keySpec AES_128)', async () => {
    const { code, report } = await doctor(spec({ keys: [AES128] }));
    expect(code).toBe(2);
    const f = find(report, `key ${AES128}`, 'AES-256');
    expect(f.status).toBe('fail');
    expect(f.detail).toMatch(/AES of 128 bits: GetKeyMetadata reports keySpec AES_128/);
    expect(f.kms).toMatch(/XksKeyInvalidConfigurationException/);
  });

  it('a key without CKA_DECRYPT: XksKeyInvalidConfigurationException', async () => {
    const { code, report } = await doctor(spec({ keys: [TEST_KEYS.encryptOnly] }));
    expect(code).toBe(2);
    const f = find(report, `key ${TEST_KEYS.encryptOnly}`, 'usage');
    expect(f.status).toBe('fail');
    expect(f.detail).toMatch(/^CKA_DECRYPT is false/);
    expect(f.kms).toMatch(/XksKeyInvalidConfigurationException/);
  });

  it('a wrong PIN: login fails with CKR_PIN_INCORRECT, the module and token are ok', async () => {
    const { code, report, table } = await doctor(spec(), (t) => t.replace(`user_pin = "${token.pin}"`, 'user_pin = "not-the-pin"'));
    expect(code).toBe(2);
    expect(find(report, 'hsm', 'module').status).toBe('ok');
    expect(find(report, 'hsm', 'token').status).toBe('ok');
    const f = find(report, 'hsm', 'login');
    expect(f.status).toBe('fail');
    expect(f.detail).toMatch(/C_Login: CKR_PIN_INCORRECT/);
    expect(f.kms).toMatch(/XKS_PROXY_NOT_REACHABLE/);
    expect(table).not.toContain('not-the-pin');
    // No key check runs without a session.
    expect(report.findings.some((x) => x.group.startsWith('key '))).toBe(false);
  });

  it('the zero-IV mode on SoftHSM2 (which does not generate IVs): the start-up IV test fails', async () => {
    const { code, report } = await doctor(spec(), (t) =>
      t.replace('can_generate_iv = false\nis_zero_iv_required = false', 'can_generate_iv = true\nis_zero_iv_required = true'),
    );
    expect(code).toBe(2);
    const f = find(report, 'hsm', 'iv mode');
    expect(f.status).toBe('fail');
    expect(f.detail).toMatch(/is_zero_iv_required = true cannot work with this HSM: .*all-zero IV/);
    expect(f.fix).toMatch(/can_generate_iv = false/);
    expect(f.kms).toMatch(/XKS_PROXY_NOT_REACHABLE/);
  });

  it('an HSM slower than KMS allows (the fault module delays C_Encrypt 300 ms): XKS_PROXY_TIMED_OUT', async () => {
    const faults = new FaultControl(path.join(token.dir, 'doctor-faults.control'), path.join(token.dir, 'doctor-faults.status'));
    faults.set('delay C_Encrypt 300');
    const env = {
      FAULTY_PKCS11_TARGET: token.modulePath,
      FAULTY_PKCS11_CONTROL: faults.controlPath,
      FAULTY_PKCS11_STATUS: faults.statusPath,
    };
    const { code, report } = await doctor(
      { ...spec(), token: { ...token, modulePath: FAULTY_MODULE }, operationTimeoutMs: 2000 },
      (t) => t,
      env,
    );
    expect(code).toBe(2);
    expect(failures(report).map((f) => `${f.group}/${f.check}`)).toEqual([`key ${TEST_KEYS.ordinary}/latency`]);
    const f = find(report, `key ${TEST_KEYS.ordinary}`, 'latency');
    expect(f.detail).toMatch(/^encrypt \+ decrypt in \d+\.\d ms \(fastest of 5\): above KMS's 250 ms/);
    expect(f.kms).toMatch(/^XKS_PROXY_TIMED_OUT/);
    expect(faults.status().injected).toBeGreaterThanOrEqual(5);
  });

  it('a bad access key id: KMS refuses it (ValidationException)', async () => {
    const { code, report } = await doctor(spec({ accessKeyId: 'akia-lower-case-1' }));
    expect(code).toBe(2);
    const f = find(report, 'sigv4', 'access key id');
    expect(f.status).toBe('fail');
    expect(f.detail).toMatch(/KMS requires 20\.\.30 characters of A-Z and 2-7/);
    expect(f.kms).toMatch(/CreateCustomKeyStore .*ValidationException/);
    expect(failures(report)).toHaveLength(1);
  });

  const tlsSpec = (cert: string, key: string): SettingsSpec => spec({ tls: { certFile: cert, keyFile: key } });

  it('an expired certificate: XKS_PROXY_INVALID_TLS_CONFIGURATION', async () => {
    const { code, report } = await doctor(tlsSpec(pki.clients.expired.cert, pki.clients.expired.key));
    expect(code).toBe(2);
    expect(find(report, 'tls', 'key match').status).toBe('ok');
    const f = find(report, 'tls', 'dates');
    expect(f.status).toBe('fail');
    expect(f.detail).toMatch(/^the certificate expired/);
    expect(f.kms).toBe('XKS_PROXY_INVALID_TLS_CONFIGURATION');
  });

  it('a self-signed certificate: XKS_PROXY_INVALID_TLS_CONFIGURATION', async () => {
    const { code, report } = await doctor(tlsSpec(pki.clients.selfSigned.cert, pki.clients.selfSigned.key));
    expect(code).toBe(2);
    const f = find(report, 'tls', 'trusted root');
    expect(f.status).toBe('fail');
    expect(f.detail).toMatch(/self-signed/);
    expect(f.kms).toBe('XKS_PROXY_INVALID_TLS_CONFIGURATION');
  });

  it('a certificate from a CA KMS does not trust, expiring within 30 days; the rest of TLS is ok', async () => {
    const { code, report } = await doctor(tlsSpec(pki.server.cert, pki.server.key));
    expect(code).toBe(2);
    const f = find(report, 'tls', 'trusted root');
    expect(f.status).toBe('fail');
    expect(f.detail).toMatch(/the chain ends at "CN=ca", which is not in the TrustedCertificateAuthorities list/);
    expect(f.kms).toBe('XKS_PROXY_INVALID_TLS_CONFIGURATION');
    // The test PKI's certificates live 30 days: inside the warning window.
    expect(find(report, 'tls', 'dates').status).toBe('warn');
    expect(find(report, 'tls', 'dns name').detail).toMatch(/localhost/);
    // A P-256 key: TLS 1.3 suites and the ECDSA TLS 1.2 suite, not the RSA one.
    const suites = find(report, 'tls', 'suites');
    expect(suites.status).toBe('ok');
    expect(suites.detail).toContain('TLS 1.3 TLS_AES_256_GCM_SHA384');
    expect(suites.detail).toContain('TLS 1.2 ECDHE-ECDSA-AES256-GCM-SHA384');
    expect(suites.detail).not.toContain('ECDHE-RSA');
  });

  it("a key that is not the certificate's: key match fails", async () => {
    const { report } = await doctor(tlsSpec(pki.server.cert, pki.clients.good.key));
    const f = find(report, 'tls', 'key match');
    expect(f.status).toBe('fail');
    expect(f.detail).toMatch(/is not the key of the certificate/);
  });

  it('mTLS: the client CA parses and the DNS name is set', async () => {
    const { report } = await doctor(
      spec({ tls: { certFile: pki.server.cert, keyFile: pki.server.key, mtls: { caFile: pki.ca, dnsName: 'kms.example.com' } } }),
    );
    expect(find(report, 'tls', 'mtls ca').status).toBe('ok');
    expect(find(report, 'tls', 'mtls name').detail).toMatch(/kms\.example\.com/);
    const bad = await doctor(
      spec({ tls: { certFile: pki.server.cert, keyFile: pki.server.key, mtls: { caFile: pki.server.key, dnsName: 'kms.example.com' } } }),
    );
    expect(find(bad.report, 'tls', 'mtls ca').status).toBe('fail');
  });

  it('a settings file every user can read: a warning, exit 1', async () => {
    const { code, report } = await doctor(spec(), (t) => t);
    expect(code).toBe(0);
    expect(find(report, 'settings', 'permissions').detail).toBe('mode 0600: not readable by other users');
    const file = path.join(token.dir, `doctor-${n}.toml`);
    chmodSync(file, 0o644);
    const r = await execFileP(process.execPath, [BIN, 'doctor', '--json', file], {
      env: { ...process.env, ...token.env },
      timeout: 30000,
    }).then(
      () => ({ code: 0, stdout: '' }),
      (e: { code?: number; stdout?: string }) => ({ code: e.code ?? -1, stdout: e.stdout ?? '' }),
    );
    expect(r.code).toBe(1);
    const f = find(JSON.parse(r.stdout) as Report, 'settings', 'permissions');
    expect(f.status).toBe('warn');
    expect(f.detail).toMatch(/is mode 0644: every user of the host can read the PIN/);
  });

  it("a file that does not load: the config module's message, exit 2", async () => {
    const { code, report } = await doctor(spec(), (t) => t.replace(/^port = \d+$/m, 'port = "x"'));
    expect(code).toBe(2);
    const f = find(report, 'settings', 'parses');
    expect(f.status).toBe('fail');
    expect(f.detail).toMatch(/server\.port: /);
  });
});

describe('the trusted-CA list', () => {
  it("is the spec repository's, with its source named", () => {
    expect(TRUSTED_CAS_SOURCE.repository).toBe('aws/aws-kms-xksproxy-api-spec');
    expect(TRUSTED_CAS_SOURCE.commit).toMatch(/^[0-9a-f]{40}$/);
    expect(TRUSTED_CAS.length).toBeGreaterThan(100);
    expect(parseJavaDn('CN=Go Daddy Root Certificate Authority - G2, O="GoDaddy.com, Inc.", L=Scottsdale, ST=Arizona, C=US')).toEqual([
      ['CN', 'Go Daddy Root Certificate Authority - G2'],
      ['O', 'GoDaddy.com, Inc.'],
      ['L', 'Scottsdale'],
      ['ST', 'Arizona'],
      ['C', 'US'],
    ]);
  });

  it('matches a root by fingerprint: the roots node ships that are in the list', () => {
    const listed = new Set(TRUSTED_CAS.map((c) => c.sha256));
    const roots = rootCertificates.map((p) => new X509Certificate(p));
    const inBoth = roots.filter((r) => listed.has(r.fingerprint256));
    expect(inBoth.length).toBeGreaterThan(20);
    for (const r of inBoth) expect(kmsTrusts([r]).trusted).toBe(true);
    // And the test CA is not trusted.
    expect(kmsTrusts([new X509Certificate(readFileSync(pki.ca))]).trusted).toBe(false);
  });

  it('matches a chain that stops below the root by its issuer name', () => {
    // A leaf whose issuer name is "Amazon Root CA 1" (signed by a look-alike: only the name is compared here).
    const dir = pki.dir;
    makeCa(dir, 'amz', '/C=US/O=Amazon/CN=Amazon Root CA 1', 2);
    makeKeyAndCsr(dir, 'below', '/CN=below');
    signCsr(dir, 'below', 'amz', ['basicConstraints=CA:FALSE'], 2);
    const v = kmsTrusts([new X509Certificate(readFileSync(path.join(dir, 'below.pem')))]);
    expect(v.trusted && v.ca.alias).toBe('amazonrootca1');
    expect(v.trusted && v.how).toBe('issuer name');
  });
});
