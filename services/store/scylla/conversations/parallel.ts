/* Running a part's many statements concurrently, with failures that do not depend on timing. */

/**
 * Settles every promise, then throws the first failure in input order, so which error a caller
 * sees does not depend on timing.
 */
export async function allOrFirstError<T>(promises: Promise<T>[]): Promise<T[]> {
  const results = await Promise.allSettled(promises);
  for (const r of results) if (r.status === "rejected") throw r.reason;
  return results.map((r) => (r as PromiseFulfilledResult<T>).value);
}

/** Runs fn over items, at most size at a time, so a large backlog does not flood the driver. */
export async function inSlices<T>(items: T[], size: number, fn: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}
