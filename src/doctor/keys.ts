/**
 * Doctor, group "key <id>": every key id of every key store names exactly one AES-256 secret key
 * that can encrypt and decrypt, a round trip works in the configured IV mode, and it fits KMS's
 * 250 ms budget.
 */
import { randomBytes } from 'node:crypto';
import { hsmAad } from '../codec.js';
import type { Config } from '../config.js';
import type { Hsm } from '../hsm/hsm.js';
import { XksError } from '../errors.js';
import { ok, problem, type Finding } from './report.js';

/** KMS waits this long for any call. */
export const KMS_BUDGET_MS = 250;
/** Above this the HSM leaves less than half of KMS's budget to the network, TLS and the proxy. */
const HALF_BUDGET_MS = KMS_BUDGET_MS / 2;
/** Round trips per key; the fastest counts (a slow HSM is slow every time, a busy host only sometimes). */
const ROUND_TRIPS = 5;

const CREATE =
  'pkcs11-tool --module <PKCS11_HSM_MODULE> --login --keygen --key-type AES:32 --label <id> (CKA_ENCRYPT and CKA_DECRYPT are set by default)';

/** Every key id of every key store, with the stores that list it. */
function keyIds(config: Config): Map<string, string[]> {
  const ids = new Map<string, string[]>();
  config.external_key_stores.forEach((s, i) => {
    for (const id of s.xks_key_id_set) ids.set(id, [...(ids.get(id) ?? []), `external_key_stores[${i}]`]);
  });
  return ids;
}

export async function checkKeys(config: Config, hsm: Hsm): Promise<Finding[]> {
  const out: Finding[] = [];
  for (const [id, stores] of keyIds(config)) out.push(...(await checkKey(config, hsm, id, stores)));
  return out;
}

async function checkKey(config: Config, hsm: Hsm, id: string, stores: string[]): Promise<Finding[]> {
  const G = `key ${id}`;
  const d = await hsm.describeKey(id);
  if (d.objects === 0) {
    return [
      problem(
        'fail',
        G,
        'exists',
        `no secret-key object labelled "${id}" in the token (listed by ${stores.join(', ')})`,
        'CreateKey with this XksKeyId: XksKeyNotFoundException; its KMS key later: KMSInvalidStateException',
        `create it: ${CREATE.replace('<id>', id)}`,
      ),
    ];
  }
  if (d.objects === 'several') {
    return [
      problem(
        'fail',
        G,
        'unique',
        `two or more secret-key objects are labelled "${id}": the proxy cannot tell which one KMS means`,
        'CreateKey: XksKeyNotFoundException (the proxy answers 404 KeyNotFoundException); its KMS key: KMSInvalidStateException',
        `keep one object with that label (pkcs11-tool --list-objects --type secrkey; --delete-object --type secrkey --id <the other's CKA_ID>)`,
      ),
    ];
  }
  const out = [ok(G, 'unique', 'exactly one secret-key object has this label')];
  if (d.keyType !== 'AES' || d.bits !== 256) {
    out.push(
      problem(
        'fail',
        G,
        'AES-256',
        `the key is ${d.keyType} of ${d.bits} bits: GetKeyMetadata reports keySpec ${d.keyType}_${d.bits}, KMS needs AES_256`,
        'CreateKey: XksKeyInvalidConfigurationException',
        `replace it with an AES key of 32 bytes: ${CREATE.replace('<id>', id)}`,
      ),
    );
    return out;
  }
  out.push(ok(G, 'AES-256', 'AES, 256 bits'));
  const missing = [d.encrypt ? '' : 'CKA_ENCRYPT', d.decrypt ? '' : 'CKA_DECRYPT'].filter((x) => x !== '');
  if (missing.length > 0) {
    out.push(
      problem(
        'fail',
        G,
        'usage',
        `${missing.join(' and ')} ${missing.length > 1 ? 'are' : 'is'} false: GetKeyMetadata's keyUsage lacks ${missing.map((m) => m.slice(4)).join(' and ')}`,
        'CreateKey: XksKeyInvalidConfigurationException (KMS needs keyUsage ENCRYPT and DECRYPT)',
        `recreate it (most HSMs fix CKA_ENCRYPT and CKA_DECRYPT at creation): ${CREATE.replace('<id>', id)}`,
      ),
    );
    return out;
  }
  out.push(ok(G, 'usage', 'CKA_ENCRYPT and CKA_DECRYPT'));
  out.push(...(await roundTrip(config, hsm, G, id)));
  return out;
}

