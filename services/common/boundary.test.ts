import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { AccountService } from "../../gen/switchboard/v1/accounts_pb.js";
import { DeviceMismatchSchema } from "../../gen/switchboard/v1/gateway_pb.js";
import { CODE_OF_KIND, errorBoundary, RETRY_AFTER_HEADER, toConnectError } from "./boundary.js";
import {
  AlreadyExistsError,
  ConflictError,
  DeadlineError,
  type DomainError,
  type ErrorKind,
  InvalidInputError,
  LimitError,
  NotFoundError,
  OutOfRangeError,
  PermissionError,
  SupersededError,
  UnauthenticatedError,
  UnavailableError,
  UnimplementedError,
  withoutStack,
} from "./errors.js";
import { createLogger } from "./log.js";
import { Refusals } from "./refusals.js";

/** Each domain error class with the kind it must carry and the wire code a client must see. */
const EXPECTED: [new (message: string) => DomainError, ErrorKind, Code][] = [
  [InvalidInputError, "invalid_input", Code.InvalidArgument],
  [OutOfRangeError, "out_of_range", Code.OutOfRange],
  [NotFoundError, "not_found", Code.NotFound],
  [AlreadyExistsError, "already_exists", Code.AlreadyExists],
  [ConflictError, "conflict", Code.FailedPrecondition],
  [PermissionError, "permission_denied", Code.PermissionDenied],
  [UnauthenticatedError, "unauthenticated", Code.Unauthenticated],
  [LimitError, "limit", Code.ResourceExhausted],
  [UnavailableError, "unavailable", Code.Unavailable],
  [SupersededError, "superseded", Code.Aborted],
  [DeadlineError, "deadline", Code.DeadlineExceeded],
  [UnimplementedError, "unimplemented", Code.Unimplemented],
];

/** An AccountService whose LookupUsers throws `thrown`, behind the real boundary, and a client for it. */
function serving(thrown: () => unknown, refusals?: Refusals) {
  const log = createLogger({ level: "silent" });
  const transport = createRouterTransport(
    (router) =>
      router.service(AccountService, {
        lookupUsers() {
          throw thrown();
        },
      }),
    { router: { interceptors: [errorBoundary(log, refusals)] } },
  );
  return createClient(AccountService, transport);
}

async function failure(thrown: () => unknown, refusals?: Refusals): Promise<ConnectError> {
  try {
    await serving(thrown, refusals).lookupUsers({});
  } catch (err) {
    return ConnectError.from(err);
  }
  assert.fail("the call succeeded");
}

describe("the error boundary's code table", () => {
  it("covers every kind, and every class carries its kind", () => {
    assert.deepEqual(
      EXPECTED.map(([, kind]) => kind).sort(),
      (Object.keys(CODE_OF_KIND) as ErrorKind[]).sort(),
      "one row per kind, no kind without a class",
    );
    for (const [Class, kind] of EXPECTED) assert.equal(new Class("m").kind, kind, Class.name);
  });

  for (const [Class, kind, code] of EXPECTED) {
    it(`${Class.name} reaches the client as ${Code[code]} with its message`, async () => {
      const err = await failure(() => new Class(`refused: ${kind}`));
      assert.equal(err.code, code);
      assert.equal(err.rawMessage, `refused: ${kind}`);
    });
  }

  it("sends a limit's retry hint as the retry-after-ms trailer, rounded up, and nothing of its cause", async () => {
    const err = await failure(
      () => new LimitError("too many", { retryAfterMs: 1234.2, cause: new Error("secret detail") }),
    );
    assert.equal(err.code, Code.ResourceExhausted);
    assert.equal(err.metadata.get(RETRY_AFTER_HEADER), "1235");
    assert.doesNotMatch(err.message, /secret detail/);
  });

  it("sends a domain error's details with it, for clients that act on them", async () => {
    const mismatch = create(DeviceMismatchSchema, { extra: [{ deviceId: "dv_x" }] });
    const err = await failure(
      () =>
        new ConflictError("re-address the send", {
          details: [{ desc: DeviceMismatchSchema, value: mismatch }],
        }),
    );
    assert.equal(err.code, Code.FailedPrecondition);
    assert.deepEqual(
      err.findDetails(DeviceMismatchSchema).map((m) => m.extra.map((d) => d.deviceId)),
      [["dv_x"]],
    );
  });

  it("turns anything else into a bare INTERNAL that leaks nothing", async () => {
    const err = await failure(() => new TypeError("cannot read /srv/data/private.key"));
    assert.equal(err.code, Code.Internal);
    assert.equal(err.rawMessage, "internal error");
  });

  it("counts a domain refusal from outside by its wire code", async () => {
    const refusals = new Refusals(createLogger({ level: "silent" }));
    await failure(() => new PermissionError("not a member of this conversation"), refusals);
    await failure(() => new UnavailableError("store down"), refusals);
    assert.equal(refusals.counts.get("permission_denied"), 1);
    assert.equal(refusals.counts.get("unavailable"), undefined, "unavailable is a failure, not a refusal");
  });
});

describe("errors built without a stack", () => {
  /** The frames of a stack: its lines after the first ("Name: message"). */
  const frames = (err: Error) => (err.stack ?? "").split("\n").slice(1);

  it("capture no frames and keep their class, message and retry hint", () => {
    const before = Error.stackTraceLimit;
    const err = withoutStack(
      () => new UnavailableError("server overloaded; retry later", { retryAfterMs: 250 }),
    );
    assert.ok(err instanceof UnavailableError);
    assert.equal(err.message, "server overloaded; retry later");
    assert.equal(err.retryAfterMs, 250);
    assert.deepEqual(frames(err), []);
    assert.equal(Error.stackTraceLimit, before, "the limit is put back");
    assert.ok(frames(new UnavailableError("other errors")).length > 0, "other errors keep their stacks");
  });

  it("put the limit back when building the error throws", () => {
    const before = Error.stackTraceLimit;
    assert.throws(
      () =>
        withoutStack(() => {
          throw new RangeError("built badly");
        }),
      RangeError,
    );
    assert.equal(Error.stackTraceLimit, before);
  });

  it("include the wire errors the boundary makes, which keep their code, message and hint", () => {
    const err = toConnectError(new LimitError("too many sends in flight", { retryAfterMs: 50 }));
    assert.equal(err.code, Code.ResourceExhausted);
    assert.equal(err.rawMessage, "too many sends in flight");
    assert.equal(err.metadata.get(RETRY_AFTER_HEADER), "50");
    assert.deepEqual(frames(err), []);
  });
});
