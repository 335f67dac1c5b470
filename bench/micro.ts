/** tinybench micro-benchmarks of the hot-path pieces, in this process. */
import { randomBytes } from 'node:crypto';
import { resolve as resolvePath } from 'node:path';
import { Bench } from 'tinybench';
import { cdivSha256, decodeBase64Strict, hsmAad } from '../src/codec.js';
import { Metrics } from '../src/metrics.js';
import { OsoAuthorizer } from '../src/auth/oso.js';
import type { RequestMetadata } from '../src/validate.js';
import { SigV4Verifier, type Credential } from '../src/sigv4.js';
import { decryptInput, decryptShape } from '../src/ops/decrypt.js';
import { encryptInput, encryptShape } from '../src/ops/encrypt.js';
import { parseJsonObject } from '../src/validate.js';
import type { NativeEngine } from '../src/hsm/addon.js';
import { decryptBody, encryptBody } from './lib/requests.js';
import { makeSigner, REGION, SERVICE, signPost } from './lib/sign.js';
import { KEY_LABEL } from './lib/token.js';

export interface MicroRow {
  name: string;
  opsPerSec: number;
  /** Mean time per operation, microseconds. */
  meanUs: number;
  p99Us: number;
  /** Relative margin of error of the mean, percent. */
  rme: number;
  samples: number;
}

const LIMITS = { max_plaintext_in_base64: 8192, max_aad_in_base64: 16384 };

