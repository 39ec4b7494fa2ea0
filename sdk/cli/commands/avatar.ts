import { readFile, stat } from "node:fs/promises";
import type { Command } from "commander";
import { exists, FileExistsError, formatBytes } from "../files.js";
import { type CliIo, run } from "../io.js";
import { at, userIdsFor } from "../names.js";
import { clientCommand, type GlobalOptions } from "../options.js";
import { withClient } from "../session.js";

/** The largest picture `avatar set` reads (the SDK's limit: 1 MiB less 28 bytes of IV and tag). */
const MAX_PICTURE_BYTES = 1024 * 1024 - 28;

/** `avatar set <file>`, `avatar remove` and `avatar show <user>`. */
export function registerAvatar(program: Command, io: CliIo): void {
  const avatar = program
    .command("avatar")
    .description(
      "your profile picture, end-to-end encrypted: set, remove, or show someone's (who sees yours: privacy --name-visible-to)",
    );
  clientCommand(
    avatar,
    "set <file>",
    "encrypt a picture (at most 1 MiB) and make it your avatar, replacing the last",
  ).action(
    run(io, async (file: string, opts: GlobalOptions) => {
      // Checked before anything is read or any connection made.
      const size = (await stat(file)).size;
      if (size > MAX_PICTURE_BYTES)
        throw new Error(
          `${file} is ${formatBytes(size)}; an avatar may be at most ${MAX_PICTURE_BYTES} bytes`,
        );
      const picture = new Uint8Array(await readFile(file));
      return withClient(opts, io, "content", async ({ client }) => {
        const set = await client.avatars.set(picture);
        io.out(`avatar set: ${formatBytes(picture.length)} encrypted as ${set.objectId}`);
      });
    }),
  );
  clientCommand(avatar, "remove", "remove your avatar (deleted from the server)").action(
    run(io, async (opts: GlobalOptions) =>
      withClient(opts, io, "none", async ({ client }) => {
        io.out((await client.avatars.remove()) ? "avatar removed" : "you have no avatar");
      }),
    ),
  );
  clientCommand(
    avatar,
    "show <user>",
    "fetch and decrypt a user's avatar (yours too), and save it with --out",
  )
    .option("--out <path>", "write the picture there")
    .option("--force", "replace a file that already exists")
    .action(
      run(io, async (user: string, opts: GlobalOptions & { out?: string; force?: boolean }) =>
        withClient(opts, io, "content", async ({ client }) => {
          if (opts.out !== undefined && opts.force !== true && (await exists(opts.out)))
            throw new FileExistsError(opts.out);
          const [userId] = await userIdsFor(client, [user]);
          const { AttachmentError } = await import("../../crypto/attachments.js");
          let found: Awaited<ReturnType<typeof client.avatars.of>>;
          try {
            found = await client.avatars.of(userId!);
          } catch (err) {
            if (err instanceof AttachmentError && err.reason === "authentication") {
              throw new Error(
                `${at(user)}'s avatar cannot be opened yet: its key comes with their encrypted messages; read them first (history ${user.replace(/^@/, "")}) (${err.message})`,
              );
            }
            throw err;
          }
          if (found === undefined) {
            // The server answers a hidden avatar and a missing one alike.
            io.out(`${at(user)} has no avatar you can see`);
            return;
          }
          io.out(`avatar of ${at(user)}: ${formatBytes(found.data.length)} (${found.objectId})`);
          if (opts.out !== undefined) {
            const { writeFileAtomic } = await import("../../durable-file.js");
            await writeFileAtomic(opts.out, found.data, 0o644);
            io.out(`saved to ${opts.out}`);
          }
        }),
      ),
    );
}
