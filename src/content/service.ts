/**
 * Content on every host (see protocols/sync.md): the leader uploads files into its
 * blob store and lists them in the signed catalog; every member fetches what the
 * catalog lists from every member that has it, serves what it has, reports its
 * progress in its status, and deletes what the catalog no longer lists.
 */
import type { PrivateKey } from '@libp2p/interface'
import type { AgentConfig } from '../agent/config.js'
import type { Logger } from '../agent/logger.js'
import type { AuditLog } from '../audit/index.js'
import type { EdgelinkNode } from '../net/node.js'
import type { Store, Sublevel } from '../store/index.js'
import type { GroupService } from '../group/service.js'
import type { StatusService, ContentHooks } from '../status/service.js'
import type { ContentProgress } from '../wire/group.js'
import type { ContentProgressView } from '../status/records.js'
import { hostRow, reportedRow, type ContentItemView, type HostItemState, type ItemState } from './item-state.js'
import { BadRequestError, EdgelinkError, errorMessage, NotFoundError } from '../errors.js'
import { GroupStateError } from '../group/errors.js'
import { Mutex } from '../util/mutex.js'
import { BlobStore, InsufficientSpaceError } from './blobs.js'
import { isNoSpace } from './errors.js'
import { CHUNK_SIZE, encodeManifest, isDigest, manifestDigest, type ManifestView } from './manifest.js'
import { CONTENT_KINDS, MAX_CATALOG_ITEMS, catalogProblem, catalogVerdict, signCatalog, verifyCatalog, type CatalogItemView, type ContentKind, type SignedCatalog } from './catalog.js'
import { ChunkClaims, SYNC_PROTOCOL, MAX_INBOUND_SYNC_STREAMS, syncHandler, type SyncServer } from './sync-protocol.js'
import { fetchManifest, ItemFetch, type FetchOptions } from './fetcher.js'
import { missingBytes } from './bitmap.js'
import { sameBytes } from '../util/bytes.js'
import { contentNameProblem } from './names.js'
import { monotonicMs } from '../util/clock.js'

/** Files of fewer chunks are sent to every member that asks (see claim()). */
const SUPERSEED_MIN_CHUNKS = 16

/** Retry an item that failed (no member has it yet, disk full, bad data) this often. */
const RETRY_MS = 5_000

export interface ContentComponents {
  node: EdgelinkNode
  store: Store
  privateKey: PrivateKey
  config: AgentConfig
  log: Logger
  audit: AuditLog
  group: GroupService
  status: StatusService
  blobsDir: string
  /** Fetch tuning; tests shorten timeouts. */
  fetch?: Partial<FetchOptions>
  /** Free space of the blob store's file system; tests inject a small one. */
  freeSpace?: () => Promise<number>
}

export type { ItemState, HostItemState, ContentItemView } from './item-state.js'

interface LocalState { state: ItemState, error?: string }

const DEFAULT_FETCH: FetchOptions = { perPeer: 4, total: 16, chunkTimeoutMs: 10_000, haveIntervalMs: 250, maxFaults: 3, banMs: 60_000, noSourceMs: 30_000 }

export class ContentService implements ContentHooks, SyncServer {
  private readonly c: ContentComponents
  private readonly self: string
  readonly blobs: BlobStore
  private readonly db: Sublevel<string>
  private current?: SignedCatalog
  private readonly local = new Map<string, LocalState>()
  private readonly active = new Map<string, AbortController>()
  private readonly claims = new ChunkClaims()
  /** Running fetches by digest, so GET_HAVE can say which chunks are on their way here. */
  private readonly fetches = new Map<string, ItemFetch>()
  /** Running fetches, so stop() can wait for their last flush before the store closes. */
  private readonly inflight = new Set<Promise<void>>()
  private readonly retries = new Map<string, NodeJS.Timeout>()
  /** Uploads stored and not yet listed in the catalog, by digest (a count: the same file may be uploaded twice at once). */
  private readonly uploading = new Map<string, number>()
  private readonly changeLock = new Mutex()
  /** The highest catalog version seen in a valid catalog, kept or not (issue() goes above it). */
  /** The highest catalog version seen for a group (not only held); see issue(). */
  private seen = { groupId: '', version: 0 }
  private readonly fetchOptions: FetchOptions
  /** Bytes served to and received from each member since start (the swarming measurement). */
  readonly traffic = { served: new Map<string, number>(), received: new Map<string, number>(), faults: new Map<string, number>() }
  private unsubscribe?: () => void
  private running = false

