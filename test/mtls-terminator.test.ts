/**
 * The native mTLS terminator on its own (src/http/mtls.ts over native/tls/), with real sockets: a Unix
 * socket echo server stands for the HTTP server, node:tls and raw TCP clients for KMS and for bad
 * clients. Handshake timeout, connection cap, a port in use, back-pressure with bodies far over the
 * buffers, close_notify on either side's close, stopAccepting(), keepalive options, and close() leaving
 * no thread behind.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { connect as tcpConnect, createServer, type Server, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { privateSocketPath, startMtlsTerminator, type MtlsOptions, type MtlsTerminator } from '../src/http/mtls.js';
import type { Logger } from '../src/log.js';
import { waitFor } from './helpers/faulty.js';
import { CLIENT_DNS_NAME, makePki, type TestPki } from './helpers/tls-certs.js';

let pki: TestPki;
let unix: { path: string; remove(): void };
let echo: Server;
/** Upstream connections that asked to be closed by the server ("close\n" as their first bytes). */
const upstreamSockets = new Set<Socket>();

interface Lines {
  log: Logger;
  lines: string[];
}

function capture(): Lines {
  const lines: string[] = [];
  const put = (level: string) => (msg: string, fields?: Record<string, unknown>) => {
    lines.push(`${level} ${msg} ${JSON.stringify(fields ?? {})}`);
  };
  const log = { trace: put('TRACE'), debug: put('DEBUG'), info: put('INFO'), warn: put('WARN'), error: put('ERROR') } as unknown as Logger;
  return { log, lines };
}

beforeAll(async () => {
  pki = makePki();
  unix = privateSocketPath();
  echo = createServer((s) => {
    upstreamSockets.add(s);
    s.on('close', () => upstreamSockets.delete(s));
    s.on('error', () => undefined);
    s.pipe(s);
  });
  await new Promise<void>((resolve) => echo.listen(unix.path, resolve));
});

afterAll(async () => {
  for (const s of upstreamSockets) s.destroy();
  await new Promise<void>((resolve) => echo?.close(() => resolve()));
  unix?.remove();
  pki?.cleanup();
});

function options(extra: Partial<MtlsOptions> = {}): MtlsOptions {
  return {
    host: '127.0.0.1',
    port: 0,
    certFile: pki.server.cert,
    keyFile: pki.server.key,
    caFile: pki.ca,
    dnsName: CLIENT_DNS_NAME,
    upstreamPath: unix.path,
    ...extra,
  };
}

function goodClient(port: number): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({
      host: '127.0.0.1',
      port,
      ca: readFileSync(pki.ca),
      cert: readFileSync(pki.clients.good.cert),
      key: readFileSync(pki.clients.good.key),
      servername: 'localhost',
    });
    s.once('secureConnect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Resolves with how the socket ended: 'end' (FIN / close_notify first) or the error code. */
function ending(s: Socket, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve('still open'), timeoutMs);
    s.once('end', () => {
      clearTimeout(t);
      resolve('end');
    });
    s.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(t);
      resolve(e.code ?? e.message);
    });
    s.resume();
  });
}

/** Names of this process's threads (the terminator's is "xks-mtls"). */
const threadNames = (): string[] => readdirSync('/proc/self/task').map((t) => readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim());
const terminatorThreads = (): number => threadNames().filter((n) => n === 'xks-mtls').length;

