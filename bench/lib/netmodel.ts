/**
 * The network-HSM model for the bench: the fault-injecting PKCS#11 module
 * (native-test/faulty/faulty_pkcs11.c, built by `npm run build:native`) in front of the bench's
 * SoftHSM2 token with an `rtt <ms>` rule: every call that would cross the network sleeps
 * that long, and its status file counts the round trips. One model = one control file and one
 * status file, so that the proxy processes and the bench's own engines never share counters.
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from './procs.js';
import type { BenchToken } from './token.js';

export const FAULTY_MODULE = path.join(ROOT, 'build', 'Release', 'faulty_pkcs11.node');

export interface ModelStatus {
  /** Calls that crossed the modelled network (all but length-only queries). */
  roundTrips: number;
  openSessions: number;
  maxOpenSessions: number;
  maxInFlight: number;
  sessionCountRefused: number;
  /** Calls per PKCS#11 function, e.g. C_Encrypt; length-only queries as C_Encrypt.len. */
  byFn: Record<string, number>;
}

export class NetModel {
  readonly modulePath = FAULTY_MODULE;
  readonly control: string;
  readonly statusFile: string;
  private seq = 0;

  constructor(
    private readonly token: BenchToken,
    name: string,
  ) {
    if (!existsSync(FAULTY_MODULE)) throw new Error(`${FAULTY_MODULE} is missing: run npm run build:native`);
    this.control = path.join(token.dir, `${name}.control`);
    this.statusFile = path.join(token.dir, `${name}.status`);
    this.setRtt(0);
  }

  /** The environment that points a process's fault module at this model. */
  env(): Record<string, string> {
    return {
      FAULTY_PKCS11_TARGET: this.token.modulePath,
      FAULTY_PKCS11_CONTROL: this.control,
      FAULTY_PKCS11_STATUS: this.statusFile,
    };
  }

  /** Points this process's own engines at the model. */
  useInThisProcess(): void {
    Object.assign(process.env, this.env());
  }

  /** Every network call costs `ms` from the next call on (0: no sleep; counting goes on). */
  setRtt(ms: number): void {
    const tmp = `${this.control}.${++this.seq}`;
    writeFileSync(tmp, `# ${this.seq}\n${ms > 0 ? `rtt ${ms}\n` : ''}`);
    renameSync(tmp, this.control); // a new inode: the module rereads it at its next call
  }

  status(): ModelStatus {
    const out: ModelStatus = { roundTrips: 0, openSessions: 0, maxOpenSessions: 0, maxInFlight: 0, sessionCountRefused: 0, byFn: {} };
    if (!existsSync(this.statusFile)) return out;
    for (const line of readFileSync(this.statusFile, 'utf8').split('\n')) {
      const [k, v] = line.split(' ');
      if (k === undefined || v === undefined) continue;
      const n = Number(v);
      if (k.startsWith('calls.')) out.byFn[k.slice(6)] = n;
      else if (k === 'round_trips') out.roundTrips = n;
      else if (k === 'open_sessions') out.openSessions = n;
      else if (k === 'max_open_sessions') out.maxOpenSessions = n;
      else if (k === 'max_in_flight') out.maxInFlight = n;
      else if (k === 'session_count_refused') out.sessionCountRefused = n;
    }
    return out;
  }
}

/** Per-function calls between two snapshots, divided by `per` (zeros left out). */
export function callsBetween(a: ModelStatus, b: ModelStatus, per: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [fn, n] of Object.entries(b.byFn)) {
    const d = n - (a.byFn[fn] ?? 0);
    if (d !== 0) out[fn] = d / per;
  }
  return out;
}
