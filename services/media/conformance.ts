import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { GetMembersResponseSchema } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { MediaService } from "../../gen/switchboard/v1/media_pb.js";
import { errorBoundary } from "../common/boundary.js";
import { createLogger } from "../common/log.js";
import { claimMarker } from "./claims.js";
import { mediaService } from "./handler.js";
import { DEFAULT_MEDIA_LIMITS, Media, type MembershipSource } from "./media.js";
import { pendingMarkerBody } from "./pending.js";
import { AttachmentRetention } from "./retention.js";
import { newObjectId, type ObjectRecord, type ObjectStore } from "./types.js";

/** A settable clock shared by the engine under test and the service. */
export class TestClock {
  constructor(public ms = Date.now()) {}
  readonly now = (): number => this.ms;
  advance(ms: number): void {
    this.ms += ms;
  }
}

/** An engine under test. */
export interface OpenedObjectStore {
  store: ObjectStore;
  /**
   * True when the upload URL itself refuses a body of the wrong length (the local engine). The
   * S3 engine cannot; the service catches it at claim or download instead.
   */
  refusesWrongLengthOnUpload: boolean;
  /**
   * The clock the engine's URLs are checked against, in milliseconds since the epoch: the test
   * clock (the default) when the engine serves its URLs itself with the service's clock; the real
   * one for a real S3 server, which refuses a URL signed at a time it has not reached yet.
   */
  urlClock?: () => number;
  /** Removes only the object's bytes, as a delete in progress or cut short leaves it. */
  removeBytes(objectId: string): Promise<void>;
  /**
   * Writes one of putRecord's steps past the store, as a putRecord in progress (or cut short)
   * leaves it: "marker" the marker it writes before the record (pending for an unclaimed record,
   * its claim marker for a claimed one), "record" the record itself.
   */
  writeStep(step: "marker" | "record", record: ObjectRecord): Promise<void>;
  close(): Promise<void>;
}

/**
 * Where one of putRecord's steps writes and what, alike in both engines (a key in the bucket, a
 * path under the local engine's directory): for writeStep, which writes it past the store.
 */
export function putRecordStep(
  step: "marker" | "record",
  record: ObjectRecord,
): { key: string; body: string } {
  if (step === "record") return { key: `records/${record.objectId}.json`, body: JSON.stringify(record) };
  const claim = claimMarker(record);
  if (claim !== undefined) return { key: `claims/${record.conversationId}/${claim}`, body: "" };
  return { key: `pending/${record.objectId}`, body: pendingMarkerBody(record) };
}

const ALICE = "u_aaaaaaaaaaaaaaaaaaaaaaaaaa";
const BOB = "u_bbbbbbbbbbbbbbbbbbbbbbbbbb";
const MALLORY = "u_mmmmmmmmmmmmmmmmmmmmmmmmmm";
const CONVERSATION = "g_cccccccccccccccccccccccccc";
const OTHER = "g_dddddddddddddddddddddddddd";
const TIMED = "g_eeeeeeeeeeeeeeeeeeeeeeeeee";
/** The disappearing-message timer of TIMED, in seconds (a day). */
const TIMER_SECONDS = 86_400;

/** A sequencer stand-in: members per conversation; unknown conversations are NOT_FOUND. */
export function fakeMembers(
  members: Record<string, string[]>,
  /** Conversations' disappearing-message timers, in seconds (none: off). */
  timers: Record<string, number> = {},
): MembershipSource {
  return {
    async getMembers(req) {
      const userIds = members[req.conversationId ?? ""];
      if (userIds === undefined) throw new ConnectError("conversation not found", Code.NotFound);
      return create(GetMembersResponseSchema, {
        userIds,
        disappearingSeconds: timers[req.conversationId ?? ""] ?? 0,
      });
    },
  };
}

/**
 * The media service over Connect's in-memory transport, behind the error boundary as in a server
 * (which turns the service's domain errors into codes); "Bearer <user id>" authenticates.
 */
export function mediaClient(media: Media): Client<typeof MediaService> {
  const boundary = errorBoundary(createLogger({ level: "silent" }));
  const transport = createRouterTransport(
    (router) => {
      router.service(
        MediaService,
        mediaService(media, async (header) => {
          const userId = header?.replace(/^Bearer /, "") ?? "";
          if (!userId.startsWith("u_")) throw new ConnectError("missing authorization", Code.Unauthenticated);
          return { userId, deviceId: "dv_x", expiresAtMs: Date.now() + 60_000 };
        }),
      );
    },
    { router: { interceptors: [boundary] } },
  );
  return createClient(MediaService, transport);
}