  constructor (c: ContentComponents) {
    this.c = c
    this.self = c.node.peerId.toString()
    this.db = c.store.sublevel<string>('catalog')
    this.blobs = new BlobStore(c.blobsDir, c.store.sublevel<unknown>('content') as never, c.log, c.freeSpace != null ? { freeSpace: c.freeSpace } : undefined)
    this.fetchOptions = { ...DEFAULT_FETCH, ...c.fetch }
  }

  async start (): Promise<void> {
    if (this.running) return
    this.running = true
    await this.blobs.init()
    const stored = await this.db.get('catalog')
    if (stored != null) {
      try {
        this.current = await verifyCatalog(Buffer.from(stored, 'base64'))
      } catch (err) {
        this.c.log.warn({ err: errorMessage(err) }, 'dropping a stored catalog that does not verify')
      }
    }
    await this.c.node.handle(SYNC_PROTOCOL, syncHandler(this, this.c.log), { maxInboundStreams: MAX_INBOUND_SYNC_STREAMS })
    this.c.status.attachContent(this)
    this.unsubscribe = this.c.group.onChange(() => { this.schedule(); this.reissueAsLeader() })
    this.schedule()
    this.reissueAsLeader()
  }

  async stop (): Promise<void> {
    if (!this.running) return
    this.running = false
    this.unsubscribe?.()
    for (const t of this.retries.values()) clearTimeout(t)
    this.retries.clear()
    for (const a of this.active.values()) a.abort()
    this.active.clear()
    // Each fetch flushes its verified chunks on the way out; the store must still be open.
    await Promise.allSettled([...this.inflight])
    await this.c.node.unhandle(SYNC_PROTOCOL)
    this.blobs.close()
  }

  // ---- operator ---------------------------------------------------------------

  /** Upload (leader only): stream the bytes into the blob store and list them in the catalog. */
  async add (source: AsyncIterable<Uint8Array>, opts: { name: string, kind: string, size?: number, signal?: AbortSignal }): Promise<CatalogItemView> {
    const nameProblem = contentNameProblem(opts.name)
    if (nameProblem != null) throw new BadRequestError(nameProblem, 'CONTENT_NAME_INVALID')
    if (!(CONTENT_KINDS as readonly string[]).includes(opts.kind)) throw new BadRequestError(`kind must be one of ${CONTENT_KINDS.join(', ')}`, 'CONTENT_KIND_INVALID')
    this.requireLeader('upload content')
    const room = this.catalogRoom(opts.name, opts.kind, opts.size)
    if (room != null) throw new EdgelinkError(room, 'CATALOG_FULL', 409)
    // From the moment the file is stored until the catalog lists it (or the upload fails),
    // schedule() must not delete it as "no longer in the catalog".
    let stored: string | undefined
    const manifest = await this.blobs.ingest(source, {
      signal: opts.signal,
      expectedSize: opts.size,
      onStored: (digest) => { stored = digest; this.uploading.set(digest, (this.uploading.get(digest) ?? 0) + 1) }
    })
    try {
      return await this.listUpload(manifest, opts)
    } finally {
      if (stored != null) {
        const n = (this.uploading.get(stored) ?? 1) - 1
        if (n > 0) this.uploading.set(stored, n)
        else this.uploading.delete(stored)
        if (!this.inCatalog(stored)) this.schedule() // the upload failed to be listed: delete it now
      }
    }
  }

