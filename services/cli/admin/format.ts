import type { Invite } from "../../../gen/switchboard/internal/v1/admin_pb.js";
import { AdminError } from "./connection.js";

/** How admin commands print what they are told: durations, sizes, times, ranges, tables. */

/** Commander's collector of a repeated option (--url a --url b). */
export function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** Milliseconds as "3d 4h", "12m 5s", "800ms". */
export function duration(ms: number): string {
  if (ms < 1000) return `${ms}ms`;
  const s = Math.floor(ms / 1000);
  const parts: Array<[number, string]> = [
    [Math.floor(s / 86400), "d"],
    [Math.floor((s % 86400) / 3600), "h"],
    [Math.floor((s % 3600) / 60), "m"],
    [s % 60, "s"],
  ];
  const first = parts.findIndex(([n]) => n > 0);
  return parts
    .slice(first, first + 2)
    .map(([n, u]) => `${n}${u}`)
    .join(" ");
}

export function bytes(n: bigint): string {
  const mib = Number(n) / (1024 * 1024);
  return mib >= 1024 ? `${(mib / 1024).toFixed(1)} GiB` : `${mib.toFixed(1)} MiB`;
}

export function time(ms: bigint): string {
  return ms === 0n ? "-" : new Date(Number(ms)).toISOString().replace(/\.\d+Z$/, "Z");
}

/** Shard numbers as ranges: 0-3, 8, 10-15. */
export function ranges(values: readonly number[]): string {
  const out: string[] = [];
  for (let i = 0; i < values.length; ) {
    let j = i;
    while (j + 1 < values.length && values[j + 1] === values[j]! + 1) j++;
    out.push(j === i ? `${values[i]}` : `${values[i]}-${values[j]}`);
    i = j + 1;
  }
  return out.join(", ") || "none";
}

const TTL_UNITS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "7d", "12h", "30m", "90s" as milliseconds. */
export function parseTtl(text: string): number {
  const match = /^(\d+)([smhd])$/.exec(text.trim());
  if (match === null) throw new AdminError(`--ttl ${text}: expected a number and a unit: 90s, 30m, 12h, 7d`);
  return Number(match[1]) * TTL_UNITS[match[2]!]!;
}

/** What state an invite is in at `nowMs`. */
export function inviteState(i: Invite, nowMs: number): string {
  if (i.revokedAtMs !== 0n) return "revoked";
  if (BigInt(nowMs) >= i.expiresAtMs) return "expired";
  if (i.usesLeft === 0) return "used up";
  return "active";
}

/** Rows of cells as aligned columns. */
export function table(rows: readonly string[][], indent = "  "): string[] {
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((cell, i) => {
      widths[i] = Math.max(widths[i] ?? 0, cell.length);
    });
  }
  return rows.map(
    (row) =>
      indent +
      row
        .map((cell, i) => cell.padEnd(widths[i]!))
        .join("  ")
        .trimEnd(),
  );
}
