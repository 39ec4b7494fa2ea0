import { stat, unlink } from "node:fs/promises";
import { homedir } from "node:os";
import { basename, dirname, join } from "node:path";
import { createInterface, emitKeypressEvents, type Interface } from "node:readline";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Command, InvalidArgumentError } from "commander";
import type { AttachmentPointer } from "../../gen/switchboard/v1/content_pb.js";
import { type Conversation, ConversationKind } from "../../gen/switchboard/v1/conversations_pb.js";
import { MembershipAction } from "../../gen/switchboard/v1/entry_pb.js";
import { newClientMsgId, SwitchboardClient } from "../client.js";
import { AttachmentError } from "../crypto/attachments.js";
import { DecryptError } from "../crypto/pairwise.js";
import type { IdentityChangeEvent } from "../crypto/stores.js";
import type { DevicesChangedEvent } from "../e2ee.js";
import { AUDIENCES, type Audience } from "../privacy.js";
import type { IncomingEntry, ReceiptEvent } from "../types.js";
import { chooseEncryption, lockProfile, markedEncrypted, publishKeys } from "./encryption.js";
import {
  exists,
  FileExistsError,
  formatBytes,
  isDirectory,
  partPath,
  placeFile,
  printable,
  safeFileName,
  shellArg,
} from "./files.js";

const DEFAULT_SERVER = "http://127.0.0.1:7420";

/** Parses a privacy audience option (`privacy --groups/--direct`). */
function audience(value: string): Audience {
  if (!(AUDIENCES as readonly string[]).includes(value)) {
    throw new InvalidArgumentError(`expected ${AUDIENCES.join(", ")}`);
  }
  return value as Audience;
}

/** Where command output goes; replaceable so the commands can run inside tests. */
export interface CliIo {
  /** A line of results. */
  out(line: string): void;
  /** A line of diagnostics. */
  err(line: string): void;
  /** Ends the process (or records the code, in tests). */
  exit(code: number): void;
  /** Whether output is an interactive terminal (colours, line editing). */
  isTTY: boolean;
  /** Lines typed by the user; defaults to process.stdin. */
  input?: NodeJS.ReadableStream;
  /** Resolves when the user asks to stop (Ctrl-C); defaults to SIGINT/SIGTERM. */
  interrupted?: Promise<void>;
}

/** Options every client command takes. */
interface GlobalOptions {
  server?: string;
  profile?: string;
  /** --encryption (true), --no-encryption (false), or neither (the profile's own mode). */
  encryption?: boolean;
  /** --accept-unencrypted: show plaintext entries from contacts who encrypt (refused by default). */
  acceptUnencrypted?: boolean;
}

const processIo: CliIo = {
  out: (line) => process.stdout.write(`${line}\n`),
  err: (line) => process.stderr.write(`${line}\n`),
  exit: (code) => {
    process.exitCode = code;
    // Let buffered output drain before the process ends.
    setImmediate(() => process.exit(code));
  },
  isTTY: process.stdout.isTTY === true,
};

/**
 * Adds the client commands (register, link, send, download, safety-number, listen, chat, groups,
 * history, ...) to a commander program. Each takes --server, --profile and --[no-]encryption;
 * errors print one line and exit 1.
 */
