// Types for build-state.js, which stays plain JavaScript: bin/ runs before anything is compiled.

/** The compiled entry point of the `switchboard` command under `root`. */
export function compiledEntry(root: string): string;

/** True when dist/ under `root` holds a build of the sources as they are (or there are none: a release). */
export function buildIsCurrent(root: string): boolean;
