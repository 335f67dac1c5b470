/**
 * The start-up facts the Rust proxy logs (tracing, service and region, the security switches,
 * ciphertext metadata, TCP keepalive, the ping listener), as our logfmt lines and in its order:
 * operators' parsers and alerts find the same facts (README.md, "Log lines").
 */
import { DEFAULT_LOG_FILE_MODE, type Config } from './config.js';
import { hostPort } from './http/listen.js';
import type { Logger } from './log.js';

/** Rust: "Tracing level=...", "Starting service=... region=...", "is_sigv4_enabled=...", "Ciphertext Metadata ...", "TCP Keepalive ...". */
export function logSettingsFacts(log: Logger, config: Config): void {
  const t = config.tracing;
  log.info('tracing', {
    level: t.level,
    is_stdout_writer_enabled: t.is_stdout_writer_enabled,
    is_file_writer_enabled: t.is_file_writer_enabled,
    rotation_kind: t.is_file_writer_enabled ? t.rotation_kind : undefined,
    file_mode: t.is_file_writer_enabled ? `0${(t.file_mode ?? DEFAULT_LOG_FILE_MODE).toString(8)}` : undefined,
  });
  const s = config.server;
  const sec = config.security;
  const ka = s.tcp_keepalive;
  log.info('settings', {
    service: s.service,
    region: s.region,
    is_sigv4_enabled: sec.is_sigv4_auth_enabled,
    is_tls_enabled: sec.is_tls_enabled,
    is_mtls_enabled: sec.is_mtls_enabled,
    secondary_auth: sec.secondary_auth ?? 'none',
    ciphertext_metadata: s.ciphertext_metadata === undefined ? 'not configured' : `${s.ciphertext_metadata.length} bytes`,
    tcp_keepalive_secs: ka.tcp_keepalive_secs ?? 'off',
    tcp_keepalive_interval_secs: ka.tcp_keepalive_interval_secs,
    tcp_keepalive_retries: ka.tcp_keepalive_retries,
  });
}

/** Rust: "http://0.0.0.0:80/ping available for health check" (only for a listener of its own). */
export function logPingFact(log: Logger, config: Config, pingPort: number, port: number): void {
  if (pingPort !== port) log.info('health check available', { url: `http://${hostPort(config.server.ip, pingPort)}/ping` });
}
