/**
 * Soak: the proxy under steady mixed traffic while the fault module (native-test/faulty)
 * injects HSM failures in cycles, for --seconds (default 300). Samples RSS, the engine's
 * open sessions and the fault module's own count of sessions open in SoftHSM2, and checks
 * at the end that both stayed flat, no request hung, and every ciphertext handed out
 * during the run still decrypts.
 *
 *   npm run soak -- [--seconds 300] [--concurrency 8] [--sample 5] [--timeout-ms 150] [--out file.json]
 *
 * Needs SoftHSM2 (softhsm2-util) and `npm run build:native` (builds build/Release/faulty_pkcs11.node).
 * Exit status 0 when every check passes, 1 otherwise.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseConfig } from '../src/config.js';
import { settingsToml } from '../src/dev/settings-toml.js';
import { initSoftHsmToken } from '../src/dev/softhsm.js';
import { loadAddon } from '../src/hsm/addon.js';
import { startProxy, type RunningProxy } from '../src/main.js';
import { parseArgs } from './lib/args.js';

const ROOT = (() => {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json'))) dir = path.dirname(dir);
  return dir;
})();
const FAULTY = path.join(ROOT, 'build/Release/faulty_pkcs11.node');
const PREFIX = '/soak/test/prefix';
const API = `${PREFIX}/kms/xks/v1`;
const KEY = 'soak-key';
const HEALTH_KEY = 'soak-health';
const POOL = 4;

const args = parseArgs('npm run soak -- [options]', {
  seconds: { type: 'number', help: 'length of the run', default: 300 },
  concurrency: { type: 'number', help: 'requests in flight', default: 8 },
  sample: { type: 'number', help: 'seconds between two samples', default: 5 },
  'timeout-ms': { type: 'number', help: '[pkcs11] operation_timeout_milli and session_pool_timeout_milli', default: 150 },
  out: { type: 'string', value: 'FILE', help: 'write the samples and checks to this JSON file' },
});
const SECONDS = args.seconds;
const CONCURRENCY = args.concurrency;
const SAMPLE_MS = args.sample * 1000;
const TIMEOUT_MS = args['timeout-ms'];

/** Fault scenarios, applied in turn for a few seconds each, with quiet time in between. */
const SCENARIOS: { name: string; rules: string[] }[] = [
  { name: 'device down', rules: ['fail * CKR_DEVICE_ERROR'] },
  { name: 'stuck encrypts', rules: ['block C_Encrypt'] },
  { name: 'slow decrypts', rules: [`delay C_Decrypt ${TIMEOUT_MS * 2} times=20`] },
  {
    name: 'sessions invalidated',
    rules: ['fail C_Encrypt CKR_SESSION_HANDLE_INVALID times=30', 'fail C_Decrypt CKR_SESSION_CLOSED times=30'],
  },
  { name: 'slow HSM', rules: ['delay * 15'] },
  { name: 'device removed', rules: ['fail C_Decrypt CKR_DEVICE_REMOVED times=5', 'fail C_GetSessionInfo CKR_DEVICE_REMOVED times=5'] },
  { name: 'everything stuck', rules: ['block *'] },
  { name: 'not initialized', rules: ['fail C_GenerateRandom CKR_CRYPTOKI_NOT_INITIALIZED times=3'] },
];
const FAULT_MS = 3000;
const QUIET_MS = 4000;

interface Sample {
  t: number;
  rssMb: number;
  heapMb: number;
  sessionsOpen: number;
  /** The session holding the key copies (session_key_copies) is open: one more at the module. */
  keySession: boolean;
  hsmOpenSessions: number;
  quarantined: number;
  stuck: number;
  inFlight: number;
  requests: number;
  fault: string;
}

interface Sealed {
  pt: string;
  ciphertext: string;
  iv: string;
  tag: string;
}

class Faults {
  private n = 0;
  constructor(
    readonly control: string,
    readonly status: string,
  ) {}
  set(rules: string[]): void {
    const tmp = `${this.control}.${++this.n}`;
    writeFileSync(tmp, `# ${this.n}\n${rules.join('\n')}\n`);
    renameSync(tmp, this.control);
  }
  openSessions(): number {
    if (!existsSync(this.status)) return 0;
    const m = /open_sessions (\d+)/.exec(readFileSync(this.status, 'utf8'));
    return m ? Number(m[1]) : 0;
  }
}

