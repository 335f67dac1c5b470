/**
 * An exception inside an engine job never leaks its session or leaves an operation active
 * (issue 11, B.8). The exception is a real std::bad_alloc: a child process runs the addon with
 * the fault module LD_PRELOADed, whose malloc fails one allocation of the output buffer's size
 * on an HSM worker thread (FAULTY_MALLOC_FAIL), after C_EncryptInit has started the operation.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { FAULTY_MODULE, useFaultyModule, type FaultControl } from './helpers/faulty.js';
import { makeKeyedToken } from './helpers/keyed-token.js';
import { TEST_KEYS, type TestToken } from './helpers/softhsm.js';

const ADDON = path.resolve('build/Release/xks_pkcs11.node');
// A 256 KiB plaintext: the job's output buffer (plaintext + tag + IV) grows to 512 KiB, an
// allocation of that size nothing else on the worker thread makes.
const PLAINTEXT = 256 * 1024;
const OUTPUT_ALLOCATION = 512 * 1024;

let base: TestToken;
let token: TestToken;
let faults: FaultControl;

beforeAll(async () => {
  base = await makeKeyedToken('xks-fault-throw');
  ({ token, faults } = useFaultyModule(base));
});

afterAll(() => base?.cleanup());

const CHILD = `
import { createRequire } from 'node:module';
const { Engine } = createRequire(import.meta.url)(${JSON.stringify(ADDON)});
const e = new Engine({ modulePath: process.env.MODULE, userPin: process.env.PIN, poolMaxSize: 1, poolTimeoutMs: 500, eagerClose: false, threads: 1, ivMode: 'random' });
const out = {};
const code = (p) => p.then(() => 'ok', (err) => err.code);
await e.open();
out.warm = await code(e.encrypt(process.env.KEY, Buffer.from('warm'), Buffer.alloc(0)));
out.big = await code(e.encrypt(process.env.KEY, Buffer.alloc(${PLAINTEXT}, 1), Buffer.alloc(0)));
out.stats = e.stats();
out.after = await code(e.encrypt(process.env.KEY, Buffer.alloc(${PLAINTEXT}, 2), Buffer.alloc(0)));
out.statsAfter = e.stats();
await e.close();
console.log(JSON.stringify(out));
`;

it('a std::bad_alloc after C_EncryptInit: the session is closed and its slot freed, the next call works', () => {
  const script = path.join(token.dir, 'throw-child.mjs');
  writeFileSync(script, CHILD);
  const before = faults.status().calls_by_fn;
  const r = spawnSync(process.execPath, [script], {
    env: {
      ...process.env,
      LD_PRELOAD: FAULTY_MODULE,
      FAULTY_MALLOC_FAIL: `${OUTPUT_ALLOCATION}:xks-hsm:1`,
      MODULE: FAULTY_MODULE,
      PIN: token.pin,
      KEY: TEST_KEYS.ordinary,
    },
    encoding: 'utf8',
    timeout: 20_000,
  });
  expect(r.status, r.stderr).toBe(0);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
  expect(out.warm).toBe('ok');
  expect(out.big).toBe('CKR_HOST_MEMORY'); // the bad_alloc, as the worker reports it
  // The slot came back (closed: the operation C_EncryptInit began may still be active).
  expect(out.stats).toMatchObject({ sessionsOpen: 0, sessionsIdle: 0, inFlight: 0 });
  // One session, so a leaked slot would make this XKS_POOL_EXHAUSTED, and an operation left
  // active on a reused session CKR_OPERATION_ACTIVE.
  expect(out.after).toBe('ok');
  expect(out.statsAfter).toMatchObject({ sessionsOpen: 1, sessionsIdle: 1 });
  const after = faults.status().calls_by_fn;
  const delta = (fn: string) => (after[fn] ?? 0) - (before[fn] ?? 0);
  expect(delta('C_EncryptInit')).toBe(3); // warm, big (then the throw), after
  expect(delta('C_Encrypt')).toBe(2); // the big one never reached C_Encrypt
  expect(delta('C_OpenSession')).toBe(2); // the first session, and a fresh one after the throw
});
