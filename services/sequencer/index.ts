/**
 * The sequencer's public face: what other services use of it. Anything not exported here is
 * the sequencer's own (its collaborators, shards, hot state) and may change without notice.
 */

// Composition (services/server): the service itself, its RPC face and its clients.
export { DeviceDeliveryBound, holdsConversation, ReceivedBounds } from "./delivery-bound.js";
// The gateway checks a send's per-device ciphertexts with the same rules before the send is
// ordered, and reads a DeviceMismatch off the refusal it relays.
export {
  bodyBytes,
  type ConversationKind,
  checkDevicePayloads,
  conversationKind,
  type DevicePayloadLimits,
  devicePayloadsOf,
  mismatchError,
  mismatchOf,
  needsDeviceCheck,
} from "./device-payloads.js";
export { ExpirySweep } from "./expiry-sweep.js";
export { sequencerService } from "./handler.js";
export { DEFAULT_LEASE_MS, planLeases, rightfulHolder, ShardOwnership } from "./ownership.js";
export { replicaOf, type SequencerClient, shardedSequencerClient, shardsOfReplica } from "./router.js";
export { Sequencer } from "./sequencer.js";
export type { Appended, SequencerOptions } from "./types.js";
