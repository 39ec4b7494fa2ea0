import { CallMedia, CallOutcome } from "../../gen/switchboard/v1/calls_pb.js";
import type { AttachmentPointer } from "../../gen/switchboard/v1/content_pb.js";
import { MembershipAction } from "../../gen/switchboard/v1/entry_pb.js";
import type { DecryptError, DecryptFailure } from "../crypto/pairwise.js";
import type { IdentityChangeEvent } from "../crypto/stores.js";
import type { DevicesChangedEvent } from "../e2ee.js";
import type { IncomingEntry, ReceiptEvent } from "../types.js";
import { formatBytes, printable, shellArg } from "./files.js";
import type { Names } from "./names.js";
import type { GlobalOptions } from "./options.js";

const decoder = new TextDecoder();

/** A server time (epoch milliseconds) as the local time of day, HH:MM:SS. */
export function time(ms: bigint): string {
  return new Date(Number(ms)).toTimeString().slice(0, 8);
}

/** How entries are shown to this device. */
export interface EntryView {
  /** True when the profile is end-to-end encrypted: entries that arrive in plaintext are marked. */
  encrypted: boolean;
  /** The command that downloads an entry's files, for the hint under them. */
  download?: (seq: bigint) => string;
}

/**
 * Why an entry could not be decrypted, when its error is the SDK's DecryptError. Told by the
 * error's name rather than instanceof: importing the class would load libsignal when the CLI
 * starts (commands.ts), and this module is on that path.
 */
function decryptFailure(err: Error | undefined): DecryptFailure | undefined {
  return err?.name === "DecryptError" ? (err as DecryptError).reason : undefined;
}

function text(e: IncomingEntry): string {
  if (e.redacted) return "(deleted)";
  const failure = decryptFailure(e.decodeError);
  if (failure === "not-addressed") {
    // The server hands each device only its own ciphertext; this entry had none for this one.
    return "(nothing this device can read: encrypted for other devices, before it was linked or had keys)";
  }
  if (failure === "unencrypted") {
    return (
      "(!! refused: arrived NOT end-to-end encrypted from a contact who encrypts; the server may have " +
      "stripped the encryption. --accept-unencrypted shows it)"
    );
  }
  if (failure === "wrong-context") {
    return `(!! refused: ${printable(e.decodeError?.message ?? "")})`;
  }
  if (e.decodeError !== undefined) {
    return `(could not decrypt: ${printable(e.decodeError.message)})`;
  }
  return e.payload === undefined ? "" : printable(decoder.decode(e.payload));
}

/**
 * True for a message, edit or reaction that was not end-to-end encrypted (a plaintext client's).
 * An encrypted profile shows it marked, since anyone on the path could have read or written it.
 */
function sentInPlaintext(e: IncomingEntry): boolean {
  return e.payload !== undefined && e.payload.length > 0 && !e.encrypted;
}

/** One line per attached file: name, size and how to save it. */
function attachmentLines(e: IncomingEntry, view: EntryView): string[] {
  return e.attachments.map((a: AttachmentPointer) => {
    const name = a.fileName === "" ? "(no name)" : printable(a.fileName);
    const type = a.contentType === "" ? "" : `, ${printable(a.contentType)}`;
    const how = view.download === undefined ? "" : `; download with: ${view.download(e.seq)}`;
    return `    [file] ${name} (${formatBytes(a.sizeBytes)}${type})${how}`;
  });
}

/** An entry as text: one line, then one more per attached file. */
export function formatEntry(
  e: IncomingEntry,
  names: Names,
  selfUserId?: string,
  view: EntryView = { encrypted: false },
): string {
  const who = e.senderUserId === selfUserId ? "you" : names.label(e.senderUserId);
  const head = `#${e.seq} [${time(e.serverTimeMs)}]`;
  const plain = view.encrypted && sentInPlaintext(e) ? " (not encrypted)" : "";
  switch (e.kind) {
    case "message": {
      const body = text(e) || (e.attachments.length > 0 ? "(file)" : "");
      const files = e.redacted ? [] : attachmentLines(e, view);
      const reply = e.replyTo === undefined ? "" : ` (reply to #${e.replyTo})`;
      const mentions =
        e.mentions.length === 0 ? "" : ` (mentions ${e.mentions.map((id) => names.label(id)).join(", ")})`;
      return [`${head} ${who}${reply}: ${body}${plain}${mentions}`, ...files].join("\n");
    }
    case "edit":
      return `${head} ${who} edited #${e.targetSeq}: ${text(e)}${plain}`;
    case "delete":
      return `${head} ${who} deleted #${e.targetSeq}`;
    case "pin":
      return `${head} ${who} ${e.unpin === true ? "unpinned" : "pinned"} #${e.targetSeq}`;
    case "reaction":
      return `${head} ${who} reacted ${text(e) || "(removed)"} to #${e.targetSeq}${plain}`;
    case "membership": {
      const m = e.membership;
      const users = (m?.userIds ?? []).map((id) => names.label(id)).join(", ");
      switch (m?.action) {
        case MembershipAction.CREATED:
          return `${head} ${who} created ${m.title ? `"${printable(m.title)}"` : "the conversation"} with ${users}`;
        case MembershipAction.ADDED:
          return `${head} ${who} added ${users}`;
        case MembershipAction.REMOVED:
          return `${head} ${who} removed ${users}`;
        case MembershipAction.LEFT:
          return `${head} ${who} left`;
        case MembershipAction.PROMOTED:
          return `${head} ${who} made ${users} admin`;
        case MembershipAction.DEMOTED:
          return `${head} ${who} made ${users} a member`;
        case MembershipAction.RENAMED:
          return `${head} ${who} renamed the group to "${printable(m.title)}"`;
        default:
          return `${head} ${who} changed the membership`;
      }
    }
    case "call":
      return `${head} ${callLine(e, names, selfUserId)}`;
    case "disappearing": {
      const seconds = e.disappearing?.durationSeconds ?? 0;
      const admins = e.disappearing?.adminsOnly === true ? " (only admins may change it)" : "";
      return seconds === 0
        ? `${head} ${who} turned disappearing messages off${admins}`
        : `${head} ${who} set messages to disappear after ${timerLabel(seconds)}${admins}`;
    }
    case "expired":
      return `#${e.seq} (disappeared)`;
    default:
      return `${head} ${who}: (unknown entry)`;
  }
}