export function registerClientCommands(program: Command, io: CliIo = processIo): void {
  const cmd = (parent: Command, spec: string, description: string): Command =>
    parent
      .command(spec)
      .description(description)
      .option(
        "--server <url>",
        `server URL (env SWITCHBOARD_URL, else the profile's, else ${DEFAULT_SERVER})`,
      )
      .option(
        "--profile <dir>",
        "profile directory (env SWITCHBOARD_PROFILE, default ~/.switchboard/profile)",
      )
      .option(
        "--encryption",
        "end-to-end encryption (the default for new profiles; turns it on for good in a profile made without it)",
      )
      .option(
        "--no-encryption",
        "no end-to-end encryption, to talk to clients without it (a profile registered so stays so)",
      )
      .option(
        "--accept-unencrypted",
        "show entries that arrive without encryption from contacts who encrypt (by default they are refused: the server may have stripped the encryption)",
      );

  cmd(program, "register <username>", "create a user with this device as its first, in a new profile")
    .option("--display-name <name>", "name shown to others (default: the username)")
    .option("--device-name <name>", "name of this device (default: the host name)")
    .option(
      "--invite <token>",
      "an invite token from the server's operator (servers that register by invite only)",
    )
    .action(
      run(
        io,
        async (
          username: string,
          opts: GlobalOptions & { displayName?: string; deviceName?: string; invite?: string },
        ) => {
          const encryption = opts.encryption !== false;
          const client = await SwitchboardClient.register({
            serverUrl: serverFor(opts),
            profileDir: profileFor(opts),
            username,
            encryption,
            ...(opts.displayName !== undefined && { displayName: opts.displayName }),
            ...(opts.deviceName !== undefined && { deviceName: opts.deviceName }),
            ...(opts.invite !== undefined && { inviteToken: opts.invite }),
          });
          try {
            io.out(`registered @${client.username} (user ${client.userId}, device ${client.deviceId})`);
            io.out(`profile: ${client.profileDir}`);
          } finally {
            await client.close();
          }
          await announceEncryption(io, client.profileDir, opts, encryption);
        },
      ),
    );

  cmd(program, "link-code", "print a one-time code with which another device joins this user").action(
    run(io, async (opts: GlobalOptions) =>
      withClient(opts, io, "none", async ({ client }) => {
        const { code, expiresAtMs } = await client.createLinkCode();
        io.out(code);
        io.err(`valid until ${new Date(Number(expiresAtMs)).toLocaleTimeString()}; on the new device run:`);
        io.err(`  switchboard link ${code} --profile <new profile dir>`);
      }),
    ),
  );

  cmd(program, "link <code>", "join an existing user with a link code, in a new profile")
    .option("--device-name <name>", "name of this device (default: the host name)")
    .action(
      run(io, async (code: string, opts: GlobalOptions & { deviceName?: string }) => {
        const encryption = opts.encryption !== false;
        const client = await SwitchboardClient.link({
          serverUrl: serverFor(opts),
          profileDir: profileFor(opts),
          code,
          encryption,
          ...(opts.deviceName !== undefined && { deviceName: opts.deviceName }),
        });
        try {
          io.out(`linked this device to @${client.username} (device ${client.deviceId})`);
          io.out(`profile: ${client.profileDir}`);
        } finally {
          await client.close();
        }
        await announceEncryption(io, client.profileDir, opts, encryption);
      }),
    );

  cmd(
    program,
    "send <to> [text]",
    "send a message (with --file, an end-to-end encrypted file) to a username, or to a conversation id (g_..., d_...)",
  )
    .option("--file <path>", "attach this file, end-to-end encrypted; the text, if any, is its caption")
    .action(
      run(io, async (to: string, text: string | undefined, opts: GlobalOptions & { file?: string }) => {
        if (opts.file !== undefined) {
          await sendFile(io, opts, to, opts.file, text);
          return;
        }
        if (text === undefined) throw new Error("nothing to send: give a text, --file <path>, or both");
        await withClient(opts, io, "content", async ({ client, encrypted }) => {
          const conversationId = await resolveConversation(client, to);
          const result = await client.sendUnary(conversationId, text);
          io.out(`sent #${result.seq} to ${to} (${encrypted ? "end-to-end encrypted" : "not encrypted"})`);
        });
      }),
    );

  cmd(
    program,
    "download <with> <seq>",
    "save the files of entry #seq of a conversation (username or conversation id), verified and decrypted",
  )
    .option(
      "--out <path>",
      "where to write the file (default: the name it was sent with, in the current directory); a directory for several",
    )
    .option("--force", "replace a file that already exists")
    .action(
      run(io, async (target: string, seq: string, opts: GlobalOptions & { out?: string; force?: boolean }) =>
        withClient(opts, io, "content", (session) =>
          download(session.client, io, target, positiveSeq(seq), opts.out, opts.force === true),
        ),
      ),
    );

  cmd(
    program,
    "safety-number <username>",
    "print the safety number with each device of a user, to compare with theirs in person or on a call",
  )
    .option("--verify <deviceId>", "mark that device of theirs verified once its number matched")
    .action(
      run(io, async (username: string, opts: GlobalOptions & { verify?: string }) =>
        withClient(opts, io, "content", async ({ client, encrypted }) => {
          if (!encrypted) {
            throw new Error(
              "safety numbers belong to end-to-end encryption, which this profile does not use (--encryption turns it on for good)",
            );
          }
          await safetyNumbers(client, io, username.replace(/^@/, ""), opts.verify);
        }),
      ),
    );

  cmd(program, "listen", "print incoming messages and receipts until Ctrl-C").action(
    run(io, async (opts: GlobalOptions) =>
      withClient(opts, io, "stream", (session) => listen(session, opts, io)),
    ),
  );

  cmd(
    program,
    "privacy",
    "show your privacy settings, or change who may add you to groups (--groups) and who may start a direct conversation with you (--direct)",
  )
    .option("--groups <audience>", "who may add you to groups: everyone, contacts or nobody", audience)
    .option(
      "--direct <audience>",
      "who may start a new direct conversation with you: everyone, contacts or nobody",
      audience,
    )
    .action(
      run(io, async (opts: GlobalOptions & { groups?: Audience; direct?: Audience }) =>
        withClient(opts, io, "none", async ({ client }) => {
          const changes = {
            ...(opts.groups !== undefined && { groupAdd: opts.groups }),
            ...(opts.direct !== undefined && { directOpen: opts.direct }),
          };
          const settings =
            Object.keys(changes).length === 0 ? await client.getPrivacy() : await client.setPrivacy(changes);
          io.out(`groups: ${settings.groupAdd}`);
          io.out(`direct: ${settings.directOpen}`);
          io.err('"contacts" are the users who share a conversation with you (direct or group)');
        }),
      ),
    );

  const group = program.command("group").description("manage groups");
  cmd(
    group,
    "create <title> [members...]",
    "create a group with you as admin and the given usernames",
  ).action(
    run(io, async (title: string, members: string[], opts: GlobalOptions) =>
      withClient(opts, io, "none", async ({ client }) => {
        const ids = await userIdsFor(client, members);
        const conversation = await client.createGroup(title, ids);
        io.out(conversation.conversationId);
        io.err(
          `created group "${title}" with ${members.length === 0 ? "just you" : members.map(at).join(", ")}`,
        );
      }),
    ),
  );
  cmd(group, "add <groupId> <usernames...>", "add users to a group (admins only)").action(
    run(io, async (groupId: string, usernames: string[], opts: GlobalOptions) =>
      withClient(opts, io, "content", async ({ client, encrypted }) => {
        const entry = await client.addMembers(requireGroupId(groupId), await userIdsFor(client, usernames));
        // The entry rotates this device's sender key at once (new members must not read what
        // came before), rather than whenever this device next reads the log.
        if (entry !== undefined && encrypted) await client.toIncoming(entry);
        io.out(
          entry === undefined
            ? "nobody added (already members)"
            : `added ${usernames.map(at).join(", ")} (#${entry.seq})`,
        );
      }),
    ),
  );
  cmd(group, "remove <groupId> <usernames...>", "remove users from a group (admins only)").action(
    run(io, async (groupId: string, usernames: string[], opts: GlobalOptions) =>
      withClient(opts, io, "content", async ({ client, encrypted }) => {
        const entry = await client.removeMembers(
          requireGroupId(groupId),
          await userIdsFor(client, usernames),
        );
        // As for add: removed members must not hold the key of what this device sends next.
        if (entry !== undefined && encrypted) await client.toIncoming(entry);
        io.out(
          entry === undefined
            ? "nobody removed (not members)"
            : `removed ${usernames.map(at).join(", ")} (#${entry.seq})`,
        );
      }),
    ),
  );

  for (const [name, groupsOnly] of [
    ["conversations", false],
    ["groups", true],
  ] as const) {
    cmd(program, name, groupsOnly ? "list your groups" : "list your conversations").action(
      run(io, async (opts: GlobalOptions) =>
        withClient(opts, io, "none", async ({ client }) => {
          const names = new Names(client);
          let conversations = await client.listConversations();
          if (groupsOnly) conversations = conversations.filter((c) => c.kind === ConversationKind.GROUP);
          await names.load(conversations.map((c) => c.peerUserId).filter((id) => id !== ""));
          if (conversations.length === 0) io.err(groupsOnly ? "no groups" : "no conversations");
          for (const c of conversations) {
            const unread = c.lastSeq > c.readUpTo ? c.lastSeq - c.readUpTo : 0n;
            const what =
              c.kind === ConversationKind.GROUP
                ? `${printable(c.title)} (${c.memberCount} members)`
                : names.label(c.peerUserId);
            io.out(
              `${c.conversationId}  ${what}  last #${c.lastSeq}${unread > 0n ? `  unread ${unread}` : ""}`,
            );
          }
        }),
      ),
    );
  }

  cmd(program, "history <with>", "print a conversation's log (username or conversation id)")
    .option("--after <seq>", "entries after this seq", nonNegative, 0)
    .option("--limit <n>", "at most this many entries (max 1000)", nonNegative, 50)
    .action(
      run(io, async (target: string, opts: GlobalOptions & { after: number; limit: number }) =>
        withClient(opts, io, "content", async ({ client, encrypted }) => {
          const conversationId = await resolveConversation(client, target);
          const page = await client.getHistory(conversationId, { afterSeq: opts.after, limit: opts.limit });
          const names = new Names(client);
          await names.load(page.entries.flatMap((e) => [e.senderUserId, ...(e.membership?.userIds ?? [])]));
          const view: EntryView = {
            encrypted,
            download: downloadHint(opts, hintTarget(target, conversationId)),
          };
          for (const e of page.entries) {
            if (!e.keysOnly) io.out(formatEntry(e, names, client.userId, view));
          }
          if (page.entries.length === 0) io.err(`no entries after #${opts.after} (last is #${page.lastSeq})`);
          const last = page.entries.at(-1);
          if (page.hasMore && last !== undefined) io.err(`more: --after ${last.seq}`);
        }),
      ),
    );

  cmd(program, "chat <with>", "chat interactively with a user or in a conversation").action(
    run(io, async (target: string, opts: GlobalOptions) =>
      withClient(opts, io, "stream", (session) => chat(session, target, opts, io)),
    ),
  );
}

