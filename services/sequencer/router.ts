import { create } from "@bufbuild/protobuf";
import { type CallOptions, type Client, Code, ConnectError } from "@connectrpc/connect";
import {
  AppendResponseSchema,
  type AppendResult,
  AppendResultSchema,
  type ConversationSync,
  FindContactsResponseSchema,
  GetSyncStateResponseSchema,
  ListConversationsResponseSchema,
  RecordDeviceLinkResponseSchema,
  type SequencerService,
  UpdateCursorsResponseSchema,
} from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import { isTransportFailure } from "../common/boundary.js";
import { directConversationId } from "../common/ids.js";
import { shardOf } from "../common/shard.js";

/** A typed client of the sequencer service, as the gateway and fanout use it. */
export type SequencerClient = Client<typeof SequencerService>;

/**
 * The shard map: logical shard s belongs to replica s mod R. Replicas are StatefulSet ordinals,
 * so the map follows from the replica count alone and every process derives the same one.
 */
export function shardsOfReplica(ordinal: number, replicas: number, shardCount: number): number[] {
  if (!Number.isInteger(replicas) || replicas < 1) throw new Error("replicas must be at least 1");
  if (!Number.isInteger(ordinal) || ordinal < 0 || ordinal >= replicas) {
    throw new Error(`replica ordinal ${ordinal} is outside 0..${replicas - 1}`);
  }
  if (replicas > shardCount) {
    throw new Error(`${replicas} replicas for ${shardCount} shards would leave replicas without a shard`);
  }
  const owned: number[] = [];
  for (let s = ordinal; s < shardCount; s += replicas) owned.push(s);
  return owned;
}

/** The replica that owns a conversation under the map above. */
export function replicaOf(conversationId: string, replicas: number, shardCount: number): number {
  return shardOf(conversationId, shardCount) % replicas;
}

/** Groups items by the replica that owns each, remembering their positions. */
function partition<T>(
  items: readonly T[],
  owner: (item: T) => number,
): Map<number, { items: T[]; positions: number[] }> {
  const groups = new Map<number, { items: T[]; positions: number[] }>();
  items.forEach((item, position) => {
    const replica = owner(item);
    let group = groups.get(replica);
    if (group === undefined) {
      group = { items: [], positions: [] };
      groups.set(replica, group);
    }
    group.items.push(item);
    group.positions.push(position);
  });
  return groups;
}

/**
 * A sequencer client that routes every call to the replica owning the conversation's shard.
 * Calls naming one conversation go to its owner; batches (Append, UpdateCursors) are split by
 * owner and sent in parallel; user-level reads (sync state, listings, contacts) go to every
 * replica, each answering for its own shards, and are merged. With one replica it is a plain
 * client, which is what the one-process server uses.
 *
 * Routing is deterministic and there is no forwarding: a replica asked about a shard it does not
 * own answers FailedPrecondition, so a wrong map shows up as errors instead of double writes.
 */
