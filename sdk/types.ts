import type { ConnectError } from "@connectrpc/connect";
import type { CallLogBody } from "../gen/switchboard/v1/calls_pb.js";
import type { AttachmentPointer } from "../gen/switchboard/v1/content_pb.js";
import type { DisappearingTimerBody, Entry, MembershipBody } from "../gen/switchboard/v1/entry_pb.js";
import type { ReceiptKind } from "../gen/switchboard/v1/gateway_pb.js";
import type { IdentityChangeEvent } from "./crypto/stores/types.js";
import type { DevicesChangedEvent } from "./e2ee/types.js";
import type { HistoryImportedEvent, HistoryRefusedEvent } from "./history-types.js";
import type { ProfileStorage } from "./storage/port.js";

/**
 * Turns application plaintext into the bytes the server stores, and back. The server never looks
 * inside payloads, so end-to-end encryption slots in here without changing the app-facing API.
 */
export interface PayloadCodec {
  /** Encodes an outgoing payload (a message, edit or reaction) for one conversation. */
  encode(conversationId: string, plaintext: Uint8Array): Promise<Uint8Array>;
  /** Decodes the payload of a received message, edit or reaction entry. */
  decode(entry: Entry): Promise<Uint8Array>;
}

/** What a device keeps to authenticate itself. The secret is shown once by the server. */
export interface DeviceCredentials {
  /** Base URL of the server, e.g. "http://127.0.0.1:7420". */
  serverUrl: string;
  /** The user this device belongs to. */
  userId: string;
  /** The user's handle, kept for display. */
  username: string;
  /** The device. */
  deviceId: string;
  /** The device's secret from Register or LinkDevice (base64url). */
  deviceSecret: string;
  /**
   * True when the profile was made with end-to-end encryption: it is opened encrypted unless the
   * app says otherwise (OpenOptions.encryption), even if its Signal state was lost, so it never
   * falls back to plaintext by itself.
   */
  encrypted?: boolean;
}

/** A device's position in one conversation, as kept in the profile. */
export interface LocalCursor {
  /** Highest seq handed to the app (every entry up to it was delivered, in order). */
  delivered: bigint;
  /** Highest seq the app marked read. */
  read: bigint;
}

/** A send that was written to the outbox and not yet answered by the server. */
export interface OutboxItem {
  /** The idempotency key; resending it after a crash returns the original seq. */
  clientMsgId: string;
  /** The conversation. */
  conversationId: string;
  /** The serialized OutgoingEntry (already encoded by the PayloadCodec), base64. */
  outgoing: string;
  /** When the app asked for the send, in milliseconds since the Unix epoch. */
  createdAtMs: number;
  /**
   * End-to-end encrypted sends only: the app's plaintext, base64. The ciphertexts in `outgoing`
   * go stale when the conversation's devices change (a refusal for mismatched devices), so a send
   * resumed after a restart must be able to encrypt again. The profile directory is private to
   * the user (0700, files 0600), like the Signal private keys next to it; the item is deleted once
   * the server answers.
   */
  plaintext?: string;
  /**
   * false: only the intent is written (the plaintext in `plaintext`, `outgoing` without
   * ciphertexts); it is encrypted when the client connects. Absent once encrypted.
   */
  sealed?: false;
}

/** The outcome of a send that the server committed durably (one tick). */
export interface SendResult {
  /** The send's idempotency key. */
  clientMsgId: string;
  /** The conversation. */
  conversationId: string;
  /** The entry's seq in the conversation. */
  seq: bigint;
  /** Commit time, in milliseconds since the Unix epoch. */
  serverTimeMs: bigint;
}

/** The kinds of conversation log entries. */
export type EntryKind =
  | "message"
  | "edit"
  | "delete"
  | "reaction"
  | "membership"
  | "call"
  | "pin"
  /** A change of the conversation's disappearing-message timer (see disappearing). */
  | "disappearing"
  /** An entry that disappeared (expired): only its seq is left, on the server and on this device. */
  | "expired"
  | "unknown";

/** A file to send as an encrypted attachment: its bytes, or a path to read them from. */
export interface OutgoingAttachment {
  /** The file's bytes (or give path). */
  data?: Uint8Array;
  /** A file to read (or give data). */
  path?: string;
  /** The name shown to recipients; defaults to the path's base name. */
  fileName?: string;
  /** The media type, for example "image/png". */
  contentType?: string;
}

