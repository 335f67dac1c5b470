/**
 * HSM failures at the engine level, injected by the fault module in front of a real
 * SoftHSM2 token: error codes and recovery, deadlines with stuck calls, bursts.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { isNativeError, loadAddon, type NativeEngine, type NativeError } from '../src/hsm/addon.js';
import { waitFor } from './helpers/faulty.js';
import { useFaultyEngines } from './helpers/fault-engines.js';
import { splitSealed, TEST_KEYS } from './helpers/softhsm.js';

const { Engine } = loadAddon();
const TIMEOUT = 100;
const KEY = TEST_KEYS.ordinary;
const AAD = Buffer.from('fault-aad');

const fx = useFaultyEngines({
  label: 'xks-fault-engine',
  defaults: { poolMaxSize: 2, poolTimeoutMs: 1000, threads: 2, operationTimeoutMs: TIMEOUT },
  keys: [KEY],
  setupOptions: { operationTimeoutMs: 0 },
  keepSetupEngine: true,
});
const { open, options, engines } = fx;

async function outcome<T>(p: Promise<T>): Promise<{ ok: true; value: T; ms: number } | { ok: false; error: NativeError; ms: number }> {
  const t0 = performance.now();
  try {
    const value = await p;
    return { ok: true, value, ms: performance.now() - t0 };
  } catch (e) {
    if (!isNativeError(e)) throw e;
    return { ok: false, error: e, ms: performance.now() - t0 };
  }
}

async function roundTrip(e: NativeEngine, text = 'hello'): Promise<void> {
  const { ct, tag, iv } = splitSealed(await e.encrypt(KEY, Buffer.from(text), AAD));
  expect((await e.decrypt(KEY, ct, tag, iv, AAD)).toString()).toBe(text);
}

describe('the fault module', () => {
  it('forwards to SoftHSM2 and counts its sessions', async () => {
    fx.faults.clear();
    const e = await open();
    await roundTrip(e);
    expect(fx.faults.status().open_sessions).toBeGreaterThanOrEqual(1);
    fx.faults.set('fail C_GenerateRandom CKR_FUNCTION_FAILED times=1');
    expect((await outcome(e.random(4))).ok).toBe(false);
    expect((await outcome(e.random(4))).ok).toBe(true);
    fx.faults.clear();
  });
});

describe('session-fatal codes drop the session and the service carries on', () => {
  const codes = [
    'CKR_DEVICE_ERROR',
    'CKR_DEVICE_REMOVED',
    'CKR_TOKEN_NOT_PRESENT',
    'CKR_SESSION_HANDLE_INVALID',
    'CKR_SESSION_CLOSED',
    'CKR_CRYPTOKI_NOT_INITIALIZED',
  ];
  for (const code of codes) {
    it(code, async () => {
      fx.faults.clear();
      const e = await open();
      await roundTrip(e);
      const before = e.stats();
      fx.faults.set(`fail C_Encrypt ${code} times=1`);
      const r = await outcome(e.encrypt(KEY, Buffer.from('x'), AAD));
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.error.code).toBe(code);
      expect(r.ms).toBeLessThan(TIMEOUT);
      const after = e.stats();
      expect(after.sessionErrors).toBeGreaterThan(before.sessionErrors);
      await roundTrip(e); // a fresh or surviving session serves the next call
      expect(e.stats().sessionsOpen).toBeLessThanOrEqual(2);
      await e.close();
    });
  }
});

describe('recovery', () => {
  it('two engines on one module (two event loops): a re-initialization by one never pulls the module from under the other', async () => {
    fx.faults.clear();
    const a = await open({ poolMaxSize: 2, threads: 2 });
    const b = await open({ poolMaxSize: 2, threads: 2 });
    await Promise.all([roundTrip(a), roundTrip(b)]);
    const issued: { ct: Buffer; tag: Buffer; iv: Buffer; text: string }[] = [];
    let stop = false;
    const traffic = async (e: NativeEngine, tag: string): Promise<void> => {
      for (let i = 0; !stop; i++) {
        const text = `${tag}-${i}`;
        const r = await outcome(e.encrypt(KEY, Buffer.from(text), AAD));
        if (r.ok) issued.push({ ...splitSealed(r.value), text });
      }
    };
    const running = [traffic(a, 'a'), traffic(a, 'a2'), traffic(b, 'b'), traffic(b, 'b2')];
    for (let round = 0; round < 6; round++) {
      await new Promise((r) => setTimeout(r, 40));
      // Every session of both engines fails: each engine re-initializes the shared module.
      fx.faults.set('fail C_Encrypt CKR_DEVICE_ERROR times=2', 'fail C_GetSessionInfo CKR_DEVICE_ERROR times=4');
      await new Promise((r) => setTimeout(r, 40));
      fx.faults.clear();
    }
    stop = true;
    await Promise.all(running);
    expect(a.stats().reinitializations + b.stats().reinitializations).toBeGreaterThan(0);
    await waitFor(async () => (await outcome(a.random(1))).ok && (await outcome(b.random(1))).ok, 3000);
    await Promise.all([roundTrip(a), roundTrip(b)]);
    // Nothing issued during the turmoil is lost: every ciphertext decrypts, with either engine.
    expect(issued.length).toBeGreaterThan(50);
    for (const [i, c] of issued.entries()) {
      const e = i % 2 === 0 ? a : b;
      expect((await e.decrypt(KEY, c.ct, c.tag, c.iv, AAD)).toString()).toBe(c.text);
    }
    await a.close();
    await b.close();
  });

  it('a stale key handle (CKR_KEY_HANDLE_INVALID / CKR_OBJECT_HANDLE_INVALID) is looked up again and the call retried once', async () => {
    fx.faults.clear();
    const e = await open();
    for (const code of ['CKR_KEY_HANDLE_INVALID', 'CKR_OBJECT_HANDLE_INVALID']) {
      // A failed call closes its session, and closing the last one forgets cached handles
      // (README, "How it works"): make sure the next call starts from a cached handle.
      await roundTrip(e);
      fx.faults.set(`fail C_EncryptInit ${code} times=1`);
      const r = await outcome(e.encrypt(KEY, Buffer.from('retry'), AAD));
      expect(r.ok, code).toBe(true);
      const { ct, tag, iv } = splitSealed(await e.encrypt(KEY, Buffer.from('retried decrypt'), AAD));
      fx.faults.set(`fail C_DecryptInit ${code} times=1`);
      expect((await e.decrypt(KEY, ct, tag, iv, AAD)).toString()).toBe('retried decrypt');
    }
    // Twice in a row is not retried forever: the caller gets the error.
    await roundTrip(e);
    fx.faults.set('fail C_EncryptInit CKR_KEY_HANDLE_INVALID times=2');
    const r = await outcome(e.encrypt(KEY, Buffer.from('x'), AAD));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error.code).toBe('CKR_KEY_HANDLE_INVALID');
    fx.faults.clear();
    await roundTrip(e);
    await e.close();
  });

  it('re-initializes the module when every session is bad', async () => {
    fx.faults.clear();
    const e = await open({ poolMaxSize: 3 });
    await Promise.all([roundTrip(e, 'a'), roundTrip(e, 'b'), roundTrip(e, 'c')]);
    const before = e.stats();
    // The failing call's device error; the idle sessions fail their probe too.
    fx.faults.set('fail C_Encrypt CKR_DEVICE_ERROR times=1', 'fail C_GetSessionInfo CKR_DEVICE_ERROR');
    const r = await outcome(e.encrypt(KEY, Buffer.from('x'), AAD));
    expect(r.ok).toBe(false);
    expect(e.stats().reinitializations).toBe(before.reinitializations + 1);
    fx.faults.clear();
    await roundTrip(e);
    expect(e.stats().ready).toBe(true);
    await e.close();
  });

  it('keeps the healthy idle sessions when only one session failed', async () => {
    fx.faults.clear();
    const e = await open({ poolMaxSize: 3, threads: 3 });
    fx.faults.set('delay C_Encrypt 5');
    await Promise.all([roundTrip(e, 'a'), roundTrip(e, 'b'), roundTrip(e, 'c')]);
    expect(e.stats().sessionsOpen).toBe(3);
    const before = e.stats();
    fx.faults.set('fail C_Decrypt CKR_SESSION_HANDLE_INVALID times=1');
    const { ct, tag, iv } = splitSealed(await e.encrypt(KEY, Buffer.from('y'), AAD));
    expect((await outcome(e.decrypt(KEY, ct, tag, iv, AAD))).ok).toBe(false);
    expect(e.stats().reinitializations).toBe(before.reinitializations);
    expect(e.stats().sessionsOpen).toBe(before.sessionsOpen - 1);
    await e.close();
  });

  it('an HSM that is down fails calls fast, then service resumes by itself', async () => {
    fx.faults.clear();
    const e = await open();
    await roundTrip(e);
    fx.faults.set('fail * CKR_DEVICE_ERROR');
    const results = [];
    for (let i = 0; i < 20; ++i) results.push(await outcome(e.encrypt(KEY, Buffer.from('x'), AAD)));
    expect(results.every((r) => !r.ok)).toBe(true);
    expect(Math.max(...results.map((r) => r.ms))).toBeLessThan(TIMEOUT);
    expect(e.stats().ready).toBe(false);
    expect((await outcome(e.tokenInfo())).ok).toBe(false);
    fx.faults.clear();
    // Backoff is at most 1 s between re-initialization attempts.
    const back = await waitFor(async () => (await outcome(e.encrypt(KEY, Buffer.from('x'), AAD))).ok, 3000);
    expect(back).toBe(true);
    expect(e.stats().ready).toBe(true);
    await roundTrip(e);
    expect(e.stats().sessionsOpen).toBeLessThanOrEqual(2);
    await e.close();
  });
});

describe('deadlines', () => {
  it('a stuck call settles with XKS_TIMEOUT on time; other work goes on; the session is quarantined, then closed', async () => {
    fx.faults.clear();
    const e = await open();
    const { ct, tag, iv } = splitSealed(await e.encrypt(KEY, Buffer.from('before'), AAD));
    fx.faults.set('block C_Encrypt');
    const stuck = await outcome(e.encrypt(KEY, Buffer.from('x'), AAD));
    expect(stuck.ok).toBe(false);
    if (!stuck.ok) expect(stuck.error.code).toBe('XKS_TIMEOUT');
    expect(stuck.ms).toBeGreaterThanOrEqual(TIMEOUT - 5);
    expect(stuck.ms).toBeLessThan(TIMEOUT + 60);
    let s = e.stats();
    expect(s.workersStuck).toBe(1);
    expect(s.sessionsQuarantined).toBe(1);
    expect(s.timeouts).toBeGreaterThanOrEqual(1);
    // Calls that do not hit the blocked function keep working, on another session and thread.
    expect((await e.decrypt(KEY, ct, tag, iv, AAD)).toString()).toBe('before');
    expect((await e.tokenInfo()).label).toBe('xks-fault-engine');
    fx.faults.clear();
    expect(await waitFor(() => e.stats().workersStuck === 0 && e.stats().sessionsQuarantined === 0)).toBe(true);
    s = e.stats();
    expect(s.sessionsOpen).toBeLessThanOrEqual(2);
    await roundTrip(e);
    expect(fx.faults.status().open_sessions).toBe(e.stats().sessionsOpen);
    await e.close();
  });

  it('a slow call past the deadline times out and its late result is discarded', async () => {
    fx.faults.clear();
    const e = await open();
    const { ct, tag, iv } = splitSealed(await e.encrypt(KEY, Buffer.from('slow'), AAD));
    fx.faults.set(`delay C_Decrypt ${TIMEOUT * 2} times=1`);
    const r = await outcome(e.decrypt(KEY, ct, tag, iv, AAD));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error.code).toBe('XKS_TIMEOUT');
    expect(r.ms).toBeLessThan(TIMEOUT + 60);
    expect(await waitFor(() => e.stats().workersStuck === 0)).toBe(true);
    expect((await e.decrypt(KEY, ct, tag, iv, AAD)).toString()).toBe('slow');
    await e.close();
  });

  it('with every call blocked, nothing hangs: all calls settle by the deadline, threads stay bounded', async () => {
    fx.faults.clear();
    const e = await open();
    await roundTrip(e);
    fx.faults.set('block *');
    const t0 = performance.now();
    const all = await Promise.all(Array.from({ length: 40 }, (_, i) => outcome(e.encrypt(KEY, Buffer.from(`n${i}`), AAD))));
    const took = performance.now() - t0;
    expect(all.every((r) => !r.ok && r.error.code === 'XKS_TIMEOUT')).toBe(true);
    expect(took).toBeLessThan(TIMEOUT + 100);
    const s = e.stats();
    expect(s.workersStuck).toBeLessThanOrEqual(4); // threads + max(threads, 2)
    expect(s.sessionsQuarantined).toBeLessThanOrEqual(2); // poolMaxSize
    // Still nothing hangs while the stuck threads are at their bound.
    const more = await outcome(e.tokenInfo());
    expect(more.ok).toBe(false);
    expect(more.ms).toBeLessThan(TIMEOUT + 60);
    fx.faults.clear();
    expect(await waitFor(() => e.stats().workersStuck === 0 && e.stats().sessionsQuarantined === 0)).toBe(true);
    await roundTrip(e);
    expect(e.stats().sessionsOpen).toBeLessThanOrEqual(2);
    await e.close();
    expect(fx.faults.status().open_sessions).toBeLessThanOrEqual(engines.filter((x) => x !== e).length * 2);
  });

  it('close() while a call is stuck resolves after a bounded grace', async () => {
    fx.faults.clear();
    const e = await open();
    await roundTrip(e);
    fx.faults.set('block C_Encrypt');
    const stuck = outcome(e.encrypt(KEY, Buffer.from('x'), AAD));
    expect((await stuck).ok).toBe(false);
    const t0 = performance.now();
    await e.close();
    expect(performance.now() - t0).toBeLessThan(1500);
    fx.faults.clear();
  });
});

describe('several engines on one module (event loops)', () => {
  /** Resolves to 'settled' or, after `ms`, 'pending'. */
  async function within(p: Promise<unknown>, ms: number): Promise<'settled' | 'pending'> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'pending'>((r) => (timer = setTimeout(() => r('pending'), ms)));
    const r = await Promise.race([
      p.then(
        () => 'settled' as const,
        () => 'settled' as const,
      ),
      late,
    ]);
    clearTimeout(timer);
    return r;
  }

  it("a call stuck in one engine never hangs another engine's close() or open()", async () => {
    fx.faults.clear();
    const a = await open();
    const b = await open();
    await Promise.all([roundTrip(a), roundTrip(b)]);
    fx.faults.set('block C_Encrypt');
    const stuck = await outcome(b.encrypt(KEY, Buffer.from('x'), AAD));
    expect(stuck.ok).toBe(false);
    expect(b.stats().workersStuck).toBe(1);
    // b's call is still inside the module. Neither closing a nor opening c needs it to return.
    const t0 = performance.now();
    const closing = a.close();
    const opening = new Engine(options());
    engines.push(opening);
    const opened = opening.open();
    const closed = await within(closing, 1500);
    const openedState = await within(opened, 1500);
    fx.faults.clear(); // releases b's call (and, before the fix, a's close and c's open behind it)
    expect(closed).toBe('settled');
    expect(openedState).toBe('settled');
    expect(performance.now() - t0).toBeLessThan(1600);
    await opened;
    await closing;
    expect(await waitFor(() => b.stats().workersStuck === 0)).toBe(true);
    await Promise.all([roundTrip(b), roundTrip(opening)]);
    await b.close();
    await opening.close();
  });
});