  private async listUpload (manifest: ManifestView, opts: { name: string, kind: string }): Promise<CatalogItemView> {
    return await this.changeLock.run(async () => {
      this.requireLeader('upload content')
      const items = (this.held()?.view.items ?? []).filter(i => i.digest !== manifest.digest)
      const item: CatalogItemView = {
        digest: manifest.digest,
        name: opts.name,
        kind: opts.kind as ContentKind,
        size: manifest.size,
        chunkSize: manifest.chunkSize,
        manifestDigest: Buffer.from(manifestDigest(encodeManifest(manifest))).toString('hex'),
        addedAt: new Date().toISOString()
      }
      // Checked before the upload too (catalogRoom); again here, where uploads that ran at
      // the same time are listed one after another.
      const full = catalogProblem([...items, item], this.c.group.requireMembership().record.roster.groupId, this.self)
      if (full != null) throw new EdgelinkError(full, 'CATALOG_FULL', 409)
      await this.issue([...items, item])
      this.c.audit.record('content.added', { digest: item.digest, name: item.name, kind: item.kind, size: item.size })
      return item
    })
  }

  /** Whether an item of this name could be listed (a placeholder stands for its digest); see catalogProblem. */
  private catalogRoom (name: string, kind: string, size = 0): string | undefined {
    const r = this.c.group.requireMembership().record.roster
    const placeholder: CatalogItemView = { digest: `sha256:${'0'.repeat(64)}`, name, kind: kind as ContentKind, size, chunkSize: CHUNK_SIZE, manifestDigest: '0'.repeat(64), addedAt: new Date().toISOString() }
    return catalogProblem([...(this.held()?.view.items ?? []), placeholder], r.groupId, this.self)
  }

  /** Remove (leader only): drop the item from the catalog; every member deletes its blob. */
  async remove (digest: string): Promise<{ removed: string }> {
    if (!isDigest(digest)) throw new BadRequestError(`"${digest.slice(0, 80)}" is not a digest (sha256:<64 hex>); see \`edgelink content ls\``, 'CONTENT_DIGEST_INVALID')
    return await this.changeLock.run(async () => {
      this.requireLeader('remove content')
      const items = this.held()?.view.items ?? []
      if (!items.some(i => i.digest === digest)) throw new NotFoundError(`${digest} is not in the catalog; see \`edgelink content ls\``, 'CONTENT_UNKNOWN')
      await this.issue(items.filter(i => i.digest !== digest))
      this.c.audit.record('content.removed', { digest })
      return { removed: digest }
    })
  }

  /** The catalog with every member's state for each item. */
  list (): ContentItemView[] {
    const members = this.c.group.roster?.members ?? []
    return (this.held()?.view.items ?? []).map(item => {
      const hosts = members.map(m => this.hostState(m.peerId, m.hostname, item))
      return { ...item, hosts, complete: hosts.filter(h => h.state === 'complete').length }
    })
  }

  /** Path of a complete blob, for `content get`. */
  pathOf (digest: string): { path: string, size: number } {
    if (!isDigest(digest)) throw new BadRequestError(`"${digest.slice(0, 80)}" is not a digest (sha256:<64 hex>)`, 'CONTENT_DIGEST_INVALID')
    if (!this.blobs.has(digest)) throw new NotFoundError(`${digest} is not complete on this host; see \`edgelink content ls\``, 'CONTENT_NOT_HERE')
    return { path: this.blobs.path(digest), size: this.blobs.manifest(digest)?.size ?? 0 }
  }

  /** Content summary for the hosts table: complete items out of the catalog's. */
  summary (peer: string): { complete: number, total: number } {
    const items = this.held()?.view.items ?? []
    const hostname = this.c.group.roster?.members.find(m => m.peerId === peer)?.hostname ?? ''
    return { complete: items.filter(i => this.hostState(peer, hostname, i).state === 'complete').length, total: items.length }
  }

  // ---- ContentHooks ---------------------------------------------------------------

  progress (): ContentProgress[] {
    return (this.held()?.view.items ?? []).map(i => {
      const s = this.localState(i)
      return { digest: i.digest, state: s.state, have: s.have, total: s.total, error: s.error ?? '' }
    })
  }

  catalog (): Uint8Array | undefined {
    return this.held()?.bytes
  }

