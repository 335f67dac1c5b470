/**
 * Start-up and shut-down of the proxy: config -> logger -> HSM -> HTTP.
 */
import { pkcs11LoggerEnv, type LoadedConfig } from './config.js';
import { AuditWriter } from './audit/writer.js';
import { Hsm, type EngineStats } from './hsm/hsm.js';
import { HealthChecker } from './health/checker.js';
import { startServer } from './http/server.js';
import { startMetricsListener, type MetricsListener } from './http/metrics-listener.js';
import { hostPort } from './http/listen.js';
import { privateSocketPath, startMtlsTerminator, type MtlsTerminator } from './http/mtls.js';
import { keyStoreRoutes, loadAuthorizer, Reloader, type ReloadOutcome } from './reload.js';
import { createLogger, type Logger } from './log.js';
import { logPingFact, logSettingsFacts } from './startup-log.js';
import { VERSION } from './version.js';
import { WorkerPool } from './workers/pool.js';
import { baseServerOptions, drainWithGrace, engineOptions, freePort, metricsFor, opContext } from './workers/serving.js';
import { planWorkers } from './workers/split.js';

export interface RunningProxy {
  port: number;
  pingPort: number;
  /** Port of the [metrics] listener; undefined when metrics are off. */
  metricsPort: number | undefined;
  /** Event loops serving the port ([server] workers; 1 = the main thread only). */
  workers: number;
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
  // [server] workers: the main thread is event loop 0; worker threads 1..count-1 (docs/operating.md, "All cores").
  const plan = planWorkers(config);
  const log = createLogger(config.tracing, {
    ...(options.stdout ? { stdout: options.stdout } : {}),
    ...(plan.count > 1 ? { context: { worker: 0 } } : {}),
  });
  logSettingsFacts(log, config);
  for (const w of loaded.warnings) log.warn(w);
  for (const n of plan.notes) log.warn(n);

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

  // An HSM that is down does not stop start-up (docs/hsm-failures.md, "Recovery"); a wrong PIN, a module that
  // cannot be loaded or an IV mode the HSM cannot do does, with one line.
  const hsm = await Hsm.open(engineOptions(config, plan.shares[0]!), log);
  for (const [level, note] of hsm.startupNotes()) log[level](note);
  let checker: HealthChecker | undefined;
  if (config.health_check) {
    // Deep health check (docs/hsm-failures.md); stopped by hsm.close().
    const hc = config.health_check;
    checker = new HealthChecker(
      hsm,
      { keyId: hc.key_id, intervalMs: hc.interval_secs * 1000, degradedLatencyMs: hc.degraded_latency_milli },
      log,
    );
    hsm.setHealthSource(checker);
    const first = await checker.start();
    log.info('deep health check', { key_id: hc.key_id, interval_secs: hc.interval_secs, state: first.state, reason: first.reason });
  }

  // The audit trail (docs/audit.md): its HMAC key and directory are checked here; a problem stops start-up.
  let audit: AuditWriter | undefined;
  if (config.audit) {
    const a = config.audit;
    try {
      audit = await AuditWriter.open({
        section: a,
        hmac: (d) => hsm.hmacSign(a.hmac_key_id, d),
        log,
        version: VERSION,
        stdout: options.stdout,
      });
    } catch (e) {
      await hsm.close();
      await log.flush();
      throw new Error(`${loaded.file}: ${e instanceof Error ? e.message : String(e)}`);
    }
    log.info('audit trail', { file: audit.currentFile, durability: a.durability, on_failure: a.on_failure, instance: audit.instance });
  }

  // Requests are counted only when [metrics] serves them (on its own listener, never the API or ping port).
  const metrics = config.metrics.enabled ? metricsFor(hsm) : undefined;
  const keyStores = keyStoreRoutes(config, undefined, plan.count);
  let pool: WorkerPool | undefined;
  const unix = mtls ? privateSocketPath() : undefined;

