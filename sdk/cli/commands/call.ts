import { type Command, InvalidArgumentError, Option } from "commander";
import type { CallEvent } from "../../types.js";
import { type CliIo, interrupted, run } from "../io.js";
import { at, Names } from "../names.js";
import { clientCommand, type GlobalOptions } from "../options.js";
import { type Session, withClient } from "../session.js";

/** Options of `call` and `answer`. */
interface CallOptions extends GlobalOptions {
  /** --tone <hz>: send a sine wave (the default source, 440 Hz). */
  tone?: number;
  /** --file <wav>: send a WAV file, looped. */
  file?: string;
  /** --seconds <n>: hang up after n seconds connected. */
  seconds?: number;
  /** --relay-only: TURN relays only (no direct path). */
  relayOnly?: boolean;
  /** call --ring-timeout <s>: give up when nobody answers. */
  ringTimeout?: number;
  /** answer --from <user>: only take calls from this user. */
  from?: string;
}

const DEFAULT_TONE_HZ = 440;

function toneHz(value: string): number {
  const n = Number(value);
  // Up to just below half the 8 kHz sample rate, where a tone still is one.
  if (!Number.isInteger(n) || n < 20 || n > 3900)
    throw new InvalidArgumentError("an integer from 20 to 3900 (Hz)");
  return n;
}

function seconds(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0 || n > 86_400)
    throw new InvalidArgumentError("seconds, more than 0, at most 86400");
  return n;
}

/** The options both commands take. */
function withMediaOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option("--tone <hz>", `send a test tone (sine wave) of this pitch (default ${DEFAULT_TONE_HZ})`)
        .argParser(toneHz)
        .conflicts("file"),
    )
    .option("--file <wav>", "send a WAV file instead, looped (mixed to mono, resampled to 8 kHz)")
    .option(
      "--seconds <n>",
      "hang up after n seconds connected (default: until a hang-up or Ctrl-C)",
      seconds,
    )
    .option("--relay-only", "use TURN relays only, never a direct path (as a privacy setting would)");
}

/**
 * `call <user>` and `answer`: a real 1:1 audio call from the terminal, signalled end-to-end
 * encrypted through the server (client.calls) with media over WebRTC (werift, loaded only when
 * one of these runs: test/release/startup.test.ts), sending a test tone or a WAV file, and
 * printing what was heard and the round trip RTCP measured (docs/calls.md).
 */
export function registerCall(program: Command, io: CliIo): void {
  withMediaOptions(
    clientCommand(
      program,
      "call <user>",
      "call a user: send a test tone or a WAV file, report what came back",
    ),
  )
    .option("--ring-timeout <s>", "give up when nobody answers within this time (default 60)", seconds)
    .action(
      run(io, async (username: string, opts: CallOptions) =>
        withClient(opts, io, "stream", (session) => call(session, username, opts, io)),
      ),
    );
  withMediaOptions(
    clientCommand(
      program,
      "answer",
      "wait for a call and take it: send a test tone or a WAV file, report what came in",
    ),
  )
    .option("--from <user>", "only take a call from this user (others keep ringing on your other devices)")
    .action(
      run(io, async (opts: CallOptions) =>
        withClient(opts, io, "stream", (session) => answer(session, opts, io)),
      ),
    );
}

/** The media module and the audio source, loaded and checked before anything rings. */
async function prepare(session: Session, opts: CallOptions) {
  if (!session.encrypted) {
    throw new Error(
      "calls need end-to-end encryption (the SDP goes encrypted to each device); this profile has none",
    );
  }
  const [{ CallMedia }, audio, talk] = await Promise.all([
    import("../call/media.js"),
    import("../call/audio.js"),
    import("../call/talk.js"),
  ]);
  const source =
    opts.file !== undefined
      ? await audio.fileSource(opts.file)
      : audio.toneSource(opts.tone ?? DEFAULT_TONE_HZ);
  return { CallMedia, source, talk };
}

/** The server's TURN relays; with --relay-only there must be one, or the call could never connect. */
async function relays(session: Session, opts: CallOptions) {
  const servers = await session.client.calls.iceServers();
  if (opts.relayOnly === true && !servers.some((s) => s.urls.some((u) => /^turns?:/.test(u)))) {
    throw new Error("--relay-only, but this server hands out no TURN relay (SWITCHBOARD_TURN_URLS)");
  }
  return servers;
}

const bytes = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array | undefined) => new TextDecoder().decode(b);

