import { create } from "@bufbuild/protobuf";
import { DisappearingTimerBodySchema, type Entry, EntrySchema } from "../../gen/switchboard/v1/entry_pb.js";
import { InvalidInputError, PermissionError } from "../common/errors.js";
import type { ConversationLog } from "./log.js";
import { type ReplicaShards, requireMember } from "./replica.js";
import type { Actor } from "./types.js";

/** The timers a conversation may have unless configured, in seconds: 24 hours, 7 days, 90 days. */
export const DISAPPEARING_DURATIONS: readonly number[] = [86_400, 604_800, 7_776_000];

/** Entry bodies that expire while a timer is on: what devices send, never the server's own entries. */
const EXPIRING_BODIES = new Set<Entry["body"]["case"]>(["message", "edit", "delete", "reaction"]);

/**
 * When an entry assigned now expires: its commit time plus the conversation's timer, for the
 * bodies devices send; 0 (never) otherwise or with the timer off.
 */
export function expiryOf(
  body: Entry["body"],
  timerSeconds: number | undefined,
  serverTimeMs: number,
): number {
  if (timerSeconds === undefined || timerSeconds <= 0 || !EXPIRING_BODIES.has(body.case)) return 0;
  return serverTimeMs + timerSeconds * 1000;
}

/**
 * What an expired entry is served as: its seq and the flag, nothing else, whether the store
 * still holds it (the sweep has not reached it yet) or not (deleted, or dropped by a database
 * TTL). The seq stays in the log, so a device marks it done instead of asking for a gap.
 */
export function expiredStub(conversationId: string, seq: number): Entry {
  return create(EntrySchema, { conversationId, seq: BigInt(seq), expired: true });
}

/** Whether an entry is past its expiry at nowMs. */
export function isExpired(entry: Entry, nowMs: number): boolean {
  return entry.expired || (entry.expiresAtMs > 0n && Number(entry.expiresAtMs) <= nowMs);
}

/** Sets conversations' disappearing-message timers, each change an entry of the log. */
export class DisappearingTimers {
  constructor(
    private readonly shards: ReplicaShards,
    private readonly entries: ConversationLog,
    /** The timers members may set besides 0 (off), in seconds. */
    private readonly durations: readonly number[] = DISAPPEARING_DURATIONS,
  ) {}

  /** Writes a timer entry; undefined when the timer is already so (nothing written). */
  async set(
    actor: Actor,
    conversationId: string,
    durationSeconds: number,
    adminsOnly: boolean,
  ): Promise<Entry | undefined> {
    if (durationSeconds !== 0 && !this.durations.includes(durationSeconds)) {
      throw new InvalidInputError(`duration_seconds: 0 (off) or one of ${this.durations.join(", ")}`);
    }
    return this.shards.withState(conversationId, async (state, shard) => {
      const me = requireMember(state, actor.userId);
      // requireMember answered: the conversation exists.
      const record = state.record!;
      const group = record.kind === "group";
      if (!group && adminsOnly) {
        throw new InvalidInputError("admins_only: only groups have admins");
      }
      // Who may change it is decided by the timer in force; making it admins-only, or lifting
      // that, is an admin's decision in any case.
      const adminsOnlyNow = record.disappearingAdminsOnly === true;
      if (group && me.role !== "admin" && (adminsOnlyNow || adminsOnly)) {
        throw new PermissionError("only group admins can change the disappearing-message timer");
      }
      if ((record.disappearingSeconds ?? 0) === durationSeconds && adminsOnlyNow === adminsOnly) {
        return undefined;
      }
      shard.assertCurrent(state);
      const batch = shard.batch();
      state.record = { ...record, disappearingSeconds: durationSeconds, disappearingAdminsOnly: adminsOnly };
      batch.write(state).conversation = state.record;
      const entry = this.entries.assign(state, batch, {
        senderUserId: actor.userId,
        senderDeviceId: actor.deviceId,
        body: {
          case: "disappearing",
          value: create(DisappearingTimerBodySchema, { durationSeconds, adminsOnly }),
        },
      });
      await batch.durable;
      return entry;
    });
  }
}
