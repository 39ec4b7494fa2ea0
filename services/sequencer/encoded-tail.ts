/**
 * A conversation's recent entries, each as its protobuf encoding, packed one after another in
 * one buffer. The sequencer keeps such a tail for every active conversation for seconds, long
 * enough for what it holds to be copied into the old generation and marked by every full
 * collection after. Kept as entry objects, an entry was a dozen heap objects and a copy of its
 * payload; kept as one buffer each, two heap objects and an allocation outside the heap, about
 * 900 bytes of RSS for an entry of 200 bytes (bench/hot-state-memory.ts). Packed, an entry costs
 * its bytes and a number.
 *
 * Bytes once written are never written again, so a view handed out before stays what it was:
 * the buffer grows by moving what is live into a new one, a replacement goes beside it (a
 * tombstone may be longer than what it replaces, and a reader may still hold the original), and
 * reads hand out copies, which keep nothing of the buffer alive.
 */

/** The smallest buffer a tail allocates: a conversation with a message or two holds no more. */
export const MIN_BUFFER_BYTES = 512;
/**
 * What a tail holds besides its entries' bytes: the buffer's two heap objects, its record and
 * the allocator's header outside the heap, the object itself and its arrays.
 */
export const TAIL_OVERHEAD_BYTES = 256;
/** Per entry: its offset in the list of offsets, and as much again of the list's spare room. */
export const OFFSET_BYTES = 16;
/** Per replaced entry: the map's slot, the replacement's buffer objects and its allocation. */
export const REPLACED_OVERHEAD_BYTES = 512;

export class EncodedTail {
  /** The seq of the oldest entry (meaningful while the tail holds any). */
  private firstSeq = 0;
  private buffer: Uint8Array | undefined;
  /** Where each entry starts in the buffer; the last ends at `used`. */
  private starts: number[] = [];
  private used = 0;
  /** Entries replaced since they were added (tombstones), by seq. */
  private replaced: Map<number, Uint8Array> | undefined;
  private replacedBytes = 0;

  /** How many entries the tail holds. */
  get length(): number {
    return this.starts.length;
  }

  /** The seq of the oldest entry, or undefined when the tail is empty. */
  get first(): number | undefined {
    return this.starts.length === 0 ? undefined : this.firstSeq;
  }

  /** The bytes the tail holds: its buffer whole (used or not), offsets, replacements. */
  get bytes(): number {
    if (this.buffer === undefined) return 0;
    return (
      TAIL_OVERHEAD_BYTES + this.buffer.byteLength + this.starts.length * OFFSET_BYTES + this.replacedBytes
    );
  }

  /**
   * Adds the entry after the newest. Seqs are contiguous; one that is not the next starts the
   * tail afresh (never expected: the tail is a cache, and reads before its first seq go to the
   * store).
   */
  push(seq: number, encoded: Uint8Array): void {
    if (this.starts.length > 0 && seq !== this.firstSeq + this.starts.length) this.drop(this.starts.length);
    if (this.starts.length === 0) {
      this.firstSeq = seq;
      this.used = 0;
    }
    if (this.buffer === undefined || this.used + encoded.byteLength > this.buffer.byteLength)
      this.moveTo(2 * (this.liveBytes() + encoded.byteLength));
    const buffer = this.buffer as Uint8Array;
    buffer.set(encoded, this.used);
    this.starts.push(this.used);
    this.used += encoded.byteLength;
  }

  /** The entry's bytes at seq, if the tail holds it: a copy, or a replacement's own buffer. */
  at(seq: number): Uint8Array | undefined {
    const i = seq - this.firstSeq;
    if (i < 0 || i >= this.starts.length) return undefined;
    return this.copy(i);
  }

  /** Copies of the entries' bytes with seq > after, at most limit of them, oldest first. */
  after(after: number, limit = this.starts.length): Uint8Array[] {
    const from = Math.max(0, after + 1 - this.firstSeq);
    const to = Math.min(this.starts.length, from + limit);
    const out: Uint8Array[] = [];
    for (let i = from; i < to; i++) out.push(this.copy(i));
    return out;
  }

  /** Replaces the entry at seq, if the tail holds it. */
  replace(seq: number, encoded: Uint8Array): void {
    const i = seq - this.firstSeq;
    if (i < 0 || i >= this.starts.length) return;
    this.replaced ??= new Map();
    const before = this.replaced.get(seq);
    if (before !== undefined) this.replacedBytes -= REPLACED_OVERHEAD_BYTES + before.byteLength;
    // A copy (a Buffer's slice would be a view): the caller's bytes may be a view into more.
    this.replaced.set(seq, new Uint8Array(encoded));
    this.replacedBytes += REPLACED_OVERHEAD_BYTES + encoded.byteLength;
  }

  /**
   * Drops the count oldest entries. Their bytes stay in the buffer until it next moves (when it
   * is full, or at compact), so dropping one at a time costs no copy.
   */
  drop(count: number): void {
    if (count <= 0) return;
    count = Math.min(count, this.starts.length);
    this.starts.splice(0, count);
    this.firstSeq += count;
    if (this.replaced !== undefined) {
      for (const [seq, bytes] of this.replaced) {
        if (seq >= this.firstSeq) continue;
        this.replaced.delete(seq);
        this.replacedBytes -= REPLACED_OVERHEAD_BYTES + bytes.byteLength;
      }
      if (this.replaced.size === 0) this.replaced = undefined;
    }
    if (this.starts.length === 0) this.release();
  }

  /** Gives back what dropped entries left in the buffer: after a drop meant to free memory. */
  compact(): void {
    if (this.buffer === undefined) return;
    const live = this.liveBytes();
    // A buffer up to twice what it holds is what growth leaves anyway.
    if (this.buffer.byteLength > Math.max(MIN_BUFFER_BYTES, 2 * live)) this.moveTo(live);
  }

  private liveBytes(): number {
    return this.starts.length === 0 ? 0 : this.used - (this.starts[0] as number);
  }

  /** Moves the live entries to the start of a new buffer of at least `capacity` bytes. */
  private moveTo(capacity: number): void {
    const base = this.starts.length === 0 ? this.used : (this.starts[0] as number);
    const next = new Uint8Array(Math.max(MIN_BUFFER_BYTES, capacity));
    if (this.buffer !== undefined) next.set(this.buffer.subarray(base, this.used));
    for (let i = 0; i < this.starts.length; i++) this.starts[i] = (this.starts[i] as number) - base;
    this.used -= base;
    this.buffer = next;
  }

  private release(): void {
    this.buffer = undefined;
    this.starts = [];
    this.used = 0;
  }

  private copy(i: number): Uint8Array {
    const replaced = this.replaced?.get(this.firstSeq + i);
    if (replaced !== undefined) return replaced;
    const start = this.starts[i] as number;
    const end = i + 1 < this.starts.length ? (this.starts[i + 1] as number) : this.used;
    return (this.buffer as Uint8Array).slice(start, end);
  }
}
