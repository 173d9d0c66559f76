/**
 * The liveness table on a clock the test moves: alive → suspect → down by silence, alive
 * again when heard; a member tracked but never heard (every member, after this host's own
 * restart) has its grace period but no time it was heard.
 */
import { describe, expect, it } from 'vitest'
import { LivenessTable } from '../../src/status/liveness.js'

describe('LivenessTable', () => {
  it('goes suspect then down by silence, and alive at once when heard', () => {
    let now = 1000
    const t = new LivenessTable({ suspectAfterMs: 100, downAfterMs: 300 }, () => now)
    t.track(['a'])
    t.heard('a')
    now += 150
    expect(t.evaluate()).toEqual([{ peer: 'a', from: 'alive', to: 'suspect', silentMs: 150 }])
    now += 200
    expect(t.evaluate()).toEqual([{ peer: 'a', from: 'suspect', to: 'down', silentMs: 350 }])
    expect(t.heard('a')).toEqual({ peer: 'a', from: 'down', to: 'alive', silentMs: 0 })
    expect(t.get('a')).toEqual({ state: 'alive', lastHeard: now, heard: true })
  })

  it('a member tracked but not heard yet is alive for its grace period, with no hearing to show', () => {
    let now = 5000
    const t = new LivenessTable({ suspectAfterMs: 100, downAfterMs: 300 }, () => now)
    t.track(['b'])
    expect(t.get('b')).toMatchObject({ state: 'alive', heard: false })
    now += 400
    expect(t.evaluate().map(c => c.to)).toEqual(['down'])
    expect(t.get('b')?.heard).toBe(false)
    t.heard('b')
    expect(t.get('b')).toMatchObject({ state: 'alive', heard: true, lastHeard: 5400 })
  })
})
