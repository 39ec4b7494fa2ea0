// A small app on the installed SDK package, as a user would write it: plain JavaScript, no
// transpiler, importing "@switchboard/sdk" from its own node_modules. Two devices (two users)
// register, open a direct conversation, and one sends the other an end-to-end encrypted message.
//
//   node app.mjs <serverUrl> <files|memory> [<profiles dir>]
//
// Prints "received: <text> (encrypted)" and exits 0, or prints why and exits 1. Every wait has a
// deadline: the whole run is given 60 s.
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { MemoryStorage, SwitchboardClient } from "@switchboard/sdk";

const [serverUrl, mode, dir] = process.argv.slice(2);
const deadline = setTimeout(() => {
  console.error("timed out after 60 s");
  process.exit(1);
}, 60_000);

/** Where a device keeps its profile: a directory (the default engine) or this process's memory. */
function place(name) {
  return mode === "memory"
    ? { storage: new MemoryStorage(`memory:${name}`) }
    : { profileDir: join(dir, name) };
}

const suffix = randomBytes(4).toString("hex");
// No `encryption` option: end-to-end encryption is the default.
const alice = await SwitchboardClient.register({ serverUrl, username: `alice_${suffix}`, ...place("alice") });
const bob = await SwitchboardClient.register({ serverUrl, username: `bob_${suffix}`, ...place("bob") });
try {
  if (!alice.encrypted || !bob.encrypted)
    throw new Error("a client registered without options is not encrypted");
  const received = bob.waitFor("entry", (e) => e.kind === "message");
  await Promise.all([alice.connect(), bob.connect()]);
  const { conversationId } = await alice.openDirect(bob.userId);
  const { seq } = await alice.send(conversationId, "hello from the packed SDK");
  const entry = await received;
  const text = new TextDecoder().decode(entry.payload);
  if (entry.seq !== seq || text !== "hello from the packed SDK" || entry.encrypted !== true) {
    throw new Error(`bob got seq ${entry.seq} "${text}" encrypted=${entry.encrypted}, expected seq ${seq}`);
  }
  console.log(`received: ${text} (encrypted)`);
} finally {
  await alice.close();
  await bob.close();
  clearTimeout(deadline);
}
