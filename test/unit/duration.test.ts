import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { formatDuration, parseDuration } from '../../src/util/duration.js'

const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const
type Unit = keyof typeof UNIT_MS

describe('parseDuration', () => {
  it.each([
    ['500ms', 500],
    ['10s', 10_000],
    ['2m', 120_000],
    ['1h30m', 5_400_000],
    ['1d', 86_400_000],
    ['1.5s', 1500],
    ['250', 250],
    ['0', 0],
    ['  2m  ', 120_000]
  ])('reads %j as %d ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms)
  })

  it.each(['', '   ', 'soon', '-5s', '1e3', '5 m', 'm', '5x', '1.s', '.5s', '2m-', 'ms', 'NaN', 'Infinity', '0x10'])('refuses %j', (text) => {
    expect(parseDuration(text)).toBeUndefined()
  })

  it('refuses a number too large to be a finite duration instead of returning Infinity', () => {
    expect(parseDuration('9'.repeat(400))).toBeUndefined()
    expect(parseDuration('9'.repeat(400) + 'ms')).toBeUndefined()
  })

  it('any concatenation of <integer><unit> parts adds up', () => {
    fc.assert(fc.property(
      fc.array(fc.tuple(fc.integer({ min: 0, max: 100_000 }), fc.constantFrom<Unit>('ms', 's', 'm', 'h', 'd')), { minLength: 1, maxLength: 6 }),
      (parts) => {
        const text = parts.map(([n, u]) => `${n}${u}`).join('')
        const expected = parts.reduce((sum, [n, u]) => sum + n * UNIT_MS[u], 0)
        expect(parseDuration(text)).toBe(expected)
      }
    ))
  })

  it('any input gives undefined or a finite, non-negative number of milliseconds', () => {
    const digits = fc.string({ unit: fc.constantFrom('0', '1', '5', '9', '.'), minLength: 1, maxLength: 400 })
    fc.assert(fc.property(
      fc.oneof(
        fc.string({ maxLength: 30 }),
        fc.string({ unit: fc.constantFrom('1', '2', '.', 'm', 's', 'h', 'd', ' ', '-', 'e'), maxLength: 20 }),
        fc.tuple(digits, fc.constantFrom('', 'ms', 's', 'm', 'h', 'd')).map(([n, u]) => n + u)
      ),
      (text) => {
        const ms = parseDuration(text)
        if (ms === undefined) return
        expect(Number.isFinite(ms)).toBe(true)
        expect(ms).toBeGreaterThanOrEqual(0)
      }
    ), { numRuns: 1000 })
  })
})

describe('formatDuration', () => {
  it.each([
    [0, '0ms'],
    [250, '250ms'],
    [1000, '1s'],
    [45_000, '45s'],
    [120_000, '2m'],
    [3_900_000, '1h5m'],
    [3_600_000, '1h']
  ])('formats %d ms as %j', (ms, text) => {
    expect(formatDuration(ms)).toBe(text)
  })

  it('parseDuration reads back what formatDuration writes (to the second above 1 s)', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 10 * 86_400_000 }), (ms) => {
      const expected = ms < 1000 ? ms : Math.round(ms / 1000) * 1000
      expect(parseDuration(formatDuration(ms))).toBe(expected)
    }))
  })
})
