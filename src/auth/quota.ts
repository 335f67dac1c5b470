/**
 * Per-keystore request quota: a token bucket refilled at `requests_per_second`, holding at most
 * `burst` tokens (starts full). One bucket per keystore, shared by all its requests; taking a token
 * is a few arithmetic operations on the event loop (no timers, no allocation).
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  /**
   * @param rate tokens added per second (> 0)
   * @param burst bucket size (>= 1)
   * @param now clock in milliseconds (injectable for tests); default performance.now
   */
  constructor(
    readonly rate: number,
    readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = burst;
    this.last = this.now();
  }

  /** Takes one token; false when the bucket is empty (the request is over quota). */
  tryTake(): boolean {
    const t = this.now();
    const elapsed = t - this.last;
    if (elapsed > 0) {
      this.tokens = Math.min(this.burst, this.tokens + (elapsed * this.rate) / 1000);
      this.last = t;
    }
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return true;
    }
    return false;
  }

  /** Same rate and size (a reload keeps the bucket, and its state, when the quota did not change). */
  sameAs(rate: number, burst: number): boolean {
    return this.rate === rate && this.burst === burst;
  }
}
