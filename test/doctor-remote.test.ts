/**
 * `xks-proxy doctor --endpoint ...` as a process against our own proxy (real TLS on 127.0.0.1,
 * the fault module in front of SoftHSM2): it passes, and names the ConnectionErrorCode KMS would
 * report for a wrong credential, a wrong URI path and a slowed HSM. The probe's signer agrees
 * with the AWS SDK's.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { signKmsRequest } from '../src/doctor/sign.js';
import { loadAddon } from '../src/hsm/addon.js';
import { BIN } from './helpers/cli.js';
import { useFaultyModule, type FaultControl } from './helpers/faulty.js';
import { startTestProxy, type TestProxy } from './helpers/proxy.js';
import { signRequest } from './helpers/sign.js';
import { makeToken, TEST_KEYS, type TestToken } from './helpers/softhsm.js';
import { makePki, type TestPki } from './helpers/tls-certs.js';

const execFileP = promisify(execFile);

const PREFIX = '/doctor/remote';
const AKID = 'AKIDDOCTORREMOTE2345AB';
const SECRET = 'ZG9jdG9yLXJlbW90ZS1zZWNyZXQtc2VjcmV0LXNlY3JldA==';
const KEY = TEST_KEYS.ordinary;

interface Finding {
  group: string;
  check: string;
  status: 'ok' | 'warn' | 'fail';
  detail: string;
  kms?: string;
}

let base: TestToken;
let faults: FaultControl;
let pki: TestPki;
let proxy: TestProxy;
let secretFile: string;
let wrongSecretFile: string;

beforeAll(async () => {
  base = makeToken('xks-doctor-remote');
  let token: TestToken;
  ({ token, faults } = useFaultyModule(base));
  const { Engine } = loadAddon();
  const e = new Engine({
    modulePath: token.modulePath,
    userPin: token.pin,
    poolMaxSize: 1,
    poolTimeoutMs: 1000,
    eagerClose: false,
    threads: 1,
    ivMode: 'random',
  });
  await e.open();
  await e.createKey(KEY, { encrypt: true, decrypt: true });
  await e.close();
  pki = makePki();
  proxy = await startTestProxy({
    token,
    level: 'WARN',
    stores: [{ prefix: PREFIX, accessKeyId: AKID, secret: SECRET, keys: [KEY] }],
    tls: { certFile: pki.server.cert, keyFile: pki.server.key },
    // Above the fault's delay: the slowed call is measured, not cut off with a 503.
    operationTimeoutMs: 2000,
    ciphertextMetadataB64: Buffer.from('doctor-v1').toString('base64'),
  });
  secretFile = path.join(base.dir, 'secret');
  writeFileSync(secretFile, `${SECRET}\n`);
  wrongSecretFile = path.join(base.dir, 'wrong-secret');
  writeFileSync(wrongSecretFile, `${SECRET.replace('ZG9j', 'AAAA')}\n`);
}, 60000);

afterAll(async () => {
  await proxy?.stop();
  pki?.cleanup();
  base?.cleanup();
});

async function doctor(args: string[]): Promise<{ code: number; findings: Finding[]; stderr: string }> {
  const argv = [BIN, 'doctor', '--json', '--ca', pki.ca, '--access-key-id', AKID, ...args];
  try {
    const { stdout, stderr } = await execFileP(process.execPath, argv, { timeout: 30000 });
    return { code: 0, findings: (JSON.parse(stdout) as { findings: Finding[] }).findings, stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    const code = typeof err.code === 'number' ? err.code : -1;
    let findings: Finding[] = [];
    try {
      findings = (JSON.parse(err.stdout ?? '') as { findings: Finding[] }).findings;
    } catch {
      // usage errors print no JSON
    }
    return { code, findings, stderr: err.stderr ?? '' };
  }
}

const endpoint = (): string => `https://127.0.0.1:${proxy.port}`;
const get = (fs: Finding[], group: string, check: string): Finding => {
  const f = fs.find((x) => x.group === group && x.check === check);
  if (!f) throw new Error(`no finding ${group}/${check} in ${JSON.stringify(fs)}`);
  return f;
};
/** Warnings a loopback probe of a test proxy always has (an IP address, a private CA), or timing on a busy machine. */
const expectedWarning = (f: Finding): boolean =>
  (f.group === 'endpoint' && f.check === 'host') ||
  (f.group === 'tls' && f.check === 'trusted root') ||
  f.check.endsWith(' latency') ||
  f.check === 'round trip';