/** A log entry as the app sees it: in seq order per conversation, payload decoded. */
export interface IncomingEntry {
  /** The conversation. */
  conversationId: string;
  /** Position in the conversation's log. */
  seq: bigint;
  /** The user who caused the entry. */
  senderUserId: string;
  /** The sending device; empty for entries the server wrote on a user's behalf. */
  senderDeviceId: string;
  /** The sender's idempotency key. */
  clientMsgId: string;
  /** Commit time, in milliseconds since the Unix epoch. */
  serverTimeMs: bigint;
  /** What the entry is. */
  kind: EntryKind;
  /** Decoded payload of a message, edit or reaction; undefined otherwise or if decoding failed. */
  payload: Uint8Array | undefined;
  /** Encrypted files attached to the message (download with downloadAttachment); empty if none. */
  attachments: AttachmentPointer[];
  /**
   * True for an entry with nothing for the app: a group entry that only carried sender keys, or
   * a retry request (a device asking for a sender key again). Never emitted as "entry".
   */
  keysOnly: boolean;
  /**
   * True when the payload was end-to-end decrypted (or is this device's own encrypted send). A
   * client opened with encryption also accepts plaintext payloads from users it never encrypted
   * with (clients opened without it); apps should mark those, since anyone on the path could have
   * written or read them. From a user it has encrypted with, plaintext is refused (decodeError a
   * DecryptError "unencrypted") unless OpenOptions.acceptUnencrypted.
   */
  encrypted: boolean;
  /** The entry an edit, delete, reaction or pin refers to; undefined for other kinds. */
  targetSeq: bigint | undefined;
  /** For pin entries: true when the entry unpins targetSeq, false when it pins it. */
  unpin?: boolean;
  /** The entry a message replies to (its reply_to_seq); undefined when it replies to none. */
  replyTo: bigint | undefined;
  /** The users a message mentions to the server (to wake them through a mute); often empty. */
  mentions: string[];
  /** The membership change, for membership entries. */
  membership: MembershipBody | undefined;
  /** The call's record (who, when, how long, audio or video), for call entries (docs/calls.md). */
  call: CallLogBody | undefined;
  /** True when a later delete-for-everyone removed this entry's content. */
  redacted: boolean;
  /**
   * When the entry disappears (it was sent while the conversation's timer was on), in
   * milliseconds since the Unix epoch; undefined for never. Apps remove it from view then; the
   * SDK deletes what it kept of it (its plaintext) from the profile by then, and the server
   * serves it as kind "expired".
   */
  expiresAtMs?: bigint;
  /** For disappearing entries: the new timer (0 off) and whether only admins may change it. */
  disappearing?: DisappearingTimerBody;
  /** Set when the PayloadCodec failed to decode the payload. */
  decodeError: Error | undefined;
  /** True when the entry was sent by this very device. */
  fromThisDevice: boolean;
  /** The entry as received. */
  raw: Entry;
}

/** A member's delivered or read cursor moved past entries this user sent. */
export interface ReceiptEvent {
  /** The conversation. */
  conversationId: string;
  /** The member whose cursor moved. */
  userId: string;
  /** "delivered" (two ticks) or "read". */
  kind: "delivered" | "read";
  /** Every entry up to and including this seq is delivered (or read) for that member. */
  upToSeq: bigint;
  /** When the cursor moved, in milliseconds since the Unix epoch. */
  timeMs: bigint;
  /** The protocol value of kind. */
  rawKind: ReceiptKind;
}

/** A member started or stopped typing. Expire an active indicator after 10 seconds. */
export interface TypingEvent {
  /** The conversation. */
  conversationId: string;
  /** The typing user. */
  userId: string;
  /** The typing device. */
  deviceId: string;
  /** True while typing. */
  active: boolean;
}

/** A subscribed user's presence. */
export interface PresenceEvent {
  /** The user. */
  userId: string;
  /** True while at least one of the user's devices holds a stream. */
  online: boolean;
  /** When the user was last online, in milliseconds since the Unix epoch; 0 if never seen. */
  lastSeenMs: bigint;
}

/** The stream is up and the server has authenticated the device. */
export interface ConnectedEvent {
  /** The server's identifier for this stream (for its logs). */
  sessionId: string;
  /** Limits the server enforces on this stream. */
  limits: {
    /** Largest accepted payload, in bytes. */
    maxPayloadBytes: number;
    /** Sends that may await an answer at once; the SDK queues beyond it. */
    maxSendsInFlight: number;
    /** Sustained sends per second. */
    sendsPerSecond: number;
    /** Sends allowed in a burst. */
    sendBurst: number;
  };
}

