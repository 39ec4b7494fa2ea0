// Conversation health (seed 000, section 11), computed on the device: the pure part. What a
// conversation looked like as far as this device saw it (who spoke last, the open conversation
// start, the "since you were away" window) and the computations over it, each with the time
// passed in, so the tests run on explicit clocks. Nothing here holds or sees content: entries
// come in as HealthEntry, metadata only.

export const HOUR_MS = 3_600_000;
export const DAY_MS = 24 * HOUR_MS;
/** The reply window of the reply rate ("CCR (24h)" in the seed). */
export const REPLY_WINDOW_MS = DAY_MS;
/** Seqs of this user's own messages kept per conversation, to tell replies to them. */
export const MAX_OWN_SEQS = 128;
/** Jump links kept per kind in an away summary (the counts go on). */
export const MAX_AWAY_LINKS = 20;

/** How conversation health is computed. Durations in milliseconds. */
export interface HealthSettings {
  /**
   * A message of this user after at least this long without any message in the conversation is
   * a conversation start (the seed's "X hours of inactivity"). Default 24 hours.
   */
  startAfterInactiveMs: number;
  /** A conversation waiting longer than this for a reply no longer "needs reply". Default 7 days. */
  needsReplyMaxAgeMs: number;
  /** The starts counted by metrics(): those of this last stretch of time. Default 28 days. */
  metricsWindowMs: number;
}

export const DEFAULT_SETTINGS: HealthSettings = {
  startAfterInactiveMs: 24 * HOUR_MS,
  needsReplyMaxAgeMs: 7 * DAY_MS,
  metricsWindowMs: 28 * DAY_MS,
};

/** What health needs of a log entry: metadata only, never its payload. */
export interface HealthEntry {
  conversationId: string;
  seq: bigint;
  senderUserId: string;
  /** Commit time (the server's clock, the same on every device), ms since the epoch. */
  serverTimeMs: bigint;
  /** The entry kind ("message", "edit", ...; "pin" once pins exist). */
  kind: string;
  /** The entry a message replies to. */
  replyTo: bigint | undefined;
  /** The users a message names to the server (MessageBody.mentioned_user_ids). */
  mentions: readonly string[];
  /** True when the app found a mention of this user inside the content (OpenHealthOptions.mentionsMe). */
  mentionsMeInContent?: boolean;
  /** For a pin entry: the pinned message (see pinOf in ./entries.ts). */
  pinnedSeq?: bigint | undefined;
}

/** Signals of one kind in an away summary: how many, and the latest seqs to jump to. */
export interface AwaySignals {
  count: number;
  /** The latest MAX_AWAY_LINKS seqs, oldest first (for a pin: the pinned message). */
  seqs: bigint[];
}

/** "Since you were away": explicit signals only (seed 000, 11.4). */
export interface AwaySummary {
  conversationId: string;
  /** The last time the conversation was opened (0: never since health tracked it). */
  sinceMs: number;
  /** Messages that mention this user (to the server, or found in the content by the app). */
  mentions: AwaySignals;
  /** Messages replying to one of this user's messages. */
  replies: AwaySignals;
  /** Messages pinned. */
  pins: AwaySignals;
}

/** The "needs reply" state of a conversation. */
export interface NeedsReply {
  conversationId: string;
  needsReply: boolean;
  /** The message waiting for a reply (when needsReply). */
  seq?: bigint;
  /** Its sender. */
  fromUserId?: string;
  /** When it was sent, ms since the epoch. */
  sinceMs?: number;
}

/** Conversation starts and their first replies over metricsWindowMs (seed 000, 11.1). */
export interface HealthMetrics {
  /** Start of the window, ms since the epoch. */
  fromMs: number;
  /** Conversation starts in the window. */
  starts: number;
  /** Of them, those that got a reply (at any time). */
  replied: number;
  /** Starts old enough to have had their 24 hours, or replied already: the reply rate's base. */
  decided: number;
  /** Of the decided, those replied within 24 hours. */
  repliedWithin24h: number;
  /** repliedWithin24h / decided; undefined while nothing is decided. */
  replyRate24h: number | undefined;
  /** Time to first reply of the replied starts, median and 90th percentile (ms). */
  ttfrMedianMs: number | undefined;
  ttfrP90Ms: number | undefined;
}

