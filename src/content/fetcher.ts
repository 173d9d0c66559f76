/**
 * Fetching one catalog item by swarming: ask every member which chunks it holds
 * (GET_HAVE, refreshed every `haveIntervalMs`), and keep a few worker streams per member busy
 * with chunks that member holds, rarest first (BitTorrent's rule): from the leader a
 * follower takes chunks no other member has yet, from a follower the chunks that
 * follower has, so followers that sync at the same time fetch different chunks from
 * the leader and then serve each other, and the leader's link is not the bottleneck.
 * Ties are broken at random among the first few missing chunks. Every chunk is
 * checked against the manifest before it is written; a member that sends wrong bytes
 * is counted and, after a few faults, left out for a while; a member that stalls loses
 * its stream and the chunk goes back to the pool. Memory: at most one chunk per worker.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import type { Logger } from '../agent/logger.js'
import type { EdgelinkNode } from '../net/node.js'
import { errorMessage } from '../errors.js'
import { ChunkMismatchError, type PartialBlob } from './blobs.js'
import type { CatalogItemView } from './catalog.js'
import { chunkLength, decodeManifest, manifestDigest, type ManifestView } from './manifest.js'
import { SEED_HOLD_MS, SyncRefusedError, SyncSession, SyncStatus } from './sync-protocol.js'
import { monotonicMs } from '../util/clock.js'

/** Ties for the rarest chunk are broken at random among the first this many. */
const TIE_WINDOW = 16