/** The stream ended; the SDK reconnects unless the error is fatal or the client was closed. */
export interface DisconnectedEvent {
  /** Why the stream ended; undefined when the client closed it. */
  error: ConnectError | undefined;
  /** Delay before the next attempt, in milliseconds; undefined when there will be none. */
  retryInMs: number | undefined;
}

/** A send that the server refused for good (the promise from send() rejects with the same error). */
export interface SendFailedEvent {
  /** The send's idempotency key. */
  clientMsgId: string;
  /** The conversation. */
  conversationId: string;
  /** The server's refusal. */
  error: ConnectError;
}

/**
 * An end-to-end encrypted entry this device could not decrypt (tampered, no ciphertext for this
 * device, no session, an untrusted identity). The entry is still handed to the app (with
 * decodeError set) and acknowledged, so the stream moves on.
 */
export interface DecryptFailedEvent {
  /** The conversation. */
  conversationId: string;
  /** The entry's seq. */
  seq: bigint;
  /** The sending user. */
  senderUserId: string;
  /** The sending device. */
  senderDeviceId: string;
  /** Why. */
  error: Error;
}

/** A problem the app should know about. */
export interface ErrorEvent {
  /** What went wrong. */
  error: ConnectError;
  /** True when the client stopped for good (e.g. the device was revoked). */
  fatal: boolean;
}

/** Events of SwitchboardClient and the payload each carries. */
export interface ClientEvents {
  /** An entry, in seq order per conversation. A returned promise delays the ack until it settles. */
  entry: IncomingEntry;
  /** Someone's delivered/read cursor moved past entries this user sent. */
  receipt: ReceiptEvent;
  /** Typing indicator. */
  typing: TypingEvent;
  /** Presence of a subscribed user. */
  presence: PresenceEvent;
  /** The stream is up. */
  connected: ConnectedEvent;
  /** The stream is down. */
  disconnected: DisconnectedEvent;
  /**
   * The backlog was delivered: entries in it, and how many of them came as kind "expired" (gone
   * from the server while this device was away: they disappeared, or outlived the server's
   * retention).
   */
  caughtUp: { entries: bigint; expiredEntries: bigint };
  /**
   * close() has handed the app its last entry and is about to release the profile: a listener's
   * promise is awaited first (up to `closingGraceMs`), so what writes to the profile's storage
   * (health, say) finishes while the profile is still this client's. Unary calls still work
   * until it settles.
   */
  closing: Record<string, never>;
  /** A send was committed (one tick); also fires for sends resumed from the outbox. */
  sent: SendResult;
  /** A send was refused for good. */
  sendFailed: SendFailedEvent;
  /** A non-fatal problem, or a fatal one that stopped the client. */
  error: ErrorEvent;
  /** An end-to-end encrypted entry could not be decrypted (encryption mode only). */
  decryptFailed: DecryptFailedEvent;
  /** A contact device's identity key changed (encryption mode only); refused if it was verified. */
  identityChanged: IdentityChangeEvent;
  /**
   * The devices this device encrypts for of a user changed (encryption mode only): a device was
   * added (a new device of theirs now receives what is sent to them) or removed. Fires when a
   * send learns it, so at send time; `verifiedContact` says the user verified that contact.
   */
  devicesChanged: DevicesChangedEvent;
  /**
   * This user's blocks changed, on this device or another of theirs: `safety.blocked()` lists
   * them. Droppable (like presence), so an app that shows blocks lists them on `connected` too.
   */
  blocksChanged: Record<string, never>;
  /**
   * This user's privacy settings changed, on this device or another of theirs: `getPrivacy()`
   * reads them. Droppable (like presence), so an app that shows them reads them on `connected` too.
   */
  privacyChanged: Record<string, never>;
  /** A call's signalling from the peer, decrypted (encryption mode only; docs/calls.md). */
  call: CallEvent;
  /** Another device of this user sent this one its history, and it was imported (client.history). */
  historyImported: HistoryImportedEvent;
  /** Another device's history bundle was refused (tampered, too large, not for this device). */
  historyRefused: HistoryRefusedEvent;
}

/**
 * Why a call ended, as the peer or the server said: disconnected when the server ended it as
 * the peer's device (or, in a group call, the host's with nobody to hand the call to) lost its
 * stream and did not come back within a few seconds; rangOut when nobody took it in time.
 */
