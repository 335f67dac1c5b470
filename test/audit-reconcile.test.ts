/**
 * `xks-proxy audit reconcile` (the real CLI): the trail's uses against CloudTrail KMS events from the
 * AWS documentation's examples (test/fixtures/cloudtrail/, both shapes: lookup-events output and an
 * S3 trail file, plain and gzipped), matched by the KMS request id, with a trail the real proxy
 * (in this process, real sockets, SoftHSM2) wrote while serving signed requests.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { audit } from './helpers/audit-tamper.js';
import { checkTrail } from './helpers/audit.js';
import { useAuditProxy } from './helpers/audit-proxy.js';
import { startTestProxy, type CallOptions } from './helpers/proxy.js';

const FIXTURES = path.resolve('test/fixtures/cloudtrail');
const XKS_KEY = 'abc01234567890fe';
const ALICE = 'arn:aws:iam::111122223333:user/Alice';
const ENCRYPT_ID = 'e1b881f8-2048-41f8-b6cc-382b7857ec63';
const DECRYPT_ID = 'f1b881f8-2048-41f8-b6cc-382b7857ec61';
const FAILED_DECRYPT_ID = 'f1b881f8-2048-41f8-b6cc-382b7857ec62';
const GDK_ID = 'd1b881f8-2048-41f8-b6cc-382b7857ec64';
const LEAKED_ID = '7e57a11d-0000-4000-8000-000000000001';
const KMS_KEY_ARN = 'arn:aws:kms:us-west-2:111122223333:key/0987dcba-09fe-87dc-65ba-ab0987654321';
const PREFIX = '/reconcile';
const CREDS: CallOptions = { accessKeyId: 'AKIDRECONCILEEXAMPLE1', secret: 'cmVjb25jaWxlLXJlY29uY2lsZS1yZWNvbmNpbGUtcmVj' };

const fx = useAuditProxy({ label: 'xks-audit-reconcile', prefix: PREFIX, creds: CREDS, keys: [XKS_KEY] });

let trail: string;
let spanTime: string;

type Json = Record<string, unknown>;

/** A fixture with every event's time moved into the trail's span (the fixtures' are from 2022). */
function retimed(name: string, time: string): string {
  const doc = JSON.parse(readFileSync(path.join(FIXTURES, name), 'utf8')) as Json;
  if (Array.isArray(doc['Records'])) for (const r of doc['Records'] as Json[]) r['eventTime'] = time;
  else
    for (const e of doc['Events'] as Json[]) {
      const inner = JSON.parse(e['CloudTrailEvent'] as string) as Json;
      inner['eventTime'] = time;
      e['CloudTrailEvent'] = JSON.stringify(inner);
    }
  const out = path.join(fx.work, `retimed-${name}`);
  writeFileSync(out, JSON.stringify(doc));
  return out;
}

beforeAll(async () => {
  // The external key of the documentation's examples, in the HSM under its xksKeyId.
  await fx.withHsm((hsm) => hsm.createKey(XKS_KEY, { encrypt: true, decrypt: true }));
  trail = path.join(fx.work, 'trail');
  const proxy = await startTestProxy(fx.spec(trail));
  try {
    const meta = { awsPrincipalArn: ALICE, kmsKeyArn: KMS_KEY_ARN };
    const enc = await fx.post(proxy.base, `/keys/${XKS_KEY}/encrypt`, {
      requestMetadata: { ...meta, kmsOperation: 'Encrypt', kmsRequestId: ENCRYPT_ID },
      plaintext: 'AAECAwQFBgcICQoLDA0ODw==',
      encryptionAlgorithm: 'AES_GCM',
    });
    expect(enc.status).toBe(200);
    const sealed = {
      ciphertext: enc.json.ciphertext,
      initializationVector: enc.json.initializationVector,
      authenticationTag: enc.json.authenticationTag,
    };
    const dec = { ...sealed, encryptionAlgorithm: 'AES_GCM' };
    expect(
      (
        await fx.post(proxy.base, `/keys/${XKS_KEY}/decrypt`, {
          requestMetadata: { ...meta, kmsOperation: 'Decrypt', kmsRequestId: DECRYPT_ID },
          ...dec,
        })
      ).status,
    ).toBe(200);
    // A request signed with the key store's credential that AWS KMS never made (a leaked credential).
    expect(
      (
        await fx.post(proxy.base, `/keys/${XKS_KEY}/decrypt`, {
          requestMetadata: { ...meta, kmsOperation: 'Decrypt', kmsRequestId: LEAKED_ID },
          ...dec,
        })
      ).status,
    ).toBe(200);
    // Refused at authentication (a wrong secret): not a use.
    const refused = await fx.post(
      proxy.base,
      `/keys/${XKS_KEY}/decrypt`,
      { requestMetadata: { ...meta, kmsOperation: 'Decrypt', kmsRequestId: 'refused-1' }, ...dec },
      { ...CREDS, secret: 'bm90LXRoZS1zZWNyZXQtbm90LXRoZS1zZWNyZXQtbm90' },
    );
    expect(refused.status).toBe(401);
    // KMS's health checks have no CloudTrail event.
    expect(
      (await fx.post(proxy.base, `/health`, { requestMetadata: { kmsRequestId: 'health-1', kmsOperation: 'CreateCustomKeyStore' } }))
        .status,
    ).toBe(200);
  } finally {
    await proxy.stop();
  }
  // CloudTrail's times have second resolution: the second the first request was recorded in.
  spanTime = `${String(checkTrail(trail).uses[0]!.time).slice(0, 19)}Z`;
});