async function call(session: Session, username: string, opts: CallOptions, io: CliIo): Promise<void> {
  const { CallMedia, source, talk } = await prepare(session, opts);
  const { client } = session;
  const name = username.replace(/^@/, "");
  if (name === client.username) throw new Error("that is you; name someone else");
  const peer = await client.userByUsername(name);
  const stop = interrupted(io);
  const inbox = new talk.CallInbox(client, stop);
  await session.connect();
  await client.openDirect(peer.userId);
  const media = new CallMedia(await relays(session, opts), opts.relayOnly === true, source);
  let callId: string | undefined;
  let live = false;
  try {
    const offer = await media.offer();
    callId = await client.calls.start(peer.userId, { video: false, offer: bytes(offer) });
    live = true;
    io.err(
      `-- calling ${at(name)} (${source.label}${opts.relayOnly ? ", relays only" : ""}); Ctrl-C to stop`,
    );
    const id = callId;
    const ringDeadline = Date.now() + (opts.ringTimeout ?? 60) * 1000;
    let answer: CallEvent | undefined;
    while (answer === undefined) {
      const e = await inbox.next((e) => e.callId === id, ringDeadline - Date.now());
      if (e === "timeout") throw new Error(`no answer from ${at(name)} within ${opts.ringTimeout ?? 60} s`);
      if (typeof e === "string") throw new Error("stopped before the call was answered");
      if (e.kind === "ringing") io.err("-- ringing");
      else if (e.kind === "ended") {
        live = false;
        // A hang-up while ringing comes from the server when the call rings out.
        const why = e.reason === "declined" ? "declined" : e.reason === "busy" ? "is busy" : "did not answer";
        throw new Error(`${at(name)} ${why}`);
      } else if (e.kind === "connected") answer = e;
    }
    await media.accepted(text(answer.payload));
    if ((await talk.connect(inbox, id, media)) !== undefined) {
      live = false;
      throw new Error(`${at(name)} hung up before the media connected`);
    }
    const connectedAt = Date.now();
    io.err(
      `-- connected; talking${opts.seconds === undefined ? " until a hang-up or Ctrl-C" : ` for ${opts.seconds} s`}`,
    );
    const ending = await talk.talk(inbox, id, media, opts.seconds);
    if (ending === "peer hung up") live = false;
    await talk.finish(io, ending, at(name), media, source.label, connectedAt);
  } finally {
    if (live && callId !== undefined) client.calls.hangUp(callId, peer.userId);
    inbox.close();
    await media.close();
  }
}

async function answer(session: Session, opts: CallOptions, io: CliIo): Promise<void> {
  const { CallMedia, source, talk } = await prepare(session, opts);
  const { client } = session;
  const from = opts.from === undefined ? undefined : await client.userByUsername(opts.from.replace(/^@/, ""));
  const stop = interrupted(io);
  const inbox = new talk.CallInbox(client, stop);
  let media: InstanceType<typeof CallMedia> | undefined;
  let live: CallEvent | undefined;
  try {
    await session.connect();
    // Fails now rather than when a call comes; credentials are fetched again for the call.
    await relays(session, opts);
    io.err(`-- waiting for a call${from === undefined ? "" : ` from ${at(from.username)}`}; Ctrl-C to stop`);
    const offer = await inbox.next(
      (e) => e.kind === "incoming" && !e.video && (from === undefined || e.peerUserId === from.userId),
      86_400_000,
    );
    if (typeof offer === "string") return;
    const names = new Names(client);
    await names.load([offer.peerUserId]).catch(() => {});
    const label = names.label(offer.peerUserId);
    client.calls.ringing(offer.callId, offer.peerUserId);
    io.err(`-- ${label} is calling; answering (${source.label}${opts.relayOnly ? ", relays only" : ""})`);
    media = new CallMedia(await relays(session, opts), opts.relayOnly === true, source);
    const sdp = await media.answer(text(offer.payload));
    await client.calls.accept(offer.callId, offer.peerUserId, offer.peerDeviceId, bytes(sdp));
    live = offer;
    const lost = await talk.connect(inbox, offer.callId, media);
    if (lost !== undefined) {
      live = undefined;
      throw new Error(
        lost.reason === "answeredElsewhere" ? "answered on another device" : `${label} hung up`,
      );
    }
    const connectedAt = Date.now();
    io.err("-- connected");
    const ending = await talk.talk(inbox, offer.callId, media, opts.seconds);
    if (ending === "peer hung up") live = undefined;
    await talk.finish(io, ending, label, media, source.label, connectedAt);
  } finally {
    if (live !== undefined) client.calls.hangUp(live.callId, live.peerUserId);
    inbox.close();
    await media?.close();
  }
}
