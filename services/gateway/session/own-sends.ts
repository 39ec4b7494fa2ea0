/**
 * Most `send` frames one stream keeps track of for omit_own_sends at once. The live entry of a send
 * normally arrives within milliseconds of its append; ids whose entry went another way (a catch-up
 * read from the log, a stream that fell behind) are forgotten oldest first, which costs only an
 * echo the device drops as a duplicate.
 */
const REMEMBERED = 256;

/**
 * The stream option omit_own_sends (StreamOptionsFrame): a device that files its own sends at
 * send_ack is not pushed them back live. It remembers the client_msg_ids of the sends appended on
 * this stream, and the live path (Backlog.deliver) skips an entry of this device that carries one.
 * Only this stream's own sends are skipped: a unary Send, a send on an earlier stream or another
 * device's entry still arrives, and entries read from the log are never skipped, so the device
 * is never missing an entry it did not file itself.
 */
export class OwnSends {
  private on = false;
  /**
   * Client msg ids appended on this stream while the option was on, oldest first; made by the
   * first send (an idle stream holds no empty Set).
   */
  private ids: Set<string> | undefined;

  /** Sets the option; turning it off forgets what was remembered. */
  set enabled(on: boolean) {
    this.on = on;
    if (!on) this.ids = undefined;
  }

  get enabled(): boolean {
    return this.on;
  }

  /** A send of this stream goes to the sequencer. */
  appending(clientMsgId: string): void {
    if (!this.on) return;
    this.ids ??= new Set();
    const ids = this.ids;
    ids.add(clientMsgId);
    if (ids.size > REMEMBERED) {
      const oldest = ids.values().next().value as string;
      ids.delete(oldest);
    }
  }

  /** True when the live entry is one of this stream's sends, which the device files itself. */
  skip(senderDeviceId: string, deviceId: string, clientMsgId: string): boolean {
    if (!this.on || senderDeviceId !== deviceId || clientMsgId === "") return false;
    return this.ids?.delete(clientMsgId) ?? false;
  }
}
