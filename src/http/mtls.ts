/**
 * mTLS front end: TLS is terminated by a native terminator (native/tls/, node's own OpenSSL) in front of
 * the uWS app, because the uWebSockets.js build we use accepts clients without a certificate and cannot
 * check the certificate's name, and node:tls can only refuse a bad certificate after its handshake.
 *
 * The terminator listens on [server] ip:port itself, on a thread of its own (the event loop never waits
 * on a handshake). The handshake asks for a client certificate; OpenSSL verifies it against
 * `mtls_client_ca_pem` only (chain, validity dates, purpose; every certificate in that file is a trust
 * anchor, as in the Rust proxy) and checks that one of its subject alternative DNS names matches
 * `mtls_client_dns_name` (never the subject CN; a wildcard only as the whole left-most label, RFC 6125).
 * A client is refused inside the handshake, with a TLS alert, when it
 * - presented no certificate                    (reason "no client certificate"; alert
 *                                                handshake_failure in TLS 1.2, certificate_required in 1.3),
 * - presented one not chaining to the CA        (UNABLE_TO_GET_ISSUER_CERT_LOCALLY; self-signed:
 *                                                DEPTH_ZERO_SELF_SIGNED_CERT),
 * - presented an expired / not-yet-valid one    (CERT_HAS_EXPIRED / CERT_NOT_YET_VALID),
 * - presented one not valid for the name        ("certificate is not valid for <name>"),
 * each of the last three with the handshake_failure alert (what the AWS test client expects). Each
 * refusal is one log line with the reason. No session is ever resumed, so every connection is verified.
 * Accepted connections are copied byte for byte to the uWS app, which listens on a Unix socket in a
 * private directory (mode 0700) that nothing else can reach.
 *
 * The uWS app sees only that socket's peer, so (proxyHeader) the terminator sends each connection's
 * client address first, in a PROXY protocol v2 header, which uWS keeps with the connection
 * (res.getProxiedRemoteAddressAsText(): about 1 us per request, as getRemoteAddressAsText() costs on
 * a TCP listener). uWS would also take such a header from the client's own bytes at the start of any
 * later request, so a client that sends the header's signature is closed before those bytes reach
 * the app (reason "sent a PROXY protocol header"). Never a header the client sets (no X-Forwarded-For).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { TcpKeepaliveSection } from '../config.js';
import type { Logger } from '../log.js';
import { loadTlsAddon, type NativeTerminator, type NativeTerminatorOptions, type NativeTerminatorStats } from './mtls-addon.js';
import { TLS12_CIPHERS, TLS13_SUITES } from './tls.js';

export interface MtlsOptions {
  host: string;
  port: number;
  /** [server.tcp_keepalive]: any key set turns SO_KEEPALIVE on (as the Rust proxy's hyper does); each sets its socket option. */
  tcpKeepalive?: TcpKeepaliveSection | undefined;
  certFile: string;
  keyFile: string;
  caFile: string;
  /** The client certificate must be valid for this DNS name. */
  dnsName: string;
  /** Unix socket of the HTTP server. */
  upstreamPath: string;
  /** A client that has not finished its handshake by then is closed (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Connections open at once, handshaking or served; more are closed at once (default 1024). */
  maxConnections?: number;
  /**
   * Send each connection's client address first, in a PROXY protocol v2 header (the uWS app reads it:
   * the audit record's client), and close a client that sends such a header itself. Default false.
   */
  proxyHeader?: boolean;
}

export type MtlsStats = NativeTerminatorStats;

export interface MtlsTerminator {
  port: number;
  /** Stops accepting; open connections go on (a draining server answers and closes them). */
  stopAccepting(): void;
  /** Stops accepting; open connections are closed (close_notify), the terminator's thread ends. */
  close(): void;
  stats(): MtlsStats;
}

/** A private directory for the upstream Unix socket; remove() deletes it. */
export function privateSocketPath(): { path: string; remove(): void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'xks-proxy-'));
  return { path: path.join(dir, 'http.sock'), remove: () => rmSync(dir, { recursive: true, force: true }) };
}

function keepalive(k: TcpKeepaliveSection | undefined): NativeTerminatorOptions['keepalive'] {
  if (k === undefined) return undefined;
  const { tcp_keepalive_secs: idle, tcp_keepalive_interval_secs: interval, tcp_keepalive_retries: count } = k;
  if (idle === undefined && interval === undefined && count === undefined) return undefined;
  // Linux takes at most 32767 s for TCP_KEEPIDLE / TCP_KEEPINTVL and 127 probes.
  const clamp = (v: number | undefined, max: number): number => Math.min(v ?? 0, max);
  return { idleSecs: clamp(idle, 32767), intervalSecs: clamp(interval, 32767), count: clamp(count, 127) };
}

export function startMtlsTerminator(o: MtlsOptions, log: Logger): Promise<MtlsTerminator> {
  try {
    const { Terminator } = loadTlsAddon();
    const onEvent = (kind: string, remote: string, reason: string): void => {
      if (kind === 'refused') log.info('mTLS client refused', { remote, reason });
      else if (kind === 'upstream') log.error('mTLS: cannot reach the HTTP server', { remote, reason });
      else log.warn('mTLS listener', { reason });
    };
    const native: NativeTerminator = new Terminator(
      {
        host: o.host,
        port: o.port,
        upstreamPath: o.upstreamPath,
        certFile: o.certFile,
        keyFile: o.keyFile,
        caFile: o.caFile,
        dnsName: o.dnsName,
        cipherList: TLS12_CIPHERS.join(':'),
        cipherSuites: TLS13_SUITES.join(':'),
        keepalive: keepalive(o.tcpKeepalive),
        handshakeTimeoutMs: o.handshakeTimeoutMs ?? 10_000,
        maxConnections: o.maxConnections ?? 1024,
        proxyHeader: o.proxyHeader ?? false,
      },
      onEvent,
    );
    return Promise.resolve({
      port: native.port(),
      stopAccepting: () => native.stopAccepting(),
      close: () => native.close(),
      stats: () => native.stats(),
    });
  } catch (e) {
    return Promise.reject(e instanceof Error ? e : new Error(String(e)));
  }
}
