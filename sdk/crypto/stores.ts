// The libsignal stores of one device, persisted in the profile: the face the rest of the SDK imports.
// One file per store under stores/ (identity, sessions, prekeys, sender keys), the aggregate that
// opens them all in stores/signal-stores.ts, and the shared shapes in stores/types.ts.
export { addressOf, deviceOf, SIGNAL_DEVICE_NUMBER } from "./stores/address.js";
export { IdentityStore, UntrustedIdentityError } from "./stores/identity.js";
export { KyberPreKeyFileStore, PreKeyFileStore, SignedPreKeyFileStore } from "./stores/prekeys.js";
export { SenderKeyFileStore } from "./stores/sender-keys.js";
export { SessionFileStore } from "./stores/sessions.js";
export { SIGNAL_PREFIX, SignalStores, type SignalStoresOptions } from "./stores/signal-stores.js";
export type {
  DeviceRef,
  IdentityChangeEvent,
  IdentityChangeOutcome,
  RememberedIdentity,
} from "./stores/types.js";
