/**
 * What happens in the group, as it happens, for `GET /api/v1/events` (an NDJSON
 * stream, like LXD's /1.0/events or Consul's blocking queries): operators and tools
 * watch instead of polling. Events carry the agent's own clock (`receivedAt`, `at`).
 */
import type { LivenessState } from './liveness.js'

export type AgentEvent =
  | {
    type: 'status'
    /** The member whose newer status this host accepted. */
    peer: string
    hostname: string
    seq: string
    /** When the origin signed it (its clock). */
    statusAt: string
    /** When this host accepted it (this host's clock). */
    receivedAt: string
    /** `gossip` or `pull`. */
    via: 'gossip' | 'pull'
    settings: { version: number, state: string }
  }
  | { type: 'liveness', peer: string, hostname: string | null, from: LivenessState, to: LivenessState, at: string }

export class EventHub {
  private readonly subscribers = new Set<(e: AgentEvent) => void>()

  /** Call `fn` for every event from now on; returns the unsubscribe function. */
  on (fn: (e: AgentEvent) => void): () => void {
    this.subscribers.add(fn)
    return () => { this.subscribers.delete(fn) }
  }

  get size (): number { return this.subscribers.size }

  emit (e: AgentEvent): void {
    for (const fn of this.subscribers) {
      try { fn(e) } catch { /* a subscriber's failure is its own (the API drops the stream) */ }
    }
  }
}
