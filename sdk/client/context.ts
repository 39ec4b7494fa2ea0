import type { ConnectError } from "@connectrpc/connect";
import type { StreamLimits } from "../../gen/switchboard/v1/gateway_pb.js";
import type { E2ee } from "../e2ee.js";
import type { Profile } from "../profile.js";
import type { ServerConnection } from "../transport.js";
import type { ClientTuning, PayloadCodec } from "../types.js";
import { clientClosed, encryptionOff } from "./errors.js";
import type { Emitter } from "./events.js";
import { ProfileKeys } from "./profile-keys.js";

/** Largest payload assumed before the server said (StreamLimits): the default limit. */
const DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024;
/** Deadline of every unary call the client makes, in milliseconds. */
export const UNARY_TIMEOUT_MS = 30_000;

/** ClientTuning with every default filled in. */
export function tuningWithDefaults(tuning: ClientTuning): Required<ClientTuning> {
  return {
    backoffBaseMs: tuning.backoffBaseMs ?? 250,
    backoffCapMs: tuning.backoffCapMs ?? 30_000,
    stableAfterMs: tuning.stableAfterMs ?? 10_000,
    pingIntervalMs: tuning.pingIntervalMs ?? 20_000,
    deadAfterMs: tuning.deadAfterMs ?? 45_000,
    gapTimeoutMs: tuning.gapTimeoutMs ?? 500,
    syncPageSize: tuning.syncPageSize ?? 256,
    ackDelayMs: tuning.ackDelayMs ?? 50,
    ackEveryEntries: tuning.ackEveryEntries ?? 100,
    closingGraceMs: tuning.closingGraceMs ?? 10_000,
  };
}

/**
 * What every part of a client shares: the profile, the connection, encryption, the events, and the
 * few facts that change over its life (closed, why it stopped, the server's limits).
 */
export class ClientContext {
  /** Set by close() or a fatal error: nothing new starts. */
  closed = false;
  /** Why the client stopped for good (revoked, replaced elsewhere), when it did. */
  fatal: ConnectError | undefined;
  /** The limits the server announced in the last ready frame. */
  limits: StreamLimits | undefined;
  private profileKeyStore: ProfileKeys | undefined;

  constructor(
    readonly profile: Profile,
    readonly conn: ServerConnection,
    readonly codec: PayloadCodec,
    readonly tuning: Required<ClientTuning>,
    readonly events: Emitter,
    /** Undefined when the client was opened without end-to-end encryption. */
    readonly e2ee: E2ee | undefined,
    /** OpenOptions.acceptUnencrypted. */
    readonly acceptUnencrypted: boolean,
  ) {}

  /** This device's id. */
  get deviceId(): string {
    return this.profile.credentials.deviceId;
  }

  /** Profile keys (avatars): this device's, and those other devices sent it. */
  get profileKeys(): ProfileKeys {
    this.profileKeyStore ??= new ProfileKeys(this.profile.storage);
    return this.profileKeyStore;
  }

  /** Encryption, or FAILED_PRECONDITION for a client opened without it. */
  requireE2ee(): E2ee {
    if (this.e2ee === undefined) throw encryptionOff();
    return this.e2ee;
  }

  /** The largest payload (with every device's ciphertext) a send may carry, in bytes. */
  maxPayloadBytes(): number {
    return this.limits?.maxPayloadBytes || DEFAULT_MAX_PAYLOAD_BYTES;
  }

  /** The error for work asked of a stopped client: why it stopped, or CANCELED after close(). */
  closedError(): ConnectError {
    return this.fatal ?? clientClosed();
  }

  /** A key upload or other background failure: reported unless the client is closing anyway. */
  backgroundFailed(err: unknown): void {
    if (this.closed) return;
    this.events.reportError(err);
  }
}
