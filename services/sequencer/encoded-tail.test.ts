import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  EncodedTail,
  MIN_BUFFER_BYTES,
  OFFSET_BYTES,
  REPLACED_OVERHEAD_BYTES,
  TAIL_OVERHEAD_BYTES,
} from "./encoded-tail.js";

/** An entry's stand-in: n bytes, each the seq's low byte. */
function bytesOf(seq: number, n: number): Uint8Array {
  return new Uint8Array(n).fill(seq & 0xff);
}

function filled(from: number, to: number, n: number): EncodedTail {
  const tail = new EncodedTail();
  for (let seq = from; seq <= to; seq++) tail.push(seq, bytesOf(seq, n));
  return tail;
}

describe("EncodedTail", () => {
  it("reads back each entry's bytes by seq, and after a seq, a limited number at a time", () => {
    const tail = filled(5, 14, 30);
    assert.equal(tail.length, 10);
    assert.equal(tail.first, 5);
    assert.deepEqual(tail.at(7), bytesOf(7, 30));
    assert.equal(tail.at(4), undefined);
    assert.equal(tail.at(15), undefined);
    assert.deepEqual(
      tail.after(10).map((b) => b[0]),
      [11, 12, 13, 14],
    );
    assert.deepEqual(
      tail.after(0, 3).map((b) => b[0]),
      [5, 6, 7],
    );
    assert.deepEqual(tail.after(14), []);
  });

  it("hands out copies, which stay what they were however the buffer moves", () => {
    const tail = filled(1, 3, 100);
    const early = tail.at(2)!;
    assert.equal(early.buffer.byteLength, 100, "a copy holds nothing of the buffer");
    // Growth moves the live entries to a new buffer; dropping and compacting moves them again.
    for (let seq = 4; seq <= 50; seq++) tail.push(seq, bytesOf(seq, 100));
    tail.drop(40);
    tail.compact();
    assert.deepEqual(early, bytesOf(2, 100));
    assert.deepEqual(tail.at(45), bytesOf(45, 100));
    early.fill(0);
    assert.deepEqual(tail.at(45), bytesOf(45, 100));
  });

  it("grows to twice what it holds, and counts its buffer whole", () => {
    const tail = new EncodedTail();
    assert.equal(tail.bytes, 0);
    tail.push(1, bytesOf(1, 1000));
    assert.equal(tail.bytes, TAIL_OVERHEAD_BYTES + 2000 + OFFSET_BYTES);
    tail.push(2, bytesOf(2, 1000));
    assert.equal(tail.bytes, TAIL_OVERHEAD_BYTES + 2000 + 2 * OFFSET_BYTES, "it fit");
    tail.push(3, bytesOf(3, 1000));
    assert.equal(tail.bytes, TAIL_OVERHEAD_BYTES + 6000 + 3 * OFFSET_BYTES, "moved to twice the live bytes");
    const small = filled(1, 1, 10);
    assert.equal(small.bytes, TAIL_OVERHEAD_BYTES + MIN_BUFFER_BYTES + OFFSET_BYTES);
  });

  it("drops the oldest without a copy, gives the memory back when compacted or emptied", () => {
    const tail = filled(1, 100, 100);
    const full = tail.bytes;
    tail.drop(90);
    assert.equal(tail.first, 91);
    assert.equal(tail.length, 10);
    assert.equal(tail.bytes, full - 90 * OFFSET_BYTES, "dropped entries' bytes stay until the buffer moves");
    tail.compact();
    assert.equal(tail.bytes, TAIL_OVERHEAD_BYTES + 1000 + 10 * OFFSET_BYTES);
    assert.deepEqual(
      tail.after(0).map((b) => b[0]),
      [91, 92, 93, 94, 95, 96, 97, 98, 99, 100],
    );
    tail.compact();
    assert.equal(tail.bytes, TAIL_OVERHEAD_BYTES + 1000 + 10 * OFFSET_BYTES, "nothing to give back twice");
    tail.drop(1000);
    assert.equal(tail.length, 0);
    assert.equal(tail.first, undefined);
    assert.equal(tail.bytes, 0);
    tail.push(500, bytesOf(500, 10));
    assert.equal(tail.first, 500, "an emptied tail starts again at its next entry");
  });

  it("keeps a replacement beside the buffer, counted until its entry leaves", () => {
    const tail = filled(1, 5, 20);
    const before = tail.bytes;
    const reader = tail.at(3)!;
    const tomb = new Uint8Array(64).fill(0xee);
    tail.replace(3, tomb.subarray(0, 40));
    assert.equal(tail.bytes, before + REPLACED_OVERHEAD_BYTES + 40);
    assert.deepEqual(tail.at(3), new Uint8Array(40).fill(0xee));
    assert.equal(tail.at(3)!.buffer.byteLength, 40, "its own bytes, not the caller's buffer");
    const other = filled(1, 1, 20);
    const buffer = Buffer.alloc(100, 0xdd);
    other.replace(1, buffer.subarray(10, 30));
    buffer.fill(0);
    assert.deepEqual(other.at(1), new Uint8Array(20).fill(0xdd), "a Buffer's bytes copied, not viewed");
    assert.deepEqual(reader, bytesOf(3, 20), "what was read before is unchanged");
    assert.deepEqual(
      tail.after(2, 2).map((b) => b.length),
      [40, 20],
    );
    tail.replace(3, new Uint8Array(10));
    assert.equal(tail.bytes, before + REPLACED_OVERHEAD_BYTES + 10, "replaced again: counted once");
    tail.replace(9, new Uint8Array(10));
    assert.equal(tail.at(9), undefined, "an entry the tail does not hold is not added");
    tail.drop(3);
    assert.equal(tail.bytes, before - 3 * OFFSET_BYTES, "the replacement went with its entry");
  });

  it("starts afresh at a seq that does not follow (the tail is a cache)", () => {
    const tail = filled(1, 3, 10);
    tail.push(7, bytesOf(7, 10));
    assert.equal(tail.first, 7);
    assert.equal(tail.length, 1);
    assert.equal(tail.at(2), undefined);
  });

  it("holds entries of every size in order through many growths and drops", () => {
    const tail = new EncodedTail();
    const sizes = (seq: number) => 1 + ((seq * 7919) % 3000);
    for (let seq = 1; seq <= 2000; seq++) {
      tail.push(seq, bytesOf(seq, sizes(seq)));
      if (tail.length > 256) tail.drop(tail.length - 256);
      if (seq % 97 === 0) tail.compact();
    }
    assert.equal(tail.first, 1745);
    const all = tail.after(0);
    assert.equal(all.length, 256);
    for (const [i, b] of all.entries()) assert.deepEqual(b, bytesOf(1745 + i, sizes(1745 + i)));
    const live = all.reduce((n, b) => n + b.length, 0);
    tail.compact();
    assert.ok(tail.bytes <= TAIL_OVERHEAD_BYTES + 2 * live + 256 * OFFSET_BYTES, `${tail.bytes} for ${live}`);
    assert.deepEqual(tail.at(2000), bytesOf(2000, sizes(2000)));
  });
});
