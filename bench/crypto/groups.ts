import { mkdtemp, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { SealedContentSchema } from "../../gen/switchboard/v1/content_pb.js";
import type { DeviceCiphertext, DeviceRef } from "../../sdk/crypto/index.js";
import { MemoryKeyDirectory } from "../../sdk/crypto/memory-directory.js";
import { newId } from "../../services/common/ids.js";
import { bodyBytes, byDevice, type Device, newDevice, newDevices } from "./devices.js";
import { bytes, fromSamples, now, perSecond, since, summarize, table, timeOps, us } from "./measure.js";
import { MESSAGE_BYTES, type Plan } from "./plan.js";

/** 2. Groups with sender keys: key distribution, taking keys in, rotation, group messages. */

/**
 * Hands our current sender key to the devices lacking it, as the SDK's group send does: the
 * distribution message inside a SealedContent, encrypted pairwise per device (sessions opened
 * from bundles where there are none), then recorded as distributed.
 */
export async function handOutKey(
  from: Device,
  groupId: string,
  to: DeviceRef[],
): Promise<DeviceCiphertext[]> {
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
export async function takeKey(
  to: Device,
  groupId: string,
  from: DeviceRef,
  c: DeviceCiphertext,
): Promise<void> {
  const content = fromBinary(SealedContentSchema, await to.cipher.decrypt(from, c));
  await to.groups.processDistribution(groupId, from, content.senderKeyDistribution);
}

export async function groupOfSize(root: string, p: Plan, size: number, message: Uint8Array) {
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

  const fileSize = async (name: string) => (await stat(join(member.stores.location, name))).size;
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

export function reportGroups(rows: Array<Awaited<ReturnType<typeof groupOfSize>>>): void {
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
