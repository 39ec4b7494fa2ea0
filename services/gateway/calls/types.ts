/** What the call relay needs of its gateway and its streams. */
import type { Client } from "@connectrpc/connect";
import type { PresenceService } from "../../../gen/switchboard/internal/v1/presence_pb.js";
import type { SequencerService } from "../../../gen/switchboard/internal/v1/sequencer_pb.js";
import type { ConnectResponse } from "../../../gen/switchboard/v1/gateway_pb.js";
import type { DeliveryChannel } from "../../bus/types.js";
import type { Logger } from "../../common/log.js";

/** The stream a call frame came in on. */
export interface CallStream {
  readonly userId: string;
  readonly deviceId: string;
  readonly isClosed: boolean;
  /** Queues an answer to the device's own frame (here: an error frame). */
  answer(frame: ConnectResponse): void;
}

/** A stream a call event is delivered to. */
export interface CallReceiver {
  readonly userId: string;
  readonly deviceId: string;
  /** When the stream opened, in milliseconds since the Unix epoch. */
  readonly openedAtMs: number;
  /** Queues an event frame (dropped when the device is behind, like typing). */
  deliverEvent(value: ConnectResponse["frame"]): void;
}

/** What the relay needs of its gateway. */
export interface CallRelayDeps {
  /** This gateway's id. */
  gatewayId: string;
  presence: Client<typeof PresenceService>;
  sequencer: Client<typeof SequencerService>;
  delivery: DeliveryChannel;
  log: Logger;
  /** The clock, in milliseconds since the Unix epoch. */
  now: () => number;
  /** Counts and logs a refusal (GatewayCore.refused). */
  refused(reason: string, message: string, fields?: Record<string, string | number>): void;
  /** Whether owner has blocked userId (the gateway's block lists). */
  blockedBy(owner: string, userId: string): Promise<boolean>;
  /** Whether the device holds a stream on this gateway. */
  hasStream(deviceId: string): boolean;
  /** A user's active devices (the accounts directory). */
  userDevices(userId: string): Promise<string[]>;
  /**
   * Queues a call's wake-up for devices without a stream, or its withdrawal (NotificationService
   * .NotifyCall); undefined where no notification service is reachable.
   */
  notifyCall?: (call: {
    userId: string;
    deviceIds: string[];
    callId: string;
    conversationId: string;
    ended: boolean;
  }) => Promise<void>;
  /** The SFU group calls send media to (SWITCHBOARD_CALL_SFU_URL); undefined: a mesh. */
  sfuUrl: string | undefined;
  /** The secret shared with the SFU, to sign admissions with (SWITCHBOARD_CALL_SFU_SECRET). */
  sfuSecret?: string | undefined;
  /** The active devices of users (the accounts directory), at most 1,024 users. */
  devicesOf(userIds: string[]): Promise<Map<string, string[]>>;
}