/** After register or link: puts the new device's keys in the key directory, and says so. */
async function announceEncryption(
  io: CliIo,
  profileDir: string,
  opts: GlobalOptions,
  encryption: boolean,
): Promise<void> {
  if (!encryption) {
    io.out("end-to-end encryption: off (--no-encryption); this profile talks to clients without it");
    return;
  }
  try {
    await publishKeys(profileDir, serverFor(opts));
  } catch (err) {
    throw new Error(
      `the profile is ready, but its encryption keys could not be uploaded (any later command retries): ${describeError(err)}`,
    );
  }
  io.out("end-to-end encryption: on (this device's keys are in the key directory)");
}

// -----------------------------------------------------------------------------------------------
// Plumbing

function serverFor(opts: GlobalOptions): string {
  return opts.server ?? process.env.SWITCHBOARD_URL ?? DEFAULT_SERVER;
}

function profileFor(opts: GlobalOptions): string {
  return opts.profile ?? process.env.SWITCHBOARD_PROFILE ?? join(homedir(), ".switchboard", "profile");
}

/**
 * What a command does with the profile's end-to-end encryption: "none" touches no content (lists,
 * link codes), "content" encrypts or decrypts without a stream, "stream" opens the stream.
 */
type ClientUse = "none" | "content" | "stream";

/** An open client for one command. */
interface Session {
  client: SwitchboardClient;
  /** True when the profile is end-to-end encrypted. */
  encrypted: boolean;
  /** Opens the stream; the command's hold on the profile passes to the client. */
  connect(): Promise<void>;
}

