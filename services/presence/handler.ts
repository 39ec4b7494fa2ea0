import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { DeviceRouteSchema, type PresenceService } from "../../gen/switchboard/internal/v1/presence_pb.js";
import { PresenceFrameSchema } from "../../gen/switchboard/v1/gateway_pb.js";
import type { Presence } from "./presence.js";

/** The presence service's RPC face. */
export function presenceService(presence: Presence): ServiceImpl<typeof PresenceService> {
  return {
    async registerRoutes(req) {
      await presence.register(req.routes, req.ttlMs);
      return {};
    },
    async unregisterRoutes(req) {
      await presence.unregister(req.routes);
      return {};
    },
    async lookupRoutes(req) {
      const routes = await presence.lookup(req.userIds);
      return { routes: routes.map((r) => create(DeviceRouteSchema, r)) };
    },
    async getPresence(req) {
      const states = await presence.get(req.userIds);
      return {
        presence: states.map((p) =>
          create(PresenceFrameSchema, {
            userId: p.userId,
            online: p.online,
            lastSeenMs: BigInt(p.lastSeenMs),
          }),
        ),
      };
    },
  };
}
