import { setTimeout as sleep } from 'node:timers/promises'

export interface WaitOptions {
  /** Give up after this long (ms). */
  timeout: number
  /** Between polls (ms). */
  interval?: number
  /** What the condition means, for the failure message (default: its source text). */
  what?: string
}

/**
 * Poll `condition` until it holds: the way tests wait, never a fixed sleep. A condition
 * that does not hold in time fails with what it was waiting for, not only "timed out".
 * (p-wait-for, used before, also left an abort listener behind at every poll: Node's
 * MaxListenersExceededWarning during long waits.)
 */
export async function waitFor (condition: () => boolean | Promise<boolean>, { timeout, interval = 25, what }: WaitOptions): Promise<void> {
  const deadline = Date.now() + timeout
  for (;;) {
    if (await condition()) return
    const left = deadline - Date.now()
    if (left <= 0) throw new Error(`timed out after ${timeout} ms waiting for ${what ?? condition.toString().replace(/\s+/g, ' ').slice(0, 200)}`)
    await sleep(Math.min(interval, left))
  }
}
