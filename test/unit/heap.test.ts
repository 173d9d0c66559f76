import { spawnSync } from 'node:child_process'
import { describe, expect, it } from 'vitest'
import { V8_AGENT_FLAGS, tuneHeap } from '../../src/agent/heap.js'

describe('agent heap tuning', () => {
  it('sets each flag it documents', () => {
    const set: string[] = []
    tuneHeap(f => { set.push(f) })
    expect(set).toEqual([...V8_AGENT_FLAGS])
    expect(set).toContain('--heap-growing-percent=200')
  })

  it('names flags this node\'s V8 knows (an unknown one would be ignored at run time, silently)', () => {
    // As command-line options, an unknown V8 flag is refused ("bad option"), so a node upgrade
    // that drops one fails here instead of quietly losing the tuning.
    const r = spawnSync(process.execPath, [...V8_AGENT_FLAGS, '-e', ''], { encoding: 'utf8' })
    expect(r.stderr).toBe('')
    expect(r.status).toBe(0)
    const bad = spawnSync(process.execPath, ['--heap-growing-percent-typo=200', '-e', ''], { encoding: 'utf8' })
    expect(bad.status).not.toBe(0)
  })
})
