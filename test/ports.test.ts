/**
 * A port in use is a start-up error: a second proxy (or anything else) on the API, ping or metrics
 * port makes start-up fail with one line naming the key and "address already in use", whether the
 * holder set SO_REUSEPORT or not. Our own event loops ([server] workers) still share the API port.
 * Real CLI processes, a real uWS listener with SO_REUSEPORT in another process, node:net holders.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import path from 'node:path';
import { freePort } from '../src/workers/serving.js';
import { BIN, spawnProxyCli } from './helpers/cli.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { settingsToml, startTestProxy, type SettingsSpec } from './helpers/proxy.js';
import { TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const STORE = {
  prefix: '/ports/test/prefix',
  accessKeyId: 'AKIDPORTSTEST0000001',
  secret: 'cG9ydHMtcG9ydHMtcG9ydHMtcG9ydHMtcG9ydHMtcG9ydHM=',
  keys: [TEST_KEYS.ordinary],
};

let token: TestToken;

beforeAll(async () => {
  token = await makeKeyedToken('xks-ports');
});

afterAll(() => token?.cleanup());

const spec = (over: Partial<SettingsSpec>): SettingsSpec => ({ token, stores: [STORE], level: 'INFO', ...over });

function settingsFile(name: string, s: SettingsSpec): string {
  const file = path.join(token.dir, name);
  writeFileSync(file, settingsToml(s));
  return file;
}

/** Runs the real CLI, which must exit on its own (within 20 s); its exit code and everything it printed. */
function runToExit(settings: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN], {
      env: { ...process.env, ...token.env, XKS_PROXY_SETTINGS_TOML: settings },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the second proxy did not exit: ${output}`));
    }, 20_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

/** A uWS listener (SO_REUSEPORT, as uSockets sets it by default) in another process. */
function reusePortHolder(port: number): Promise<{ stop(): void }> {
  const uws = path.resolve(
    `node_modules/@trufflesuite/uws-js-unofficial/binaries/uws_${process.platform}_${process.arch}_${process.versions.modules}.node`,
  );
  const script = `const u = require(${JSON.stringify(uws)}); u.App().get('/*', (res) => res.end('holder')).listen('127.0.0.1', ${port}, (s) => console.log(s ? 'ready' : 'failed'));`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    child.stdout.on('data', (c: Buffer) =>
      c.toString().includes('ready') ? resolve({ stop: () => child.kill('SIGKILL') }) : reject(new Error(c.toString())),
    );
    child.once('exit', (code) => reject(new Error(`holder exited ${code}`)));
  });
}

function holdWithNet(port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(port, '127.0.0.1', () => resolve(s));
  });
}

const inUse = (key: string, port: number): RegExp =>
  new RegExp(`${key.replace('.', '\\.')}: cannot listen on 127\\.0\\.0\\.1:${port}: address already in use`);

describe("a second proxy on a running one's port", () => {
  for (const workers of [1, 2]) {
    it(`refuses to start and names the port (workers = ${workers}); the first serves on`, async () => {
      const port = await freePort('127.0.0.1');
      const first = await spawnProxyCli({
        ...token.env,
        XKS_PROXY_SETTINGS_TOML: settingsFile(`first-${workers}.toml`, spec({ port, workers })),
      });
      try {
        const second = await runToExit(settingsFile(`second-${workers}.toml`, spec({ port, workers })));
        expect(second.code).toBe(1);
        expect(second.output).toMatch(inUse('server.port', port));
        expect(second.output).not.toMatch(/listening url=/);
        // Every new connection still reaches the first proxy.
        for (let i = 0; i < 20; i++) expect((await fetch(`http://127.0.0.1:${port}/ping`)).status).toBe(200);
      } finally {
        first.child.kill('SIGTERM');
        await first.exited;
      }
    }, 40_000);
  }
});

describe('ports held by other programs', () => {
  it("an API port held with SO_REUSEPORT (another process's uWS listener) is in use, for one event loop and for several", async () => {
    const port = await freePort('127.0.0.1');
    const holder = await reusePortHolder(port);
    try {
      for (const workers of [1, 2]) {
        await expect(startTestProxy(spec({ port, workers }), `reuse-${workers}.toml`)).rejects.toThrow(inUse('server.port', port));
      }
      expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toBe('holder');
    } finally {
      holder.stop();
    }
  }, 30_000);

  it('an API port, a ping port and a metrics port held by node:net listeners: each names its key', async () => {
    const [api, ping, metrics] = [await freePort('127.0.0.1'), await freePort('127.0.0.1'), await freePort('127.0.0.1')];
    for (const [key, held, over] of [
      ['server.port', api, { port: api }],
      ['server.port_http_ping', ping, { port: 0, pingPort: ping }],
      ['metrics.port', metrics, { metrics: { port: metrics } }],
    ] as const) {
      const holder = await holdWithNet(held);
      try {
        await expect(startTestProxy(spec(over), `held-${held}.toml`)).rejects.toThrow(inUse(key, held));
      } finally {
        await new Promise((r) => holder.close(r));
      }
    }
    // With the ports free again the same settings start.
    const proxy = await startTestProxy(spec({ port: api, pingPort: ping, metrics: { port: metrics } }), 'held-free.toml');
    try {
      expect([proxy.port, proxy.pingPort, proxy.metricsPort]).toEqual([api, ping, metrics]);
    } finally {
      await proxy.stop();
    }
  });
});
