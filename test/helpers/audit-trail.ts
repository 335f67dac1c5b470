/**
 * Audit trails for the readers' tests, by the format contract (docs/audit.md): records serialized
 * with the contract's key order, the hash chain, and checkpoints HMAC'd in the real HSM. Used for the
 * shapes the running proxy makes only by accident (a torn tail, a crash right after a file began);
 * the tamper tests also run on trails the real proxy writes (test/audit-tamper.test.ts).
 */
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Hsm } from '../../src/hsm/hsm.js';

const ZERO = '0'.repeat(64);
const sha = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex');

export interface UseFields {
  kmsRequestId?: string;
  kmsOperation?: string;
  awsPrincipalArn?: string;
  kmsKeyArn?: string;
  keyId: string;
  operation: string;
  outcome?: string;
  status?: number;
  accessKeyId?: string;
}

interface OpenFile {
  name: string;
  lines: string[];
  torn: string;
}

export class TrailBuilder {
  readonly files: OpenFile[] = [];
  private head = ZERO;
  private clock = Date.parse('2026-03-01T09:00:00Z') * 1000;
  private readonly instance = '6f1c1a52-3a4e-4d7e-9c55-0c7d1b2a9e10';

  constructor(
    private readonly hsm: Hsm,
    private readonly hmacKeyId: string,
    private readonly prefix = 'xks-audit',
  ) {}

  private time(): string {
    this.clock += 1_234_567;
    const ms = Math.floor(this.clock / 1000);
    return `${new Date(ms).toISOString().slice(0, 19)}.${String(this.clock % 1_000_000).padStart(6, '0')}Z`;
  }

  private get current(): OpenFile {
    return this.files[this.files.length - 1]!;
  }

  private push(fields: Record<string, unknown>): void {
    const f = this.current;
    const rec = { v: 1, type: fields['type'], seq: f.lines.length, time: this.time(), instance: this.instance, ...fields, prev: this.head };
    const line = JSON.stringify(rec);
    f.lines.push(line);
    this.head = sha(line);
  }

  /** A new file (its start record); `torn`: the previous file's incomplete tail to leave behind. */
  start(reason: 'first' | 'restart' | 'rotate' | 'torn', period = '2026-03-01-09'): this {
    const prev = this.files[this.files.length - 1];
    const n = this.files.filter((f) => f.name.includes(`.${period}.`)).length + 1;
    this.files.push({ name: `${this.prefix}.${period}.${n}.jsonl`, lines: [], torn: '' });
    this.push({
      type: 'start',
      reason,
      ...(prev === undefined ? {} : { previousFile: prev.name, previousHash: this.head }),
      ...(reason === 'torn' ? { tornBytes: Buffer.byteLength(prev?.torn ?? '') } : {}),
      host: 'audit-test-host',
      version: '0.1.0',
      hmacKeyId: this.hmacKeyId,
    });
    return this;
  }

  use(u: UseFields): this {
    this.push({
      type: 'use',
      ...(u.kmsRequestId === undefined ? {} : { kmsRequestId: u.kmsRequestId }),
      ...(u.kmsOperation === undefined ? {} : { kmsOperation: u.kmsOperation }),
      ...(u.awsPrincipalArn === undefined ? {} : { awsPrincipalArn: u.awsPrincipalArn }),
      ...(u.kmsKeyArn === undefined ? {} : { kmsKeyArn: u.kmsKeyArn }),
      prefix: '/xyz',
      keyId: u.keyId,
      operation: u.operation,
      outcome: u.outcome ?? 'ok',
      status: u.status ?? 200,
      micros: 321,
      ...(u.accessKeyId === undefined ? { accessKeyId: 'AKIAAUDITTEST' } : { accessKeyId: u.accessKeyId }),
      client: '127.0.0.1',
    });
    return this;
  }

  async checkpoint(): Promise<this> {
    const f = this.current;
    const seq = f.lines.length;
    // The time is taken by push(); compute the HMAC over the record's own time.
    const time = this.peekTime();
    const mac = await this.hsm.hmacSign(this.hmacKeyId, Buffer.from(`xks-proxy-audit-v1\n${f.name}\n${seq}\n${time}\n${this.head}`));
    this.push({ type: 'checkpoint', records: seq, head: this.head, hmacKeyId: this.hmacKeyId, hmac: mac.toString('hex') });
    return this;
  }

  private peekTime(): string {
    const saved = this.clock;
    const t = this.time();
    this.clock = saved;
    return t;
  }

  /** Moves the clock (the next record's time follows this instant). */
  at(iso: string): this {
    this.clock = Date.parse(iso) * 1000;
    return this;
  }

  /** Leaves an incomplete line at the end of the current file (a crash mid-write). */
  tear(partial = '{"v":1,"type":"use","seq":'): this {
    this.current.torn = partial;
    return this;
  }

  write(dir: string): string[] {
    return this.files.map((f) => {
      const p = path.join(dir, f.name);
      writeFileSync(p, f.lines.map((l) => `${l}\n`).join('') + f.torn, { mode: 0o640 });
      return p;
    });
  }
}
