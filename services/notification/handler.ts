import type { ServiceImpl } from "@connectrpc/connect";
import type { NotificationService } from "../../gen/switchboard/internal/v1/notification_pb.js";
import type { Notifier } from "./notifier.js";

/** The notification service's RPC face: queue and return at once. */
export function notificationService(
  notifier: Pick<Notifier, "notify" | "notifyCall">,
): ServiceImpl<typeof NotificationService> {
  return {
    async notify(req) {
      const { queued, shed } = notifier.notify(
        req.wakeUps.slice(0, 10_000).map((w) => ({
          userId: w.userId,
          deviceId: w.deviceId,
          conversationId: w.conversationId,
          seq: Number(w.seq),
          urgent: w.urgent,
        })),
      );
      return { queued, shed };
    },
    async notifyCall(req) {
      // A call rings at most the devices a user may have; anything past that is not a callee's.
      const { queued, shed } = notifier.notifyCall(
        req.deviceIds.slice(0, 16).map((deviceId) => ({
          userId: req.userId,
          deviceId,
          conversationId: req.conversationId,
          callId: req.callId,
          ended: req.ended,
        })),
      );
      return { queued, shed };
    },
  };
}
