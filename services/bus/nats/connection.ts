/**
 * The NATS connection as the engine's parts see it: whether it is up, a bound on what is handed
 * to the client while it is down, waiting for the next reconnect, and a bounded close.
 */
import { connect, Events, type NatsConnection } from "nats";
import type { Logger } from "../../common/log.js";
import { positive } from "./settings.js";
import type { NatsBusOptions } from "./types.js";

const DEFAULT_MAX_PAYLOAD = 1024 * 1024;

/** How long a close waits for the client to drain what it buffered, in milliseconds. */
const DRAIN_GRACE_MS = 2000;

/** Connects to the servers; the connection reconnects forever. Rejects if no server answers now. */
export function openConnection(options: NatsBusOptions): Promise<NatsConnection> {
  return connect({
    servers: options.servers,
    ...(options.name !== undefined ? { name: options.name } : {}),
    maxReconnectAttempts: -1,
    reconnectTimeWait: positive("reconnectTimeWaitMs", options.reconnectTimeWaitMs, 2000),
    pingInterval: positive("pingIntervalMs", options.pingIntervalMs, 10_000),
    maxPingOut: 2,
    // No stack trace captured for every request and its timer (two Error objects per JetStream
    // publish, 6 % of a sequencer's main thread in the mesh's profile): our failures are logged
    // with their subject and cause, not with the client's async stack.
    noAsyncTraces: true,
  });
}

/** Waits ms, or less if wake settles first; the timer never outlives the wait. */
export function sleep(ms: number, wake?: Promise<unknown>): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    wake?.then(
      () => {
        clearTimeout(timer);
        resolve();
      },
      () => {
        clearTimeout(timer);
        resolve();
      },
    );
  });
}

/** One connection's state, shared by the JetStream and core-subject parts of the engine. */
export class Link {
  /** Set when the engine starts closing: no new work is taken, and expected events are not logged. */
  closing = false;
  private connected = true;
  private outageBytes = 0;
  private outageDropLogged = false;
  private reconnectWaiters: Array<() => void> = [];

  constructor(
    readonly connection: NatsConnection,
    private readonly reconnectBufferBytes: number,
    private readonly log: Logger,
  ) {
    void this.watchStatus();
    void connection.closed().then((err) => {
      if (!this.closing) this.log.error({ err }, "NATS connection closed unexpectedly");
      this.connected = false;
      this.wakeReconnectWaiters();
    });
  }

  /** True while connected to a server. */
  ready(): boolean {
    return this.connected && !this.connection.isClosed();
  }

  /** Resolves on the next reconnect (or on close). */
  reconnected(): Promise<void> {
    return new Promise((resolve) => this.reconnectWaiters.push(resolve));
  }

  /** Releases everyone waiting for a reconnect (it came, or it never will). */
  wakeReconnectWaiters(): void {
    for (const wake of this.reconnectWaiters.splice(0)) wake();
  }

  /**
   * Whether bytes may be sent now. While disconnected, the client would buffer without limit, so
   * the engine bounds what it hands over during one outage.
   */
  admit(bytes: number): boolean {
    if (this.connected) return true;
    if (this.outageBytes + bytes > this.reconnectBufferBytes) {
      if (!this.outageDropLogged) {
        this.outageDropLogged = true;
        this.log.warn(
          { limit: this.reconnectBufferBytes },
          "NATS reconnect buffer full; failing sends until reconnected",
        );
      }
      return false;
    }
    this.outageBytes += bytes;
    return true;
  }

  /** The largest payload the server accepts, in bytes. */
  maxPayload(): number {
    return this.connection.info?.max_payload ?? DEFAULT_MAX_PAYLOAD;
  }

  /**
   * Sends what is buffered (acks, naks, publishes) and closes. Draining cannot finish while the
   * server is away, so it is bounded.
   */
  async drainAndClose(): Promise<void> {
    if (this.connection.isClosed()) return;
    const drained = this.connection.drain().catch(() => undefined);
    await sleep(DRAIN_GRACE_MS, drained);
    if (!this.connection.isClosed()) await this.connection.close();
  }

  private async watchStatus(): Promise<void> {
    for await (const status of this.connection.status()) {
      switch (status.type) {
        case Events.Disconnect:
          if (this.connected) {
            this.connected = false;
            this.outageBytes = 0;
            this.outageDropLogged = false;
            if (!this.closing) this.log.warn({ server: status.data }, "NATS disconnected; reconnecting");
          }
          break;
        case Events.Reconnect:
          if (!this.connected) {
            this.connected = true;
            this.log.info({ server: status.data }, "NATS reconnected");
            this.wakeReconnectWaiters();
          }
          break;
        case Events.LDM:
          this.log.warn({ server: status.data }, "NATS server entering lame duck mode");
          break;
        case Events.Error:
          this.log.error({ err: status.data }, "NATS async error");
          break;
        default:
          break;
      }
    }
  }
}
