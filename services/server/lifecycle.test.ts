import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { pino } from "pino";
import { Closers } from "./lifecycle.js";

describe("shutdown steps", () => {
  it("run last-added first, and a step that hangs or fails does not stop the ones after it", async () => {
    const lines: string[] = [];
    const log = pino({ level: "warn" }, { write: (line: string) => lines.push(line) });
    const ran: string[] = [];
    const closers = new Closers();
    closers.add("store", () => {
      ran.push("store");
    });
    closers.add("bus", () => Promise.reject(new Error("bus already gone")));
    // A database that stopped answering: its close never settles.
    closers.add("hung database", () => new Promise(() => {}));
    closers.add("server", () => {
      ran.push("server");
    });
    await closers.run(log, 50);
    assert.deepEqual(ran, ["server", "store"]);
    assert.ok(lines.some((l) => /"step":"hung database"/.test(l) && /did not finish in time/.test(l)));
    assert.ok(lines.some((l) => /"step":"bus"/.test(l) && /shutdown step failed/.test(l)));
  });
});
