/**
 * Fetching one catalog item by swarming: ask every member which chunks it holds
 * (GET_HAVE, refreshed every second), and keep a few worker streams per member busy
 * with chunks that member holds, picked at random so members that are syncing too
 * serve each other and the leader's link is not the bottleneck. Every chunk is
 * checked against the manifest before it is written; a member that sends wrong bytes
 * is counted and, after a few faults, left out for a while; a member that stalls loses
 * its stream and the chunk goes back to the pool. Memory: at most one chunk per worker.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import type { Logger } from '../agent/logger.js'
import type { EdgelinkNode } from '../net/node.js'
import { errorMessage } from '../errors.js'
import { ChunkMismatchError, type PartialBlob } from './blobs.js'
import { chunkLength } from './manifest.js'
import { SyncSession } from './sync-protocol.js'

export interface FetchOptions {
  /** Worker streams per member. */
  perPeer: number
  /** Worker streams in all. */
  total: number
  /** One chunk request, before the member counts as stalled. */
  chunkTimeoutMs: number
  /** How often members are asked what they hold. */
  haveIntervalMs: number
  /** Wrong chunks before a member is left out. */
  maxFaults: number
  /** How long a faulty member is left out. */
  banMs: number
}

export interface FetchDeps {
  node: EdgelinkNode
  log: Logger
  /** Members other than this host, now. */
  peers: () => string[]
  /** Bytes received from a member (for the swarming measurement). */
  received: (peer: string, bytes: number) => void
  /** A chunk was stored (progress). */
  progress: () => void
  /** A member sent a chunk that did not match the manifest. */
  fault: (peer: string) => void
}

export class ItemFetch {
  private readonly d: FetchDeps
  private readonly o: FetchOptions
  private readonly partial: PartialBlob
  private readonly have = new Map<string, Uint8Array>()
  private readonly inFlight = new Set<number>()
  private readonly workers = new Map<string, number>()
  private readonly faults = new Map<string, number>()
  private readonly bannedUntil = new Map<string, number>()
  private wake: () => void = () => {}
  private unflushed = 0
  private lastFlush = Date.now()
  private readonly signal: AbortSignal

  constructor (d: FetchDeps, o: FetchOptions, partial: PartialBlob, signal: AbortSignal) {
    this.d = d
    this.o = o
    this.partial = partial
    this.signal = signal
  }

  /** Fetch every missing chunk, then verify and complete the blob. */
  async run (): Promise<void> {
    const timer = setInterval(() => { void this.refreshHave() }, this.o.haveIntervalMs)
    const onAbort = (): void => { this.wake() }
    this.signal.addEventListener('abort', onAbort)
    try {
      await this.refreshHave()
      while (this.partial.missing().length > 0) {
        if (this.signal.aborted) throw new Error('fetch cancelled')
        const changed = new Promise<void>(resolve => { this.wake = resolve })
        this.spawnWorkers()
        await changed
      }
      await this.partial.flush()
      await this.partial.complete()
    } finally {
      clearInterval(timer)
      this.signal.removeEventListener('abort', onAbort)
      await this.partial.flush().catch(err => { this.d.log.warn({ err: errorMessage(err) }, 'cannot flush partial blob') })
    }
  }

  private async refreshHave (): Promise<void> {
    const digest = this.partial.digest
    await Promise.all(this.d.peers().map(async peer => {
      if ((this.bannedUntil.get(peer) ?? 0) > Date.now()) return
      let session: SyncSession | undefined
      try {
        session = await SyncSession.open(this.d.node, peerIdFromString(peer), this.o.chunkTimeoutMs)
        this.have.set(peer, await session.have(digest))
      } catch {
        this.have.delete(peer)
      } finally {
        session?.close()
      }
    }))
    this.wake()
  }

  private spawnWorkers (): void {
    let running = [...this.workers.values()].reduce((a, b) => a + b, 0)
    for (const peer of shuffle([...this.have.keys()])) {
      if ((this.bannedUntil.get(peer) ?? 0) > Date.now()) continue
      while ((this.workers.get(peer) ?? 0) < this.o.perPeer && running < this.o.total && this.available(peer) != null) {
        this.workers.set(peer, (this.workers.get(peer) ?? 0) + 1)
        running++
        void this.worker(peer).finally(() => {
          this.workers.set(peer, (this.workers.get(peer) ?? 1) - 1)
          this.wake()
        })
      }
    }
  }

  /** A missing chunk this member holds and nobody is fetching, picked at random. */
  private available (peer: string): number | undefined {
    const bits = this.have.get(peer)
    if (bits == null) return undefined
    const candidates = this.partial.missing().filter(i => !this.inFlight.has(i) && (bits[i >> 3] & (1 << (i & 7))) !== 0)
    return candidates.length === 0 ? undefined : candidates[Math.floor(Math.random() * candidates.length)]
  }

  private async worker (peer: string): Promise<void> {
    let session: SyncSession
    try {
      session = await SyncSession.open(this.d.node, peerIdFromString(peer), this.o.chunkTimeoutMs)
    } catch (err) {
      this.d.log.debug({ peer, err: errorMessage(err) }, 'cannot open a sync stream')
      this.have.delete(peer)
      return
    }
    try {
      for (;;) {
        if (this.signal.aborted) return
        const index = this.available(peer)
        if (index == null) return
        this.inFlight.add(index)
        try {
          const data = await session.chunk(this.partial.digest, index, chunkLength(this.partial.manifest, index))
          this.d.received(peer, data.length)
          await this.partial.writeChunk(index, data)
          this.d.progress()
          await this.maybeFlush()
        } catch (err) {
          if (err instanceof ChunkMismatchError) {
            const n = (this.faults.get(peer) ?? 0) + 1
            this.faults.set(peer, n)
            this.d.fault(peer)
            this.d.log.warn({ peer, index, faults: n }, 'member sent a chunk that does not match the manifest; fetching it elsewhere')
            if (n >= this.o.maxFaults) {
              this.bannedUntil.set(peer, Date.now() + this.o.banMs)
              this.have.delete(peer)
              return
            }
            continue
          }
          this.d.log.info({ peer, index, err: errorMessage(err) }, 'chunk request failed; fetching it elsewhere')
          // Forget what it holds until the next refresh: a stalled or vanished member gets no more work now.
          this.have.delete(peer)
          return
        } finally {
          this.inFlight.delete(index)
        }
      }
    } finally {
      session.close()
    }
  }

  /** Durable every 16 chunks or second: a crash re-fetches at most that much. */
  private async maybeFlush (): Promise<void> {
    this.unflushed++
    if (this.unflushed >= 16 || Date.now() - this.lastFlush >= 1000) {
      this.unflushed = 0
      this.lastFlush = Date.now()
      await this.partial.flush()
    }
  }
}

function shuffle<T> (xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    ;[xs[i], xs[j]] = [xs[j], xs[i]]
  }
  return xs
}