/** Call options acting as a user. */
export function as(userId: string) {
  return { headers: { authorization: `Bearer ${userId}` } };
}

/** Asserts a promise fails with a ConnectError of this code whose message matches. */
export async function rejectsWith(p: Promise<unknown>, code: Code, message?: RegExp): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    const e = ConnectError.from(err);
    assert.equal(Code[e.code], Code[code], e.message);
    if (message) assert.match(e.rawMessage, message);
    return e;
  }
  assert.fail(`expected ${Code[code]}`);
}

/**
 * The behaviour every ObjectStore engine shares, exercised through the service and its RPCs,
 * with uploads and downloads over real HTTP to the presigned URLs.
 */
export function runMediaConformance(
  name: string,
  open: (clock: TestClock) => Promise<OpenedObjectStore>,
  /** skip: why the engine cannot run here (its server is missing), or false. */
  options: { skip?: string | false } = {},
): void {
  describe(`media conformance: ${name}`, { skip: options.skip ?? false }, () => {
    async function withMedia(
      fn: (ctx: {
        media: Media;
        client: Client<typeof MediaService>;
        clock: TestClock;
        opened: OpenedObjectStore;
      }) => Promise<void>,
    ): Promise<void> {
      const clock = new TestClock();
      const opened = await open(clock);
      const members = fakeMembers(
        { [CONVERSATION]: [ALICE, BOB], [OTHER]: [MALLORY], [TIMED]: [ALICE, BOB] },
        { [TIMED]: TIMER_SECONDS },
      );
      const media = new Media(
        opened.store,
        members,
        createLogger({ level: "silent" }),
        { ...DEFAULT_MEDIA_LIMITS, maxBytes: 1024 * 1024 },
        clock.now,
      );
      try {
        await fn({ media, client: mediaClient(media), clock, opened });
      } finally {
        await media.close();
        await opened.close();
      }
    }

    test("upload and download round trip of random bytes over HTTP", async () => {
      await withMedia(async ({ client }) => {
        const bytes = randomBytes(70_000);
        const up = await client.createUpload(
          { conversationId: CONVERSATION, lengthBytes: BigInt(bytes.length) },
          as(ALICE),
        );
        assert.match(up.objectId, /^m_[0-9a-z]{26}$/);
        assert.ok(up.expiresAtMs > 0n && up.claimByMs > up.expiresAtMs);
        const put = await fetch(up.uploadUrl, { method: "PUT", body: bytes });
        assert.equal(put.status, 200, await put.text());
        const claimed = await client.claimUpload(
          { objectId: up.objectId, conversationId: CONVERSATION },
          as(ALICE),
        );
        assert.equal(claimed.lengthBytes, BigInt(bytes.length));
        // Claiming again is a no-op.
        await client.claimUpload({ objectId: up.objectId, conversationId: CONVERSATION }, as(BOB));
        const down = await client.createDownload(
          { objectId: up.objectId, conversationId: CONVERSATION },
          as(BOB),
        );
        assert.equal(down.lengthBytes, BigInt(bytes.length));
        const got = await fetch(down.downloadUrl);
        assert.equal(got.status, 200);
        assert.deepEqual(Buffer.from(await got.arrayBuffer()), bytes);
      });
    });

    test("a claimed object whose bytes are going is not found, not waiting for its upload", async () => {
      await withMedia(async ({ client, opened }) => {
        const up = await client.createUpload({ conversationId: CONVERSATION, lengthBytes: 16n }, as(ALICE));
        assert.equal((await fetch(up.uploadUrl, { method: "PUT", body: randomBytes(16) })).status, 200);
        await client.claimUpload({ objectId: up.objectId, conversationId: CONVERSATION }, as(ALICE));
        // A delete removes the bytes first and the record last; a download in between (or after
        // a delete cut short, before the sweep finishes it) must hear that the object is gone.
        await opened.removeBytes(up.objectId);
        const ref = { objectId: up.objectId, conversationId: CONVERSATION };
        await rejectsWith(client.createDownload(ref, as(BOB)), Code.NotFound, /is no longer stored/);
        await rejectsWith(client.claimUpload(ref, as(BOB)), Code.NotFound, /is no longer stored/);
      });
    });

    test("the first download claims the object", async () => {
      await withMedia(async ({ media, client, clock }) => {
        const bytes = randomBytes(100);
        const up = await client.createUpload({ conversationId: CONVERSATION, lengthBytes: 100n }, as(ALICE));
        assert.equal((await fetch(up.uploadUrl, { method: "PUT", body: bytes })).status, 200);
        await client.createDownload({ objectId: up.objectId, conversationId: CONVERSATION }, as(BOB));
        assert.ok(((await media.store.getRecord(up.objectId))?.claimedAtMs ?? 0) > 0);
        clock.advance(DEFAULT_MEDIA_LIMITS.unclaimedTtlMs + 1);
        assert.equal(await media.sweep(), 0);
        assert.deepEqual(await media.store.stat(up.objectId), { lengthBytes: 100 });
      });
    });

    for (const [label, delta] of [
      ["too long", 1],
      ["too short", -1],
    ] as const) {
      test(`an upload ${label} is refused and nothing is kept`, async () => {
        await withMedia(async ({ media, client, opened }) => {
          const up = await client.createUpload(
            { conversationId: CONVERSATION, lengthBytes: 1000n },
            as(ALICE),
          );
          const put = await fetch(up.uploadUrl, { method: "PUT", body: randomBytes(1000 + delta) });
          await put.arrayBuffer();
          if (opened.refusesWrongLengthOnUpload) {
            assert.equal(put.status, delta > 0 ? 413 : 400);
            assert.equal(await media.store.stat(up.objectId), undefined);
          }
          await rejectsWith(
            client.claimUpload({ objectId: up.objectId, conversationId: CONVERSATION }, as(ALICE)),
            Code.FailedPrecondition,
            opened.refusesWrongLengthOnUpload ? /not been uploaded/ : /instead of the declared 1000/,
          );
          assert.equal(await media.store.stat(up.objectId), undefined);
          await rejectsWith(
            client.createDownload({ objectId: up.objectId, conversationId: CONVERSATION }, as(BOB)),
            opened.refusesWrongLengthOnUpload ? Code.FailedPrecondition : Code.NotFound,
          );
        });
      });
    }

    test("a non-member gets neither an upload nor a download URL", async () => {
      await withMedia(async ({ client }) => {
        await rejectsWith(
          client.createUpload({ conversationId: CONVERSATION, lengthBytes: 10n }, as(MALLORY)),
          Code.PermissionDenied,
          /not a member/,
        );
        // An unknown conversation looks the same as one the caller is not in.
        await rejectsWith(
          client.createUpload(
            { conversationId: "g_zzzzzzzzzzzzzzzzzzzzzzzzzz", lengthBytes: 10n },
            as(ALICE),
          ),
          Code.PermissionDenied,
        );
        const up = await client.createUpload({ conversationId: CONVERSATION, lengthBytes: 10n }, as(ALICE));
        assert.equal((await fetch(up.uploadUrl, { method: "PUT", body: randomBytes(10) })).status, 200);
        await rejectsWith(
          client.createDownload({ objectId: up.objectId, conversationId: CONVERSATION }, as(MALLORY)),
          Code.PermissionDenied,
        );
        await rejectsWith(
          client.claimUpload({ objectId: up.objectId, conversationId: CONVERSATION }, as(MALLORY)),
          Code.PermissionDenied,
        );
        // Naming a conversation one is in does not reach an object bound to another.
        await rejectsWith(
          client.createDownload({ objectId: up.objectId, conversationId: OTHER }, as(MALLORY)),
          Code.NotFound,
        );
      });
    });

    test("an expired upload or download URL is refused by whoever serves it, and stores nothing", async () => {
      await withMedia(async ({ media, client, clock }) => {
        // URLs handed out by a service whose clock read longer ago than their lifetimes.
        const back =
          (DEFAULT_MEDIA_LIMITS.uploadUrlTtlSeconds + DEFAULT_MEDIA_LIMITS.downloadUrlTtlSeconds) * 1000;
        clock.advance(-back - 60_000);
        const stale = await client.createUpload(
          { conversationId: CONVERSATION, lengthBytes: 10n },
          as(ALICE),
        );
        clock.advance(back + 60_000);
        const refused = await fetch(stale.uploadUrl, { method: "PUT", body: randomBytes(10) });
        await refused.arrayBuffer();
        assert.equal(refused.status, 403);
        assert.equal(await media.store.stat(stale.objectId), undefined);

        const up = await client.createUpload({ conversationId: CONVERSATION, lengthBytes: 10n }, as(ALICE));
        assert.equal((await fetch(up.uploadUrl, { method: "PUT", body: randomBytes(10) })).status, 200);
        await client.claimUpload({ objectId: up.objectId, conversationId: CONVERSATION }, as(ALICE));
        clock.advance(-back - 60_000);
        const down = await client.createDownload(
          { objectId: up.objectId, conversationId: CONVERSATION },
          as(BOB),
        );
        clock.advance(back + 60_000);
        const got = await fetch(down.downloadUrl);
        await got.arrayBuffer();
        assert.equal(got.status, 403);
      });
    });

    test("a URL altered to name another object, or used with another method, is refused", async () => {
      await withMedia(async ({ media, client }) => {
        const first = await client.createUpload(
          { conversationId: CONVERSATION, lengthBytes: 10n },
          as(ALICE),
        );
        const second = await client.createUpload(
          { conversationId: CONVERSATION, lengthBytes: 10n },
          as(ALICE),
        );
        const elsewhere = first.uploadUrl.replace(first.objectId, second.objectId);
        const refused = await fetch(elsewhere, { method: "PUT", body: randomBytes(10) });
        await refused.arrayBuffer();
        assert.equal(refused.status, 403);
        assert.equal(await media.store.stat(second.objectId), undefined);
        assert.equal((await fetch(first.uploadUrl, { method: "PUT", body: randomBytes(10) })).status, 200);
        // The upload URL does not download what it uploaded.
        const read = await fetch(first.uploadUrl);
        await read.arrayBuffer();
        assert.equal(read.status, 403);
      });
    });

    test("a download before the upload is FAILED_PRECONDITION", async () => {
      await withMedia(async ({ client }) => {
        const up = await client.createUpload({ conversationId: CONVERSATION, lengthBytes: 10n }, as(ALICE));
        await rejectsWith(
          client.createDownload({ objectId: up.objectId, conversationId: CONVERSATION }, as(BOB)),
          Code.FailedPrecondition,
          /not been uploaded/,
        );
      });
    });

    test("sizes beyond the limit, zero and malformed ids are INVALID_ARGUMENT", async () => {
      await withMedia(async ({ client }) => {
        await rejectsWith(
          client.createUpload({ conversationId: CONVERSATION, lengthBytes: 1024n * 1024n + 1n }, as(ALICE)),
          Code.InvalidArgument,
          /1048577 exceeds the maximum attachment size of 1048576 bytes \(1 MiB\)/,
        );
        await rejectsWith(
          client.createUpload({ conversationId: CONVERSATION, lengthBytes: 0n }, as(ALICE)),
          Code.InvalidArgument,
          /at least 1/,
        );
        await rejectsWith(
          client.createDownload({ objectId: "../../etc/passwd", conversationId: CONVERSATION }, as(ALICE)),
          Code.InvalidArgument,
          /object_id/,
        );
        await rejectsWith(
          client.createUpload({ conversationId: "nope", lengthBytes: 1n }, as(ALICE)),
          Code.InvalidArgument,
          /conversation_id/,
        );
        await rejectsWith(
          client.createUpload({ conversationId: CONVERSATION, lengthBytes: 1n }),
          Code.Unauthenticated,
        );
      });
    });

    test("unclaimed uploads are swept after their expiry; claimed ones stay", async () => {
      await withMedia(async ({ media, client, clock, opened }) => {
        // The records are made at the test clock's times; the bytes go up with a URL valid now
        // for whoever checks it (a real S3 server refuses one signed hours ahead of its clock).
        const upload = async () => {
          const up = await client.createUpload({ conversationId: CONVERSATION, lengthBytes: 32n }, as(ALICE));
          const now = (opened.urlClock ?? clock.now)();
          const { url } = await media.store.presignPut(up.objectId, 32, 60, now);
          assert.equal((await fetch(url, { method: "PUT", body: randomBytes(32) })).status, 200);
          return up.objectId;
        };
        const stale = await upload();
        const kept = await upload();
        await client.claimUpload({ objectId: kept, conversationId: CONVERSATION }, as(ALICE));
        // Reserved but never uploaded: swept too.
        const neverUploaded = (
          await client.createUpload({ conversationId: CONVERSATION, lengthBytes: 5n }, as(ALICE))
        ).objectId;
        clock.advance(DEFAULT_MEDIA_LIMITS.unclaimedTtlMs - 1000);
        const young = await upload();
        assert.equal(await media.sweep(), 0);
        clock.advance(2000);
        assert.equal(await media.sweep(), 2);
        assert.equal(await media.store.stat(stale), undefined);
        assert.equal(await media.store.getRecord(stale), undefined);
        assert.equal(await media.store.getRecord(neverUploaded), undefined);
        assert.deepEqual(await media.store.stat(kept), { lengthBytes: 32 });
        assert.deepEqual(await media.store.stat(young), { lengthBytes: 32 });
        await rejectsWith(
          client.createDownload({ objectId: stale, conversationId: CONVERSATION }, as(BOB)),
          Code.NotFound,
        );
        // The service still hands out the kept object, and its bytes are there.
        await client.createDownload({ objectId: kept, conversationId: CONVERSATION }, as(BOB));
        const { url } = await media.store.presignGet(kept, 32, 60, (opened.urlClock ?? clock.now)());
        assert.equal((await fetch(url)).status, 200);
        clock.advance(DEFAULT_MEDIA_LIMITS.unclaimedTtlMs);
        assert.equal(await media.sweep(), 1);
        assert.equal(await media.store.stat(young), undefined);
      });
    });

    test("a sweep keeps a pending marker whose record is being written; a crash's leftover goes after the TTL", async () => {
      await withMedia(async ({ media, clock, opened }) => {
        const ttl = DEFAULT_MEDIA_LIMITS.unclaimedTtlMs;
        const reserved = (): ObjectRecord => ({
          objectId: newObjectId(),
          conversationId: CONVERSATION,
          uploaderUserId: ALICE,
          lengthBytes: 16,
          createdAtMs: clock.now(),
          claimedAtMs: 0,
        });
        // A sweep runs between putRecord's marker and its record: the record is on its way.
        const writing = reserved();
        await opened.writeStep("marker", writing);
        assert.equal(await media.sweep(), 0);
        await opened.writeStep("record", writing);
        assert.deepEqual(await media.store.getRecord(writing.objectId), writing);
        // Its marker stayed, so the unclaimed record is swept in its time, not left for ever.
        clock.advance(ttl + 1);
        assert.equal(await media.sweep(), 1);
        assert.equal(await media.store.getRecord(writing.objectId), undefined);

        // A crash after the marker: it goes once as old as an unclaimed upload would.
        const leftover = { ...reserved(), createdAtMs: clock.now() - ttl - 1 };
        await opened.writeStep("marker", leftover);
        assert.equal(await media.sweep(), 0);
        // Had the marker stayed, a record written now would be listed.
        await opened.writeStep("record", leftover);
        assert.deepEqual(await media.store.listUnclaimed(clock.now(), 10), [], "the old marker went");
      });
    });

    test("attachment retention keeps a claim marker written ahead of its record's claim", async () => {
      await withMedia(async ({ media, client, clock, opened }) => {
        const up = await client.createUpload({ conversationId: CONVERSATION, lengthBytes: 16n }, as(ALICE));
        const reserved = await media.store.getRecord(up.objectId);
        assert.ok(reserved !== undefined);
        const claimed: ObjectRecord = { ...reserved, claimedAtMs: clock.now() };
        // Retention lists the conversation's claims between the claim's marker and its record.
        await opened.writeStep("marker", claimed);
        assert.deepEqual(await media.store.listClaimed(CONVERSATION, Number.MAX_SAFE_INTEGER, 10), []);
        await opened.writeStep("record", claimed);
        assert.deepEqual(
          (await media.store.listClaimed(CONVERSATION, Number.MAX_SAFE_INTEGER, 10)).map((r) => r.objectId),
          [claimed.objectId],
          "its marker stayed, so retention still finds the claimed object",
        );
      });
    });

    test("an attachment claimed under a disappearing timer is deleted when the timer has run; others stay", async () => {
      await withMedia(async ({ media, client, clock, opened }) => {
        const upload = async (conversationId: string) => {
          const up = await client.createUpload({ conversationId, lengthBytes: 16n }, as(ALICE));
          const { url } = await media.store.presignPut(up.objectId, 16, 60, (opened.urlClock ?? clock.now)());
          assert.equal((await fetch(url, { method: "PUT", body: randomBytes(16) })).status, 200);
          await client.claimUpload({ objectId: up.objectId, conversationId }, as(ALICE));
          return up.objectId;
        };
        const timed = await upload(TIMED);
        const plain = await upload(CONVERSATION);
        const record = await media.store.getRecord(timed);
        assert.equal(record?.expiresAtMs, record!.claimedAtMs + TIMER_SECONDS * 1000);
        assert.equal((await media.store.getRecord(plain))?.expiresAtMs, undefined);
        clock.advance(TIMER_SECONDS * 1000 - 1000);
        assert.equal(await media.sweep(), 0);
        clock.advance(2000);
        assert.equal(await media.sweep(), 1);
        assert.equal(await media.store.stat(timed), undefined);
        assert.equal(await media.store.getRecord(timed), undefined);
        assert.deepEqual(await media.store.stat(plain), { lengthBytes: 16 });
        await rejectsWith(
          client.createDownload({ objectId: timed, conversationId: TIMED }, as(BOB)),
          Code.NotFound,
        );
      });
    });

    test("DeleteAttachments deletes the caller's own objects of the conversation, all checked first", async () => {
      await withMedia(async ({ media, client, clock, opened }) => {
        const upload = async (userId: string, conversationId: string, claim: boolean) => {
          const up = await client.createUpload({ conversationId, lengthBytes: 16n }, as(userId));
          const { url } = await media.store.presignPut(up.objectId, 16, 60, (opened.urlClock ?? clock.now)());
          assert.equal((await fetch(url, { method: "PUT", body: randomBytes(16) })).status, 200);
          if (claim) await client.claimUpload({ objectId: up.objectId, conversationId }, as(userId));
          return up.objectId;
        };
        const claimed = await upload(ALICE, CONVERSATION, true);
        const unclaimed = await upload(ALICE, CONVERSATION, false);
        const bobs = await upload(BOB, CONVERSATION, true);
        const elsewhere = await upload(ALICE, TIMED, true);
        const del = (userId: string, objectIds: string[], conversationId = CONVERSATION) =>
          client.deleteAttachments({ conversationId, objectIds }, as(userId));
        // Refused as a whole: nothing goes when one of them may not.
        await rejectsWith(del(ALICE, [claimed, bobs]), Code.PermissionDenied, /only its uploader/);
        await rejectsWith(del(ALICE, [claimed, elsewhere]), Code.NotFound);
        await rejectsWith(del(MALLORY, [claimed]), Code.PermissionDenied);
        await rejectsWith(del(ALICE, []), Code.InvalidArgument);
        await rejectsWith(del(ALICE, [claimed, claimed]), Code.InvalidArgument, /duplicates/);
        await rejectsWith(del(ALICE, ["m_../x"]), Code.InvalidArgument);
        const many = Array.from({ length: 33 }, () => newObjectId());
        await rejectsWith(del(ALICE, many), Code.InvalidArgument, /between 1 and 32/);
        for (const id of [claimed, unclaimed, bobs, elsewhere]) {
          assert.deepEqual(await media.store.stat(id), { lengthBytes: 16 }, "nothing went");
        }
        const r = await del(ALICE, [claimed, unclaimed]);
        assert.deepEqual([...r.deletedObjectIds].sort(), [claimed, unclaimed].sort());
        for (const id of [claimed, unclaimed]) {
          assert.equal(await media.store.stat(id), undefined);
          assert.equal(await media.store.getRecord(id), undefined);
        }
        await rejectsWith(
          client.createDownload({ objectId: claimed, conversationId: CONVERSATION }, as(BOB)),
          Code.NotFound,
        );
        assert.deepEqual(
          (await media.store.listClaimed(CONVERSATION, Number.MAX_SAFE_INTEGER, 10)).map((x) => x.objectId),
          [bobs],
          "its claim marker went with it",
        );
        // A retry (the first answer lost) succeeds and deletes nothing more.
        assert.deepEqual((await del(ALICE, [claimed, unclaimed])).deletedObjectIds, []);
        assert.deepEqual(await media.store.stat(bobs), { lengthBytes: 16 });
        assert.deepEqual(await media.store.stat(elsewhere), { lengthBytes: 16 });
      });
    });

    test("claimed objects are listed under their conversation, earliest claim first, until deleted", async () => {
      await withMedia(async ({ media }) => {
        const { store } = media;
        // Conversations of this test only: a shared bucket may hold others'.
        const [c1, c2] = [`g_${newObjectId().slice(2)}`, `g_${newObjectId().slice(2)}`];
        const put = async (conversationId: string, claimedAtMs: number) => {
          const record = claimedRecord(conversationId, claimedAtMs);
          await store.putRecord(record);
          return record.objectId;
        };
        const late = await put(c1, 3_000);
        const early = await put(c1, 1_000);
        const middle = await put(c1, 2_000);
        const other = await put(c2, 1_500);
        // Unclaimed: never listed.
        await store.putRecord({ ...claimedRecord(c1, 0), claimedAtMs: 0 });
        const ids = (records: ObjectRecord[]) => records.map((r) => r.objectId);
        assert.deepEqual(ids(await store.listClaimed(c1, 10_000, 10)), [early, middle, late]);
        assert.deepEqual(
          ids(await store.listClaimed(c1, 3_000, 10)),
          [early, middle],
          "claimed before, strictly",
        );
        assert.deepEqual(ids(await store.listClaimed(c1, 10_000, 2)), [early, middle]);
        assert.deepEqual(ids(await store.listClaimed(c2, 10_000, 10)), [other]);
        // Walked a page of one at a time, in id order, both are there.
        const walked: string[] = [];
        for (let after: string | undefined, i = 0; i < 10_000; i++) {
          const page = await store.listClaimConversations(after, 1);
          if (page.length === 0) break;
          walked.push(...page);
          after = page[0];
        }
        assert.deepEqual(
          walked.filter((id) => id === c1 || id === c2),
          [c1, c2].sort(),
        );
        assert.deepEqual(walked, [...walked].sort(), "in id order");
        await store.delete(middle);
        assert.deepEqual(ids(await store.listClaimed(c1, 10_000, 10)), [early, late]);
      });
    });

    test("attachment retention deletes what was claimed before its conversation's horizon, less the margin", async () => {
      await withMedia(async ({ media }) => {
        const { store } = media;
        const [kept, gone] = [`g_${newObjectId().slice(2)}`, `g_${newObjectId().slice(2)}`];
        const horizons = new Map<string, number>([
          [kept, 0],
          [gone, 10_000],
        ]);
        const put = async (conversationId: string, claimedAtMs: number) => {
          const record = claimedRecord(conversationId, claimedAtMs);
          await store.putRecord(record);
          return record.objectId;
        };
        const keptOld = await put(kept, 1_000);
        const goneOld = await put(gone, 1_000);
        const goneNearHorizon = await put(gone, 9_500);
        const goneAfter = await put(gone, 12_000);
        const retention = new AttachmentRetention(
          store,
          async (id) => horizons.get(id) ?? 0,
          createLogger({ level: "silent" }),
          { marginMs: 1_000, conversationsPerSweep: 1 },
        );
        // One conversation per sweep: a store holding others' needs more sweeps to walk them all.
        for (let i = 0; i < 10_000 && (await store.getRecord(goneOld)) !== undefined; i++)
          await retention.sweep();
        assert.equal(await store.getRecord(goneOld), undefined, "claimed well before the horizon");
        assert.notEqual(await store.getRecord(goneNearHorizon), undefined, "within the margin: kept");
        assert.notEqual(await store.getRecord(goneAfter), undefined, "claimed after the horizon: kept");
        assert.notEqual(await store.getRecord(keptOld), undefined, "no horizon known: kept");
        horizons.set(gone, 20_000);
        for (let i = 0; i < 10_000 && (await store.getRecord(goneAfter)) !== undefined; i++)
          await retention.sweep();
        assert.equal(await store.getRecord(goneNearHorizon), undefined);
        assert.equal(await store.getRecord(goneAfter), undefined);
        assert.deepEqual(await store.listClaimed(gone, Number.MAX_SAFE_INTEGER, 10), []);
        assert.notEqual(await store.getRecord(keptOld), undefined);
      });
    });
  });
}

/** A record claimed at a time, in a conversation (never uploaded: the listings need no bytes). */
function claimedRecord(conversationId: string, claimedAtMs: number): ObjectRecord {
  return {
    objectId: newObjectId(),
    conversationId,
    uploaderUserId: ALICE,
    lengthBytes: 8,
    createdAtMs: 1,
    claimedAtMs,
  };
}