describe('event loop teardown', () => {
  /**
   * A child process: a worker thread opens an engine, starts a call that blocks in the HSM and exits
   * before the deadline; the call is released afterwards and finishes. Freed memory is poisoned
   * (MALLOC_PERTURB_, no tcache), so memory freed too early crashes the child. Resolves the child's
   * exit status, signal and output.
   */
  function teardownChild(mainLoads: boolean): { status: number | null; signal: string | null; stdout: string } {
    const script = path.join(fx.base.dir, 'teardown-child.cjs');
    writeFileSync(
      script,
      `const { Worker } = require('node:worker_threads');
const fs = require('node:fs');
const d = JSON.parse(process.argv[2]);
if (d.mainLoads) require(d.addon);
const rules = (text, n) => { fs.writeFileSync(d.control + '.child' + n, text); fs.renameSync(d.control + '.child' + n, d.control); };
rules('# child\\nblock C_Encrypt\\n', 1);
const w = new Worker(\`
  const { workerData: d } = require('node:worker_threads');
  const { Engine } = require(d.addon);
  (async () => {
    const e = new Engine(d.options);
    await e.open();
    e.encrypt(d.key, Buffer.from('stuck'), Buffer.from('aad')).catch(() => undefined);
    setTimeout(() => process.exit(0), 50);
  })();\`, { eval: true, workerData: d });
w.on('exit', () => {
  rules('# released\\n', 2);
  setTimeout(() => {
    const keep = [];
    for (let i = 0; i < 10000; i++) keep.push(Buffer.alloc(64 + (i % 200)));
    console.log('survived ' + keep.length);
  }, 300);
});
`,
    );
    const data = {
      control: fx.faults.controlPath,
      addon: path.resolve('build/Release/xks_pkcs11.node'),
      key: KEY,
      options: options({ threads: 1, poolMaxSize: 1, operationTimeoutMs: 300 }),
      mainLoads,
    };
    const r = spawnSync(process.execPath, [script, JSON.stringify(data)], {
      env: { ...process.env, MALLOC_PERTURB_: '165', GLIBC_TUNABLES: 'glibc.malloc.tcache_count=0' },
      encoding: 'utf8',
      timeout: 20_000,
    });
    fx.faults.clear();
    return { status: r.status, signal: r.signal, stdout: r.stdout.trim() };
  }

  it('a worker thread ending while its call is stuck frees nothing the stuck call still uses', () => {
    // The main thread loads the addon too, as the proxy's does. The teardown waits for the deadline,
    // the watchdog settles the call into the completion stack, and the teardown frees what it finds
    // there: not the job whose call is still inside the HSM.
    expect(teardownChild(true)).toEqual({ status: 0, signal: null, stdout: 'survived 10000' });
  });

  it('a worker thread ending while its call is stuck does not unload the code the call returns to', () => {
    // Only the worker thread loaded the addon: Node unloads (dlclose) a worker's addons when the
    // worker ends, while the call still has to return into them.
    expect(teardownChild(false)).toEqual({ status: 0, signal: null, stdout: 'survived 10000' });
  });
});

