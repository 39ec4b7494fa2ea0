/**
 * Tells whether the event loop has turned since the last call: each call queues a macrotask, and
 * the next call sees whether it has run. Work that must give way between its batches (route
 * refreshes, presence announcements) calls it once per batch; a batch that answers false ran in
 * the same task as the one before it.
 */
export function turnMarker(): () => boolean {
  let pending = false;
  return () => {
    const turned = !pending;
    pending = true;
    setImmediate(() => {
      pending = false;
    });
    return turned;
  };
}
