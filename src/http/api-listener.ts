/**
 * The uWS app and its listen sockets: TLS or plain, on host:port (shared between event loops or
 * not, see listen.ts) or on a Unix socket behind the mTLS terminator.
 */
import { explainUwsFailure, probePort } from './listen.js';
import { TLS12_CIPHER_LIST } from './tls.js';
import type { TemplatedApp, us_listen_socket, Uws } from './uws.js';

export type PortSharing = 'exclusive' | 'first' | 'join';

/**
 * The API's uWS app. uSockets refuses TLS < 1.2 by itself; ssl_ciphers limits TLS 1.2 to the spec's
 * suites (TLS 1.3 suites are OpenSSL's defaults: see docs/security.md). Behind the mTLS
 * terminator (a Unix socket) it is plain.
 */
export function makeApp(uws: Uws, tls: { certFile: string; keyFile: string } | undefined, unix: boolean): TemplatedApp {
  return tls && !unix
    ? uws.SSLApp({ cert_file_name: tls.certFile, key_file_name: tls.keyFile, ssl_ciphers: TLS12_CIPHER_LIST })
    : uws.App();
}

export class ApiListener {
  private readonly sockets: us_listen_socket[] = [];

  constructor(
    private readonly uws: Uws,
    private readonly app: TemplatedApp,
    private readonly host: string,
    private readonly sharing: PortSharing,
  ) {}

  /** Listens on host:port; resolves with the port bound (for port 0). */
  async listenPort(port: number): Promise<number> {
    const { uws, sharing, host } = this;
    if (sharing === 'first') await probePort('server.port', host, port);
    // LIBUS_LISTEN_EXCLUSIVE_PORT (the binary exports it; the types have it only in an enum): no SO_REUSEPORT.
    const flags = sharing === 'exclusive' ? (uws as unknown as { LIBUS_LISTEN_EXCLUSIVE_PORT: number }).LIBUS_LISTEN_EXCLUSIVE_PORT : 0;
    const socket = await new Promise<us_listen_socket | false>((resolve) => listenWithFlags(this.app, host, port, flags, resolve));
    if (!socket)
      throw sharing === 'join'
        ? new Error(`cannot join the main thread's listener on port ${port}`)
        : await explainUwsFailure('server.port', host, port);
    this.sockets.push(socket);
    return uws.us_socket_local_port(socket as unknown as Parameters<Uws['us_socket_local_port']>[0]);
  }

  listenUnix(file: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.app.listen_unix((socket) => {
        if (!socket) {
          reject(new Error(`cannot listen on the Unix socket ${file}`));
          return;
        }
        this.sockets.push(socket);
        resolve();
      }, file);
    });
  }

  /** Stops accepting; open connections stay. */
  close(): void {
    for (const s of this.sockets.splice(0)) this.uws.us_listen_socket_close(s);
  }

  /** Closes the listen sockets and every connection, idle keep-alive ones included. */
  closeConnections(): void {
    // us_listen_socket_close on sockets app.close() closes too would be a double close.
    this.sockets.splice(0);
    closeApp(this.app);
  }
}

/** TemplatedApp.listen(host, port, options, cb): in the binary, missing from the package's types. */
function listenWithFlags(app: TemplatedApp, host: string, port: number, flags: number, cb: (s: us_listen_socket | false) => void): void {
  (
    app as TemplatedApp & { listen(host: string, port: number, options: number, cb: (s: us_listen_socket | false) => void): TemplatedApp }
  ).listen(host, port, flags, cb);
}

/** TemplatedApp.close() (in the binary, missing from the package's types): closes its listen sockets and every connection. */
function closeApp(app: TemplatedApp): void {
  (app as TemplatedApp & { close(): void }).close();
}
