import type { ConversationCheck } from "./mesh-traffic.js";

/**
 * Recovery times of the fault matrix (test/e2e/fault-matrix.test.ts), measured from what devices
 * received rather than from what processes logged: a fault is over for a conversation when every
 * member device has received a message that was sent after the fault struck.
 */

/** One fault and how long things took, in milliseconds from the moment it struck. */
export interface Recovery {
  /** What was done ("SIGKILL gateway-0"). */
  fault: string;
  /** Until the killed process (or backend) answered again; undefined when nothing was restarted. */
  backMs: number | undefined;
  /**
   * Until the first conversation had a message sent after the fault on every member device. For
   * a fault that takes down part of the system (one sequencer replica), the untouched
   * conversations make this small.
   */
  firstMs: number | undefined;
  /** Until every conversation had one: the fault's recovery time (undefined: some never did). */
  allMs: number | undefined;
  /** Entries in the logs checked after the fault (all of them, since the start). */
  entries: number;
  /** Messages acknowledged during the phase. */
  acked: number;
  /** Lines the processes logged at level error or fatal during the phase (not asserted: shown). */
  errorsLogged: number;
  /** Sends refused for good during the phase (the contract allows none; shown, then asserted). */
  refused: number;
}

/** A send and when it was made, in milliseconds since the epoch. */
export interface SendTime {
  conversationId: string;
  clientMsgId: string;
  sentAtMs: number;
}

/**
 * The first and last time, over conversations, at which every member device held a message sent
 * at or after `faultAtMs` (each device's first such message, whichever it was). A device that
 * never received one is named in `never`, and then there is no last time (`allMs` undefined).
 */
export function measureRecovery(
  faultAtMs: number,
  conversations: readonly ConversationCheck[],
  sends: readonly SendTime[],
): { firstMs: number | undefined; allMs: number | undefined; never: string[] } {
  let first = Number.POSITIVE_INFINITY;
  let all = 0;
  const never: string[] = [];
  for (const c of conversations) {
    const after = new Set(
      sends
        .filter((s) => s.conversationId === c.conversationId && s.sentAtMs >= faultAtMs)
        .map((s) => s.clientMsgId),
    );
    let live = 0;
    for (const d of c.devices) {
      const got = d.in(c.conversationId).find((e) => after.has(e.clientMsgId));
      if (got === undefined) never.push(`${d.name} in ${c.label}`);
      else live = Math.max(live, got.atMs);
    }
    if (live > 0 && !never.some((n) => n.endsWith(` in ${c.label}`))) first = Math.min(first, live);
    all = Math.max(all, live);
  }
  return {
    firstMs: Number.isFinite(first) ? Math.max(0, first - faultAtMs) : undefined,
    allMs: never.length === 0 ? Math.max(0, all - faultAtMs) : undefined,
    never,
  };
}

/** The recovery times as a plain-text table, one line per fault. */
export function recoveryTable(rows: readonly Recovery[]): string[] {
  const seconds = (ms: number | undefined, missing = "-") =>
    ms === undefined ? missing : (ms / 1000).toFixed(1);
  const header = [
    "fault",
    "back (s)",
    "first delivery (s)",
    "all conversations (s)",
    "entries",
    "acked",
    "refused",
    "errors logged",
  ];
  const cells = rows.map((r) => [
    r.fault,
    seconds(r.backMs),
    seconds(r.firstMs, "never"),
    seconds(r.allMs, "never"),
    String(r.entries),
    String(r.acked),
    String(r.refused),
    String(r.errorsLogged),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) =>
    c.map((v, i) => (i === 0 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join("  ");
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...cells.map(line)];
}
