import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import { MemberRole } from "../../gen/switchboard/v1/conversations_pb.js";
import { FeatureFlags } from "../../sdk/client/flags.js";
import { parseFeatureFlags } from "../../services/common/config/flags.js";
import { assignFlags } from "../../services/common/feature-flags.js";
import { freePort } from "../helpers/backends.js";
import { TestDevice, uniqueName } from "../helpers/device.js";
import { rejectsWith } from "../helpers/expect.js";
import { removeDir, type ServerProcess, startServerProcess } from "../helpers/server.js";

const FLAGS = JSON.stringify({
  new_composer: { control: 50, treatment: 50 },
  "search.v2": { off: 90, on: 10 },
  dark_launch: { on: 1 },
});

/** The samples of one counter in a Prometheus text page: its labels and value. */
function samples(page: string, name: string): { labels: Record<string, string>; value: number }[] {
  const out: { labels: Record<string, string>; value: number }[] = [];
  for (const line of page.split("\n")) {
    const m = new RegExp(`^${name}\\{([^}]*)\\} ([0-9.e+]+)`).exec(line);
    if (m === null) continue;
    const labels: Record<string, string> = {};
    for (const l of m[1]!.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ labels, value: Number(m[2]) });
  }
  return out;
}

/**
 * The server's part of conversation health against a server process: feature flags assigned
 * per user from configuration (AccountService.GetFeatureFlags, and the SDK's cache of them), and
 * the guardrail counters (blocks, reports, mutes, leaves) scraped from /metrics.
 */
