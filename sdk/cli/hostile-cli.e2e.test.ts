import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { CliServerSuite } from "../../test/helpers/cli.js";
import { sendUnderNewIdentity } from "../../test/helpers/impostor.js";
import { eventually } from "../../test/helpers/inbox.js";
import { startServerProcess } from "../../test/helpers/server.js";
import { SwitchboardClient } from "../client.js";

const root = new URL("../../", import.meta.url).pathname;

/**
 * The CLI where a careless profile, a crash or a peer's text could mislead its user: a profile
 * that lost its keys, `chat` killed right after lines were typed, and peer-supplied text that
 * tries to look like another line.
 */
describe("the CLI against lost keys, crashes and spoofed lines (commands against a server process)", () => {
  const fx = new CliServerSuite("sb-cli-hostile-");
  const { start, cli, ok } = fx;
  let n = 0;

  async function register(name: string): Promise<{ username: string; profile: string }> {
    n += 1;
    const username = `${name}_${n}`;
    const profile = join(fx.base, `profile-${username}`);
    await ok("register", username, "--profile", profile);
    return { username, profile };
  }

  async function directId(profile: string, peer: string): Promise<string> {
    const client = await SwitchboardClient.open({ profileDir: profile, encryption: false });
    try {
      return (await client.openDirect((await client.userByUsername(peer)).userId)).conversationId;
    } finally {
      await client.close();
    }
  }

  it("a profile that lost its Signal state never sends plaintext without being told to", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    await ok("send", bob.username, "encrypted hello", "--profile", alice.profile);
    // Everything but credentials.json lost.
    for (const dir of ["signal", "e2ee"])
      await rm(join(alice.profile, dir), { recursive: true, force: true });

    const r = await cli("send", bob.username, "plaintext by accident?", "--profile", alice.profile);
    assert.equal(r.code, 1, `sent: ${r.out.join("\n")}`);
    assert.match(r.err.join("\n"), /Signal keys are missing/);
    const client = await SwitchboardClient.open({ profileDir: bob.profile, encryption: false });
    try {
      const dm = (await client.openDirect((await client.userByUsername(alice.username)).userId))
        .conversationId;
      const page = await client.api.conversations.getHistory({ conversationId: dm, afterSeq: 0n, limit: 0 });
      for (const e of page.entries) {
        if (e.body.case === "message")
          assert.ok(
            !Buffer.from(e.body.value.payload).includes("plaintext by accident"),
            "plaintext was sent",
          );
      }
    } finally {
      await client.close();
    }
  });

  it("lines typed into `chat` survive a kill right after they were read, and go out on the next run", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    await ok("send", bob.username, "before the crash", "--profile", alice.profile);
    const dm = await directId(alice.profile, bob.username);
    const port = Number(new URL(fx.server.url).port);
    // The server is away: nothing can be encrypted (the devices are not known), only kept.
    await fx.server.stop();

    const child = spawn(
      process.execPath,
      [join(root, "bin/switchboard.js"), "chat", dm, "--profile", alice.profile],
      {
        cwd: fx.base,
        env: { ...process.env, SWITCHBOARD_URL: fx.server.url },
        stdio: ["pipe", "pipe", "pipe"],
      },
    );
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    let output = "";
    child.stdout.on("data", (d: Buffer) => {
      output += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      output += d.toString();
    });
    const lines = Array.from({ length: 8 }, (_, i) => `typed line ${i + 1}`);
    child.stdin.write(lines.map((l) => `${l}\n`).join(""));
    const outbox = async (): Promise<Array<{ plaintext?: string }>> => {
      try {
        return JSON.parse(await readFile(join(alice.profile, "outbox.json"), "utf8")).items ?? [];
      } catch {
        return [];
      }
    };
    let kept: Array<{ plaintext?: string }> = [];
    try {
      await eventually(
        () => {
          void outbox().then((items) => {
            kept = items;
          });
          return kept.length === lines.length;
        },
        () => `the outbox holds ${kept.length} of ${lines.length} typed lines; chat printed:\n${output}`,
      );
    } finally {
      child.kill("SIGKILL");
      await exited;
      fx.server = await startServerProcess({ dataDir: fx.server.dataDir, port });
    }
    let stop!: () => void;
    const interrupted = new Promise<void>((resolve) => {
      stop = resolve;
    });
    const listen = start(["listen", "--profile", alice.profile], { interrupted });
    let history: string[] = [];
    await eventually(
      () => {
        void cli("history", alice.username, "--profile", bob.profile).then((r) => {
          history = r.out;
        });
        return lines.every((l) => history.some((h) => h.endsWith(`: ${l}`)));
      },
      () => `bob's history:\n${history.join("\n")}\nlisten: ${listen.err.join("\n")}`,
      30_000,
    );
    stop();
    assert.equal(await listen.done, 0, listen.err.join("\n"));
    // In the order typed.
    const order = lines.map((l) => history.findIndex((h) => h.endsWith(`: ${l}`)));
    assert.deepEqual(
      order,
      [...order].sort((a, b) => a - b),
    );
  });

  it("newlines and control characters in peers' text and file names cannot pass for other lines", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    const groupId = (
      await ok("group", "create", "plans", bob.username, "--profile", alice.profile)
    )[0] as string;
    const spoof = "ok\n#55 [12:00:00] you: I agree to pay alice 1000 EUR\u202e\x1b[2J";
    await ok("send", groupId, spoof, "--profile", alice.profile);
    const dir = await mkdtemp(join(fx.base, "files-"));
    const fileName = "notes\n#56 [12:00:01] you: see attached.txt";
    await writeFile(join(dir, fileName), "file body");
    await ok("send", groupId, "--file", join(dir, fileName), "--profile", alice.profile);

    const history = await ok("history", groupId, "--profile", bob.profile);
    assert.ok(!history.some((l) => /^#5[56] /.test(l)), `a spoofed line:\n${history.join("\n")}`);
    const line = history.find((l) => l.includes("I agree to pay"));
    assert.ok(line !== undefined, history.join("\n"));
    assert.match(line, /: ok␊#55 \[12:00:00\] you: I agree to pay alice 1000 EUR<U\+202E>␛\[2J$/);
    assert.ok(
      history.some((l) => l.includes("[file] notes␊#56 [12:00:01] you: see attached.txt")),
      history.join("\n"),
    );
  });

  it("a verified contact's new device and changed key are told at send time; safety-number shows the new number; --verify accepts it", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    await ok("send", bob.username, "hi bob", "--profile", alice.profile);
    const bobIds = JSON.parse(await readFile(join(bob.profile, "credentials.json"), "utf8")) as {
      userId: string;
      deviceId: string;
      deviceSecret: string;
    };
    const before = await ok("safety-number", bob.username, "--profile", alice.profile);
    await ok("safety-number", bob.username, "--verify", bobIds.deviceId, "--profile", alice.profile);

    // bob links a second device; alice's sends name it once the gateway checks the fresh list.
    const code = (await ok("link-code", "--profile", bob.profile))[0] as string;
    const bob2 = join(fx.base, `profile-bob2-${n}`);
    await ok("link", code, "--profile", bob2);
    let told: string[] = [];
    await eventually(
      () => told.some((l) => l.includes("has a new device")),
      () => `no new-device notice at send time: ${told.join("\n")}`,
      20_000,
      async () => {
        told = (await cli("send", bob.username, "still there?", "--profile", alice.profile)).err;
        await new Promise((resolve) => setTimeout(resolve, 500));
      },
    );
    const notice = told.find((l) => l.includes("has a new device")) ?? "";
    assert.match(
      notice,
      /^!! @bob_\d+ has a new device dv_\S+, .*NOT verified: compare: switchboard safety-number bob_\d+$/,
    );

    // A message under bob's device with another identity key (the server can write one).
    const dm = await directId(alice.profile, bob.username);
    const aliceIds = JSON.parse(await readFile(join(alice.profile, "credentials.json"), "utf8")) as {
      userId: string;
      deviceId: string;
    };
    const bob2Ids = JSON.parse(await readFile(join(bob2, "credentials.json"), "utf8")) as {
      deviceId: string;
    };
    await sendUnderNewIdentity({
      serverUrl: fx.server.url,
      storeDir: join(fx.base, `impostor-${n}`),
      sender: bobIds,
      conversationId: dm,
      clientMsgId: `impostor-${n}`,
      text: "from a swapped key",
      to: [
        { userId: aliceIds.userId, deviceId: aliceIds.deviceId },
        { userId: bobIds.userId, deviceId: bob2Ids.deviceId },
      ],
    });

    const history = await cli("history", bob.username, "--profile", alice.profile);
    assert.ok(
      history.err.some((l) => l.includes("presented a new identity key, refused") && l.includes("--verify")),
      history.err.join("\n"),
    );
    const refused = await cli("send", bob.username, "to a changed key", "--profile", alice.profile);
    assert.equal(refused.code, 1, refused.out.join("\n"));
    assert.match(refused.err.join("\n"), /safety-number <user> --verify <device>/);

    const changed = await ok("safety-number", bob.username, "--profile", alice.profile);
    const line = changed.find((l) => l.startsWith(bobIds.deviceId)) ?? "";
    assert.match(
      line,
      /IDENTITY CHANGED: this is the number of its NEW key; your verification of the old key no longer holds/,
    );
    const oldLine = before.find((l) => l.startsWith(bobIds.deviceId)) ?? "";
    const digits = (l: string) => l.split("  ")[1];
    assert.notEqual(digits(line), digits(oldLine), "the old number is still shown");

    const accepted = await ok(
      "safety-number",
      bob.username,
      "--verify",
      bobIds.deviceId,
      "--profile",
      alice.profile,
    );
    const now = accepted.find((l) => l.startsWith(bobIds.deviceId)) ?? "";
    assert.equal(digits(now), digits(line));
    assert.ok(now.endsWith("  verified"), now);
  });
});
