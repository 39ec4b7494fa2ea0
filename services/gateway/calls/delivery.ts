/**
 * How call events and handed-off calls reach other gateways: looked up in the route store and
 * handed over on the delivery channel (never stored).
 */
import { create } from "@bufbuild/protobuf";
import {
  type CallHandoff,
  type Delivery,
  DeliveryBatchSchema,
  DeliverySchema,
} from "../../../gen/switchboard/internal/v1/events_pb.js";
import type { CallEventFrame } from "../../../gen/switchboard/v1/calls_pb.js";
import type { CallRelayDeps } from "./types.js";

/** Users per route lookup (PresenceService.LookupRoutes takes at most 1,024). */
export const LOOKUP_CHUNK = 1_024;

type Routing = Pick<CallRelayDeps, "presence" | "delivery">;

/**
 * Delivers an event to each online device of the users that eventFor gives one for, through
 * the gateways holding their streams. Returns the devices it was handed to.
 */
export async function deliverCall(
  deps: Routing,
  userIds: string[],
  eventFor: (userId: string, deviceId: string) => CallEventFrame | undefined,
): Promise<Set<string>> {
  const devices = new Set<string>();
  for (let i = 0; i < userIds.length; i += LOOKUP_CHUNK) {
    const chunk = userIds.slice(i, i + LOOKUP_CHUNK);
    const wanted = new Set(chunk);
    const { routes } = await deps.presence.lookupRoutes({ userIds: chunk });
    const byGateway = new Map<string, Delivery[]>();
    for (const r of routes) {
      if (!wanted.has(r.userId) || devices.has(r.deviceId)) continue;
      const ev = eventFor(r.userId, r.deviceId);
      if (ev === undefined) continue;
      devices.add(r.deviceId);
      const list = byGateway.get(r.gatewayId) ?? [];
      list.push(create(DeliverySchema, { deviceIds: [r.deviceId], payload: { case: "call", value: ev } }));
      byGateway.set(r.gatewayId, list);
    }
    await Promise.all(
      [...byGateway].map(([gatewayId, deliveries]) =>
        deps.delivery.deliver(gatewayId, create(DeliveryBatchSchema, { deliveries })),
      ),
    );
  }
  return devices;
}

/**
 * The gateways holding a stream of each of the devices (the first route found), among the
 * users' routes; gateways other than `except` only, when given.
 */
export async function gatewaysOf(
  deps: Routing,
  userIds: string[],
  except?: string,
): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  for (let i = 0; i < userIds.length; i += LOOKUP_CHUNK) {
    const { routes } = await deps.presence.lookupRoutes({ userIds: userIds.slice(i, i + LOOKUP_CHUNK) });
    for (const r of routes)
      if (r.gatewayId !== except && !found.has(r.deviceId)) found.set(r.deviceId, r.gatewayId);
  }
  return found;
}

/** Hands a call's state to the gateway holding the device's stream (Delivery.call_handoff). */
export async function handOff(
  deps: Routing,
  gatewayId: string,
  deviceId: string,
  handoff: CallHandoff,
): Promise<void> {
  await deps.delivery.deliver(
    gatewayId,
    create(DeliveryBatchSchema, {
      deliveries: [
        create(DeliverySchema, { deviceIds: [deviceId], payload: { case: "callHandoff", value: handoff } }),
      ],
    }),
  );
}
