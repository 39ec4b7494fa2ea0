import { type Command, InvalidArgumentError } from "commander";
import type { SwitchboardClient } from "../../client.js";
import { type CliIo, describeError, run } from "../io.js";
import { clientCommand, type GlobalOptions } from "../options.js";
import { withClient } from "../session.js";
import { profileFor, serverFor } from "../settings.js";

/**
 * `register`, `link-code`, `link` and `link-approve`: making a profile, joining a user with another
 * device, and handing that device this one's recent history.
 */
export function registerAccountCommands(program: Command, io: CliIo): void {
  clientCommand(
    program,
    "register <username>",
    "create a user with this device as its first, in a new profile",
  )
    .option("--display-name <name>", "name shown to others (default: the username)")
    .option("--device-name <name>", "name of this device (default: the host name)")
    .option(
      "--invite <token>",
      "an invite token from the server's operator (servers that register by invite only)",
    )
    .action(
      run(
        io,
        async (
          username: string,
          opts: GlobalOptions & { displayName?: string; deviceName?: string; invite?: string },
        ) => {
          const encryption = opts.encryption !== false;
          const { SwitchboardClient } = await import("../../client.js");
          const client = await SwitchboardClient.register({
            serverUrl: serverFor(opts),
            profileDir: profileFor(opts),
            username,
            encryption,
            ...(opts.displayName !== undefined && { displayName: opts.displayName }),
            ...(opts.deviceName !== undefined && { deviceName: opts.deviceName }),
            ...(opts.invite !== undefined && { inviteToken: opts.invite }),
          });
          try {
            io.out(`registered @${client.username} (user ${client.userId}, device ${client.deviceId})`);
            io.out(`profile: ${client.profileDir}`);
          } finally {
            await client.close();
          }
          await announceEncryption(io, client.profileDir, opts, encryption);
        },
      ),
    );
  clientCommand(
    program,
    "link-code",
    "print a one-time code with which another device joins this user",
  ).action(
    run(io, async (opts: GlobalOptions) =>
      withClient(opts, io, "none", async ({ client }) => {
        const { code, expiresAtMs } = await client.createLinkCode();
        io.out(code);
        io.err(`valid until ${new Date(Number(expiresAtMs)).toLocaleTimeString()}; on the new device run:`);
        io.err(`  switchboard link ${code} --profile <new profile dir>`);
        io.err("to give it this device's recent history, add --wait-history 120 there, then run here:");
        io.err("  switchboard link-approve --history 7d");
      }),
    ),
  );
  clientCommand(program, "link <code>", "join an existing user with a link code, in a new profile")
    .option("--device-name <name>", "name of this device (default: the host name)")
    .option(
      "--wait-history <seconds>",
      "then wait this long for the old device's history (it runs link-approve --history)",
      positiveSeconds,
    )
    .action(
      run(io, async (code: string, opts: GlobalOptions & { deviceName?: string; waitHistory?: number }) => {
        const encryption = opts.encryption !== false;
        if (opts.waitHistory !== undefined && !encryption)
          throw new Error("--wait-history needs end-to-end encryption (the history is sent encrypted)");
        const { SwitchboardClient } = await import("../../client.js");
        const client = await SwitchboardClient.link({
          serverUrl: serverFor(opts),
          profileDir: profileFor(opts),
          code,
          encryption,
          ...(opts.deviceName !== undefined && { deviceName: opts.deviceName }),
        });
        try {
          io.out(`linked this device to @${client.username} (device ${client.deviceId})`);
          io.out(`profile: ${client.profileDir}`);
          if (opts.waitHistory !== undefined) {
            io.err(`waiting up to ${opts.waitHistory} s for history; on the old device run:`);
            io.err(`  switchboard link-approve ${client.deviceId} --history 7d`);
            await waitForHistory(io, client, opts.waitHistory);
          }
        } finally {
          await client.close();
        }
        await announceEncryption(io, client.profileDir, opts, encryption);
      }),
    );
  clientCommand(
    program,
    "link-approve [device]",
    "send a newly linked device of this user this device's recent history, end-to-end encrypted",
  )
    .requiredOption("--history <days>", "how far back, in days (7 or 7d)", historyDays)
    .option("--max-entries <n>", "refuse a history of more entries than this (default 10000)", positiveInt)
    .action(
      run(
        io,
        async (device: string | undefined, opts: GlobalOptions & { history: number; maxEntries?: number }) =>
          withClient(opts, io, "content", async ({ client }) => {
            const deviceId = device ?? (await newestOtherDevice(client));
            const sent = await client.history.sendTo(deviceId, {
              days: opts.history,
              ...(opts.maxEntries !== undefined && { maxEntries: opts.maxEntries }),
            });
            io.out(
              `sent ${sent.entries} entries from ${sent.conversations} conversations since ` +
                `${new Date(sent.sinceMs).toISOString()} to device ${deviceId} ` +
                `(${sent.ciphertextBytes} bytes, end-to-end encrypted)`,
            );
          }),
      ),
    );
}

/** The most recently linked active device of this user other than this one. */
async function newestOtherDevice(client: SwitchboardClient): Promise<string> {
  const others = (await client.listDevices()).filter((d) => d.deviceId !== client.deviceId);
  const newest = others.sort((a, b) => Number(b.createdAtMs - a.createdAtMs))[0];
  if (newest === undefined) throw new Error("this user has no other active device to send history to");
  return newest.deviceId;
}

/** Connects and waits (bounded) for another device's history to be imported or refused. */
async function waitForHistory(io: CliIo, client: SwitchboardClient, seconds: number): Promise<void> {
  const imported = client.waitFor("historyImported");
  const refused = client.waitFor("historyRefused");
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), seconds * 1000);
  });
  try {
    await client.connect();
    const outcome = await Promise.race([imported, refused, deadline]);
    if (outcome === "timeout") {
      io.err(
        `no history arrived within ${seconds} s (the old device can still send it: it arrives with the next stream)`,
      );
    } else if ("error" in outcome) {
      throw new Error(
        `the history from device ${outcome.fromDeviceId} was refused: ${outcome.error.rawMessage}`,
      );
    } else {
      io.out(
        `imported ${outcome.imported} entries in ${outcome.conversationIds.length} conversations from device ` +
          `${outcome.fromDeviceId}` +
          (outcome.duplicates > 0 ? ` (${outcome.duplicates} this device had already)` : ""),
      );
    }
  } finally {
    clearTimeout(timer);
  }
}

function historyDays(value: string): number {
  const m = /^(\d+(?:\.\d+)?)d?$/.exec(value.trim());
  const days = m === null ? Number.NaN : Number(m[1]);
  if (!(days > 0 && days <= 3650))
    throw new InvalidArgumentError("days: more than 0 and at most 3650 (7 or 7d)");
  return days;
}

function positiveSeconds(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 3600) throw new InvalidArgumentError("seconds: 1 to 3600");
  return n;
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("a positive integer");
  return n;
}

/** After register or link: puts the new device's keys in the key directory, and says so. */
async function announceEncryption(
  io: CliIo,
  profileDir: string,
  opts: GlobalOptions,
  encryption: boolean,
): Promise<void> {
  if (!encryption) {
    io.out("end-to-end encryption: off (--no-encryption); this profile talks to clients without it");
    return;
  }
  try {
    const { publishKeys } = await import("../encryption.js");
    await publishKeys(profileDir, serverFor(opts));
  } catch (err) {
    throw new Error(
      `the profile is ready, but its encryption keys could not be uploaded (any later command retries): ${describeError(err)}`,
    );
  }
  io.out("end-to-end encryption: on (this device's keys are in the key directory)");
}