describe('bursts', () => {
  it('more concurrent calls than sessions wait for a session within the deadline', async () => {
    fx.faults.clear();
    const e = await open({ operationTimeoutMs: 1000 });
    fx.faults.set('delay C_Encrypt 1');
    const all = await Promise.all(Array.from({ length: 60 }, (_, i) => outcome(e.encrypt(KEY, Buffer.from(`b${i}`), AAD))));
    expect(all.filter((r) => !r.ok)).toEqual([]);
    expect(e.stats().sessionsOpen).toBeLessThanOrEqual(2);
    fx.faults.clear();
    // every ciphertext decrypts
    for (const [i, r] of all.entries()) {
      if (!r.ok) continue;
      const { ct, tag, iv } = splitSealed(r.value);
      expect((await e.decrypt(KEY, ct, tag, iv, AAD)).toString()).toBe(`b${i}`);
    }
    await e.close();
  });

  it('a burst past what the HSM can do in time gets XKS_TIMEOUT for the rest, never a hang', async () => {
    fx.faults.clear();
    const e = await open();
    fx.faults.set('delay C_Encrypt 20');
    const t0 = performance.now();
    const all = await Promise.all(Array.from({ length: 40 }, (_, i) => outcome(e.encrypt(KEY, Buffer.from(`c${i}`), AAD))));
    expect(performance.now() - t0).toBeLessThan(TIMEOUT + 150);
    const ok = all.filter((r) => r.ok);
    const timedOut = all.filter((r) => !r.ok && r.error.code === 'XKS_TIMEOUT');
    expect(ok.length + timedOut.length).toBe(all.length);
    expect(ok.length).toBeGreaterThan(0);
    expect(timedOut.length).toBeGreaterThan(0);
    fx.faults.clear();
    expect(await waitFor(() => e.stats().workersStuck === 0)).toBe(true);
    for (const [i, r] of all.entries()) {
      if (!r.ok) continue;
      const { ct, tag, iv } = splitSealed(r.value);
      expect((await e.decrypt(KEY, ct, tag, iv, AAD)).toString()).toBe(`c${i}`);
    }
    await e.close();
  });
});
