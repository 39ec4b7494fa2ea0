/**
 * A latency histogram in microseconds with bounded memory whatever the run length: exact below
 * 1,024 µs, then 128 sub-buckets per power of two (under 0.8 % error), up to about 2^40 µs.
 * Counts are plain arrays so worker threads can post them and the parent can merge them.
 */
const SUB_BITS = 7;
const SUB = 1 << SUB_BITS;
const LINEAR = 1024;
const MAX_EXP = 40;
const SIZE = LINEAR + (MAX_EXP - 10) * SUB;

export interface HistogramData {
  counts: number[];
  count: number;
  max: number;
  sum: number;
}

function bucketOf(us: number): number {
  if (us < LINEAR) return us < 0 ? 0 : Math.floor(us);
  const exp = Math.floor(Math.log2(us));
  if (exp >= MAX_EXP) return SIZE - 1;
  const sub = Math.floor((us / 2 ** exp - 1) * SUB);
  return LINEAR + (exp - 10) * SUB + sub;
}

/** The upper edge of a bucket, so percentiles err on the slow side. */
function upperEdge(bucket: number): number {
  if (bucket < LINEAR) return bucket + 1;
  const i = bucket - LINEAR;
  const exp = 10 + Math.floor(i / SUB);
  return 2 ** exp * (1 + ((i % SUB) + 1) / SUB);
}

export class Histogram {
  private counts = new Float64Array(SIZE);
  count = 0;
  max = 0;
  sum = 0;

  /** Records a latency given in milliseconds. */
  recordMs(ms: number): void {
    const us = ms * 1000;
    const b = bucketOf(us);
    this.counts[b] = (this.counts[b] ?? 0) + 1;
    this.count++;
    this.sum += us;
    if (us > this.max) this.max = us;
  }

  toData(): HistogramData {
    return { counts: Array.from(this.counts), count: this.count, max: this.max, sum: this.sum };
  }

  merge(data: HistogramData): void {
    for (let i = 0; i < SIZE; i++) this.counts[i] = (this.counts[i] ?? 0) + (data.counts[i] ?? 0);
    this.count += data.count;
    this.sum += data.sum;
    if (data.max > this.max) this.max = data.max;
  }

  /** The p-th percentile (0..100) in milliseconds; 0 when empty. */
  percentileMs(p: number): number {
    if (this.count === 0) return 0;
    const rank = Math.max(1, Math.ceil((p / 100) * this.count));
    let seen = 0;
    for (let i = 0; i < SIZE; i++) {
      seen += this.counts[i] ?? 0;
      if (seen >= rank) return Math.min(upperEdge(i), this.max) / 1000;
    }
    return this.max / 1000;
  }

  summary(): LatencySummary {
    return {
      count: this.count,
      p50: this.percentileMs(50),
      p90: this.percentileMs(90),
      p99: this.percentileMs(99),
      max: this.max / 1000,
      mean: this.count === 0 ? 0 : this.sum / this.count / 1000,
    };
  }
}

/** Latencies in milliseconds. */
export interface LatencySummary {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}
