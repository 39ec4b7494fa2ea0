import type { ConnectError } from "@connectrpc/connect";

// The history transfer's events as the app sees them (sdk/client/history.ts). Only types, so
// sdk/types.ts can name them without pulling the transfer's code into its graph.

/** Why a history transfer was refused. */
export type HistoryFailure =
  /** More entries than the bound (sending: choose fewer days; receiving: refused). */
  | "too-many-entries"
  /** More bytes than the bound. */
  | "too-large"
  /** The downloaded ciphertext is not the one the old device uploaded (digest mismatch). */
  | "digest"
  /** The ciphertext does not decrypt with the key (AES-GCM authentication failed). */
  | "authentication"
  /** The plaintext is not a well-formed bundle, or disagrees with its transfer message. */
  | "format"
  /** The bundle is for another user or device, or not from the device that sent the transfer. */
  | "wrong-device";

/** A bundle this device imported (the "historyImported" event). */
export interface HistoryImportedEvent {
  /** The device that sent it. */
  fromDeviceId: string;
  /** Entries kept. */
  imported: number;
  /** Entries left out because this device had them already (it synced them itself). */
  duplicates: number;
  /** The conversations the kept entries belong to. */
  conversationIds: string[];
  /** The oldest commit time covered, in milliseconds since the Unix epoch. */
  sinceMs: bigint;
}

/** A bundle this device refused (the "historyRefused" event): tampered, too large, not for it. */
export interface HistoryRefusedEvent {
  /** The device that sent it. */
  fromDeviceId: string;
  /** A HistoryError: its `reason` (a HistoryFailure) and a code that fits it. */
  error: ConnectError & { reason: HistoryFailure };
}