export type CallEndReason = "hangup" | "declined" | "busy" | "answeredElsewhere" | "disconnected" | "rangOut";

/** A step of a call (the "call" event). */
export interface CallEvent {
  /**
   * incoming: an offer, ring (payload: the SDP offer); ringing: a callee device rings; connected:
   * a callee device took the call (payload: its SDP answer); answer, candidates: SDP or ICE
   * candidates from the peer's device; ended: see reason. The rest are group calls' (below).
   */
  kind:
    | "incoming"
    | "ringing"
    | "connected"
    | "answer"
    | "candidates"
    | "ended"
    | "groupIncoming"
    | "offer"
    | "joined"
    | "full"
    | "participantJoined"
    | "participantLeft"
    | "hostChanged";
  /** The call. */
  callId: string;
  /** The other party. */
  peerUserId: string;
  /** Its device that sent this (for answeredElsewhere: this user's device that took the call). */
  peerDeviceId: string;
  /** For incoming and groupIncoming: a video call. */
  video?: boolean;
  /** The decrypted bytes the peer's app gave (SDP, candidates), when the signal carries any. */
  payload?: Uint8Array | undefined;
  /** For ended. */
  reason?: CallEndReason;
  /**
   * Group calls (docs/calls.md, "Group calls"): the group conversation. Then groupIncoming is
   * the group's ring (peer: the host, no payload; a kind of its own, so 1:1 call code never
   * takes it for a call to accept), offer a participant's SDP offer for this device,
   * joined says this device is in, full that the call has its 32 devices, participantJoined and
   * participantLeft name the peer device that came or went, hostChanged names the call's new host
   * (the one before dropped off; the SDK sends join and leave to it from now on), and ended
   * (hangup) that the ring or the call is over.
   */
  conversationId?: string;
  /** Group calls, on groupIncoming and joined: the devices in the call (on joined, all but this one). */
  participants?: CallParticipantRef[];
  /** Group calls, on groupIncoming and joined: the SFU to send media to; absent: a mesh. */
  sfuUrl?: string;
  /**
   * Group calls, on joined when the server shares a secret with the SFU: this device's admission
   * to present to the SFU (good for 10 minutes; joining again gets a new one).
   */
  sfuToken?: string;
}

/** A device in a group call. */
export interface CallParticipantRef {
  userId: string;
  deviceId: string;
  /** When it joined, in milliseconds since the Unix epoch. */
  joinedAtMs: number;
}

/** A listener; an "entry" listener may return a promise to hold back the ack until it settles. */
export type Listener<T> = (event: T) => unknown;

/**
 * When the device stream leaves the stream port (`streamUrl`) for the server URL. The server
 * URL serves device streams too, so a stream port that is down, or blocked on the device's
 * network, costs the device nothing but the wait.
 */
export interface StreamFallback {
  /**
   * Once attempts to open the stream on the stream port have failed as unreachable or
   * unavailable for this long, the stream opens on the server URL instead. Default 5,000 ms:
   * longer than a stream thread takes to start again after a failure (about a second), so a
   * thread's restart does not move a deployment's devices to the main port for good.
   */
  afterMs?: number;
  /**
   * After falling back, the stream port is tried again by the first stream opened this long
   * after it last failed. Default 60,000 ms. A stream that fell back stays on the server URL
   * until it ends.
   */
  retryMs?: number;
  /**
   * An attempt to open the stream on the stream port that has no answer (the response's
   * headers) within this long fails as unavailable and counts as a failed attempt. Default
   * 10,000 ms. A firewall that drops packets to a port it does not let through answers nothing,
   * where a closed port refuses at once.
   */
  openTimeoutMs?: number;
}

/** How the client reconnects and keeps the stream alive. All durations in milliseconds. */
export interface ClientTuning {
  /** First reconnect delay cap (full jitter). Default 250. */
  backoffBaseMs?: number;
  /** Largest reconnect delay. Default 30,000. */
  backoffCapMs?: number;
  /** A stream that lived this long resets the backoff. Default 10,000. */
  stableAfterMs?: number;
  /** Interval between application pings. Default 20,000. */
  pingIntervalMs?: number;
  /** A stream with no frame for this long is treated as dead. Default 45,000. */
  deadAfterMs?: number;
  /** A gap not filled within this long is fetched (again). Default 500. */
  gapTimeoutMs?: number;
  /** Entries per sync_request. Default 256. */
  syncPageSize?: number;
  /** Longest wait before acknowledging delivered entries. Default 50. */
  ackDelayMs?: number;
  /** Delivered entries that trigger an ack at once. Default 100. */
  ackEveryEntries?: number;
  /** Longest close() waits for its `closing` listeners before it releases the profile. Default 10,000. */
  closingGraceMs?: number;
}

