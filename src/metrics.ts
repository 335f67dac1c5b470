/**
 * Prometheus metrics, kept cheap on the hot path: each route owns its counters and
 * histogram (no label-string building per request); rendering happens only on scrape.
 * Never a key id set, secret or data: labels are operation, prefix, outcome (errorName)
 * and HSM call names.
 */

/** Seconds; spans the proxy's sub-millisecond share up to KMS's 250 ms budget. */
export const BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1] as const;

export class Histogram {
  readonly counts = new Float64Array(BUCKETS.length + 1);
  sum = 0;
  count = 0;

  observe(seconds: number): void {
    let i = 0;
    while (i < BUCKETS.length && seconds > BUCKETS[i]!) i++;
    this.counts[i]! += 1;
    this.sum += seconds;
    this.count++;
  }

  render(name: string, labels: string, out: string[]): void {
    let cumulative = 0;
    const sep = labels ? `${labels},` : '';
    for (let i = 0; i < BUCKETS.length; i++) {
      cumulative += this.counts[i]!;
      out.push(`${name}_bucket{${sep}le="${BUCKETS[i]}"} ${cumulative}`);
    }
    cumulative += this.counts[BUCKETS.length]!;
    out.push(`${name}_bucket{${sep}le="+Inf"} ${cumulative}`);
    out.push(`${name}_sum{${labels}} ${this.sum}`);
    out.push(`${name}_count{${labels}} ${this.count}`);
  }
}

/** Counters and latency of one operation on one keystore prefix. */
export class RouteMetrics {
  readonly outcomes = new Map<string, number>();
  readonly latency = new Histogram();
  constructor(
    readonly op: string,
    readonly prefix: string,
  ) {}

  record(outcome: string, seconds: number): void {
    this.outcomes.set(outcome, (this.outcomes.get(outcome) ?? 0) + 1);
    this.latency.observe(seconds);
  }
}

export interface Gauges {
  sessionsOpen: number;
  sessionsIdle: number;
  inFlight: number;
  reinitializations: number;
  /** Keys used through a session copy made inside the HSM ([pkcs11] session_key_copies); absent: 0. */
  keyCopies?: number | undefined;
  /** Event loops whose IV buffer is off (random-IV mode, its memory could not be locked); absent: 0. */
  ivBufferOff?: number | undefined;
  /** 1 ACTIVE, 0.5 DEGRADED, 0 UNAVAILABLE; undefined when unknown. */
  health?: number | undefined;
}

/** Prometheus label value escaping (backslash, quote, newline). */
export function labelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** A histogram as plain data (structured-clone safe). */
export interface HistogramSnapshot {
  counts: number[];
  sum: number;
  count: number;
}

/**
 * Everything one event loop counted, as plain data: worker threads send it to the main
 * thread, which merges all of them into the one /metrics answer (src/workers/).
 */
export interface MetricsSnapshot {
  routes: { op: string; prefix: string; outcomes: [string, number][]; latency: HistogramSnapshot }[];
  hsm: [string, HistogramSnapshot][];
  unmatched: number;
  gauges: Gauges;
}

function histogramSnapshot(h: Histogram): HistogramSnapshot {
  return { counts: Array.from(h.counts), sum: h.sum, count: h.count };
}

function addHistogram(into: Histogram, from: HistogramSnapshot): void {
  for (let i = 0; i < into.counts.length && i < from.counts.length; i++) into.counts[i]! += from.counts[i]!;
  into.sum += from.sum;
  into.count += from.count;
}

/** Gauges of several event loops: sessions and jobs add up; health is the worst one reported. */
export function sumGauges(all: readonly Gauges[]): Gauges {
  const out: Gauges = { sessionsOpen: 0, sessionsIdle: 0, inFlight: 0, reinitializations: 0 };
  for (const g of all) {
    out.sessionsOpen += g.sessionsOpen;
    out.sessionsIdle += g.sessionsIdle;
    out.inFlight += g.inFlight;
    out.reinitializations += g.reinitializations;
    if (g.keyCopies !== undefined) out.keyCopies = (out.keyCopies ?? 0) + g.keyCopies;
    if (g.ivBufferOff !== undefined) out.ivBufferOff = (out.ivBufferOff ?? 0) + g.ivBufferOff;
    if (g.health !== undefined) out.health = out.health === undefined ? g.health : Math.min(out.health, g.health);
  }
  return out;
}

export class Metrics {
  private readonly routes: RouteMetrics[] = [];
  private readonly hsmCalls = new Map<string, Histogram>();
  /** Requests that matched no route (404 InvalidUriPathException). */
  unmatched = 0;

  constructor(
    private readonly version: string,
    private readonly gauges: () => Gauges,
  ) {}

  route(op: string, prefix: string): RouteMetrics {
    const existing = this.routes.find((r) => r.op === op && r.prefix === prefix);
    if (existing) return existing;
    const r = new RouteMetrics(op, prefix);
    this.routes.push(r);
    return r;
  }

