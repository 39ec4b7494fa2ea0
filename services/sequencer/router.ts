import { create } from "@bufbuild/protobuf";
import { type CallOptions, type Client, Code, ConnectError } from "@connectrpc/connect";
import {
  AppendResponseSchema,
  type AppendResult,
  AppendResultSchema,
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

/** The replica that owns a conversation under the map above (its home; failover may move it). */
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

/** How the sharded client finds replicas. */
export interface ShardedClientOptions {
  /**
   * Shards move under leases (the replicas share a ScyllaDB store, services/sequencer/ownership.ts):
   * look for a shard past its home replica, in ring order. Without it every call goes to the home
   * replica, which is the only one that can serve it (LMDB).
   */
  failover?: boolean;
  /**
   * How long a replica whose connection failed is passed over, in milliseconds: calls for its
   * shards go to the next replica in ring order (where failover moves them) until then, and the
   * first call after it tries the replica again.
   */
  suspectMs?: number;
  /** The clock, in milliseconds. */
  now?: () => number;
}

/** A replica whose connection failed is passed over this long unless configured, in ms. */
const SUSPECT_MS = 2_000;

/** True when a replica's failure means it (or its shard) could not serve, not that it refused. */
function outage(error: ConnectError): boolean {
  return error.code === Code.Unavailable || error.code === Code.DeadlineExceeded || isTransportFailure(error);
}

/**
 * A sequencer client that routes every call to the replica serving the conversation's shard.
 * Calls naming one conversation go to its holder; batches (Append, UpdateCursors) are split by
 * holder and sent in parallel; user-level reads (sync state, listings, contacts, device links)
 * go to every replica, each answering for the shards it holds and naming them, and are merged.
 * With one replica it is a plain client, which is what the one-process server uses.
 *
 * Where a shard is: its home replica (the static map above), or, with `failover`, while that
 * one's connection fails, the next replica in ring order, which is where failover moves it
 * (ownership.ts). The
 * client learns nothing from the leases themselves: a replica asked about a shard it does not
 * hold answers UNAVAILABLE under leases (FAILED_PRECONDITION under the static map, where a wrong
 * map must show up as errors instead of double writes), and reads and idempotent calls then try
 * the next replica in ring order. A write whose outcome is unknown is never sent twice here: its
 * caller retries it with the same idempotency key.
 */
export function shardedSequencerClient(
  replicas: readonly SequencerClient[],
  shardCount: number,
  options: ShardedClientOptions = {},
): SequencerClient {
  if (replicas.length === 0) throw new Error("at least one sequencer replica is needed");
  if (replicas.length === 1) return replicas[0]!;
  const count = replicas.length;
  const now = options.now ?? Date.now;
  const suspectMs = options.suspectMs ?? SUSPECT_MS;
  const suspectedUntil = new Array<number>(count).fill(0);
  const homeShards = replicas.map((_, ordinal) => shardsOfReplica(ordinal, count, shardCount));

  const noteFailure = (replica: number, err: unknown): ConnectError => {
    const error = ConnectError.from(err);
    if (isTransportFailure(error)) suspectedUntil[replica] = now() + suspectMs;
    return error;
  };
  /** The replicas to try for a conversation, best first: ring order, suspected ones last. */
  const candidates = (conversationId: string): number[] => {
    // Any replica gives the same precise InvalidArgument for a missing id.
    const home = conversationId === "" ? 0 : replicaOf(conversationId, count, shardCount);
    if (!options.failover) return [home];
    const ring = Array.from({ length: count }, (_, k) => (home + k) % count);
    const at = now();
    return [...ring.filter((r) => suspectedUntil[r]! <= at), ...ring.filter((r) => suspectedUntil[r]! > at)];
  };
  const route = (conversationId: string): number => candidates(conversationId)[0]!;

  /**
   * One conversation's call: to its holder, and for an idempotent call (`retry`) on to the next
   * replica in ring order when one could not serve it (down, or not holding the shard now).
   */
  async function single<T>(
    conversationId: string,
    retry: boolean,
    call: (client: SequencerClient) => Promise<T>,
  ): Promise<T> {
    const order = candidates(conversationId);
    for (let i = 0; ; i++) {
      const replica = order[i]!;
      try {
        return await call(replicas[replica]!);
      } catch (err) {
        const error = noteFailure(replica, err);
        if (!retry || i + 1 >= order.length || !outage(error)) throw err;
      }
    }
  }

  /**
   * A user-level read of every replica. The answers name the shards they covered (a replica
   * that held none refuses UNAVAILABLE instead); returns the answers with the shards no replica
   * covered. A refusal (not an outage) fails the whole call.
   */
  async function scatter<T extends { shards: number[] }>(
    call: (client: SequencerClient) => Promise<T>,
  ): Promise<{ answers: T[]; missing: number[]; firstFailure: ConnectError | undefined }> {
    const settled = await Promise.allSettled(replicas.map((r) => call(r)));
    const answers: T[] = [];
    const covered = new Set<number>();
    let firstFailure: ConnectError | undefined;
    for (const [replica, s] of settled.entries()) {
      if (s.status === "fulfilled") {
        answers.push(s.value);
        // A replica of a version before failover names no shard: it answered for its home ones.
        for (const shard of s.value.shards.length > 0 ? s.value.shards : homeShards[replica]!)
          covered.add(shard);
        continue;
      }
      const error = noteFailure(replica, s.reason);
      if (!outage(error)) throw error;
      firstFailure ??= error;
    }
    const missing = [...Array(shardCount).keys()].filter((s) => !covered.has(s));
    return { answers, missing, firstFailure };
  }

  /** Throws UNAVAILABLE unless every shard was covered by some answer. */
  const requireAll = (missing: number[], firstFailure: ConnectError | undefined) => {
    if (missing.length === 0) return;
    throw new ConnectError(
      `no sequencer replica answered for shards ${missing.join(", ")}: ${firstFailure?.rawMessage ?? "they are moving"}`,
      Code.Unavailable,
    );
  };
  const allShards = [...Array(shardCount).keys()];
  /** Keeps the first of each key: a shard that moved during a scatter may be answered twice. */
  const unique = <T>(items: T[], key: (item: T) => string): T[] => {
    const seen = new Set<string>();
    return items.filter((item) => {
      const k = key(item);
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    });
  };
  let nextCreate = 0;

  return {
    async append(request, options?: CallOptions) {
      const items = request.items ?? [];
      const groups = partition(items, (item) => route(item.entry?.conversationId ?? ""));
      const results: AppendResult[] = new Array(items.length);
      await Promise.all(
        [...groups].map(async ([replica, group]) => {
          let answered: AppendResult[];
          try {
            answered = (await replicas[replica]!.append({ items: group.items }, options)).results;
          } catch (err) {
            // One replica failing fails only its own items; the others' commits stand.
            const error = noteFailure(replica, err);
            // A replica that died or timed out mid-call may have committed some of these: the
            // device must retry them with the same ids (UNAVAILABLE), never take them as refused,
            // which is what the ABORTED or CANCELED of a reset connection would tell it. The
            // retry goes to the next replica in ring order while this one is suspected.
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
      // Idempotent: the conversation's id is derived from the two users, and it is created once.
      const id = directConversationId(request.userId ?? "", request.peerUserId ?? "");
      return single(id, true, (r) => r.openDirect(request, options));
    },

    async createGroup(request, options?: CallOptions) {
      // The receiving replica picks a group id in its own shards; spread creations over all, and
      // past one that is down or holds no shard right now.
      const first = nextCreate++ % count;
      const at = now();
      const order = Array.from({ length: count }, (_, k) => (first + k) % count).sort(
        (a, b) => Number(suspectedUntil[a]! > at) - Number(suspectedUntil[b]! > at),
      );
      for (let i = 0; ; i++) {
        const replica = order[i]!;
        try {
          return await replicas[replica]!.createGroup(request, options);
        } catch (err) {
          const error = noteFailure(replica, err);
          // Only a refusal made before any work is tried elsewhere: a connection lost mid-call
          // may have created the group, and a second one must not appear.
          const before = error.code === Code.Unavailable && /serves no shard now/.test(error.rawMessage);
          const refused = isTransportFailure(error) && /ECONNREFUSED/.test(String(error.cause ?? error));
          if (i + 1 >= order.length || !(before || refused)) throw err;
        }
      }
    },

    changeMembership(request, options?: CallOptions) {
      return single(request.conversationId ?? "", false, (r) => r.changeMembership(request, options));
    },

    getHistory(request, options?: CallOptions) {
      return single(request.conversationId ?? "", true, (r) => r.getHistory(request, options));
    },

    async updateCursors(request, options?: CallOptions) {
      const groups = partition(request.updates ?? [], (u) => route(u.conversationId ?? ""));
      await Promise.all(
        [...groups].map(async ([replica, group]) => {
          try {
            await replicas[replica]!.updateCursors({ updates: group.items }, options);
          } catch (err) {
            throw noteFailure(replica, err);
          }
        }),
      );
      return create(UpdateCursorsResponseSchema, {});
    },

    async getSyncState(request, options?: CallOptions) {
      // Shards no replica answered for must not hide the conversations of those that were: a
      // reconnecting device gets those now and the rest when their shards are served again.
      const { answers, missing, firstFailure } = await scatter((r) => r.getSyncState(request, options));
      if (missing.length === shardCount) {
        throw new ConnectError(
          `no sequencer replica answered: ${firstFailure?.rawMessage ?? "no shard is served"}`,
          Code.Unavailable,
        );
      }
      const conversations = unique(
        answers.flatMap((a) => a.conversations),
        (c) => c.conversationId,
      );
      // The replicas whose shards (by the static map) are among the missing ones.
      const unansweredReplicas = homeShards.flatMap((shards, replica) =>
        shards.some((s) => missing.includes(s)) ? [replica] : [],
      );
      const shards = allShards.filter((s) => !missing.includes(s));
      return create(GetSyncStateResponseSchema, { conversations, unansweredReplicas, shards });
    },

    async listConversations(request, options?: CallOptions) {
      const { answers, missing, firstFailure } = await scatter((r) => r.listConversations(request, options));
      requireAll(missing, firstFailure);
      const conversations = unique(
        answers.flatMap((a) => a.conversations),
        (c) => c.conversationId,
      ).sort((a, b) => Number(b.lastActiveMs - a.lastActiveMs));
      return create(ListConversationsResponseSchema, { conversations, shards: allShards });
    },

    getConversation(request, options?: CallOptions) {
      return single(request.conversationId ?? "", true, (r) => r.getConversation(request, options));
    },

    getMembers(request, options?: CallOptions) {
      return single(request.conversationId ?? "", true, (r) => r.getMembers(request, options));
    },

    setDisappearingTimer(request, options?: CallOptions) {
      return single(request.conversationId ?? "", false, (r) => r.setDisappearingTimer(request, options));
    },
    setMute(request, options?: CallOptions) {
      // Idempotent: it sets the mute to a value.
      return single(request.conversationId ?? "", true, (r) => r.setMute(request, options));
    },

    getRetentionHorizon(request, options?: CallOptions) {
      return single(request.conversationId ?? "", true, (r) => r.getRetentionHorizon(request, options));
    },

    relayTyping(request, options?: CallOptions) {
      return single(request.conversationId ?? "", true, (r) => r.relayTyping(request, options));
    },

    async recordDeviceLink(request, options?: CallOptions) {
      // Every shard must have its floors recorded by the replica holding it; the link fails unless
      // all were.
      const { answers, missing, firstFailure } = await scatter((r) => r.recordDeviceLink(request, options));
      requireAll(missing, firstFailure);
      const conversations = answers.reduce((n, a) => n + a.conversations, 0);
      return create(RecordDeviceLinkResponseSchema, { conversations, shards: allShards });
    },

    async findContacts(request, options?: CallOptions) {
      const { answers, missing, firstFailure } = await scatter((r) => r.findContacts(request, options));
      requireAll(missing, firstFailure);
      const found = new Set(answers.flatMap((a) => a.contactUserIds));
      const direct = new Set(answers.flatMap((a) => a.directContactUserIds));
      // Keep the caller's order, as a single replica does.
      const contactUserIds = (request.peerUserIds ?? []).filter((id) => found.has(id));
      const directContactUserIds = (request.peerUserIds ?? []).filter((id) => direct.has(id));
      return create(FindContactsResponseSchema, { contactUserIds, directContactUserIds, shards: allShards });
    },
  };
}