async function withClient<T>(
  opts: GlobalOptions,
  io: CliIo,
  use: ClientUse,
  body: (session: Session) => Promise<T>,
): Promise<T> {
  const profileDir = profileFor(opts);
  const server = opts.server ?? process.env.SWITCHBOARD_URL;
  const encrypted = await chooseEncryption(
    profileDir,
    opts.encryption,
    use === "none" ? undefined : (server ?? ""),
  );
  if (opts.encryption === false && encrypted === false && (await markedEncrypted(profileDir))) {
    io.err(
      "-- warning: this profile was end-to-end encrypted and lost its keys; --no-encryption sends and shows plaintext",
    );
  }
  const withKeys = encrypted && use !== "none";
  let unlock = withKeys ? await lockProfile(profileDir) : undefined;
  const release = async (): Promise<void> => {
    const u = unlock;
    unlock = undefined;
    await u?.();
  };
  try {
    // A stream uploads missing keys when it opens; without one, this is the only chance.
    if (withKeys && use === "content") await publishKeys(profileDir, server);
    const client = await SwitchboardClient.open({
      profileDir,
      encryption: withKeys,
      acceptUnencrypted: opts.acceptUnencrypted === true,
      ...(server !== undefined && { serverUrl: server }),
    });
    if (use === "content") {
      const names = new Names(client);
      client.on("identityChanged", async (event) => {
        await names.load([event.device.userId]).catch(() => {});
        io.err(identityWarning(event, names));
      });
      client.on("devicesChanged", async (event) => {
        await names.load([event.userId]).catch(() => {});
        const line = devicesWarning(event, names, client.userId);
        if (line !== undefined) io.err(line);
      });
    }
    try {
      return await body({
        client,
        encrypted,
        connect: async () => {
          // The client takes the profile's lock itself when its stream opens.
          await release();
          await client.connect();
        },
      });
    } finally {
      await client.close();
    }
  } finally {
    await release();
  }
}

/** Wraps an action: one clear line on stderr and exit code 1 on failure. */
function run<A extends unknown[]>(
  io: CliIo,
  action: (...args: A) => Promise<void>,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await action(...args);
    } catch (err) {
      io.err(`switchboard: ${describeError(err)}`);
      io.exit(1);
    }
  };
}

/** One line for people: what went wrong, with the gRPC code name where there is one. */
export function describeError(err: unknown): string {
  if (err instanceof ConnectError) {
    const hint =
      err.code === Code.Unavailable && /ECONNREFUSED|ENOTFOUND|ETIMEDOUT/.test(err.rawMessage)
        ? " (is the server running? see --server)"
        : "";
    const noKeys =
      err.code === Code.FailedPrecondition &&
      err.rawMessage.includes("no device of the conversation has keys")
        ? " (nobody there uses end-to-end encryption yet; a client without it is reached from a profile registered with --no-encryption)"
        : "";
    const invite =
      err.code === Code.PermissionDenied && err.rawMessage === "registration needs an invite"
        ? " (this server registers by invite only: ask its operator for one and pass --invite <token>)"
        : "";
    return `${err.rawMessage} [${Code[err.code] ?? err.code}]${hint}${noKeys}${invite}`;
  }
  return err instanceof Error ? err.message : String(err);
}

function nonNegative(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError("a non-negative integer");
  return n;
}

function positiveSeq(value: string): bigint {
  if (!/^[0-9]+$/.test(value) || BigInt(value) < 1n) {
    throw new Error(`"${value}" is not a seq (the #number of an entry, from history or listen)`);
  }
  return BigInt(value);
}

function requireGroupId(id: string): string {
  if (!id.startsWith("g_")) throw new Error(`"${id}" is not a group id (they start with g_)`);
  return id;
}

function at(username: string): string {
  return `@${username.replace(/^@/, "")}`;
}

/** A username (with or without @) => the direct conversation; a conversation id => itself. */
export async function resolveConversation(client: SwitchboardClient, target: string): Promise<string> {
  if (target.startsWith("g_") || target.startsWith("d_")) return target;
  const username = target.replace(/^@/, "");
  if (username === client.username) throw new Error("that is you; name someone else or a group");
  const user = await client.userByUsername(username);
  return (await client.openDirect(user.userId)).conversationId;
}

async function userIdsFor(client: SwitchboardClient, usernames: readonly string[]): Promise<string[]> {
  const wanted = usernames.map((u) => u.replace(/^@/, ""));
  if (wanted.length === 0) return [];
  const users = await client.lookupUsers({ usernames: wanted });
  const byName = new Map(users.map((u) => [u.username, u.userId]));
  const missing = wanted.filter((u) => !byName.has(u));
  if (missing.length > 0)
    throw new Error(`unknown user${missing.length > 1 ? "s" : ""}: ${missing.map(at).join(", ")}`);
  return wanted.map((u) => byName.get(u)!);
}

/** Usernames for user ids, looked up in batches and remembered. */
class Names {
  private readonly known = new Map<string, string>();

  constructor(private readonly client: SwitchboardClient) {
    this.known.set(client.userId, client.username);
  }

  async load(userIds: readonly string[]): Promise<void> {
    const missing = [...new Set(userIds)].filter((id) => id !== "" && !this.known.has(id));
    for (let i = 0; i < missing.length; i += 256) {
      const users = await this.client.lookupUsers({ userIds: missing.slice(i, i + 256) });
      for (const u of users) this.known.set(u.userId, u.username);
    }
  }

  label(userId: string): string {
    // The server hands out names and ids: shown on one line, whatever they hold.
    const name = this.known.get(userId);
    return printable(name === undefined ? userId : `@${name}`);
  }
}

const decoder = new TextDecoder();

