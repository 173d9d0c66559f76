/**
 * Repeating work with a random spread in its period, as Serf and memberlist stagger theirs.
 * Agents started together (a site powered on at once, a lab, a test) otherwise run their
 * periodic work in step for as long as they run: every member pulling from another, or
 * publishing its status, in the same few milliseconds, and on a small host those bursts
 * are what a status change waits behind.
 */

/** `ms` scaled by a random factor in [1 − spread/2, 1 + spread/2]. */
export function jittered (ms: number, spread = 0.2): number {
  return ms * (1 - spread / 2 + Math.random() * spread)
}

/** Like setInterval(fn, ms), but each period is `jittered(ms, spread)`. */
export class JitteredInterval {
  private timer?: NodeJS.Timeout
  private stopped = false

  constructor (private readonly fn: () => void, private readonly ms: number, private readonly spread = 0.2) {
    this.schedule()
  }

  /** Whether another run is scheduled. */
  get active (): boolean {
    return this.timer != null
  }

  clear (): void {
    this.stopped = true
    clearTimeout(this.timer)
    this.timer = undefined
  }

  private schedule (): void {
    if (this.stopped) return
    this.timer = setTimeout(() => {
      this.schedule()
      this.fn()
    }, jittered(this.ms, this.spread))
  }
}
