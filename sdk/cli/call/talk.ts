import type { SwitchboardClient } from "../../client.js";
import type { CallEvent } from "../../types.js";
import type { CliIo } from "../io.js";
import type { CallMedia } from "./media.js";

/** Call events kept while nobody waits for them; older ones are dropped. */
const INBOX_LIMIT = 64;
/** How long a call waits for the media to connect once both sides have the SDP. */
export const CONNECT_TIMEOUT_MS = 30_000;
/** After --seconds, how much longer a call waits for its first round-trip measurement. */
const RTT_GRACE_MS = 10_000;

/** Why a wait ended without the event it wanted (aborted: by the caller's signal). */
export type Stop = "timeout" | "interrupted" | "aborted";

/** The client's call events, queued (bounded) until a command takes them. */
export class CallInbox {
  private readonly queue: CallEvent[] = [];
  private wake: (() => void) | undefined;
  private readonly listener = (e: CallEvent) => {
    this.queue.push(e);
    if (this.queue.length > INBOX_LIMIT) this.queue.shift();
    this.wake?.();
  };

  private stopped = false;

  /** `stop` resolves when the user asks to stop (Ctrl-C): every wait ends then. */
  constructor(
    private readonly client: SwitchboardClient,
    stop: Promise<void>,
  ) {
    client.on("call", this.listener);
    void stop.then(() => {
      this.stopped = true;
      this.wake?.();
    });
  }

  /**
   * Takes the next event that matches, or says why there was none by the deadline (ms from now).
   * An aborted wait takes nothing.
   */
  async next(
    match: (e: CallEvent) => boolean,
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<CallEvent | Stop> {
    const deadline = Date.now() + timeoutMs;
    const abort = () => this.wake?.();
    signal?.addEventListener("abort", abort, { once: true });
    try {
      return await this.wait(match, deadline, signal);
    } finally {
      signal?.removeEventListener("abort", abort);
    }
  }

  private async wait(
    match: (e: CallEvent) => boolean,
    deadline: number,
    signal?: AbortSignal,
  ): Promise<CallEvent | Stop> {
    for (;;) {
      const at = this.queue.findIndex(match);
      if (at >= 0) return this.queue.splice(at, 1)[0]!;
      if (this.stopped) return "interrupted";
      if (signal?.aborted) return "aborted";
      const left = deadline - Date.now();
      if (left <= 0) return "timeout";
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  close(): void {
    this.client.off("call", this.listener);
  }
}

/**
 * Waits for the media to connect; resolves with the call's "ended" event instead when the peer
 * hangs up (or the call is taken on another device) first.
 */
export async function connect(
  inbox: CallInbox,
  callId: string,
  media: CallMedia,
): Promise<CallEvent | undefined> {
  const abort = new AbortController();
  const ended = inbox.next(
    (e) => e.callId === callId && e.kind === "ended",
    CONNECT_TIMEOUT_MS,
    abort.signal,
  );
  try {
    const up = media.connected(CONNECT_TIMEOUT_MS).then(() => "up" as const);
    const first = await Promise.race([up, ended]);
    if (first === "up") return undefined;
    if (first === "interrupted") throw new Error("stopped before the media connected");
    // Both waits have the same deadline: the media's says what went wrong.
    if (typeof first === "string") return await up.then(() => undefined);
    return first;
  } finally {
    abort.abort();
    await ended;
  }
}

/** How a call that was connected ended. */
export type Ending = "peer hung up" | "time is up" | "interrupted" | "connection lost";

/**
 * Sends the source and listens until the peer hangs up, the user stops, or `seconds` pass (then,
 * so that a round trip is reported, until the first RTCP measurement, at most RTT_GRACE_MS more).
 */
export async function talk(
  inbox: CallInbox,
  callId: string,
  media: CallMedia,
  seconds: number | undefined,
): Promise<Ending> {
  media.startSending();
  // A peer gone without a hang-up (killed, offline) ends the call when the server says so (its
  // device dropped off: ended, disconnected), or when ICE gives up on it.
  const lost = new AbortController();
  void media.lost.then(() => lost.abort());
  const hungUp = (e: CallEvent) => e.callId === callId && e.kind === "ended";
  const ending = (e: CallEvent | Stop): Ending | undefined =>
    e === "interrupted"
      ? "interrupted"
      : e === "aborted"
        ? "connection lost"
        : e === "timeout"
          ? undefined
          : e.reason === "disconnected"
            ? "connection lost"
            : "peer hung up";
  // Without --seconds the call lasts until a hang-up on either side (a day at most).
  const first = ending(
    await inbox.next(hungUp, seconds === undefined ? 86_400_000 : seconds * 1000, lost.signal),
  );
  if (first !== undefined) return first;
  const deadline = Date.now() + RTT_GRACE_MS;
  while ((await media.roundTripMs()) === undefined && Date.now() < deadline) {
    const e = ending(await inbox.next(hungUp, 250, lost.signal));
    if (e !== undefined) return e;
  }
  return "time is up";
}

/**
 * Says how the call ended and prints the report; a lost connection then fails the command (exit
 * code 1), after the report, since the call did not end as either side asked.
 */
export async function finish(
  io: CliIo,
  ending: Ending,
  peer: string,
  media: CallMedia,
  sourceLabel: string,
  connectedAt: number,
): Promise<void> {
  io.err(
    ending === "peer hung up"
      ? `-- ${peer} hung up`
      : ending === "connection lost"
        ? `-- the connection to ${peer} was lost`
        : "-- hanging up",
  );
  await report(io, peer, media, sourceLabel, connectedAt);
  if (ending === "connection lost") throw new Error(`lost the connection to ${peer} without a hang-up`);
}

/** The lines a call prints when it ends (stdout: the results, for people and scripts). */
export async function report(
  io: CliIo,
  peer: string,
  media: CallMedia,
  sourceLabel: string,
  connectedAt: number,
): Promise<void> {
  const path = await media.path();
  const rtt = await media.roundTripMs();
  const heard = media.heard.summary();
  const secs = ((Date.now() - connectedAt) / 1000).toFixed(1);
  io.out(
    `call with ${peer}: ${secs} s connected, path ${path === undefined ? "unknown" : `${path.type}${path.protocol ? ` (${path.protocol})` : ""}`}`,
  );
  io.out(`sent: ${sourceLabel}, ${media.packetsSent} packets`);
  const tone =
    heard.frequencyHz === undefined ? "" : `, ${heard.frequencyHz} Hz, level ${heard.levelDbfs} dBFS`;
  io.out(`heard: ${heard.packets} packets (${heard.seconds.toFixed(1)} s), ${heard.lost} lost${tone}`);
  io.out(
    rtt === undefined
      ? "round trip: not measured (no RTCP receiver report came back)"
      : `round trip: ${rtt.toFixed(1)} ms (RTCP)`,
  );
}
