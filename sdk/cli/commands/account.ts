import type { Command } from "commander";
import { type CliIo, describeError, run } from "../io.js";
import { clientCommand, type GlobalOptions } from "../options.js";
import { withClient } from "../session.js";
import { profileFor, serverFor } from "../settings.js";

/** `register`, `link-code` and `link`: making a profile, and joining a user with another device. */
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
      }),
    ),
  );
  clientCommand(program, "link <code>", "join an existing user with a link code, in a new profile")
    .option("--device-name <name>", "name of this device (default: the host name)")
    .action(
      run(io, async (code: string, opts: GlobalOptions & { deviceName?: string }) => {
        const encryption = opts.encryption !== false;
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
        } finally {
          await client.close();
        }
        await announceEncryption(io, client.profileDir, opts, encryption);
      }),
    );
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