/** A call in the log (written by the server when it ended): who called whom, and how it went. */
function callLine(e: IncomingEntry, names: Names, selfUserId: string | undefined): string {
  const c = e.call;
  if (c === undefined) return "a call";
  const label = (id: string) => (id === selfUserId ? "you" : names.label(id));
  const what = `${c.group ? "group " : ""}${c.media === CallMedia.VIDEO ? "video" : "audio"} call`;
  const seconds = Math.round(Number(c.durationMs) / 1000);
  const outcome =
    c.outcome === CallOutcome.ANSWERED
      ? `answered, ${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`
      : c.outcome === CallOutcome.MISSED
        ? "missed"
        : c.outcome === CallOutcome.DECLINED
          ? "declined"
          : c.outcome === CallOutcome.BUSY
            ? "busy"
            : "ended";
  const callee = c.calleeUserId === "" ? "" : ` ${label(c.calleeUserId)}`;
  return `${label(c.callerUserId)} ${what}${callee === "" ? "" : ` to${callee}`}: ${outcome}`;
}

/** What a user should know when a contact's device shows a new identity key. */
export function identityWarning(event: IdentityChangeEvent, names: Names): string {
  const who = names.label(event.device.userId);
  const device = `${who}'s device ${printable(event.device.deviceId)}`;
  const username = who.startsWith("@") ? who.slice(1) : event.device.userId;
  if (event.outcome === "refused") {
    return (
      `!! ${device} presented a new identity key, refused because you verified the old one ` +
      "(someone may be intercepting: ask them in person). Nothing is sent to or read from that " +
      `device until you compare the new safety number (switchboard safety-number ${shellArg(username)}) ` +
      `and, if it matches, accept it: switchboard safety-number ${shellArg(username)} --verify ${shellArg(printable(event.device.deviceId))}`
    );
  }
  return (
    `!! ${device} has a new identity key (they reinstalled, or someone is intercepting): the safety ` +
    `number changed; compare it again: switchboard safety-number ${shellArg(username)}`
  );
}

/** What a user should know when a contact's devices change; undefined for nothing worth a line. */
export function devicesWarning(
  event: DevicesChangedEvent,
  names: Names,
  selfUserId: string,
): string | undefined {
  const who = event.userId === selfUserId ? "you" : names.label(event.userId);
  const username = who.startsWith("@") ? who.slice(1) : event.userId;
  const parts: string[] = [];
  if (event.added.length > 0) {
    const list = event.added.map((d) => printable(d)).join(", ");
    parts.push(
      event.userId === selfUserId
        ? `-- your new device ${list} now receives what you send`
        : `${event.verifiedContact ? "!!" : "--"} ${who} has a new device ${list}, which now receives what you send them` +
            (event.verifiedContact
              ? `; you verified their other devices, and this one is NOT verified: compare: switchboard safety-number ${shellArg(username)}`
              : ""),
    );
  }
  if (event.removed.length > 0) {
    parts.push(
      `-- ${who}: device ${event.removed.map((d) => printable(d)).join(", ")} no longer receives messages`,
    );
  }
  return parts.length === 0 ? undefined : parts.join("\n");
}

/** The conversation argument a download hint names: the username, as typed, or the id. */
export function hintTarget(target: string, conversationId: string): string {
  if (target.startsWith("g_") || target.startsWith("d_")) return conversationId;
  return target.replace(/^@/, "");
}

/** The download command for an entry's files, repeating --profile when it was given. */
export function downloadHint(opts: GlobalOptions, target: string): (seq: bigint) => string {
  const profile = opts.profile === undefined ? "" : ` --profile ${shellArg(opts.profile)}`;
  return (seq) => `switchboard download ${shellArg(target)} ${seq}${profile}`;
}

export function receiptLine(r: ReceiptEvent, names: Names, where: string, tty: boolean): string {
  if (r.kind === "read") {
    const ticks = tty ? "\x1b[34m✓✓\x1b[0m" : "✓✓ read";
    return `${ticks} ${tty ? "read " : ""}by ${names.label(r.userId)} up to #${r.upToSeq}${where}`;
  }
  return `✓✓ delivered to ${names.label(r.userId)} up to #${r.upToSeq}${where}`;
}

/** A disappearing-message timer as people say it: "24 hours", "7 days", "90 days". */
export function timerLabel(seconds: number): string {
  if (seconds % 86_400 === 0) return seconds === 86_400 ? "24 hours" : `${seconds / 86_400} days`;
  if (seconds % 3_600 === 0) return `${seconds / 3_600} hours`;
  return `${seconds} seconds`;
}
