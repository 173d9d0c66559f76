/**
 * Liveness heartbeats (`/edgelink/alive/1.0.0`, protocols/group.md "Liveness").
 *
 * Each member keeps one long-lived outbound stream to every other member and writes
 * one byte on it every `intervalMs`; the receiving side counts any heartbeat byte as
 * "heard from that member" and echoes it. A heartbeat is written by the agent's own
 * timer, so it stops when the process stops, pauses or hangs, which is what liveness
 * measures. The echo tells the sender its beats arrive: a stream that has carried no
 * echo for STALE_BEATS intervals is replaced, and if the member has another
 * connection, the stream's connection is closed (a connection can stay half-open
 * after a partition, swallowing beats while the member is reachable another way).
 *
 * Why not libp2p ping every second: each ping opens a stream (yamux SYN, two
 * multistream-select lines, 32 bytes each way, FIN), about twenty encrypted frames per
 * member per second. In a group of 10 that was 46 KB/s and 8 % of a CPU per host at
 * idle; a heartbeat is one encrypted 13-byte yamux frame per member per second.
 *
 * A remote that stops reading (paused) fills nothing: when `send` reports a full
 * buffer, beats are skipped until the 'drain' event, never queued.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection, Stream } from '@libp2p/interface'
import type { Logger } from '../agent/logger.js'
import { errorMessage } from '../errors.js'
import type { EdgelinkNode } from '../net/node.js'
import { monotonicMs } from '../util/clock.js'

export const ALIVE_PROTOCOL = '/edgelink/alive/1.0.0'
/** The only valid byte on the stream. */
export const HEARTBEAT = 0x01
/** More than this many bytes in one interval is not a heartbeat: the stream is reset. */
export const MAX_BYTES_PER_INTERVAL = 64
const BEAT = new Uint8Array([HEARTBEAT])
/** Intervals without an echo after which an outbound stream is replaced. */
export const STALE_BEATS = 3

interface Outbound {
  stream: Stream
  connection: Connection
  /** When the last echo (or the stream's opening) was seen. */
  lastEcho: number
}

export interface HeartbeatComponents {
  node: EdgelinkNode
  log: Logger
  intervalMs: number
  /** Current members other than this host. */
  members: () => string[]
  isMember: (peer: string) => boolean
  /** A heartbeat (or a new heartbeat stream) arrived from `peer`. */
  heard: (peer: string) => void
}

export class Heartbeats {
  private readonly c: HeartbeatComponents
  private readonly out = new Map<string, Outbound>()
  private readonly opening = new Set<string>()
  private readonly inbound = new Set<Stream>()
  private timer?: NodeJS.Timeout
  private running = false

  constructor (c: HeartbeatComponents) {
    this.c = c
  }

  async start (): Promise<void> {
    if (this.running) return
    this.running = true
    await this.c.node.handle(ALIVE_PROTOCOL, (stream, connection) => { this.accept(stream, connection) }, { maxInboundStreams: 4, maxOutboundStreams: 4 })
    this.timer = setInterval(() => { this.tick() }, this.c.intervalMs)
  }

  async stop (): Promise<void> {
    if (!this.running) return
    this.running = false
    clearInterval(this.timer)
    await this.c.node.unhandle(ALIVE_PROTOCOL)
    for (const s of [...[...this.out.values()].map(o => o.stream), ...this.inbound]) s.abort(new Error('agent stopping'))
    this.out.clear()
    this.inbound.clear()
  }

  /** Streams this host writes beats on (for tests and the REPL). */
  get outbound (): string[] { return [...this.out.keys()] }

  /** One beat to every member; open a stream to members that have none. */
  tick (): void {
    try {
      for (const [peer, s] of this.follow()) this.beat(peer, s)
    } catch (err) {
      // A timer callback: whatever went wrong must not take the agent down.
      this.c.log.warn({ err: errorMessage(err) }, 'heartbeat round failed')
    }
  }

