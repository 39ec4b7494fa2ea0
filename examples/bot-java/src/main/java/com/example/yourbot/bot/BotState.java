package com.example.yourbot.bot;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import java.io.IOException;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.PosixFilePermissions;

/**
 * What the bot keeps between runs, in one JSON file (mode 0600: the secret is a password). The
 * same format as the TypeScript and Python bots' files.
 */
final class BotState {
  private static final Gson GSON = new GsonBuilder().setPrettyPrinting().create();

  String userId;
  String deviceId;
  /** From Register; exchanged for access tokens with CreateToken. Shown once by the server. */
  String deviceSecret;

  /** The saved state, or null when there is none yet. */
  static BotState load(Path path) throws IOException {
    try {
      return GSON.fromJson(Files.readString(path, StandardCharsets.UTF_8), BotState.class);
    } catch (NoSuchFileException e) {
      return null;
    }
  }

  /** Writes the file atomically (a crash leaves the old file or the new one, never half). */
  void save(Path path) throws IOException {
    Path dir = path.toAbsolutePath().getParent();
    Files.createDirectories(dir);
    Path tmp = dir.resolve(path.getFileName() + ".tmp");
    Files.deleteIfExists(tmp);
    Files.createFile(tmp, PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")));
    Files.writeString(tmp, GSON.toJson(this) + "\n", StandardCharsets.UTF_8, StandardOpenOption.TRUNCATE_EXISTING);
    try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.WRITE)) {
      ch.force(true);
    }
    Files.move(tmp, path, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
  }
}
