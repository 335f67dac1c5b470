/**
 * Start-up and shut-down of the proxy: config -> logger -> HSM -> HTTP.
 */
import { pkcs11LoggerEnv, type LoadedConfig } from './config.js';
import { Hsm } from './hsm/hsm.js';
import { startServer, type KeyStoreRoute } from './http/server.js';
import { createLogger, type Logger } from './log.js';
import { VERSION } from './version.js';

export interface RunningProxy {
  port: number;
  pingPort: number;
  log: Logger;
  stop(): Promise<void>;
}

export interface StartOptions {
  /** Where stdout log lines go (tests capture them). */
  stdout?: NodeJS.WritableStream;
}

export async function startProxy(loaded: LoadedConfig, options: StartOptions = {}): Promise<RunningProxy> {
  const { config } = loaded;
  const log = createLogger(config.tracing, options.stdout ? { stdout: options.stdout } : {});
  for (const w of loaded.warnings) log.warn(w);

  if (config.security.is_mtls_enabled) {
    throw new Error(`${loaded.file}: security.is_mtls_enabled: mTLS is not supported by this version; refusing to start without it`);
  }
  if (config.security.secondary_auth !== undefined) {
    throw new Error(
      `${loaded.file}: security.secondary_auth: "${config.security.secondary_auth}" is not supported by this version; refusing to start without it`,
    );
  }
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
  });

  const keyStores: KeyStoreRoute[] = config.external_key_stores.map((s) => ({
    prefix: s.uri_path_prefix,
    credentials: [{ accessKeyId: s.sigv4_access_key_id, secretAccessKey: s.sigv4_secret_access_key }],
    keyIds: new Set(s.xks_key_id_set),
  }));

  let server;
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
      },
      {
        hsm,
        ciphertextMetadata: config.server.ciphertext_metadata,
        ciphertextMetadataB64: config.server.ciphertext_metadata_b64,
        version: VERSION,
      },
      log,
    );
  } catch (e) {
    await hsm.close();
    throw e;
  }
  const scheme = config.security.is_tls_enabled ? 'https' : 'http';
  log.info(`xks-proxy v${VERSION} listening`, {
    url: `${scheme}://${config.server.ip}:${server.port}`,
    ping_port: server.pingPort,
    key_stores: keyStores.length,
  });

  let stopping: Promise<void> | undefined;
  return {
    port: server.port,
    pingPort: server.pingPort,
    log,
    stop() {
      stopping ??= (async () => {
        server.close();
        await hsm.close();
        log.info('xks-proxy stopped');
        await log.close();
      })();
      return stopping;
    },
  };
}
