/**
 * `xks-proxy init-dev [DIR]`: a SoftHSM2 token with demo keys and a matching settings.toml
 * in the Rust proxy's format, for trying the proxy out. Never for production.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Hsm } from '../hsm/hsm.js';

export const SOFTHSM_MODULE_CANDIDATES = [
  '/usr/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/local/lib/softhsm/libsofthsm2.so',
];

/** Key ids the AWS test client (aws-kms-xksproxy-test-client) uses by default. */
export const DEMO_KEYS = [
  { id: 'foo', encrypt: true, decrypt: true },
  { id: 'encrypt_only_key', encrypt: true, decrypt: false },
  { id: 'decrypt_only_key', encrypt: false, decrypt: true },
  { id: 'impotent_key', encrypt: false, decrypt: false },
] as const;

export const DEMO_PREFIX = '/example/uri/path/prefix';

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
  const modulePath = SOFTHSM_MODULE_CANDIDATES.find((p) => existsSync(p));
  if (!modulePath) throw new Error('SoftHSM2 is not installed (apt-get install softhsm2)');

  const tokens = path.join(dir, 'tokens');
  mkdirSync(tokens, { recursive: true, mode: 0o700 });
  const softhsmConf = path.join(dir, 'softhsm2.conf');
  writeFileSync(softhsmConf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`, {
    mode: 0o600,
  });
  const pin = randomFrom('0123456789', 8);
  const soPin = randomFrom('0123456789', 8);
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'xks-proxy-dev', '--pin', pin, '--so-pin', soPin], {
    env: { ...process.env, SOFTHSM2_CONF: softhsmConf },
    stdio: ['ignore', 'ignore', 'pipe'],
  });

  process.env.SOFTHSM2_CONF = softhsmConf;
  const hsm = await Hsm.open({
    modulePath,
    userPin: pin,
    poolMaxSize: 2,
    poolTimeoutMs: 1000,
    eagerClose: false,
    threads: 1,
    canGenerateIv: false,
    isZeroIvRequired: false,
  });
  try {
    for (const k of DEMO_KEYS) await hsm.createKey(k.id, { encrypt: k.encrypt, decrypt: k.decrypt });
  } finally {
    await hsm.close();
  }

  const accessKeyId = `AKIA${randomFrom('ABCDEFGHIJKLMNOPQRSTUVWXYZ234567', 16)}`;
  const secretAccessKey = randomBytes(32).toString('base64');
  writeFileSync(settingsPath, demoSettings({ modulePath, pin, accessKeyId, secretAccessKey, port, logDir: path.join(dir, 'logs') }), {
    mode: 0o600,
  });
  return { dir, settingsPath, softhsmConf, accessKeyId, secretAccessKey, port };
}

function demoSettings(o: { modulePath: string; pin: string; accessKeyId: string; secretAccessKey: string; port: number; logDir: string }): string {
  const keys = DEMO_KEYS.map((k) => `"${k.id}"`).join(', ');
  return `# Made by "xks-proxy init-dev" for local trials against SoftHSM2. Not for production.
# Same format as the Rust xks-proxy's settings.toml.
[server]
ip = "127.0.0.1"
port = ${o.port}
port_http_ping = ${o.port}
region = "us-east-1"
service = "kms-xks-proxy"

[server.tcp_keepalive]
tcp_keepalive_secs = 60
tcp_keepalive_retries = 3
tcp_keepalive_interval_secs = 1

[tracing]
is_stdout_writer_enabled = true
is_file_writer_enabled = false
level = "INFO"
directory = "${o.logDir}"
file_prefix = "xks-proxy.log"
rotation_kind = "HOURLY"

[security]
is_sigv4_auth_enabled = true
is_tls_enabled = false
is_mtls_enabled = false

[[external_key_stores]]
uri_path_prefix = "${DEMO_PREFIX}"
sigv4_access_key_id = "${o.accessKeyId}"
sigv4_secret_access_key = "${o.secretAccessKey}"
xks_key_id_set = [${keys}]

[pkcs11]
session_pool_max_size = 30
session_pool_timeout_milli = 100
session_eager_close = false
user_pin = "${o.pin}"
PKCS11_HSM_MODULE = "${o.modulePath}"
context_read_timeout_milli = 100

[limits]
max_plaintext_in_base64 = 8192
max_aad_in_base64 = 16384

[hsm_capabilities]
can_generate_iv = false
is_zero_iv_required = false
`;
}
