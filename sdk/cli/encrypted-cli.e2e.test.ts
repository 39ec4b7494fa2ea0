import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import { CliServerSuite } from "../../test/helpers/cli.js";
import { eventually } from "../../test/helpers/inbox.js";
import { runNode } from "../../test/helpers/process.js";
import { scanDirectory } from "../../test/helpers/scan.js";
import { SwitchboardClient } from "../client.js";

const root = new URL("../../", import.meta.url).pathname;

describe("the CLI end-to-end encrypted (commands against a server process)", () => {
  const fx = new CliServerSuite("sb-cli-e2ee-");
  const { start, cli, ok } = fx;
  let n = 0;

  /** Registers a user in a new profile; returns the username and the profile directory. */
  async function register(name: string, ...flags: string[]): Promise<{ username: string; profile: string }> {
    n += 1;
    const username = `${name}_${n}`;
    const profile = join(fx.base, `profile-${username}`);
    const out = await ok("register", username, "--profile", profile, ...flags);
    assert.match(out.at(-1) ?? "", flags.includes("--no-encryption") ? /encryption: off/ : /encryption: on/);
    return { username, profile };
  }

  /** The user and device ids of a profile, from its credentials. */
  async function idsOf(profile: string): Promise<{ userId: string; deviceId: string }> {
    const c = JSON.parse(await readFile(join(profile, "credentials.json"), "utf8"));
    return { userId: c.userId, deviceId: c.deviceId };
  }

  /** The raw log of a direct conversation as the server hands it out, seen from a profile. */
  async function rawHistory(profile: string, peerUsername: string) {
    // Opened without encryption: only unary calls, the Signal state is not touched.
    const client = await SwitchboardClient.open({ profileDir: profile, encryption: false });
    try {
      const peer = await client.userByUsername(peerUsername);
      const { conversationId } = await client.openDirect(peer.userId);
      const page = await client.api.conversations.getHistory({ conversationId, afterSeq: 0n, limit: 0 });
      return page.entries;
    } finally {
      await client.close();
    }
  }

  /** The seq in the download hint under an attachment line of history or listen output. */
  function downloadSeq(lines: string[], fileName: string): bigint {
    const line = lines.find((l) => l.includes(`[file] ${fileName} `));
    assert.ok(line !== undefined, `no attachment line for ${fileName} in:\n${lines.join("\n")}`);
    const seq = /download with: switchboard download \S+ (\d+)/.exec(line)?.[1];
    assert.ok(seq !== undefined, line);
    return BigInt(seq);
  }

  it("two users chat end-to-end encrypted in `chat`; the server holds only ciphertext", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    const aliceIn = new PassThrough();
    const bobIn = new PassThrough();
    const aliceChat = start(["chat", bob.username, "--profile", alice.profile], { input: aliceIn });
    const bobChat = start(["chat", alice.username, "--profile", bob.profile], { input: bobIn });
    await eventually(
      () => [aliceChat, bobChat].every((c) => c.out.some((l) => l.includes("end-to-end encrypted."))),
      () => `chats did not connect:\n${aliceChat.out.join("\n")}\n${bobChat.out.join("\n")}`,
    );

    aliceIn.write("secret-cli-hello from alice\n");
    await eventually(
      () => bobChat.out.some((l) => new RegExp(`@${alice.username}: secret-cli-hello from alice$`).test(l)),
      () => `bob's chat shows:\n${bobChat.out.join("\n")}`,
    );
    bobIn.write("secret-cli-reply from bob\n");
    await eventually(
      () => aliceChat.out.some((l) => new RegExp(`@${bob.username}: secret-cli-reply from bob$`).test(l)),
      () => `alice's chat shows:\n${aliceChat.out.join("\n")}`,
    );
    // Two ticks: bob's device has alice's message.
    await eventually(
      () => aliceChat.out.some((l) => l.includes(`delivered to @${bob.username}`)),
      () => `alice's chat shows no receipt:\n${aliceChat.out.join("\n")}`,
    );
    aliceIn.end();
    bobIn.end();
    assert.equal(await aliceChat.done, 0, aliceChat.err.join("\n"));
    assert.equal(await bobChat.done, 0, bobChat.err.join("\n"));

    // The log reads back through the CLI, decrypted from what each profile kept.
    const history = await ok("history", bob.username, "--profile", alice.profile);
    assert.ok(history.some((l) => /you: secret-cli-hello from alice$/.test(l)));
    assert.ok(history.some((l) => l.endsWith(`@${bob.username}: secret-cli-reply from bob`)));
    assert.ok(!history.some((l) => l.includes("not encrypted")), history.join("\n"));

    // A plaintext pair as the control: its text must be found where the encrypted ones are not.
    const carol = await register("carol", "--no-encryption");
    const dave = await register("dave", "--no-encryption");
    await ok("send", dave.username, "plain-cli-control from carol", "--profile", carol.profile);

    const secrets = ["secret-cli-hello from alice", "secret-cli-reply from bob"];
    const entries = await rawHistory(alice.profile, bob.username);
    const messages = entries.filter((e) => e.body.case === "message");
    assert.equal(messages.length, 2);
    for (const e of messages) {
      if (e.body.case !== "message") continue;
      assert.equal(e.body.value.payload.length, 0, `#${e.seq} carries a plaintext payload`);
      for (const c of e.body.value.devicePayloads) {
        for (const s of secrets) assert.ok(!Buffer.from(c.ciphertext).includes(s), `#${e.seq} holds "${s}"`);
      }
    }
    const control = (await rawHistory(carol.profile, dave.username)).find((e) => e.body.case === "message");
    assert.ok(control?.body.case === "message");
    assert.equal(Buffer.from(control.body.value.payload).toString(), "plain-cli-control from carol");

    const scan = await scanDirectory(fx.server.dataDir, [...secrets, "plain-cli-control from carol"]);
    assert.deepEqual(
      scan.findings.filter((f) => f.marker !== "plain-cli-control from carol"),
      [],
      "no encrypted text in the server's files",
    );
    assert.ok(
      scan.findings.some((f) => f.marker === "plain-cli-control from carol"),
      "the plaintext control is in the server's files",
    );
  });

  it("send --reply-to and --mention: the reply and the mention reach the other side with the encrypted text", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    const sent = await ok("send", bob.username, "lunch at noon?", "--profile", alice.profile);
    const seq = /sent #(\d+)/.exec(sent.join("\n"))?.[1];
    assert.ok(seq !== undefined, sent.join("\n"));
    await ok(
      "send",
      alice.username,
      "yes please",
      "--reply-to",
      seq,
      "--mention",
      `@${alice.username}`,
      "--profile",
      bob.profile,
    );
    const lines = await ok("history", bob.username, "--profile", alice.profile);
    const reply = lines.find((l) => l.includes("yes please"));
    assert.ok(reply !== undefined, lines.join("\n"));
    assert.match(reply, new RegExp(`\\(reply to #${seq}\\): yes please`));
    assert.match(reply, new RegExp(`\\(mentions @${alice.username}\\)`));
    // A reply to an entry that does not exist is refused, naming it.
    const refused = await cli("send", alice.username, "no", "--reply-to", "999", "--profile", bob.profile);
    assert.notEqual(refused.code, 0);
    assert.match(refused.err.join("\n"), /reply_to_seq: no such entry/);
  });

  it("send --file and download round-trip the exact bytes; download never overwrites without --force", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    const dir = join(fx.base, `files-${n}`);
    await mkdir(dir);
    const original = randomBytes(300_000);
    const source = join(dir, "report.bin");
    await writeFile(source, original);

    const sent = await ok("send", bob.username, "the report", "--file", source, "--profile", alice.profile);
    assert.match(sent.at(-1) ?? "", /^sent #\d+ to .* \(end-to-end encrypted\): report\.bin, 293\.0 KiB$/);

    const history = await ok("history", alice.username, "--profile", bob.profile);
    assert.ok(
      history.some((l) => l.endsWith(`@${alice.username}: the report`)),
      history.join("\n"),
    );
    const seq = downloadSeq(history, "report.bin");
    assert.match(
      history.find((l) => l.includes("[file] report.bin"))!,
      new RegExp(
        `\\(293\\.0 KiB\\); download with: switchboard download ${alice.username} ${seq} --profile `,
      ),
    );

    // --out a directory: the file keeps its name there.
    const inbox = join(dir, "inbox");
    await mkdir(inbox);
    const saved = await ok("download", alice.username, String(seq), "--out", inbox, "--profile", bob.profile);
    assert.match(saved[0] ?? "", /^saved .*report\.bin \(293\.0 KiB; verified and decrypted\)$/);
    assert.ok((await readFile(join(inbox, "report.bin"))).equals(original));

    // An existing file is refused and left as it was.
    const target = join(dir, "mine.bin");
    await writeFile(target, "do not replace me");
    const refused = await cli(
      "download",
      alice.username,
      String(seq),
      "--out",
      target,
      "--profile",
      bob.profile,
    );
    assert.equal(refused.code, 1);
    assert.deepEqual(refused.err, [
      `switchboard: ${target} already exists; choose another --out, or add --force to replace it`,
    ]);
    assert.equal(await readFile(target, "utf8"), "do not replace me");
    await ok("download", alice.username, String(seq), "--out", target, "--force", "--profile", bob.profile);
    assert.ok((await readFile(target)).equals(original));

    // The sender's own device reads its attachment back too.
    const own = join(dir, "own.bin");
    await ok("download", bob.username, String(seq), "--out", own, "--profile", alice.profile);
    assert.ok((await readFile(own)).equals(original));

    // Entries that are not there, or carry no file.
    const textOnly = await ok("send", bob.username, "just text", "--profile", alice.profile);
    const textSeq = /^sent #(\d+)/.exec(textOnly[0] ?? "")?.[1];
    const noFile = await cli("download", alice.username, textSeq!, "--profile", bob.profile);
    assert.deepEqual([noFile.code, noFile.err], [1, [`switchboard: entry #${textSeq} has no attachment`]]);
    const missing = await cli("download", alice.username, "999", "--profile", bob.profile);
    assert.equal(missing.code, 1);
    assert.match(missing.err[0] ?? "", /^switchboard: there is no entry #999 with .* \(the last is #\d+\)$/);
    const nowhere = join(dir, "no-such-dir", "x.bin");
    const noDir = await cli(
      "download",
      alice.username,
      String(seq),
      "--out",
      nowhere,
      "--profile",
      bob.profile,
    );
    assert.deepEqual(
      [noDir.code, noDir.err],
      [1, [`switchboard: cannot save ${nowhere}: no directory ${join(dir, "no-such-dir")}`]],
    );
    const notSeq = await cli("download", alice.username, "x1", "--profile", bob.profile);
    assert.equal(notSeq.code, 1);
    assert.match(notSeq.err[0] ?? "", /is not a seq/);
  });

  it("download saves a file under its base name only, whatever name the sender gave it", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    const bobIds = await idsOf(bob.profile);
    // The CLI sends a path's base name; another client may send anything, so this goes through the SDK.
    const sender = await SwitchboardClient.open({ profileDir: alice.profile, encryption: true });
    let seq: bigint;
    try {
      await sender.connect();
      const { conversationId } = await sender.openDirect(bobIds.userId);
      const result = await sender.sendAttachment(conversationId, {
        data: new TextEncoder().encode("escaped?"),
        fileName: "../../escape\u001b[31m.txt",
      });
      seq = result.seq;
    } finally {
      await sender.close();
    }
    const dir = join(fx.base, `names-${n}`);
    const inside = join(dir, "inside");
    await mkdir(inside, { recursive: true });
    const history = await ok("history", alice.username, "--profile", bob.profile);
    assert.ok(
      history.some((l) => l.includes("[file] ../../escape\u241B[31m.txt ")),
      history.join("\n"),
    );
    await ok("download", alice.username, String(seq), "--out", inside, "--profile", bob.profile);
    assert.deepEqual(await readdir(inside), ["escape[31m.txt"]);
    assert.deepEqual(await readdir(dir), ["inside"]);
    assert.equal(await readFile(join(inside, "escape[31m.txt"), "utf8"), "escaped?");
  });

  it("download of an object altered in the media store fails clearly and writes nothing", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    const objects = join(fx.server.dataDir, "media", "objects");
    const before = new Set(await readdir(objects).catch(() => [] as string[]));
    const source = join(fx.base, `tamper-${n}.txt`);
    await writeFile(source, "the real contract, all 12 pages");
    await ok("send", bob.username, "--file", source, "--profile", alice.profile);
    const added = (await readdir(objects)).filter((id) => !before.has(id));
    assert.equal(added.length, 1, `new objects: ${added.join(", ")}`);
    const object = join(objects, added[0]!);
    const bytes = await readFile(object);
    const middle = bytes.length >> 1;
    bytes.writeUInt8(bytes.readUInt8(middle) ^ 0x01, middle);
    await writeFile(object, bytes);

    const history = await ok("history", alice.username, "--profile", bob.profile);
    const seq = downloadSeq(history, `tamper-${n}.txt`);
    const out = join(fx.base, `tampered-${n}.txt`);
    const r = await cli("download", alice.username, String(seq), "--out", out, "--profile", bob.profile);
    assert.equal(r.code, 1);
    assert.deepEqual(r.err, [
      `switchboard: tamper-${n}.txt of entry #${seq} failed verification: the downloaded bytes are not ` +
        "the ones the sender uploaded (tampered with or corrupted); nothing was written",
    ]);
    await assert.rejects(stat(out), { code: "ENOENT" });
  });

  it("safety numbers are the same on both sides; --verify marks a device verified for good", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    const aliceIds = await idsOf(alice.profile);
    const bobIds = await idsOf(bob.profile);
    const line = /^(\S+) {2}((?:\d{5} ){11}\d{5}) {2}(verified|not verified)$/;

    const fromAlice = await ok("safety-number", bob.username, "--profile", alice.profile);
    const fromBob = await ok("safety-number", `@${alice.username}`, "--profile", bob.profile);
    assert.equal(fromAlice.length, 1);
    assert.equal(fromBob.length, 1);
    const a = line.exec(fromAlice[0]!);
    const b = line.exec(fromBob[0]!);
    assert.ok(a && b, `${fromAlice[0]}\n${fromBob[0]}`);
    assert.equal(a[1], bobIds.deviceId);
    assert.equal(b[1], aliceIds.deviceId);
    assert.equal(a[2], b[2], "both sides compute the same number");
    assert.equal(a[3], "not verified");

    // Another pair's number differs: the digits depend on the keys.
    const carol = await register("carol");
    const other = line.exec((await ok("safety-number", bob.username, "--profile", carol.profile))[0] ?? "");
    assert.ok(other && other[2] !== a[2]);

    const verified = await ok(
      "safety-number",
      bob.username,
      "--verify",
      bobIds.deviceId,
      "--profile",
      alice.profile,
    );
    assert.equal(line.exec(verified[0] ?? "")?.[3], "verified");
    assert.equal(
      line.exec((await ok("safety-number", bob.username, "--profile", alice.profile))[0] ?? "")?.[3],
      "verified",
    );
    // Verification is one side's own record.
    assert.equal(
      line.exec((await ok("safety-number", alice.username, "--profile", bob.profile))[0] ?? "")?.[3],
      "not verified",
    );

    const wrong = await cli("safety-number", bob.username, "--verify", "dv_nope", "--profile", alice.profile);
    assert.equal(wrong.code, 1);
    assert.equal(
      wrong.err[0],
      `switchboard: dv_nope is not one of @${bob.username}'s devices with keys (${bobIds.deviceId})`,
    );
    const plain = await register("plain", "--no-encryption");
    const none = await cli("safety-number", plain.username, "--profile", alice.profile);
    assert.equal(none.code, 1);
    assert.equal(
      none.err[0],
      `switchboard: @${plain.username} has no device with end-to-end encryption keys yet`,
    );
  });

  it("--no-encryption profiles talk in plaintext; an encrypted profile never opens without encryption", async () => {
    const carol = await register("carol", "--no-encryption");
    const dave = await register("dave", "--no-encryption");
    const sent = await ok("send", dave.username, "plain hello", "--profile", carol.profile);
    assert.match(sent[0] ?? "", /^sent #2 to .* \(not encrypted\)$/);
    // The flag again is accepted; the profile was made without encryption.
    const history = await ok("history", carol.username, "--profile", dave.profile, "--no-encryption");
    assert.match(history.at(-1) ?? "", new RegExp(`@${carol.username}: plain hello$`));
    const file = await cli(
      "send",
      dave.username,
      "--file",
      join(root, "package.json"),
      "--profile",
      carol.profile,
    );
    assert.equal(file.code, 1);
    assert.match(file.err[0] ?? "", /files are sent end-to-end encrypted only/);

    // An encrypted user cannot encrypt to carol (no keys), says so, and is not silently downgraded.
    const alice = await register("alice");
    const toPlain = await cli("send", carol.username, "hi", "--profile", alice.profile);
    assert.equal(toPlain.code, 1);
    assert.match(toPlain.err[0] ?? "", /no device of the conversation has keys .*--no-encryption/);
    const refused = await cli("send", carol.username, "hi", "--profile", alice.profile, "--no-encryption");
    assert.equal(refused.code, 1);
    assert.match(refused.err[0] ?? "", /is end-to-end encrypted and cannot be used without encryption/);

    // carol's plaintext reaches alice, marked as such.
    await ok("send", alice.username, "plain to an encrypted user", "--profile", carol.profile);
    const aliceHistory = await ok("history", carol.username, "--profile", alice.profile);
    assert.match(aliceHistory.at(-1) ?? "", /: plain to an encrypted user \(not encrypted\)$/);

    // --encryption turns a plaintext profile encrypted, for good.
    const upgraded = await ok(
      "send",
      alice.username,
      "now sealed",
      "--profile",
      carol.profile,
      "--encryption",
    );
    assert.match(upgraded[0] ?? "", /\(end-to-end encrypted\)$/);
    assert.match(
      (await ok("history", carol.username, "--profile", alice.profile)).at(-1) ?? "",
      /: now sealed$/,
    );
    const back = await cli("history", alice.username, "--profile", carol.profile, "--no-encryption");
    assert.equal(back.code, 1);
  });

  it("listen shows files and entries it cannot decrypt; a second process on the profile is refused", async () => {
    const alice = await register("alice");
    const bob = await register("bob");
    await ok("send", bob.username, "before the second device", "--profile", alice.profile);

    // bob links a second device: it has no ciphertext of what was sent before it existed.
    const code = (await ok("link-code", "--profile", bob.profile))[0]!;
    const bob2 = join(fx.base, `profile-bob2-${n}`);
    await ok("link", code, "--profile", bob2);
    // The server gives it no history from before its link; whatever it shows of that time is
    // never the text, and says it carries nothing for this device.
    const early = await ok("history", alice.username, "--profile", bob2);
    assert.ok(!early.some((l) => l.includes("before the second device")), early.join("\n"));
    for (const l of early.filter((l) => l.includes(`@${alice.username}:`)))
      assert.match(l, /: \(nothing this device can read: encrypted for other devices, .*\)$/);

    let stop!: () => void;
    const interrupted = new Promise<void>((resolve) => {
      stop = resolve;
    });
    const listening = start(["listen", "--profile", bob2], { interrupted });
    await eventually(
      () => listening.err.some((l) => l.startsWith("-- caught up")),
      () => `listen: ${listening.err.join("\n")}`,
    );
    // While it streams, commands that use the profile's keys are refused, not raced.
    const busy = await cli("history", alice.username, "--profile", bob2);
    assert.equal(busy.code, 1);
    assert.match(busy.err[0] ?? "", /is in use by process \d+; .*stop the other command/);

    const source = join(fx.base, `listen-${n}.txt`);
    await writeFile(source, "for every device");
    // The gateway trusts its list of bob's devices for 5 s; past that it names the new device as
    // missing, and alice's client encrypts for it too.
    await new Promise((resolve) => setTimeout(resolve, 5_500));
    await ok("send", bob.username, "see attached", "--file", source, "--profile", alice.profile);
    await eventually(
      () => listening.out.some((l) => l.includes(`[file] listen-${n}.txt (16 bytes)`)),
      () => `listen: ${listening.out.join("\n")}`,
    );
    stop();
    assert.equal(await listening.done, 0, listening.err.join("\n"));
    const lines = listening.out;
    assert.ok(
      lines.some((l) => l.endsWith(`@${alice.username}: see attached`)),
      lines.join("\n"),
    );
    const seq = downloadSeq(lines, `listen-${n}.txt`);
    const out = join(fx.base, `listened-${n}.txt`);
    await ok("download", alice.username, String(seq), "--out", out, "--profile", bob2);
    assert.equal(await readFile(out, "utf8"), "for every device");

    // A profile that lost its keys (restored without them) can never be reached again: the key
    // directory keeps the identity they belonged to. listen says so and stops.
    await rm(join(bob2, "signal"), { recursive: true });
    await ok("send", bob.username, "after the keys were lost", "--profile", alice.profile);
    let stopAgain!: () => void;
    const again = start(["listen", "--profile", bob2], {
      interrupted: new Promise<void>((resolve) => {
        stopAgain = resolve;
      }),
    });
    const exit = await Promise.race([
      again.done,
      new Promise<string>((resolve) => setTimeout(() => resolve("still running"), 20_000)),
    ]);
    stopAgain();
    assert.equal(exit, 1, `listen: ${again.out.join("\n")}\n${again.err.join("\n")}`);
    assert.match(again.err.join("\n"), /Signal keys are missing from its profile/);
  });

  it("runs register, send --file and download through bin/switchboard.js", async () => {
    const run = (...args: string[]) =>
      runNode([join(root, "bin/switchboard.js"), ...args], {
        cwd: fx.base,
        env: { ...process.env, SWITCHBOARD_URL: fx.server.url },
      });
    n += 1;
    const [erin, finn] = [`erin_${n}`, `finn_${n}`];
    const [erinProfile, finnProfile] = [join(fx.base, `bin-${erin}`), join(fx.base, `bin-${finn}`)];
    for (const [name, profile] of [
      [erin, erinProfile],
      [finn, finnProfile],
    ] as const) {
      const r = await run("register", name, "--profile", profile);
      assert.equal(r.code, 0, r.stderr);
    }
    const data = randomBytes(5_000);
    await mkdir(join(fx.base, `bin-src-${n}`));
    const source = join(fx.base, `bin-src-${n}`, `bin-${n}.dat`);
    await writeFile(source, data);
    const sent = await run("send", finn, "--file", source, "--profile", erinProfile);
    assert.equal(sent.code, 0, sent.stderr);
    const seq = /^sent #(\d+) /.exec(sent.stdout)?.[1];
    assert.ok(seq !== undefined, sent.stdout);
    // The default target: the sender's file name, in the current directory (here, base).
    const got = await run("download", erin, seq, "--profile", finnProfile);
    assert.equal(got.code, 0, got.stderr);
    assert.equal(got.stdout, `saved bin-${n}.dat (4.9 KiB; verified and decrypted)\n`);
    assert.ok((await readFile(join(fx.base, `bin-${n}.dat`))).equals(data));
    const again = await run("download", erin, seq, "--profile", finnProfile);
    assert.equal(again.code, 1);
    assert.equal(
      again.stderr,
      `switchboard: bin-${n}.dat already exists; choose another --out, or add --force to replace it\n`,
    );
  });
});
