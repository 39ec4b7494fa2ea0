import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { addressKey, callerAddress, trustedProxyList } from "./peer.js";
import { lookAlikes, ReservedNames, skeleton } from "./usernames.js";

describe("source addresses", () => {
  it("keys IPv4 as is, IPv4-mapped as IPv4, and IPv6 by its /64", () => {
    assert.equal(addressKey("203.0.113.7"), "203.0.113.7");
    assert.equal(addressKey("::ffff:203.0.113.7"), "203.0.113.7");
    assert.equal(addressKey("2001:db8:1:2:3:4:5:6"), "2001:0db8:0001:0002::/64");
    assert.equal(addressKey("2001:db8:1:2::9"), addressKey("2001:db8:1:2:ffff::1"));
    assert.notEqual(addressKey("2001:db8:1:2::9"), addressKey("2001:db8:1:3::9"));
    assert.equal(addressKey("::1"), "0000:0000:0000:0000::/64");
  });

  it("believes X-Forwarded-For only from a trusted proxy, and only its right-most untrusted hop", () => {
    const trusted = trustedProxyList(["10.0.0.0/8", "fd00::1"]);
    // Not configured, or not from a trusted peer: the socket's address.
    assert.equal(callerAddress("198.51.100.1", "1.2.3.4", undefined), "198.51.100.1");
    assert.equal(callerAddress("198.51.100.1", "1.2.3.4", trusted), "198.51.100.1");
    // From the proxy: the hop it saw; anything the client wrote to the left proves nothing.
    assert.equal(callerAddress("10.1.1.1", "6.6.6.6, 203.0.113.9", trusted), "203.0.113.9");
    assert.equal(callerAddress("::ffff:10.1.1.1", "203.0.113.9, 10.2.2.2", trusted), "203.0.113.9");
    assert.equal(callerAddress("fd00::1", "2001:db8::5", trusted), "2001:db8::5");
    assert.equal(callerAddress("10.1.1.1", "not-an-address", trusted), "10.1.1.1");
    assert.equal(callerAddress(undefined, undefined, trusted), "unknown");
    assert.throws(() => trustedProxyList(["proxy.example"]), /not an IP address/);
  });
});

describe("names", () => {
  it("maps confusable characters to one skeleton", () => {
    assert.equal(skeleton("ａｄｍｉｎ"), skeleton("admin"));
    assert.equal(skeleton("Ѕuрроrt"), skeleton("support"));
    assert.equal(skeleton("paypa1"), skeleton("paypal"));
    assert.equal(skeleton("rnoon"), skeleton("moon"));
    assert.notEqual(skeleton("alice"), skeleton("bob"));
  });

  it("matches reserved names loosely and only whole names", () => {
    const reserved = new ReservedNames(["admin", "support", "switchboard"]);
    for (const name of ["admin", "adm1n", "ADMIN", "ad.min", "admin_", "Ѕuррort", "swítchboard"]) {
      assert.ok(reserved.match(name), name);
    }
    for (const name of ["admins_club", "alice", "supporter", "bob"])
      assert.equal(reserved.match(name), undefined, name);
    assert.equal(new ReservedNames([]).match("admin"), undefined);
  });

  it("lists a username's look-alikes in the username alphabet, fewest changes first, bounded", () => {
    assert.deepEqual(new Set(lookAlikes("lo", 10)), new Set(["1o", "l0", "10"]));
    assert.ok(lookAlikes("moon", 10).includes("rnoon"));
    assert.ok(lookAlikes("rnoon", 10).includes("moon"));
    assert.deepEqual(lookAlikes("abc", 10), []);
    const many = lookAlikes("lolololololololo", 64);
    assert.equal(many.length, 64);
    // One substitution before two.
    assert.ok(
      many.slice(0, 16).every((v) => [...v].filter((c, i) => c !== "lolololololololo"[i]).length === 1),
    );
  });
});