/** One conversation start, kept for metrics. */
export interface StartRecord {
  conversationId: string;
  seq: bigint;
  atMs: number;
  /** Time to the first reply, once one came. */
  ttfrMs?: number;
}

interface Signals {
  count: number;
  seqs: bigint[];
}

/** What the device keeps of one conversation (persisted as ConversationJson). */
export interface ConversationState {
  id: string;
  /** Learned from the server once (kindOf); undefined until then: treated as direct. */
  kind: "direct" | "group" | undefined;
  /** Highest seq observed: entries at or below it are ignored (the stream after a catch-up). */
  lastSeq: bigint;
  /**
   * True when the first entry this device saw was in the middle of the log (a catch-up of the
   * latest entries, a device linked later): with nothing before it known, the first message of
   * this user seen is not taken for a start, only as the baseline of quiet.
   */
  midLog: boolean;
  /** Time of the last message, either way (0: none seen). */
  lastMessageMs: number;
  lastOutboundSeq: bigint;
  /** The last message from someone else. */
  lastInbound: { seq: bigint; atMs: number; from: string } | undefined;
  /** The last message from someone else that mentions this user or replies to them. */
  lastDirected: { seq: bigint; atMs: number; from: string } | undefined;
  /** The conversation start still waiting for its first reply. */
  openStart: { seq: bigint; atMs: number } | undefined;
  /** "Needs reply" was dismissed up to this seq. */
  dismissedSeq: bigint;
  /** This user's latest message seqs (at most MAX_OWN_SEQS), ascending. */
  ownSeqs: bigint[];
  /** The last time the app said the conversation was opened (or left). */
  openedMs: number;
  away: { mentions: Signals; replies: Signals; pins: Signals };
}

export function newConversation(id: string): ConversationState {
  return {
    id,
    kind: undefined,
    lastSeq: 0n,
    midLog: false,
    lastMessageMs: 0,
    lastOutboundSeq: 0n,
    lastInbound: undefined,
    lastDirected: undefined,
    openStart: undefined,
    dismissedSeq: 0n,
    ownSeqs: [],
    openedMs: 0,
    away: emptyAway(),
  };
}

function emptyAway(): ConversationState["away"] {
  return { mentions: { count: 0, seqs: [] }, replies: { count: 0, seqs: [] }, pins: { count: 0, seqs: [] } };
}

/** What observing an entry found: the health events it makes (besides message_sent). */
export type Observation =
  | { kind: "ignored" }
  | {
      kind: "changed";
      /** A conversation start, with how long the conversation had been quiet (none: its first message). */
      start?: StartRecord;
      inactiveMs?: number;
      /** The first reply to the open start. */
      reply?: { start: StartRecord; replySeq: bigint; replyMs: number };
    };

/**
 * Takes one entry into a conversation's state. Idempotent: an entry at or below the highest seq
 * observed changes nothing, so the stream may hand over again what a catch-up already took.
 */
