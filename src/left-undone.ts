/*
 * What a process stopped at once (a second Ctrl-C, which ends it without waiting) would leave undone,
 * while it does something a first interrupt does not stop: the CLI says it as the process ends.
 */

let undone: string | undefined;

/** Runs `fn`; stopped at once meanwhile, the process says `what` is left to do. */
export async function whileLeftUndone<T>(what: string, fn: () => Promise<T>): Promise<T> {
  const before = undone;
  undone = what;
  try {
    return await fn();
  } finally {
    undone = before;
  }
}

/** What stopping the process now would leave undone, if anything. */
export function leftUndoneNow(): string | undefined {
  return undone;
}