  /** Histogram of one kind of HSM call ("encrypt", "decrypt", "key_info", "token_info"). */
  hsm(call: string): Histogram {
    let h = this.hsmCalls.get(call);
    if (!h) {
      h = new Histogram();
      this.hsmCalls.set(call, h);
    }
    return h;
  }

  /** The counters, histograms and current gauges as plain data. */
  snapshot(): MetricsSnapshot {
    return {
      routes: this.routes.map((r) => ({ op: r.op, prefix: r.prefix, outcomes: [...r.outcomes], latency: histogramSnapshot(r.latency) })),
      hsm: [...this.hsmCalls].map(([call, h]) => [call, histogramSnapshot(h)]),
      unmatched: this.unmatched,
      gauges: this.gauges(),
    };
  }

  /** Adds another event loop's counters and histograms to these (gauges come from the constructor's source). */
  merge(s: MetricsSnapshot): void {
    for (const r of s.routes) {
      const into = this.route(r.op, r.prefix);
      for (const [outcome, n] of r.outcomes) into.outcomes.set(outcome, (into.outcomes.get(outcome) ?? 0) + n);
      addHistogram(into.latency, r.latency);
    }
    for (const [call, h] of s.hsm) addHistogram(this.hsm(call), h);
    this.unmatched += s.unmatched;
  }

  render(): string {
    const out: string[] = [];
    out.push('# HELP xks_proxy_build_info Version of this proxy.', '# TYPE xks_proxy_build_info gauge');
    out.push(`xks_proxy_build_info{version="${labelValue(this.version)}",node="${labelValue(process.version)}"} 1`);

    out.push('# HELP xks_requests_total XKS API requests by operation, key store prefix and outcome (ok or errorName).');
    out.push('# TYPE xks_requests_total counter');
    for (const r of this.routes) {
      for (const [outcome, n] of r.outcomes) {
        out.push(`xks_requests_total{operation="${r.op}",prefix="${labelValue(r.prefix)}",outcome="${labelValue(outcome)}"} ${n}`);
      }
    }
    out.push(`xks_unmatched_requests_total ${this.unmatched}`);

    out.push('# HELP xks_request_duration_seconds Whole-request processing time, body received to response written.');
    out.push('# TYPE xks_request_duration_seconds histogram');
    for (const r of this.routes) {
      if (r.latency.count > 0)
        r.latency.render('xks_request_duration_seconds', `operation="${r.op}",prefix="${labelValue(r.prefix)}"`, out);
    }

    out.push('# HELP xks_hsm_call_duration_seconds Time of each HSM call, submit to settle (queueing included).');
    out.push('# TYPE xks_hsm_call_duration_seconds histogram');
    for (const [call, h] of this.hsmCalls) h.render('xks_hsm_call_duration_seconds', `call="${call}"`, out);

    const g = this.gauges();
    out.push('# HELP xks_hsm_sessions_open PKCS#11 sessions open (idle and in use).', '# TYPE xks_hsm_sessions_open gauge');
    out.push(`xks_hsm_sessions_open ${g.sessionsOpen}`);
    out.push('# HELP xks_hsm_sessions_in_use PKCS#11 sessions running a job.', '# TYPE xks_hsm_sessions_in_use gauge');
    out.push(`xks_hsm_sessions_in_use ${Math.max(0, g.sessionsOpen - g.sessionsIdle)}`);
    out.push('# HELP xks_hsm_jobs_in_flight HSM jobs submitted and not yet settled.', '# TYPE xks_hsm_jobs_in_flight gauge');
    out.push(`xks_hsm_jobs_in_flight ${g.inFlight}`);
    out.push('# HELP xks_hsm_reinitializations_total Times the PKCS#11 module was finalized and re-initialized.');
    out.push('# TYPE xks_hsm_reinitializations_total counter');
    out.push(`xks_hsm_reinitializations_total ${g.reinitializations}`);
    out.push(
      '# HELP xks_hsm_key_copies Keys used through a session copy made inside the HSM (session_key_copies).',
      '# TYPE xks_hsm_key_copies gauge',
    );
    out.push(`xks_hsm_key_copies ${g.keyCopies ?? 0}`);
    out.push(
      '# HELP xks_hsm_iv_buffer_off Event loops whose IV buffer is off (its memory could not be locked): each Encrypt makes its own C_GenerateRandom.',
      '# TYPE xks_hsm_iv_buffer_off gauge',
    );
    out.push(`xks_hsm_iv_buffer_off ${g.ivBufferOff ?? 0}`);
    if (g.health !== undefined) {
      out.push('# HELP xks_health_status HSM health: 1 ACTIVE, 0.5 DEGRADED, 0 UNAVAILABLE.', '# TYPE xks_health_status gauge');
      out.push(`xks_health_status ${g.health}`);
    }
    return `${out.join('\n')}\n`;
  }
}
