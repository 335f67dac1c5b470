/**
 * Starts a real proxy (in this process, real sockets on 127.0.0.1) against a real
 * SoftHSM2 token, from a settings.toml written in the Rust proxy's format.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { loadConfig } from '../../src/config.js';
import { startProxy, type RunningProxy } from '../../src/main.js';
import { settingsToml as renderSettings } from '../../src/dev/settings-toml.js';
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
  /** [server] port; default 0 (a free port). */
  port?: number;
  /** [server] port_http_ping; default: the same as port (one listener). */
  pingPort?: number;
  /** [tls] files; is_tls_enabled = true when set. */
  tls?: { certFile: string; keyFile: string; mtls?: { caFile: string; dnsName: string } };
  /** secondary_auth = "Oso" with this polar file. */
  osoPolicy?: string;
  /** [server] workers; default 1 (the main thread only), not the proxy's default of all cores. */
  workers?: number;
  /** [pkcs11] operation_timeout_milli; the proxy's default when absent. */
  operationTimeoutMs?: number;
  /** [health_check] */
  healthCheck?: { keyId: string; intervalSecs: number; degradedLatencyMs?: number };
  /** [audit]; absent: no trail. */
  audit?: {
    directory: string;
    hmacKeyId: string;
    filePrefix?: string;
    rotation?: string;
    checkpointEvery?: number;
    checkpointSecs?: number;
    durability?: string;
    onFailure?: string;
    stdout?: boolean;
  };
  /** [metrics]; absent: no such table (metrics off). */
  metrics?: { enabled?: boolean; ip?: string; port?: number };
}

/** The [metrics] table (src/dev/settings-toml.ts writes the Rust proxy's tables only). */
function metricsTable(m: NonNullable<SettingsSpec['metrics']>): string {
  return (
    '\n[metrics]\n' +
    `enabled = ${m.enabled ?? true}\n` +
    (m.ip !== undefined ? `ip = ${JSON.stringify(m.ip)}\n` : '') +
    `port = ${m.port ?? 0}\n`
  );
}

export const REGION = 'us-east-1';
export const SERVICE = 'kms-xks-proxy';

export function settingsToml(s: SettingsSpec): string {
  return rustTables(s) + (s.metrics ? metricsTable(s.metrics) : '');
}

function rustTables(s: SettingsSpec): string {
  return renderSettings({
    port: s.port ?? 0,
    pingPort: s.pingPort ?? s.port ?? 0,
    workers: s.workers ?? 1,
    region: REGION,
    service: SERVICE,
    ciphertextMetadataB64: s.ciphertextMetadataB64,
    tracing: { stdout: true, level: s.level ?? 'DEBUG', directory: '/var/local/xks-proxy/logs', rotation: 'HOURLY' },
    sigv4: s.sigv4,
    tls: s.tls,
    osoPolicy: s.osoPolicy,
    stores: s.stores.map((k) => ({
      prefix: k.prefix,
      accessKeyId: k.accessKeyId,
      secretAccessKey: k.secret,
      keys: k.keys,
      credentials: k.credentials?.map((c) => ({ accessKeyId: c.accessKeyId, secretAccessKey: c.secret })),
      requestsPerSecond: k.requestsPerSecond,
      burst: k.burst,
    })),
    pkcs11: {
      pin: s.token.pin,
      modulePath: s.token.modulePath,
      poolMaxSize: s.poolMaxSize ?? 4,
      poolTimeoutMs: s.poolTimeoutMs ?? 1000,
      eagerClose: s.eagerClose,
      workerThreads: s.workerThreads,
      operationTimeoutMs: s.operationTimeoutMs,
    },
    maxPlaintextB64: s.maxPlaintextB64,
    maxAadB64: s.maxAadB64,
    healthCheck: s.healthCheck,
    audit: s.audit,
  });
}

export interface TestProxy extends RunningProxy {
  base: string;
  /** http://127.0.0.1:<metrics port> when [metrics] is on. */
  metricsBase: string | undefined;
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
    metricsBase: proxy.metricsPort === undefined ? undefined : `http://127.0.0.1:${proxy.metricsPort}`,
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
