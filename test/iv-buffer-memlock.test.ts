/**
 * The IV buffer's memory must be locked (never swapped): under an RLIMIT_MEMLOCK too low for
 * it the real CLI says so at start-up (one WARN: what failed, the limit, what it does instead)
 * and reports it in /metrics, and every Encrypt then makes its own C_GenerateRandom. The limit
 * is set for the child process only (prlimit); as root, CAP_IPC_LOCK (which ignores the limit)
 * is dropped from the child's bounding set too (setpriv).
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAddon } from '../src/hsm/addon.js';
import { spawnProxyCli, type CliProxy } from './helpers/cli.js';
import { useFaultyModule, type FaultControl } from './helpers/faulty.js';
import { call, META, settingsToml, type CallOptions } from './helpers/proxy.js';
import { makeToken, TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const KEY = TEST_KEYS.ordinary;
const PREFIX = '/memlock/test/prefix';
const API = `${PREFIX}/kms/xks/v1`;
const CREDS: CallOptions = { accessKeyId: 'AKIDMEMLOCKTESTABCDE', secret: 'bWVtbG9jay1zZWNyZXQtbWVtbG9jay1zZWNyZXQtbWVt' };
const N = 10;

let base: TestToken;
let token: TestToken;
let faults: FaultControl;

/** The child runs with RLIMIT_MEMLOCK `bytes` (and without CAP_IPC_LOCK). */
function limited(bytes: number): string[] {
  const wrap = ['prlimit', `--memlock=${bytes}:${bytes}`];
  if (process.getuid?.() === 0) wrap.push('setpriv', '--bounding-set', '-ipc_lock');
  return wrap;
}

beforeAll(async () => {
  execFileSync('prlimit', ['--version'], { stdio: 'pipe' });
  base = makeToken('xks-memlock');
  ({ token, faults } = useFaultyModule(base));
  const { Engine } = loadAddon();
  const e = new Engine({
    modulePath: token.modulePath,
    userPin: token.pin,
    poolMaxSize: 1,
    poolTimeoutMs: 1000,
    eagerClose: false,
    threads: 1,
    ivMode: 'random',
  });
  await e.open();
  await e.createKey(KEY, { encrypt: true, decrypt: true });
  await e.close();
});

afterAll(() => {
  faults?.clear();
  base?.cleanup();
});

async function serve(name: string, wrapper: string[]): Promise<CliProxy> {
  const file = path.join(token.dir, name);
  writeFileSync(
    file,
    settingsToml({
      token,
      level: 'INFO',
      metrics: { enabled: true, ip: '127.0.0.1', port: 0 },
      stores: [{ prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [KEY] }],
    }),
  );
  return spawnProxyCli(
    { ...token.env, XKS_PROXY_SETTINGS_TOML: file, FAULTY_PKCS11_CONTROL: faults.controlPath, FAULTY_PKCS11_STATUS: faults.statusPath },
    wrapper,
  );
}

/** Round trips per Encrypt over N sequential ones (after two warm-ups), and the IV-buffer gauge. */
async function measure(proxy: CliProxy): Promise<{ trips: number; random: number; gauge: number }> {
  const url = `http://127.0.0.1:${proxy.port}`;
  const encrypt = () =>
    call(
      url,
      `${API}/keys/${KEY}/encrypt`,
      { requestMetadata: META, plaintext: Buffer.from('memlock').toString('base64'), encryptionAlgorithm: 'AES_GCM' },
      CREDS,
    );
  for (let i = 0; i < 2; ++i) expect((await encrypt()).status).toBe(200);
  const s0 = faults.status();
  for (let i = 0; i < N; ++i) expect((await encrypt()).status).toBe(200);
  const s1 = faults.status();
  const metricsUrl = /metrics=(http:\/\/127\.0\.0\.1:\d+\/metrics)/.exec(proxy.output())?.[1];
  expect(metricsUrl).toBeDefined();
  const text = await (await fetch(metricsUrl!)).text();
  const gauge = Number(/^xks_hsm_iv_buffer_off (\S+)$/m.exec(text)?.[1]);
  return {
    trips: (s1.round_trips - s0.round_trips) / N,
    random: ((s1.calls_by_fn.C_GenerateRandom ?? 0) - (s0.calls_by_fn.C_GenerateRandom ?? 0)) / N,
    gauge,
  };
}

async function stop(proxy: CliProxy): Promise<void> {
  proxy.child.kill('SIGTERM');
  expect(await proxy.exited).toBe(0);
}

describe('the IV buffer and RLIMIT_MEMLOCK (the real CLI)', () => {
  it('too low (4096 bytes): one start-up WARN says what failed and what it does instead; /metrics shows it; each Encrypt makes its own C_GenerateRandom', async () => {
    faults.clear();
    const proxy = await serve('settings-memlock-low.toml', limited(4096));
    try {
      const warns = proxy
        .output()
        .split('\n')
        .filter((l) => l.includes('IV buffer'));
      expect(warns).toHaveLength(1);
      expect(warns[0]).toMatch(
        /^\S+ WARN "?the IV buffer is off: mlock of its (\d+) bytes failed \((ENOMEM|EPERM); RLIMIT_MEMLOCK is 4096 bytes\).* every Encrypt generates its own IV with C_GenerateRandom .* at least \1 bytes of locked memory/,
      );
      expect(await measure(proxy)).toEqual({ trips: 3, random: 1, gauge: 1 });
      await stop(proxy);
    } finally {
      proxy.child.kill('SIGKILL');
    }
  });

  it('enough (1 MiB): no such line, the gauge is 0, and Encrypts take their IVs from the buffer', async () => {
    faults.clear();
    const proxy = await serve('settings-memlock-ok.toml', limited(1 << 20));
    try {
      expect(proxy.output()).not.toContain('IV buffer');
      expect(await measure(proxy)).toEqual({ trips: 2, random: 0, gauge: 0 });
      await stop(proxy);
    } finally {
      proxy.child.kill('SIGKILL');
    }
  });
});
