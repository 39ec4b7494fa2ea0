import type { Command } from "commander";

import type { SwitchboardClient } from "../../client.js";
import { printable, shellArg } from "../files.js";
import { type CliIo, run } from "../io.js";
import { clientCommand, type GlobalOptions } from "../options.js";
import { withClient } from "../session.js";

/** `safety-number`: compare and verify a contact's identity keys. */
export function registerSafetyNumber(program: Command, io: CliIo): void {
  clientCommand(
    program,
    "safety-number <username>",
    "print the safety number with each device of a user, to compare with theirs in person or on a call",
  )
    .option("--verify <deviceId>", "mark that device of theirs verified once its number matched")
    .action(
      run(io, async (username: string, opts: GlobalOptions & { verify?: string }) =>
        withClient(opts, io, "content", async ({ client, encrypted }) => {
          if (!encrypted) {
            throw new Error(
              "safety numbers belong to end-to-end encryption, which this profile does not use (--encryption turns it on for good)",
            );
          }
          await safetyNumbers(client, io, username.replace(/^@/, ""), opts.verify);
        }),
      ),
    );
}

/** Prints the safety number with each device of a user; with `verify`, marks that device verified first. */
async function safetyNumbers(
  client: SwitchboardClient,
  io: CliIo,
  username: string,
  verify: string | undefined,
): Promise<void> {
  const user = await client.userByUsername(username);
  let numbers = await client.safetyNumbers(user.userId);
  let accepting = false;
  if (numbers.length === 0) {
    throw new Error(
      `@${username} has no ${user.userId === client.userId ? "other " : ""}device with end-to-end encryption keys yet`,
    );
  }
  if (verify !== undefined) {
    if (!numbers.some((n) => n.deviceId === verify)) {
      throw new Error(
        `${verify} is not one of @${username}'s devices with keys (${numbers.map((n) => n.deviceId).join(", ")})`,
      );
    }
    accepting = numbers.some((n) => n.deviceId === verify && n.identityChanged);
    await client.verifyContact(user.userId, verify);
    numbers = await client.safetyNumbers(user.userId);
  }
  for (const n of numbers) {
    const state = n.identityChanged
      ? "IDENTITY CHANGED: this is the number of its NEW key; your verification of the old key no longer holds, and nothing is sent to or read from this device until you accept the new key"
      : n.verified
        ? "verified"
        : "not verified";
    io.out(`${printable(n.deviceId)}  ${n.display}  ${state}`);
  }
  const changed = numbers.filter((n) => n.identityChanged);
  if (verify !== undefined) {
    io.err(
      accepting
        ? `accepted @${username}'s device ${verify}'s new key, verified: messages to and from it resume`
        : `marked @${username}'s device ${verify} verified: a new key of that device will be refused`,
    );
  } else if (changed.length > 0) {
    io.err(
      `compare the new number with what @${username} sees (switchboard safety-number ${shellArg(client.username)} on their device); ` +
        `only if it matches, accept the new key: switchboard safety-number ${shellArg(username)} --verify ${shellArg(printable(changed[0]?.deviceId ?? "<device>"))}`,
    );
  } else {
    io.err(
      `compare with what @${username} sees (switchboard safety-number ${shellArg(client.username)} on their device); ` +
        `if it matches: switchboard safety-number ${shellArg(username)} --verify <device>`,
    );
  }
}
