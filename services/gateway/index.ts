/**
 * The gateway's public face: what the composition root and the admin service use of it. The
 * session machinery (services/gateway/session/), the batchers and the outbound queues are the
 * gateway's own and may change without notice.
 */

// Calls: TURN credentials (the call frames travel on the device stream).
export { CallService, callService } from "./calls/handler.js";
// The manager holding every device stream of this process, and what it is given.
export { GatewayCore, type GatewayDeps } from "./gateway.js";
// The public RPC faces the network serves, and the forwarders to the services behind them.
export {
  accountForwarder,
  authInterceptor,
  ConversationService,
  conversationService,
  GatewayService,
  gatewayService,
  keyForwarder,
  mediaForwarder,
  principal,
} from "./handlers.js";
// Where the device stream's fast path (services/server/device-stream.ts) pushes the frames it reads.
export type { FrameSink } from "./session/inbound.js";
export type { GatewayMetrics, GatewayObserver, ObservedGateway } from "./types.js";
// What the device stream's fast path does to every frame first.
export { dropUnknownFields } from "./untrusted.js";
