/**
 * Start-up and shut-down of the proxy: config -> logger -> HSM -> HTTP.
 */
import { pkcs11LoggerEnv, type LoadedConfig } from './config.js';
import { Hsm, type EngineStats } from './hsm/hsm.js';
import { HealthChecker } from './health/checker.js';
import { startServer } from './http/server.js';
import { privateSocketPath, startMtlsTerminator, type MtlsTerminator } from './http/mtls.js';
import { keyStoreRoutes, loadAuthorizer, Reloader, type ReloadOutcome } from './reload.js';
import { createLogger, type Logger } from './log.js';
import { Metrics } from './metrics.js';
import { VERSION } from './version.js';

export interface RunningProxy {
  port: number;
  pingPort: number;
  log: Logger;
  stop(): Promise<void>;
  /** Session pool and failure counters of the HSM engine (soak runs, diagnostics). */
  hsmStats(): EngineStats;
  /** Re-reads settings.toml and applies keystores, credentials, key ids, quotas and the Oso policy (SIGHUP). */
  reload(): Promise<ReloadOutcome>;
}

export interface StartOptions {
  /** Where stdout log lines go (tests capture them). */
  stdout?: NodeJS.WritableStream;
  /** Longest wait for in-flight requests at stop (ms); default 10 s. */
  drainTimeoutMs?: number;
}

export async function startProxy(loaded: LoadedConfig, options: StartOptions = {}): Promise<RunningProxy> {
  const { config } = loaded;
  const log = createLogger(config.tracing, options.stdout ? { stdout: options.stdout } : {});
  for (const w of loaded.warnings) log.warn(w);

  const mtls = config.security.is_tls_enabled && config.security.is_mtls_enabled ? config.tls : undefined;
  // Read the policy before the HSM opens: a bad policy stops start-up with one line.
  let authorizer;
  try {
    authorizer = await loadAuthorizer(config);
  } catch (e) {
    throw new Error(`${loaded.file}: security.oso.polar_file_path: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (authorizer !== undefined) log.info('secondary authorization: Oso', { policy: authorizer.source });
  if (!config.security.is_sigv4_auth_enabled) {
    log.warn('SIGV4 AUTHENTICATION IS DISABLED (security.is_sigv4_auth_enabled = false): anyone who reaches this port can use every key');
  }

  for (const [k, v] of Object.entries(pkcs11LoggerEnv(config))) process.env[k] = v;

  const hsm = await Hsm.open({
    modulePath: config.pkcs11.module_path,
    userPin: config.pkcs11.user_pin,
    poolMaxSize: config.pkcs11.session_pool_max_size,
    poolTimeoutMs: config.pkcs11.session_pool_timeout_milli,
    eagerClose: config.pkcs11.session_eager_close,
    threads: config.pkcs11.worker_threads,
    canGenerateIv: config.hsm_capabilities.can_generate_iv,
    isZeroIvRequired: config.hsm_capabilities.is_zero_iv_required,
    operationTimeoutMs: config.pkcs11.operation_timeout_milli,
  });
  if (config.health_check) {
    // Deep health check (docs/hsm-failures.md); stopped by hsm.close().
    const hc = config.health_check;
    const checker = new HealthChecker(hsm, { keyId: hc.key_id, intervalMs: hc.interval_secs * 1000, degradedLatencyMs: hc.degraded_latency_milli }, log);
    hsm.setHealthSource(checker);
    const first = await checker.start();
    log.info('deep health check', { key_id: hc.key_id, interval_secs: hc.interval_secs, state: first.state, reason: first.reason });
  }

  const metrics = new Metrics(VERSION, () => {
    const st = hsm.stats();
    return { sessionsOpen: st.sessionsOpen, sessionsIdle: st.sessionsIdle, inFlight: st.inFlight, reinitializations: st.reinitializations };
  });
  const keyStores = keyStoreRoutes(config);
  const unix = mtls ? privateSocketPath() : undefined;

  let server;
  let terminator: MtlsTerminator | undefined;
  try {
    server = await startServer(
      {
        host: config.server.ip,
        port: config.server.port,
        pingPort: config.server.port_http_ping,
        region: config.server.region,
        service: config.server.service,
        sigv4Enabled: config.security.is_sigv4_auth_enabled,
        limits: config.limits,
        keyStores,
        tls: config.security.is_tls_enabled && config.tls ? { certFile: config.tls.tls_cert_pem, keyFile: config.tls.tls_key_pem } : undefined,
        version: VERSION,
        authorizer,
        listenUnix: unix?.path,
        metrics,
      },
      {
        hsm,
        ciphertextMetadata: config.server.ciphertext_metadata,
        ciphertextMetadataB64: config.server.ciphertext_metadata_b64,
        version: VERSION,
      },
      log,
    );
    if (mtls && unix) {
      terminator = await startMtlsTerminator(
        {
          host: config.server.ip,
          port: config.server.port,
          certFile: mtls.tls_cert_pem,
          keyFile: mtls.tls_key_pem,
          caFile: mtls.mtls_client_ca_pem ?? '',
          dnsName: mtls.mtls_client_dns_name ?? '',
          upstreamPath: unix.path,
        },
        log,
      );
    }
  } catch (e) {
    server?.close();
    unix?.remove();
    await hsm.close();
    throw e;
  }
  const port = terminator?.port ?? server.port;
  const pingPort = server.pingPort === server.port ? port : server.pingPort;
  const reloader = new Reloader(loaded.file, loaded, keyStores, server, log);
  const scheme = config.security.is_tls_enabled ? 'https' : 'http';
  log.info(`xks-proxy v${VERSION} listening`, {
    url: `${scheme}://${config.server.ip}:${port}`,
    mtls: mtls !== undefined,
    ping_port: pingPort,
    key_stores: keyStores.length,
  });

  let stopping: Promise<void> | undefined;
  return {
    port,
    pingPort,
    log,
    reload: () => reloader.reload(),
    hsmStats: () => hsm.stats(),
    stop() {
      stopping ??= (async () => {
        // /ping turns 503, no new connections, in-flight requests finish (bounded), then the HSM closes.
        server.startDraining();
        terminator?.close();
        server.close();
        const drainMs = options.drainTimeoutMs ?? 10_000;
        if (!(await server.drained(drainMs))) log.warn('stopping with requests still in flight', { waited_ms: drainMs });
        unix?.remove();
        await hsm.close();
        log.info('xks-proxy stopped');
        await log.close();
      })();
      return stopping;
    },
  };
}
