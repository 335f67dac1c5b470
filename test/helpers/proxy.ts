/**
 * Starts a real proxy (in this process, real sockets on 127.0.0.1) against a real
 * SoftHSM2 token, from a settings.toml written in the Rust proxy's format.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { loadConfig } from '../../src/config.js';
import { startProxy, type RunningProxy } from '../../src/main.js';
import { signRequest } from './sign.js';
import type { TestToken } from './softhsm.js';

export interface StoreSpec {
  prefix: string;
  accessKeyId: string;
  secret: string;
  keys: string[];
  /** Extra credentials (`sigv4_credentials`). */
  credentials?: { accessKeyId: string; secret: string }[];
  requestsPerSecond?: number;
  burst?: number;
}

export interface SettingsSpec {
  token: TestToken;
  stores: StoreSpec[];
  poolMaxSize?: number;
  poolTimeoutMs?: number;
  eagerClose?: boolean;
  workerThreads?: number;
  ciphertextMetadataB64?: string;
  maxPlaintextB64?: number;
  maxAadB64?: number;
  sigv4?: boolean;
  level?: string;
  pingPort?: number;
  /** [tls] files; is_tls_enabled = true when set. */
  tls?: { certFile: string; keyFile: string; mtls?: { caFile: string; dnsName: string } };
  /** secondary_auth = "Oso" with this polar file. */
  osoPolicy?: string;
  /** [server] workers; default 1 (the main thread only), not the proxy's default of all cores. */
  workers?: number;
}

export const REGION = 'us-east-1';
export const SERVICE = 'kms-xks-proxy';

export function settingsToml(s: SettingsSpec): string {
  const stores = s.stores
    .map(
      (k) => `[[external_key_stores]]
uri_path_prefix = "${k.prefix}"
sigv4_access_key_id = "${k.accessKeyId}"
sigv4_secret_access_key = "${k.secret}"
xks_key_id_set = [${k.keys.map((id) => `"${id}"`).join(', ')}]
${k.credentials ? `sigv4_credentials = [${k.credentials.map((c) => `{ access_key_id = "${c.accessKeyId}", secret_access_key = "${c.secret}" }`).join(', ')}]` : ''}
${k.requestsPerSecond !== undefined ? `requests_per_second = ${k.requestsPerSecond}` : ''}
${k.burst !== undefined ? `burst = ${k.burst}` : ''}
`,
    )
    .join('\n');
  return `[server]
ip = "127.0.0.1"
port = 0
port_http_ping = ${s.pingPort ?? 0}
region = "${REGION}"
service = "${SERVICE}"
workers = ${s.workers ?? 1}
${s.ciphertextMetadataB64 !== undefined ? `ciphertext_metadata_b64 = "${s.ciphertextMetadataB64}"` : ''}

[server.tcp_keepalive]
tcp_keepalive_secs = 60
tcp_keepalive_retries = 3
tcp_keepalive_interval_secs = 1

[tracing]
is_stdout_writer_enabled = true
is_file_writer_enabled = false
level = "${s.level ?? 'DEBUG'}"
directory = "/var/local/xks-proxy/logs"
file_prefix = "xks-proxy.log"
rotation_kind = "HOURLY"

[security]
is_sigv4_auth_enabled = ${s.sigv4 ?? true}
is_tls_enabled = ${s.tls !== undefined}
is_mtls_enabled = ${s.tls?.mtls !== undefined}
${s.osoPolicy !== undefined ? `secondary_auth = "Oso"\n\n[security.oso]\npolar_file_path = "${s.osoPolicy}"\n` : ''}
${
  s.tls !== undefined
    ? `[tls]\ntls_cert_pem = "${s.tls.certFile}"\ntls_key_pem = "${s.tls.keyFile}"\n` +
      (s.tls.mtls ? `mtls_client_ca_pem = "${s.tls.mtls.caFile}"\nmtls_client_dns_name = "${s.tls.mtls.dnsName}"\n` : '')
    : ''
}

${stores}
[pkcs11]
session_pool_max_size = ${s.poolMaxSize ?? 4}
session_pool_timeout_milli = ${s.poolTimeoutMs ?? 1000}
session_eager_close = ${s.eagerClose ?? false}
user_pin = "${s.token.pin}"
PKCS11_HSM_MODULE = "${s.token.modulePath}"
context_read_timeout_milli = 100
${s.workerThreads !== undefined ? `worker_threads = ${s.workerThreads}` : ''}

[limits]
max_plaintext_in_base64 = ${s.maxPlaintextB64 ?? 8192}
max_aad_in_base64 = ${s.maxAadB64 ?? 16384}

[hsm_capabilities]
can_generate_iv = false
is_zero_iv_required = false
`;
}

export interface TestProxy extends RunningProxy {
  base: string;
  settingsPath: string;
  /** Everything the proxy logged to stdout so far. */
  logText(): string;
}

export async function startTestProxy(spec: SettingsSpec, name = 'settings.toml'): Promise<TestProxy> {
  const settingsPath = path.join(spec.token.dir, name);
  writeFileSync(settingsPath, settingsToml(spec));
  Object.assign(process.env, spec.token.env);
  const out = new PassThrough();
  let text = '';
  out.on('data', (c: Buffer) => (text += c.toString('utf8')));
  const proxy = await startProxy(loadConfig(settingsPath), { stdout: out });
  return Object.assign(proxy, {
    base: `${spec.tls ? 'https' : 'http'}://127.0.0.1:${proxy.port}`,
    settingsPath,
    logText: () => text,
  });
}

export interface CallOptions {
  accessKeyId: string;
  secret: string;
  region?: string;
  service?: string;
  date?: Date;
  method?: string;
  /** Change the body after signing. */
  tamperBody?: (body: string) => string;
  /** Change headers after signing. */
  tamperHeaders?: (headers: Record<string, string>) => void;
  unsigned?: boolean;
}

export interface CallResult {
  status: number;
  json: Record<string, unknown>;
  text: string;
}

/** POSTs `body` (object or raw string) to base+path, signed like KMS signs. */
export async function call(base: string, urlPath: string, body: unknown, o: CallOptions): Promise<CallResult> {
  const raw = typeof body === 'string' ? body : JSON.stringify(body);
  const url = `${base}${urlPath}`;
  let headers: Record<string, string> = { 'content-type': 'application/json' };
  if (!o.unsigned) {
    const signed = await signRequest({
      url,
      body: raw,
      accessKeyId: o.accessKeyId,
      secretAccessKey: o.secret,
      region: o.region ?? REGION,
      service: o.service ?? SERVICE,
      date: o.date,
      method: o.method ?? 'POST',
    });
    headers = signed.headers;
  }
  o.tamperHeaders?.(headers);
  delete headers.host;
  const sent = o.tamperBody ? o.tamperBody(raw) : raw;
  const method = o.method ?? 'POST';
  const res = await fetch(url, { method, headers, body: method === 'GET' ? undefined : sent });
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // not JSON (e.g. /ping)
  }
  return { status: res.status, json, text };
}

export const META = {
  awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice',
  kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab',
  kmsOperation: 'Encrypt',
  kmsRequestId: '4112f4d6-db54-4af4-ae30-c55a22a8dfae',
};
