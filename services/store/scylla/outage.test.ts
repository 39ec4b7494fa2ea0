import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { errors, types } from "cassandra-driver";
import { UnavailableError } from "../../common/errors.js";
import { StoreError } from "../errors.js";
import { FAILING_HOLD_MS, FaultWindow } from "../faults.js";
import { outageOf, refusingOutages } from "./outage.js";

/** A store whose read fails with whatever the test sets, and which calls itself internally. */
class FakeStore {
  failure: unknown;
  calls = 0;
  async read(): Promise<string> {
    this.calls++;
    if (this.failure !== undefined) throw this.failure;
    return "row";
  }
  async readTwice(): Promise<string> {
    // An internal call sees the driver's own error, not the port's translation.
    try {
      return await this.read();
    } catch (err) {
      assert.ok(!(err instanceof UnavailableError), "internal calls are not wrapped");
      throw err;
    }
  }
  name(): string {
    return "fake";
  }
}

const noHost = new errors.NoHostAvailableError({ "127.0.0.1:9042": new Error("ECONNREFUSED") });
const coordinatorTimeout = new errors.ResponseError(
  types.responseErrorCodes.writeTimeout,
  "Operation timed out",
);
const syntax = new errors.ResponseError(
  types.responseErrorCodes.syntaxError,
  "line 1: no viable alternative",
);

describe("the ScyllaDB engine's ports when the database is away", () => {
  it("turns an unreachable or overloaded cluster into a retryable UnavailableError", async () => {
    const store = refusingOutages(new FakeStore());
    const socketClosed = Object.assign(Object.create(errors.DriverError.prototype) as Error, {
      message: "Socket was closed",
      isSocketError: true,
    });
    for (const failure of [
      noHost,
      coordinatorTimeout,
      new errors.OperationTimedOutError("no answer"),
      socketClosed,
    ]) {
      store.failure = failure;
      await assert.rejects(store.readTwice(), (err: unknown) => {
        assert.ok(err instanceof UnavailableError, `UnavailableError for ${String(failure)}`);
        assert.equal(err.message, "the database is unavailable; retry");
        assert.ok((err.retryAfterMs ?? 0) > 0);
        assert.equal(err.cause, failure, "the driver's error is kept for the logs");
        return true;
      });
    }
  });

  it("remembers the outage for readiness until the hold passes", async () => {
    let now = 1_000_000;
    const window = new FaultWindow("the database", () => now);
    const store = refusingOutages(new FakeStore(), window);
    store.failure = new errors.ResponseError(types.responseErrorCodes.syntaxError, "bad");
    await assert.rejects(store.read());
    assert.equal(window.problem(), undefined, "a wrong request is no outage");
    store.failure = noHost;
    await assert.rejects(store.read());
    assert.match(window.problem() ?? "", /^the database failing since .* \(1 failed\): /);
    now += FAILING_HOLD_MS;
    assert.equal(window.problem(), undefined);
  });

  it("passes domain refusals, wrong requests and results through untouched", async () => {
    const store = refusingOutages(new FakeStore());
    const conflict = new StoreError("conflict", "seq 5 is taken");
    for (const failure of [conflict, syntax]) {
      store.failure = failure;
      await assert.rejects(store.read(), (err: unknown) => err === failure);
    }
    store.failure = undefined;
    assert.equal(await store.read(), "row");
    assert.equal(store.name(), "fake");
    assert.equal(outageOf(new Error("a bug")), undefined);
  });
});
