import { stat } from "node:fs/promises";
import { basename } from "node:path";
import { createInterface, emitKeypressEvents, type Interface } from "node:readline";
import type { Command } from "commander";
import { formatBytes, printable } from "../files.js";
import { downloadHint, type EntryView, formatEntry, hintTarget, receiptLine, time } from "../format.js";
import { awayLine, openHealth } from "../health.js";
import { type CliIo, describeError, interrupted, run } from "../io.js";
import { ConversationLabels, Names, resolveConversation } from "../names.js";
import { clientCommand, type GlobalOptions } from "../options.js";
import { type Session, showKeyChanges, withClient } from "../session.js";

/** `chat`: an interactive conversation, with typing indicators and /file. */
export function registerChat(program: Command, io: CliIo): void {
  clientCommand(program, "chat <with>", "chat interactively with a user or in a conversation").action(
    run(io, async (target: string, opts: GlobalOptions) =>
      withClient(opts, io, "stream", (session) => chat(session, target, opts, io)),
    ),
  );
}

/** While keys are pressed, the typing indicator is sent again this often (milliseconds). */
const TYPING_REFRESH_MS = 3_000;
/** No key pressed for this long (milliseconds): the indicator is turned off. */
const TYPING_IDLE_MS = 5_000;
/** A peer counts as typing this long after their last indicator (milliseconds): no second "is typing" line. */
const TYPING_EXPIRY_MS = 10_000;

/**
 * The chat loop: recent context, then what arrives, with typing indicators and receipts; each line
 * typed is sent (`/file <path>` sends a file). Ends on Ctrl-D, /quit, Ctrl-C or a fatal error,
 * after what was typed has reached the server.
 */
async function chat(session: Session, target: string, opts: GlobalOptions, io: CliIo): Promise<void> {
  const { client, encrypted } = session;
  // Loaded by withClient already; imported here, not at the top, for the CLI's start-up (commands.ts).
  const { newClientMsgId } = await import("../../client.js");
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

  // "Since you were away" (sdk/health/): mentions of this user, replies to them and pins since
  // the chat was last open, caught up from history first. A failure here never stops the chat.
  const health = await openHealth(client, true);
  try {
    await health.catchUp(conversationId);
    const away = awayLine(await health.opened(conversationId), Date.now());
    if (away !== undefined) show(away);
  } catch (err) {
    show(`-- no away summary: ${describeError(err)}`);
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
  showKeyChanges(client, names, show);
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
  // Input ended (piped input, or Ctrl-D): let what was typed reach the server first.
  if (end === undefined) await Promise.race([Promise.allSettled(sends), interrupted(io)]);
  // What was shown here is not news next time; the sends above count as answers.
  await health.left(conversationId).catch(() => {});
  await health.close().catch(() => {});
  if (end !== undefined) throw end.error;
}
