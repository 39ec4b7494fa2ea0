import { HUFFMAN_CODE_LENGTHS, STATIC_TABLE } from "./rfc7541-tables.js";

/**
 * HPACK (RFC 7541) for the stream port's HTTP/2 (connection.ts): a decoder for the headers
 * clients send, and an encoder for the few a gRPC server answers with. The decoder is the whole
 * of the RFC, Huffman and the dynamic table included, since any client may use all of it; the
 * encoder writes every field as a literal that is never indexed, so this side keeps no table
 * (what it would save is a few bytes a stream, and a device's connection carries one stream).
 */

/** A header block that breaks RFC 7541 or the bounds: a connection error (COMPRESSION_ERROR). */
export class HpackError extends Error {}

/** A header list over the bounds: the block was decoded (the table stays in step), then refused. */
export class HeaderListTooLarge extends Error {}

/** Canonical Huffman decoding tables, built from the code lengths alone. */
const HUFFMAN = (() => {
  const maxLength = 30;
  // Symbols in code order (by length, then by symbol), and per length: the first code and the
  // index of its symbol in that order.
  const order = HUFFMAN_CODE_LENGTHS.map((length, symbol) => ({ length, symbol })).sort(
    (a, b) => a.length - b.length || a.symbol - b.symbol,
  );
  const symbols = Int16Array.from(order, (o) => o.symbol);
  const count = new Int32Array(maxLength + 1);
  for (const o of order) count[o.length]!++;
  const firstCode = new Int32Array(maxLength + 2);
  const firstIndex = new Int32Array(maxLength + 2);
  let code = 0;
  let index = 0;
  for (let length = 1; length <= maxLength; length++) {
    firstCode[length] = code;
    firstIndex[length] = index;
    code = (code + count[length]!) << 1;
    index += count[length]!;
  }
  return { symbols, count, firstCode, firstIndex, maxLength };
})();

const EOS = 256;

/** Decodes a Huffman-coded string (RFC 7541 5.2) into bytes. */
export function huffmanDecode(input: Uint8Array): Buffer {
  const { symbols, count, firstCode, firstIndex, maxLength } = HUFFMAN;
  // Every symbol takes at least 5 bits: the output is at most 8/5 of the input.
  const out = Buffer.allocUnsafe(Math.ceil((input.length * 8) / 5));
  let written = 0;
  let code = 0;
  let length = 0;
  for (const byte of input) {
    for (let bit = 7; bit >= 0; bit--) {
      code = (code << 1) | ((byte >> bit) & 1);
      length++;
      const offset = code - firstCode[length]!;
      if (offset >= 0 && offset < count[length]!) {
        const symbol = symbols[firstIndex[length]! + offset]!;
        if (symbol === EOS) throw new HpackError("a Huffman string holds EOS");
        out[written++] = symbol;
        code = 0;
        length = 0;
      } else if (length === maxLength) {
        throw new HpackError("a Huffman code no symbol has");
      }
    }
  }
  // Padding: fewer than 8 bits, all ones (the start of EOS).
  if (length > 7 || code !== (1 << length) - 1)
    throw new HpackError("Huffman padding that is not EOS's prefix");
  return out.subarray(0, written);
}

/** RFC 7541 5.1: an integer with an N-bit prefix, at `at`. */
function readInteger(block: Uint8Array, at: number, prefixBits: number): [value: number, next: number] {
  const max = (1 << prefixBits) - 1;
  if (at >= block.length) throw new HpackError("a header block that ends inside an integer");
  let value = block[at]! & max;
  let next = at + 1;
  if (value < max) return [value, next];
  let shift = 0;
  for (;;) {
    if (next >= block.length) throw new HpackError("a header block that ends inside an integer");
    const byte = block[next++]!;
    value += (byte & 0x7f) * 2 ** shift;
    shift += 7;
    // Nothing here is legitimately larger than a frame's worth of bytes.
    if (value > 0xffffff) throw new HpackError("an integer past any bound");
    if ((byte & 0x80) === 0) return [value, next];
  }
}

/** RFC 7541 5.2: a string literal, at `at`. */
function readString(block: Uint8Array, at: number): [value: string, next: number] {
  if (at >= block.length) throw new HpackError("a header block that ends before a string");
  const huffman = (block[at]! & 0x80) !== 0;
  const [length, start] = readInteger(block, at, 7);
  const end = start + length;
  if (end > block.length) throw new HpackError("a string longer than its header block");
  const raw = block.subarray(start, end);
  const bytes = huffman ? huffmanDecode(raw) : raw;
  return [Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("latin1"), end];
}

/** RFC 7541 4.1: what an entry counts against the table's size. */
const entrySize = (name: string, value: string): number => name.length + value.length + 32;

/** Bounds on one decoded header list. */
export interface HeaderListBounds {
  /** Names and values and 32 bytes a field, as SETTINGS_MAX_HEADER_LIST_SIZE counts. */
  maxBytes: number;
  /** Fields. */
  maxPairs: number;
}