interface ReconcileJson {
  ok: boolean;
  kmsEvents: number;
  matched: number;
  refused: number;
  outsideSpan: number;
  unmatchedUses: Json[];
  unseenEvents: Json[];
  unseenFailedEvents: Json[];
  mismatches: { problem: string }[];
}

async function reconcile(...args: string[]): Promise<{ code: number | null; r: ReconcileJson; stdout: string }> {
  const run = await audit(['reconcile', ...args, '--json'], {});
  return { code: run.code, r: JSON.parse(run.stdout) as ReconcileJson, stdout: run.stdout };
}

describe('audit reconcile', () => {
  it('reads the documentation examples in both shapes', async () => {
    // As published (2022): the two unmatched XKS events are outside the trail's span, not judged; the
    // standard key's event is no XKS use.
    for (const f of ['lookup-events.json', 's3-trail.json']) {
      const { r } = await reconcile('--cloudtrail', path.join(FIXTURES, f), trail);
      expect(r.kmsEvents).toBe(5);
      expect(r.outsideSpan).toBe(2);
      expect(r.unseenFailedEvents).toEqual([]);
      expect(r.unseenEvents).toEqual([]);
      expect(r.matched).toBe(2);
    }
  });

  it('finds the use KMS never made and the KMS event the proxy never saw', async () => {
    const time = spanTime;
    const results = [];
    for (const f of ['lookup-events.json', 's3-trail.json']) results.push(await reconcile('--cloudtrail', retimed(f, time), trail));
    const gz = path.join(fx.work, 's3-trail.json.gz');
    writeFileSync(gz, gzipSync(readFileSync(retimed('s3-trail.json', time))));
    results.push(await reconcile('--cloudtrail', gz, trail));
    for (const { code, r } of results) {
      expect(code).toBe(1);
      expect(r.ok).toBe(false);
      expect(r.matched).toBe(2);
      expect(r.refused).toBe(1);
      expect(r.unmatchedUses.map((u) => [u['kmsRequestId'], u['accessKeyId']])).toEqual([[LEAKED_ID, CREDS.accessKeyId]]);
      expect(r.unseenEvents.map((e) => [e['requestID'], e['eventName'], e['xksKeyId']])).toEqual([[GDK_ID, 'GenerateDataKey', XKS_KEY]]);
      expect(r.unseenFailedEvents.map((e) => [e['requestID'], e['errorCode']])).toEqual([[FAILED_DECRYPT_ID, 'KMSInvalidStateException']]);
      expect(r.mismatches).toEqual([]);
    }
    // The human report names them.
    const human = await audit(['reconcile', '--cloudtrail', retimed('s3-trail.json', time), trail], {});
    expect(human.code).toBe(1);
    expect(human.stdout).toMatch(
      /proxy uses with no AWS KMS event[^\n]*: 1\n {2}\S+ Decrypt ok key=abc01234567890fe .*kmsRequestId=7e57a11d-0000-4000-8000-000000000001 .*accessKeyId=AKIDRECONCILEEXAMPLE1 client=127.0.0.1/,
    );
    expect(human.stdout).toMatch(new RegExp(`never saw: 1\\n {2}${time} GenerateDataKey requestID=${GDK_ID} xksKeyId=${XKS_KEY}`));
  });

  it('a use whose CloudTrail event names another operation is a mismatch; another key store is not expected here', async () => {
    const time = spanTime;
    const doc = JSON.parse(readFileSync(retimed('s3-trail.json', time), 'utf8')) as { Records: Json[] };
    for (const e of doc.Records) if (e['requestID'] === ENCRYPT_ID) e['eventName'] = 'ReEncrypt';
    const swapped = path.join(fx.work, 'swapped.json');
    writeFileSync(swapped, JSON.stringify(doc));
    const { r } = await reconcile('--cloudtrail', swapped, trail);
    expect(r.mismatches.map((m) => m.problem)).toEqual(['the proxy was told Encrypt, CloudTrail says ReEncrypt']);
    const other = await reconcile('--cloudtrail', retimed('s3-trail.json', time), '--custom-key-store-id', 'cks-0000000000000000', trail);
    expect(other.r.unseenEvents).toEqual([]);
    expect(other.r.unmatchedUses).toHaveLength(1);
  });

  it('usage errors exit 2', async () => {
    expect((await audit(['reconcile', trail], {})).code).toBe(2);
    expect((await audit(['reconcile', '--cloudtrail', path.join(fx.work, 'none.json'), trail], {})).code).toBe(2);
    writeFileSync(path.join(fx.work, 'bad.json'), '{"Something":[]}');
    expect((await audit(['reconcile', '--cloudtrail', path.join(fx.work, 'bad.json'), trail], {})).code).toBe(2);
  });
});