function time(ms: bigint): string {
  return new Date(Number(ms)).toTimeString().slice(0, 8);
}

/** How entries are shown to this device. */
interface EntryView {
  /** True when the profile is end-to-end encrypted: entries that arrive in plaintext are marked. */
  encrypted: boolean;
  /** The command that downloads an entry's files, for the hint under them. */
  download?: (seq: bigint) => string;
}

function text(e: IncomingEntry): string {
  if (e.redacted) return "(deleted)";
  if (e.decodeError instanceof DecryptError && e.decodeError.reason === "not-addressed") {
    // The server hands each device only its own ciphertext; this entry had none for this one.
    return "(nothing this device can read: encrypted for other devices, before it was linked or had keys)";
  }
  if (e.decodeError instanceof DecryptError && e.decodeError.reason === "unencrypted") {
    return (
      "(!! refused: arrived NOT end-to-end encrypted from a contact who encrypts; the server may have " +
      "stripped the encryption. --accept-unencrypted shows it)"
    );
  }
  if (e.decodeError instanceof DecryptError && e.decodeError.reason === "wrong-context") {
    return `(!! refused: ${printable(e.decodeError.message)})`;
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
      return [`${head} ${who}: ${body}${plain}`, ...files].join("\n");
    }
    case "edit":
      return `${head} ${who} edited #${e.targetSeq}: ${text(e)}${plain}`;
    case "delete":
      return `${head} ${who} deleted #${e.targetSeq}`;
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
    default:
      return `${head} ${who}: (unknown entry)`;
  }
}

