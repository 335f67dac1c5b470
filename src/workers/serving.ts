/**
 * What the main thread and every worker thread build alike from one Config: the HSM settings of
 * their engine, the HTTP server's options and the operations' context.
 */
import type { AuditSink } from '../audit/sink.js';
import net from 'node:net';
import type { Config } from '../config.js';
import { ivMode, type EngineOptions, type Hsm } from '../hsm/hsm.js';
import type { RunningServer, ServerOptions } from '../http/server.js';
import { Metrics } from '../metrics.js';
import type { OpContext } from '../ops/context.js';
import { VERSION } from '../version.js';

/** This event loop's metrics: its engine's pool gauges, and the duration of every HSM call. */
export function metricsFor(hsm: Hsm): Metrics {
  const metrics = new Metrics(VERSION, () => {
    const st = hsm.stats();
    return {
      sessionsOpen: st.sessionsOpen,
      sessionsIdle: st.sessionsIdle,
      inFlight: st.inFlight,
      reinitializations: st.reinitializations,
      keyCopies: st.keyCopies,
      ivBufferOff: hsm.opened.ivBufferOff !== undefined ? 1 : 0,
    };
  });
  hsm.timeCalls({
    encrypt: metrics.hsm('encrypt'),
    decrypt: metrics.hsm('decrypt'),
    keyInfo: metrics.hsm('key_info'),
    tokenInfo: metrics.hsm('token_info'),
  });
  return metrics;
}

/** The engine options, with this event loop's share of the session pool and of the addon threads. */
export function engineOptions(config: Config, share: { poolMaxSize: number; threads: number; adaptCores?: number }): EngineOptions {
  const p = config.pkcs11;
  return {
    modulePath: p.module_path,
    userPin: p.user_pin,
    poolMaxSize: share.poolMaxSize,
    poolTimeoutMs: p.session_pool_timeout_milli,
    eagerClose: p.session_eager_close,
    threads: share.threads,
    adaptCores: share.adaptCores,
    ivMode: ivMode(config.hsm_capabilities.can_generate_iv, config.hsm_capabilities.is_zero_iv_required),
    operationTimeoutMs: p.operation_timeout_milli,
    keyCopies: p.session_key_copies,
    keyCheckMs: p.session_key_check_milli,
  };
}

/**
 * The server options that follow from the file (keystores, authorizer, metrics, listeners are the
 * caller's); `port` replaces [server] port (and port_http_ping when that names the same port).
 */
export function baseServerOptions(
  config: Config,
  port: number = config.server.port,
): Pick<ServerOptions, 'host' | 'port' | 'pingPort' | 'region' | 'service' | 'sigv4Enabled' | 'limits' | 'tls' | 'version'> {
  return {
    host: config.server.ip,
    port,
    pingPort: config.server.port_http_ping === config.server.port ? port : config.server.port_http_ping,
    region: config.server.region,
    service: config.server.service,
    sigv4Enabled: config.security.is_sigv4_auth_enabled,
    limits: config.limits,
    tls: config.security.is_tls_enabled && config.tls ? { certFile: config.tls.tls_cert_pem, keyFile: config.tls.tls_key_pem } : undefined,
    version: VERSION,
  };
}

export function opContext(config: Config, hsm: Hsm, audit?: AuditSink): OpContext {
  return {
    hsm,
    audit,
    ciphertextMetadata: config.server.ciphertext_metadata,
    ciphertextMetadataB64: config.server.ciphertext_metadata_b64,
    version: VERSION,
  };
}

/**
 * A port free on `host` now. uSockets sets SO_REUSEPORT only when it is given a port, so with
 * `port = 0` and several event loops the main thread picks the port first and listens on it by number.
 */
export function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** Pause after the first drain: a connection accepted just before the listener closed may still be sending its request. */
export const DRAIN_GRACE_MS = 100;

/**
 * Waits for in-flight requests (bounded by `timeoutMs`), then once more after a short grace for
 * requests that were still arriving on open connections; true when none was left. After this,
 * closeConnections() resets only idle connections.
 */
export async function drainWithGrace(
  server: Pick<RunningServer, 'drained'>,
  timeoutMs: number,
  graceMs = DRAIN_GRACE_MS,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  if (!(await server.drained(timeoutMs))) return false;
  await new Promise((r) => setTimeout(r, Math.min(graceMs, Math.max(0, deadline - Date.now()))));
  return server.drained(Math.max(0, deadline - Date.now()));
}
