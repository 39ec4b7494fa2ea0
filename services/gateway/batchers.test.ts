import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { OutgoingEntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { createLogger } from "../common/log.js";
import { SendBatcher } from "./batchers.js";

describe("SendBatcher", () => {
  it("turns a sequencer that died mid-call into UNAVAILABLE, which devices retry", async () => {
    // What connect-node reports when the sequencer process is killed during the Append call.
    const reset = Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET", syscall: "read" });
    const died = new ConnectError("read ECONNRESET", Code.Aborted, undefined, undefined, reset);
    const batcher = new SendBatcher(
      {
        append: () => Promise.reject(died),
        updateCursors: () => Promise.resolve(),
      },
      createLogger({ level: "silent" }),
    );
    const entry = create(OutgoingEntrySchema, { clientMsgId: "m1", conversationId: "c_x" });
    await assert.rejects(batcher.append("u_a", "dv_a", entry), (err: unknown) => {
      assert.ok(err instanceof ConnectError);
      assert.equal(err.code, Code.Unavailable);
      return true;
    });
  });

  it("passes a refusal of the whole batch on as it is", async () => {
    const refused = new ConnectError("not this replica's shard", Code.FailedPrecondition);
    const batcher = new SendBatcher(
      { append: () => Promise.reject(refused), updateCursors: () => Promise.resolve() },
      createLogger({ level: "silent" }),
    );
    const entry = create(OutgoingEntrySchema, { clientMsgId: "m2", conversationId: "c_x" });
    await assert.rejects(batcher.append("u_a", "dv_a", entry), (err: unknown) => {
      assert.ok(err instanceof ConnectError);
      assert.equal(err.code, Code.FailedPrecondition);
      return true;
    });
  });
});