export interface FetchOptions {
  /**
   * Chunk requests in flight in all, spread over the members that answer GET_HAVE:
   * all of them on the only one (a 1-to-1 transfer keeps several chunks moving), one
   * each when several answer, two on a member still syncing (a swarm: fewer queued
   * megabytes per connection, so what members advertise is fresh, and a chunk is
   * asked for where it is rarest rather than always from the leader).
   */
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
  /**
   * How long the fetch waits while no member holds (or is fetching) any chunk still
   * missing here, before it ends with an error that says so (the service shows it and
   * tries again): otherwise an item nobody can serve shows "syncing" for ever.
   */
  noSourceMs: number
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
  /** What each member said it is fetching now (GET_HAVE's hint). */
  private readonly fetchingAt = new Map<string, Uint8Array>()
  /** How many members hold or are fetching each chunk, as of the last GET_HAVE round. */
  private rarity = new Uint16Array(0)
  /** How many members that do not hold the whole file hold or are fetching each chunk. */
  private viaPartial = new Uint16Array(0)
  /** Every chunk is held here or by (or on its way to) a member still syncing: see available(). */
  private endGame = false
  /** Members that hold every chunk. */
  private readonly seeds = new Set<string>()
  /** Chunks a whole-file holder refused (SYNC_BUSY: sent to another member just now), until then. */
  private readonly busyUntil = new Map<number, number>()
  /** Members whose last chunk request failed (stalled, vanished), until then: not counted as a way to a chunk. */
  private readonly failedUntil = new Map<string, number>()
  private readonly inFlight = new Set<number>()
  private readonly workers = new Map<string, number>()
  private readonly faults = new Map<string, number>()
  private readonly bannedUntil = new Map<string, number>()
  private wake: () => void = () => {}
  /** A local failure (see stop()) that ends the fetch. */
  private failure: { err: unknown } | undefined
  private unflushed = 0
  /** When a member last held, or was fetching, a chunk missing here (or a chunk was in flight). */
  private sourceSeen = monotonicMs()
  /** The last failed GET_HAVE answer, per member: said when no member can serve. */
  private readonly haveErrors = new Map<string, string>()
  private lastFlush = monotonicMs()
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
        if (this.failure != null) throw this.failure.err
        if (this.signal.aborted) throw new Error('fetch cancelled')
        if (monotonicMs() - this.sourceSeen > this.o.noSourceMs) throw this.noSource()
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
      if ((this.bannedUntil.get(peer) ?? 0) > monotonicMs()) return
      let session: SyncSession | undefined
      try {
        session = await SyncSession.open(this.d.node, peerIdFromString(peer), this.o.chunkTimeoutMs, this.signal)
        const { have, fetching } = await session.haveAndFetching(digest)
        this.have.set(peer, have)
        this.fetchingAt.set(peer, fetching)
        this.haveErrors.delete(peer)
      } catch (err) {
        this.have.delete(peer)
        this.fetchingAt.delete(peer)
        this.haveErrors.set(peer, err instanceof SyncRefusedError ? err.message : errorMessage(err))
      } finally {
        session?.close()
      }
    }))
    this.countHolders()
    if (this.inFlight.size > 0 || this.partial.missing().some(i => this.rarity[i] > 0)) this.sourceSeen = monotonicMs()
    this.wake()
  }

  private noSource (): Error {
    const missing = this.partial.missing().length
    const asked = this.d.peers().length
    const last = [...this.haveErrors.values()].at(-1)
    return new Error(`no member holds the ${missing} missing chunk${missing === 1 ? '' : 's'} of ${this.partial.digest} (asked ${asked} member${asked === 1 ? '' : 's'} for ${Math.round(this.o.noSourceMs / 1000)} s${last != null ? `; last answer: ${last.slice(0, 160)}` : ''}); it is tried again, and completes once a member holds the file`)
  }

  private countHolders (): void {
    const n = this.partial.manifest.chunks.length
    const counts = new Uint16Array(n)
    const partial = new Uint16Array(n)
    this.seeds.clear()
    const now = monotonicMs()
    for (const [peer, bits] of this.have) {
      const seed = countSet(bits, n) === n
      if (seed) this.seeds.add(peer)
      const usable = (this.bannedUntil.get(peer) ?? 0) <= now && (this.failedUntil.get(peer) ?? 0) <= now
      const fetching = this.fetchingAt.get(peer)
      for (let i = 0; i < n; i++) {
        const mask = 1 << (i & 7)
        const holds = (bits[i >> 3] & mask) !== 0 || (fetching != null && (fetching[i >> 3] & mask) !== 0)
        if (!holds) continue
        counts[i]++
        if (!seed && usable) partial[i]++
      }
    }
    this.rarity = counts
    this.viaPartial = partial
    let covered = true
    for (let i = 0; i < n && covered; i++) if (partial[i] === 0 && !this.partial.has(i)) covered = false
    this.endGame = covered
  }

  /** Chunks in flight here, as a bitmap (what GET_HAVE tells others this host is fetching). */
  fetchingBitmap (): Uint8Array {
    const bits = new Uint8Array(Math.ceil(this.partial.manifest.chunks.length / 8))
    for (const i of this.inFlight) bits[i >> 3] |= 1 << (i & 7)
    return bits
  }

  /** Workers per member now (see FetchOptions.perPeer). */
  private perPeerNow (peer?: string): number {
    const spread = Math.max(1, Math.min(this.o.perPeer, Math.ceil(this.o.perPeer / Math.max(1, this.have.size))))
    // A member still syncing gets two: it has few chunks to offer and learns of requests late,
    // so a second request keeps its link busy while the first one's answer is on the way.
    return peer != null && !this.seeds.has(peer) ? Math.max(spread, Math.min(2, this.o.perPeer)) : spread
  }

  private spawnWorkers (): void {
    let running = [...this.workers.values()].reduce((a, b) => a + b, 0)
    for (const peer of shuffle([...this.have.keys()])) {
      if ((this.bannedUntil.get(peer) ?? 0) > monotonicMs()) continue
      while ((this.workers.get(peer) ?? 0) < this.perPeerNow(peer) && running < this.o.total && this.available(peer) != null) {
        this.workers.set(peer, (this.workers.get(peer) ?? 0) + 1)
        running++
        void this.worker(peer).finally(() => {
          this.workers.set(peer, (this.workers.get(peer) ?? 1) - 1)
          this.wake()
        })
      }
    }
  }

  /**
   * A missing chunk this member holds and nobody here is fetching: the rarest, ties at
   * random. From a member that holds the whole file (the leader, typically), not a chunk
   * that a member still syncing holds or is fetching: that one gets it from there, and
   * the whole-file holder's link goes to chunks nobody else has (what makes a fan-out
   * cost about one copy from the leader, not one per follower).
   */
  private available (peer: string): number | undefined {
    const bits = this.have.get(peer)
    if (bits == null) return undefined
    const missing = this.partial.missing()
    // End game: once members still syncing hold (or are fetching) every chunk, the whole-file
    // holder has nothing left that only it can give anyone; its link would idle while the
    // syncing members serve each other the last chunks, so it is asked as well.
    const seed = this.seeds.has(peer)
    const now = monotonicMs()
    const spareSeed = seed && !this.endGame
    let best = Infinity
    let ties: number[] = []
    for (const i of missing) {
      if (this.inFlight.has(i) || (bits[i >> 3] & (1 << (i & 7))) === 0) continue
      if (seed && (this.busyUntil.get(i) ?? 0) > now) continue
      if (spareSeed && (this.viaPartial[i] ?? 0) > 0) continue
      const r = this.rarity[i] ?? 0
      if (r < best) { best = r; ties = [i] } else if (r === best) ties.push(i)
    }
    // From the only member there is, among the first few ties (missing() is ascending): roughly
    // in order, so the whole-file hash keeps up with the transfer (see partial.ts). In a swarm,
    // among all of them, so members syncing at once rarely ask the leader for the same chunk.
    const window = this.have.size <= 1 ? TIE_WINDOW : ties.length
    return ties.length === 0 ? undefined : ties[Math.floor(Math.random() * Math.min(ties.length, window))]
  }

  private async worker (peer: string): Promise<void> {
    let session: SyncSession
    try {
      session = await SyncSession.open(this.d.node, peerIdFromString(peer), this.o.chunkTimeoutMs, this.signal)
    } catch (err) {
      this.d.log.debug({ peer, err: errorMessage(err) }, 'cannot open a sync stream')
      this.have.delete(peer)
      this.failedUntil.set(peer, monotonicMs() + this.o.chunkTimeoutMs)
      this.countHolders()
      return
    }
    try {
      for (;;) {
        if (this.signal.aborted || this.failure != null) return
        // More members can serve now: leave this one's extra streams to them.
        if ((this.workers.get(peer) ?? 0) > this.perPeerNow(peer)) return
        const index = this.available(peer)
        if (index == null) return
        this.inFlight.add(index)
        try {
          const length = chunkLength(this.partial.manifest, index)
          const data = await session.chunk(this.partial.digest, index, length)
          this.d.received(peer, length)
          try {
            await this.partial.writeChunk(index, data)
            this.d.progress()
            await this.maybeFlush()
          } catch (err) {
            if (err instanceof ChunkMismatchError) throw err
            // This host's fault (a full disk, an I/O error), not the member's: blaming it and
            // fetching the chunk again would only download it again and again. The fetch ends
            // with the error, and the service shows it and retries later.
            this.stop(err)
            return
          }
        } catch (err) {
          if (err instanceof SyncRefusedError && err.status === SyncStatus.SYNC_BUSY) {
            // A whole-file holder sent it to another member just now: take it from there, and
            // ask no whole-file holder for it while that holder would refuse anyway.
            this.busyUntil.set(index, monotonicMs() + SEED_HOLD_MS)
            continue
          }
          if (err instanceof ChunkMismatchError) {
            const n = (this.faults.get(peer) ?? 0) + 1
            this.faults.set(peer, n)
            this.d.fault(peer)
            this.d.log.warn({ peer, index, faults: n }, 'member sent a chunk that does not match the manifest; fetching it elsewhere')
            if (n >= this.o.maxFaults) {
              this.bannedUntil.set(peer, monotonicMs() + this.o.banMs)
              this.have.delete(peer)
              return
            }
            continue
          }
          if (this.signal.aborted) return // the fetch was cancelled (its streams with it)
          this.d.log.info({ peer, index, err: errorMessage(err) }, 'chunk request failed; fetching it elsewhere')
          // Forget what it holds until the next refresh: a stalled or vanished member gets no more work now,
          // and for a while is no reason to pass over a whole-file holder.
          this.have.delete(peer)
          this.failedUntil.set(peer, monotonicMs() + this.o.chunkTimeoutMs)
          this.countHolders()
          return
        } finally {
          this.inFlight.delete(index)
        }
      }
    } finally {
      session.close()
    }
  }

  /** End the fetch with a local failure: no new chunk requests; run() rejects with `err`. */
  private stop (err: unknown): void {
    this.failure ??= { err }
    this.wake()
  }

  /** Durable every 16 chunks or second: a crash re-fetches at most that much. */
  private async maybeFlush (): Promise<void> {
    this.unflushed++
    if (this.unflushed >= 16 || monotonicMs() - this.lastFlush >= 1000) {
      this.unflushed = 0
      this.lastFlush = monotonicMs()
      await this.partial.flush()
    }
  }
}

