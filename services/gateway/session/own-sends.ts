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
   * first send (an idle stream holds no empty array). An array, not a Set: it holds the few
   * sends in flight, each found by a short scan, and its backing store stays put while ids come
   * and go, where a Set's add and delete rehash it into a new table every few sends. Those tables
   * lived long enough to be promoted: 5-7 % of the server's promoted bytes at 5,000 msgs/s
   * (docs/benchmarks.md, thirty-third pass).
   */
  private ids: string[] | undefined;

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
    this.ids ??= [];
    const ids = this.ids;
    // A retry of a send still remembered is remembered once.
    if (ids.includes(clientMsgId)) return;
    ids.push(clientMsgId);
    if (ids.length > REMEMBERED) ids.shift();
  }

  /** True when the live entry is one of this stream's sends, which the device files itself. */
  skip(senderDeviceId: string, deviceId: string, clientMsgId: string): boolean {
    const ids = this.ids;
    if (!this.on || ids === undefined || senderDeviceId !== deviceId || clientMsgId === "") return false;
    const at = ids.indexOf(clientMsgId);
    if (at < 0) return false;
    // Moved down in place: splice would allocate an array of what it removed.
    ids.copyWithin(at, at + 1);
    ids.pop();
    return true;
  }
}