describe('native mTLS terminator', () => {
  it('echoes 8 MiB each way through bounded buffers (back-pressure on both sides)', async () => {
    const t = await startMtlsTerminator(options(), capture().log);
    try {
      const s = await goodClient(t.port);
      const payload = randomBytes(8 * 1024 * 1024);
      const got: Buffer[] = [];
      let n = 0;
      const done = new Promise<void>((resolve) => {
        s.on('data', (c: Buffer) => {
          got.push(c);
          n += c.length;
          if (n >= payload.length) resolve();
        });
      });
      // Read nothing for a while: the echo server, then the terminator, must stop and wait.
      s.pause();
      s.write(payload);
      await new Promise((r) => setTimeout(r, 300));
      expect(t.stats().open).toBe(1);
      s.resume();
      await done;
      const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
      expect(sha(Buffer.concat(got))).toBe(sha(payload));
      s.end();
      expect(await ending(s)).toBe('end');
    } finally {
      t.close();
    }
  });

  it('sends close_notify when the HTTP server closes, and closes the upstream when the client does', async () => {
    const t = await startMtlsTerminator(options(), capture().log);
    try {
      const before = upstreamSockets.size;
      const a = await goodClient(t.port);
      expect(await waitFor(() => upstreamSockets.size === before + 1, 5000)).toBe(true);
      const up = [...upstreamSockets].at(-1)!;
      const ended = ending(a);
      up.end();
      expect(await ended).toBe('end');

      const b = await goodClient(t.port);
      expect(await waitFor(() => upstreamSockets.size >= before + 1, 5000)).toBe(true);
      const upB = [...upstreamSockets].at(-1)!;
      const upEnded = ending(upB);
      b.end();
      expect(await upEnded).toBe('end');
      expect(await waitFor(() => t.stats().open === 0, 5000)).toBe(true);
    } finally {
      t.close();
    }
  });

  it('closes a client that does not finish its handshake in time (silently when it never spoke)', async () => {
    const { log, lines } = capture();
    const t = await startMtlsTerminator(options({ handshakeTimeoutMs: 300 }), log);
    try {
      const silent = tcpConnect(t.port, '127.0.0.1');
      const partial = tcpConnect(t.port, '127.0.0.1', () => partial.write(Buffer.from([0x16, 0x03, 0x01, 0x02])));
      const started = Date.now();
      expect(await ending(silent)).toBe('end');
      expect(await ending(partial)).toBe('end');
      expect(Date.now() - started).toBeLessThan(4000);
      // Counted by the terminator's thread around the close the client saw: wait for it.
      expect(await waitFor(() => t.stats().timedOut >= 2 && t.stats().open === 0, 5000)).toBe(true);
      expect(t.stats()).toMatchObject({ timedOut: 2, open: 0 });
      expect(await waitFor(() => lines.some((l) => l.includes('mTLS client refused')), 5000)).toBe(true);
      expect(lines.filter((l) => l.includes('mTLS client refused'))).toEqual([
        'INFO mTLS client refused {"remote":"127.0.0.1","reason":"TLS handshake not finished within 300 ms"}',
      ]);
    } finally {
      t.close();
    }
  });

  it('closes connections over maxConnections at once and logs it once', async () => {
    const { log, lines } = capture();
    const t = await startMtlsTerminator(options({ maxConnections: 2 }), log);
    const held: Socket[] = [];
    try {
      held.push(await goodClient(t.port), await goodClient(t.port));
      const third = tcpConnect(t.port, '127.0.0.1');
      const fourth = tcpConnect(t.port, '127.0.0.1');
      expect(await ending(third, 2000)).not.toBe('still open');
      expect(await ending(fourth, 2000)).not.toBe('still open');
      expect(await waitFor(() => t.stats().overLimit >= 2, 5000)).toBe(true);
      expect(t.stats()).toMatchObject({ open: 2, overLimit: 2 });
      expect(await waitFor(() => lines.some((l) => l.includes('connection limit reached')), 5000)).toBe(true);
      expect(lines.filter((l) => l.includes('connection limit reached'))).toHaveLength(1);
      // The two held connections still work.
      for (const s of held) {
        const back = new Promise<string>((resolve) => s.once('data', (d: Buffer) => resolve(d.toString())));
        s.write('ping');
        expect(await back).toBe('ping');
      }
    } finally {
      for (const s of held) s.destroy();
      t.close();
    }
  });

  it('leaves no file descriptor behind (served, refused and silent clients, then close())', async () => {
    const fds = (): number => readdirSync('/proc/self/fd').length;
    const before = fds();
    const { log } = capture();
    const t = await startMtlsTerminator(options(), log);
    for (let i = 0; i < 10; i++) {
      const good = await goodClient(t.port);
      const bad = tlsConnect({
        host: '127.0.0.1',
        port: t.port,
        ca: readFileSync(pki.ca),
        cert: readFileSync(pki.clients.expired.cert),
        key: readFileSync(pki.clients.expired.key),
      });
      bad.on('error', () => undefined);
      const silent = tcpConnect(t.port, '127.0.0.1');
      silent.on('connect', () => silent.end());
      await Promise.all([ending(bad), ending(silent)]);
      good.end();
      await ending(good);
    }
    expect(await waitFor(() => t.stats().open === 0, 5000)).toBe(true);
    expect(t.stats()).toMatchObject({ served: 10, refused: 10, silent: 10 });
    t.close();
    expect(await waitFor(() => fds() <= before, 5000)).toBe(true);
  });

  it('takes every certificate in mtls_client_ca_pem as a trust anchor, an intermediate too (as rustls/webpki do)', async () => {
    const client = (port: number): Promise<string> =>
      ending(
        tlsConnect({
          host: '127.0.0.1',
          port,
          ca: readFileSync(pki.ca),
          cert: readFileSync(pki.clients.viaIntermediate.cert),
          key: readFileSync(pki.clients.viaIntermediate.key),
        }).on('secureConnect', function (this: TLSSocket) {
          this.end();
        }),
      );
    // The root as CA: the client sends its chain (leaf, intermediate).
    const root = await startMtlsTerminator(options(), capture().log);
    try {
      expect(await client(root.port)).toBe('end');
      expect(root.stats()).toMatchObject({ served: 1, refused: 0 });
    } finally {
      root.close();
    }
    // Only the intermediate as CA (no self-signed root in the file): accepted too; a client of the
    // root that is not under the intermediate is not.
    const { log, lines } = capture();
    const inter = await startMtlsTerminator(options({ caFile: pki.intermediate }), log);
    try {
      expect(await client(inter.port)).toBe('end');
      const other = tlsConnect({
        host: '127.0.0.1',
        port: inter.port,
        ca: readFileSync(pki.ca),
        cert: readFileSync(pki.clients.good.cert),
        key: readFileSync(pki.clients.good.key),
      });
      other.on('data', () => undefined);
      expect(await ending(other)).toMatch(/ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE/);
      // The terminator's thread counts the refusal after the alert has left: the client can be first.
      expect(await waitFor(() => inter.stats().refused >= 1, 5000)).toBe(true);
      expect(inter.stats()).toMatchObject({ served: 1, refused: 1 });
      // Reports reach JS through a queue: wait for it. (node's client sends the root along, which is
      // not a trust anchor here.)
      expect(await waitFor(() => lines.some((l) => /mTLS client refused .*SELF_SIGNED_CERT_IN_CHAIN/.test(l)), 5000)).toBe(true);
    } finally {
      inter.close();
    }
  });

  it('fails to start on a port in use, naming it (no SO_REUSEPORT)', async () => {
    const t = await startMtlsTerminator(options(), capture().log);
    try {
      await expect(startMtlsTerminator(options({ port: t.port }), capture().log)).rejects.toMatchObject({
        code: 'EADDRINUSE',
        message: `listen 127.0.0.1:${t.port}: Address already in use`,
      });
    } finally {
      t.close();
    }
    const other = createServer();
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    const port = (other.address() as { port: number }).port;
    try {
      await expect(startMtlsTerminator(options({ port }), capture().log)).rejects.toMatchObject({ code: 'EADDRINUSE' });
    } finally {
      other.close();
    }
  });

  it('refuses bad settings with the file or key at fault', async () => {
    const log = capture().log;
    await expect(startMtlsTerminator(options({ certFile: '/nonexistent/cert.pem' }), log)).rejects.toThrow(
      /tls_cert_pem \/nonexistent\/cert.pem/,
    );
    await expect(startMtlsTerminator(options({ keyFile: pki.clients.good.key }), log)).rejects.toThrow(/tls_key_pem .*key values mismatch/);
    await expect(startMtlsTerminator(options({ caFile: '/nonexistent/ca.pem' }), log)).rejects.toThrow(/mtls_client_ca_pem/);
    await expect(startMtlsTerminator(options({ dnsName: '' }), log)).rejects.toThrow(/mtls_client_dns_name must not be empty/);
  });

  it('stopAccepting() refuses new connections and keeps open ones; close() sends close_notify and ends its thread', async () => {
    const base = terminatorThreads();
    const t: MtlsTerminator = await startMtlsTerminator(options(), capture().log);
    expect(terminatorThreads()).toBe(base + 1);
    const s = await goodClient(t.port);
    t.stopAccepting();
    expect(await waitFor(() => execFileSync('ss', ['-Htln', `sport = :${t.port}`], { encoding: 'utf8' }).trim() === '', 5000)).toBe(true);
    const refused = await ending(tcpConnect(t.port, '127.0.0.1'));
    expect(refused).toBe('ECONNREFUSED');
    const back = new Promise<string>((resolve) => s.once('data', (d: Buffer) => resolve(d.toString())));
    s.write('still here');
    expect(await back).toBe('still here');
    const ended = ending(s);
    t.close();
    expect(await ended).toBe('end');
    // The joined thread's /proc/self/task entry can outlive pthread_join by a moment.
    expect(await waitFor(() => terminatorThreads() === base, 5000)).toBe(true);
    expect(terminatorThreads()).toBe(base);
    t.close();
  });

  it('applies [server.tcp_keepalive] in full (SO_KEEPALIVE, idle, interval, count) and TCP_NODELAY to client sockets', async () => {
    const t = await startMtlsTerminator(
      options({ tcpKeepalive: { tcp_keepalive_secs: 77, tcp_keepalive_interval_secs: 5, tcp_keepalive_retries: 4 } }),
      capture().log,
    );
    try {
      const s = await goodClient(t.port);
      // ss shows the server side's keepalive timer (SO_KEEPALIVE on, TCP_KEEPIDLE 77 s).
      const out = execFileSync('ss', ['-Htno', 'state', 'established', `sport = :${t.port}`], { encoding: 'utf8' });
      expect(out).toMatch(/timer:\(keepalive,1min1[0-7]sec,0\)/);
      s.destroy();
    } finally {
      t.close();
    }
    // The interval and the probe count are not visible in ss: watch the terminator's setsockopt calls
    // (strace on a child process running the compiled terminator with the same options).
    const script = [
      `import { startMtlsTerminator } from ${JSON.stringify(path.resolve('dist/src/http/mtls.js'))};`,
      'const log = { info() {}, warn() {}, error() {} };',
      `const t = await startMtlsTerminator(${JSON.stringify(options({ tcpKeepalive: { tcp_keepalive_secs: 77, tcp_keepalive_interval_secs: 5, tcp_keepalive_retries: 4 } }))}, log);`,
      // biome-ignore lint/suspicious/noTemplateCurlyInString: source text of the child's script
      'process.stdout.write(`port=${t.port}\\n`);',
      'process.stdin.resume(); process.stdin.on("end", () => { t.close(); });',
    ].join('\n');
    const child = spawn('strace', ['-f', '-qq', '-e', 'trace=setsockopt', process.execPath, '--input-type=module', '-e', script], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let traced = '';
    child.stderr.on('data', (c: Buffer) => (traced += c.toString()));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`child did not start: ${traced}`)), 15000);
      let out = '';
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        const m = /port=(\d+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      });
    });
    const s = await goodClient(port);
    s.destroy();
    child.stdin.end();
    await exited;
    expect(traced).toMatch(/SOL_SOCKET, SO_KEEPALIVE, \[1\]/);
    expect(traced).toMatch(/SOL_TCP, TCP_KEEPIDLE, \[77\]/);
    expect(traced).toMatch(/SOL_TCP, TCP_KEEPINTVL, \[5\]/);
    expect(traced).toMatch(/SOL_TCP, TCP_KEEPCNT, \[4\]/);
    expect(traced).toMatch(/SOL_TCP, TCP_NODELAY, \[1\]/);

    const off = await startMtlsTerminator(options(), capture().log);
    try {
      const s = await goodClient(off.port);
      const out = execFileSync('ss', ['-Htno', 'state', 'established', `sport = :${off.port}`], { encoding: 'utf8' });
      expect(out).not.toMatch(/keepalive/);
      s.destroy();
    } finally {
      off.close();
    }
  });
});
