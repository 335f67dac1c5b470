/**
 * The deep health check ([health_check] in settings.toml): every `interval` a real
 * AES-GCM encrypt and decrypt on a key reserved for the purpose, plus the token info,
 * all through the same engine (sessions, deadlines, recovery) the requests use. The
 * verdict is cached; GetHealthStatus reports it at once without touching the HSM.
 *
 *   ACTIVE       the last check round-tripped within degradedLatencyMs and the HSM
 *                dropped no session and timed out no call since the check before;
 *   DEGRADED     the last check worked, but slowly, or sessions failed / calls timed out
 *                (requests or the check's own retries) since the previous check;
 *   UNAVAILABLE  the last check failed (timeout, device error, key missing, wrong data),
 *                or no check has finished yet.
 *
 * A failing check is repeated after min(interval, 1 s) so that recovery is reported soon.
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { XksError } from '../errors.js';
import type { EngineStats, HealthSource, HealthState, HealthVerdict, Hsm, TokenInfo } from '../hsm/hsm.js';
import type { Logger } from '../log.js';

export interface HealthCheckOptions {
  /** Label of the AES key used by the check. */
  keyId: string;
  intervalMs: number;
  /** Slower checks (encrypt + decrypt, ms) report DEGRADED. */
  degradedLatencyMs: number;
}

export interface HealthReport extends HealthVerdict {
  /** Date.now() when the last check finished (0: none yet). */
  checkedAt: number;
  /** Milliseconds the last encrypt + decrypt took (NaN when it failed). */
  latencyMs: number;
  /** Why the state is not ACTIVE (operator text, never data or secrets). */
  reason: string | undefined;
}

/** The engine's failure counters that make a working HSM DEGRADED when they move. */
function troubles(s: EngineStats): number {
  return s.sessionErrors + s.timeouts + s.reinitializations;
}

export class HealthChecker implements HealthSource {
  private report: HealthReport = {
    state: 'UNAVAILABLE',
    token: undefined,
    checkedAt: 0,
    latencyMs: Number.NaN,
    reason: 'no check finished yet',
  };
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<HealthReport> | undefined;
  private stopped = false;
  private lastTroubles: number;
  private readonly probe = randomBytes(32);
  private readonly aad = Buffer.from('xks-proxy deep health check');

  constructor(
    private readonly hsm: Hsm,
    private readonly options: HealthCheckOptions,
    private readonly log?: Logger,
  ) {
    this.lastTroubles = troubles(hsm.stats());
  }

  /** Runs the first check (never throws), then schedules the next ones. */
  start(): Promise<HealthReport> {
    this.stopped = false;
    return this.checkNow();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  current(): HealthReport {
    return this.report;
  }

  /** Runs one check now (or joins the one running) and returns the new verdict. */
  checkNow(): Promise<HealthReport> {
    this.running ??= this.runCheck().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private schedule(): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    const delay = this.report.state === 'UNAVAILABLE' ? Math.min(this.options.intervalMs, 1000) : this.options.intervalMs;
    this.timer = setTimeout(() => void this.checkNow(), delay);
    this.timer.unref();
  }

  private async runCheck(): Promise<HealthReport> {
    const previous = this.report.state;
    let next: HealthReport;
    let token: TokenInfo | undefined = this.report.token;
    try {
      token = await this.hsm.tokenInfo();
      const t0 = performance.now();
      const sealed = await this.hsm.encrypt(this.options.keyId, this.probe, this.aad);
      const back = await this.hsm.decrypt(this.options.keyId, sealed.ciphertext, sealed.tag, sealed.iv, this.aad);
      const latencyMs = performance.now() - t0;
      const same = back.equals(this.probe);
      back.fill(0);
      const now = troubles(this.hsm.stats());
      const moved = now - this.lastTroubles;
      this.lastTroubles = now;
      let state: HealthState = 'ACTIVE';
      let reason: string | undefined;
      if (!same) {
        state = 'UNAVAILABLE';
        reason = 'the health check key decrypted to different data';
      } else if (latencyMs > this.options.degradedLatencyMs) {
        state = 'DEGRADED';
        reason = `the health check took ${latencyMs.toFixed(1)} ms (threshold ${this.options.degradedLatencyMs} ms)`;
      } else if (moved > 0) {
        state = 'DEGRADED';
        reason = `${moved} HSM session failure(s), timeout(s) or re-initialization(s) since the previous check`;
      }
      next = { state, token, checkedAt: Date.now(), latencyMs, reason };
    } catch (e) {
      this.lastTroubles = troubles(this.hsm.stats());
      const why = e instanceof XksError ? `${e.errorName}${e.detail ? ` (${e.detail})` : ''}` : e instanceof Error ? e.message : String(e);
      next = { state: 'UNAVAILABLE', token, checkedAt: Date.now(), latencyMs: Number.NaN, reason: `health check failed: ${why}` };
    }
    this.report = next;
    if (next.state !== previous) {
      const fields = {
        key_id: this.options.keyId,
        reason: next.reason,
        latency_ms: Number.isNaN(next.latencyMs) ? undefined : Math.round(next.latencyMs * 10) / 10,
      };
      if (next.state === 'ACTIVE') this.log?.info(`HSM health: ${previous} -> ACTIVE`, fields);
      else this.log?.warn(`HSM health: ${previous} -> ${next.state}`, fields);
    }
    this.schedule();
    return next;
  }
}
