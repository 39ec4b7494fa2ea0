import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { base64Forms, findMarkers } from "./scan.js";

// The no-plaintext e2e test is only as good as its search: these check that each encoding is found
// wherever the marker sits in a larger input, and that other bytes are not mistaken for it.

// "???>>>" and the like encode to base64 with "+" and "/", so base64url differs from base64.
const marker = "SECRET-unit-0123456789ab-???>>>~~~-do-not-store";

describe("marker search", () => {
  it("finds a marker base64-encoded inside a larger input at any alignment", () => {
    for (let prefix = 0; prefix < 7; prefix++) {
      const input = Buffer.concat([randomBytes(prefix), Buffer.from(marker), randomBytes(5)]);
      for (const [encoding, text] of [
        ["base64", input.toString("base64")],
        ["base64url", input.toString("base64url")],
      ] as const) {
        const found = findMarkers(Buffer.from(`{"payload":"${text}"}`), "json", [marker]);
        assert.ok(
          found.some((f) => f.encoding.startsWith(`${encoding}@`)),
          `${encoding} with ${prefix} bytes before the marker`,
        );
      }
    }
    // One form per alignment, each of whole 3-byte groups of the marker.
    const forms = base64Forms(Buffer.from(marker));
    assert.equal(forms.length, 3);
    for (const f of forms) assert.equal(f.length % 4, 0);
    assert.ok(
      forms.every((f) => /[+/]/.test(f)),
      "the marker exercises base64url's alphabet",
    );
  });

  it("finds UTF-8 and UTF-16LE, and nothing in bytes that only resemble the marker", () => {
    const padded = (b: Buffer) => Buffer.concat([randomBytes(11), b, randomBytes(3)]);
    const utf8 = findMarkers(padded(Buffer.from(marker, "utf8")), "a", [marker]);
    assert.ok(utf8.some((f) => f.encoding === "utf8"));
    const utf16 = findMarkers(padded(Buffer.from(marker, "utf16le")), "b", [marker]);
    assert.deepEqual(
      utf16.map((f) => f.encoding),
      ["utf16le"],
    );
    const near = marker.replace("0123", "0124");
    for (const text of [near, Buffer.from(near).toString("base64"), marker.slice(0, -1)]) {
      assert.deepEqual(findMarkers(padded(Buffer.from(text)), "c", [marker]), [], text);
    }
  });
});
