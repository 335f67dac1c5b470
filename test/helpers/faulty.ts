/**
 * The fault-injecting PKCS#11 module (native-test/faulty/faulty_pkcs11.c, built by
 * `npm run build:native` to build/Release/faulty_pkcs11.node) in front of a real SoftHSM2
 * token. Tests steer it through its control file; see the C file for the rule syntax:
 *
 *   fail  <FN|*> <CKR_NAME> [times=N] [after=N] [args=os_locking|null|other]
 *   delay <FN|*> <ms>       [times=N] [after=N]
 *   block <FN|*>            [times=N] [after=N]
 *   iv    C_EncryptInit random|repeat [times=N] [after=N]
 *   flip  C_Encrypt|C_Decrypt [times=N] [after=N]
 *   rtt   <ms> [jitter=<ms>]      the network-HSM model: every call but a length-only query
 *   sessions max=<N>              CKR_SESSION_COUNT beyond N open sessions
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestToken } from './softhsm.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export const FAULTY_MODULE: string = path.join(ROOT, 'build/Release/faulty_pkcs11.node');

export interface FaultStatus {
  /** Sessions open in the real module, as counted by the fault module. */
  open_sessions: number;
  max_open_sessions: number;
  injected: number;
  calls: number;
  initialized: number;
  /** Most wrapped calls inside the module at once (delays included). */
  max_in_flight: number;
  /** Calls that crossed the modelled network: all calls but length-only queries. */
  round_trips: number;
  /** C_OpenSession calls the `sessions max=N` rule refused with CKR_SESSION_COUNT. */
  session_count_refused: number;
  /**
   * Calls per PKCS#11 function (faulted ones included), e.g. calls.C_OpenSession; length-only
   * queries apart, e.g. calls.C_Encrypt.len.
   */
  calls_by_fn: Record<string, number>;
}

export class FaultControl {
  private seq = 0;
  constructor(
    readonly controlPath: string,
    readonly statusPath: string,
  ) {}

  /** Replaces every rule (counters restart). */
  set(...rules: string[]): void {
    const tmp = `${this.controlPath}.${process.pid}.${++this.seq}`;
    writeFileSync(tmp, `# ${this.seq}\n${rules.join('\n')}\n`);
    renameSync(tmp, this.controlPath); // new inode: the module notices at its next call
  }

  clear(): void {
    this.set();
  }

  status(): FaultStatus {
    const out: FaultStatus = {
      open_sessions: 0,
      max_open_sessions: 0,
      injected: 0,
      calls: 0,
      initialized: 0,
      max_in_flight: 0,
      round_trips: 0,
      session_count_refused: 0,
      calls_by_fn: {},
    };
    if (!existsSync(this.statusPath)) return out;
    for (const line of readFileSync(this.statusPath, 'utf8').split('\n')) {
      const [k, v] = line.split(' ');
      if (k === undefined || v === undefined) continue;
      if (k.startsWith('calls.')) out.calls_by_fn[k.slice(6)] = Number(v);
      else if (k in out && k !== 'calls_by_fn') out[k as Exclude<keyof FaultStatus, 'calls_by_fn'>] = Number(v);
    }
    return out;
  }

  /** Calls of one PKCS#11 function so far (0 if never called). */
  calls(fn: string): number {
    return this.status().calls_by_fn[fn] ?? 0;
  }
}

/**
 * Points this process at the fault module in front of `token` (env FAULTY_PKCS11_*,
 * SOFTHSM2_CONF) and returns a token whose modulePath is the fault module.
 */
export function useFaultyModule(token: TestToken): { token: TestToken; faults: FaultControl } {
  if (!existsSync(FAULTY_MODULE)) throw new Error(`${FAULTY_MODULE} is missing: run npm run build:native`);
  const faults = new FaultControl(path.join(token.dir, 'faults.control'), path.join(token.dir, 'faults.status'));
  faults.clear();
  process.env.SOFTHSM2_CONF = token.confPath;
  process.env.FAULTY_PKCS11_TARGET = token.modulePath;
  process.env.FAULTY_PKCS11_CONTROL = faults.controlPath;
  process.env.FAULTY_PKCS11_STATUS = faults.statusPath;
  return { token: { ...token, modulePath: FAULTY_MODULE }, faults };
}

/** Polls `cond` every 10 ms until it holds or `ms` pass; returns whether it held. */
export async function waitFor(cond: () => boolean | Promise<boolean>, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
}
