import { clone, create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Entry, EntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import {
  type HistoryBundle,
  HistoryBundleSchema,
  type HistoryEntry,
  HistoryEntrySchema,
} from "../../gen/switchboard/v1/history_pb.js";
import type { HistoryFailure } from "../history-types.js";
import type { EntryKind, IncomingEntry } from "../types.js";

// The history bundle a device hands a newly linked device of its user (docs/encryption.md,
// "History for a newly linked device"): what goes in, its bounds, and the checks on the way in.

/** Entries in a bundle unless the caller says otherwise. */
export const DEFAULT_HISTORY_MAX_ENTRIES = 10_000;
/** The most entries a bundle may hold, whatever the caller asks (and the most a device imports). */
export const HISTORY_MAX_ENTRIES = 100_000;
/** Bytes of a bundle (its plaintext, before encryption) unless the caller says otherwise: 16 MiB. */
export const DEFAULT_HISTORY_MAX_BYTES = 16 * 1024 * 1024;
/**
 * The most bytes of plaintext a bundle may hold, whatever the caller asks, and the most a device
 * downloads: the media service's default maximum object (100 MiB) less the encryption's 28 bytes.
 * A server configured lower refuses the upload itself (INVALID_ARGUMENT naming its limit).
 */
export const HISTORY_MAX_BYTES = 100 * 1024 * 1024 - 28;
/** The most days of history one transfer covers. */
export const HISTORY_MAX_DAYS = 3650;

const CODES: Record<HistoryFailure, Code> = {
  "too-many-entries": Code.ResourceExhausted,
  "too-large": Code.ResourceExhausted,
  digest: Code.DataLoss,
  authentication: Code.DataLoss,
  format: Code.DataLoss,
  "wrong-device": Code.PermissionDenied,
};

/** A refused history transfer: its reason, and a ConnectError code that fits it. */
export class HistoryError extends ConnectError {
  constructor(
    readonly reason: HistoryFailure,
    message: string,
  ) {
    // name stays "ConnectError": ConnectError's instanceof test goes by it, so code that handles
    // ConnectErrors (and ConnectError.from) takes this one as it is.
    super(message, CODES[reason]);
  }

  /** By the prototype chain (ConnectError's own test, inherited, would accept any ConnectError). */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return Function.prototype[Symbol.hasInstance].call(HistoryError, value);
  }
}

/**
 * Collects entries into a bundle within its bounds; add() throws a HistoryError naming the bound
 * as soon as one is passed, so a too-large history is refused before it is all read.
 */
export class BundleBuilder {
  readonly entries: HistoryEntry[] = [];
  private bytes = 0;

  constructor(
    private readonly maxEntries: number,
    private readonly maxBytes: number,
    /** Says what is being collected, for the errors ("the last 7 days"). */
    private readonly what: string,
  ) {}

  /** Adds a decoded entry (its ciphertexts left out). */
  add(entry: IncomingEntry): void {
    if (this.entries.length >= this.maxEntries) {
      throw new HistoryError(
        "too-many-entries",
        `history: ${this.what} hold more than ${this.maxEntries} entries, the most one transfer carries ` +
          "(choose fewer days, or a larger maxEntries up to " +
          `${HISTORY_MAX_ENTRIES})`,
      );
    }
    const item = create(HistoryEntrySchema, {
      entry: withoutCiphertexts(entry.raw),
      payload: entry.payload ?? new Uint8Array(),
      attachments: entry.attachments,
    });
    // The encoded size plus the field's tag and length in the bundle (at most 6 bytes).
    const size = toBinary(HistoryEntrySchema, item).length + 6;
    if (this.bytes + size > this.maxBytes) {
      throw new HistoryError(
        "too-large",
        `history: ${this.what} are more than ${this.maxBytes} bytes (${this.entries.length} entries ` +
          `fit), the most one transfer carries (choose fewer days, or a larger maxBytes up to ${HISTORY_MAX_BYTES})`,
      );
    }
    this.bytes += size;
    this.entries.push(item);
  }
}

/** The entry as logged, without ciphertexts: they are of no use to another device. */
function withoutCiphertexts(raw: Entry): Entry {
  const entry = clone(EntrySchema, raw);
  const body = entry.body;
  if (body.case === "message" || body.case === "edit" || body.case === "reaction") {
    body.value.payload = new Uint8Array();
    body.value.devicePayloads = [];
    body.value.payloadType = 0;
  }
  return entry;
}

/** What a received bundle must agree with: the transfer message and the device receiving it. */
export interface BundleExpectation {
  userId: string;
  fromDeviceId: string;
  forDeviceId: string;
  entryCount: number;
  maxEntries: number;
}