function settings(dir: string, pin: string): string {
  return settingsToml({
    port: 0,
    // One event loop: the session checks below compare one engine's count with the HSM's.
    workers: 1,
    region: 'us-east-1',
    service: 'kms-xks-proxy',
    tracing: { stdout: false, level: 'ERROR', directory: path.join(dir, 'logs'), rotation: 'NEVER' },
    sigv4: false,
    stores: [
      {
        prefix: PREFIX,
        accessKeyId: 'AKIDSOAKTEST000000001',
        secretAccessKey: 'c29hay1zb2FrLXNvYWstc29hay1zb2FrLXNvYWstc29haw==',
        keys: [KEY],
      },
    ],
    pkcs11: { pin, modulePath: FAULTY, poolMaxSize: POOL, poolTimeoutMs: TIMEOUT_MS, operationTimeoutMs: TIMEOUT_MS },
    healthCheck: { keyId: HEALTH_KEY, intervalSecs: 2, degradedLatencyMs: 50 },
  });
}

const META = {
  awsPrincipalArn: 'arn:aws:iam::123456789012:user/Soak',
  kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab',
  kmsOperation: 'Encrypt',
  kmsRequestId: '4112f4d6-db54-4af4-ae30-c55a22a8dfae',
};

async function post(base: string, p: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${base}${p}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // not JSON
  }
  return { status: res.status, json };
}

