/** What a run does: the full run and the --quick smoke run. */

export const MESSAGE_BYTES = 200;
export const MiB = 1024 * 1024;

export interface Plan {
  /** Untimed runs before each timed loop. */
  warmup: number;
  /** Fresh recipients to open a session with. */
  setups: number;
  /** Messages of the steady-state 1:1 loops. */
  messages: number;
  /** Sends per fan-out width. */
  fanout: number;
  groupSizes: number[];
  /** Members (each with no session yet) whose first key distribution is timed, per group size. */
  distributions: (size: number) => number;
  /** Group messages encrypted (and decrypted by one recipient). */
  groupMessages: number;
  /** Pairwise sends to every member, and key rotations, per group size. */
  fullSends: (size: number) => number;
  /** Attachment sizes in bytes, with their iteration counts. */
  attachments: Array<[bytes: number, iterations: number]>;
}

export const FULL: Plan = {
  warmup: 5,
  setups: 30,
  messages: 500,
  fanout: 100,
  groupSizes: [2, 10, 100, 1000],
  distributions: (size) => (size <= 10 ? 5 : size <= 100 ? 2 : 1),
  groupMessages: 200,
  fullSends: (size) => (size >= 1000 ? 3 : size >= 100 ? 10 : 30),
  attachments: [
    [MiB, 30],
    [64 * MiB, 5],
  ],
};

export const QUICK: Plan = {
  warmup: 1,
  setups: 3,
  messages: 20,
  fanout: 5,
  groupSizes: [2, 10],
  distributions: () => 1,
  groupMessages: 10,
  fullSends: () => 2,
  attachments: [
    [MiB, 3],
    [8 * MiB, 1],
  ],
};
