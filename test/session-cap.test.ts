/**
 * An HSM that allows fewer sessions than session_pool_max_size (the fault module's `sessions
 * max=N`: C_OpenSession answers CKR_SESSION_COUNT, as an HSM partition does): the refused
 * open does not fail the request, which waits for a pooled session; the pool stops growing at
 * what the HSM allows and the operator gets one WARN with the number (native/sessions.h).
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { loadAddon, type NativeEngine } from '../src/hsm/addon.js';
import { startProxy } from '../src/main.js';
import { useFaultyModule, type FaultControl } from './helpers/faulty.js';
import { call, META, settingsToml, type CallOptions } from './helpers/proxy.js';
import { makeToken, splitSealed, TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const { Engine } = loadAddon();
const KEY = TEST_KEYS.ordinary;
const AAD = Buffer.from('session-cap-aad');
const MAX = 4;
const CONCURRENT = 16;
const PREFIX = '/cap/test/prefix';
const API = `${PREFIX}/kms/xks/v1`;
const CREDS: CallOptions = { accessKeyId: 'AKIDSESSIONCAPTESTAB', secret: 'c2Vzc2lvbi1jYXAtc2VjcmV0LXNlc3Npb24tY2FwLXM=' };

let base: TestToken;
let token: TestToken;
let faults: FaultControl;
const engines: NativeEngine[] = [];

beforeAll(async () => {
  base = makeToken('xks-session-cap');
  ({ token, faults } = useFaultyModule(base));
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

afterAll(async () => {
  faults?.clear();
  for (const e of engines) await e.close();
  base?.cleanup();
});

describe(`the HSM allows ${MAX} sessions, the pool ${CONCURRENT}`, () => {
  it('the engine: every call succeeds, the pool keeps to the cap it learned, one note with the number', async () => {
    faults.set('rtt 1', `sessions max=${MAX}`);
    const notes: number[] = [];
    const e = new Engine({
      modulePath: token.modulePath,
      userPin: token.pin,
      poolMaxSize: CONCURRENT,
      poolTimeoutMs: 5000,
      eagerClose: false,
      threads: CONCURRENT,
      ivMode: 'random',
      operationTimeoutMs: 10_000,
      keyCopies: false,
      onSessionLimit: (n) => notes.push(n),
    });
    engines.push(e);
    await e.open();
    expect(e.stats()).toMatchObject({ sessionLimit: 0, sessionCountRefused: 0 });
    const round = async (tag: string): Promise<void> => {
      const sealed = await Promise.all(Array.from({ length: CONCURRENT }, (_, i) => e.encrypt(KEY, Buffer.from(`${tag}-${i}`), AAD)));
      const plain = await Promise.all(
        sealed.map((out) => {
          const { ct, tag: t, iv } = splitSealed(out);
          return e.decrypt(KEY, ct, t, iv, AAD);
        }),
      );
      expect(plain.map(String)).toEqual(Array.from({ length: CONCURRENT }, (_, i) => `${tag}-${i}`));
    };
    await round('first');
    const s = faults.status();
    expect(s.session_count_refused).toBeGreaterThan(0);
    expect(s.max_open_sessions).toBe(MAX);
    expect(e.stats()).toMatchObject({ sessionLimit: MAX, sessionsOpen: MAX, sessionErrors: 0, timeouts: 0 });
    expect(e.stats().sessionCountRefused).toBe(s.session_count_refused);
    // The cap holds: no further C_OpenSession is tried (nor refused) while it does.
    const opens = faults.calls('C_OpenSession');
    await round('second');
    await round('third');
    expect(faults.calls('C_OpenSession')).toBe(opens);
    expect(faults.status().session_count_refused).toBe(s.session_count_refused);
    expect(notes).toEqual([MAX]);
    expect(e.stats()).toMatchObject({ sessionErrors: 0, timeouts: 0 });
    await e.close();
    faults.clear();
  });

  it('after sessionRegrowMs the pool tries to grow again: the same cap is learned anew silently, a larger one is taken and told', async () => {
    faults.set('rtt 1', 'sessions max=3');
    const notes: number[] = [];
    const e = new Engine({
      modulePath: token.modulePath,
      userPin: token.pin,
      poolMaxSize: CONCURRENT,
      poolTimeoutMs: 5000,
      eagerClose: false,
      threads: CONCURRENT,
      ivMode: 'random',
      operationTimeoutMs: 10_000,
      keyCopies: false,
      sessionRegrowMs: 300,
      onSessionLimit: (n) => notes.push(n),
    });
    engines.push(e);
    await e.open();
    const burst = async (): Promise<void> => {
      const all = await Promise.all(Array.from({ length: CONCURRENT }, (_, i) => e.encrypt(KEY, Buffer.from(`regrow-${i}`), AAD)));
      // ciphertext || tag (16) || iv (12) of each plaintext
      expect(all.map((b) => b.length - 28)).toEqual(Array.from({ length: CONCURRENT }, (_, i) => `regrow-${i}`.length));
    };
    await burst();
    expect(notes).toEqual([3]);
    expect(e.stats()).toMatchObject({ sessionLimit: 3, sessionsOpen: 3 });
    // Still refused once the period is over: tried again, the same cap, no second note.
    await new Promise((r) => setTimeout(r, 400));
    const opens = faults.calls('C_OpenSession');
    const refused = faults.status().session_count_refused;
    await burst();
    expect(faults.calls('C_OpenSession')).toBeGreaterThan(opens);
    expect(faults.status().session_count_refused).toBeGreaterThan(refused);
    expect(notes).toEqual([3]);
    expect(e.stats()).toMatchObject({ sessionLimit: 3, sessionsOpen: 3 });
    // The HSM allows more now: the pool grows to it and says so.
    faults.set('rtt 1', 'sessions max=6');
    await new Promise((r) => setTimeout(r, 400));
    await burst();
    expect(notes).toEqual([3, 6]);
    expect(e.stats()).toMatchObject({ sessionLimit: 6, sessionsOpen: 6, sessionErrors: 0, timeouts: 0 });
    await e.close();
    faults.clear();
  });

  it('through the proxy: 16 concurrent Encrypts all answer 200, and the log has one WARN naming the number', async () => {
    faults.set('rtt 1', `sessions max=${MAX}`);
    const settingsPath = path.join(token.dir, 'settings-cap.toml');
    writeFileSync(
      settingsPath,
      settingsToml({
        token,
        poolMaxSize: CONCURRENT,
        poolTimeoutMs: 5000,
        workerThreads: CONCURRENT,
        level: 'WARN',
        stores: [{ prefix: PREFIX, accessKeyId: CREDS.accessKeyId, secret: CREDS.secret, keys: [KEY] }],
      }),
    );
    Object.assign(process.env, token.env);
    const out = new PassThrough();
    const lines: string[] = [];
    out.on('data', (b: Buffer) => lines.push(...b.toString().split('\n').filter(Boolean)));
    const proxy = await startProxy(loadConfig(settingsPath), { stdout: out });
    try {
      const baseUrl = `http://127.0.0.1:${proxy.port}`;
      const encrypt = () =>
        call(
          baseUrl,
          `${API}/keys/${KEY}/encrypt`,
          { requestMetadata: META, plaintext: Buffer.from('capped').toString('base64'), encryptionAlgorithm: 'AES_GCM' },
          CREDS,
        );
      // The first request opens the session that holds the key copy; then the burst.
      expect((await encrypt()).status).toBe(200);
      for (let r = 0; r < 3; ++r) {
        const answers = await Promise.all(Array.from({ length: CONCURRENT }, encrypt));
        expect(answers.map((a) => a.status)).toEqual(Array(CONCURRENT).fill(200));
      }
      expect(faults.status().session_count_refused).toBeGreaterThan(0);
      const capped = lines.filter((l) => l.includes('CKR_SESSION_COUNT'));
      expect(capped).toHaveLength(1);
      // the pool's sessions: the HSM's 4 less the one that holds the key copies
      expect(capped[0]).toMatch(
        new RegExp(
          `^\\S+ WARN .* with ${MAX - 1} of this event loop's sessions open: the session pool stays at ${MAX - 1} .* sessions=${MAX - 1}$`,
        ),
      );
      expect(lines.filter((l) => /^\S+ (ERROR|WARN) /.test(l) && !l.includes('CKR_SESSION_COUNT'))).toEqual([]);
    } finally {
      await proxy.stop();
      faults.clear();
    }
  });
});