describe("conversation health on the server: feature flags and guardrail metrics", () => {
  let server: ServerProcess | undefined;
  let adminUrl = "";
  const devices: TestDevice[] = [];

  before(async () => {
    const adminPort = await freePort();
    adminUrl = `http://127.0.0.1:${adminPort}`;
    server = await startServerProcess({
      env: {
        SWITCHBOARD_FEATURE_FLAGS: FLAGS,
        SWITCHBOARD_FEATURE_FLAGS_CACHE_SECONDS: "60",
        SWITCHBOARD_ADMIN_PORT: String(adminPort),
      },
    });
  });

  after(async () => {
    await Promise.all(devices.map((d) => d.close()));
    const code = await server?.stop();
    if (server !== undefined) await removeDir(server.dataDir);
    assert.equal(code, 0, `server exited with ${code}:\n${server?.logs.slice(-20).join("\n")}`);
  });

  const user = async (prefix: string) => {
    const d = await TestDevice.register(server!.url, uniqueName(prefix));
    devices.push(d);
    return d;
  };

  it("assigns every user one variant of each flag, the same on each of their devices", async () => {
    const expected = parseFeatureFlags(FLAGS);
    const variants = new Set<string>();
    for (let i = 0; i < 12; i++) {
      const d = await user("ff");
      const res = await d.accounts.getFeatureFlags({});
      assert.equal(res.cacheSeconds, 60);
      const got = res.assignments.map((a) => ({ flag: a.flag, variant: a.variant }));
      // The server's answer is the hash of flag and user id (services/accounts/flags.ts).
      assert.deepEqual(got, assignFlags(expected, d.userId));
      assert.deepEqual(
        got.map((a) => a.flag),
        ["dark_launch", "new_composer", "search.v2"],
      );
      variants.add(got.find((a) => a.flag === "new_composer")!.variant);
      if (i === 0) {
        const phone = await d.link("phone");
        devices.push(phone);
        const again = await phone.accounts.getFeatureFlags({});
        assert.deepEqual(
          again.assignments.map((a) => [a.flag, a.variant]),
          got.map((a) => [a.flag, a.variant]),
        );
      }
    }
    // Twelve users at 50/50 all landing on one side would be a 1 in 2,048 chance: the ids are
    // random, so this is a sanity check of the spread, not of its exact shape (flags.test.ts).
    assert.deepEqual([...variants].sort(), ["control", "treatment"]);
  });

  it("refuses a caller without a token", async () => {
    const anonymous = new TestDevice(server!.url, "", "", "", "nobody");
    devices.push(anonymous);
    await rejectsWith(anonymous.accounts.getFeatureFlags({}), Code.Unauthenticated);
  });

  it("the SDK keeps the answer for the time the server says, and shares one request", async () => {
    const d = await user("fc");
    let now = 1_000_000;
    const flags = new FeatureFlags(d, () => now);
    const [first, concurrent] = await Promise.all([flags.all(), flags.all()]);
    assert.equal(first, concurrent, "two reads at once share one answer");
    assert.equal(first.get("dark_launch"), "on");
    assert.equal(await flags.variant("missing"), undefined);
    now += 59_000;
    assert.equal(await flags.all(), first, "served from the cache within cache_seconds");
    now += 2_000;
    const refreshed = await flags.all();
    assert.notEqual(refreshed, first, "asked again once cache_seconds passed");
    assert.deepEqual([...refreshed], [...first]);
    flags.invalidate();
    assert.notEqual(await flags.all(), refreshed);
  });

  it("counts blocks, reports, mutes and leaves in /metrics, with no user or conversation in them", async () => {
    const read = async () => {
      const res = await fetch(`${adminUrl}/metrics`);
      assert.equal(res.status, 200);
      return res.text();
    };
    const count = (page: string, action: string) =>
      samples(page, "switchboard_guardrail_actions_total").find((s) => s.labels.action === action)?.value ??
      0;
    const before = await read();

    const [a, b, c, x, y] = [
      await user("ga"),
      await user("gb"),
      await user("gc"),
      await user("gx"),
      await user("gy"),
    ];
    // Three new blocks: blocking again is not one, unblocking is not one, blocking after it is.
    await x.accounts.blockUser({ userId: y.userId });
    await x.accounts.blockUser({ userId: y.userId });
    await x.accounts.unblockUser({ userId: y.userId });
    await x.accounts.blockUser({ userId: y.userId });
    await y.accounts.blockUser({ userId: x.userId });
    // One report; a refused one is not counted.
    await x.accounts.reportUser({ reportedUserId: y.userId, reason: "spam" });
    await rejectsWith(x.accounts.reportUser({ reportedUserId: x.userId }), Code.InvalidArgument);
    // One mute; an unmute is not counted.
    const { conversation } = await b.conversations.createGroup({ title: "g", memberUserIds: [c.userId] });
    const id = conversation!.conversationId;
    await c.conversations.setMute({ conversationId: id, mutedUntilMs: BigInt(Date.now() + 3_600_000) });
    await c.conversations.setMute({ conversationId: id, mutedUntilMs: 0n });
    // One leave; a removal by an admin is not a leave.
    await b.conversations.addMembers({ conversationId: id, userIds: [a.userId] });
    await b.conversations.setRole({ conversationId: id, userIds: [a.userId], role: MemberRole.ADMIN });
    await c.conversations.leaveGroup({ conversationId: id });
    await a.conversations.removeMembers({ conversationId: id, userIds: [b.userId] });

    const page = await read();
    assert.equal(count(page, "block") - count(before, "block"), 3);
    assert.equal(count(page, "report") - count(before, "report"), 1);
    assert.equal(count(page, "mute") - count(before, "mute"), 1);
    assert.equal(count(page, "leave") - count(before, "leave"), 1);
    // Split by each flag's variants: every flag's arms add up to the total, and the report is
    // counted under the reporter's own variants (the ones GetFeatureFlags gives them).
    const VARIANT = "switchboard_guardrail_variant_actions_total";
    const armCount = (p: string, action: string, flag: string, variant?: string) =>
      samples(p, VARIANT)
        .filter((s) => s.labels.action === action && s.labels.flag === flag)
        .filter((s) => variant === undefined || s.labels.variant === variant)
        .reduce((sum, s) => sum + s.value, 0);
    const flags = parseFeatureFlags(FLAGS);
    for (const action of ["block", "report", "mute", "leave"]) {
      for (const flag of flags) {
        assert.equal(
          armCount(page, action, flag.name) - armCount(before, action, flag.name),
          count(page, action) - count(before, action),
          `${action} by ${flag.name}`,
        );
      }
    }
    for (const { flag, variant } of assignFlags(flags, x.userId)) {
      assert.equal(armCount(page, "report", flag, variant) - armCount(before, "report", flag, variant), 1);
    }
    // Counts only: the series carry the action (the flag and variant), and the exporter's scope,
    // nothing that names anyone.
    for (const s of samples(page, "switchboard_guardrail_actions_total")) {
      for (const key of Object.keys(s.labels)) assert.match(key, /^(action|otel_scope_[a-z_]+)$/, key);
      assert.match(s.labels.action!, /^(block|report|mute|leave)$/);
    }
    for (const s of samples(page, VARIANT)) {
      for (const key of Object.keys(s.labels))
        assert.match(key, /^(action|flag|variant|otel_scope_[a-z_]+)$/, key);
    }
    for (const secret of [a.userId, b.userId, c.userId, x.userId, y.userId, id])
      assert.ok(!page.includes(secret), secret);
  });
});
