/**
 * The Node (V8) flags a server process runs with: `npm start` (package.json), the container image
 * (its ENTRYPOINT), every process of `switchboard mesh`, and the bench's server. They are
 * command-line flags because V8 sizes its heap before any of our code runs; node-flags.test.ts
 * holds package.json and the Dockerfile to this list.
 *
 * --max-semi-space-size=32: young-generation semi-spaces of 32 MiB instead of V8's 16 MiB. A send
 * allocates about 40 KB of short-lived objects on its way (frames, messages, promises), and many
 * of them live for the few milliseconds of a group commit: with the default they survive two
 * scavenges and are promoted, and the old generation's collections then cost. 64 MiB halved GC's
 * share of the main thread in 1:1 traffic and took a fifth more sends at the ceiling, but cost
 * groups of 100 about a seventh more CPU per delivery and a higher p99; 32 MiB kept most of the
 * first and little of the second (docs/benchmarks.md, "Tenth pass"). About 20 MB more RSS.
 *
 * --heap-growing-percent=200: the old generation may grow to three times what the last full
 * collection left before the next one starts. V8 picks the factor from its own speed estimates,
 * and for this server's small live heap (about 40 MB at 1,000 devices) it picked 1.1-1.6: under
 * 100,000 group deliveries a second it mark-compacted 68 times in 50 s. With 200, 3-7 times; p99
 * 64-287 ms became 30-56 ms and the server used 5 points of a core less (docs/benchmarks.md,
 * "Fourteenth pass"). It does not cost idle memory: with 10,000 idle streams the server's RSS
 * was the same with and without it (562-571 MiB over nine runs; "Nineteenth pass" found the 4 KiB
 * per stream measured before to be the bench's baseline moving). A growing factor scales with
 * the live heap, so a pod's memory limit still bounds it (V8 keeps the limit below the maximum
 * heap, which Node sizes from the container's memory); a fixed floor (--initial-old-space-size)
 * measured the same here but would not. Node refuses this flag in NODE_OPTIONS, so the image
 * passes the flags on its ENTRYPOINT.
 */
export const SERVER_NODE_FLAGS: readonly string[] = [
  "--max-semi-space-size=32",
  "--heap-growing-percent=200",
];