  async receive (bytes: Uint8Array, via: string): Promise<'stored' | 'stale' | 'refused'> {
    // An exact copy of the catalog we hold (pulls repeat it) needs no signature check.
    const held = this.held()
    if (held != null && sameBytes(held.bytes, bytes)) return 'stale'
    let c: SignedCatalog
    try {
      c = await verifyCatalog(bytes)
    } catch (err) {
      this.c.log.debug({ via, err: errorMessage(err) }, 'catalog refused')
      return 'refused'
    }
    const r = this.c.group.roster
    if (r == null || c.view.groupId !== r.groupId || c.view.term > r.term) return 'refused'
    const leader = await this.c.group.leaderOfTerm(c.view.term).catch(() => undefined)
    if (leader !== c.view.issuer) return 'refused'
    const verdict = catalogVerdict(c.view, this.held()?.view, r, this.self)
    if (verdict !== 'older-term') this.seen = { groupId: c.view.groupId, version: Math.max(this.seen.groupId === c.view.groupId ? this.seen.version : 0, c.view.version) }
    if (verdict === 'merge') await this.mergeCatalog(c, via)
    if (verdict !== 'keep') return 'stale'
    await this.keep(c)
    return 'stored'
  }

  /**
   * A new leader signs the catalog it holds again, in its own term: members refuse
   * catalogs of an earlier term once they know a newer one (see receive), so a host that
   * joins or comes back later still gets the catalog from this term's leader.
   */
  private reissueAsLeader (): void {
    const r = this.c.group.roster
    const held = this.held()
    if (!this.running || r == null || r.leader !== this.self || held == null || held.view.term >= r.term) return
    this.changeLock.run(async () => {
      const now = this.c.group.roster
      const c = this.held()
      if (c == null || now == null || now.leader !== this.self || c.view.term >= now.term) return
      await this.issue(c.view.items)
      this.c.log.info({ term: now.term, items: c.view.items.length }, 'catalog signed again in this leader\'s term')
    }).catch(err => { this.c.log.warn({ err: errorMessage(err) }, 'cannot sign the catalog again in this term') })
  }

  /** See receive(): list every item of `theirs` that ours lacks, in a new version above both. */
  private async mergeCatalog (theirs: SignedCatalog, via: string): Promise<void> {
    await this.changeLock.run(async () => {
      const cur = this.held()?.view
      // Merged already (the same catalog came twice), or leadership moved on meanwhile.
      if (cur == null || cur.term !== this.c.group.roster?.term || theirs.view.version < cur.version || this.c.group.roster?.leader !== this.self) return
      const mine = cur.items
      const added = theirs.view.items.filter(i => !mine.some(m => m.digest === i.digest))
      this.c.log.warn({ via, term: theirs.view.term, version: theirs.view.version, added: added.length }, 'catalog of an earlier term that this leader had not seen; issuing the union of both')
      await this.issue([...mine, ...added].slice(0, MAX_CATALOG_ITEMS))
    }).catch(err => { this.c.log.warn({ err: errorMessage(err) }, 'cannot merge an earlier catalog') })
  }

  // ---- SyncServer ---------------------------------------------------------------------

  authorize (peer: string): boolean { return this.c.group.isMemberPeer(peer) }

  manifest (digest: string): Uint8Array | undefined {
    return this.inCatalog(digest) ? this.blobs.manifestBytes(digest) : undefined
  }

  bitmap (digest: string): Uint8Array | undefined {
    return this.inCatalog(digest) ? this.blobs.bitmap(digest) : undefined
  }

  claim (digest: string, index: number, peer: string): boolean {
    // Only a host with the whole file super-seeds, and only files of many chunks (a small
    // file is over before anyone could fetch it from a member that just got it); a member
    // still syncing serves whoever asks.
    if (!this.blobs.has(digest) || (this.blobs.manifest(digest)?.chunks.length ?? 0) < SUPERSEED_MIN_CHUNKS) return true
    return this.claims.claim(digest, index, peer)
  }

  unclaim (digest: string, index: number, peer: string): void {
    this.claims.unclaim(digest, index, peer)
  }

  fetching (digest: string): Uint8Array | undefined {
    return this.fetches.get(digest)?.fetchingBitmap()
  }

  async chunk (digest: string, index: number): Promise<Uint8Array | undefined> {
    return this.inCatalog(digest) ? await this.blobs.readChunk(digest, index) : undefined
  }

