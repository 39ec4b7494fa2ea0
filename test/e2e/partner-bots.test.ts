import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { SwitchboardClient } from "../../sdk/client.js";
import type { IncomingEntry, ReceiptEvent } from "../../sdk/types.js";
import { uniqueName } from "../helpers/device.js";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

// The partner bots of examples/bot-python and examples/bot-java, on stubs generated from proto/
// by examples/stubs/generate.sh, run as their own processes against a real server; a client of
// the TypeScript SDK talks to them. The tools are fetched by `generate.sh prepare` (a step of
// .ci/run), never here: this file generates and builds offline.

const root = new URL("../../", import.meta.url).pathname;
const generateSh = join(root, "examples/stubs/generate.sh");

const installed = (binary: string, args: string[]) =>
  spawnSync(binary, args, { stdio: "ignore" }).error === undefined;
/** Go only makes the Go stubs (no bot runs on them): without it, outside CI, they are left out. */
const languages =
  installed("go", ["version"]) || process.env.CI === "true" ? ["python", "java", "go"] : ["python", "java"];

/** Why the suite cannot run here, or undefined. Under CI=true it never skips: it fails instead. */
function unavailable(): string | undefined {
  const tools: Array<[string, string[]]> = [
    ["python3", ["--version"]],
    ["java", ["-version"]],
    ["mvn", ["--version"]],
  ];
  if (languages.includes("go")) tools.push(["go", ["version"]]);
  for (const [binary, args] of tools) if (!installed(binary, args)) return `${binary} is not installed`;
  const check = spawnSync("bash", [generateSh, "check", ...languages], { encoding: "utf8" });
  if (check.status !== 0) return check.stderr.trim();
  return undefined;
}
const missing = unavailable();
const skip = missing !== undefined && process.env.CI !== "true" ? `partner bots: ${missing}` : false;

/** Runs a command to its end (offline work: generating, compiling); rejects with its output. */
function run(command: string, args: string[], timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"], timeout: timeoutMs });
    let output = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (output += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (output += c));
    child.once("error", reject);
    child.once("exit", (code, signal) =>
      code === 0
        ? resolve()
        : reject(new Error(`${command} ${args.join(" ")}: ${code ?? signal}\n${output}`)),
    );
  });
}

interface Bot {
  name: string;
  /** The command line of the bot, given its options. */
  argv(options: string[]): [string, string[]];
  /** Exit codes of a clean stop on SIGTERM (the JVM reports the signal: 128 + 15). */
  cleanExit: number[];
}

const pythonVenv = () => spawnSync("bash", [generateSh, "python-venv"], { encoding: "utf8" }).stdout.trim();

const bots: Bot[] = [
  {
    name: "python",
    argv: (options) => [join(pythonVenv(), "bin/python"), ["examples/bot-python/main.py", ...options]],
    cleanExit: [0],
  },
  {
    name: "java",
    argv: (options) => ["java", ["-jar", "examples/bot-java/target/echo-bot.jar", ...options]],
    cleanExit: [143],
  },
];

/** A bot as its own process. */
interface BotProcess {
  output: string[];
  waitFor(pattern: RegExp, what: string, timeoutMs?: number): Promise<void>;
  /** SIGTERM to its PID; resolves with the exit code. */
  stop(): Promise<number | null>;
}

