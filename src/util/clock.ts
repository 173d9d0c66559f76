/**
 * Time for intervals, not for display: milliseconds on the epoch's scale that only move
 * forward. Sites without a time server have their clocks set by hand, often hours off
 * and often stepped; a silence, a rate or a deadline measured with `Date.now()` then
 * jumps by the step (a member stayed `alive` for the hour a clock was set back, and
 * every message was over its rate limit). `monotonicMs()` starts at the wall time of the
 * process's start and ignores steps after it.
 */
export function monotonicMs (): number {
  return performance.timeOrigin + performance.now()
}

/** The wall-clock time (ms since the epoch, for display) of a `monotonicMs()` value. */
export function wallTimeOf (mono: number): number {
  return Date.now() - (monotonicMs() - mono)
}
