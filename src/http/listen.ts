/**
 * Binding the proxy's ports so that a port another process holds stops start-up.
 *
 * The uWS listeners set SO_REUSEPORT unless told otherwise, so that the event loops of `[server]
 * workers` can share the API port; the kernel would then also let a second proxy (any process of
 * the same user with SO_REUSEPORT) bind the same port and split new connections between both. So:
 *   - one event loop: the API listener binds without SO_REUSEPORT (uSockets'
 *     LIBUS_LISTEN_EXCLUSIVE_PORT): the kernel refuses it atomically when the port is taken;
 *   - several loops: the main thread first binds the address once without SO_REUSEPORT (a probe,
 *     closed at once; it fails when any socket holds the port, with SO_REUSEPORT or not), then
 *     listens with SO_REUSEPORT and the worker threads join it;
 *   - the ping and metrics listeners are node:http servers, which never set SO_REUSEPORT.
 * Every failure is one line naming the settings key, the address and the cause.
 */
import net from 'node:net';
import type { Server } from 'node:http';

/** `host:port`, with brackets around an IPv6 address. */
export function hostPort(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

const CAUSE: Record<string, string> = {
  EADDRINUSE: 'address already in use (another process is listening on this port)',
  EACCES: 'permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)',
  EADDRNOTAVAIL: 'address not available (no interface of this host has it)',
};

/** The start-up error for `key` (e.g. "server.port") that cannot listen on host:port. */
export function listenError(key: string, host: string, port: number, code: string | undefined): Error {
  const cause = (code !== undefined ? CAUSE[code] : undefined) ?? (code !== undefined ? code : 'the listener was refused');
  return new Error(`${key}: cannot listen on ${hostPort(host, port)}: ${cause}`);
}

function errorCode(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && typeof (e as { code?: unknown }).code === 'string'
    ? (e as { code: string }).code
    : undefined;
}

/**
 * Binds host:port without SO_REUSEPORT and closes it again: resolves when nothing holds the port,
 * rejects with the start-up error otherwise. Port 0 always resolves.
 */
export function probePort(key: string, host: string, port: number): Promise<void> {
  if (port === 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', (e) => reject(listenError(key, host, port, errorCode(e))));
    // exclusive: no port sharing through the cluster module either.
    s.listen({ host, port, exclusive: true }, () => s.close(() => resolve()));
  });
}

/** Why a uWS listen on host:port failed (uWS reports no errno): the probe's answer, or a generic line. */
export async function explainUwsFailure(key: string, host: string, port: number): Promise<Error> {
  try {
    await probePort(key, host, port);
  } catch (e) {
    if (e instanceof Error) return e;
  }
  return listenError(key, host, port, undefined);
}

/** server.listen(port, host) as a Promise of the bound port; a failure is the start-up error for `key`. */
export function listenNode(server: Server, key: string, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error): void => reject(listenError(key, host, port, errorCode(e)));
    server.once('error', onError);
    server.listen({ host, port, exclusive: true }, () => {
      server.off('error', onError);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}
