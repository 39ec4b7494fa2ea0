/** The fanout service's public face: the consumer of committed events, built by the composition root. */
export { Fanout, type PushHandoff } from "./fanout.js";