  served (peer: string, bytes: number): void {
    this.traffic.served.set(peer, (this.traffic.served.get(peer) ?? 0) + bytes)
  }

  // ---- internals ----------------------------------------------------------------------

  private requireLeader (what: string): void {
    const r = this.c.group.requireMembership().record.roster
    if (r.leader !== this.self) throw new GroupStateError(`only the leader (${r.leader}) can ${what}; run this on the leader`, 'NOT_LEADER', 403)
  }

  private async issue (items: CatalogItemView[]): Promise<void> {
    const r = this.c.group.requireMembership().record.roster
    // Above every version seen, not only the one held: a catalog this host refused as older
    // by term may carry a higher version, and members holding it would refuse ours.
    const version = Math.max(this.held()?.view.version ?? 0, this.seen.groupId === r.groupId ? this.seen.version : 0) + 1
    const signed = await signCatalog({ groupId: r.groupId, version, items, issuer: this.self, term: r.term }, this.c.privateKey)
    await this.keep(signed)
    await this.c.status.publishCatalog(signed.bytes)
  }

  private async keep (c: SignedCatalog): Promise<void> {
    this.current = c
    // Synced: the leader answers an upload once its catalog holds it (protocols/sync.md).
    await this.db.put('catalog', Buffer.from(c.bytes).toString('base64'), { sync: true })
    this.schedule()
    this.reissueAsLeader()
    void this.c.status.publish(true)
  }

  /** What this host keeps: what the catalog lists, and uploads on their way into it. */
  private keeps (digest: string): boolean {
    return this.inCatalog(digest) || this.uploading.has(digest)
  }

  /**
   * The catalog held, if it is this group's. One kept from a group this host has left
   * counts for nothing in the next: its versions are not that group's (a newer catalog
   * would be refused as older), and its items are not that group's content. While the
   * host is in no group, the last catalog still says what it keeps.
   */
  private held (): SignedCatalog | undefined {
    const r = this.c.group.roster
    return r == null || this.current?.view.groupId === r.groupId ? this.current : undefined
  }

  private inCatalog (digest: string): boolean {
    return this.held()?.view.items.some(i => i.digest === digest) === true
  }

  private hostState (peer: string, hostname: string, item: CatalogItemView): HostItemState {
    if (peer === this.self) return hostRow(peer, hostname, this.localState(item))
    let p: ContentProgressView | undefined
    try {
      p = this.c.status.statusOf(peer).content.find(x => x.digest === item.digest)
    } catch {
      p = undefined
    }
    return reportedRow(peer, hostname, item, p)
  }

  private localState (item: CatalogItemView): { state: ItemState, have: number, total: number, error?: string } {
    const total = Math.ceil(item.size / item.chunkSize)
    if (this.blobs.has(item.digest)) return { state: 'complete', have: total, total }
    const entry = this.blobs.list().find(e => e.digest === item.digest)
    const l = this.local.get(item.digest)
    const have = entry?.have ?? 0
    if (l?.state === 'error') return { state: 'error', have, total, error: l.error }
    return { state: this.active.has(item.digest) ? 'syncing' : 'queued', have, total }
  }

  /** Start fetching what the catalog lists and we lack; delete what it no longer lists. */
  private schedule (): void {
    if (!this.running) return
    const held = this.held()
    const items = held?.view.items ?? []
    const wanted = new Set(items.map(i => i.digest))
    for (const [digest, ctl] of this.active) {
      if (!wanted.has(digest)) { ctl.abort(); this.active.delete(digest) }
    }
    // Without a catalog of this group (just linked, or leading a new one), what is held
    // stays: the group's catalog decides what to keep once it arrives.
    for (const e of held == null ? [] : this.blobs.list()) {
      if (!wanted.has(e.digest)) {
        this.blobs.remove(e.digest, { unless: () => this.keeps(e.digest) }).then(removed => {
          if (removed) this.c.log.info({ digest: e.digest }, 'removed content no longer in the catalog')
        }, err => { this.c.log.warn({ digest: e.digest, err: errorMessage(err) }, 'cannot remove content') })
      }
    }
    if (this.c.group.membership == null) {
      // Unlinked: members no longer serve this host (they check on every request), so
      // stop asking. What is held stays; a new group's catalog decides what to keep.
      for (const ctl of this.active.values()) ctl.abort()
      this.active.clear()
      return
    }
    for (const item of items) {
      if (!this.blobs.has(item.digest) && !this.active.has(item.digest) && !this.retries.has(item.digest)) this.fetch(item)
    }
  }

