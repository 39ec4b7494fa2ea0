package com.example.yourbot.bot;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;

/**
 * Set on SIGINT/SIGTERM (from the shutdown hook). Waits end early when it is set, and callbacks
 * registered with onStop run then (the stream half-closes). Also the bot's log and backoff.
 */
final class Stopper {
  private final CountDownLatch stopped = new CountDownLatch(1);
  private final List<Runnable> callbacks = new ArrayList<>();

  boolean isSet() {
    return stopped.getCount() == 0;
  }

  /** Waits ms milliseconds, or less if the bot is stopping. */
  void pause(long ms) throws InterruptedException {
    stopped.await(ms, TimeUnit.MILLISECONDS);
  }

  void set() {
    List<Runnable> run;
    synchronized (this) {
      stopped.countDown();
      run = new ArrayList<>(callbacks);
    }
    run.forEach(Runnable::run);
  }

  /** Runs callback when the bot stops; the returned Runnable unregisters it. */
  synchronized Runnable onStop(Runnable callback) {
    callbacks.add(callback);
    return () -> {
      synchronized (this) {
        callbacks.remove(callback);
      }
    };
  }

  /** Where the bot writes what it does: stdout, one timestamped line each. */
  static void log(String line) {
    System.out.println(java.time.Instant.now() + " " + line);
    System.out.flush();
  }

  /** Exponential backoff with full jitter: uniform in [0, min(30 s, 250 ms * 2^attempt)). */
  static long backoffMs(int attempt) {
    long cap = Math.min(30_000L, 250L << Math.min(attempt, 10));
    return ThreadLocalRandom.current().nextLong(cap);
  }
}