/** Encrypt and decrypt as an Encrypt with CDIV does, ROUND_TRIPS times; the fastest one's latency. */
async function roundTrip(config: Config, hsm: Hsm, G: string, id: string): Promise<Finding[]> {
  const times: number[] = [];
  for (let i = 0; i < ROUND_TRIPS; i++) {
    const plaintext = randomBytes(32);
    const aad = hsmAad(randomBytes(16), config.server.ciphertext_metadata);
    const t0 = performance.now();
    let back: Buffer;
    try {
      const sealed = await hsm.encrypt(id, plaintext, aad);
      back = await hsm.decrypt(id, sealed.ciphertext, sealed.tag, sealed.iv, aad);
    } catch (e) {
      const why = e instanceof XksError ? `${e.errorName}: ${e.message}${e.detail ? ` (${e.detail})` : ''}` : String(e);
      const late = e instanceof XksError && e.errorName === 'DependencyTimeoutException';
      return [
        problem(
          'fail',
          G,
          'round trip',
          `encrypt + decrypt failed: ${why}`,
          late
            ? 'XKS_PROXY_TIMED_OUT-like: Encrypt answers 503 DependencyTimeoutException; KMS: KMSInvalidStateException'
            : 'Encrypt / Decrypt with its KMS key: KMSInvalidStateException (the proxy answers an error)',
          late
            ? `the HSM overran [pkcs11] operation_timeout_milli = ${config.pkcs11.operation_timeout_milli}: speed up the HSM or raise it (under 250 ms)`
            : 'see the PKCS#11 code; for an IV error see [hsm_capabilities]',
        ),
      ];
    }
    times.push(performance.now() - t0);
    if (!back.equals(plaintext)) {
      back.fill(0);
      return [
        problem(
          'fail',
          G,
          'round trip',
          'decrypt returned other bytes than were encrypted',
          'Decrypt: KMSInvalidStateException',
          'report it to the HSM vendor',
        ),
      ];
    }
    back.fill(0);
  }
  const ms = Math.min(...times);
  const found = `encrypt + decrypt in ${ms.toFixed(1)} ms (fastest of ${ROUND_TRIPS})`;
  const timeout = config.pkcs11.operation_timeout_milli;
  if (ms > KMS_BUDGET_MS) {
    return [
      problem(
        'fail',
        G,
        'latency',
        `${found}: above KMS's ${KMS_BUDGET_MS} ms for a whole call`,
        'XKS_PROXY_TIMED_OUT; Encrypt: KMSInvalidStateException',
        'move the proxy next to the HSM, or the HSM closer to the AWS region',
      ),
    ];
  }
  if (timeout > 0 && ms > timeout) {
    return [
      problem(
        'warn',
        G,
        'latency',
        `${found}: above [pkcs11] operation_timeout_milli = ${timeout}`,
        'Encrypt: 503 DependencyTimeoutException, KMSInvalidStateException',
        'raise operation_timeout_milli (keep it under 250 ms) or speed up the HSM',
      ),
    ];
  }
  if (ms > HALF_BUDGET_MS) {
    return [
      problem(
        'warn',
        G,
        'latency',
        `${found}: leaves less than half of KMS's ${KMS_BUDGET_MS} ms to the network and TLS`,
        'XKS_PROXY_TIMED_OUT when the network adds the rest',
        'move the proxy next to the HSM',
      ),
    ];
  }
  return [ok(G, 'round trip', `plaintext back in the configured IV mode`), ok(G, 'latency', `${found}, within KMS's ${KMS_BUDGET_MS} ms`)];
}
