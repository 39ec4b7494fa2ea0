import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type FeatureFlag, parseFeatureFlags } from "./config/flags.js";
import { assignFlags, assignVariant, bucketOf } from "./feature-flags.js";

/** Deterministic user ids, so every count below is the same on every run. */
const USERS = Array.from({ length: 20_000 }, (_, i) => `u_${i.toString(36).padStart(26, "0")}`);

function shares(flag: FeatureFlag, users: readonly string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const u of users) {
    const v = assignVariant(flag, u);
    counts.set(v, (counts.get(v) ?? 0) + 1);
  }
  return new Map([...counts].map(([v, n]) => [v, n / users.length]));
}

describe("feature flag assignment", () => {
  const [half] = parseFeatureFlags('{"composer": {"control": 50, "treatment": 50}}');

  it("gives a user the same variant every time, whatever the order of the variants in the configuration", () => {
    const [reordered] = parseFeatureFlags('{"composer": {"treatment": 50, "control": 50}}');
    for (const u of USERS.slice(0, 500)) {
      const v = assignVariant(half!, u);
      assert.equal(assignVariant(half!, u), v);
      assert.equal(assignVariant(reordered!, u), v);
    }
    // Known answers (SHA-256 of "composer\0u_alice"): the assignment must never change between
    // releases, or every running experiment would reshuffle its users.
    assert.equal(bucketOf("composer", "u_alice", 100), 80);
    assert.equal(bucketOf("composer", "u_alice", 1_000_000), 996_880);
    assert.equal(assignVariant(half!, "u_alice"), "treatment");
    // The flag's name takes part: another flag places the same users elsewhere.
    assert.notEqual(
      USERS.slice(0, 64)
        .map((u) => bucketOf("composer", u, 1_000_000))
        .join(),
      USERS.slice(0, 64)
        .map((u) => bucketOf("composer2", u, 1_000_000))
        .join(),
    );
  });

  it("spreads users by the weights", () => {
    // 20,000 users: one standard deviation of a 50 % share is 0.35 points, of 10 % 0.21.
    const even = shares(half!, USERS);
    assert.ok(Math.abs(even.get("control")! - 0.5) < 0.015, `control ${even.get("control")}`);
    assert.ok(Math.abs(even.get("treatment")! - 0.5) < 0.015, `treatment ${even.get("treatment")}`);
    const [skewed] = parseFeatureFlags('{"search": {"off": 90, "on": 10, "never": 0}}');
    const s = shares(skewed!, USERS);
    assert.ok(Math.abs(s.get("on")! - 0.1) < 0.01, `on ${s.get("on")}`);
    assert.ok(Math.abs(s.get("off")! - 0.9) < 0.01, `off ${s.get("off")}`);
    assert.equal(s.get("never"), undefined, "a variant of weight 0 gets nobody");
    const [three] = parseFeatureFlags('{"t": {"a": 1, "b": 1, "c": 1}}');
    for (const share of shares(three!, USERS).values()) assert.ok(Math.abs(share - 1 / 3) < 0.015);
  });

  it("assigns one flag independently of another", () => {
    const [other] = parseFeatureFlags('{"reactions": {"control": 50, "treatment": 50}}');
    const treated = USERS.filter((u) => assignVariant(half!, u) === "treatment");
    // Among the users in one flag's treatment, the other flag still splits evenly.
    const both = shares(other!, treated).get("treatment")!;
    assert.ok(Math.abs(both - 0.5) < 0.02, `treatment of both: ${both}`);
  });

  it("answers every flag, sorted by name", () => {
    const flags = parseFeatureFlags('{"zeta": {"on": 1}, "alpha": {"x": 1, "y": 0}}');
    assert.deepEqual(assignFlags(flags, "u_1"), [
      { flag: "alpha", variant: "x" },
      { flag: "zeta", variant: "on" },
    ]);
    assert.deepEqual(assignFlags(parseFeatureFlags(undefined), "u_1"), []);
  });

  it("refuses a configuration it cannot assign by", () => {
    for (const [json, pattern] of [
      ["{not json", /not JSON/],
      ["[1, 2]", /object of flags/],
      ['{"a": {"x": "50"}}', /object of flags/],
      ['{"A": {"x": 1}}', /flag "A"/],
      ['{"a": {"X y": 1}}', /variant "X y"/],
      ['{"a": {}}', /1 to 32 variants/],
      ['{"a": {"x": 0, "y": 0}}', /add up to/],
      ['{"a": {"x": 1.5}}', /non-negative integer/],
      ['{"a": {"x": -1}}', /non-negative integer/],
      ['{"a": {"x": 1000001}}', /add up to/],
      [`{"a": {${Array.from({ length: 33 }, (_, i) => `"v${i}": 1`).join(",")}}}`, /1 to 32 variants/],
      [`{${Array.from({ length: 257 }, (_, i) => `"f${i}": {"on": 1}`).join(",")}}`, /at most 256 flags/],
      [`{"a": {"x": 1}, "pad": "${"p".repeat(70_000)}"}`, /over 65536 bytes/],
    ] as const) {
      assert.throws(() => parseFeatureFlags(json), pattern, json.slice(0, 60));
    }
  });
});
