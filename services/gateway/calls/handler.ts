/** CallService: what the gateway answers about calls outside the device stream. */
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { CallService } from "../../../gen/switchboard/v1/calls_pb.js";
import type { Principal } from "../../common/auth.js";
import type { TurnConfig } from "../../common/config.js";
import { issueTurnCredentials } from "./turn.js";

export { CallService };

/**
 * The call service of an authenticated device (the gateway's auth interceptor has run: principal
 * throws UNAUTHENTICATED otherwise). now is the clock credentials expire by, in milliseconds.
 */
export function callService(
  turn: TurnConfig,
  principal: (ctx: HandlerContext) => Principal,
  now: () => number = Date.now,
): ServiceImpl<typeof CallService> {
  return {
    async getTurnCredentials(_req, ctx) {
      const p = principal(ctx);
      const issued = issueTurnCredentials(turn, p.userId, now());
      return { iceServers: issued.iceServers, expiresAtMs: BigInt(issued.expiresAtMs) };
    },
  };
}
