// What end-to-end encryption costs a client: the SDK's own Signal layer (sdk/crypto) on on-disk
// profile stores in a temporary directory, exactly as an app runs it (every state change is
// fsynced before a call resolves). Bundles come from the SDK's in-memory key directory, filled
// with the SDK's own key generation. No server: it never encrypts or decrypts anything.
// Results and their reading: docs/benchmarks.md, "End-to-end encryption cost".
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdtemp, open, readFile, rm, stat } from "node:fs/promises";
import { cpus, loadavg, release, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { CiphertextMessageType } from "@signalapp/libsignal-client";
import { SealedContentSchema } from "../gen/switchboard/v1/content_pb.js";
import { DeviceCiphertextSchema, MessageBodySchema } from "../gen/switchboard/v1/entry_pb.js";
import { RecordDir } from "../sdk/crypto/files.js";
import {
  addressOf,
  type DeviceCiphertext,
  type DeviceRef,
  decryptAttachment,
  decryptAttachmentFile,
  encryptAttachment,
  encryptAttachmentFile,
  GroupCipher,
  generateInitialKeys,
  PairwiseCipher,
  SignalStores,
} from "../sdk/crypto/index.js";
import { MemoryKeyDirectory } from "../sdk/crypto/memory-directory.js";
import { newId } from "../services/common/ids.js";

const USAGE = `npm run bench:crypto [-- --quick]

  --quick   a smoke run: few iterations, groups up to 10 members, attachments of 1 and 8 MiB
  --help    this text
`;

const MESSAGE_BYTES = 200;
const MiB = 1024 * 1024;

interface Plan {
  /** Untimed runs before each timed loop. */
  warmup: number;
  /** Fresh recipients to open a session with. */
  setups: number;
  /** Messages of the steady-state 1:1 loops. */
  messages: number;
  /** Sends per fan-out width. */
  fanout: number;
  groupSizes: number[];
  /** Members (each with no session yet) whose first key distribution is timed, per group size. */
  distributions: (size: number) => number;
  /** Group messages encrypted (and decrypted by one recipient). */
  groupMessages: number;
  /** Pairwise sends to every member, and key rotations, per group size. */
  fullSends: (size: number) => number;
  /** Attachment sizes in bytes, with their iteration counts. */
  attachments: Array<[bytes: number, iterations: number]>;
}

const FULL: Plan = {
  warmup: 5,
  setups: 30,
  messages: 500,
  fanout: 100,
  groupSizes: [2, 10, 100, 1000],
  distributions: (size) => (size <= 10 ? 5 : size <= 100 ? 2 : 1),
  groupMessages: 200,
  fullSends: (size) => (size >= 1000 ? 3 : size >= 100 ? 10 : 30),
  attachments: [
    [MiB, 30],
    [64 * MiB, 5],
  ],
};

const QUICK: Plan = {
  warmup: 1,
  setups: 3,
  messages: 20,
  fanout: 5,
  groupSizes: [2, 10],
  distributions: () => 1,
  groupMessages: 10,
  fullSends: () => 2,
  attachments: [
    [MiB, 3],
    [8 * MiB, 1],
  ],
};

// ---------------------------------------------------------------------------------------------
// Measuring

/** Per-operation figures of a timed loop, in microseconds. */
interface Timing {
  n: number;
  median: number;
  mean: number;
  /** CPU time of the whole process per operation (user + system, every thread). */
  cpu: number;
}

const now = () => process.hrtime.bigint();
const since = (start: bigint) => Number(now() - start) / 1e3;

function summarize(samples: number[], cpuTotal: number): Timing {
  const sorted = [...samples].sort((a, b) => a - b);
  const n = sorted.length;
  const mid = Math.floor(n / 2);
  const median = n % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { n, median, mean: sorted.reduce((s, x) => s + x, 0) / n, cpu: cpuTotal / n };
}

/** fn(0..warmup-1) untimed, then fn(warmup..warmup+n-1) timed one after another. */
async function timeOps(n: number, warmup: number, fn: (i: number) => Promise<unknown>): Promise<Timing> {
  for (let i = 0; i < warmup; i++) await fn(i);
  const samples: number[] = [];
  const cpu = process.cpuUsage();
  for (let i = warmup; i < warmup + n; i++) {
    const start = now();
    await fn(i);
    samples.push(since(start));
  }
  const used = process.cpuUsage(cpu);
  return summarize(samples, used.user + used.system);
}

/** Samples gathered by hand (several phases per iteration); CPU not attributed. */
function fromSamples(samples: number[]): Timing {
  return summarize(samples, Number.NaN);
}

const us = (v: number) =>
  !Number.isFinite(v)
    ? "–"
    : v < 1000
      ? `${Math.round(v)} µs`
      : v < 1e6
        ? `${(v / 1e3).toFixed(v < 1e4 ? 2 : 1)} ms`
        : `${(v / 1e6).toFixed(2)} s`;
const perSecond = (t: Timing) => Math.round(1e6 / t.mean).toLocaleString("en-US");
const bytes = (b: number) => (b < 100_000 ? `${b.toLocaleString("en-US")} B` : `${(b / MiB).toFixed(2)} MiB`);

function table(title: string, header: string[], rows: string[][], note?: string): void {
  console.log(`\n**${title}**\n`);
  console.log(`| ${header.join(" | ")} |`);
  console.log(`|${header.map((_, i) => (i === 0 ? "---" : "---:")).join("|")}|`);
  for (const row of rows) console.log(`| ${row.join(" | ")} |`);
  if (note !== undefined) console.log(`\n${note}`);
}

// ---------------------------------------------------------------------------------------------
// Devices: the SDK's ciphers on their own profile directory

interface Device {
  ref: DeviceRef;
  stores: SignalStores;
  cipher: PairwiseCipher;
  groups: GroupCipher;
}

/** A device with its keys generated and uploaded to the directory; `prekeys` one-time keys of each kind. */
async function newDevice(root: string, directory: MemoryKeyDirectory, prekeys: number, userId?: string) {
  const ref = { userId: userId ?? newId("u"), deviceId: newId("dv") };
  const stores = await SignalStores.open(join(root, ref.deviceId));
  directory.upload(ref, await generateInitialKeys(stores, { ec: prekeys, kyber: prekeys }));
  const cipher = new PairwiseCipher(stores, ref, directory.fetcherFor(ref));
  return { ref, stores, cipher, groups: await GroupCipher.open(stores, ref) } satisfies Device;
}

/** Creates devices 8 at a time (creating one mostly waits on fsync). */
async function newDevices(count: number, make: () => Promise<Device>): Promise<Device[]> {
  const out: Device[] = [];
  while (out.length < count) {
    out.push(...(await Promise.all(Array.from({ length: Math.min(8, count - out.length) }, make))));
  }
  return out;
}

/** The MessageBody a send carries: its size is what goes on the wire, besides the frame. */
function bodyBytes(devices: DeviceCiphertext[], payload?: Uint8Array): number {
  const devicePayloads = devices.map((c) => create(DeviceCiphertextSchema, c));
  const body = create(MessageBodySchema, {
    devicePayloads,
    ...(payload === undefined ? {} : { payload, payloadType: CiphertextMessageType.SenderKey }),
  });
  return toBinary(MessageBodySchema, body).length;
}

const byDevice = (out: DeviceCiphertext[]) => new Map(out.map((c) => [c.deviceId, c]));

// ---------------------------------------------------------------------------------------------
// 1. Pairwise

async function pairwise(root: string, p: Plan, message: Uint8Array) {
  const directory = new MemoryKeyDirectory();
  const alice = await newDevice(root, directory, 1);
  const fetchBundle = directory.fetcherFor(alice.ref);

  // Session setup with recipients that never talked to Alice: bundle processing (PQXDH), the
  // first PreKey message, its decryption by the recipient (which uses up its one-time prekeys).
  const strangers = await newDevices(p.warmup + p.setups, () => newDevice(root, directory, 1));
  const phases = { bundle: [] as number[], encrypt: [] as number[], decrypt: [] as number[] };
  let preKeyBytes = 0;
  for (const [i, b] of strangers.entries()) {
    const { bundles } = await fetchBundle(b.ref.userId, [b.ref.deviceId]);
    let start = now();
    await alice.cipher.openSession(b.ref, bundles[0]!);
    const bundle = since(start);
    start = now();
    const [first] = await alice.cipher.encrypt(message, [b.ref]);
    const encrypt = since(start);
    start = now();
    await b.cipher.decrypt(alice.ref, first!);
    const decrypt = since(start);
    preKeyBytes = first!.ciphertext.length;
    if (i < p.warmup) continue;
    phases.bundle.push(bundle);
    phases.encrypt.push(encrypt);
    phases.decrypt.push(decrypt);
  }
  const setupTotal = phases.bundle.map((b, i) => b + phases.encrypt[i]! + phases.decrypt[i]!);

  // Steady state: an acknowledged session (Bob answered once), then messages one way...
  const bob = strangers[0]!;
  const [hello] = await bob.cipher.encrypt(message, [alice.ref]);
  await alice.cipher.decrypt(bob.ref, hello!);
  const sent: DeviceCiphertext[] = [];
  const encrypt = await timeOps(p.messages, p.warmup, async () => {
    sent.push(...(await alice.cipher.encrypt(message, [bob.ref])));
  });
  const decrypt = await timeOps(p.messages, p.warmup, (i) => bob.cipher.decrypt(alice.ref, sent[i]!));
  // The floor under every state change: one durable write of a session record by the stores.
  const record = (await alice.stores.sessions.getSession(addressOf(bob.ref)))!.serialize();
  const records = await RecordDir.open(join(root, "floor"));
  const write = await timeOps(p.messages, p.warmup, () => records.put([["session", record]]));
  // ...and turn by turn, where every message after a reply steps the Diffie-Hellman ratchet.
  const turns = { encrypt: [] as number[], decrypt: [] as number[] };
  for (let i = 0; i < p.warmup + p.messages; i++) {
    const [from, to] = i % 2 === 0 ? [alice, bob] : [bob, alice];
    let start = now();
    const [c] = await from.cipher.encrypt(message, [to.ref]);
    const e = since(start);
    start = now();
    await to.cipher.decrypt(from.ref, c!);
    if (i < p.warmup) continue;
    turns.encrypt.push(e);
    turns.decrypt.push(since(start));
  }

  // One 1:1 send to N devices (the peer's and our own other devices): one ciphertext each.
  const peer = newId("u");
  const devices = await newDevices(8, () => newDevice(root, directory, 1, peer));
  const firstSend = await alice.cipher.encrypt(
    message,
    devices.map((d) => d.ref),
  );
  const firstCopies = byDevice(firstSend);
  for (const d of devices) {
    await d.cipher.decrypt(alice.ref, firstCopies.get(d.ref.deviceId)!);
    const [reply] = await d.cipher.encrypt(message, [alice.ref]);
    await alice.cipher.decrypt(d.ref, reply!);
  }
  const fanout = [];
  for (const n of [1, 2, 4, 8]) {
    const to = devices.slice(0, n).map((d) => d.ref);
    let last: DeviceCiphertext[] = [];
    const t = await timeOps(p.fanout, p.warmup, async () => {
      last = await alice.cipher.encrypt(message, to);
    });
    const first = firstSend.filter((c) => to.some((d) => d.deviceId === c.deviceId));
    fanout.push({ n, t, bytes: bodyBytes(last), firstBytes: bodyBytes(first) });
  }
  return {
    setup: {
      bundle: fromSamples(phases.bundle),
      encrypt: fromSamples(phases.encrypt),
      decrypt: fromSamples(phases.decrypt),
      total: fromSamples(setupTotal),
      preKeyBytes,
    },
    encrypt,
    decrypt,
    write,
    recordBytes: record.length,
    turns: { encrypt: fromSamples(turns.encrypt), decrypt: fromSamples(turns.decrypt) },
    whisperBytes: sent[0]!.ciphertext.length,
    fanout,
  };
}

function reportPairwise(r: Awaited<ReturnType<typeof pairwise>>): void {
  const row = (name: string, t: Timing, size = "") => [
    name,
    String(t.n),
    us(t.median),
    us(t.mean),
    perSecond(t),
    us(t.cpu),
    size,
  ];
  const s = r.setup;
  table(
    `Pairwise, ${MESSAGE_BYTES}-byte message`,
    ["operation", "n", "median", "mean", "ops/s", "CPU/op", "ciphertext"],
    [
      row("session setup: process the bundle (PQXDH)", s.bundle),
      row("session setup: first encrypt (PreKey message)", s.encrypt, bytes(s.preKeyBytes)),
      row("session setup: first decrypt (recipient; uses its one-time prekeys)", s.decrypt),
      row("**session setup, all three**", s.total),
      row("store: one durable session record write (the floor)", r.write, `record ${bytes(r.recordBytes)}`),
      row("steady encrypt, one way", r.encrypt, bytes(r.whisperBytes)),
      row("steady decrypt, one way", r.decrypt),
      row("encrypt, turn by turn (a ratchet step each)", r.turns.encrypt),
      row("decrypt, turn by turn", r.turns.decrypt),
    ],
    "ops/s = 1 / mean, one operation at a time. CPU/op: the process's user + system CPU over the loop.",
  );
  table(
    "A 1:1 send to N devices (established sessions)",
    ["devices", "n", "median", "per device", "sends/s", "CPU/send", "MessageBody", "first send (PreKey)"],
    r.fanout.map(({ n, t, bytes: b, firstBytes }) => [
      String(n),
      String(t.n),
      us(t.median),
      us(t.median / n),
      perSecond(t),
      us(t.cpu),
      bytes(b),
      bytes(firstBytes),
    ]),
  );
}

// ---------------------------------------------------------------------------------------------
// 2. Groups with sender keys

/**
 * Hands our current sender key to the devices lacking it, as the SDK's group send does: the
 * distribution message inside a SealedContent, encrypted pairwise per device (sessions opened
 * from bundles where there are none), then recorded as distributed.
 */
async function handOutKey(from: Device, groupId: string, to: DeviceRef[]): Promise<DeviceCiphertext[]> {
  const { key, message } = await from.groups.distributionMessage(groupId);
  const need = from.groups.devicesWithoutKey(groupId, to);
  const sealed = toBinary(
    SealedContentSchema,
    create(SealedContentSchema, { senderKeyDistribution: message }),
  );
  const out = await from.cipher.encrypt(sealed, need);
  await from.groups.markDistributed(groupId, need, key.epoch);
  return out;
}

/** Decrypts a pairwise message carrying a sender key and takes the key in. */
async function takeKey(to: Device, groupId: string, from: DeviceRef, c: DeviceCiphertext): Promise<void> {
  const content = fromBinary(SealedContentSchema, await to.cipher.decrypt(from, c));
  await to.groups.processDistribution(groupId, from, content.senderKeyDistribution);
}

async function groupOfSize(root: string, p: Plan, size: number, message: Uint8Array) {
  const dir = await mkdtemp(join(root, `group-${size}-`));
  const directory = new MemoryKeyDirectory();
  const groupId = newId("g");
  const count = p.distributions(size);
  const others = await newDevices(size - 1, () => newDevice(dir, directory, count));
  const refs = others.map((d) => d.ref);
  const senders = await newDevices(count, () => newDevice(dir, directory, 1));
  const member = senders[0]!;

  // First distribution of a member with no sessions: G - 1 bundles, sessions, PreKey messages.
  // Each recipient decrypts it and takes the key in.
  const distribute: number[] = [];
  const take: number[] = [];
  let distributeCpu = 0;
  let distributeBytes = 0;
  for (const sender of senders) {
    const cpu = process.cpuUsage();
    const start = now();
    const out = await handOutKey(sender, groupId, refs);
    distribute.push(since(start));
    const used = process.cpuUsage(cpu);
    distributeCpu += used.user + used.system;
    distributeBytes = bodyBytes(out);
    const copies = byDevice(out);
    for (const d of others) {
      const start = now();
      await takeKey(d, groupId, sender.ref, copies.get(d.ref.deviceId)!);
      take.push(since(start));
    }
  }

  // Every other member hands its own key to our member (over the session just opened, so these
  // are Whisper messages): what the member takes in once per epoch of everybody else.
  const incoming = new Map<string, DeviceCiphertext>();
  for (const d of others) incoming.set(d.ref.deviceId, (await handOutKey(d, groupId, [member.ref]))[0]!);
  const intake = await timeOps(others.length, 0, (i) =>
    takeKey(member, groupId, refs[i]!, incoming.get(refs[i]!.deviceId)!),
  );

  // Steady state: one sender-key ciphertext per message, whatever the size; one reader decrypts.
  const sent: Uint8Array[] = [];
  const encrypt = await timeOps(p.groupMessages, p.warmup, async () => {
    sent.push((await member.groups.encrypt(groupId, message)).ciphertext);
  });
  const reader = others[0]!;
  const decrypt = await timeOps(p.groupMessages, p.warmup, (i) =>
    reader.groups.decrypt(groupId, member.ref, sent[i]!),
  );
  // The server checks a group send against every member device: one entry per device, empty
  // ciphertext for the devices that hold the key.
  const holders = others.map((d) => ({
    userId: d.ref.userId,
    deviceId: d.ref.deviceId,
    registrationId: d.stores.registrationId,
    type: 0,
    ciphertext: new Uint8Array(),
  }));
  const groupBytes = bodyBytes(holders, sent[0]!);

  // The alternative: the same message encrypted pairwise for every other member device.
  let pairwiseBytes = 0;
  const pairwise = await timeOps(p.fullSends(size), 1, async () => {
    pairwiseBytes = bodyBytes(await member.cipher.encrypt(message, refs));
  });

  // A membership change: a new key (new distribution id) handed out over the existing sessions.
  let rotationBytes = 0;
  const rotation = await timeOps(p.fullSends(size), 1, async () => {
    await member.groups.rotate(groupId);
    rotationBytes = bodyBytes(await handOutKey(member, groupId, refs));
  });

  const fileSize = async (name: string) => (await stat(join(member.stores.dir, name))).size;
  const stateFiles = `${bytes(await fileSize("groups.json"))} / ${bytes(await fileSize("identities.json"))}`;
  await rm(dir, { recursive: true, force: true });
  return {
    size,
    stateFiles,
    distribute: summarize(distribute, distributeCpu),
    distributeBytes,
    take: fromSamples(take),
    intake,
    encrypt,
    decrypt,
    groupBytes,
    ciphertextBytes: sent[0]!.length,
    pairwise,
    pairwiseBytes,
    rotation,
    rotationBytes,
  };
}

function reportGroups(rows: Array<Awaited<ReturnType<typeof groupOfSize>>>): void {
  table(
    "Sender keys: handing out a member's key (once per epoch), 1 device per member",
    [
      "members",
      "first distribution (n)",
      "per device",
      "CPU",
      "bytes",
      "one recipient takes it in",
      "taking in everyone's keys",
      "rotation (n)",
      "rotation bytes",
    ],
    rows.map((r) => [
      String(r.size),
      `${us(r.distribute.median)} (${r.distribute.n})`,
      us(r.distribute.median / (r.size - 1)),
      us(r.distribute.cpu),
      bytes(r.distributeBytes),
      us(r.take.median),
      us(r.intake.mean * r.intake.n),
      `${us(r.rotation.median)} (${r.rotation.n})`,
      bytes(r.rotationBytes),
    ]),
    "First distribution: fetch G - 1 bundles, open G - 1 sessions, encrypt the key for each (PreKey " +
      "messages). One recipient: decrypt that PreKey message and store the key (median over all). " +
      "Everyone's keys: the member decrypts and stores the other G - 1 members' keys (Whisper " +
      "messages), in all. Rotation: a new key, encrypted over the existing sessions for G - 1 devices. " +
      "Bytes: the MessageBody carrying the pairwise copies (the SDK splits it into several sends " +
      "above the 64 KiB payload limit).",
  );
  table(
    `Sender keys: per ${MESSAGE_BYTES}-byte message, vs. encrypting it pairwise for every device`,
    [
      "members",
      "group encrypt (n)",
      "ops/s",
      "CPU/op",
      "decrypt, per recipient",
      "MessageBody",
      "of which ciphertext",
      "pairwise: encrypt (n)",
      "pairwise: MessageBody",
      "groups.json / identities.json",
    ],
    rows.map((r) => [
      String(r.size),
      `${us(r.encrypt.median)} (${r.encrypt.n})`,
      perSecond(r.encrypt),
      us(r.encrypt.cpu),
      us(r.decrypt.median),
      bytes(r.groupBytes),
      bytes(r.ciphertextBytes),
      `${us(r.pairwise.median)} (${r.pairwise.n})`,
      bytes(r.pairwiseBytes),
      r.stateFiles,
    ]),
    "The group MessageBody is the sender-key ciphertext plus one entry (device id, registration id, " +
      "no ciphertext) per member device, which the server checks against the membership. Pairwise: " +
      "one Whisper ciphertext per device over established sessions, measured, not extrapolated. " +
      "Last column: the sending member's state files at the end, rewritten whole (and fsynced) by " +
      "every group encrypt and every key taken in (groups.json), every new identity (identities.json).",
  );
}

// ---------------------------------------------------------------------------------------------
// 3. Attachments

async function attachments(root: string, p: Plan, mark: (section: string) => void) {
  // Streaming first, from files written in 1 MiB chunks, so its memory is not hidden by the
  // in-memory runs' buffers (the peak RSS only grows).
  const files = new Map<number, { input: string; encrypt: Timing; decrypt: Timing }>();
  for (const [size, iterations] of p.attachments) {
    const input = join(root, `attachment-${size}`);
    const handle = await open(input, "w");
    for (let left = size; left > 0; left -= MiB) await handle.write(randomBytes(Math.min(MiB, left)));
    await handle.close();
    let secrets = await encryptAttachmentFile(input, `${input}.enc`);
    const encrypt = await timeOps(iterations, 1, async () => {
      secrets = await encryptAttachmentFile(input, `${input}.enc`);
    });
    const decrypt = await timeOps(iterations, 1, () =>
      decryptAttachmentFile(`${input}.enc`, `${input}.out`, secrets.key, secrets.digest),
    );
    files.set(size, { input, encrypt, decrypt });
  }
  mark("attachments, streaming");
  const rows = [];
  for (const [size, iterations] of p.attachments) {
    const file = files.get(size)!;
    const plain = await readFile(file.input);
    let enc = encryptAttachment(plain);
    const memEncrypt = await timeOps(iterations, 1, async () => {
      enc = encryptAttachment(plain);
    });
    const memDecrypt = await timeOps(iterations, 1, async () =>
      decryptAttachment(enc.ciphertext, enc.key, enc.digest),
    );
    rows.push({ size, memEncrypt, memDecrypt, fileEncrypt: file.encrypt, fileDecrypt: file.decrypt });
  }
  mark("attachments, in memory");
  return rows;
}

function reportAttachments(rows: Awaited<ReturnType<typeof attachments>>): void {
  const rate = (size: number, t: Timing) => `${(size / t.median).toFixed(0)} MB/s`;
  const cells = (size: number, t: Timing) => [`${us(t.median)} (${t.n})`, rate(size, t)];
  table(
    "Attachments (AES-256-GCM + SHA-256 digest)",
    [
      "size",
      "memory: encrypt",
      "MB/s",
      "memory: decrypt",
      "MB/s",
      "file: encrypt",
      "MB/s",
      "file: decrypt",
      "MB/s",
    ],
    rows.map((r) => [
      `${r.size / MiB} MiB`,
      ...cells(r.size, r.memEncrypt),
      ...cells(r.size, r.memDecrypt),
      ...cells(r.size, r.fileEncrypt),
      ...cells(r.size, r.fileDecrypt),
    ]),
    "Median (n). MB/s = 10^6 plaintext bytes per second. Decrypt checks the digest first, then " +
      "decrypts and authenticates. File to file: streamed, written to a temporary file, fsynced, " +
      "renamed; the input is in the page cache (just written).",
  );
}

// ---------------------------------------------------------------------------------------------

function machine(): string[] {
  const info = readFileSync("/proc/cpuinfo", "utf8");
  const field = (name: string) => new RegExp(`^${name}\\s*: (.*)$`, "m").exec(info)?.[1] ?? "?";
  const libsignal = JSON.parse(
    readFileSync(
      new URL("../node_modules/@signalapp/libsignal-client/package.json", import.meta.url),
      "utf8",
    ),
  ) as { version: string };
  return [
    `CPU: ${cpus().length} × ${field("model name")} (family ${field("cpu family")}, model ${field("model")})`,
    `Node ${process.version}, libsignal-client ${libsignal.version}, Linux ${release()}`,
  ];
}

/** CPU seconds the whole machine spent busy so far (/proc/stat, USER_HZ = 100). */
function machineBusySeconds(): number {
  const [, ...ticks] = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/);
  const [user, nice, system, , , irq, softirq, steal] = ticks.map(Number) as number[];
  return (user! + nice! + system! + irq! + softirq! + steal!) / 100;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { quick: { type: "boolean", default: false }, help: { type: "boolean", default: false } },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const p = values.quick ? QUICK : FULL;
  const root = await mkdtemp(join(tmpdir(), "sb-bench-crypto-"));
  const load = () =>
    loadavg()
      .map((l) => l.toFixed(2))
      .join(" ");
  console.log(
    `# End-to-end encryption cost${values.quick ? " (--quick: a smoke run, not for numbers)" : ""}\n`,
  );
  for (const line of [...machine(), `profiles in ${root}`, `load average at start: ${load()}`])
    console.log(`- ${line}`);
  const memory: string[][] = [];
  const mark = (section: string) => {
    const mib = (kib: number) => `${(kib / 1024).toFixed(0)} MiB`;
    memory.push([section, mib(process.memoryUsage().rss / 1024), mib(process.resourceUsage().maxRSS)]);
  };
  const started = now();
  const busy = machineBusySeconds();
  const cpuAtStart = process.cpuUsage();
  try {
    const message = new Uint8Array(randomBytes(MESSAGE_BYTES));
    reportPairwise(await pairwise(root, p, message));
    mark("pairwise");
    const groups = [];
    for (const size of p.groupSizes) {
      groups.push(await groupOfSize(root, p, size, message));
      mark(`groups of ${size}`);
    }
    reportGroups(groups);
    reportAttachments(await attachments(root, p, mark));
  } finally {
    await rm(root, { recursive: true, force: true });
  }
  table("Memory (RSS)", ["after", "now", "peak so far"], memory);
  const wall = since(started) / 1e6;
  const own = process.cpuUsage(cpuAtStart);
  const other = (machineBusySeconds() - busy - (own.user + own.system) / 1e6) / wall;
  console.log(`\n- load average at end: ${load()}; took ${wall.toFixed(0)} s`);
  console.log(`- CPU used by other programs meanwhile: ${(other * 100).toFixed(0)} % (100 % = one core)`);
}

await main();