export function shardedSequencerClient(
  replicas: readonly SequencerClient[],
  shardCount: number,
): SequencerClient {
  if (replicas.length === 0) throw new Error("at least one sequencer replica is needed");
  if (replicas.length === 1) return replicas[0]!;
  const count = replicas.length;
  const owner = (conversationId: string): SequencerClient => {
    if (conversationId === "") {
      // Any replica gives the same precise InvalidArgument for a missing id.
      return replicas[0]!;
    }
    return replicas[replicaOf(conversationId, count, shardCount)]!;
  };
  let nextCreate = 0;

  return {
    async append(request, options?: CallOptions) {
      const items = request.items ?? [];
      const groups = partition(items, (item) =>
        replicaOf(item.entry?.conversationId ?? "", count, shardCount),
      );
      const results: AppendResult[] = new Array(items.length);
      await Promise.all(
        [...groups].map(async ([replica, group]) => {
          let answered: AppendResult[];
          try {
            answered = (await replicas[replica]!.append({ items: group.items }, options)).results;
          } catch (err) {
            // One replica failing fails only its own items; the others' commits stand.
            const error = ConnectError.from(err);
            // A replica that died or timed out mid-call may have committed some of these: the
            // device must retry them with the same ids (UNAVAILABLE), never take them as refused,
            // which is what the ABORTED or CANCELED of a reset connection would tell it.
            const retry = error.code === Code.DeadlineExceeded || isTransportFailure(error);
            answered = group.items.map(() =>
              create(AppendResultSchema, {
                errorCode: retry ? Code.Unavailable : error.code,
                errorMessage: retry
                  ? `sequencer replica ${replica} unavailable: ${error.rawMessage}`
                  : error.rawMessage,
              }),
            );
          }
          if (answered.length !== group.items.length) {
            // A replica breaking the protocol: INTERNAL with what was wrong. No domain error
            // means INTERNAL (the boundary sends those as a bare "internal error"), so this one
            // stays a ConnectError, which the boundary relays as it is.
            throw new ConnectError(
              `sequencer replica ${replica} answered ${answered.length} results for ${group.items.length} items`,
              Code.Internal,
            );
          }
          group.positions.forEach((position, i) => {
            results[position] = answered[i]!;
          });
        }),
      );
      return create(AppendResponseSchema, { results });
    },

    openDirect(request, options?: CallOptions) {
      return owner(directConversationId(request.userId ?? "", request.peerUserId ?? "")).openDirect(
        request,
        options,
      );
    },

    createGroup(request, options?: CallOptions) {
      // The receiving replica picks a group id in its own shards; spread creations over all.
      const replica = replicas[nextCreate++ % count]!;
      return replica.createGroup(request, options);
    },

    changeMembership(request, options?: CallOptions) {
      return owner(request.conversationId ?? "").changeMembership(request, options);
    },

    getHistory(request, options?: CallOptions) {
      return owner(request.conversationId ?? "").getHistory(request, options);
    },

    async updateCursors(request, options?: CallOptions) {
      const groups = partition(request.updates ?? [], (u) =>
        replicaOf(u.conversationId ?? "", count, shardCount),
      );
      await Promise.all(
        [...groups].map(([replica, group]) =>
          replicas[replica]!.updateCursors({ updates: group.items }, options),
        ),
      );
      return create(UpdateCursorsResponseSchema, {});
    },

    async getSyncState(request, options?: CallOptions) {
      // A replica that does not answer must not hide the conversations of those that do: a
      // reconnecting device gets those now and the rest when the replica is back. Any other
      // failure (a refusal) fails the whole call.
      const settled = await Promise.allSettled(replicas.map((r) => r.getSyncState(request, options)));
      const conversations: ConversationSync[] = [];
      const unansweredReplicas: number[] = [];
      for (const [replica, s] of settled.entries()) {
        if (s.status === "fulfilled") {
          conversations.push(...s.value.conversations);
          continue;
        }
        const error = ConnectError.from(s.reason);
        const down =
          error.code === Code.Unavailable ||
          error.code === Code.DeadlineExceeded ||
          isTransportFailure(error);
        if (!down) throw error;
        unansweredReplicas.push(replica);
      }
      if (unansweredReplicas.length === replicas.length) {
        const first = ConnectError.from((settled[0] as PromiseRejectedResult).reason);
        throw new ConnectError(`no sequencer replica answered: ${first.rawMessage}`, Code.Unavailable);
      }
      return create(GetSyncStateResponseSchema, { conversations, unansweredReplicas });
    },

    async listConversations(request, options?: CallOptions) {
      const answers = await Promise.all(replicas.map((r) => r.listConversations(request, options)));
      const conversations = answers
        .flatMap((a) => a.conversations)
        .sort((a, b) => Number(b.lastActiveMs - a.lastActiveMs));
      return create(ListConversationsResponseSchema, { conversations });
    },

    getConversation(request, options?: CallOptions) {
      return owner(request.conversationId ?? "").getConversation(request, options);
    },

    getMembers(request, options?: CallOptions) {
      return owner(request.conversationId ?? "").getMembers(request, options);
    },

    setMute(request, options?: CallOptions) {
      return owner(request.conversationId ?? "").setMute(request, options);
    },

    relayTyping(request, options?: CallOptions) {
      return owner(request.conversationId ?? "").relayTyping(request, options);
    },

    async recordDeviceLink(request, options?: CallOptions) {
      // Every replica records it for its own shards; the link fails unless all of them did.
      const answers = await Promise.all(replicas.map((r) => r.recordDeviceLink(request, options)));
      const conversations = answers.reduce((n, a) => n + a.conversations, 0);
      return create(RecordDeviceLinkResponseSchema, { conversations });
    },

    async findContacts(request, options?: CallOptions) {
      const answers = await Promise.all(replicas.map((r) => r.findContacts(request, options)));
      const found = new Set(answers.flatMap((a) => a.contactUserIds));
      // Keep the caller's order, as a single replica does.
      const contactUserIds = (request.peerUserIds ?? []).filter((id) => found.has(id));
      return create(FindContactsResponseSchema, { contactUserIds });
    },
  };
}