function startBot(bot: Bot, options: string[]): BotProcess {
  const [command, args] = bot.argv(options);
  const child: ChildProcess = spawn(command, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
  const output: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  child.once("error", (err) => output.push(`spawn failed: ${err.message}`));
  const collect = (chunk: string) => output.push(...chunk.split("\n").filter(Boolean));
  child.stdout?.setEncoding("utf8").on("data", collect);
  child.stderr?.setEncoding("utf8").on("data", collect);
  return {
    output,
    async waitFor(pattern, what, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      while (!output.some((line) => pattern.test(line))) {
        if (child.exitCode !== null || Date.now() > deadline)
          throw new Error(`${bot.name} bot: no ${what} (exit ${child.exitCode}):\n${output.join("\n")}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    },
    async stop() {
      if (child.exitCode === null && child.pid !== undefined) process.kill(child.pid, "SIGTERM");
      return exited;
    },
  };
}

/** A person on the TypeScript SDK, without encryption (the bots have no Signal keys). */
async function person(server: ServerProcess, dir: string) {
  const received: IncomingEntry[] = [];
  const receipts: ReceiptEvent[] = [];
  const client = await SwitchboardClient.register({
    serverUrl: server.url,
    profileDir: join(dir, uniqueName("profile")),
    username: uniqueName("person"),
    encryption: false,
    backoffBaseMs: 20,
    backoffCapMs: 200,
  });
  client.on("entry", (e) => {
    received.push(e);
  });
  client.on("receipt", (r) => {
    receipts.push(r);
  });
  await client.connect();
  const text = (e: IncomingEntry) => new TextDecoder().decode(e.payload);
  return {
    client,
    /** Waits for a delivered receipt of `userId` covering `seq`: that device acked it. */
    async waitForDelivered(conversationId: string, userId: string, seq: bigint, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      const has = () =>
        receipts.some(
          (r) =>
            r.conversationId === conversationId &&
            r.userId === userId &&
            r.kind === "delivered" &&
            r.upToSeq >= seq,
        );
      while (!has()) {
        if (Date.now() > deadline)
          throw new Error(
            `no delivered receipt up to ${seq}: ${JSON.stringify(receipts, (_k, v) => (typeof v === "bigint" ? String(v) : v))}`,
          );
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    },
    /** Waits until the conversation holds a message from `fromUserId` with this text. */
    async waitForText(conversationId: string, fromUserId: string, wanted: string, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      const has = () =>
        received.some(
          (e) =>
            e.conversationId === conversationId &&
            e.senderUserId === fromUserId &&
            e.kind === "message" &&
            text(e) === wanted,
        );
      while (!has()) {
        if (Date.now() > deadline)
          throw new Error(`no "${wanted}"; got ${JSON.stringify(received.map((e) => text(e)))}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    },
  };
}

describe("partner bots in Python and Java (examples/bot-python, examples/bot-java)", { skip }, () => {
  let server: ServerProcess;
  let dir: string;
  before(async () => {
    if (missing !== undefined) throw new Error(`CI=true requires the partner bots' tools: ${missing}`);
    // Generated from proto/ as it is now, and compiled offline from the prepared caches.
    await run("bash", [generateSh, ...languages], 120_000);
    await run(
      "mvn",
      ["-o", "-q", "-B", "-Dstyle.color=never", "-f", "examples/bot-java/pom.xml", "package"],
      120_000,
    );
    server = await startServerProcess();
    dir = await mkdtemp(join(tmpdir(), "switchboard-partner-bots-"));
  });
  after(async () => {
    await server?.stop();
    if (server) await removeDir(server.dataDir);
    if (dir) await removeDir(dir);
  });

  for (const bot of bots) {
    it(`${bot.name}, stream mode: reconnects after the server restarts (UNAVAILABLE) and answers again`, async () => {
      const own = await startServerProcess();
      const port = Number(new URL(own.url).port);
      let current = own;
      const botName = uniqueName(`${bot.name}_re`);
      const running = startBot(bot, [
        "--server",
        own.url,
        "--username",
        botName,
        "--state",
        join(dir, `${botName}.json`),
      ]);
      try {
        await running.waitFor(/ready:/, "ready line");
        assert.equal(await own.stop(), 0);
        await running.waitFor(/reconnecting/, "a reconnect after the shutdown");
        current = await startServerProcess({ dataDir: own.dataDir, port });
        const p = await person(current, dir);
        try {
          const botUser = await p.client.userByUsername(botName);
          const { conversationId } = await p.client.openDirect(botUser.userId);
          await p.client.send(conversationId, "back?");
          await p.waitForText(conversationId, botUser.userId, "echo: back?", 30_000);
        } finally {
          await p.client.close();
        }
      } finally {
        await running.stop();
        await current.stop();
        await removeDir(own.dataDir);
      }
    });

    for (const mode of ["stream", "unary"] as const) {
      it(`${bot.name}, ${mode} mode: registers, answers, stops on SIGTERM, and catches up after a restart`, async () => {
        const botName = uniqueName(`${bot.name}_${mode}`);
        const options = ["--server", server.url, "--mode", mode, "--username", botName];
        options.push("--state", join(dir, `${botName}.json`), "--poll-ms", "100");
        let running = startBot(bot, options);
        const p = await person(server, dir);
        try {
          await running.waitFor(/ready:/, "ready line");
          const botUser = await p.client.userByUsername(botName);
          const { conversationId } = await p.client.openDirect(botUser.userId);

          const hello = await p.client.send(conversationId, "hello");
          await p.waitForText(conversationId, botUser.userId, "echo: hello");
          // The bot acked what it handled (an ack frame on the stream, GatewayService.Ack in
          // unary mode), so the sender sees two ticks.
          await p.waitForDelivered(conversationId, botUser.userId, hello.seq);
          const code = await running.stop();
          assert.ok(bot.cleanExit.includes(code ?? -1), `exit ${code}:\n${running.output.join("\n")}`);
          assert.ok(
            running.output.some((l) => / stopped$/.test(l)),
            running.output.join("\n"),
          );

          // Offline is normal: a message sent while the bot is down is answered when it returns,
          // with the credential it saved, from the delivered cursor the server kept.
          await p.client.send(conversationId, "are you there?");
          running = startBot(bot, options);
          await p.waitForText(conversationId, botUser.userId, "echo: are you there?");
          assert.ok(!running.output.some((l) => /fatal/.test(l)), running.output.join("\n"));

          // Exactly one reply per message, in the log itself: the restart re-handled entries
          // whose replies were durable, and the derived client_msg_ids made those no-ops.
          const { entries } = await p.client.getHistory(conversationId);
          const texts = entries
            .filter((e) => e.kind === "message")
            .map((e) => new TextDecoder().decode(e.payload));
          assert.deepEqual(texts, ["hello", "echo: hello", "are you there?", "echo: are you there?"]);
        } finally {
          await running.stop();
          await p.client.close();
        }
      });
    }
  }
});