export async function runMicro(engine: NativeEngine, quick: boolean): Promise<MicroRow[]> {
  const bench = new Bench({ time: quick ? 80 : 400, warmupTime: quick ? 20 : 100, warmupIterations: 20 });

  // SigV4 on a request signed by the AWS SDK signer, like KMS signs.
  const creds: Credential = { accessKeyId: 'AKIABENCHBENCHBENCH0', secretAccessKey: randomBytes(30).toString('base64') };
  const host = '127.0.0.1:8000';
  const path = `/bench/prefix/kms/xks/v1/keys/${KEY_LABEL}/encrypt`;
  const body32 = encryptBody(randomBytes(32), randomBytes(64));
  const body32Buf = Buffer.from(body32);
  const headers = await signPost(makeSigner(creds), host, path, body32, new Date());
  const verifier = new SigV4Verifier({ region: REGION, service: SERVICE });
  const getHeader = (n: string): string => headers[n] ?? '';
  const lookup = (id: string): Credential | undefined => (id === creds.accessKeyId ? creds : undefined);
  bench.add('sigv4 begin+finish (KMS-signed encrypt 32 B)', () => {
    const p = verifier.begin('POST', path, '', getHeader);
    if (!p.ok) throw new Error(p.reason);
    const r = verifier.finish(p, body32Buf, lookup);
    if (!r.ok) throw new Error(r.reason);
  });

  const body4300Buf = Buffer.from(encryptBody(randomBytes(4300), randomBytes(64)));
  bench.add('parse+validate encrypt 32 B body', () => {
    encryptInput(encryptShape(parseJsonObject(body32Buf)), LIMITS);
  });
  bench.add('parse+validate encrypt 4300 B body', () => {
    encryptInput(encryptShape(parseJsonObject(body4300Buf)), LIMITS);
  });

  const aad64 = randomBytes(64);
  const hsm = hsmAad(aad64, undefined);
  const sealed32 = await engine.encrypt(KEY_LABEL, randomBytes(32), hsm);
  const n = sealed32.length - 28;
  const ct = sealed32.subarray(0, n);
  const tag = sealed32.subarray(n, n + 16);
  const iv = sealed32.subarray(n + 16);
  const decBodyBuf = Buffer.from(
    decryptBody({
      ciphertext: ct.toString('base64'),
      authenticationTag: tag.toString('base64'),
      initializationVector: iv.toString('base64'),
      aad: aad64.toString('base64'),
    }),
  );
  bench.add('parse+validate decrypt 32 B body', () => {
    decryptInput(decryptShape(parseJsonObject(decBodyBuf)), LIMITS);
  });
  bench.add('hsmAad (64 B AAD)', () => {
    hsmAad(aad64, undefined);
  });
  bench.add('cdivSha256 (64 B AAD, 32 B ct)', () => {
    cdivSha256(aad64, undefined, iv, ct, tag);
  });

  // The per-request cost of /metrics: one request outcome + latency, one HSM call duration.
  const metrics = new Metrics('bench', () => ({ sessionsOpen: 0, sessionsIdle: 0, inFlight: 0, reinitializations: 0 }));
  const route = metrics.route('Encrypt', '/bench/prefix');
  const hsmCall = metrics.hsm('encrypt');
  bench.add('metrics: record a request and its HSM call', () => {
    route.record('ok', 0.00042);
    hsmCall.observe(0.00007);
  });

  const b32 = randomBytes(32);
  const b4300 = randomBytes(4300);
  const s32 = b32.toString('base64');
  const s4300 = b4300.toString('base64');
  bench.add('base64 encode 32 B', () => {
    b32.toString('base64');
  });
  bench.add('base64 decode 32 B (strict: decode + re-encode check)', () => {
    if (decodeBase64Strict(s32) === undefined) throw new Error('b64');
  });
  bench.add('base64 encode 4300 B', () => {
    b4300.toString('base64');
  });
  bench.add('base64 decode 4300 B (strict: decode + re-encode check)', () => {
    if (decodeBase64Strict(s4300) === undefined) throw new Error('b64');
  });

  // Secondary authorization (Oso, a policy with the Rust sample's rules): a decision the engine
  // must evaluate, and one answered from the per-policy decision cache.
  const policy = resolvePath('test/fixtures/oso/policy.polar');
  const osoCold = await OsoAuthorizer.fromFile(policy, { cache: false });
  const osoCached = await OsoAuthorizer.fromFile(policy);
  const osoMeta: RequestMetadata = {
    kmsRequestId: '4112f4d6-db54-4af4-ae30-c55a22a8dfae',
    kmsOperation: 'Encrypt',
    awsPrincipalArn: 'arn:aws:iam::123456789012:user/Alice',
    kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab',
    kmsViaService: 'ebs',
  };
  bench.add('oso policy decision, evaluated (encrypt allow)', async () => {
    await osoCold.authorize('/example/uri/path/prefix', 'encrypt', osoMeta);
  });
  bench.add('oso policy decision, cached (encrypt allow)', async () => {
    await osoCached.authorize('/example/uri/path/prefix', 'encrypt', osoMeta);
  });

  const pt32 = randomBytes(32);
  const pt4300 = randomBytes(4300);
  bench.add('addon round trip: await engine.random(1)', async () => {
    await engine.random(1);
  });
  bench.add('addon await encrypt 32 B (one at a time)', async () => {
    await engine.encrypt(KEY_LABEL, pt32, hsm);
  });
  bench.add('addon await decrypt 32 B (one at a time)', async () => {
    await engine.decrypt(KEY_LABEL, ct, tag, iv, hsm);
  });
  bench.add('addon await encrypt 4300 B (one at a time)', async () => {
    await engine.encrypt(KEY_LABEL, pt4300, hsm);
  });

  await bench.run();
  const rows: MicroRow[] = [];
  for (const t of bench.tasks) {
    const r = t.result;
    if (r.state === 'errored') throw new Error(`micro ${t.name}: ${r.error.message}`);
    if (r.state !== 'completed') throw new Error(`micro ${t.name}: ${r.state}`);
    rows.push({
      name: t.name,
      opsPerSec: 1000 / r.period,
      meanUs: r.period * 1000,
      p99Us: r.latency.p99 * 1000,
      rme: r.latency.rme,
      samples: r.latency.df + 1,
    });
  }
  return rows;
}

/** The addon alone: encrypt 32 B with `inFlight` requests outstanding, for `ms`. */
export async function addonRate(engine: NativeEngine, inFlight: number, ms: number, plaintextBytes = 32): Promise<number> {
  const pt = randomBytes(plaintextBytes);
  const aad = hsmAad(randomBytes(64), undefined);
  let done = 0;
  let stop = false;
  const loop = async (): Promise<void> => {
    while (!stop) {
      await engine.encrypt(KEY_LABEL, pt, aad);
      done++;
    }
  };
  const warm = Date.now() + Math.min(300, ms / 4);
  const runners = Array.from({ length: inFlight }, loop);
  while (Date.now() < warm) await new Promise((r) => setTimeout(r, 10));
  const d0 = done;
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, ms));
  const rate = ((done - d0) * 1000) / (performance.now() - t0);
  stop = true;
  await Promise.all(runners);
  return rate;
}
