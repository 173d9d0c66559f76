import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { ChunkClaims } from '../../src/content/sync-protocol.js'

const D = `sha256:${'a'.repeat(64)}`

async function waitMs (ms: number): Promise<void> {
  const end = Date.now() + ms
  // Wait for the clock, not a fixed sleep: the hold is measured with Date.now().
  while (Date.now() <= end) await new Promise(resolve => setTimeout(resolve, 5))
}

describe('ChunkClaims (super-seeding)', () => {
  it('gives a chunk to one member at a time, and to others only after the hold', async () => {
    const claims = new ChunkClaims(100)
    expect(claims.claim(D, 0, 'A')).toBe(true)
    expect(claims.claim(D, 0, 'B')).toBe(false) // being sent to A
    expect(claims.claim(D, 1, 'B')).toBe(true) // another chunk
    expect(claims.claim(D, 0, 'A')).toBe(true) // A again (a retry)
    claims.unclaim(D, 0, 'A')
    expect(claims.claim(D, 0, 'B')).toBe(false) // A's second send still running
    claims.unclaim(D, 0, 'A')
    expect(claims.claim(D, 0, 'B')).toBe(false) // sent, but A has not told the others yet
    claims.unclaim(D, 0, 'B') // not B's claim: no effect
    await waitMs(100)
    expect(claims.claim(D, 0, 'B')).toBe(true)
    expect(claims.claim(`sha256:${'b'.repeat(64)}`, 0, 'A')).toBe(true) // per digest
  })

  it('never refuses the member that holds the claim, whatever the order of calls', () => {
    fc.assert(fc.property(fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 3 }), fc.constantFrom('A', 'B', 'C')), { maxLength: 60 }), ops => {
      const claims = new ChunkClaims(60_000)
      const owner = new Map<number, string>()
      for (const [take, index, peer] of ops) {
        if (take) {
          const ok = claims.claim(D, index, peer)
          const first = owner.get(index)
          expect(ok).toBe(first == null || first === peer)
          if (ok && first == null) owner.set(index, peer)
        } else {
          claims.unclaim(D, index, peer)
        }
      }
    }))
  })
})
