/**
 * Sites without a time server have their clocks set by hand, and stepped. Silences, rates
 * and hold times are measured on `monotonicMs()`, so a step of the wall clock changes none
 * of them (before, a clock set back an hour kept a dead member alive and refused every
 * gossip message as over its rate for that hour). Date.now is stepped here with a spy.
 */
import { afterEach, describe, expect, it, vi } from 'vitest'
import { monotonicMs, wallTimeOf } from '../../src/util/clock.js'
import { LivenessTable } from '../../src/status/liveness.js'
import { GroupGossip } from '../../src/status/gossip.js'
import { pulledRecently } from '../../src/group/sync.js'

const HOUR = 3_600_000

function stepClock (byMs: number): void {
  const real = Date.now.bind(Date)
  vi.spyOn(Date, 'now').mockImplementation(() => real() + byMs)
}

afterEach(() => { vi.restoreAllMocks() })

describe('a wall-clock step', () => {
  it('moves neither the monotonic clock nor what it measures; display times follow the wall clock', () => {
    const before = monotonicMs()
    stepClock(-HOUR)
    const after = monotonicMs()
    expect(after - before).toBeGreaterThanOrEqual(0)
    expect(after - before).toBeLessThan(1000)
    expect(Math.abs(wallTimeOf(after) - Date.now())).toBeLessThan(50)
  })

  it('liveness measures silence on the monotonic clock', () => {
    // A spy on Date.now cannot step a clock a table already holds (it holds the function),
    // so this checks which clock it holds; silence on a given clock is tested in liveness tests.
    const table = new LivenessTable({ suspectAfterMs: 20, downAfterMs: 40 })
    expect((table as unknown as { now: () => number }).now).toBe(monotonicMs)
  })

  it('does not empty a member\'s gossip rate bucket (clock set back) or refill it (clock set forward)', () => {
    const g = new GroupGossip({} as never, {} as never, { maxMessageBytes: 1024, rateBurst: 3, ratePerSecond: 1 } as never, () => {}, () => {}, () => {})
    const take = (g as unknown as { takeToken: (from: string) => boolean }).takeToken.bind(g)
    expect(take('m')).toBe(true)
    stepClock(-HOUR)
    expect(take('m'), 'set back: still within its burst').toBe(true)
    expect(take('m')).toBe(true)
    expect(take('m'), 'the burst is spent').toBe(false)
    vi.restoreAllMocks()
    stepClock(+HOUR)
    expect(take('m'), 'set forward: no hour of refill').toBe(false)
  })

  it('does not make a pull an hour old, or an hour in the future', () => {
    const pulledAt = new Map<string, number>()
    pulledAt.set('p', monotonicMs())
    stepClock(+HOUR)
    expect(pulledRecently(pulledAt, 'p')).toBe(true)
  })
})