function countSet (bits: Uint8Array, n: number): number {
  let c = 0
  for (let i = 0; i < n; i++) if ((bits[i >> 3] & (1 << (i & 7))) !== 0) c++
  return c
}

function shuffle<T> (xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    ;[xs[i], xs[j]] = [xs[j], xs[i]]
  }
  return xs
}

/**
 * Ask `peers` in turn for an item's manifest; accept only one whose digest the catalog
 * names (and that describes the item's digest and size).
 */
export async function fetchManifest (d: Pick<FetchDeps, 'node' | 'log'>, peers: string[], item: CatalogItemView, timeoutMs: number, signal: AbortSignal): Promise<ManifestView> {
  for (const peer of peers) {
    signal.throwIfAborted()
    let session: SyncSession | undefined
    try {
      session = await SyncSession.open(d.node, peerIdFromString(peer), timeoutMs, signal)
      const bytes = await session.manifest(item.digest)
      if (Buffer.from(manifestDigest(bytes)).toString('hex') !== item.manifestDigest) {
        d.log.warn({ peer, digest: item.digest }, 'member sent a manifest that does not match the catalog')
        continue
      }
      const m = decodeManifest(bytes)
      if (m.digest !== item.digest || m.size !== item.size) continue
      return m
    } catch (err) {
      d.log.debug({ peer, err: errorMessage(err) }, 'manifest not available from member')
    } finally {
      session?.close()
    }
  }
  throw new Error('no member could provide the manifest yet')
}