/** The decoding side of one connection: its dynamic table and the size the peer may give it. */
export class HpackDecoder {
  /** Newest first, as the table is indexed (index 62 is the newest). */
  private entries: Array<[string, string]> = [];
  private size = 0;
  /** The table's size as the encoder last set it (a size update), at most maxTableSize. */
  private limit: number;

  /** `maxTableSize`: SETTINGS_HEADER_TABLE_SIZE as the peer has it now. */
  constructor(private maxTableSize: number) {
    this.limit = maxTableSize;
  }

  /**
   * Our SETTINGS_HEADER_TABLE_SIZE, once the peer acknowledged it. A smaller one empties the
   * table now: the peer's next block must open with a size update to it (RFC 7541 4.2), so no
   * later block can refer to what is dropped.
   */
  setMaxTableSize(bytes: number): void {
    this.maxTableSize = bytes;
    this.limit = Math.min(this.limit, bytes);
    this.evictTo(this.limit);
  }

  /**
   * Decodes one complete header block into its fields, in order. Throws HpackError for a block
   * that breaks the RFC (the connection cannot go on: its table may be out of step), and
   * HeaderListTooLarge, after decoding the whole block, for one over `bounds`.
   */
  decode(block: Uint8Array, bounds: HeaderListBounds): Array<[string, string]> {
    const fields: Array<[string, string]> = [];
    let listBytes = 0;
    let over = false;
    let at = 0;
    let fieldSeen = false;
    while (at < block.length) {
      const first = block[at]!;
      let name: string;
      let value: string;
      if (first & 0x80) {
        // Indexed field.
        const [index, next] = readInteger(block, at, 7);
        [name, value] = this.entry(index);
        at = next;
      } else if ((first & 0xe0) === 0x20) {
        // Dynamic table size update: only before the first field (RFC 7541 4.2).
        if (fieldSeen) throw new HpackError("a table size update after a field");
        const [size, next] = readInteger(block, at, 5);
        if (size > this.maxTableSize)
          throw new HpackError("a table size update past SETTINGS_HEADER_TABLE_SIZE");
        this.evictTo(size);
        this.limit = size;
        at = next;
        continue;
      } else {
        // Literal: with incremental indexing (01, 6-bit index), without (0000) or never (0001).
        const indexing = (first & 0xc0) === 0x40;
        const [index, afterName] = readInteger(block, at, indexing ? 6 : 4);
        let next: number;
        if (index === 0) [name, next] = readString(block, afterName);
        else [[name], next] = [this.entry(index), afterName];
        [value, at] = readString(block, next);
        if (indexing) this.insert(name, value);
      }
      fieldSeen = true;
      listBytes += entrySize(name, value);
      if (listBytes > bounds.maxBytes || fields.length >= bounds.maxPairs) over = true;
      else fields.push([name, value]);
    }
    if (over) throw new HeaderListTooLarge("header list over its bound");
    return fields;
  }

  private entry(index: number): readonly [string, string] {
    if (index === 0) throw new HpackError("index 0");
    if (index <= STATIC_TABLE.length) return STATIC_TABLE[index - 1]!;
    const entry = this.entries[index - STATIC_TABLE.length - 1];
    if (entry === undefined) throw new HpackError("an index past the dynamic table");
    return entry;
  }

  private insert(name: string, value: string): void {
    const size = entrySize(name, value);
    // An entry larger than the table empties it and is not kept (RFC 7541 4.4).
    this.evictTo(this.limit - size);
    if (size <= this.limit) {
      this.entries.unshift([name, value]);
      this.size += size;
    }
  }

  private evictTo(bytes: number): void {
    while (this.size > Math.max(0, bytes) && this.entries.length > 0) {
      const [name, value] = this.entries.pop()!;
      this.size -= entrySize(name, value);
    }
    // An emptied table keeps no array's backing store: a connection lives for hours.
    if (this.entries.length === 0) this.entries = [];
  }
}

/** RFC 7541 5.1: writes an integer with an N-bit prefix whose other bits are `flags`. */
function writeInteger(out: number[], value: number, prefixBits: number, flags: number): void {
  const max = (1 << prefixBits) - 1;
  if (value < max) {
    out.push(flags | value);
    return;
  }
  out.push(flags | max);
  let rest = value - max;
  while (rest >= 0x80) {
    out.push((rest & 0x7f) | 0x80);
    rest >>>= 7;
  }
  out.push(rest);
}

/**
 * Encodes fields as literals never indexed, names and values as raw octets (RFC 7541 6.2.3):
 * no table on this side, and nothing a proxy may store. Names must be lowercase ASCII; values
 * latin1 (what HTTP/2 fields are).
 */
export function encodeHeaders(fields: ReadonlyArray<readonly [string, string]>): Buffer {
  const out: number[] = [];
  for (const [name, value] of fields) {
    out.push(0x10);
    writeInteger(out, name.length, 7, 0);
    for (let i = 0; i < name.length; i++) out.push(name.charCodeAt(i));
    writeInteger(out, value.length, 7, 0);
    for (let i = 0; i < value.length; i++) out.push(value.charCodeAt(i) & 0xff);
  }
  return Buffer.from(out);
}
