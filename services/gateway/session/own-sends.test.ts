import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { OwnSends } from "./own-sends.js";

const DEVICE = "dv_a";

describe("OwnSends", () => {
  it("skips each of this stream's sends once, and nothing of anyone else's", () => {
    const own = new OwnSends();
    own.appending("m1");
    assert.equal(own.skip(DEVICE, DEVICE, "m1"), false, "off: remembers nothing");
    own.enabled = true;
    for (const id of ["m1", "m2", "m3", "m2"]) own.appending(id);
    assert.equal(own.skip("dv_b", DEVICE, "m2"), false, "another device's entry");
    assert.equal(own.skip(DEVICE, DEVICE, "m2"), true);
    assert.equal(
      own.skip(DEVICE, DEVICE, "m2"),
      false,
      "a retry was remembered once: its entry is pushed again",
    );
    assert.equal(own.skip(DEVICE, DEVICE, "m3"), true);
    assert.equal(own.skip(DEVICE, DEVICE, "m1"), true);
    assert.equal(own.skip(DEVICE, DEVICE, ""), false);
    own.appending("m4");
    own.enabled = false;
    own.enabled = true;
    assert.equal(own.skip(DEVICE, DEVICE, "m4"), false, "turning it off forgets");
  });

  it("remembers the latest 256 sends, forgetting the oldest", () => {
    const own = new OwnSends();
    own.enabled = true;
    for (let i = 0; i < 300; i++) own.appending(`m${i}`);
    assert.equal(own.skip(DEVICE, DEVICE, "m43"), false);
    for (let i = 299; i >= 44; i--) assert.equal(own.skip(DEVICE, DEVICE, `m${i}`), true, `m${i}`);
  });
});
