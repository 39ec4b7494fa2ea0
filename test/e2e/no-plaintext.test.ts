import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { connect, type MsgHdrs, type NatsConnection } from "nats";
import { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import { SwitchboardClient } from "../../sdk/client.js";
import type { ClientTuning } from "../../sdk/types.js";
import { type NatsServer, startNatsServer } from "../helpers/backends.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { eventually, Inbox } from "../helpers/inbox.js";
import { type Finding, findMarkers, scanDirectory } from "../helpers/scan.js";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

// Contract 7, "the server sees only ciphertext", checked from the outside: end-to-end encrypted
// direct and group chats (messages, an edit, a reaction, attachments) run through a server process
// on the embedded LMDB store with the NATS JetStream bus on a nats-server of the test's own. Every
// message on that NATS (a raw subscription to ">", and the JetStream streams read back), every file
// the server and nats-server wrote, and the server's log are then searched for the texts' markers in
// UTF-8, UTF-16LE and base64. A plaintext conversation (encryption: false) and a plaintext upload are
// the control: their markers must be found, or the search proves nothing.

const tuning: ClientTuning = { backoffBaseMs: 20, backoffCapMs: 200 };
const decoder = new TextDecoder();

const natsMissing = spawnSync("nats-server", ["--version"], { stdio: "ignore" }).error !== undefined;
const INSTALL = "install the Debian package nats-server (apt-get install nats-server)";
const skip = natsMissing && process.env.CI !== "true" ? `nats-server is not installed: ${INSTALL}` : false;

/** A message seen on NATS: its subject, headers and payload. */
interface Captured {
  source: string;
  subject: string;
  bytes: Buffer;
}

function headerBytes(headers: MsgHdrs | undefined): string {
  if (headers === undefined) return "";
  const lines: string[] = [];
  for (const [key, values] of headers) lines.push(`${key}: ${values.join(",")}`);
  return lines.join("\n");
}

function describeFindings(findings: readonly Finding[]): string {
  // One line per place and marker (the first encoding found), at most 40.
  const seen = new Set<string>();
  const lines: string[] = [];
  for (const f of findings) {
    const key = `${f.where}|${f.marker}`;
    if (seen.has(key)) continue;
    seen.add(key);
    lines.push(`  ${f.marker} (${f.encoding}) in ${f.where} at byte ${f.offset}`);
  }
  return lines.slice(0, 40).join("\n") + (lines.length > 40 ? `\n  ... ${lines.length - 40} more` : "");
}

describe("the server never stores or carries plaintext (LMDB store, NATS JetStream bus)", { skip }, () => {
  let base = "";
  let nats: NatsServer | undefined;
  let capture: NatsConnection | undefined;
  let server: ServerProcess | undefined;
  let serverExit: number | null | undefined;
  const captured: Captured[] = [];
  let capturing: Promise<void> | undefined;
  const clients: SwitchboardClient[] = [];
  const raw: TestDevice[] = [];
  let n = 0;

  before(async () => {
    if (natsMissing) throw new Error(`CI=true and nats-server is missing: ${INSTALL}`);
    base = await mkdtemp(join(tmpdir(), "sb-no-plaintext-"));
    nats = await startNatsServer({ storeDir: join(base, "nats") });
    // Subscribed before the server starts, so the capture holds everything it ever published.
    capture = await connect({ servers: nats.url, name: "no-plaintext capture" });
    const sub = capture.subscribe(">");
    capturing = (async () => {
      for await (const m of sub) {
        const bytes = Buffer.concat([Buffer.from(headerBytes(m.headers)), Buffer.from(m.data)]);
        captured.push({ source: "core", subject: m.subject, bytes });
      }
    })();
    await capture.flush();
    server = await startServerProcess({
      dataDir: join(base, "server"),
      env: { SWITCHBOARD_STORE: "lmdb", SWITCHBOARD_NATS_URL: nats.url },
    });
  });

  after(async () => {
    for (const c of clients) await c.close().catch(() => {});
    for (const d of raw) await d.close();
    if (server !== undefined && serverExit === undefined) await server.stop();
    await capture?.close().catch(() => {});
    await capturing?.catch(() => {});
    await nats?.stop("SIGTERM");
    if (base !== "") await removeDir(base);
  });

  async function register(name: string, encryption: boolean): Promise<SwitchboardClient> {
    const client = await SwitchboardClient.register({
      serverUrl: server!.url,
      profileDir: join(base, "profiles", `${name}-${n++}`),
      username: `${name}_${n}`,
      encryption,
      ...tuning,
    });
    clients.push(client);
    return client;
  }

  async function link(first: SwitchboardClient, name: string): Promise<SwitchboardClient> {
    const { code } = await first.createLinkCode();
    const client = await SwitchboardClient.link({
      serverUrl: server!.url,
      profileDir: join(base, "profiles", `${name}-${n++}`),
      code,
      encryption: true,
      ...tuning,
    });
    clients.push(client);
    return client;
  }

  it("no marker of an encrypted chat is on the bus, in the store, the media files or the log; the control's are", async (t) => {
    const run = randomBytes(6).toString("hex");
    const secrets: string[] = [];
    const secret = (label: string): string => {
      const marker = `SECRET-${label}-${run}-do-not-store`;
      secrets.push(marker);
      return marker;
    };

    const alice1 = await register("alice", true);
    const bob1 = await register("bob", true);
    const carol = await register("carol", true);
    const alice2 = await link(alice1, "alice2");
    const bob2 = await link(bob1, "bob2");
    const devices = { alice1, alice2, bob1, bob2, carol };
    const inbox = Object.fromEntries(Object.entries(devices).map(([k, c]) => [k, new Inbox(k, c)])) as Record<
      keyof typeof devices,
      Inbox
    >;
    for (const c of Object.values(devices)) await c.connect();

    /** Waits until each of these devices was handed the entry and checks what it decrypted. */
    const arrives = async (
      boxes: Inbox[],
      conversationId: string,
      seq: bigint,
      kind: string,
      text: string,
    ): Promise<void> => {
      for (const box of boxes) {
        const entry = await box.entry(conversationId, seq);
        assert.equal(entry.kind, kind, `${box.name}: #${seq} is a ${kind}`);
        assert.equal(decoder.decode(entry.payload), text, `${box.name}: #${seq} decrypts`);
      }
    };

    // 1:1 between alice's two devices and bob's two: messages both ways, an edit, a reaction and
    // a file whose name, caption and content carry markers.
    const direct = (await alice1.openDirect(bob1.userId)).conversationId;
    const directAll = [inbox.alice1, inbox.alice2, inbox.bob1, inbox.bob2];
    const others = (from: SwitchboardClient) => directAll.filter((b) => b.client !== from);
    const hello = `hello bob, ${secret("direct-message")}`;
    const m1 = await alice1.send(direct, hello);
    await arrives(others(alice1), direct, m1.seq, "message", hello);
    const answer = `hi alice, ${secret("direct-reply")}`;
    const m2 = await bob2.send(direct, answer);
    await arrives(others(bob2), direct, m2.seq, "message", answer);
    const edited = `hello bob (edited), ${secret("direct-edit")}`;
    const e1 = await alice1.edit(direct, m1.seq, edited);
    await arrives(others(alice1), direct, e1.seq, "edit", edited);
    const reaction = `thumbs up ${secret("direct-reaction")}`;
    const r1 = await bob1.react(direct, m1.seq, reaction);
    await arrives(others(bob1), direct, r1.seq, "reaction", reaction);
    const fileMarker = secret("direct-file-content");
    const file = Buffer.from(`${fileMarker}\n`.repeat(2000), "utf8");
    const caption = `the file, ${secret("direct-caption")}`;
    const a1 = await alice2.sendAttachment(
      direct,
      { data: file, fileName: `${secret("direct-file-name")}.txt`, contentType: "text/plain" },
      { caption },
    );
    await arrives(others(alice2), direct, a1.seq, "message", caption);
    for (const box of [inbox.bob1, inbox.alice1]) {
      const pointer = (await box.entry(direct, a1.seq)).attachments[0];
      assert.ok(pointer !== undefined, `${box.name}: the attachment pointer arrived`);
      const bytes = await box.client.downloadAttachment(direct, pointer);
      assert.ok(Buffer.from(bytes).equals(file), `${box.name}: the file decrypts`);
    }

    // A group of the three users (five devices): the same, under sender keys.
    const group = (await carol.createGroup("team", [alice1.userId, bob1.userId])).conversationId;
    const groupAll = Object.values(inbox);
    const gothers = (from: SwitchboardClient) => groupAll.filter((b) => b.client !== from);
    const g1text = `group hello ${secret("group-message")}`;
    const g1 = await carol.send(group, g1text);
    await arrives(gothers(carol), group, g1.seq, "message", g1text);
    const g2text = `group reply ${secret("group-reply")}`;
    const g2 = await alice2.send(group, g2text);
    await arrives(gothers(alice2), group, g2.seq, "message", g2text);
    const g3text = `group reply (edited) ${secret("group-edit")}`;
    const g3 = await alice1.edit(group, g2.seq, g3text);
    await arrives(gothers(alice1), group, g3.seq, "edit", g3text);
    const g4text = `party ${secret("group-reaction")}`;
    const g4 = await bob2.react(group, g1.seq, g4text);
    await arrives(gothers(bob2), group, g4.seq, "reaction", g4text);
    const groupFileMarker = secret("group-file-content");
    const groupFile = Buffer.from(`${groupFileMarker}\n`.repeat(3000), "utf8");
    const g5 = await bob1.sendAttachment(group, { data: groupFile, fileName: "minutes.txt" });
    for (const box of [inbox.carol, inbox.alice2]) {
      const pointer = (await box.entry(group, g5.seq)).attachments[0];
      assert.ok(pointer !== undefined, `${box.name}: the group attachment pointer arrived`);
      const bytes = await box.client.downloadAttachment(group, pointer);
      assert.ok(Buffer.from(bytes).equals(groupFile), `${box.name}: the group file decrypts`);
    }
    for (const box of groupAll) assert.deepEqual(box.failures, [], `${box.name}: no decryption failure`);

    // The control: a conversation of clients opened without encryption, whose payloads the server
    // stores as sent, and a file uploaded as plaintext through the media API.
    const control = `CONTROL-${run}-plaintext-on-purpose`;
    const controlFile = `CONTROLFILE-${run}-plaintext-on-purpose`;
    const dave = await register("dave", false);
    const erin = await register("erin", false);
    const erinBox = new Inbox("erin", erin);
    await dave.connect();
    await erin.connect();
    const plain = (await dave.openDirect(erin.userId)).conversationId;
    const c1 = await dave.send(plain, `plain ${control}`);
    await arrives([erinBox], plain, c1.seq, "message", `plain ${control}`);
    const uploader = await TestDevice.register(server!.url, uniqueName("frank"));
    raw.push(uploader);
    const { conversation } = await uploader.conversations.openDirect({ peerUserId: erin.userId });
    const media = createClient(MediaService, uploader.transport);
    const body = Buffer.from(`${controlFile}\n`.repeat(10), "utf8");
    const upload = await media.createUpload({
      conversationId: conversation!.conversationId,
      lengthBytes: BigInt(body.length),
    });
    const put = await fetch(upload.uploadUrl, { method: "PUT", body });
    assert.equal(put.status, 200, await put.text());

    // Receipts go over the bus too: bob reads the direct chat and alice the group, and each
    // sender hears of it.
    const reads: string[] = [];
    alice2.on("receipt", (r) => {
      if (r.kind === "read" && r.conversationId === direct && r.upToSeq >= a1.seq) reads.push("direct");
    });
    bob1.on("receipt", (r) => {
      if (r.kind === "read" && r.conversationId === group && r.upToSeq >= g5.seq) reads.push("group");
    });
    bob1.markRead(direct, a1.seq);
    alice1.markRead(group, g5.seq);
    await eventually(
      () => reads.includes("direct") && reads.includes("group"),
      () => `read receipts seen: ${reads.join(", ")}`,
    );

    // Everything JetStream kept, read back through the stream API (on a connection of its own,
    // so the capture holds only what the server's processes sent).
    const reader = await connect({ servers: nats!.url, name: "no-plaintext stream reader" });
    const jsm = await reader.jetstreamManager();
    const streams = await jsm.streams.list().next();
    assert.ok(streams.length > 0, "the server created a JetStream stream");
    let stored = 0;
    for (const stream of streams) {
      const name = stream.config.name;
      const info = await jsm.streams.info(name);
      for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
        const m = await jsm.streams.getMessage(name, { seq }).catch(() => undefined);
        if (m === undefined) continue;
        stored++;
        captured.push({
          source: `stream ${name}`,
          subject: m.subject,
          bytes: Buffer.concat([Buffer.from(headerBytes(m.header)), Buffer.from(m.data)]),
        });
      }
    }
    await reader.close();
    assert.ok(stored > 0, "the stream holds the committed entries");

    // The server stops cleanly (everything flushed), then nats-server, so their files are final.
    serverExit = await server!.stop();
    assert.equal(serverExit, 0, `server exit code; log tail:\n${server!.logs.slice(-20).join("\n")}`);
    await capture!.drain();
    await capturing;
    await nats!.stop("SIGTERM");

    const core = captured.filter((c) => c.source === "core");
    const subjects = new Set(core.map((c) => c.subject.split(".").slice(0, 2).join(".")));
    assert.ok(core.length > 20, `the capture saw the traffic (${core.length} messages)`);
    for (const prefix of ["switchboard.events.", "switchboard.gateway."]) {
      assert.ok(
        core.some((c) => c.subject.startsWith(prefix)),
        `no ${prefix}> message was captured; subjects: ${[...subjects].join(" ")}`,
      );
    }

    // The search. First the control, so a blind search cannot pass.
    const onBus = captured.flatMap((c) => findMarkers(c.bytes, `${c.source} ${c.subject}`, [control]));
    assert.ok(
      onBus.some((f) => f.encoding === "utf8" && f.where.startsWith("core")),
      "control marker not found in the captured bus messages",
    );
    assert.ok(
      onBus.some((f) => f.where.startsWith("stream")),
      "control marker not found in the JetStream stream",
    );
    const serverFiles = await scanDirectory(server!.dataDir, [control, controlFile]);
    assert.ok(
      serverFiles.findings.some((f) => f.marker === control && f.where.includes(join("server", "store"))),
      `control marker not found in the LMDB files (searched ${serverFiles.files} files)`,
    );
    assert.ok(
      serverFiles.findings.some((f) => f.marker === controlFile && f.where.includes(join("server", "media"))),
      "control file not found in the media directory",
    );
    const natsFiles = await scanDirectory(nats!.storeDir, [control]);
    assert.ok(natsFiles.findings.length > 0, "control marker not found in nats-server's JetStream store");

    // Then the secrets: nowhere. Every place is searched before the verdict, so a failure lists them all.
    const secretsOnBus = captured.flatMap((c) => findMarkers(c.bytes, `${c.source} ${c.subject}`, secrets));
    const inServer = await scanDirectory(server!.dataDir, secrets);
    assert.ok(inServer.files >= 3 && inServer.bytes > 0, "the server wrote files to search");
    const inNats = await scanDirectory(nats!.storeDir, secrets);
    assert.ok(inNats.files > 0, "nats-server wrote files to search");
    const inLog = findMarkers(Buffer.from(server!.logs.join("\n")), "server log", secrets);
    t.diagnostic(
      `searched ${core.length} NATS messages (${[...subjects].sort().join(", ")}), ${stored} JetStream ` +
        `stream messages, ${inServer.files} server files (${inServer.bytes} bytes), ${inNats.files} ` +
        `JetStream files (${inNats.bytes} bytes), ${server!.logs.length} log lines for ${secrets.length} markers`,
    );
    const findings = [...secretsOnBus, ...inServer.findings, ...inNats.findings, ...inLog];
    assert.equal(
      findings.length,
      0,
      `plaintext found: ${secretsOnBus.length} on the bus, ${inServer.findings.length} in the server's ` +
        `files, ${inNats.findings.length} in JetStream's store, ${inLog.length} in the log:\n` +
        describeFindings(findings),
    );
  });
});
