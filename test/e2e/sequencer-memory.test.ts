import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { MessageBodySchema, OutgoingEntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { freePort } from "../helpers/backends.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

// Issue 15, finding 10: the sequencer kept each conversation's last 256 entries whatever their
// size, so memory grew with the bytes sent. Here a server with an 8 MiB hot-state budget takes
// 24 conversations x 200 messages of 60 KB (288 MB, all of it within the old count limits) and
// must hold its anonymous memory (the JS heap and the buffers outside it) to a bound that the
// old code passes by far, while every message still arrives whole and in order.

const CONVERSATIONS = 24;
const MESSAGES = 200;
const PAYLOAD = 60_000;
const BUDGET = 8 * 1024 * 1024;
/**
 * Growth of anonymous RSS allowed over the idle server's, after a full GC: the budget, and
 * slack for what is not the sequencer's (each stream's HTTP/2 and framing buffers, the last
 * frames a Connect stream's generators hold). Measured on the 2-core VM: +60 to +80 MiB with the
 * budget, +311 MiB with the code before it, and +130 to +135 MiB twice under CI's parallel load,
 * when the gRPC stream writer still kept its last batch (ArrayBuffers 150 MB after a full GC);
 * +28 MiB alone once it no longer did (ArrayBuffers 31 MB, the hot state and its encodings).
 */
const GROWTH_BOUND = BUDGET + 120 * 1024 * 1024;
const WINDOW = 8;

/** Preloaded into the server: SIGUSR2 runs a full GC, then says so on stderr. */
const GC_HOOK = `process.on("SIGUSR2", () => { globalThis.gc(); process.stderr.write("@@gc " + JSON.stringify(process.memoryUsage()) + "\\n"); });`;

/** VmRSS and RssAnon of a process, in bytes, from /proc/<pid>/status. */
async function memoryOf(pid: number): Promise<{ rss: number; anon: number }> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = (field: string) => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status);
    if (m === null) throw new Error(`no ${field} in /proc/${pid}/status`);
    return Number(m[1]) * 1024;
  };
  return { rss: kib("VmRSS"), anon: kib("RssAnon") };
}

/** The i-th message's payload: its index, then bytes that depend on it and their position. */
function payloadOf(i: number): Uint8Array {
  const p = new Uint8Array(PAYLOAD);
  new DataView(p.buffer).setUint32(0, i);
  for (let j = 4; j < PAYLOAD; j++) p[j] = (i * 31 + j) & 0xff;
  return p;
}

function intact(p: Uint8Array, i: number): boolean {
  if (p.length !== PAYLOAD || new DataView(p.buffer, p.byteOffset, 4).getUint32(0) !== i) return false;
  for (let j = 4; j < PAYLOAD; j += 97) if (p[j] !== ((i * 31 + j) & 0xff)) return false;
  return p[PAYLOAD - 1] === ((i * 31 + PAYLOAD - 1) & 0xff);
}