export function observe(
  state: ConversationState,
  me: string,
  entry: HealthEntry,
  settings: HealthSettings,
): Observation {
  if (entry.seq <= state.lastSeq) return { kind: "ignored" };
  // The log's first entry, or this user's own join (a member sees nothing before it), is a
  // beginning; anything else first seen leaves earlier activity unknown.
  if (state.lastSeq === 0n && entry.seq > 1n && entry.kind !== "membership") state.midLog = true;
  state.lastSeq = entry.seq;
  const atMs = Number(entry.serverTimeMs);
  const mine = entry.senderUserId === me;
  if (entry.pinnedSeq !== undefined && !mine) add(state.away.pins, entry.pinnedSeq);
  if (entry.kind !== "message") return { kind: "changed" };

  if (mine) {
    const quietFor = state.lastMessageMs === 0 ? undefined : atMs - state.lastMessageMs;
    state.lastMessageMs = Math.max(state.lastMessageMs, atMs);
    state.lastOutboundSeq = entry.seq;
    state.ownSeqs.push(entry.seq);
    if (state.ownSeqs.length > MAX_OWN_SEQS) state.ownSeqs.splice(0, state.ownSeqs.length - MAX_OWN_SEQS);
    if (quietFor !== undefined && quietFor < settings.startAfterInactiveMs) return { kind: "changed" };
    if (quietFor === undefined && state.midLog) return { kind: "changed" };
    // A start after a start that never got a reply: that one stays unreplied in the records.
    state.openStart = { seq: entry.seq, atMs };
    return {
      kind: "changed",
      start: { conversationId: state.id, seq: entry.seq, atMs },
      ...(quietFor !== undefined && { inactiveMs: quietFor }),
    };
  }

  state.lastMessageMs = Math.max(state.lastMessageMs, atMs);
  const from = { seq: entry.seq, atMs, from: entry.senderUserId };
  state.lastInbound = from;
  const mentioned = entry.mentions.includes(me) || entry.mentionsMeInContent === true;
  const repliesToMe = entry.replyTo !== undefined && state.ownSeqs.includes(entry.replyTo);
  if (mentioned) add(state.away.mentions, entry.seq);
  if (repliesToMe) add(state.away.replies, entry.seq);
  if (mentioned || repliesToMe) state.lastDirected = from;
  const open = state.openStart;
  if (open === undefined) return { kind: "changed" };
  state.openStart = undefined;
  return {
    kind: "changed",
    reply: {
      start: { conversationId: state.id, seq: open.seq, atMs: open.atMs },
      replySeq: entry.seq,
      replyMs: atMs - open.atMs,
    },
  };
}

function add(signals: Signals, seq: bigint): void {
  signals.count++;
  signals.seqs.push(seq);
  if (signals.seqs.length > MAX_AWAY_LINKS) signals.seqs.splice(0, signals.seqs.length - MAX_AWAY_LINKS);
}

/**
 * Whether a conversation waits for this user's reply: the last message from someone else that
 * was for this user (any, in a direct conversation; one that mentions them or replies to them, in
 * a group) came after this user's last message, was not dismissed, and is at most
 * needsReplyMaxAgeMs old at `nowMs`.
 */
export function needsReply(state: ConversationState, nowMs: number, settings: HealthSettings): NeedsReply {
  const waiting = state.kind === "group" ? state.lastDirected : state.lastInbound;
  const none = { conversationId: state.id, needsReply: false };
  if (waiting === undefined) return none;
  if (waiting.seq < state.lastOutboundSeq || waiting.seq <= state.dismissedSeq) return none;
  if (nowMs - waiting.atMs > settings.needsReplyMaxAgeMs) return none;
  return {
    conversationId: state.id,
    needsReply: true,
    seq: waiting.seq,
    fromUserId: waiting.from,
    sinceMs: waiting.atMs,
  };
}

/** The away summary of a conversation: what came since it was last opened. */
export function awaySummary(state: ConversationState): AwaySummary {
  const copy = (s: Signals): AwaySignals => ({ count: s.count, seqs: [...s.seqs] });
  return {
    conversationId: state.id,
    sinceMs: state.openedMs,
    mentions: copy(state.away.mentions),
    replies: copy(state.away.replies),
    pins: copy(state.away.pins),
  };
}

/** The conversation was opened (or left) at `nowMs`: a new away window starts. */
export function markOpened(state: ConversationState, nowMs: number): void {
  state.openedMs = Math.max(state.openedMs, nowMs);
  state.away = emptyAway();
}

