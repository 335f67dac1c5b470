/**
 * mTLS front end: TLS is terminated here, in Node (OpenSSL through node:tls), because the uWebSockets.js
 * build we use accepts clients without a certificate and cannot check the certificate's name.
 *
 * The handshake asks for a client certificate and OpenSSL verifies it against `mtls_client_ca_pem` only
 * (chain, validity dates, purpose). When the handshake is done and before the connection is wired to
 * anything, the socket is destroyed, its buffered bytes unread, when the client
 * - presented no certificate                 (reason "no client certificate"),
 * - presented one not chaining to the CA     (UNABLE_TO_GET_ISSUER_CERT_LOCALLY; self-signed:
 *                                             DEPTH_ZERO_SELF_SIGNED_CERT),
 * - presented an expired / not-yet-valid one (CERT_HAS_EXPIRED / CERT_NOT_YET_VALID),
 * - presented a verified one that is not valid for `mtls_client_dns_name` (checked on the certificate's
 *   subject alternative DNS names only, never the subject CN, wildcards as in RFC 6125).
 * Each refusal is one log line with the reason. (rejectUnauthorized is off only so that the reason can be
 * logged: Node would otherwise destroy the socket silently; the check below is the same test.)
 * Accepted connections are piped byte for byte to the uWS app, which listens on a Unix socket in a
 * private directory (mode 0700) that nothing else can reach.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createServer, type Server, type TLSSocket } from 'node:tls';
import type { Logger } from '../log.js';
import { NODE_CIPHER_LIST } from './tls.js';

export interface MtlsOptions {
  host: string;
  port: number;
  /** [server.tcp_keepalive] tcp_keepalive_secs: TCP keepalive on client connections (Node sets only the idle time). */
  keepAliveSecs?: number | undefined;
  certFile: string;
  keyFile: string;
  caFile: string;
  /** The client certificate must be valid for this DNS name. */
  dnsName: string;
  /** Unix socket of the HTTP server. */
  upstreamPath: string;
}

export interface MtlsTerminator {
  port: number;
  /** Stops accepting; open connections are closed. */
  close(): void;
}

/** A private directory for the upstream Unix socket; remove() deletes it. */
export function privateSocketPath(): { path: string; remove(): void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'xks-proxy-'));
  return { path: path.join(dir, 'http.sock'), remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * The names of the peer's verified certificate that match `dnsName` (subject alternative DNS names only;
 * the subject CN is never used). Undefined when none matches.
 */
export function peerNameMatch(socket: TLSSocket, dnsName: string): string | undefined {
  const x509 = socket.getPeerX509Certificate();
  if (x509 === undefined) return undefined;
  return x509.checkHost(dnsName, { subject: 'never', wildcards: true, partialWildcards: false, multiLabelWildcards: false });
}

export function startMtlsTerminator(o: MtlsOptions, log: Logger): Promise<MtlsTerminator> {
  const server: Server = createServer({
    cert: readFileSync(o.certFile),
    key: readFileSync(o.keyFile),
    ca: readFileSync(o.caFile),
    requestCert: true,
    rejectUnauthorized: false,
    minVersion: 'TLSv1.2',
    maxVersion: 'TLSv1.3',
    ciphers: NODE_CIPHER_LIST,
    honorCipherOrder: true,
    ALPNProtocols: ['http/1.1'],
  });
  const open = new Set<Socket>();

  server.on('tlsClientError', (err, socket) => {
    log.info('mTLS client refused', { remote: socket.remoteAddress, reason: (err as { code?: string }).code ?? err.message });
  });

  server.on('secureConnection', (socket: TLSSocket) => {
    if (!socket.authorized) {
      const noCert = socket.getPeerX509Certificate() === undefined;
      log.info('mTLS client refused', {
        remote: socket.remoteAddress,
        reason: noCert ? 'no client certificate' : String(socket.authorizationError ?? 'certificate not verified'),
      });
      socket.destroy();
      return;
    }
    if (peerNameMatch(socket, o.dnsName) === undefined) {
      log.info('mTLS client refused', { remote: socket.remoteAddress, reason: `certificate is not valid for ${o.dnsName}` });
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    if (o.keepAliveSecs !== undefined) socket.setKeepAlive(true, o.keepAliveSecs * 1000);
    const up = connect(o.upstreamPath);
    open.add(socket);
    const done = (): void => {
      open.delete(socket);
      socket.destroy();
      up.destroy();
    };
    socket.on('error', done).on('close', done);
    up.on('error', done).on('close', done);
    socket.pipe(up);
    up.pipe(socket);
  });

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      server.on('error', (e) => log.error('mTLS listener error', { error: e.message }));
      const addr = server.address();
      resolve({
        port: typeof addr === 'object' && addr !== null ? addr.port : o.port,
        close() {
          server.close();
          for (const s of open) s.destroy();
          open.clear();
        },
      });
    });
  });
}
