import { MiB } from "./plan.js";

/** Timed loops and the Markdown tables they are reported in. */

/** Per-operation figures of a timed loop, in microseconds. */
export interface Timing {
  n: number;
  median: number;
  mean: number;
  /** CPU time of the whole process per operation (user + system, every thread). */
  cpu: number;
}

export const now = () => process.hrtime.bigint();
export const since = (start: bigint) => Number(now() - start) / 1e3;

export function summarize(samples: number[], cpuTotal: number): Timing {
  const sorted = [...samples].sort((a, b) => a - b);
  const n = sorted.length;
  const mid = Math.floor(n / 2);
  const median = n % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { n, median, mean: sorted.reduce((s, x) => s + x, 0) / n, cpu: cpuTotal / n };
}

/** fn(0..warmup-1) untimed, then fn(warmup..warmup+n-1) timed one after another. */
export async function timeOps(
  n: number,
  warmup: number,
  fn: (i: number) => Promise<unknown>,
): Promise<Timing> {
  for (let i = 0; i < warmup; i++) await fn(i);
  const samples: number[] = [];
  const cpu = process.cpuUsage();
  for (let i = warmup; i < warmup + n; i++) {
    const start = now();
    await fn(i);
    samples.push(since(start));
  }
  const used = process.cpuUsage(cpu);
  return summarize(samples, used.user + used.system);
}

/** Samples gathered by hand (several phases per iteration); CPU not attributed. */
export function fromSamples(samples: number[]): Timing {
  return summarize(samples, Number.NaN);
}

export const us = (v: number) =>
  !Number.isFinite(v)
    ? "–"
    : v < 1000
      ? `${Math.round(v)} µs`
      : v < 1e6
        ? `${(v / 1e3).toFixed(v < 1e4 ? 2 : 1)} ms`
        : `${(v / 1e6).toFixed(2)} s`;
export const perSecond = (t: Timing) => Math.round(1e6 / t.mean).toLocaleString("en-US");
export const bytes = (b: number) =>
  b < 100_000 ? `${b.toLocaleString("en-US")} B` : `${(b / MiB).toFixed(2)} MiB`;

export function table(title: string, header: string[], rows: string[][], note?: string): void {
  console.log(`\n**${title}**\n`);
  console.log(`| ${header.join(" | ")} |`);
  console.log(`|${header.map((_, i) => (i === 0 ? "---" : "---:")).join("|")}|`);
  for (const row of rows) console.log(`| ${row.join(" | ")} |`);
  if (note !== undefined) console.log(`\n${note}`);
}
