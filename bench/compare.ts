/** Flat metrics for regression tracking, and the comparison of two result files. */

export interface Metric {
  name: string;
  value: number;
  unit: string;
  better: 'higher' | 'lower';
  /** Relative change regarded as noise for this figure (run-to-run spread), e.g. 0.1. */
  noise: number;
  /** Absolute change regarded as noise (same unit), e.g. 0.05 ms. */
  absNoise: number;
  /** Not compared (e.g. max latency). */
  informational?: boolean;
}

export interface Comparison {
  name: string;
  unit: string;
  base: number;
  current: number;
  /** Relative change in the "worse" direction (positive = worse). */
  worse: number;
  band: number;
  regressed: boolean;
  improved: boolean;
}

/** A figure regressed when it got worse by more than max(10 %, both files' noise) and more than its absolute noise. */
export function compareMetrics(base: readonly Metric[], current: readonly Metric[], minBand = 0.1): Comparison[] {
  const old = new Map(base.map((m) => [m.name, m]));
  const out: Comparison[] = [];
  for (const m of current) {
    const b = old.get(m.name);
    if (!b || m.informational || !Number.isFinite(b.value) || !Number.isFinite(m.value)) continue;
    const diff = m.better === 'higher' ? b.value - m.value : m.value - b.value;
    const worse = b.value === 0 ? (diff > 0 ? Infinity : diff < 0 ? -Infinity : 0) : diff / Math.abs(b.value);
    const band = Math.max(minBand, m.noise, b.noise);
    const absBand = Math.max(m.absNoise, b.absNoise);
    out.push({
      name: m.name,
      unit: m.unit,
      base: b.value,
      current: m.value,
      worse,
      band,
      regressed: worse > band && diff > absBand,
      improved: -worse > band && -diff > absBand,
    });
  }
  return out;
}