/** Options of SwitchboardClient.open. */
export interface OpenOptions extends ClientTuning {
  /**
   * Directory holding the device's profile (credentials, cursors, outbox, Signal state), kept by
   * the file engine. Give this or `storage`.
   */
  profileDir?: string;
  /**
   * Where to keep the profile instead of a directory: any ProfileStorage (sdk/storage/port.ts), for
   * example MemoryStorage or an engine over the app's own database. Give this or `profileDir`.
   */
  storage?: ProfileStorage;
  /** Overrides the server URL stored in the profile. */
  serverUrl?: string;
  /**
   * Other gateways to fail over to when the current one is unreachable or draining (when a
   * deployment exposes several addresses instead of one load-balanced one).
   */
  alternateUrls?: string[];
  /**
   * The deployment's stream port, if its operator set one (SWITCHBOARD_STREAM_PORT): the device
   * stream opens there, every other call on the server URL. Not stored in the profile. Unset, the
   * client uses the stream port the gateway names in its ready frame (the server's
   * SWITCHBOARD_STREAM_URL), if it is on the server URL's host or a name under it, for the
   * streams it opens after that one (`learnStreamUrl`).
   */
  streamUrl?: string;
  /**
   * When the stream port cannot be reached, the stream opens on the server URL instead: after
   * 5 s of failed attempts there, and for 60 s after its last failure (StreamFallback).
   */
  streamFallback?: StreamFallback;
  /**
   * Whether a stream port the gateway names is used when `streamUrl` is not given. Default true;
   * false keeps every stream on the server URL. A learned port is kept in the profile, so the
   * first stream after a restart opens there too, if it is still on the server URL's host.
   */
  learnStreamUrl?: boolean;
  /** Payload codec; defaults to the identity (plaintext) codec. Applies to group payloads. */
  codec?: PayloadCodec;
  /**
   * End-to-end encryption (Signal protocol): direct conversations with one ciphertext per
   * device, groups with sender keys, attachments with a key per file (docs/encryption.md). Keys
   * live in the profile's storage (`<profile>/signal`); the device uploads its keys on connect.
   * The codec is not used for encrypted content. Default: on. register and link make encrypted
   * profiles unless this is false, and open keeps the mode the profile was made with (a profile
   * made with `encryption: false` opens in plaintext; false here turns an encrypted one off, which
   * is an explicit choice). Plaintext is never the default, as in the CLI.
   */
  encryption?: boolean;
  /**
   * With encryption: show plaintext entries from users this device has encrypted with before.
   * Default false: such an entry is handed over with no payload and decodeError a DecryptError
   * with reason "unencrypted", since a server can strip the encryption of an entry (rewrite its
   * payload_type to 0) and pass the ciphertext or its own text off as a plaintext message.
   */
  acceptUnencrypted?: boolean;
  /**
   * With encryption: the age at which the signed EC prekey and the Kyber last-resort prekey are
   * replaced, checked whenever a stream opens. Default 7 days.
   */
  signedPrekeyMaxAgeMs?: number;
}

/** Options of SwitchboardClient.register. */
export interface RegisterOptions extends Omit<OpenOptions, "serverUrl"> {
  /** Base URL of the server. */
  serverUrl: string;
  /** Requested handle: 3 to 32 characters of [a-z0-9_.]. */
  username: string;
  /** Free-form name; defaults to the username. */
  displayName?: string;
  /** Name of this device. */
  deviceName?: string;
  /**
   * A token from the server's operator (`switchboard admin invite create`), needed when the
   * server registers by invite only (SWITCHBOARD_REGISTRATION=invite); ignored by open servers.
   */
  inviteToken?: string;
}

/** Options of SwitchboardClient.link. */
export interface LinkOptions extends Omit<OpenOptions, "serverUrl"> {
  /** Base URL of the server. */
  serverUrl: string;
  /** A code from createLinkCode on another of the user's devices. */
  code: string;
  /** Name of this device. */
  deviceName?: string;
}
