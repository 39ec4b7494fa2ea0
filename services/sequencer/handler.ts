import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  AppendResultSchema,
  ConversationSyncSchema,
  MemberMuteSchema,
  type SequencerService,
} from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { InvalidInputError } from "../common/errors.js";
import { seqNumber } from "../common/validate.js";
import { mismatchOf } from "./device-payloads.js";
import type { Sequencer } from "./sequencer.js";

/** The sequencer's RPC face. Callers are trusted services that already authenticated the user. */
export function sequencerService(sequencer: Sequencer): ServiceImpl<typeof SequencerService> {
  return {
    async append(req) {
      const results = await sequencer.append(req.items);
      return {
        results: results.map((r) =>
          "seq" in r
            ? create(AppendResultSchema, {
                seq: BigInt(r.seq),
                serverTimeMs: BigInt(r.serverTimeMs),
                expiresAtMs: BigInt(r.expiresAtMs ?? 0),
              })
            : create(AppendResultSchema, {
                errorCode: r.code,
                errorMessage: r.rawMessage,
                // A group send refused because its members changed: the devices to drop.
                mismatch: mismatchOf(r),
              }),
        ),
      };
    },
    async openDirect(req) {
      return { conversation: await sequencer.openDirect(req.userId, req.peerUserId, req.deviceId) };
    },
    async createGroup(req) {
      return {
        conversation: await sequencer.createGroup(req.userId, req.deviceId, req.title, req.memberUserIds),
      };
    },
    async changeMembership(req) {
      const entry = await sequencer.changeMembership(
        { userId: req.actorUserId, deviceId: req.actorDeviceId },
        req.conversationId,
        req.action,
        req.userIds,
        req.title,
      );
      return entry === undefined ? {} : { entry };
    },
    async setDisappearingTimer(req) {
      const entry = await sequencer.setDisappearingTimer(
        { userId: req.actorUserId, deviceId: req.actorDeviceId },
        req.conversationId,
        req.durationSeconds,
        req.adminsOnly,
      );
      return entry === undefined ? {} : { entry };
    },
    async getHistory(req) {
      // The device decides where the log starts for it (a device linked later reads less).
      if (req.deviceId === "") throw new InvalidInputError("device_id: required");
      const page = await sequencer.getHistory(
        req.userId,
        req.conversationId,
        seqNumber("after_seq", req.afterSeq),
        req.limit,
        req.maxBytes,
        req.deviceId,
      );
      return { entries: page.entries, lastSeq: BigInt(page.lastSeq), hasMore: page.hasMore };
    },
    async updateCursors(req) {
      await sequencer.updateCursors(req.updates);
      return {};
    },
    async getSyncState(req) {
      const held = sequencer.heldShards();
      const rows = await sequencer.getSyncState(req.userId, req.deviceId, held);
      return { conversations: rows.map((r) => create(ConversationSyncSchema, r)), shards: [...held] };
    },
    async listConversations(req) {
      const held = sequencer.heldShards();
      return {
        conversations: await sequencer.listConversations(req.userId, req.deviceId, held),
        shards: [...held],
      };
    },
    async getConversation(req) {
      return sequencer.getConversation(req.userId, req.deviceId, req.conversationId);
    },
    async getMembers(req) {
      const m = await sequencer.getMembers(req.conversationId);
      return {
        userIds: m.userIds,
        membersVersion: BigInt(m.membersVersion),
        mutesVersion: BigInt(m.mutesVersion),
        disappearingSeconds: m.disappearingSeconds,
        mutes: m.mutes.map((x) =>
          create(MemberMuteSchema, { userId: x.userId, mutedUntilMs: BigInt(x.mutedUntilMs) }),
        ),
      };
    },
    async setMute(req) {
      if (req.mutedUntilMs > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw new InvalidInputError("muted_until_ms: out of range");
      }
      await sequencer.setMute(req.userId, req.conversationId, Number(req.mutedUntilMs));
      return {};
    },
    async relayTyping(req) {
      await sequencer.relayTyping(req.userId, req.deviceId, req.conversationId, req.active);
      return {};
    },
    async recordDeviceLink(req) {
      if (req.userId === "" || req.deviceId === "")
        throw new InvalidInputError("user_id and device_id: required");
      const held = sequencer.heldShards();
      return {
        conversations: await sequencer.recordDeviceLink(req.userId, req.deviceId, held),
        shards: [...held],
      };
    },
    async getRetentionHorizon(req) {
      if (req.conversationId === "") throw new InvalidInputError("conversation_id: required");
      return { horizonMs: BigInt(await sequencer.retentionHorizon(req.conversationId)) };
    },
    async findContacts(req) {
      const held = sequencer.heldShards();
      const { contacts, direct } = await sequencer.findContacts(req.userId, req.peerUserIds, held);
      return { contactUserIds: contacts, directContactUserIds: direct, shards: [...held] };
    },
  };
}
