import type { Entry } from "../../gen/switchboard/v1/entry_pb.js";
import type { Limits } from "../common/config.js";
import type { ReceivedBounds } from "./delivery-bound.js";
import type { OutboxOptions } from "./outbox.js";

/** The outcome of one append. */
export interface Appended {
  /** The committed seq. */
  seq: number;
  /** Commit time, in milliseconds since the Unix epoch. */
  serverTimeMs: number;
  /** When the entry disappears, in milliseconds since the Unix epoch; 0 or absent for never. */
  expiresAtMs?: number;
}

/** Options for the sequencer. */
export interface SequencerOptions {
  /** Logical shard count (fixed per deployment). */
  shardCount: number;
  /** Which logical shards this replica owns; all of them when absent. */
  ownedShards?: readonly number[];
  /**
   * Shards are taken and handed on under leases (services/sequencer/ownership.ts drives it): the
   * replica starts with none, and ownedShards is ignored.
   */
  leased?: boolean;
  /** Limits on payloads and groups. */
  limits: Limits;
  /** Conversation states kept in memory per shard, at most (a count, not bytes). */
  maxStatesPerShard?: number;
  /**
   * The byte budget of the hot state (tails, idempotency keys, members, cursors) of all this
   * replica's shards together, in bytes; least recently used conversations are evicted past it.
   */
  cacheBytes?: number;
  /** The clock, in milliseconds since the Unix epoch. */
  now?: () => number;
  /** How committed events wait for the bus during an outage. */
  outbox?: OutboxOptions;
  /**
   * The disappearing-message timers members may set besides 0 (off), in seconds; 24 hours,
   * 7 days and 90 days when absent.
   */
  disappearingSeconds?: readonly number[];
  /**
   * The server-wide maximum age of entries, in milliseconds (0 or absent: kept for ever): older
   * ones are served as expired, as the store deletes them (ExpirySweep, or a database TTL).
   */
  retentionMs?: number;
  /**
   * Entries every active device of every member received are served as expired this long after
   * their commit, in ms, up to where the expiry sweep found them received (receivedBounds).
   */
  afterDeliveryMs?: number;
  /** What the expiry sweep found received, per conversation (DeviceDeliveryBound fills it). */
  receivedBounds?: ReceivedBounds;
}

/** The user and device an operation acts as. */
export interface Actor {
  /** The acting user's id. */
  userId: string;
  /** The device the user acts from. */
  deviceId: string;
}

/** A conversation's current members, for fanout. */
export interface MemberList {
  /** Every member's user id. */
  userIds: string[];
  /** The seq of the last membership change (1 for a new conversation). */
  membersVersion: number;
  /** The mutes in force now: no push wake-ups for these members until mutedUntilMs. */
  mutes: Array<{
    /** The muted member. */
    userId: string;
    /** Muted until, in milliseconds since the Unix epoch. */
    mutedUntilMs: number;
  }>;
  /** Grows whenever a member's mute changes (a clock reading in milliseconds at load). */
  mutesVersion: number;
  /** The disappearing-message timer, in seconds; 0 when off. */
  disappearingSeconds: number;
}

/** A page of a conversation's log. */
export interface HistoryPage {
  /** The entries, ascending by seq. */
  entries: Entry[];
  /** The conversation's highest committed seq. */
  lastSeq: number;
  /** True when committed entries remain after the page. */
  hasMore: boolean;
}
