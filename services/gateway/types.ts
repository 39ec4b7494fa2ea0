import type { Client } from "@connectrpc/connect";
import type { PresenceService } from "../../gen/switchboard/internal/v1/presence_pb.js";
import type { SequencerService } from "../../gen/switchboard/internal/v1/sequencer_pb.js";
import type { OutgoingEntry } from "../../gen/switchboard/v1/entry_pb.js";
import type { Limits } from "../common/config.js";
import type { Logger } from "../common/log.js";
import type { CursorBatcher, SendBatcher } from "./batchers.js";
import type { BlockLists } from "./blocks.js";
import type { CallRelay } from "./calls/relay.js";
import type { DeviceSets } from "./device-set.js";
import type { PrivacyView } from "./privacy.js";

/**
 * The contracts between the gateway (gateway.ts), its device streams (session.ts) and its
 * metrics (observe.ts). They live below all three so imports go one way: the gateway builds
 * streams and observers, and neither needs to know the gateway's class.
 */

/** Counters an operator reads, exported as metrics by observe.ts when Prometheus scrapes. */
export interface GatewayMetrics {
  /** Receipts, typing and presence frames dropped because a device was behind. */
  droppedEvents: number;
  /** Streams closed for sending too many frames. */
  floodClosures: number;
  /** Sends refused by the per-device rate limit. */
  rejectedRate: number;
  /** Sends refused because too many were in flight. */
  rejectedInFlight: number;
  /** Streams replaced by a newer stream of the same device. */
  replacedStreams: number;
  /**
   * Other refusals by reason: `stream_not_reading` (a stream ended because its device did not
   * read while answers piled up), `stream_stalled` (a stream ended because its device read
   * nothing for outboundStallMs while a page waited), `sync_requests_queued` (a sync request
   * past the queue), `unknown_fields` (device messages that carried fields the schema does not
   * know, dropped), `entry_too_large` (a send whose encoded entry passed its limit),
   * `unary_frame_rate` (an Ack or SetTyping call past the device's frame budget), `send_held`
   * (a send behind an earlier refused send of its stream that was not sent again yet),
   * `call_offer_rate`, `call_byte_rate` and `call_payload_too_large` (call frames past their
   * bounds, calls/limits.ts).
   */
  refusals: Map<string, number>;
}

/** What a gateway records on its hot path, for Prometheus. */
export interface GatewayObserver {
  /** A send answered: seconds from the frame's arrival to its ack (or error). */
  sendAck(seconds: number, outcome: "ok" | "error"): void;
  /** An entry handed to a stream: seconds since it was committed. */
  deliveryLag(seconds: number): void;
  /**
   * A device's cursor reached the sequencer: seconds from the first ack (or read) that moved it
   * since the last flush to the sequencer's answer, i.e. how far the server's cursor trailed.
   */
  cursorLag(seconds: number): void;
}

/** What a gateway exposes to observe.ts: read only when Prometheus scrapes. */
export interface ObservedGateway {
  /** This gateway instance's id (the `switchboard.gateway` label). */
  id: string;
  /** The counters, read at scrape time. */
  metrics: GatewayMetrics;
  /** Device streams open on this gateway. */
  streamCount: number;
  /** Devices with at least one stream open on this gateway. */
  deviceCount: number;
  /** Sends taken and not yet answered, all streams and unary calls together. */
  sendsInFlight: number;
  /** What those may be at most right now (admission.ts: the fixed bound or the answer-rate bound). */
  sendsInFlightBound: number;
}

/** What every stream of a gateway shares: the instance's limits, clients, batchers and counters. */
export interface GatewayServices {
  /** This gateway instance's id (routes point at it; traces carry it). */
  readonly id: string;
  /** The sequencer: sync state, history pages, typing relay and contacts. */
  readonly sequencer: Client<typeof SequencerService>;
  /** The presence service: current presence of the users a stream subscribes to. */
  readonly presence: Client<typeof PresenceService>;
  /** The limits every stream enforces. */
  readonly limits: Limits;
  /** The stream port as clients reach it, told in every ready frame; "" when none is named. */
  readonly streamUrl: string;
  /** The gateway's logger. */
  readonly log: Logger;
  /** The clock, in milliseconds since the Unix epoch. */
  readonly now: () => number;
  /** Appends sends in batches (one RPC per turn of the event loop). */
  readonly sends: SendBatcher;
  /** Coalesces delivered and read cursors before they reach the sequencer. */
  readonly cursors: CursorBatcher;
  /** The check of pairwise sends' per-device ciphertexts against the users' devices. */
  readonly devices: DeviceSets;
  /** Users' block lists as this gateway needs them (blocks.ts). */
  readonly blocks: BlockLists;
  /** Users' last seen and read receipt settings as this gateway enforces them (privacy.ts). */
  readonly privacy: PrivacyView;
  /** Call signalling: checks, bounds and relays call frames (calls/relay.ts). */
  readonly calls: CallRelay;
  /** Latency histograms. */
  readonly observe: GatewayObserver;
  /** Counters read when Prometheus scrapes. */
  readonly metrics: GatewayMetrics;
  /**
   * Counts a refusal and logs it at info, at most once per reason per interval. Fields carry
   * ids and sizes, never content.
   */
  refused(reason: string, message: string, fields?: Record<string, string | number>): void;
  /** Throws INVALID_ARGUMENT (counted) when a send's encoded entry passes its limit. */
  checkEntrySize(entry: OutgoingEntry): void;
  /**
   * Takes a send token for a device: 0 when allowed, else milliseconds to wait; a number at once
   * with the in-memory limiter, a promise with the shared (Redis) one.
   */
  takeSendToken(deviceId: string): number | Promise<number>;
}

/**
 * What a stream needs of the gateway that holds it: the shared services, and the registry of
 * streams (`S` is the stream's type, so this file need not import it).
 */
export interface SessionHost<S> extends GatewayServices {
  /** Makes the stream reachable by fanout; its backlog is read only after this resolves. */
  register(session: S): Promise<void>;
  /** Forgets a closed stream (its route and its presence subscriptions). */
  detach(session: S): void;
  /** Sends the stream every presence change of the user. */
  subscribePresence(session: S, userId: string): void;
  /** Stops sending the stream the user's presence changes. */
  unsubscribePresence(session: S, userId: string): void;
}
