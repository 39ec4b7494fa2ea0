import type { ConnectError } from "@connectrpc/connect";
import type { ConnectResponse, PresenceFrame } from "../../../gen/switchboard/v1/gateway_pb.js";
import type { DomainError } from "../../common/errors.js";
import type { Outbound } from "../outbound.js";
import type { GatewayServices } from "../types.js";

/**
 * What the parts of one device stream (inbound frames, sends, backlog) share of it: who it is,
 * its queue, the gateway's services, and the few acts that belong to the stream as a whole
 * (answering, ending it, presence subscriptions). The Session facade implements it.
 */
export interface StreamContext {
  /** The stream's id ("s_..."), as in its route and its logs. */
  readonly id: string;
  /** The stream's user. */
  readonly userId: string;
  /** The stream's device. */
  readonly deviceId: string;
  /** What the gateway shares with every stream. */
  readonly host: GatewayServices;
  /** The frames waiting for the device. */
  readonly outbound: Outbound;
  /** True once the stream ended (closed, replaced, or its device stopped reading). */
  readonly isClosed: boolean;
  /** The users whose presence this stream receives. */
  readonly subscriptions: ReadonlySet<string>;
  /**
   * Queues an answer to the device's own request; a device that does not read even those has
   * its stream ended.
   */
  answer(frame: ConnectResponse): void;
  /**
   * Ends the stream: with an error the device gets its status after what is queued (the error
   * boundary gives a domain error its code).
   */
  close(error?: DomainError | ConnectError): void;
  /**
   * Sends the stream the user's presence changes from now on; `direct` says whether the two have
   * a direct conversation (the "contacts" of the last_seen privacy setting).
   */
  watchPresence(userId: string, direct?: boolean): void;
  /** Stops sending the stream the user's presence changes. */
  unwatchPresence(userId: string): void;
  /** Queues a presence frame (dropped when the device is behind). */
  deliverPresence(presence: PresenceFrame): void;
}
