import { create } from "@bufbuild/protobuf";
import { DisappearingTimerBodySchema, type Entry } from "../../gen/switchboard/v1/entry_pb.js";
import { InvalidInputError, PermissionError } from "../common/errors.js";
import type { ConversationLog } from "./log.js";
import { type ReplicaShards, requireMember } from "./replica.js";
import type { Actor } from "./types.js";

/** The timers a conversation may have unless configured, in seconds: 24 hours, 7 days, 90 days. */
export const DISAPPEARING_DURATIONS: readonly number[] = [86_400, 604_800, 7_776_000];

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