/** Conversation starts and replies over the window ending at `nowMs`. */
export function metrics(
  starts: readonly StartRecord[],
  nowMs: number,
  settings: HealthSettings,
): HealthMetrics {
  const fromMs = nowMs - settings.metricsWindowMs;
  const inWindow = starts.filter((s) => s.atMs >= fromMs && s.atMs <= nowMs);
  const replied = inWindow.filter((s) => s.ttfrMs !== undefined);
  const within = replied.filter((s) => (s.ttfrMs ?? Number.POSITIVE_INFINITY) <= REPLY_WINDOW_MS);
  // A start younger than a day without a reply is undecided: it may still be replied in time.
  const decided = inWindow.filter(
    (s) => (s.ttfrMs !== undefined && s.ttfrMs <= REPLY_WINDOW_MS) || nowMs - s.atMs >= REPLY_WINDOW_MS,
  );
  const ttfrs = replied.map((s) => s.ttfrMs ?? 0).sort((a, b) => a - b);
  return {
    fromMs,
    starts: inWindow.length,
    replied: replied.length,
    decided: decided.length,
    repliedWithin24h: within.length,
    replyRate24h: decided.length === 0 ? undefined : within.length / decided.length,
    ttfrMedianMs: percentile(ttfrs, 0.5),
    ttfrP90Ms: percentile(ttfrs, 0.9),
  };
}

/** Nearest-rank percentile of sorted values. */
export function percentile(sorted: readonly number[], p: number): number | undefined {
  if (sorted.length === 0) return undefined;
  const rank = Math.max(1, Math.ceil(p * sorted.length));
  return sorted[rank - 1];
}

/** A conversation as stored: seqs as decimal strings (JSON has no bigint). */
export interface ConversationJson {
  v: 1;
  id: string;
  kind?: "direct" | "group";
  lastSeq: string;
  midLog?: boolean;
  lastMessageMs: number;
  lastOutboundSeq: string;
  lastInbound?: { seq: string; atMs: number; from: string };
  lastDirected?: { seq: string; atMs: number; from: string };
  openStart?: { seq: string; atMs: number };
  dismissedSeq: string;
  ownSeqs: string[];
  openedMs: number;
  away: Record<"mentions" | "replies" | "pins", { count: number; seqs: string[] }>;
}

export function toJson(s: ConversationState): ConversationJson {
  const mark = (m: { seq: bigint; atMs: number; from: string }) => ({
    seq: m.seq.toString(),
    atMs: m.atMs,
    from: m.from,
  });
  const sig = (x: Signals) => ({ count: x.count, seqs: x.seqs.map(String) });
  return {
    v: 1,
    id: s.id,
    ...(s.kind !== undefined && { kind: s.kind }),
    lastSeq: s.lastSeq.toString(),
    ...(s.midLog && { midLog: true }),
    lastMessageMs: s.lastMessageMs,
    lastOutboundSeq: s.lastOutboundSeq.toString(),
    ...(s.lastInbound !== undefined && { lastInbound: mark(s.lastInbound) }),
    ...(s.lastDirected !== undefined && { lastDirected: mark(s.lastDirected) }),
    ...(s.openStart !== undefined && {
      openStart: { seq: s.openStart.seq.toString(), atMs: s.openStart.atMs },
    }),
    dismissedSeq: s.dismissedSeq.toString(),
    ownSeqs: s.ownSeqs.map(String),
    openedMs: s.openedMs,
    away: { mentions: sig(s.away.mentions), replies: sig(s.away.replies), pins: sig(s.away.pins) },
  };
}

export function fromJson(j: ConversationJson): ConversationState {
  const mark = (m: { seq: string; atMs: number; from: string } | undefined) =>
    m === undefined ? undefined : { seq: BigInt(m.seq), atMs: m.atMs, from: m.from };
  const sig = (x: { count: number; seqs: string[] }): Signals => ({
    count: x.count,
    seqs: x.seqs.map(BigInt),
  });
  return {
    id: j.id,
    kind: j.kind,
    lastSeq: BigInt(j.lastSeq),
    midLog: j.midLog === true,
    lastMessageMs: j.lastMessageMs,
    lastOutboundSeq: BigInt(j.lastOutboundSeq),
    lastInbound: mark(j.lastInbound),
    lastDirected: mark(j.lastDirected),
    openStart:
      j.openStart === undefined ? undefined : { seq: BigInt(j.openStart.seq), atMs: j.openStart.atMs },
    dismissedSeq: BigInt(j.dismissedSeq),
    ownSeqs: j.ownSeqs.map(BigInt),
    openedMs: j.openedMs,
    away: { mentions: sig(j.away.mentions), replies: sig(j.away.replies), pins: sig(j.away.pins) },
  };
}
