/**
 * Liveness of each member: `alive`, `suspect` or `down`, from the last time we heard
 * from it (a gossip message, a successful ping, a new connection). Pure logic with an
 * injectable clock; the status service feeds it and acts on its changes.
 *
 * Why these states (as in SWIM / memberlist): one missed probe on a busy LAN is not a
 * failure, so a member is first `suspect`, and `down` only when silence outlasts what
 * a live host could plausibly produce. A member that is heard from again is `alive`
 * at once, without operator action.
 */
import { monotonicMs } from '../util/clock.js'

export type LivenessState = 'alive' | 'suspect' | 'down'

export interface LivenessThresholds {
  /** Silence after which a member is suspect. */
  suspectAfterMs: number
  /** Silence after which a member is down. */
  downAfterMs: number
}

export interface LivenessChange {
  peer: string
  from: LivenessState
  to: LivenessState
  silentMs: number
}

export interface LivenessView {
  state: LivenessState
  /** On the table's clock (`monotonicMs` unless one was given); `wallTimeOf` for display. */
  lastHeard: number
  /** False until the member is heard from: `lastHeard` is then only when tracking began (its grace period). */
  heard: boolean
}

export class LivenessTable {
  private readonly t: LivenessThresholds
  private readonly now: () => number
  private readonly entries = new Map<string, { lastHeard: number, state: LivenessState, heard: boolean }>()

  constructor (t: LivenessThresholds, now: () => number = monotonicMs) {
    if (!(t.suspectAfterMs > 0 && t.downAfterMs > t.suspectAfterMs)) throw new RangeError('liveness thresholds need 0 < suspectAfter < downAfter')
    this.t = t
    this.now = now
  }

  /**
   * Track exactly these members. New ones start `alive` as of now: a member we just
   * learned of (or every member, after our own restart) gets the full grace period.
   */
  track (peers: string[]): void {
    const keep = new Set(peers)
    for (const p of this.entries.keys()) if (!keep.has(p)) this.entries.delete(p)
    for (const p of peers) if (!this.entries.has(p)) this.entries.set(p, { lastHeard: this.now(), state: 'alive', heard: false })
  }

  /** Record that we heard from a member. Returns the change to `alive`, if any. */
  heard (peer: string, at = this.now()): LivenessChange | undefined {
    const e = this.entries.get(peer)
    if (e == null) return undefined
    e.lastHeard = Math.max(e.lastHeard, at)
    e.heard = true
    if (e.state === 'alive') return undefined
    const change: LivenessChange = { peer, from: e.state, to: 'alive', silentMs: 0 }
    e.state = 'alive'
    return change
  }

  /** Re-evaluate every member against the clock; returns the changes. */
  evaluate (): LivenessChange[] {
    const now = this.now()
    const changes: LivenessChange[] = []
    for (const [peer, e] of this.entries) {
      const silent = now - e.lastHeard
      const to: LivenessState = silent >= this.t.downAfterMs ? 'down' : silent >= this.t.suspectAfterMs ? 'suspect' : 'alive'
      if (to !== e.state) {
        changes.push({ peer, from: e.state, to, silentMs: silent })
        e.state = to
      }
    }
    return changes
  }

  get (peer: string): LivenessView | undefined {
    const e = this.entries.get(peer)
    return e == null ? undefined : { state: e.state, lastHeard: e.lastHeard, heard: e.heard }
  }
}