  let server;
  let terminator: MtlsTerminator | undefined;
  let metricsListener: MetricsListener | undefined;
  try {
    server = await startServer(
      {
        // Worker threads join the port with SO_REUSEPORT, which uSockets sets only for a given port number.
        ...baseServerOptions(config, plan.count > 1 && config.server.port === 0 ? await freePort(config.server.ip) : config.server.port),
        keyStores,
        authorizer,
        listenUnix: unix?.path,
        metrics,
        // One loop: nothing else may hold the port. Several: the worker threads join it (SO_REUSEPORT).
        portSharing: plan.count > 1 ? 'first' : 'exclusive',
      },
      opContext(config, hsm, audit),
      log,
    );
    if (metrics !== undefined) {
      const own = metrics;
      // With worker threads, /metrics answers the sum over all event loops.
      metricsListener = await startMetricsListener(
        { host: config.metrics.ip, port: config.metrics.port, text: () => (pool ? pool.metricsText() : Promise.resolve(own.render())) },
        log,
      );
    }
    if (plan.count > 1) {
      // The main thread listens first (port 0 picks the port); the workers join it on that port.
      const first = checker?.current();
      pool = await WorkerPool.start({
        loaded,
        count: plan.count,
        port: server.port,
        shares: plan.shares,
        health: first ? { state: first.state, token: first.token } : undefined,
        log,
        metrics,
        version: VERSION,
        audit,
      });
    }
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
          tcpKeepalive: config.server.tcp_keepalive,
          // The audit record's client: the uWS app reads it from this header (src/http/pipeline.ts).
          proxyHeader: true,
        },
        log,
      );
    }
  } catch (e) {
    metricsListener?.close();
    server?.close();
    if (plan.count > 1) server?.closeConnections();
    unix?.remove();
    await audit?.close();
    await hsm.close();
    await log.flush();
    throw e;
  }
  // The deep health check runs in the main thread; worker threads get each new verdict.
  let healthTimer: NodeJS.Timeout | undefined;
  if (pool && checker) {
    const workers = pool;
    const source = checker;
    let last = source.current().checkedAt;
    healthTimer = setInterval(() => {
      const r = source.current();
      if (r.checkedAt === last) return;
      last = r.checkedAt;
      workers.pushHealth({ state: r.state, token: r.token });
    }, 200);
    healthTimer.unref();
  }
  const port = terminator?.port ?? server.port;
  const pingPort = server.pingPort === server.port ? port : server.pingPort;
  const reloader = new Reloader(loaded.file, loaded, keyStores, server, log, process.env, plan.count);
  let reloads: Promise<unknown> = Promise.resolve();
  /** The main thread reads and applies the file; then every worker thread applies what it read. */
  const reloadAll = async (): Promise<ReloadOutcome> => {
    const out = await reloader.reload();
    if (!out.ok || pool === undefined) return out;
    const r = await pool.reload(reloader.applied);
    if (r.ok) return out;
    const error = r.errors.join('; ');
    log.error('configuration reload: worker threads did not apply it', { error });
    return { ok: false, error, restartNeeded: out.restartNeeded };
  };
  const scheme = config.security.is_tls_enabled ? 'https' : 'http';
  logPingFact(log, config, pingPort, port);
  log.info(`xks-proxy v${VERSION} listening`, {
    url: `${scheme}://${config.server.ip}:${port}`,
    mtls: mtls !== undefined,
    ping_port: pingPort,
    metrics: metricsListener ? `http://${hostPort(config.metrics.ip, metricsListener.port)}/metrics` : 'off',
    key_stores: keyStores.length,
    workers: plan.count,
  });

  let stopping: Promise<void> | undefined;
  return {
    port,
    pingPort,
    metricsPort: metricsListener?.port,
    workers: plan.count,
    log,
    reload() {
      const run = reloads.then(reloadAll);
      reloads = run.catch(() => undefined);
      return run;
    },
    hsmStats: () => hsm.stats(),
    stop() {
      stopping ??= (async () => {
        // /ping turns 503, no new connections, in-flight requests finish (bounded), then the HSM closes.
        server.startDraining();
        terminator?.stopAccepting();
        metricsListener?.close();
        server.close();
        const drainMs = options.drainTimeoutMs ?? 10_000;
        if (healthTimer) clearInterval(healthTimer);
        const workersStopped = pool?.stop(drainMs);
        // With worker threads every loop must close its connections before the process exits; the
        // main thread does too, after the same grace for requests still arriving.
        const drained = workersStopped !== undefined ? await drainWithGrace(server, drainMs) : await server.drained(drainMs);
        if (!drained) log.warn('stopping with requests still in flight', { waited_ms: drainMs });
        if (workersStopped !== undefined) {
          await workersStopped;
          server.closeConnections();
        }
        terminator?.close();
        unix?.remove();
        // Every loop has answered its last request: the trail ends in a checkpoint.
        await audit?.close();
        await hsm.close();
        log.info('xks-proxy stopped');
        await log.close();
      })();
      return stopping;
    },
  };
}
