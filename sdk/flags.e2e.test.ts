import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseFeatureFlags } from "../services/common/config/flags.js";
import { assignFlags } from "../services/common/feature-flags.js";
import { SdkServerSuite } from "../test/helpers/sdk-devices.js";

const FLAGS = '{"new_composer": {"control": 50, "treatment": 50}, "search.v2": {"off": 90, "on": 10}}';

/** client.flags against a server process configured with feature flags. */
describe("SDK feature flags", () => {
  const fx = new SdkServerSuite("sb-sdk-flags-", { SWITCHBOARD_FEATURE_FLAGS: FLAGS });

  it("gives each device of a user the user's variants, cached", async () => {
    const laptop = await fx.devices.register("flags");
    const phone = await fx.devices.link(laptop, "flags-phone");
    const expected = new Map(
      assignFlags(parseFeatureFlags(FLAGS), laptop.userId).map((a) => [a.flag, a.variant]),
    );
    const onLaptop = await laptop.flags.all();
    assert.deepEqual(new Map(onLaptop), expected);
    assert.deepEqual(new Map(await phone.flags.all()), expected);
    assert.equal(await laptop.flags.variant("new_composer"), expected.get("new_composer"));
    assert.equal(await laptop.flags.variant("unknown"), undefined);
    // The same answer object until the cache's 300 s pass (the default cache_seconds).
    assert.equal(await laptop.flags.all(), onLaptop);
  });
});