  private fetch (item: CatalogItemView): void {
    const ctl = new AbortController()
    this.active.set(item.digest, ctl)
    // A retry keeps the error it follows until a chunk arrives (see progress below): an
    // item that fails every time does not flash "syncing" between its errors.
    if (this.local.get(item.digest)?.state !== 'error') this.local.set(item.digest, { state: 'syncing' })
    const run = this.fetchItem(item, ctl.signal).then(() => {
      this.local.delete(item.digest)
      this.c.log.info({ digest: item.digest, name: item.name }, 'content complete')
    }, async (err: unknown) => {
      if (ctl.signal.aborted) return
      const message = err instanceof InsufficientSpaceError ? err.message : isNoSpace(err) ? (await this.noSpace(item)).message : errorMessage(err)
      this.local.set(item.digest, { state: 'error', error: message })
      this.c.log.warn({ digest: item.digest, err: message }, 'content sync failed; will retry')
      this.retries.set(item.digest, setTimeout(() => { this.retries.delete(item.digest); this.schedule() }, RETRY_MS))
    }).finally(async () => {
      if (this.active.get(item.digest) === ctl) this.active.delete(item.digest)
      // Removed from the catalog while this fetch was starting (schedule() found nothing to
      // delete then, and openPartial created the partial after), or finishing: delete it now.
      if (this.running && !this.keeps(item.digest) && this.blobs.list().some(e => e.digest === item.digest)) {
        await this.blobs.remove(item.digest, { unless: () => this.keeps(item.digest) }).catch(e => { this.c.log.warn({ digest: item.digest, err: errorMessage(e) }, 'cannot remove content') })
      }
      this.inflight.delete(run)
      if (this.running) void this.c.status.publish(true)
    })
    this.inflight.add(run)
  }

  private async fetchItem (item: CatalogItemView, signal: AbortSignal): Promise<void> {
    const manifest = this.blobs.manifest(item.digest) ?? await fetchManifest({ node: this.c.node, log: this.c.log }, this.otherMembers(), item, this.fetchOptions.chunkTimeoutMs, signal)
    const partial = await this.blobs.openPartial(manifest)
    try {
      let lastPublish = 0
      const fetch = new ItemFetch({
        node: this.c.node,
        log: this.c.log,
        peers: () => this.otherMembers(),
        received: (peer, n) => { this.traffic.received.set(peer, (this.traffic.received.get(peer) ?? 0) + n) },
        fault: (peer) => { this.traffic.faults.set(peer, (this.traffic.faults.get(peer) ?? 0) + 1) },
        progress: () => {
          if (this.local.get(item.digest)?.state === 'error') this.local.set(item.digest, { state: 'syncing' })
          // Progress in status at most twice a second: others see "syncing N%" without a message per chunk.
          if (monotonicMs() - lastPublish > 500) { lastPublish = monotonicMs(); void this.c.status.publish(true) }
        }
      }, this.fetchOptions, partial, signal)
      this.fetches.set(item.digest, fetch)
      try {
        await fetch.run()
      } finally {
        if (this.fetches.get(item.digest) === fetch) this.fetches.delete(item.digest)
      }
    } finally {
      await partial.close()
    }
  }

  /** Members other than this host, now. */
  private otherMembers (): string[] {
    return (this.c.group.roster?.members ?? []).map(m => m.peerId).filter(p => p !== this.self)
  }

  /** The state a full disk shows: what the item still needs against what is free. */
  private async noSpace (item: CatalogItemView): Promise<InsufficientSpaceError> {
    const m = this.blobs.manifest(item.digest)
    const bits = this.blobs.bitmap(item.digest)
    const need = m != null && bits != null ? missingBytes(m, bits) : item.size
    const have = await this.blobs.available(item.digest).catch(() => 0)
    return new InsufficientSpaceError(need, have)
  }
}