describe('xks-proxy doctor --endpoint', () => {
  it('passes against our own proxy: TLS, health, metadata, encrypt with AAD and CDIV, decrypt', async () => {
    faults.clear();
    const { code, findings } = await doctor([
      '--endpoint',
      endpoint(),
      '--uri-path',
      `${PREFIX}/kms/xks/v1`,
      '--secret-file',
      secretFile,
      '--key-id',
      KEY,
    ]);
    expect(
      findings.filter((f) => f.status === 'fail'),
      JSON.stringify(findings),
    ).toEqual([]);
    expect(findings.filter((f) => f.status === 'warn' && !expectedWarning(f))).toEqual([]);
    expect(code).toBe(1);
    expect(get(findings, 'tls', 'trusted root').detail).toMatch(/not a CA KMS trusts \(accepted here through --ca\)/);
    expect(get(findings, 'tls', 'version').detail).toMatch(
      /^TLSv1\.3 with TLS_AES_256_GCM_SHA384|^TLSv1\.3 with TLS_CHACHA20_POLY1305_SHA256/,
    );
    expect(get(findings, 'health', 'fields').status).toBe('ok');
    expect(get(findings, `key ${KEY}`, 'metadata').detail).toBe('AES_256, ENCRYPT DECRYPT, ENABLED');
    expect(get(findings, `key ${KEY}`, 'encrypt').detail).toMatch(/CDIV as the spec says \(IV 12 bytes, ciphertextMetadata 9 bytes\)/);
    expect(get(findings, `key ${KEY}`, 'decrypt').status).toBe('ok');
    expect(get(findings, 'clock', 'skew').status).toBe('ok');
  });

  it('the path may come with the endpoint; a key id the store lacks is XksKeyNotFoundException', async () => {
    const { code, findings } = await doctor([
      '--endpoint',
      `${endpoint()}${PREFIX}/kms/xks/v1`,
      '--secret-file',
      secretFile,
      '--key-id',
      'not-listed',
    ]);
    expect(code).toBe(2);
    expect(get(findings, 'health', 'fields').status).toBe('ok');
    const f = get(findings, 'key not-listed', 'metadata');
    expect(f.detail).toMatch(/HTTP 404 KeyNotFoundException/);
    expect(f.kms).toMatch(/^XksKeyNotFoundException/);
  });

  it('a wrong secret: INVALID_CREDENTIALS', async () => {
    const { code, findings } = await doctor([
      '--endpoint',
      endpoint(),
      '--uri-path',
      `${PREFIX}/kms/xks/v1`,
      '--secret-file',
      wrongSecretFile,
      '--key-id',
      KEY,
    ]);
    expect(code).toBe(2);
    const f = get(findings, 'health', 'health');
    expect(f.status).toBe('fail');
    expect(f.detail).toMatch(/HTTP 401 AuthenticationFailedException/);
    expect(f.kms).toBe('INVALID_CREDENTIALS');
    // Nothing after a failed health check.
    expect(findings.some((x) => x.group === `key ${KEY}`)).toBe(false);
  });

  it('a wrong prefix: XKS_PROXY_INVALID_CONFIGURATION', async () => {
    const { code, findings } = await doctor(['--endpoint', endpoint(), '--uri-path', '/wrong/kms/xks/v1', '--secret-file', secretFile]);
    expect(code).toBe(2);
    const f = get(findings, 'health', 'health');
    expect(f.detail).toMatch(/HTTP 404 InvalidUriPathException/);
    expect(f.kms).toBe('XKS_PROXY_INVALID_CONFIGURATION');
  });

  it('a slowed HSM (the fault module delays C_Encrypt 300 ms): XKS_PROXY_TIMED_OUT', async () => {
    faults.set('delay C_Encrypt 300');
    try {
      const { code, findings } = await doctor([
        '--endpoint',
        endpoint(),
        '--uri-path',
        `${PREFIX}/kms/xks/v1`,
        '--secret-file',
        secretFile,
        '--key-id',
        KEY,
      ]);
      expect(code).toBe(2);
      const slow = findings.filter((f) => f.status === 'fail');
      // Only latencies fail (on a busy machine another call may pass 250 ms too), the encrypt's always.
      expect(slow.filter((f) => !f.check.endsWith(' latency'))).toEqual([]);
      const enc = get(findings, `key ${KEY}`, 'encrypt latency');
      expect(enc.status).toBe('fail');
      expect(enc.detail).toMatch(/^encrypt took \d+\.\d ms: above KMS's 250 ms/);
      expect(enc.kms).toBe('XKS_PROXY_TIMED_OUT');
      expect(get(findings, `key ${KEY}`, 'decrypt').status).toBe('ok');
      expect(faults.status().injected).toBeGreaterThan(0);
    } finally {
      faults.clear();
    }
  });

  it('nothing listening: XKS_PROXY_NOT_REACHABLE', async () => {
    const { createServer } = await import('node:net');
    const s = createServer();
    const port = await new Promise<number>((resolve) => s.listen(0, '127.0.0.1', () => resolve((s.address() as { port: number }).port)));
    await new Promise<void>((resolve) => s.close(() => resolve()));
    const { code, findings } = await doctor(['--endpoint', `https://127.0.0.1:${port}`, '--secret-file', secretFile]);
    expect(code).toBe(2);
    expect(get(findings, 'network', 'connect').kms).toBe('XKS_PROXY_NOT_REACHABLE');
  });

  it('without --ca the test CA fails the handshake: XKS_PROXY_INVALID_TLS_CONFIGURATION', async () => {
    const argv = [BIN, 'doctor', '--json', '--endpoint', endpoint(), '--access-key-id', AKID, '--secret-file', secretFile];
    const r = await execFileP(process.execPath, argv, { timeout: 30000 }).then(
      (x) => ({ code: 0, stdout: x.stdout }),
      (e: { code?: number; stdout?: string }) => ({ code: e.code ?? -1, stdout: e.stdout ?? '' }),
    );
    expect(r.code).toBe(2);
    const f = get((JSON.parse(r.stdout) as { findings: Finding[] }).findings, 'tls', 'handshake');
    expect(f.detail).toMatch(/UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED|unable to verify/);
    expect(f.kms).toBe('XKS_PROXY_INVALID_TLS_CONFIGURATION');
  });

  it('usage errors exit 2 with the usage', async () => {
    const r = await doctor(['--endpoint', endpoint(), '--secret-file', path.join(base.dir, 'none')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^xks-proxy doctor: --secret-file .*cannot read it \(ENOENT\)\n\nUsage: xks-proxy doctor/);
    const noCa = await doctor(['--endpoint', endpoint(), '--secret-file', secretFile, '--ca', secretFile]);
    expect(noCa.code).toBe(2);
    expect(noCa.stderr).toMatch(/^xks-proxy doctor: --ca .*: no PEM certificate in it\n/);
    const help = await execFileP(process.execPath, [BIN, 'doctor', '--help']);
    expect(help.stdout).toMatch(
      /^Usage: xks-proxy doctor \[--json\] \[FILE\]\n[\s\S]*--endpoint URL[\s\S]*Exit 0 all ok, 1 a warning, 2 a failure/,
    );
  });
});

describe('xks-proxy doctor --endpoint against a proxy that breaks the spec', () => {
  /** Answers like an XKS proxy, except: fleet size 0 under /bad-health, a wrong CDIV under /bad-cdiv. */
  async function brokenProxy(): Promise<{ port: number; close(): Promise<void> }> {
    const { createServer } = await import('node:http');
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, string>;
        const url = req.url ?? '';
        let answer: unknown = {};
        if (url.endsWith('/health')) {
          answer = {
            xksProxyFleetSize: url.startsWith('/bad-health') ? 0 : 1,
            xksProxyVendor: 'v',
            xksProxyModel: 'm',
            ekmVendor: 'e',
            ekmFleetDetails: [{ id: 'h', model: 'x', healthStatus: 'ACTIVE' }],
          };
        } else if (url.endsWith('/metadata')) answer = { keySpec: 'AES_256', keyUsage: ['ENCRYPT', 'DECRYPT'], keyStatus: 'ENABLED' };
        else if (url.endsWith('/encrypt')) {
          answer = {
            ciphertext: body.plaintext,
            initializationVector: Buffer.alloc(12, 1).toString('base64'),
            authenticationTag: Buffer.alloc(16, 2).toString('base64'),
            ciphertextDataIntegrityValue: Buffer.alloc(32, 3).toString('base64'),
          };
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
      });
    });
    const port = await new Promise<number>((resolve) =>
      server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port)),
    );
    return { port, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
  }

  it('a health answer without a fleet size, an Encrypt with a wrong CDIV: XKS_PROXY_INVALID_RESPONSE', async () => {
    const broken = await brokenProxy();
    try {
      const health = await doctor(['--endpoint', `http://127.0.0.1:${broken.port}/bad-health/kms/xks/v1`, '--secret-file', secretFile]);
      expect(health.code).toBe(2);
      const h = get(health.findings, 'health', 'fields');
      expect(h.detail).toBe('xksProxyFleetSize is not an integer > 0');
      expect(h.kms).toBe('XKS_PROXY_INVALID_RESPONSE');
      expect(get(health.findings, 'endpoint', 'scheme').status).toBe('warn');

      const cdiv = await doctor([
        '--endpoint',
        `http://127.0.0.1:${broken.port}/bad-cdiv/kms/xks/v1`,
        '--secret-file',
        secretFile,
        '--key-id',
        'k',
      ]);
      expect(cdiv.code).toBe(2);
      expect(get(cdiv.findings, 'health', 'fields').status).toBe('ok');
      expect(get(cdiv.findings, 'key k', 'metadata').status).toBe('ok');
      const e = get(cdiv.findings, 'key k', 'encrypt');
      expect(e.detail).toMatch(/^ciphertextDataIntegrityValue is not SHA-256/);
      expect(e.kms).toBe('XKS_PROXY_INVALID_RESPONSE');
    } finally {
      await broken.close();
    }
  });
});

describe('the probe signer', () => {
  it("signs as the AWS SDK does with host;x-amz-date (KMS's signed headers)", async () => {
    const date = new Date('2026-03-04T05:06:07Z');
    const url = 'https://xks.example.com:8443/a%20b/kms/xks/v1/keys/k.1/encrypt';
    const body = '{"x":1}';
    const ours = signKmsRequest({
      host: 'xks.example.com:8443',
      path: '/a%20b/kms/xks/v1/keys/k.1/encrypt',
      body,
      accessKeyId: AKID,
      secretAccessKey: SECRET,
      region: 'eu-west-1',
      service: 'kms-xks-proxy',
      date,
    });
    const sdk = await signRequest({
      url,
      body,
      accessKeyId: AKID,
      secretAccessKey: SECRET,
      region: 'eu-west-1',
      service: 'kms-xks-proxy',
      date,
      unsignedHeaders: ['content-type'],
    });
    expect(ours.authorization).toBe(sdk.headers.authorization);
    expect(ours['x-amz-date']).toBe('20260304T050607Z');
  });
});
