import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { waitFor } from '../helpers/wait.js'
import { JitteredInterval, jittered } from '../../src/util/timers.js'

describe('jittered timers', () => {
  it('a jittered period stays within ±spread/2 of the interval', () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 3_600_000 }), fc.double({ min: 0, max: 1, noNaN: true }), (ms, spread) => {
      const d = jittered(ms, spread)
      expect(d).toBeGreaterThanOrEqual(ms * (1 - spread / 2))
      expect(d).toBeLessThanOrEqual(ms * (1 + spread / 2))
    }))
  })

  it('periods differ from one another (agents started together drift apart)', () => {
    const periods = new Set(Array.from({ length: 20 }, () => jittered(30_000)))
    expect(periods.size).toBeGreaterThan(1)
  })

  it('repeats until cleared, also when cleared from inside its own callback', async () => {
    let runs = 0
    const t = new JitteredInterval(() => { runs++; if (runs === 3) t.clear() }, 5)
    expect(t.active).toBe(true)
    await waitFor(() => runs >= 3, { timeout: 2000 })
    expect(t.active).toBe(false)
    expect(runs).toBe(3)
  })
})
