import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { root } from "../mesh/process-control.js";
import { SERVER_NODE_FLAGS } from "./node-flags.js";

describe("the server's node flags", () => {
  it("are what `npm start` runs the server with", () => {
    const pkg = JSON.parse(readFileSync(`${root}/package.json`, "utf8")) as {
      scripts: Record<string, string>;
    };
    assert.equal(pkg.scripts.start, `exec node ${SERVER_NODE_FLAGS.join(" ")} bin/switchboard.js start`);
  });

  it("are the container image's ENTRYPOINT", () => {
    const dockerfile = readFileSync(`${root}/Dockerfile`, "utf8");
    const runtime = dockerfile.slice(dockerfile.lastIndexOf("\nFROM "));
    const entrypoint = /^ENTRYPOINT (\[.*\])$/m.exec(runtime)?.[1];
    assert.ok(entrypoint !== undefined, "the runtime stage has an ENTRYPOINT in exec form");
    assert.deepEqual(JSON.parse(entrypoint), ["node", ...SERVER_NODE_FLAGS, "bin/switchboard.js"]);
  });

  it("are flags this Node accepts", () => {
    // Node refuses an unknown flag only at start-up ("bad option"), as a process that does not run.
    assert.equal(
      execFileSync(process.execPath, [...SERVER_NODE_FLAGS, "-e", "process.stdout.write('ok')"], {
        encoding: "utf8",
      }),
      "ok",
    );
  });
});
