import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ReceiptKind } from "../../gen/switchboard/v1/gateway_pb.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

const root = new URL("../../", import.meta.url).pathname;

/** examples/bot/main.ts as its own process, as a partner runs it. */
interface BotProcess {
  output: string[];
  /** Waits for a line of the bot's output matching pattern. */
  waitFor(pattern: RegExp, what: string, timeoutMs?: number): Promise<void>;
  /** SIGTERM; resolves with the exit code. */
  stop(): Promise<number | null>;
}

function startBot(server: string, mode: "stream" | "unary", username: string, state: string): BotProcess {
  const child: ChildProcess = spawn(
    process.execPath,
    ["--import", "tsx", "examples/bot/main.ts", "--server", server, "--mode", mode].concat([
      "--username",
      username,
      "--state",
      state,
      "--poll-ms",
      "100",
    ]),
    { cwd: root, stdio: ["ignore", "pipe", "pipe"] },
  );
  const output: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
  let wake = () => {};
  const collect = (chunk: string) => {
    output.push(...chunk.split("\n").filter(Boolean));
    wake();
  };
  child.stdout?.setEncoding("utf8").on("data", collect);
  child.stderr?.setEncoding("utf8").on("data", collect);
  return {
    output,
    async waitFor(pattern, what, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      while (!output.some((line) => pattern.test(line))) {
        if (child.exitCode !== null || Date.now() > deadline)
          throw new Error(`bot: no ${what} (exit ${child.exitCode}):\n${output.join("\n")}`);
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 100);
        });
      }
    },
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      return exited;
    },
  };
}

/** A user with an open stream and the direct conversation with the bot. */
async function userTalkingTo(server: ServerProcess, botName: string) {
  const user = await TestDevice.register(server.url, uniqueName("user"));
  const { users } = await user.accounts.lookupUsers({ usernames: [botName] });
  assert.equal(users.length, 1, "the bot registered its account");
  const { conversation } = await user.conversations.openDirect({ peerUserId: users[0]!.userId });
  user.connect();
  return { user, conversationId: conversation!.conversationId };
}

const replies = (user: TestDevice, conversationId: string) =>
  user.texts(conversationId).filter((t) => t.startsWith("echo: "));

describe("the example bot (examples/bot)", () => {
  let server: ServerProcess;
  let dir: string;
  before(async () => {
    server = await startServerProcess();
    dir = await mkdtemp(join(tmpdir(), "switchboard-bot-"));
  });
  after(async () => {
    await server.stop();
    await removeDir(server.dataDir);
    await removeDir(dir);
  });

  for (const mode of ["stream", "unary"] as const) {
    it(`${mode} mode: registers, answers, stops cleanly, and catches up after a restart`, async () => {
      const botName = uniqueName(`bot_${mode}`);
      const state = join(dir, `${botName}.json`);
      const bot = startBot(server.url, mode, botName, state);
      const { user, conversationId } = await bot
        .waitFor(/ready:/, "ready line")
        .then(() => userTalkingTo(server, botName))
        .catch(async (err) => {
          await bot.stop();
          throw err;
        });
      try {
        user.sendText(conversationId, "m1", "hello");
        await user.waitFor(() => replies(user, conversationId).includes("echo: hello"), "the bot's reply");
        // The bot acked what it handled (an ack frame on the stream, GatewayService.Ack in unary
        // mode): the sender gets its delivered receipt.
        const hello = user.ofCase("sendAck").find((a) => a.clientMsgId === "m1")!.seq;
        await user.waitFor(
          () =>
            user
              .ofCase("receipt")
              .some(
                (r) => r.userId !== user.userId && r.kind === ReceiptKind.DELIVERED && r.upToSeq >= hello,
              ),
          "the bot's delivered receipt",
        );
        assert.equal(await bot.stop(), 0, "the bot exits cleanly on SIGTERM");

        // Offline is normal: a message sent while the bot is down is answered when it returns,
        // with the credentials and (unary) cursors it saved.
        user.sendText(conversationId, "m2", "are you there?");
        await user.waitFor(
          () => user.ofCase("sendAck").some((a) => a.clientMsgId === "m2"),
          "send_ack of m2",
        );
        const again = startBot(server.url, mode, botName, state);
        try {
          await user.waitFor(
            () => replies(user, conversationId).includes("echo: are you there?"),
            "the reply after the restart",
          );
          assert.ok(!again.output.some((l) => /fatal/.test(l)), again.output.join("\n"));
        } finally {
          assert.equal(await again.stop(), 0);
        }
        // Exactly one reply per message, in the log itself (not only on this stream).
        const { entries } = await user.conversations.getHistory({ conversationId });
        const texts = entries.flatMap((e) =>
          e.body.case === "message" ? [new TextDecoder().decode(e.body.value.payload)] : [],
        );
        assert.deepEqual(texts, ["hello", "echo: hello", "are you there?", "echo: are you there?"]);
      } finally {
        await user.close();
      }
    });
  }

  it("stream mode: reconnects after the server restarts (UNAVAILABLE) and answers again", async () => {
    const own = await startServerProcess();
    const port = Number(new URL(own.url).port);
    let current = own;
    const botName = uniqueName("bot_re");
    const bot = startBot(own.url, "stream", botName, join(dir, `${botName}.json`));
    try {
      await bot.waitFor(/ready:/, "ready line");
      assert.equal(await own.stop(), 0);
      await bot.waitFor(/reconnecting/, "a reconnect after the shutdown");
      current = await startServerProcess({ dataDir: own.dataDir, port });
      const { user, conversationId } = await userTalkingTo(current, botName);
      try {
        user.sendText(conversationId, "m1", "back?");
        await user.waitFor(() => replies(user, conversationId).includes("echo: back?"), "the reply", 15_000);
      } finally {
        await user.close();
      }
    } finally {
      await bot.stop();
      await current.stop();
      await removeDir(own.dataDir);
    }
  });
});