  /**
   * Follow the roster now: drop streams to former members, open streams to new ones
   * (the first beat goes out when a stream opens). Returns the streams already open.
   */
  follow (): Array<[string, Stream]> {
    if (!this.running) return []
    const members = new Set(this.c.members())
    const now = monotonicMs()
    for (const [peer, o] of this.out) {
      if (!members.has(peer)) {
        this.out.delete(peer)
        o.stream.abort(new Error('no longer a member'))
      } else if (now - o.lastEcho > STALE_BEATS * this.c.intervalMs) {
        this.replace(peer, o)
      }
    }
    const open: Array<[string, Stream]> = []
    for (const peer of members) {
      const o = this.out.get(peer)
      if (o == null) this.open(peer)
      else open.push([peer, o.stream])
    }
    return open
  }

  /** No echo for a while: a new stream, and a new connection if this one looks dead. */
  private replace (peer: string, o: Outbound): void {
    this.out.delete(peer)
    o.stream.abort(new Error('no echo'))
    const others = this.c.node.getConnections(peerIdFromString(peer)).filter(c => c !== o.connection && c.status === 'open')
    if (others.length > 0) {
      this.c.log.debug({ peer, connection: o.connection.id }, 'closing a connection that carried no heartbeat echo')
      o.connection.close().catch(() => { o.connection.abort(new Error('no heartbeat echo')) })
    }
  }

  private beat (peer: string, s: Stream): void {
    if (s.status !== 'open' || s.writableNeedsDrain) return
    try {
      s.send(BEAT)
    } catch (err) {
      this.c.log.debug({ peer, err: errorMessage(err) }, 'heartbeat stream failed')
      if (this.out.get(peer)?.stream === s) this.out.delete(peer)
      s.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }

  private open (peer: string): void {
    // One attempt per member at a time. Heartbeats never dial: reconnecting is the
    // membership sync's job (protocols/roster.md), and a member we are not connected
    // to is not heard, which is what liveness should say.
    if (this.opening.has(peer)) return
    // The newest open connection: an older one may be the half-open kind replace() closes.
    const conn = this.c.node.getConnections(peerIdFromString(peer)).filter(c => c.status === 'open').at(-1)
    if (conn == null) return
    this.opening.add(peer)
    conn.newStream(ALIVE_PROTOCOL, { signal: AbortSignal.timeout(Math.max(this.c.intervalMs, 1000)) })
      .then(stream => {
        if (!this.running || !this.c.members().includes(peer) || this.out.has(peer)) {
          stream.abort(new Error('not needed'))
          return
        }
        const o: Outbound = { stream, connection: conn, lastEcho: monotonicMs() }
        this.out.set(peer, o)
        stream.addEventListener('close', () => { if (this.out.get(peer) === o) this.out.delete(peer) })
        // Echoes: a round trip, so the member is heard too.
        stream.addEventListener('message', () => {
          o.lastEcho = monotonicMs()
          if (this.c.isMember(peer)) this.c.heard(peer)
        })
        this.beat(peer, stream)
      }, (err: unknown) => {
        this.c.log.trace({ peer, err: errorMessage(err) }, 'cannot open heartbeat stream')
      })
      .finally(() => { this.opening.delete(peer) })
  }

  private accept (stream: Stream, connection: Connection): void {
    const peer = connection.remotePeer.toString()
    if (!this.running || !this.c.isMember(peer)) {
      stream.abort(new Error('not a member of this host\'s group'))
      return
    }
    this.inbound.add(stream)
    let bytes = 0
    const window = setInterval(() => { bytes = 0 }, this.c.intervalMs)
    stream.addEventListener('close', () => {
      clearInterval(window)
      this.inbound.delete(stream)
    })
    stream.addEventListener('message', (evt) => {
      const data = evt.data instanceof Uint8Array ? evt.data : evt.data.subarray()
      const len = data.byteLength
      bytes += len
      const valid = bytes <= MAX_BYTES_PER_INTERVAL && data.every(b => b === HEARTBEAT)
      if (!valid || !this.c.isMember(peer)) {
        this.c.log.debug({ peer, bytes: len }, 'heartbeat stream reset: not a heartbeat, too many bytes, or no longer a member')
        stream.abort(new Error('invalid heartbeat'))
        return
      }
      this.c.heard(peer)
      // Echo one byte, whatever arrived: skipped, not queued, if the sender stopped reading.
      if (stream.status === 'open' && !stream.writableNeedsDrain) {
        try { stream.send(BEAT) } catch { /* the stream closed meanwhile */ }
      }
    })
    this.c.heard(peer)
  }
}
