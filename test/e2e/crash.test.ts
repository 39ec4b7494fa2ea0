import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import { outgoingText, TestDevice, uniqueName } from "../helpers/device.js";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

const env = {
  SWITCHBOARD_SENDS_PER_SECOND: "100000",
  SWITCHBOARD_SEND_BURST: "100000",
  SWITCHBOARD_FRAME_BURST: "100000",
};

async function fullHistory(device: TestDevice, conversationId: string): Promise<Entry[]> {
  const all: Entry[] = [];
  for (let after = 0n; ; ) {
    const page = await device.conversations.getHistory({ conversationId, afterSeq: after, limit: 1000 });
    all.push(...page.entries);
    if (!page.hasMore || page.entries.length === 0) return all;
    after = page.entries[page.entries.length - 1]!.seq;
  }
}

describe("crash safety: SIGKILL under load loses no acknowledged entry and reuses no seq", () => {
  const servers: ServerProcess[] = [];
  const devices: TestDevice[] = [];
  after(async () => {
    await Promise.all(devices.map((d) => d.close()));
    for (const s of servers) await s.kill();
    if (servers[0]) await removeDir(servers[0].dataDir);
  });

  it("recovers every acked entry at its seq and continues the log after restart", async () => {
    const first = await startServerProcess({ env });
    servers.push(first);
    const alice = await TestDevice.register(first.url, uniqueName("crash_a"));
    const bob = await TestDevice.register(first.url, uniqueName("crash_b"));
    devices.push(alice, bob);
    const { conversation } = await alice.conversations.openDirect({ peerUserId: bob.userId });
    const id = conversation!.conversationId;

    alice.connect();
    await alice.waitFor((f) => f.some((x) => x.frame.case === "caughtUp"), "caught up");
    // Keep up to 64 sends in flight until 400 are acknowledged, then kill the server mid-stream.
    let next = 0;
    const acked = () => alice.ofCase("sendAck");
    while (acked().length < 400) {
      while (next - acked().length < 64) {
        alice.sendText(id, `c${next}`, `message ${next}`);
        next++;
      }
      await alice.waitFor(() => acked().length > next - 64 || undefined, "progress");
    }
    await first.kill();
    const ackedSeqs = new Map(acked().map((a) => [a.clientMsgId, a.seq]));
    assert.ok(ackedSeqs.size >= 400);
    await alice.close();
    await bob.close();

    const second = await startServerProcess({ env, dataDir: first.dataDir });
    servers.push(second);
    const reader = new TestDevice(second.url, bob.userId, bob.deviceId, bob.secret, bob.username);
    const writer = new TestDevice(second.url, alice.userId, alice.deviceId, alice.secret, alice.username);
    devices.push(reader, writer);
    await reader.login();
    await writer.login();

    const before = await fullHistory(reader, id);
    const bySeq = before.map((e) => Number(e.seq));
    assert.deepEqual(
      bySeq,
      Array.from({ length: before.length }, (_, i) => i + 1),
      "the log is gapless",
    );
    const stored = new Map(before.map((e) => [e.clientMsgId, e.seq]));
    for (const [clientMsgId, seq] of ackedSeqs) {
      assert.equal(stored.get(clientMsgId), seq, `acked ${clientMsgId} is stored at seq ${seq}`);
    }

    // The client retries everything it sent (acked or not) with the same ids: nothing doubles.
    for (let i = 0; i < next; i++) {
      const r = await writer.gateway.send({ entry: outgoingText(id, `c${i}`, `message ${i}`) });
      const known = stored.get(`c${i}`);
      if (known !== undefined) assert.equal(r.seq, known, `retry of c${i} returns its original seq`);
    }
    const fresh = await writer.gateway.send({ entry: outgoingText(id, "after-restart", "new") });
    const afterRetry = await fullHistory(reader, id);
    assert.equal(afterRetry.length, next + 2, "CREATED + one entry per client message + the new one");
    assert.equal(fresh.seq, BigInt(next + 2), "the next seq follows the last one: no seq reused");
    const ids = afterRetry.map((e) => e.clientMsgId).filter(Boolean);
    assert.equal(new Set(ids).size, ids.length, "no duplicate entries");
  });
});
