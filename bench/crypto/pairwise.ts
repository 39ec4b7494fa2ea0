import { join } from "node:path";
import { addressOf, type DeviceCiphertext } from "../../sdk/crypto/index.js";
import { MemoryKeyDirectory } from "../../sdk/crypto/memory-directory.js";
import { FileStorage } from "../../sdk/storage/file.js";
import { RecordSet } from "../../sdk/storage/records.js";
import { newId } from "../../services/common/ids.js";
import { bodyBytes, byDevice, newDevice, newDevices } from "./devices.js";
import { bytes, fromSamples, now, perSecond, since, type Timing, table, timeOps, us } from "./measure.js";
import { MESSAGE_BYTES, type Plan } from "./plan.js";

/** 1. Pairwise sessions: setup, steady-state encrypt and decrypt, 1:1 fan-out to 1-8 devices. */

export async function pairwise(root: string, p: Plan, message: Uint8Array) {
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
  const records = await RecordSet.open(new FileStorage(join(root, "floor")), "records/");
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

export function reportPairwise(r: Awaited<ReturnType<typeof pairwise>>): void {
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