const decryptBody = (s: Sealed) => ({
  requestMetadata: { ...META, kmsOperation: 'Decrypt' },
  encryptionAlgorithm: 'AES_GCM',
  ciphertext: s.ciphertext,
  initializationVector: s.iv,
  authenticationTag: s.tag,
});

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? 0 : s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  if (!existsSync(FAULTY)) throw new Error(`${FAULTY} is missing: run npm run build:native`);
  const dir = mkdtempSync(path.join(existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'xks-soak-'));
  const pin = randomBytes(6).toString('hex');
  const { confPath: conf, modulePath: softhsm } = initSoftHsmToken(dir, 'xks-soak', pin, randomBytes(6).toString('hex'));
  const faults = new Faults(path.join(dir, 'faults.control'), path.join(dir, 'faults.status'));
  faults.set([]);
  Object.assign(process.env, {
    SOFTHSM2_CONF: conf,
    FAULTY_PKCS11_TARGET: softhsm,
    FAULTY_PKCS11_CONTROL: faults.control,
    FAULTY_PKCS11_STATUS: faults.status,
  });
  const { Engine } = loadAddon();
  const setup = new Engine({
    modulePath: FAULTY,
    userPin: pin,
    poolMaxSize: 1,
    poolTimeoutMs: 1000,
    eagerClose: false,
    threads: 1,
    ivMode: 'random',
  });
  await setup.open();
  await setup.createKey(KEY, { encrypt: true, decrypt: true });
  await setup.createKey(HEALTH_KEY, { encrypt: true, decrypt: true });
  await setup.close();

  const settingsPath = path.join(dir, 'settings.toml');
  writeFileSync(settingsPath, settings(dir, pin));
  const proxy: RunningProxy = await startProxy(parseConfig(readFileSync(settingsPath, 'utf8'), settingsPath));
  const base = `http://127.0.0.1:${proxy.port}`;

  const statuses = new Map<string, number>();
  const count = (k: string) => statuses.set(k, (statuses.get(k) ?? 0) + 1);
  const sealed: Sealed[] = []; // every ciphertext handed out (reservoir when large)
  const MAX_SEALED = 5000;
  let seen = 0;
  let requests = 0;
  let slowest = 0;
  let fault = 'none';
  const t0 = Date.now();
  const end = t0 + SECONDS * 1000;
  const samples: Sample[] = [];

  const sample = (): void => {
    const m = process.memoryUsage();
    const s = proxy.hsmStats();
    samples.push({
      t: Math.round((Date.now() - t0) / 1000),
      rssMb: Math.round((m.rss / 2 ** 20) * 10) / 10,
      heapMb: Math.round((m.heapUsed / 2 ** 20) * 10) / 10,
      sessionsOpen: s.sessionsOpen,
      keySession: s.keySessionOpen,
      hsmOpenSessions: faults.openSessions(),
      quarantined: s.sessionsQuarantined,
      stuck: s.workersStuck,
      inFlight: s.inFlight,
      requests,
      fault,
    });
    const x = samples[samples.length - 1]!;
    console.log(
      `t=${String(x.t).padStart(4)}s rss=${x.rssMb}MB heap=${x.heapMb}MB sessions=${x.sessionsOpen}${x.keySession ? '+1' : ''} hsm_sessions=${x.hsmOpenSessions} ` +
        `quarantined=${x.quarantined} stuck=${x.stuck} requests=${x.requests} fault=${x.fault}`,
    );
  };

  const worker = async (): Promise<void> => {
    let i = 0;
    while (Date.now() < end) {
      const r = Math.random();
      const started = performance.now();
      let op: string;
      let res: { status: number; json: Record<string, unknown> };
      if (r < 0.5 || sealed.length === 0) {
        op = 'encrypt';
        const pt = `soak-${process.pid}-${++i}-${Math.random()}`;
        res = await post(base, `${API}/keys/${KEY}/encrypt`, {
          requestMetadata: META,
          plaintext: Buffer.from(pt).toString('base64'),
          encryptionAlgorithm: 'AES_GCM',
        });
        if (res.status === 200) {
          const s = {
            pt,
            ciphertext: res.json.ciphertext as string,
            iv: res.json.initializationVector as string,
            tag: res.json.authenticationTag as string,
          };
          ++seen;
          if (sealed.length < MAX_SEALED) sealed.push(s);
          else if (Math.random() < MAX_SEALED / seen) sealed[Math.floor(Math.random() * MAX_SEALED)] = s;
        }
      } else if (r < 0.8) {
        op = 'decrypt';
        const s = sealed[Math.floor(Math.random() * sealed.length)]!;
        res = await post(base, `${API}/keys/${KEY}/decrypt`, decryptBody(s));
        if (res.status === 200 && Buffer.from(res.json.plaintext as string, 'base64').toString() !== s.pt) count('decrypt WRONG PLAINTEXT');
      } else if (r < 0.9) {
        op = 'metadata';
        res = await post(base, `${API}/keys/${KEY}/metadata`, { requestMetadata: { ...META, kmsOperation: 'DescribeKey' } });
      } else {
        op = 'health';
        res = await post(base, `${API}/health`, { requestMetadata: { kmsOperation: 'CreateCustomKeyStore', kmsRequestId: 'soak' } });
      }
      slowest = Math.max(slowest, performance.now() - started);
      ++requests;
      count(`${op} ${res.status}${res.status === 200 ? '' : ` ${String(res.json.errorName)}`}`);
    }
  };

  const faultLoop = async (): Promise<void> => {
    let k = 0;
    await new Promise((r) => setTimeout(r, QUIET_MS));
    while (Date.now() + FAULT_MS + 1000 < end) {
      const sc = SCENARIOS[k++ % SCENARIOS.length]!;
      fault = sc.name;
      faults.set(sc.rules);
      await new Promise((r) => setTimeout(r, FAULT_MS));
      faults.set([]);
      fault = 'none';
      await new Promise((r) => setTimeout(r, Math.min(QUIET_MS, Math.max(0, end - Date.now()))));
    }
  };

  sample();
  const timer = setInterval(sample, SAMPLE_MS);
  await Promise.all([faultLoop(), ...Array.from({ length: CONCURRENCY }, () => worker())]);
  clearInterval(timer);
  faults.set([]);
  // Let stuck calls come back and the pool settle.
  const settleBy = Date.now() + 5000;
  while (Date.now() < settleBy && (proxy.hsmStats().workersStuck > 0 || proxy.hsmStats().sessionsQuarantined > 0)) {
    await new Promise((r) => setTimeout(r, 50));
  }
  await new Promise((r) => setTimeout(r, 500));
  fault = 'final';
  sample();

  // Every ciphertext handed out during the run decrypts.
  let undecryptable = 0;
  for (const s of sealed) {
    const res = await post(base, `${API}/keys/${KEY}/decrypt`, decryptBody(s));
    if (res.status !== 200 || Buffer.from(res.json.plaintext as string, 'base64').toString() !== s.pt) ++undecryptable;
  }
  const final = samples[samples.length - 1]!;
  await proxy.stop();
  rmSync(dir, { recursive: true, force: true });

  // Flatness: after warm-up (first quarter), RSS may not keep growing, sessions stay bounded.
  const warm = samples.slice(Math.max(1, Math.floor(samples.length / 4)));
  const firstHalf = warm.slice(0, Math.max(1, Math.floor(warm.length / 2)));
  const lastHalf = warm.slice(Math.floor(warm.length / 2));
  const rssEarly = median(firstHalf.map((s) => s.rssMb));
  const rssLate = median(lastHalf.map((s) => s.rssMb));
  const rssGrowth = rssLate - rssEarly;
  const maxSessions = Math.max(...samples.map((s) => s.sessionsOpen));
  const maxHsmSessions = Math.max(...samples.map((s) => s.hsmOpenSessions));
  const ok200 = [...statuses.entries()].filter(([k]) => / 200$/.test(k)).reduce((a, [, v]) => a + v, 0);
  const checks: [string, boolean][] = [
    [`most requests succeed: ${ok200}/${requests} answered 200 (>= 50%)`, ok200 * 2 >= requests && ok200 > 0],
    [`ciphertexts handed out: ${seen} (> 0)`, seen > 0],
    [
      `RSS flat: late median ${rssLate} MB vs early ${rssEarly} MB (growth ${rssGrowth.toFixed(1)} MB <= max(24 MB, 15%))`,
      rssGrowth <= Math.max(24, rssEarly * 0.15),
    ],
    [`engine sessions bounded: max ${maxSessions} <= ${2 * POOL} (pool + quarantine)`, maxSessions <= 2 * POOL],
    [
      `HSM sessions bounded: max ${maxHsmSessions} <= ${2 * POOL + 2} (pool + quarantine + key copies + 1 in passing)`,
      maxHsmSessions <= 2 * POOL + 2,
    ],
    [
      `final sessions: engine ${final.sessionsOpen}${final.keySession ? ' + 1 holding the key copies' : ''}, HSM ${final.hsmOpenSessions} (equal, pool <= ${POOL})`,
      final.sessionsOpen + (final.keySession ? 1 : 0) === final.hsmOpenSessions && final.sessionsOpen <= POOL,
    ],
    [
      `no stuck threads or quarantined sessions at the end (${final.stuck}, ${final.quarantined})`,
      final.stuck === 0 && final.quarantined === 0,
    ],
    [`no request hung: slowest ${slowest.toFixed(0)} ms < ${TIMEOUT_MS * 2 + 250} ms`, slowest < TIMEOUT_MS * 2 + 250],
    [`every ciphertext decrypts: ${sealed.length - undecryptable}/${sealed.length} (of ${seen} handed out)`, undecryptable === 0],
    [`no wrong plaintext`, !statuses.has('decrypt WRONG PLAINTEXT')],
  ];
  console.log('\nresponses:');
  for (const [k, v] of [...statuses.entries()].sort()) console.log(`  ${k.padEnd(48)} ${v}`);
  console.log(`\n${requests} requests in ${SECONDS} s, concurrency ${CONCURRENCY}, operation_timeout_milli ${TIMEOUT_MS}`);
  for (const [what, ok] of checks) console.log(`${ok ? 'PASS' : 'FAIL'}  ${what}`);
  if (args.out) {
    writeFileSync(
      args.out,
      JSON.stringify(
        {
          seconds: SECONDS,
          concurrency: CONCURRENCY,
          timeoutMs: TIMEOUT_MS,
          requests,
          statuses: Object.fromEntries(statuses),
          samples,
          checks,
        },
        null,
        2,
      ),
    );
  }
  process.exitCode = checks.every(([, ok]) => ok) ? 0 : 1;
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? (e.stack ?? e.message) : String(e));
  process.exit(1);
});