/** Parses a decrypted bundle and checks it against its transfer; throws a HistoryError if it disagrees. */
export function parseBundle(plaintext: Uint8Array, expected: BundleExpectation): HistoryBundle {
  let bundle: HistoryBundle;
  try {
    bundle = fromBinary(HistoryBundleSchema, plaintext);
  } catch (err) {
    throw new HistoryError("format", `history: the bundle is not a HistoryBundle (${String(err)})`);
  }
  if (bundle.userId !== expected.userId || bundle.forDeviceId !== expected.forDeviceId) {
    throw new HistoryError(
      "wrong-device",
      `history: the bundle is for device ${bundle.forDeviceId || "(none)"} of user ${bundle.userId || "(none)"}, not this one`,
    );
  }
  if (bundle.fromDeviceId !== expected.fromDeviceId) {
    throw new HistoryError(
      "wrong-device",
      `history: the bundle says it is from device ${bundle.fromDeviceId || "(none)"}, but ${expected.fromDeviceId} sent it`,
    );
  }
  if (bundle.entries.length > expected.maxEntries) {
    throw new HistoryError(
      "too-many-entries",
      `history: the bundle holds ${bundle.entries.length} entries; this device imports at most ${expected.maxEntries}`,
    );
  }
  if (bundle.entries.length !== expected.entryCount) {
    throw new HistoryError(
      "format",
      `history: the bundle holds ${bundle.entries.length} entries, its transfer said ${expected.entryCount}`,
    );
  }
  for (const [i, item] of bundle.entries.entries()) {
    if (item.entry === undefined || item.entry.conversationId === "" || item.entry.seq === 0n)
      throw new HistoryError("format", `history: entries[${i}] has no conversation or seq`);
  }
  return bundle;
}

const KINDS = new Set<EntryKind>(["message", "edit", "delete", "reaction", "membership", "call"]);

/** A kept entry as the app sees entries (IncomingEntry), marked by nothing but where it came from. */
export function importedToIncoming(
  item: HistoryEntry,
  selfUserId: string,
  selfDeviceId: string,
): IncomingEntry {
  const raw = item.entry ?? create(EntrySchema);
  const body = raw.body;
  const hasPayload = body.case === "message" || body.case === "edit" || body.case === "reaction";
  return {
    conversationId: raw.conversationId,
    seq: raw.seq,
    senderUserId: raw.senderUserId,
    senderDeviceId: raw.senderDeviceId,
    clientMsgId: raw.clientMsgId,
    serverTimeMs: raw.serverTimeMs,
    kind: KINDS.has(body.case as EntryKind) ? (body.case as EntryKind) : "unknown",
    payload: hasPayload && !raw.redacted ? item.payload : undefined,
    attachments: item.attachments,
    keysOnly: false,
    encrypted: hasPayload,
    targetSeq:
      body.case === "edit" || body.case === "delete" || body.case === "reaction"
        ? body.value.targetSeq
        : undefined,
    replyTo: body.case === "message" && body.value.replyToSeq > 0n ? body.value.replyToSeq : undefined,
    mentions: body.case === "message" ? [...body.value.mentionedUserIds] : [],
    membership: body.case === "membership" ? body.value : undefined,
    call: body.case === "call" ? body.value : undefined,
    redacted: raw.redacted,
    decodeError: undefined,
    // Sent by this user from another device: never this one, which did not exist yet.
    fromThisDevice: raw.senderUserId === selfUserId && raw.senderDeviceId === selfDeviceId,
    raw,
  };
}

/** What sendTo takes: how far back, and the bounds of the bundle. */
export interface HistorySendOptions {
  /** Days back from now (1 to 3650). Give this or sinceMs. */
  days?: number;
  /** The oldest commit time to include, in milliseconds since the Unix epoch. */
  sinceMs?: number;
  /** At most this many entries (default 10,000, at most 100,000); more is RESOURCE_EXHAUSTED. */
  maxEntries?: number;
  /** At most this many bytes of bundle before encryption (default 16 MiB); more is RESOURCE_EXHAUSTED. */
  maxBytes?: number;
}

const DAY_MS = 24 * 60 * 60 * 1000;

/** The oldest commit time a send covers, from its options. */
export function sinceOf(options: HistorySendOptions): number {
  if (options.sinceMs !== undefined) {
    if (!Number.isFinite(options.sinceMs) || options.sinceMs < 0)
      throw new ConnectError(
        "history: sinceMs must be a time in milliseconds since the epoch",
        Code.InvalidArgument,
      );
    return options.sinceMs;
  }
  const days = options.days;
  if (days === undefined || !Number.isFinite(days) || days <= 0 || days > HISTORY_MAX_DAYS)
    throw new ConnectError(
      `history: days must be more than 0 and at most ${HISTORY_MAX_DAYS}`,
      Code.InvalidArgument,
    );
  return Date.now() - Math.round(days * DAY_MS);
}

/** A bound given by the caller, checked against its range, or the default. */
export function bounded(name: string, value: number | undefined, fallback: number, max: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 1 || value > max)
    throw new ConnectError(`history: ${name} must be an integer from 1 to ${max}`, Code.InvalidArgument);
  return value;
}
