// The Switchboard TypeScript SDK. See README.md in this folder.
export { Backoff } from "./backoff.js";
// Profile avatars (client.avatars), encrypted under profile keys.
export { type Avatar, Avatars } from "./client/avatars.js";
export type { MessageLinks } from "./client/bodies.js";
export type { GroupCallRef } from "./client/calls.js";
export { DISAPPEARING } from "./client/conversations.js";
// History for a newly linked device (client.history).
export {
  HistoryError,
  type HistorySendOptions,
  type HistorySent,
  TRANSFER_TITLE,
} from "./client/history.js";
export {
  DEFAULT_HISTORY_MAX_BYTES,
  DEFAULT_HISTORY_MAX_ENTRIES,
  HISTORY_MAX_BYTES,
  HISTORY_MAX_ENTRIES,
} from "./client/history-bundle.js";
export { type BlockedUser, REPORT_BOUNDS, type ReportOptions, Safety } from "./client/safety.js";
export { identityCodec, newClientMsgId, SwitchboardClient } from "./client.js";
export { writeFileAtomic } from "./durable-file.js";
export {
  type ContactSafetyNumber,
  checkContext,
  type DevicesChangedEvent,
  E2ee,
  MAX_MISMATCH_RETRIES,
  parseSealed,
  RETRY_INTERVAL_MS,
  SENDER_KEY_PAYLOAD_TYPE,
  type SealedPart,
} from "./e2ee.js";
// Conversation health, computed on the device (health/): needs reply, away summaries, TTFR and
// reply rates, and the metadata-only event stream to an app's sink.
export {
  type AppEventFields,
  type HealthEvent,
  type HealthSink,
  SDK_EVENT_NAMES,
  type SinkStats,
} from "./health/events.js";
export { ConversationHealth, type HealthClient, type HealthOptions } from "./health/health.js";
export type {
  AwaySignals,
  AwaySummary,
  HealthMetrics,
  HealthSettings,
  NeedsReply,
  StartRecord,
} from "./health/model.js";
export type { HistoryFailure, HistoryImportedEvent, HistoryRefusedEvent } from "./history-types.js";
export {
  AUDIENCES,
  type Audience,
  type PrivacyChoices,
  privacyRefusalOf,
} from "./privacy.js";
export { Profile } from "./profile.js";
export { ReorderBuffer, type ReorderOptions, type SyncAnswer } from "./reorder.js";
// Where a device keeps its profile: the port, the file engine (the default) and the memory engine.
export { FileStorage } from "./storage/file.js";
export { MemoryStorage } from "./storage/memory.js";
export { isStorageKey, type ProfileStorage, type StorageLock } from "./storage/port.js";
export {
  type ConnectionOptions,
  connectToServer,
  credentialRejected,
  isCredentialRejected,
  type ServerConnection,
  TokenSource,
} from "./transport.js";
export type {
  CallEndReason,
  CallEvent,
  CallParticipantRef,
  ClientEvents,
  ClientTuning,
  ConnectedEvent,
  DecryptFailedEvent,
  DeviceCredentials,
  DisconnectedEvent,
  EntryKind,
  ErrorEvent,
  IncomingEntry,
  LinkOptions,
  Listener,
  LocalCursor,
  OpenOptions,
  OutboxItem,
  OutgoingAttachment,
  PayloadCodec,
  PresenceEvent,
  ReceiptEvent,
  RegisterOptions,
  SendFailedEvent,
  SendResult,
  StreamFallback,
  TypingEvent,
} from "./types.js";