/** What a user should know when a contact's device shows a new identity key. */
function identityWarning(event: IdentityChangeEvent, names: Names): string {
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
function devicesWarning(event: DevicesChangedEvent, names: Names, selfUserId: string): string | undefined {
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
function hintTarget(target: string, conversationId: string): string {
  if (target.startsWith("g_") || target.startsWith("d_")) return conversationId;
  return target.replace(/^@/, "");
}

/** The download command for an entry's files, repeating --profile when it was given. */
function downloadHint(opts: GlobalOptions, target: string): (seq: bigint) => string {
  const profile = opts.profile === undefined ? "" : ` --profile ${shellArg(opts.profile)}`;
  return (seq) => `switchboard download ${shellArg(target)} ${seq}${profile}`;
}

function interrupted(io: CliIo): Promise<void> {
  if (io.interrupted !== undefined) return io.interrupted;
  return new Promise((resolve) => {
    process.once("SIGINT", () => resolve());
    process.once("SIGTERM", () => resolve());
  });
}

/** Labels conversations as people know them: "@bob" for direct ones, the title for groups. */
class ConversationLabels {
  private readonly known = new Map<string, Conversation>();

  constructor(
    private readonly client: SwitchboardClient,
    private readonly names: Names,
  ) {}

  async load(conversationId: string): Promise<void> {
    if (this.known.has(conversationId)) return;
    try {
      const { conversation } = await this.client.getConversation(conversationId);
      this.known.set(conversationId, conversation);
      if (conversation.peerUserId !== "") await this.names.load([conversation.peerUserId]);
    } catch {
      // Removed from the group meanwhile, or the server is away: the id is label enough.
    }
  }

  label(conversationId: string): string {
    const c = this.known.get(conversationId);
    if (c === undefined) return conversationId;
    return c.kind === ConversationKind.GROUP ? printable(c.title) : this.names.label(c.peerUserId);
  }

  /** How commands name the conversation: the peer's username for a direct one, else its id. */
  target(conversationId: string): string {
    const c = this.known.get(conversationId);
    const peer = c?.kind === ConversationKind.DIRECT ? this.names.label(c.peerUserId) : "";
    return peer.startsWith("@") ? peer.slice(1) : conversationId;
  }
}

function receiptLine(r: ReceiptEvent, names: Names, where: string, tty: boolean): string {
  if (r.kind === "read") {
    const ticks = tty ? "\x1b[34m✓✓\x1b[0m" : "✓✓ read";
    return `${ticks} ${tty ? "read " : ""}by ${names.label(r.userId)} up to #${r.upToSeq}${where}`;
  }
  return `✓✓ delivered to ${names.label(r.userId)} up to #${r.upToSeq}${where}`;
}

// -----------------------------------------------------------------------------------------------
// listen

async function listen(session: Session, opts: GlobalOptions, io: CliIo): Promise<void> {
  const { client, encrypted } = session;
  const names = new Names(client);
  const labels = new ConversationLabels(client, names);
  client.on("entry", async (e) => {
    await labels.load(e.conversationId);
    await names.load([e.senderUserId, ...(e.membership?.userIds ?? [])]);
    const view: EntryView = {
      encrypted,
      download: downloadHint(opts, labels.target(e.conversationId)),
    };
    io.out(`(${labels.label(e.conversationId)}) ${formatEntry(e, names, client.userId, view)}`);
  });
  client.on("receipt", async (r) => {
    await labels.load(r.conversationId);
    await names.load([r.userId]);
    io.out(receiptLine(r, names, ` in ${labels.label(r.conversationId)}`, io.isTTY));
  });
  client.on("identityChanged", async (event) => {
    await names.load([event.device.userId]).catch(() => {});
    io.out(identityWarning(event, names));
  });
  client.on("devicesChanged", async (event) => {
    await names.load([event.userId]).catch(() => {});
    const line = devicesWarning(event, names, client.userId);
    if (line !== undefined) io.out(line);
  });
  client.on("caughtUp", (e) =>
    io.err(
      `-- caught up (${e.entries} waiting entries); listening${encrypted ? "" : " (this profile is not end-to-end encrypted)"}, Ctrl-C to stop`,
    ),
  );
  client.on("disconnected", (e) => {
    if (e.retryInMs !== undefined)
      io.err(`-- disconnected (${e.error?.rawMessage ?? "?"}); retrying in ${e.retryInMs} ms`);
  });
  client.on("error", (e) => io.err(`-- ${e.fatal ? "fatal: " : ""}${describeError(e.error)}`));
  const stop = interrupted(io);
  const fatal = client.waitFor("error", (e) => e.fatal);
  await session.connect();
  const end = await Promise.race([stop.then(() => undefined), fatal]);
  if (end !== undefined) throw end.error;
}

// -----------------------------------------------------------------------------------------------
// send --file, download, safety-number

async function sendFile(
  io: CliIo,
  opts: GlobalOptions,
  to: string,
  path: string,
  caption: string | undefined,
): Promise<void> {
  let size: number;
  try {
    const info = await stat(path);
    if (!info.isFile()) throw new Error(`${path} is not a file`);
    size = info.size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") throw new Error(`no file at ${path}`);
    throw err;
  }
  await withClient(opts, io, "stream", async (session) => {
    const { client } = session;
    if (!session.encrypted) {
      throw new Error(
        "files are sent end-to-end encrypted only, and this profile does not use encryption (--encryption turns it on for good)",
      );
    }
    const conversationId = await resolveConversation(client, to);
    // Attachments go over the stream, which also brings what others sent meanwhile: those
    // entries are acknowledged, so they are shown here rather than lost to the next `listen`.
    const names = new Names(client);
    const labels = new ConversationLabels(client, names);
    client.on("entry", async (e) => {
      if (e.senderUserId === client.userId) return; // this user's own doings
      await labels.load(e.conversationId);
      await names.load([e.senderUserId, ...(e.membership?.userIds ?? [])]);
      const view: EntryView = {
        encrypted: true,
        download: downloadHint(opts, labels.target(e.conversationId)),
      };
      io.out(`(${labels.label(e.conversationId)}) ${formatEntry(e, names, client.userId, view)}`);
    });
    client.on("identityChanged", async (event) => {
      await names.load([event.device.userId]).catch(() => {});
      io.err(identityWarning(event, names));
    });
    client.on("devicesChanged", async (event) => {
      await names.load([event.userId]).catch(() => {});
      const line = devicesWarning(event, names, client.userId);
      if (line !== undefined) io.err(line);
    });
    client.on("disconnected", (e) => {
      if (e.retryInMs !== undefined)
        io.err(`-- disconnected (${e.error?.rawMessage ?? "?"}); retrying in ${e.retryInMs} ms`);
    });
    client.on("error", (e) => io.err(`-- ${e.fatal ? "fatal: " : ""}${describeError(e.error)}`));
    await session.connect();
    const result = await client.sendAttachment(
      conversationId,
      { path, fileName: basename(path) },
      caption === undefined ? {} : { caption },
    );
    io.out(
      `sent #${result.seq} to ${to} (end-to-end encrypted): ${printable(result.attachment.fileName)}, ${formatBytes(size)}`,
    );
  });
}

async function download(
  client: SwitchboardClient,
  io: CliIo,
  target: string,
  seq: bigint,
  out: string | undefined,
  force: boolean,
): Promise<void> {
  const conversationId = await resolveConversation(client, target);
  const page = await client.getHistory(conversationId, { afterSeq: seq - 1n, limit: 1 });
  const entry = page.entries[0];
  if (entry === undefined || entry.seq !== seq) {
    throw new Error(`there is no entry #${seq} with ${target} (the last is #${page.lastSeq})`);
  }
  if (entry.redacted) throw new Error(`entry #${seq} was deleted for everyone, and its files with it`);
  if (entry.decodeError !== undefined) {
    throw new Error(
      `entry #${seq} cannot be decrypted on this device, so neither can its files: ${entry.decodeError.message}`,
    );
  }
  const files = entry.keysOnly ? [] : entry.attachments;
  if (files.length === 0) throw new Error(`entry #${seq} has no attachment`);

  // Every target is settled (and checked) before anything is downloaded.
  const paths: string[] = [];
  if (files.length === 1 && out !== undefined && !(await isDirectory(out))) {
    paths.push(out);
  } else {
    const dir = out ?? ".";
    if (out !== undefined && !(await isDirectory(out))) {
      throw new Error(`entry #${seq} has ${files.length} files: --out must be an existing directory`);
    }
    const taken = new Set<string>();
    for (const [i, a] of files.entries()) {
      let name = safeFileName(a.fileName, `attachment-${seq}${files.length > 1 ? `-${i + 1}` : ""}`);
      if (taken.has(name)) name = `${i + 1}-${name}`;
      taken.add(name);
      paths.push(out === undefined ? name : join(dir, name));
    }
  }
  for (const path of paths) {
    if (!(await isDirectory(dirname(path))))
      throw new Error(`cannot save ${path}: no directory ${dirname(path)}`);
    if (!force && (await exists(path))) throw new FileExistsError(path);
  }

  for (const [i, a] of files.entries()) {
    const path = paths[i]!;
    // Streamed into a part file beside the target, verified, then moved into place.
    const part = partPath(path);
    try {
      await client.downloadAttachment(conversationId, a, { path: part });
    } catch (err) {
      await unlink(part).catch(() => {});
      if (!(err instanceof AttachmentError)) throw err;
      const why =
        err.reason === "digest"
          ? "the downloaded bytes are not the ones the sender uploaded (tampered with or corrupted)"
          : err.reason === "authentication"
            ? "the bytes do not decrypt with the key the sender sent (tampered with)"
            : "the download is malformed";
      throw new Error(
        `${printable(a.fileName) || "the file"} of entry #${seq} failed verification: ${why}; nothing was written`,
      );
    }
    const { size } = await stat(part);
    await placeFile(part, path, force);
    io.out(`saved ${path} (${formatBytes(size)}; verified and decrypted)`);
  }
}

async function safetyNumbers(
  client: SwitchboardClient,
  io: CliIo,
  username: string,
  verify: string | undefined,
): Promise<void> {
  const user = await client.userByUsername(username);
  let numbers = await client.safetyNumbers(user.userId);
  let accepting = false;
  if (numbers.length === 0) {
    throw new Error(
      `@${username} has no ${user.userId === client.userId ? "other " : ""}device with end-to-end encryption keys yet`,
    );
  }
  if (verify !== undefined) {
    if (!numbers.some((n) => n.deviceId === verify)) {
      throw new Error(
        `${verify} is not one of @${username}'s devices with keys (${numbers.map((n) => n.deviceId).join(", ")})`,
      );
    }
    accepting = numbers.some((n) => n.deviceId === verify && n.identityChanged);
    await client.verifyContact(user.userId, verify);
    numbers = await client.safetyNumbers(user.userId);
  }
  for (const n of numbers) {
    const state = n.identityChanged
      ? "IDENTITY CHANGED: this is the number of its NEW key; your verification of the old key no longer holds, and nothing is sent to or read from this device until you accept the new key"
      : n.verified
        ? "verified"
        : "not verified";
    io.out(`${printable(n.deviceId)}  ${n.display}  ${state}`);
  }
  const changed = numbers.filter((n) => n.identityChanged);
  if (verify !== undefined) {
    io.err(
      accepting
        ? `accepted @${username}'s device ${verify}'s new key, verified: messages to and from it resume`
        : `marked @${username}'s device ${verify} verified: a new key of that device will be refused`,
    );
  } else if (changed.length > 0) {
    io.err(
      `compare the new number with what @${username} sees (switchboard safety-number ${shellArg(client.username)} on their device); ` +
        `only if it matches, accept the new key: switchboard safety-number ${shellArg(username)} --verify ${shellArg(printable(changed[0]?.deviceId ?? "<device>"))}`,
    );
  } else {
    io.err(
      `compare with what @${username} sees (switchboard safety-number ${shellArg(client.username)} on their device); ` +
        `if it matches: switchboard safety-number ${shellArg(username)} --verify <device>`,
    );
  }
}

// -----------------------------------------------------------------------------------------------
// chat

const TYPING_REFRESH_MS = 3_000;
const TYPING_IDLE_MS = 5_000;
const TYPING_EXPIRY_MS = 10_000;

async function chat(session: Session, target: string, opts: GlobalOptions, io: CliIo): Promise<void> {
  const { client, encrypted } = session;
  const conversationId = await resolveConversation(client, target);
  const names = new Names(client);
  const labels = new ConversationLabels(client, names);
  await labels.load(conversationId);
  const here = labels.label(conversationId);
  const view: EntryView = { encrypted, download: downloadHint(opts, hintTarget(target, conversationId)) };
  const input = io.input ?? process.stdin;
  const tty = io.isTTY && (input as NodeJS.ReadStream).isTTY === true;
  let rl: Interface | undefined;
  const show = (line: string): void => {
    if (!tty) {
      io.out(line);
      return;
    }
    process.stdout.write(`\r\x1b[K${line}\n`);
    rl?.prompt(true);
  };

  // Context: the last entries this device has already seen; the stream brings the rest once.
  const seen = client.localCursor(conversationId)?.delivered ?? 0n;
  if (seen > 0n) {
    const from = seen > 20n ? seen - 20n : 0n;
    const page = await client.getHistory(conversationId, { afterSeq: from, limit: 20 });
    const earlier = page.entries.filter((e) => e.seq <= seen && !e.keysOnly);
    await names.load(earlier.flatMap((e) => [e.senderUserId, ...(e.membership?.userIds ?? [])]));
    for (const e of earlier) show(formatEntry(e, names, client.userId, view));
  }

  const typingUntil = new Map<string, number>();
  const sentHere = new Set<string>();
  client.on("entry", async (e) => {
    if (e.conversationId !== conversationId) {
      await labels.load(e.conversationId);
      if (e.kind === "message" && e.senderUserId !== client.userId) {
        await names.load([e.senderUserId]);
        show(`(new message from ${names.label(e.senderUserId)} in ${labels.label(e.conversationId)})`);
      }
      return;
    }
    if (e.fromThisDevice && sentHere.has(e.clientMsgId)) return; // shown when acked
    await names.load([e.senderUserId, ...(e.membership?.userIds ?? [])]);
    typingUntil.delete(e.senderUserId);
    show(formatEntry(e, names, client.userId, view));
    if (e.senderUserId !== client.userId) client.markRead(conversationId, e.seq);
  });
  client.on("receipt", async (r) => {
    if (r.conversationId !== conversationId) return;
    await names.load([r.userId]);
    show(receiptLine(r, names, "", tty));
  });
  client.on("typing", async (t) => {
    if (t.conversationId !== conversationId || t.userId === client.userId) return;
    const wasTyping = (typingUntil.get(t.userId) ?? 0) > Date.now();
    if (!t.active) {
      typingUntil.delete(t.userId);
      return;
    }
    typingUntil.set(t.userId, Date.now() + TYPING_EXPIRY_MS);
    if (!wasTyping) {
      await names.load([t.userId]);
      show(`${names.label(t.userId)} is typing…`);
    }
  });
  client.on("disconnected", (e) => {
    if (e.retryInMs !== undefined)
      show(`-- offline (${e.error?.rawMessage ?? "?"}); retrying in ${e.retryInMs} ms`);
  });
  client.on("identityChanged", async (event) => {
    await names.load([event.device.userId]).catch(() => {});
    show(identityWarning(event, names));
  });
  client.on("devicesChanged", async (event) => {
    await names.load([event.userId]).catch(() => {});
    const line = devicesWarning(event, names, client.userId);
    if (line !== undefined) show(line);
  });
  client.on("connected", () =>
    show(
      `-- connected; chatting in ${here}, ${encrypted ? "end-to-end encrypted" : "NOT end-to-end encrypted"}. ` +
        `Type a message and press Enter${encrypted ? "; /file <path> sends a file" : ""}; Ctrl-D to leave.`,
    ),
  );
  client.on("error", (e) => show(`-- ${e.fatal ? "fatal: " : ""}${describeError(e.error)}`));

  // Typing indicators: announce while keys are pressed, repeat every few seconds, stop when idle.
  let typingSentAt = 0;
  let idleTimer: NodeJS.Timeout | undefined;
  const stopTyping = (): void => {
    if (idleTimer !== undefined) clearTimeout(idleTimer);
    idleTimer = undefined;
    if (typingSentAt !== 0) client.setTyping(conversationId, false);
    typingSentAt = 0;
  };

  const sendFileInChat = async (path: string, clientMsgId: string): Promise<void> => {
    try {
      if (!encrypted)
        throw new Error("files are sent end-to-end encrypted only, and this profile does not use encryption");
      if (path === "") throw new Error("/file needs the path of a file");
      const info = await stat(path).catch(() => undefined);
      if (info === undefined || !info.isFile()) throw new Error(`no file at ${path}`);
      const r = await client.sendAttachment(
        conversationId,
        { path, fileName: basename(path) },
        { clientMsgId },
      );
      show(
        `#${r.seq} [${time(r.serverTimeMs)}] you: (file)  ✓\n    [file] ${printable(r.attachment.fileName)} (${formatBytes(info.size)})`,
      );
    } catch (err) {
      show(`-- not sent: ${describeError(err)}`);
    }
  };

  const sends: Array<Promise<void>> = [];
  const onLine = (line: string): void => {
    const message = line.trim();
    if (message === "") return;
    if (message === "/quit") {
      rl?.close();
      return;
    }
    stopTyping();
    const clientMsgId = newClientMsgId();
    sentHere.add(clientMsgId);
    if (/^\/file(\s|$)/.test(message)) {
      sends.push(sendFileInChat(message.slice("/file".length).trim(), clientMsgId));
      return;
    }
    const sending = client.send(conversationId, message, { clientMsgId }).then(
      (r) => show(`#${r.seq} [${time(r.serverTimeMs)}] you: ${message}  ✓`),
      (err: unknown) => show(`-- not sent: ${describeError(err)}`),
    );
    sends.push(sending);
  };

  // Handlers go on in the same tick as the interface is made: piped input may be read at once.
  const lines = createInterface({ input, output: tty ? process.stdout : undefined, terminal: tty });
  rl = lines;
  const closed = new Promise<void>((resolve) =>
    lines.once("close", () => {
      // A receipt or typing event after Ctrl-D must not prompt again: prompting resumes stdin,
      // and the process would wait on the terminal for good.
      rl = undefined;
      resolve();
    }),
  );
  lines.on("line", onLine);
  if (tty) {
    emitKeypressEvents(input as NodeJS.ReadStream, lines);
    type Key = { name?: string; ctrl?: boolean; meta?: boolean } | undefined;
    (input as NodeJS.ReadStream).on("keypress", (s: string | undefined, key: Key) => {
      // Only keys that type something: not Enter, Ctrl-D or the arrows.
      if (key?.name === "return" || key?.name === "enter" || key?.ctrl || key?.meta) return;
      if (s === undefined || (key?.name !== undefined && key.name.length > 1 && key.name !== "space")) return;
      const now = Date.now();
      if (now - typingSentAt >= TYPING_REFRESH_MS) {
        typingSentAt = now;
        client.setTyping(conversationId, true);
      }
      if (idleTimer !== undefined) clearTimeout(idleTimer);
      idleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
    });
  }

  const fatal = client.waitFor("error", (e) => e.fatal);
  const connected = session.connect();
  connected.catch(() => {}); // a fatal error also arrives through `fatal`
  const first = await Promise.race([
    connected.then(() => "connected" as const),
    closed.then(() => "closed" as const),
  ]);
  if (first === "connected" && tty) lines.prompt();
  const end =
    first === "closed"
      ? undefined
      : await Promise.race([closed.then(() => undefined), interrupted(io).then(() => undefined), fatal]);
  stopTyping();
  lines.close();
  if (end !== undefined) throw end.error;
  // Input ended (piped input, or Ctrl-D): let what was typed reach the server first.
  await Promise.race([Promise.allSettled(sends), interrupted(io)]);
}
