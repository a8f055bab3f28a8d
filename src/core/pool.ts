/** Volumes transferred at once unless the caller says otherwise. */
export const DEFAULT_TRANSFERS = 3;

/**
 * Runs `work` over `items` with at most `limit` in flight. The first failure
 * stops new work from starting and is thrown once the running ones settle.
 */
export async function runPool<T>(items: readonly T[], limit: number, work: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (!failure && next < items.length) {
      const index = next++;
      try {
        await work(items[index]!, index);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failure) throw failure.error;
}