const mib = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MiB`;

describe("sequencer memory is bounded in bytes (issue 15, finding 10)", () => {
  let server: ServerProcess;
  let adminUrl: string;
  const devices: TestDevice[] = [];

  before(async () => {
    const adminPort = await freePort();
    adminUrl = `http://127.0.0.1:${adminPort}`;
    server = await startServerProcess({
      env: {
        SWITCHBOARD_ADMIN_PORT: String(adminPort),
        SWITCHBOARD_LOG_LEVEL: "info",
        SWITCHBOARD_SEQUENCER_CACHE_BYTES: String(BUDGET),
        // This test measures memory, not flood protection.
        SWITCHBOARD_SENDS_PER_SECOND: "100000",
        SWITCHBOARD_SEND_BURST: "100000",
        // Buffers of 32 KiB and more get their own mappings, returned to the system when freed,
        // so RSS shows what the server holds rather than what the allocator keeps for reuse.
        MALLOC_MMAP_THRESHOLD_: "32768",
        NODE_OPTIONS: `--expose-gc --import=data:text/javascript;base64,${Buffer.from(GC_HOOK).toString("base64")}`,
      },
    });
  });
  after(async () => {
    await Promise.all(devices.map((d) => d.close()));
    const code = await server.stop();
    await removeDir(server.dataDir);
    assert.equal(code, 0, `server exited with ${code}:\n${server.logs.slice(-20).join("\n")}`);
  });

  /** A full GC in the server, then its memory. */
  async function collected(): Promise<{ rss: number; anon: number }> {
    const pid = server.process.pid!;
    const seen = server.logs.filter((l) => l.startsWith("@@gc")).length;
    server.process.kill("SIGUSR2");
    const deadline = Date.now() + 30_000;
    while (server.logs.filter((l) => l.startsWith("@@gc")).length === seen) {
      if (Date.now() > deadline) throw new Error("the server did not answer SIGUSR2 with a GC");
      await new Promise((r) => setTimeout(r, 50));
    }
    return memoryOf(pid);
  }

  it("holds the hot state to its byte budget while 288 MB of messages go through, and delivers them all in order", async () => {
    const pairs: Array<{ sender: TestDevice; receiver: TestDevice; id: string }> = [];
    for (let c = 0; c < CONVERSATIONS; c++) {
      const sender = await TestDevice.register(server.url, uniqueName("mem_s"));
      const receiver = await TestDevice.register(server.url, uniqueName("mem_r"));
      devices.push(sender, receiver);
      const { conversation } = await sender.conversations.openDirect({ peerUserId: receiver.userId });
      pairs.push({ sender, receiver, id: conversation!.conversationId });
    }
    // Received entries are checked as they arrive and let go, so this process stays small too.
    const received = new Map<string, number>(pairs.map((p) => [p.id, 1]));
    /** "conversation:seq" -> the index of the message acked with that seq, and of the one delivered. */
    const sent = new Map<string, number>();
    const delivered = new Map<string, number>();
    const problems: string[] = [];
    for (const { receiver } of pairs) receiver.connect();
    for (const { receiver } of pairs)
      await receiver.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up", 30_000);
    // Seq 1 (the conversation's creation) came before caught_up; the messages start at 2.
    for (const { receiver } of pairs) receiver.frames = [];
    const drain = () => {
      for (const { receiver, id } of pairs) {
        for (const e of receiver.entries(id)) {
          const next = received.get(id)! + 1;
          if (Number(e.seq) !== next) problems.push(`${id}: got seq ${e.seq}, expected ${next}`);
          const payload = e.body.case === "message" ? e.body.value.payload : new Uint8Array(0);
          const index =
            payload.length >= 4 ? new DataView(payload.buffer, payload.byteOffset).getUint32(0) : -1;
          if (!intact(payload, index)) problems.push(`${id}: seq ${e.seq} arrived altered`);
          delivered.set(`${id}:${e.seq}`, index);
          received.set(id, Number(e.seq));
        }
        receiver.frames = [];
      }
    };
    const idle = await collected();

    // Each sender keeps WINDOW unary sends in flight, so every conversation grows at once.
    const draining = setInterval(drain, 200);
    await Promise.all(
      pairs.map(async ({ sender, id }) => {
        let next = 0;
        const worker = async () => {
          while (next < MESSAGES) {
            const i = next++;
            const entry = create(OutgoingEntrySchema, {
              clientMsgId: `m${i}`,
              conversationId: id,
              body: { case: "message", value: create(MessageBodySchema, { payload: payloadOf(i) }) },
            });
            const r = await sender.gateway.send({ entry });
            sent.set(`${id}:${r.seq}`, i);
          }
        };
        await Promise.all(Array.from({ length: WINDOW }, worker));
      }),
    );
    clearInterval(draining);
    // Every message arrives at its receiver, in order (from live pushes or the log).
    const deadline = Date.now() + 120_000;
    for (;;) {
      drain();
      if (pairs.every((p) => received.get(p.id) === MESSAGES + 1)) break;
      if (Date.now() > deadline) {
        const short = pairs.filter((p) => received.get(p.id) !== MESSAGES + 1);
        throw new Error(
          `${short.length} receivers short, e.g. ${short[0]?.id} at ${received.get(short[0]!.id)}`,
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(problems, []);
    assert.equal(sent.size, CONVERSATIONS * MESSAGES);
    assert.deepEqual(delivered, sent, "each seq delivered is the message acked with it");

    const loaded = await collected();
    const growth = loaded.anon - idle.anon;
    const detail =
      `anonymous RSS ${mib(idle.anon)} idle, ${mib(loaded.anon)} after ${mib(CONVERSATIONS * MESSAGES * PAYLOAD)} ` +
      `of messages (VmRSS ${mib(idle.rss)} -> ${mib(loaded.rss)}, the rest being the store's mapped file)`;
    console.log(`# ${detail}`);
    console.log(`# ${server.logs.filter((l) => l.startsWith("@@gc")).join(" ")}`);
    assert.ok(growth <= GROWTH_BOUND, `grew ${mib(growth)}, bound ${mib(GROWTH_BOUND)}: ${detail}`);
    // The budget was reached and enforced, and said so once; the metrics show it.
    assert.equal(server.logs.filter((l) => l.includes("reached its byte budget")).length, 1);
    const metrics = await (await fetch(`${adminUrl}/metrics`)).text();
    const sample = (name: string) => {
      const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)`, "m").exec(metrics);
      if (m === null) throw new Error(`${name} not in /metrics`);
      return Number(m[1]);
    };
    assert.ok(sample("switchboard_sequencer_hot_state_bytes") <= BUDGET);
    assert.equal(sample("switchboard_sequencer_hot_state_budget_bytes"), BUDGET);
    assert.match(metrics, /switchboard_sequencer_hot_state_evictions_total\{[^}]*kind="entry"[^}]*\} [1-9]/);
  });
});
