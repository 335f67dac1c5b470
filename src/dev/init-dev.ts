/**
 * `xks-proxy init-dev [DIR]`: a SoftHSM2 token with demo keys and a matching settings.toml
 * in the Rust proxy's format, for trying the proxy out. Never for production.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Hsm } from '../hsm/hsm.js';
import { settingsToml } from './settings-toml.js';
import { initSoftHsmToken } from './softhsm.js';

/** Key ids the AWS test client (aws-kms-xksproxy-test-client) uses by default. */
export const DEMO_KEYS = [
  { id: 'foo', encrypt: true, decrypt: true },
  { id: 'encrypt_only_key', encrypt: true, decrypt: false },
  { id: 'decrypt_only_key', encrypt: false, decrypt: true },
  { id: 'impotent_key', encrypt: false, decrypt: false },
] as const;

export const DEMO_PREFIX = '/example/uri/path/prefix';
/** Label of the HSM key the audit trail's checkpoints are HMACed with ([audit] hmac_key_id). */
export const DEMO_AUDIT_HMAC_KEY = 'xks-audit-hmac';

export interface DevEnvironment {
  dir: string;
  settingsPath: string;
  softhsmConf: string;
  accessKeyId: string;
  secretAccessKey: string;
  port: number;
}

function randomFrom(alphabet: string, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += alphabet[randomInt(alphabet.length)];
  return s;
}

export async function initDev(dirArg: string, port = 8000): Promise<DevEnvironment> {
  const dir = path.resolve(dirArg);
  const settingsPath = path.join(dir, 'settings.toml');
  if (existsSync(settingsPath)) throw new Error(`${settingsPath} already exists; remove ${dir} to start over`);
  const pin = randomFrom('0123456789', 8);
  const { confPath: softhsmConf, modulePath } = initSoftHsmToken(dir, 'xks-proxy-dev', pin, randomFrom('0123456789', 8));

  process.env.SOFTHSM2_CONF = softhsmConf;
  const hsm = await Hsm.open({
    modulePath,
    userPin: pin,
    poolMaxSize: 2,
    poolTimeoutMs: 1000,
    eagerClose: false,
    threads: 1,
    ivMode: 'random',
  });
  try {
    for (const k of DEMO_KEYS) await hsm.createKey(k.id, { encrypt: k.encrypt, decrypt: k.decrypt });
    await hsm.createHmacKey(DEMO_AUDIT_HMAC_KEY);
  } finally {
    await hsm.close();
  }

  const accessKeyId = `AKIA${randomFrom('ABCDEFGHIJKLMNOPQRSTUVWXYZ234567', 16)}`;
  const secretAccessKey = randomBytes(32).toString('base64');
  writeFileSync(
    settingsPath,
    demoSettings({
      modulePath,
      pin,
      accessKeyId,
      secretAccessKey,
      port,
      logDir: path.join(dir, 'logs'),
      auditDir: path.join(dir, 'audit'),
    }),
    {
      mode: 0o600,
    },
  );
  return { dir, settingsPath, softhsmConf, accessKeyId, secretAccessKey, port };
}

function demoSettings(o: {
  modulePath: string;
  pin: string;
  accessKeyId: string;
  secretAccessKey: string;
  port: number;
  logDir: string;
  auditDir: string;
}): string {
  return settingsToml({
    header: [
      'Made by "xks-proxy init-dev" for local trials against SoftHSM2. Not for production.',
      "Same format as the Rust xks-proxy's settings.toml.",
    ],
    port: o.port,
    region: 'us-east-1',
    service: 'kms-xks-proxy',
    tracing: { stdout: true, level: 'INFO', directory: o.logDir, rotation: 'HOURLY' },
    stores: [{ prefix: DEMO_PREFIX, accessKeyId: o.accessKeyId, secretAccessKey: o.secretAccessKey, keys: DEMO_KEYS.map((k) => k.id) }],
    pkcs11: { pin: o.pin, modulePath: o.modulePath, poolMaxSize: 30, poolTimeoutMs: 100 },
    audit: { directory: o.auditDir, hmacKeyId: DEMO_AUDIT_HMAC_KEY },
  });
}
