/**
 * The use record's bytes: the fields fragment made on each event loop (useFields) and the line
 * the writer thread frames around it (native/audit/log.cc) must be exactly what JSON.stringify of
 * the record's fields in their order gives, for any string a request can carry; the thread's time
 * stamps are the writer's clock in rfc3339Micros's format, and its chain is SHA-256 of each line.
 */
import { createHash, randomInt } from 'node:crypto';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { useValues } from '../src/audit/channel.js';
import { auditAddon, type NativeAuditChannel, type NativeAuditLog, USE_NOT_PLAIN, USE_QUEUED } from '../src/audit/native.js';
import { GENESIS, nowMicros, PLAIN, rfc3339Micros, useFields, type AuditUse } from '../src/audit/record.js';

const tricky = [
  '',
  'plain',
  'quote " in',
  'back\\slash',
  'new\nline',
  'tab\t',
  '\u0000\u001f\u007f',
  'Ünïcödé ✓',
  '\u2028\u2029',
  '\ud800 lone',
  'emoji 😀',
  '</script>',
  // Longer than the addon's first copy (8 KiB): copied again in full, also when the cut would
  // fall inside a character.
  'x'.repeat(10_000),
  '✓'.repeat(3000),
  `a${'😀'.repeat(2500)}`,
];

/** A use with random fields, a third of its strings from `tricky` (none when `withTricky` is false). */
function sample(withTricky = true): AuditUse {
  const pick = (): string =>
    withTricky && randomInt(3) === 0 ? tricky[randomInt(tricky.length)]! : `arn:aws:iam::${randomInt(1e9)}:user/u-${randomInt(1e6)}`;
  const maybe = (): string | undefined => (randomInt(3) === 0 ? undefined : pick());
  return {
    kmsRequestId: maybe(),
    kmsOperation: maybe(),
    awsPrincipalArn: maybe(),
    kmsKeyArn: maybe(),
    kmsViaService: maybe(),
    awsSourceVpc: maybe(),
    awsSourceVpce: maybe(),
    prefix: pick(),
    keyId: pick(),
    operation: pick(),
    outcome: pick(),
    status: [200, 400, 401, 500][randomInt(4)]!,
    micros: randomInt(1e7),
    accessKeyId: maybe(),
    client: pick(),
  };
}

/** The definition: JSON.stringify of an object with the fields in order, absent ones left out. */
function plain(u: AuditUse): string {
  const o: Record<string, unknown> = {};
  for (const k of [
    'kmsRequestId',
    'kmsOperation',
    'awsPrincipalArn',
    'kmsKeyArn',
    'kmsViaService',
    'awsSourceVpc',
    'awsSourceVpce',
  ] as const) {
    if (u[k] !== undefined) o[k] = u[k];
  }
  Object.assign(o, { prefix: u.prefix, keyId: u.keyId, operation: u.operation, outcome: u.outcome, status: u.status, micros: u.micros });
  if (u.accessKeyId !== undefined) o.accessKeyId = u.accessKeyId;
  o.client = typeof u.client === 'string' ? u.client : Buffer.from(u.client).toString('latin1');
  return JSON.stringify(o).slice(1, -1);
}

