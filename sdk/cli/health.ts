import type { SwitchboardClient } from "../client.js";
import type { ConversationHealth } from "../health/health.js";
import type { AwaySignals, AwaySummary, NeedsReply } from "../health/model.js";
import type { Names } from "./names.js";

// Conversation health in the CLI (sdk/health/): "needs reply" in `conversations`, the away
// summary when `chat` opens. Computed on this device; the CLI gives health no sink, so nothing
// about it leaves the profile.

const decoder = new TextDecoder();

/**
 * Opens health for a command's client. A command that streams (`chat`, `listen`) holds the
 * profile and keeps what health learns; one that does not (`conversations`) may run beside a
 * `listen` on the same profile, so it keeps its catch-up in memory (readOnly).
 */
export async function openHealth(client: SwitchboardClient, streaming: boolean): Promise<ConversationHealth> {
  // Imported when a command runs, not when the CLI starts (commands.ts).
  const { ConversationHealth } = await import("../health/health.js");
  const handle = `@${client.username}`;
  return ConversationHealth.attach(client, {
    readOnly: !streaming,
    // Mentions typed as @username inside the (decrypted) text count too; only yes or no is kept.
    mentionsMe: (e) => e.payload !== undefined && mentionsHandle(decoder.decode(e.payload), handle),
  });
}

/** True when text names the handle as a whole word (@bob, not @bobby). */
export function mentionsHandle(text: string, handle: string): boolean {
  let at = text.indexOf(handle);
  while (at >= 0) {
    const next = text[at + handle.length];
    if (next === undefined || !/[a-z0-9_.]/.test(next)) return true;
    at = text.indexOf(handle, at + 1);
  }
  return false;
}

/** How long ago, compactly: "now", "5m", "3h", "2d". */
export function ago(ms: number): string {
  if (ms < 60_000) return "now";
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)}m`;
  if (ms < 86_400_000) return `${Math.floor(ms / 3_600_000)}h`;
  return `${Math.floor(ms / 86_400_000)}d`;
}

/** The "needs reply" note of a conversation in `conversations`, or "" when it needs none. */
export function needsReplyNote(n: NeedsReply, names: Names, group: boolean, nowMs: number): string {
  if (!n.needsReply) return "";
  const waited = ago(Math.max(0, nowMs - (n.sinceMs ?? nowMs)));
  const who = group && n.fromUserId !== undefined ? `${names.label(n.fromUserId)}, ` : "";
  return `  needs reply (${who}${waited})`;
}

/** The away summary as one line for `chat`, or undefined when there is nothing to say. */
export function awayLine(summary: AwaySummary, nowMs: number): string | undefined {
  const parts: string[] = [];
  const part = (s: AwaySignals, one: string, many: string): void => {
    if (s.count === 0) return;
    const links = s.seqs.slice(-5).map((seq) => `#${seq}`);
    parts.push(
      `${s.count} ${s.count === 1 ? one : many} (${links.join(", ")}${s.count > links.length ? ", …" : ""})`,
    );
  };
  part(summary.mentions, "mention of you", "mentions of you");
  part(summary.replies, "reply to you", "replies to you");
  part(summary.pins, "pin", "pins");
  if (parts.length === 0) return undefined;
  const since =
    summary.sinceMs === 0 ? "while you were away" : `in the ${ago(nowMs - summary.sinceMs)} you were away`;
  return `-- ${since}: ${parts.join(", ")}`;
}
