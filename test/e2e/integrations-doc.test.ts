import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { runCli } from "../helpers/cli.js";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

// docs/integrations.md, "Try it", word for word: every `node --import tsx examples/...` line
// starts that bot and every `./bin/switchboard.js` line runs that CLI command, in order, against a
// server process standing in for `npm start`. Only what cannot be literal changes: each command
// gets `--server` (a free port), and paths under .switchboard/ move into a temporary directory.
// A comment after a command says what it must do: `# refused...` fails with FAILED_PRECONDITION,
// `# ends with "..."` prints that at the end of its output (retried until the bot answered);
// otherwise it succeeds. The other lines (npm start, generate.sh, mvn) are covered elsewhere:
// test/e2e/partner-bots.test.ts runs the Python and Java bots.

const root = new URL("../../", import.meta.url).pathname;
const doc = readFileSync(join(root, "docs/integrations.md"), "utf8");

/** The shell lines of the "Try it" section's code blocks, in order. */
function tryItLines(): string[] {
  const start = doc.indexOf("\n## Try it\n");
  assert.ok(start >= 0, 'docs/integrations.md has a "## Try it" section');
  const section = doc.slice(start, doc.indexOf("\n## ", start + 1));
  return [...section.matchAll(/```sh\n([\s\S]*?)```/g)].flatMap((m) => m[1]!.split("\n").filter(Boolean));
}

/** A command line split into words (double quotes group), and its trailing comment. */
function parse(line: string): { words: string[]; comment: string } {
  const words: string[] = [];
  let i = 0;
  while (i < line.length) {
    if (line[i] === " ") i++;
    else if (line[i] === "#") return { words, comment: line.slice(i + 1).trim() };
    else if (line[i] === '"') {
      const end = line.indexOf('"', i + 1);
      words.push(line.slice(i + 1, end));
      i = end + 1;
    } else {
      const end = line.indexOf(" ", i);
      words.push(line.slice(i, end < 0 ? undefined : end));
      i = end < 0 ? line.length : end;
    }
  }
  return { words, comment: "" };
}

describe('docs/integrations.md, "Try it", word for word', () => {
  let server: ServerProcess;
  let dir: string;
  const bots: ChildProcess[] = [];
  before(async () => {
    server = await startServerProcess();
    dir = await mkdtemp(join(tmpdir(), "switchboard-try-it-"));
  });
  after(async () => {
    for (const bot of bots) {
      if (bot.exitCode !== null || bot.pid === undefined) continue;
      const exited = new Promise((resolve) => bot.once("exit", resolve));
      process.kill(bot.pid, "SIGTERM");
      await exited;
    }
    await server?.stop();
    if (server) await removeDir(server.dataDir);
    if (dir) await removeDir(dir);
  });

  const local = (word: string) => (word.startsWith(".switchboard/") ? join(dir, word) : word);

  /** Starts a bot line and waits for its ready line. */
  async function startBot(words: string[]): Promise<void> {
    const script = words[3]!;
    const username = words[words.indexOf("--username") + 1]!;
    // Where the bot keeps its credential: the TypeScript stubs bot a file, the SDK bot a profile.
    const own = script.includes("bot-e2ee")
      ? ["--profile", join(dir, username)]
      : ["--state", join(dir, `${username}.json`)];
    const child = spawn(process.execPath, [...words.slice(1), "--server", server.url, ...own], {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
    });
    bots.push(child);
    const output: string[] = [];
    const collect = (chunk: string) => output.push(...chunk.split("\n").filter(Boolean));
    child.stdout?.setEncoding("utf8").on("data", collect);
    child.stderr?.setEncoding("utf8").on("data", collect);
    const deadline = Date.now() + 30_000;
    while (!output.some((l) => / ready: /.test(l))) {
      if (child.exitCode !== null || Date.now() > deadline)
        throw new Error(`${words.join(" ")}: no ready line (exit ${child.exitCode}):\n${output.join("\n")}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /** Runs a CLI line and checks what its comment says. */
  async function runCommand(words: string[], comment: string): Promise<void> {
    const args = words.slice(1).map(local);
    const what = `switchboard ${words.slice(1).join(" ")}`;
    if (comment.startsWith("refused")) {
      const r = await runCli(server.url, args);
      assert.notEqual(r.code, 0, `${what} succeeded: ${r.out.join("\n")}`);
      assert.match(r.err.join("\n"), /\[FailedPrecondition\]/, `${what}: ${r.err.join("\n")}`);
      return;
    }
    const ends = /^ends with "(.*)"$/.exec(comment)?.[1];
    const deadline = Date.now() + 20_000;
    for (;;) {
      const r = await runCli(server.url, args);
      assert.equal(r.code, 0, `${what} failed: ${r.err.join("\n")}`);
      const last = r.out.filter((l) => l.trim() !== "").at(-1) ?? "";
      if (ends === undefined || last.endsWith(ends)) return;
      if (Date.now() > deadline)
        assert.fail(`${what}: the output does not end with "${ends}":\n${r.out.join("\n")}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }

  it("the encrypted bot answers the CLI's default profile; the stubs bot answers a profile without encryption", async () => {
    const lines = tryItLines();
    let ran = 0;
    for (const line of lines) {
      const { words, comment } = parse(line);
      if (words[0] === "node" && words[1] === "--import" && words[2] === "tsx") await startBot(words);
      else if (words[0] === "./bin/switchboard.js") await runCommand(words, comment);
      else continue;
      ran++;
    }
    // The section as written today: two bots and seven commands. Fewer means the parsing lost some.
    assert.ok(ran >= 9, `ran ${ran} lines of:\n${lines.join("\n")}`);
  });
});
