import { homedir } from "node:os";
import { join } from "node:path";
import { createInterface, emitKeypressEvents, type Interface } from "node:readline";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Command, InvalidArgumentError } from "commander";
import { type Conversation, ConversationKind } from "../../gen/switchboard/v1/conversations_pb.js";
import { MembershipAction } from "../../gen/switchboard/v1/entry_pb.js";
import { newClientMsgId, SwitchboardClient } from "../client.js";
import type { IncomingEntry, ReceiptEvent } from "../types.js";

const DEFAULT_SERVER = "http://127.0.0.1:7420";

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
 * Adds the client commands (register, link, send, listen, chat, groups, history, ...) to a
 * commander program. Each takes --server and --profile; errors print one line and exit 1.
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
      );

  cmd(program, "register <username>", "create a user with this device as its first, in a new profile")
    .option("--display-name <name>", "name shown to others (default: the username)")
    .option("--device-name <name>", "name of this device (default: the host name)")
    .action(
      run(
        io,
        async (username: string, opts: GlobalOptions & { displayName?: string; deviceName?: string }) => {
          const client = await SwitchboardClient.register({
            serverUrl: serverFor(opts),
            profileDir: profileFor(opts),
            username,
            ...(opts.displayName !== undefined && { displayName: opts.displayName }),
            ...(opts.deviceName !== undefined && { deviceName: opts.deviceName }),
          });
          try {
            io.out(`registered @${client.username} (user ${client.userId}, device ${client.deviceId})`);
            io.out(`profile: ${client.profileDir}`);
          } finally {
            await client.close();
          }
        },
      ),
    );

  cmd(program, "link-code", "print a one-time code with which another device joins this user").action(
    run(io, async (opts: GlobalOptions) =>
      withClient(opts, async (client) => {
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
        const client = await SwitchboardClient.link({
          serverUrl: serverFor(opts),
          profileDir: profileFor(opts),
          code,
          ...(opts.deviceName !== undefined && { deviceName: opts.deviceName }),
        });
        try {
          io.out(`linked this device to @${client.username} (device ${client.deviceId})`);
          io.out(`profile: ${client.profileDir}`);
        } finally {
          await client.close();
        }
      }),
    );

  cmd(
    program,
    "send <to> <text>",
    "send a message to a username, or to a conversation id (g_..., d_...)",
  ).action(
    run(io, async (to: string, text: string, opts: GlobalOptions) =>
      withClient(opts, async (client) => {
        const conversationId = await resolveConversation(client, to);
        const result = await client.sendUnary(conversationId, text);
        io.out(`sent #${result.seq} to ${to}`);
      }),
    ),
  );

  cmd(program, "listen", "print incoming messages and receipts until Ctrl-C").action(
    run(io, async (opts: GlobalOptions) => withClient(opts, (client) => listen(client, io))),
  );

  const group = program.command("group").description("manage groups");
  cmd(
    group,
    "create <title> [members...]",
    "create a group with you as admin and the given usernames",
  ).action(
    run(io, async (title: string, members: string[], opts: GlobalOptions) =>
      withClient(opts, async (client) => {
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
      withClient(opts, async (client) => {
        const entry = await client.addMembers(requireGroupId(groupId), await userIdsFor(client, usernames));
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
      withClient(opts, async (client) => {
        const entry = await client.removeMembers(
          requireGroupId(groupId),
          await userIdsFor(client, usernames),
        );
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
        withClient(opts, async (client) => {
          const names = new Names(client);
          let conversations = await client.listConversations();
          if (groupsOnly) conversations = conversations.filter((c) => c.kind === ConversationKind.GROUP);
          await names.load(conversations.map((c) => c.peerUserId).filter((id) => id !== ""));
          if (conversations.length === 0) io.err(groupsOnly ? "no groups" : "no conversations");
          for (const c of conversations) {
            const unread = c.lastSeq > c.readUpTo ? c.lastSeq - c.readUpTo : 0n;
            const what =
              c.kind === ConversationKind.GROUP
                ? `${c.title} (${c.memberCount} members)`
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
        withClient(opts, async (client) => {
          const conversationId = await resolveConversation(client, target);
          const page = await client.getHistory(conversationId, { afterSeq: opts.after, limit: opts.limit });
          const names = new Names(client);
          await names.load(page.entries.flatMap((e) => [e.senderUserId, ...(e.membership?.userIds ?? [])]));
          for (const e of page.entries) io.out(formatEntry(e, names, client.userId));
          if (page.entries.length === 0) io.err(`no entries after #${opts.after} (last is #${page.lastSeq})`);
          const last = page.entries.at(-1);
          if (page.hasMore && last !== undefined) io.err(`more: --after ${last.seq}`);
        }),
      ),
    );

  cmd(program, "chat <with>", "chat interactively with a user or in a conversation").action(
    run(io, async (target: string, opts: GlobalOptions) =>
      withClient(opts, (client) => chat(client, target, io)),
    ),
  );
}

// -----------------------------------------------------------------------------------------------
// Plumbing

function serverFor(opts: GlobalOptions): string {
  return opts.server ?? process.env.SWITCHBOARD_URL ?? DEFAULT_SERVER;
}

function profileFor(opts: GlobalOptions): string {
  return opts.profile ?? process.env.SWITCHBOARD_PROFILE ?? join(homedir(), ".switchboard", "profile");
}

async function withClient<T>(
  opts: GlobalOptions,
  body: (client: SwitchboardClient) => Promise<T>,
): Promise<T> {
  const server = opts.server ?? process.env.SWITCHBOARD_URL;
  const client = await SwitchboardClient.open({
    profileDir: profileFor(opts),
    ...(server !== undefined && { serverUrl: server }),
  });
  try {
    return await body(client);
  } finally {
    await client.close();
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
    return `${err.rawMessage} [${Code[err.code] ?? err.code}]${hint}`;
  }
  return err instanceof Error ? err.message : String(err);
}

function nonNegative(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError("a non-negative integer");
  return n;
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
    const name = this.known.get(userId);
    return name === undefined ? userId : `@${name}`;
  }
}

const decoder = new TextDecoder();

function time(ms: bigint): string {
  return new Date(Number(ms)).toTimeString().slice(0, 8);
}

function text(e: IncomingEntry): string {
  if (e.redacted) return "(deleted)";
  if (e.decodeError !== undefined) return `(cannot decode: ${e.decodeError.message})`;
  return e.payload === undefined ? "" : decoder.decode(e.payload);
}

/** One line describing an entry. */
export function formatEntry(e: IncomingEntry, names: Names, selfUserId?: string): string {
  const who = e.senderUserId === selfUserId ? "you" : names.label(e.senderUserId);
  const head = `#${e.seq} [${time(e.serverTimeMs)}]`;
  switch (e.kind) {
    case "message":
      return `${head} ${who}: ${text(e)}`;
    case "edit":
      return `${head} ${who} edited #${e.targetSeq}: ${text(e)}`;
    case "delete":
      return `${head} ${who} deleted #${e.targetSeq}`;
    case "reaction":
      return `${head} ${who} reacted ${text(e) || "(removed)"} to #${e.targetSeq}`;
    case "membership": {
      const m = e.membership;
      const users = (m?.userIds ?? []).map((id) => names.label(id)).join(", ");
      switch (m?.action) {
        case MembershipAction.CREATED:
          return `${head} ${who} created ${m.title ? `"${m.title}"` : "the conversation"} with ${users}`;
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
          return `${head} ${who} renamed the group to "${m.title}"`;
        default:
          return `${head} ${who} changed the membership`;
      }
    }
    default:
      return `${head} ${who}: (unknown entry)`;
  }
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
    return c.kind === ConversationKind.GROUP ? `${c.title}` : this.names.label(c.peerUserId);
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

async function listen(client: SwitchboardClient, io: CliIo): Promise<void> {
  const names = new Names(client);
  const labels = new ConversationLabels(client, names);
  client.on("entry", async (e) => {
    await labels.load(e.conversationId);
    await names.load([e.senderUserId, ...(e.membership?.userIds ?? [])]);
    io.out(`(${labels.label(e.conversationId)}) ${formatEntry(e, names, client.userId)}`);
  });
  client.on("receipt", async (r) => {
    await labels.load(r.conversationId);
    await names.load([r.userId]);
    io.out(receiptLine(r, names, ` in ${labels.label(r.conversationId)}`, io.isTTY));
  });
  client.on("caughtUp", (e) =>
    io.err(`-- caught up (${e.entries} waiting entries); listening, Ctrl-C to stop`),
  );
  client.on("disconnected", (e) => {
    if (e.retryInMs !== undefined)
      io.err(`-- disconnected (${e.error?.rawMessage ?? "?"}); retrying in ${e.retryInMs} ms`);
  });
  client.on("error", (e) => io.err(`-- ${e.fatal ? "fatal: " : ""}${describeError(e.error)}`));
  const stop = interrupted(io);
  const fatal = client.waitFor("error", (e) => e.fatal);
  await client.connect();
  const end = await Promise.race([stop.then(() => undefined), fatal]);
  if (end !== undefined) throw end.error;
}

// -----------------------------------------------------------------------------------------------
// chat

const TYPING_REFRESH_MS = 3_000;
const TYPING_IDLE_MS = 5_000;
const TYPING_EXPIRY_MS = 10_000;

async function chat(client: SwitchboardClient, target: string, io: CliIo): Promise<void> {
  const conversationId = await resolveConversation(client, target);
  const names = new Names(client);
  const labels = new ConversationLabels(client, names);
  await labels.load(conversationId);
  const here = labels.label(conversationId);
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
    const earlier = page.entries.filter((e) => e.seq <= seen);
    await names.load(earlier.flatMap((e) => [e.senderUserId, ...(e.membership?.userIds ?? [])]));
    for (const e of earlier) show(formatEntry(e, names, client.userId));
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
    show(formatEntry(e, names, client.userId));
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
  client.on("connected", () =>
    show(`-- connected; chatting in ${here}. Type a message and press Enter; Ctrl-D to leave.`),
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
    const sending = client.send(conversationId, message, { clientMsgId }).then(
      (r) => show(`#${r.seq} [${time(r.serverTimeMs)}] you: ${message}  ✓`),
      (err: unknown) => show(`-- not sent: ${describeError(err)}`),
    );
    sends.push(sending);
  };

  // Handlers go on in the same tick as the interface is made: piped input may be read at once.
  const lines = createInterface({ input, output: tty ? process.stdout : undefined, terminal: tty });
  rl = lines;
  const closed = new Promise<void>((resolve) => lines.once("close", () => resolve()));
  lines.on("line", onLine);
  if (tty) {
    emitKeypressEvents(input as NodeJS.ReadStream, lines);
    (input as NodeJS.ReadStream).on("keypress", (_s: string, key: { name?: string } | undefined) => {
      if (key?.name === "return" || key?.name === "enter") return;
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
  const connected = client.connect();
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
