package com.example.yourbot.bot;

import java.nio.file.Path;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * An echo bot for Switchboard in Java, written against the grpc-java stubs generated from proto/
 * only. Build and run it (with a server on :7420, `npm start`):
 *
 * <pre>
 * bash examples/stubs/generate.sh prepare java &amp;&amp; bash examples/stubs/generate.sh java
 * mvn -q -f examples/bot-java/pom.xml package
 * java -jar examples/bot-java/target/echo-bot.jar --username java_bot --mode stream
 * </pre>
 */
public final class Main {
  private static final String USAGE =
      "usage: echo-bot [--server URL] [--username NAME] [--state FILE] [--mode stream|unary] [--poll-ms N]";

  private Main() {}

  public static void main(String[] argv) throws Exception {
    Map<String, String> args = new HashMap<>(
        Map.of("--server", "http://127.0.0.1:7420", "--username", "echo_bot", "--mode", "stream", "--poll-ms", "1000"));
    for (int i = 0; i < argv.length; i += 2) {
      if (!args.containsKey(argv[i]) && !argv[i].equals("--state") || i + 1 >= argv.length) {
        System.err.println(USAGE);
        System.exit(2);
      }
      args.put(argv[i], argv[i + 1]);
    }
    String mode = args.get("--mode");
    if (!mode.equals("stream") && !mode.equals("unary")) {
      System.err.println(USAGE);
      System.exit(2);
    }
    String server = args.get("--server");
    String username = args.get("--username");
    Path statePath = Path.of(args.getOrDefault("--state", ".switchboard/bots/" + username + ".json"));

    Stopper stop = new Stopper();
    CountDownLatch finished = new CountDownLatch(1);
    // SIGINT and SIGTERM run shutdown hooks; the JVM exits when they return, so the hook waits for
    // the bot to send its last acks. A stuck stream must not keep it alive: at most 5 s.
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      Stopper.log("signal: stopping");
      stop.set();
      try {
        finished.await(5, TimeUnit.SECONDS);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
    }));

    int code = 0;
    try {
      // Registers on the first run, reuses the saved credentials after that.
      BotState state = Api.loadOrRegister(server, statePath, username);
      Stopper.log("bot " + username + " (" + state.userId + "), device " + state.deviceId + ", " + mode + " mode, " + server);
      try (Api api = new Api(server, state)) {
        if (mode.equals("stream")) new StreamMode(api, state.userId, stop).run();
        else new UnaryMode(api, state.userId, Long.parseLong(args.get("--poll-ms")), stop).run();
      }
      Stopper.log("stopped");
    } catch (Exception e) {
      Stopper.log("fatal: " + e.getMessage());
      code = 1;
    } finally {
      finished.countDown();
    }
    if (code != 0 && !stop.isSet()) System.exit(code);
  }
}