const INSTANCE = '8f0c1111-2222-4333-8444-555566667777';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('audit use records', () => {
  it('useFields gives the bytes JSON.stringify gives, for every kind of string', () => {
    for (const s of tricky) {
      const u: AuditUse = {
        prefix: s,
        keyId: s,
        operation: s,
        outcome: s,
        status: 200,
        micros: 1,
        client: s,
        kmsRequestId: s,
        accessKeyId: s,
      };
      expect(useFields(u)).toBe(plain(u));
    }
    for (let i = 0; i < 3000; i++) {
      const u = sample();
      expect(useFields(u)).toBe(plain(u));
    }
  });

  /** A writer thread with no file yet (before-response: each group written at once). */
  function openLog(): NativeAuditLog {
    return new (auditAddon().AuditLog)(
      {
        durable: true,
        writeMs: 10,
        syncMs: 100,
        checkpointEvery: 1_000_000,
        checkpointSecs: 3600,
        instance: INSTANCE,
        copyOut: false,
        nowMicros: nowMicros(),
      },
      () => undefined,
    );
  }

  /** Writes `uses` through a fresh writer thread, `queue` handing each to a channel; the lines written. */
  async function writeTrail(
    uses: AuditUse[],
    queue: (channel: NativeAuditChannel, u: AuditUse, id: number) => void,
  ): Promise<{ lines: string[]; before: number; after: number }> {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'xks-audit-record-'));
    dirs.push(dir);
    const file = path.join(dir, 'trail.jsonl');
    const { AuditChannel } = auditAddon();
    const log = openLog();
    const before = nowMicros();
    try {
      log.useFile(1, openSync(file, 'a'), 1, GENESIS, Number.POSITIVE_INFINITY);
      const written = new Set<number>();
      const done = new Promise<void>((resolve) => {
        const channel = new AuditChannel(log.id(), (ids, count, ok) => {
          expect(ok).toBe(true);
          for (const id of ids.subarray(0, count)) written.add(id);
          if (written.size === uses.length) {
            channel.close();
            resolve();
          }
        });
        for (const [i, u] of uses.entries()) queue(channel, u, i + 1);
        channel.kick(); // before-response: the loop's turn is over
      });
      await done;
    } finally {
      log.close();
    }
    const after = nowMicros();
    const lines = readFileSync(file, 'utf8').split('\n');
    expect(lines.pop()).toBe('');
    expect(lines).toHaveLength(uses.length);
    return { lines, before, after };
  }

  /** Each line is the frame around plain(use), chained with SHA-256. */
  function expectChained(lines: string[], uses: AuditUse[]): void {
    let prev = GENESIS;
    lines.forEach((line, i) => {
      const o = JSON.parse(line) as { time: string };
      const expected = `{"v":1,"type":"use","seq":${i + 1},"time":"${o.time}","instance":"${INSTANCE}",${plain(uses[i]!)},"prev":"${prev}"}`;
      expect(line).toBe(expected);
      expect(line).toBe(JSON.stringify(JSON.parse(line)));
      prev = createHash('sha256').update(line, 'utf8').digest('hex');
    });
  }

  it('the writer thread frames, stamps and chains each line as JSON.stringify and SHA-256 define it', async () => {
    const uses = Array.from({ length: 500 }, () => sample());
    const { lines, before, after } = await writeTrail(uses, (channel, u, id) => expect(channel.record(useFields(u), id)).toBe(true));
    expectChained(lines, uses);
    let lastTime = '';
    for (const line of lines) {
      const { time } = JSON.parse(line) as { time: string };
      // The writer's clock, in rfc3339Micros's format, never going back.
      expect(time >= rfc3339Micros(before) && time <= rfc3339Micros(after)).toBe(true);
      expect(time >= lastTime).toBe(true);
      lastTime = time;
    }
  });

  it('a channel makes the same bytes from the values, and leaves strings that need escapes to useFields', async () => {
    const uses = Array.from({ length: 1500 }, (_, i) => {
      const u = sample(i % 3 === 0);
      // The client as uWS gives it (its text's bytes), when those are ASCII.
      if (i % 2 === 0 && /^[\x00-\x7f]*$/.test(u.client as string)) u.client = new TextEncoder().encode(u.client as string).buffer;
      return u;
    });
    let framed = 0;
    const { lines } = await writeTrail(uses, (channel, u, id) => {
      const client = typeof u.client === 'string' ? u.client : Buffer.from(u.client).toString('latin1');
      const plainOnly = Object.values({ ...u, client }).every((v) => typeof v !== 'string' || PLAIN.test(v));
      const r = useValues(channel, u, id);
      expect(r).toBe(plainOnly ? USE_QUEUED : USE_NOT_PLAIN);
      if (r === USE_NOT_PLAIN) expect(channel.record(useFields(u), id)).toBe(true);
      else framed++;
    });
    expectChained(lines, uses);
    expect(framed).toBeGreaterThan(100);
    expect(framed).toBeLessThan(uses.length);
  });

  it('a channel leaves numbers JSON.stringify would not write as integers to useFields', () => {
    const log = openLog();
    try {
      const channel = new (auditAddon().AuditChannel)(log.id(), () => undefined);
      for (const micros of [1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 60]) {
        const u: AuditUse = { prefix: '/p', keyId: 'k', operation: 'Encrypt', outcome: 'ok', status: 200, micros, client: '127.0.0.1' };
        expect(useValues(channel, u, 0)).toBe(USE_NOT_PLAIN);
      }
      channel.close();
    } finally {
      log.close();
    }
  });
});
