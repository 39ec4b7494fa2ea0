import type { SwitchboardClient } from "../client.js";
import { devicesWarning, identityWarning } from "./format.js";
import type { CliIo } from "./io.js";
import { Names } from "./names.js";
import type { GlobalOptions } from "./options.js";
import { namedServer, profileFor } from "./settings.js";

/**
 * What a command does with the profile's end-to-end encryption: "none" touches no content (lists,
 * link codes), "content" encrypts or decrypts without a stream, "stream" opens the stream.
 */
export type ClientUse = "none" | "content" | "stream";

/** An open client for one command. */
export interface Session {
  client: SwitchboardClient;
  /** True when the profile is end-to-end encrypted. */
  encrypted: boolean;
  /** Opens the stream; the command's hold on the profile passes to the client. */
  connect(): Promise<void>;
}

/**
 * Opens the profile's client for one command: settles its encryption, holds the profile's lock
 * while Signal state is used without a stream, and closes the client when `body` ends.
 */
export async function withClient<T>(
  opts: GlobalOptions,
  io: CliIo,
  use: ClientUse,
  body: (session: Session) => Promise<T>,
): Promise<T> {
  // The client (and with it libsignal and the transport) loads here, when a command runs, not
  // when the CLI starts: `switchboard --help` and argument errors never pay for it.
  const [{ SwitchboardClient }, { chooseEncryption, lockProfile, markedEncrypted, publishKeys }] =
    await Promise.all([import("../client.js"), import("./encryption.js")]);
  const profileDir = profileFor(opts);
  const server = namedServer(opts);
  const encrypted = await chooseEncryption(
    profileDir,
    opts.encryption,
    use === "none" ? undefined : (server ?? ""),
  );
  if (opts.encryption === false && encrypted === false && (await markedEncrypted(profileDir))) {
    io.err(
      "-- warning: this profile was end-to-end encrypted and lost its keys; --no-encryption sends and shows plaintext",
    );
  }
  const withKeys = encrypted && use !== "none";
  let unlock = withKeys ? await lockProfile(profileDir) : undefined;
  const release = async (): Promise<void> => {
    const u = unlock;
    unlock = undefined;
    await u?.();
  };
  try {
    // A stream uploads missing keys when it opens; without one, this is the only chance.
    if (withKeys && use === "content") await publishKeys(profileDir, server);
    const client = await SwitchboardClient.open({
      profileDir,
      encryption: withKeys,
      acceptUnencrypted: opts.acceptUnencrypted === true,
      ...(server !== undefined && { serverUrl: server }),
    });
    if (use === "content") {
      showKeyChanges(client, new Names(client), (line) => io.err(line));
    }
    try {
      return await body({
        client,
        encrypted,
        connect: async () => {
          // The client takes the profile's lock itself when its stream opens.
          await release();
          await client.connect();
        },
      });
    } finally {
      await client.close();
    }
  } finally {
    await release();
  }
}

/**
 * Prints what the user should know when a contact's identity key or devices change: every command
 * that encrypts or decrypts shows it, on the line `print` writes.
 */
export function showKeyChanges(client: SwitchboardClient, names: Names, print: (line: string) => void): void {
  client.on("identityChanged", async (event) => {
    await names.load([event.device.userId]).catch(() => {});
    print(identityWarning(event, names));
  });
  client.on("devicesChanged", async (event) => {
    await names.load([event.userId]).catch(() => {});
    const line = devicesWarning(event, names, client.userId);
    if (line !== undefined) print(line);
  });
}
