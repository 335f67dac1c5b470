/**
 * The shape of the mTLS terminator addon (native/tls/, built to build/Release/xks_tls.node).
 * Only src/http/mtls.ts imports this.
 */
import { loadBuilt } from '../native-build.js';

export interface NativeTerminatorOptions {
  host: string;
  port: number;
  /** The HTTP server's Unix socket. */
  upstreamPath: string;
  certFile: string;
  keyFile: string;
  caFile: string;
  dnsName: string;
  /** TLS 1.2 ciphers (OpenSSL names, ':'-separated). */
  cipherList: string;
  /** TLS 1.3 suites (':'-separated). */
  cipherSuites: string;
  /** SO_KEEPALIVE on; each value 0 or absent leaves the kernel's default. Absent: keepalive off. */
  keepalive?: { idleSecs?: number; intervalSecs?: number; count?: number };
  handshakeTimeoutMs?: number;
  maxConnections?: number;
  /**
   * First on each connection to the HTTP server, a PROXY protocol v2 header naming the client; a client
   * that sends one itself is closed (native/tls/proxy_header.h). Default false: the bytes as they are.
   */
  proxyHeader?: boolean;
}

/** refused: a client refused in or right after the handshake; upstream: could not reach the HTTP server; listen: accept() failed. */
export type NativeEventKind = 'refused' | 'upstream' | 'listen';

export interface NativeTerminatorStats {
  /** Connections open now (handshaking, served, closing). */
  open: number;
  accepted: number;
  /** Handshakes completed and wired to the HTTP server. */
  served: number;
  /** Clients refused (each one reported), also those closed for sending a PROXY header. */
  refused: number;
  /** Handshakes not finished in time. */
  timedOut: number;
  /** Closed at once because maxConnections were open. */
  overLimit: number;
  /** Closed before sending a byte (TCP health checks, port scans): not reported. */
  silent: number;
  /** Reports lost because the queue to JS was full. */
  droppedReports: number;
}

export interface NativeTerminator {
  port(): number;
  stopAccepting(): void;
  /** Stops, sends close_notify to open connections, closes them and joins the thread. */
  close(): void;
  stats(): NativeTerminatorStats;
}

export interface TlsAddon {
  Terminator: new (
    o: NativeTerminatorOptions,
    onEvent: (kind: NativeEventKind, remote: string, reason: string) => void,
  ) => NativeTerminator;
  /** OpenSSL version string (node's own OpenSSL). */
  openssl: string;
}

let addon: TlsAddon | undefined;

/** Loads build/Release/xks_tls.node (relative to the package root, from src/ or dist/src/). */
export function loadTlsAddon(): TlsAddon {
  addon ??= loadBuilt<TlsAddon>('xks_tls.node', 'the mTLS addon');
  return addon;
}
