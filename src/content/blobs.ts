/**
 * The blob store: files kept once by digest under the data dir, outside LevelDB.
 *
 * Layout under `root` (DATA_DIR/blobs, every directory 0700):
 *
 *   sha256/<hex>    complete files; a file appears here only by an atomic rename after
 *                   its whole digest was verified and the file fsynced
 *   partial/<hex>   transfers in progress, sparse, at their final size
 *   tmp/<random>    uploads being received; whatever is here at start-up is deleted
 *
 * The index lives in the `content` sublevel, under keys this store owns:
 * `blob:<digest>` (state, size, chunk size, and for partial files the bitmap of chunks
 * that are written *and* fdatasynced) and `manifest:<digest>` (the manifest encoding).
 *
 * Crash safety: every step leaves either the old state or the new one.
 * - A chunk is marked held only after its bytes were verified, written and made durable
 *   (`flush`): a crash loses unflushed chunks, never marks an unwritten one.
 * - Completion writes a `completing` record (the file is verified and fsynced), renames
 *   the file into sha256/, fsyncs the directory, then records it `complete`. At start-up
 *   a `completing` record becomes complete if its file reached sha256/ with the right
 *   size, and goes back to partial otherwise.
 * - At start-up a complete file is trusted only if the index lists it complete and it is
 *   present with the right size; anything else in sha256/ or partial/ is deleted, and an
 *   entry whose file vanished or has the wrong size (truncated behind our back) is
 *   dropped along with its manifest, so the content is fetched again from scratch.
 *
 * @example
 * ```ts
 * const blobs = new BlobStore(join(dataDir, 'blobs'), store.sublevel('content'), log)
 * await blobs.init()
 * const m = await blobs.ingest(createReadStream(file), { expectedSize: size })
 * const p = await blobs.openPartial(remoteManifest)
 * for (const i of p.missing()) await p.writeChunk(i, await fetchChunk(i))
 * await p.flush(); await p.complete(); await p.close()
 * ```
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, open, readdir, rename, rm, stat, statfs, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from '../agent/logger.js'
import { BadRequestError, EdgelinkError } from '../errors.js'
import type { Sublevel } from '../store/index.js'
import { CHUNK_SIZE, MAX_CONTENT_SIZE, chunkLength, decodeManifest, encodeManifest, isDigest, type ManifestView } from './manifest.js'

export interface BlobEntry {
  digest: string
  state: 'complete' | 'partial'
  /** Chunks held (verified); `total` when complete. */
  have: number
  /** Chunks in the manifest. */
  total: number
  size: number
}

export class ChunkMismatchError extends EdgelinkError {
  static override name = 'ChunkMismatchError'
  constructor (message: string) { super(message, 'CHUNK_MISMATCH', 422) }
}

/** The chunks all matched but the whole file did not (or a chunk changed on disk); thrown by `complete()`. */
export class DigestMismatchError extends EdgelinkError {
  static override name = 'DigestMismatchError'
  constructor (message: string) { super(message, 'DIGEST_MISMATCH', 422) }
}

export class InsufficientSpaceError extends EdgelinkError {
  static override name = 'InsufficientSpaceError'
  readonly need: number
  readonly have: number
  constructor (need: number, have: number) {
    super(`insufficient space (need ${formatBytes(need)}, have ${formatBytes(have)})`, 'INSUFFICIENT_SPACE', 507)
    this.need = need
    this.have = have
  }
}

export interface BlobStoreOptions {
  /** Free bytes available to the store. @default statfs of `root` (blocks available to this user) */
  freeSpace?: () => Promise<number>
}

export interface IngestOptions {
  signal?: AbortSignal
  /** Bytes announced by the sender: free space is checked against it first, and the upload must have exactly this size. */
  expectedSize?: number
  /** Called with the bytes received so far. */
  onProgress?: (bytes: number) => void
}

export interface PartialBlob {
  readonly digest: string
  readonly manifest: ManifestView
  /** Chunk `index` is verified and written (flushed or not). */
  has: (index: number) => boolean
  /** Indices of the chunks not held, ascending. */
  missing: () => number[]
  readonly have: number
  /** Verify against the manifest (ChunkMismatchError, nothing written) and write at its offset. */
  writeChunk: (index: number, data: Uint8Array) => Promise<void>
  /** Make written chunks durable (fdatasync), then record them in the bitmap. A crash loses at most unflushed chunks. */
  flush: () => Promise<void>
  /** All chunks held: verify the whole digest, fsync, rename into sha256/, index as complete. DigestMismatchError leaves the partial with the bad chunks unmarked. */
  complete: () => Promise<void>
  /** Release the file. Does not flush: chunks written since the last `flush()` will be fetched again. */
  close: () => Promise<void>
}

type State = 'complete' | 'partial' | 'completing'

/** What `blob:<digest>` holds. */
interface BlobRecord {
  state: State
  size: number
  chunkSize: number
  /** base64 bitmap of durable chunks (partial and completing). */
  bitmap?: string
}

/** In-memory index entry; `bitmap` is the durable bitmap of a partial file. */
interface Entry {
  digest: string
  state: State
  manifest: ManifestView
  bytes: Uint8Array
  bitmap: Uint8Array
  open?: OpenPartial
}

const BLOB_PREFIX = 'blob:'
const MANIFEST_PREFIX = 'manifest:'

export class BlobStore {
  private readonly root: string
  private readonly db: Sublevel<unknown>
  private readonly log: Logger
  private readonly dirs: { complete: string, partial: string, tmp: string }
  private readonly getFreeSpace: () => Promise<number>
  private readonly host: PartialHost
  private readonly index = new Map<string, Entry>()
  /** Serialises index changes (records, renames); never held while hashing or copying a whole file. */
  private readonly lock = new Mutex()

  constructor (root: string, db: Sublevel<unknown>, log: Logger, opts: BlobStoreOptions = {}) {
    this.root = root
    this.db = db
    this.log = log
    this.dirs = { complete: join(root, 'sha256'), partial: join(root, 'partial'), tmp: join(root, 'tmp') }
    this.getFreeSpace = opts.freeSpace ?? (async () => { const s = await statfs(this.root); return s.bavail * s.bsize })
    this.host = this.makeHost()
  }

  /** Create the directories, delete interrupted uploads, and load the index, trusting only what checks out on disk. */
  async init (): Promise<void> {
    for (const dir of [this.root, this.dirs.complete, this.dirs.partial, this.dirs.tmp]) await mkdir(dir, { recursive: true, mode: 0o700 })
    for (const name of await readdir(this.dirs.tmp)) {
      this.log.info({ file: name }, 'deleting an interrupted upload')
      await rm(join(this.dirs.tmp, name), { recursive: true, force: true })
    }
    this.index.clear()
    const records: Array<[string, unknown]> = []
    for await (const kv of this.db.iterator({ gte: BLOB_PREFIX, lt: nextKey(BLOB_PREFIX) })) records.push(kv)
    for (const [key, value] of records) {
      const digest = key.slice(BLOB_PREFIX.length)
      const entry = await this.loadEntry(digest, value)
      if (entry != null) this.index.set(digest, entry)
      else await this.db.batch([{ type: 'del', key }, { type: 'del', key: MANIFEST_PREFIX + digest }])
    }
    await this.sweep(this.dirs.complete, 'complete')
    await this.sweep(this.dirs.partial, 'partial')
  }

  /** The digest is held complete. */
  has (digest: string): boolean {
    return this.index.get(digest)?.state === 'complete'
  }

  /** Path of the complete file for `digest` (whether or not it is held). */
  path (digest: string): string {
    return join(this.dirs.complete, hexOf(digest))
  }

  manifest (digest: string): ManifestView | undefined {
    return this.index.get(digest)?.manifest
  }

  manifestBytes (digest: string): Uint8Array | undefined {
    return this.index.get(digest)?.bytes
  }

  list (): BlobEntry[] {
    return [...this.index.values()].map(e => {
      const total = e.manifest.chunks.length
      const complete = e.state === 'complete'
      const have = complete ? total : e.open?.have ?? countBits(e.bitmap)
      return { digest: e.digest, state: complete ? 'complete' : 'partial', have, total, size: e.manifest.size }
    })
  }

  async freeSpace (): Promise<number> {
    return await this.getFreeSpace()
  }

  /** Bitmap of verified chunks (bit i of byte i>>3, LSB first), all ones for complete; undefined if unknown. */
  bitmap (digest: string): Uint8Array | undefined {
    const e = this.index.get(digest)
    if (e == null) return undefined
    if (e.state === 'complete') return fullBitmap(e.manifest.chunks.length)
    return (e.open?.heldBitmap() ?? e.bitmap).slice()
  }

  /**
   * Upload: stream bytes in, hashing the whole file and each chunk as they arrive, into
   * tmp/, then fsync and rename into sha256/. Memory: two chunk buffers, whatever the
   * size. On error or abort the temp file is removed and nothing is indexed. If the
   * digest is already held, the existing manifest is returned and nothing is duplicated.
   */
  async ingest (source: AsyncIterable<Uint8Array>, opts: IngestOptions = {}): Promise<ManifestView> {
    const { signal, expectedSize, onProgress } = opts
    signal?.throwIfAborted()
    if (expectedSize != null) {
      if (!Number.isSafeInteger(expectedSize) || expectedSize < 0) throw new BadRequestError(`expected size ${expectedSize} is not a byte count`, 'SIZE_INVALID')
      if (expectedSize > MAX_CONTENT_SIZE) throw tooLarge(expectedSize)
      await this.ensureSpace(expectedSize)
    }
    const limit = expectedSize ?? MAX_CONTENT_SIZE
    const tmp = join(this.dirs.tmp, randomBytes(8).toString('hex'))
    const fh = await open(tmp, 'wx', 0o600)
    const writer = new ChunkingWriter(fh, CHUNK_SIZE)
    const it = source[Symbol.asyncIterator]()
    let finished = false
    let closed = false
    try {
      const aborted = signal == null ? undefined : onAbort(signal)
      try {
        for (;;) {
          const r = aborted == null ? await it.next() : await Promise.race([it.next(), aborted.promise])
          signal?.throwIfAborted()
          if (r.done === true) { finished = true; break }
          if (writer.size + r.value.length > limit) {
            throw expectedSize != null
              ? new BadRequestError(`upload is longer than the ${expectedSize} bytes announced; nothing was stored`, 'SIZE_MISMATCH')
              : tooLarge(writer.size + r.value.length)
          }
          await writer.push(r.value)
          onProgress?.(writer.size)
        }
      } finally {
        aborted?.dispose()
      }
      if (expectedSize != null && writer.size !== expectedSize) {
        throw new BadRequestError(`upload ended after ${writer.size} of the ${expectedSize} bytes announced; nothing was stored`, 'SIZE_MISMATCH')
      }
      const manifest = await writer.end()
      await fh.sync()
      closed = true
      await fh.close()
      return await this.lock.run(async () => await this.commitUpload(tmp, manifest))
    } catch (err) {
      if (!finished) this.stopSource(it)
      await writer.settle()
      if (!closed) await fh.close()
      await rm(tmp, { force: true })
      throw err
    }
  }

  /** Fetch side: start or resume a partial blob for a manifest (checks free space for what is missing). */
  async openPartial (manifest: ManifestView): Promise<PartialBlob> {
    const bytes = encodeManifest(manifest)
    const { digest } = manifest
    return await this.lock.run(async () => {
      const held = this.index.get(digest)
      if (held?.state === 'complete') return new OpenPartial(this.host, held, undefined)
      if (held?.open != null) {
        if (!equalBytes(held.bytes, bytes)) throw new BadRequestError(`a transfer of ${digest} with a different manifest is open; close it first`, 'TRANSFER_CONFLICT')
        held.open.refs++
        return held.open
      }
      let resume = held?.state === 'partial' && equalBytes(held.bytes, bytes)
      if (held != null && !resume) this.log.warn({ digest }, 'manifest differs from the stored one; restarting the transfer')
      let bitmap = resume && held != null ? held.bitmap : emptyBitmap(manifest.chunks.length)
      await this.ensureSpace(missingBytes(manifest, bitmap))
      const file = join(this.dirs.partial, hexOf(digest))
      let fh: FileHandle
      try {
        fh = await open(file, resume ? 'r+' : 'w+', 0o600)
      } catch (err) {
        if (!resume || (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
        this.log.warn({ digest }, 'partial file vanished; restarting the transfer')
        resume = false
        bitmap = emptyBitmap(manifest.chunks.length)
        fh = await open(file, 'w+', 0o600)
      }
      try {
        await fh.truncate(manifest.size)
        const entry: Entry = { digest, state: 'partial', manifest: resume && held != null ? held.manifest : manifest, bytes, bitmap }
        await this.db.batch([
          { type: 'put', key: BLOB_PREFIX + digest, value: record(entry) },
          { type: 'put', key: MANIFEST_PREFIX + digest, value: Buffer.from(bytes).toString('base64') }
        ])
        this.index.set(digest, entry)
        entry.open = new OpenPartial(this.host, entry, fh)
        return entry.open
      } catch (err) {
        await fh.close()
        throw err
      }
    })
  }

  /** Chunk `index` of a complete blob, or of a partial one if that chunk is held; undefined if not held. */
  async readChunk (digest: string, index: number): Promise<Uint8Array | undefined> {
    const e = this.index.get(digest)
    if (e == null || !Number.isInteger(index) || index < 0 || index >= e.manifest.chunks.length) return undefined
    const length = chunkLength(e.manifest, index)
    const position = index * e.manifest.chunkSize
    if (e.state !== 'complete') {
      const held = e.open != null ? e.open.has(index) : getBit(e.bitmap, index)
      if (!held) return undefined
      const data = await readAt(join(this.dirs.partial, hexOf(digest)), position, length)
      if (data != null || !this.has(digest)) return data
      // Completed (renamed) between the check and the read.
    }
    return await readAt(this.path(digest), position, length)
  }

  /** Forget a digest: complete file, partial file, index entry and manifest. An open transfer of it is closed. */
  async remove (digest: string): Promise<void> {
    const hex = hexOf(digest)
    await this.lock.run(async () => {
      const e = this.index.get(digest)
      if (e?.open != null) await e.open.abandon()
      this.index.delete(digest)
      // Index first: a crash before the files go leaves orphans, which init deletes.
      await this.db.batch([{ type: 'del', key: BLOB_PREFIX + digest }, { type: 'del', key: MANIFEST_PREFIX + digest }])
      await rm(join(this.dirs.complete, hex), { force: true })
      await rm(join(this.dirs.partial, hex), { force: true })
    })
  }

  private async ensureSpace (need: number): Promise<void> {
    const have = await this.getFreeSpace()
    if (need > have) throw new InsufficientSpaceError(need, have)
  }

  private stopSource (it: AsyncIterator<Uint8Array>): void {
    // Not awaited: a generator blocked in next() would only return once it yields again.
    it.return?.()?.then(undefined, (err: unknown) => { this.log.debug({ err }, 'upload source failed while closing') })
  }

  private async commitUpload (tmp: string, manifest: ManifestView): Promise<ManifestView> {
    const { digest } = manifest
    const existing = this.index.get(digest)
    if (existing?.state === 'complete') {
      await rm(tmp, { force: true })
      this.log.info({ digest }, 'upload already held; kept the existing file')
      return existing.manifest
    }
    const entry: Entry = { digest, state: 'completing', manifest, bytes: encodeManifest(manifest), bitmap: emptyBitmap(0) }
    await this.db.batch([
      { type: 'put', key: BLOB_PREFIX + digest, value: record(entry) },
      { type: 'put', key: MANIFEST_PREFIX + digest, value: Buffer.from(entry.bytes).toString('base64') }
    ])
    try {
      await rename(tmp, this.path(digest))
    } catch (err) {
      await this.db.batch(existing != null
        ? [{ type: 'put', key: BLOB_PREFIX + digest, value: record(existing) }, { type: 'put', key: MANIFEST_PREFIX + digest, value: Buffer.from(existing.bytes).toString('base64') }]
        : [{ type: 'del', key: BLOB_PREFIX + digest }, { type: 'del', key: MANIFEST_PREFIX + digest }])
      throw err
    }
    await fsyncDir(this.dirs.complete)
    entry.state = 'complete'
    await this.db.put(BLOB_PREFIX + digest, record(entry))
    this.index.set(digest, entry)
    if (existing != null) {
      // A transfer of the same content was under way: the upload supersedes it.
      existing.state = 'complete'
      await existing.open?.abandon()
      await rm(join(this.dirs.partial, hexOf(digest)), { force: true })
    }
    return manifest
  }

  private async loadEntry (digest: string, value: unknown): Promise<Entry | undefined> {
    const rec = parseRecord(value)
    if (!isDigest(digest) || rec == null) {
      this.log.warn({ digest }, 'dropping an unreadable blob index entry')
      return undefined
    }
    let manifest: ManifestView
    let bytes: Uint8Array
    try {
      const b64 = await this.db.get(MANIFEST_PREFIX + digest)
      if (typeof b64 !== 'string') throw new Error('manifest missing')
      bytes = new Uint8Array(Buffer.from(b64, 'base64'))
      manifest = decodeManifest(bytes)
      if (manifest.digest !== digest || manifest.size !== rec.size || manifest.chunkSize !== rec.chunkSize) throw new Error('manifest does not match the entry')
    } catch (err) {
      this.log.warn({ digest, err: (err as Error).message }, 'dropping a blob whose manifest is missing or invalid')
      return undefined
    }
    const n = manifest.chunks.length
    const bitmap = decodeBitmap(rec.bitmap, n)
    const completeSize = await fileSize(this.path(digest))
    const partialSize = await fileSize(join(this.dirs.partial, hexOf(digest)))
    const entry: Entry = { digest, state: rec.state, manifest, bytes, bitmap }
    if (rec.state === 'completing') {
      if (completeSize === manifest.size) {
        // Verified and fsynced before the record was written; the rename reached the disk.
        entry.state = 'complete'
      } else if (partialSize === manifest.size && rec.bitmap != null) {
        entry.state = 'partial'
      } else {
        this.log.warn({ digest }, 'dropping a blob whose completion was interrupted before its file was in place')
        return undefined
      }
      await this.db.put(BLOB_PREFIX + digest, record(entry))
      return entry
    }
    const size = rec.state === 'complete' ? completeSize : partialSize
    if (size === undefined) {
      this.log.warn({ digest, state: rec.state }, 'dropping a blob whose file vanished')
      return undefined
    }
    if (size !== manifest.size) {
      this.log.warn({ digest, state: rec.state, size, expected: manifest.size }, 'dropping a blob whose file has the wrong size (changed behind our back)')
      return undefined
    }
    return entry
  }

  /** Delete files the index does not vouch for. */
  private async sweep (dir: string, state: State): Promise<void> {
    for (const name of await readdir(dir)) {
      if (this.index.get(`sha256:${name}`)?.state === state) continue
      this.log.warn({ file: join(dir, name) }, 'deleting a blob file the index does not list')
      await rm(join(dir, name), { recursive: true, force: true })
    }
  }

  /** What an OpenPartial may do to the store. */
  private makeHost (): PartialHost {
    return {
      log: this.log,
      has: (digest) => this.has(digest),
      persistBitmap: async (entry) => { await this.persistBitmap(entry) },
      promote: async (entry) => { await this.promote(entry) },
      release: (entry, partial) => { if (entry.open === partial) entry.open = undefined }
    }
  }

  private async persistBitmap (entry: Entry): Promise<void> {
    await this.lock.run(async () => {
      if (this.index.get(entry.digest) !== entry || entry.state !== 'partial') return
      await this.db.put(BLOB_PREFIX + entry.digest, record(entry))
    })
  }

  /** A verified, fsynced partial file becomes complete: `completing` record, rename, fsync dirs, `complete` record. */
  private async promote (entry: Entry): Promise<void> {
    await this.lock.run(async () => {
      if (this.has(entry.digest)) return
      if (this.index.get(entry.digest) !== entry) throw new EdgelinkError(`${entry.digest} was removed while it was being completed`, 'BLOB_REMOVED', 409)
      const key = BLOB_PREFIX + entry.digest
      entry.state = 'completing'
      await this.db.put(key, record(entry))
      try {
        await rename(join(this.dirs.partial, hexOf(entry.digest)), this.path(entry.digest))
      } catch (err) {
        entry.state = 'partial'
        await this.db.put(key, record(entry))
        throw err
      }
      await fsyncDir(this.dirs.complete)
      await fsyncDir(this.dirs.partial)
      entry.state = 'complete'
      await this.db.put(key, record(entry))
    })
  }
}

interface PartialHost {
  log: Logger
  has: (digest: string) => boolean
  persistBitmap: (entry: Entry) => Promise<void>
  promote: (entry: Entry) => Promise<void>
  release: (entry: Entry, partial: OpenPartial) => void
}

/** One open transfer; `entry.bitmap` is its durable bitmap, `held` adds chunks written since the last flush. */
class OpenPartial implements PartialBlob {
  readonly digest: string
  readonly manifest: ManifestView
  /** openPartial calls not yet matched by close(). */
  refs = 1
  private readonly host: PartialHost
  private readonly entry: Entry
  private fh: FileHandle | undefined
  private readonly held: Uint8Array
  private count: number
  private readonly pending = new Set<number>()
  private readonly inflight = new Set<Promise<void>>()
  private readonly flushLock = new Mutex()
  private closed = false

  /** `fh` undefined: the blob is already complete. */
  constructor (host: PartialHost, entry: Entry, fh: FileHandle | undefined) {
    this.host = host
    this.entry = entry
    this.digest = entry.digest
    this.manifest = entry.manifest
    this.fh = fh
    this.held = entry.bitmap.slice()
    this.count = countBits(this.held)
  }

  private get done (): boolean {
    return this.host.has(this.digest)
  }

  get have (): number {
    return this.done ? this.manifest.chunks.length : this.count
  }

  has (index: number): boolean {
    if (!Number.isInteger(index) || index < 0 || index >= this.manifest.chunks.length) return false
    return this.done || getBit(this.held, index)
  }

  missing (): number[] {
    if (this.done) return []
    const out: number[] = []
    for (let i = 0; i < this.manifest.chunks.length; i++) if (!getBit(this.held, i)) out.push(i)
    return out
  }

  heldBitmap (): Uint8Array {
    return this.held
  }

  async writeChunk (index: number, data: Uint8Array): Promise<void> {
    const length = chunkLength(this.manifest, index)
    if (data.length !== length) throw new ChunkMismatchError(`chunk ${index} of ${this.digest} is ${data.length} bytes; the manifest says ${length}`)
    if (!equalBytes(sha256(data), this.manifest.chunks[index])) {
      throw new ChunkMismatchError(`chunk ${index} of ${this.digest} does not match its hash in the manifest; fetch it again, from another peer if it repeats`)
    }
    if (this.done || getBit(this.held, index)) return
    const fh = this.openHandle()
    const write = writeFully(fh, data, index * this.manifest.chunkSize)
    this.inflight.add(write)
    try {
      await write
    } finally {
      this.inflight.delete(write)
    }
    if (!getBit(this.held, index)) {
      setBit(this.held, index)
      this.count++
      this.pending.add(index)
    }
  }

  async flush (): Promise<void> {
    await this.flushLock.run(async () => {
      if (this.done || this.closed || this.pending.size === 0) return
      const batch = [...this.pending]
      await this.openHandle().datasync()
      // Only now, with the bytes on disk, may the bitmap say so.
      for (const i of batch) {
        this.pending.delete(i)
        setBit(this.entry.bitmap, i)
      }
      await this.host.persistBitmap(this.entry)
    })
  }

  async complete (): Promise<void> {
    if (this.done) return await this.releaseHandle()
    const missing = this.manifest.chunks.length - this.count
    if (missing > 0) throw new EdgelinkError(`cannot complete ${this.digest}: ${missing} of ${this.manifest.chunks.length} chunks are still missing`, 'BLOB_INCOMPLETE', 409)
    await Promise.allSettled(this.inflight)
    await this.flush()
    await this.flushLock.run(async () => {
      if (this.done) return
      try {
        await this.verifyAndPromote()
      } catch (err) {
        if (this.done) return // an upload of the same content won the race
        if (this.closed && !(err instanceof EdgelinkError)) throw closedError(this.digest) // removed meanwhile
        throw err
      }
    })
    await this.releaseHandle()
  }

  private async verifyAndPromote (): Promise<void> {
    const fh = this.openHandle()
    const bad = await verifyFile(fh, this.manifest)
    if (bad.length > 0) {
      for (const i of bad) {
        clearBit(this.entry.bitmap, i)
        if (getBit(this.held, i)) { clearBit(this.held, i); this.count-- }
      }
      await this.host.persistBitmap(this.entry)
      this.host.log.warn({ digest: this.digest, chunks: bad.length }, 'whole-file digest mismatch; chunks unmarked for fetching again')
      throw new DigestMismatchError(`${this.digest} does not match its digest after all chunks were written (${bad.length} of ${this.manifest.chunks.length} chunks unmarked); the transfer will fetch them again`)
    }
    await fh.sync()
    await this.host.promote(this.entry)
  }

  async close (): Promise<void> {
    if (--this.refs > 0 || this.closed) return
    await this.abandon()
  }

  /** Close for every holder (remove(), or an upload of the same content). Unflushed chunks are not recorded. */
  async abandon (): Promise<void> {
    this.closed = true
    this.refs = 0
    await Promise.allSettled(this.inflight)
    await this.releaseHandle()
    this.host.release(this.entry, this)
  }

  private openHandle (): FileHandle {
    if (this.closed || this.fh == null) throw closedError(this.digest)
    return this.fh
  }

  private async releaseHandle (): Promise<void> {
    const fh = this.fh
    this.fh = undefined
    await fh?.close()
  }
}

/** Cuts an upload into chunks in two alternating buffers: one fills and is hashed while the other is being written. */
class ChunkingWriter {
  size = 0
  private readonly fh: FileHandle
  private readonly chunkSize: number
  private readonly whole = createHash('sha256')
  private readonly chunks: Uint8Array[] = []
  private readonly buffers: Buffer[] = []
  /** The write of each buffer; resolves to its error so an unawaited failure is never unhandled. */
  private readonly writes: Array<Promise<Error | undefined> | undefined> = [undefined, undefined]
  private current = 0
  private fill = 0
  private position = 0

  constructor (fh: FileHandle, chunkSize: number) {
    this.fh = fh
    this.chunkSize = chunkSize
  }

  async push (data: Uint8Array): Promise<void> {
    let offset = 0
    while (offset < data.length) {
      const buf = this.buffers[this.current] ??= Buffer.allocUnsafe(this.chunkSize)
      const n = Math.min(data.length - offset, buf.length - this.fill)
      buf.set(data.subarray(offset, offset + n), this.fill)
      this.fill += n
      offset += n
      this.size += n
      if (this.fill === buf.length) await this.seal()
    }
  }

  async end (): Promise<ManifestView> {
    if (this.fill > 0) await this.seal()
    for (const w of this.writes) {
      const err = await w
      if (err != null) throw err
    }
    return { digest: `sha256:${this.whole.digest('hex')}`, size: this.size, chunkSize: this.chunkSize, chunks: this.chunks }
  }

  /** Wait for writes in flight (after a failure, before closing the file). */
  async settle (): Promise<void> {
    await Promise.all(this.writes)
  }

  private async seal (): Promise<void> {
    const data = this.buffers[this.current].subarray(0, this.fill)
    this.whole.update(data)
    this.chunks.push(sha256(data))
    this.writes[this.current] = writeFully(this.fh, data, this.position).then(() => undefined, (err: unknown) => err as Error)
    this.position += this.fill
    this.fill = 0
    this.current ^= 1
    const previous = this.writes[this.current]
    this.writes[this.current] = undefined
    const err = await previous
    if (err != null) throw err
  }
}

/** Promise-chain mutex: `run` calls execute one at a time, in call order. */
class Mutex {
  private tail: Promise<void> = Promise.resolve()

  async run<T> (fn: () => Promise<T>): Promise<T> {
    const previous = this.tail
    let release!: () => void
    this.tail = new Promise(resolve => { release = resolve })
    await previous
    try {
      return await fn()
    } finally {
      release()
    }
  }
}

/** Read a whole partial file chunk by chunk; returns the chunks that do not match, or all of them if only the whole digest fails. */
async function verifyFile (fh: FileHandle, m: ManifestView): Promise<number[]> {
  const whole = createHash('sha256')
  const buf = Buffer.allocUnsafe(Math.min(m.chunkSize, Math.max(m.size, 1)))
  const bad: number[] = []
  for (let i = 0; i < m.chunks.length; i++) {
    const length = chunkLength(m, i)
    const data = buf.subarray(0, length)
    const read = await readFully(fh, data, i * m.chunkSize)
    if (read !== length || !equalBytes(sha256(data), m.chunks[i])) bad.push(i)
    whole.update(data.subarray(0, read))
  }
  if (bad.length === 0 && `sha256:${whole.digest('hex')}` !== m.digest) return m.chunks.map((_, i) => i)
  return bad
}

/** Resolves (never rejects) when `signal` aborts, so a source blocked in next() cannot hold an aborted upload; the caller then throws `signal.reason`. */
function onAbort (signal: AbortSignal): { promise: Promise<IteratorResult<Uint8Array>>, dispose: () => void } {
  let listener!: () => void
  const promise = new Promise<IteratorResult<Uint8Array>>(resolve => {
    listener = () => { resolve({ done: true, value: undefined }) }
    signal.addEventListener('abort', listener, { once: true })
  })
  return { promise, dispose: () => { signal.removeEventListener('abort', listener) } }
}

async function writeFully (fh: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let offset = 0
  while (offset < data.length) {
    const { bytesWritten } = await fh.write(data, offset, data.length - offset, position + offset)
    offset += bytesWritten
  }
}

async function readFully (fh: FileHandle, buf: Uint8Array, position: number): Promise<number> {
  let offset = 0
  while (offset < buf.length) {
    const { bytesRead } = await fh.read(buf, offset, buf.length - offset, position + offset)
    if (bytesRead === 0) break
    offset += bytesRead
  }
  return offset
}

/** `length` bytes at `position` of `file`; undefined if the file is gone or too short. */
async function readAt (file: string, position: number, length: number): Promise<Uint8Array | undefined> {
  let fh: FileHandle
  try {
    fh = await open(file, 'r')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  try {
    const buf = new Uint8Array(length)
    return await readFully(fh, buf, position) === length ? buf : undefined
  } finally {
    await fh.close()
  }
}

async function fileSize (file: string): Promise<number | undefined> {
  try {
    const s = await stat(file)
    return s.isFile() ? s.size : undefined
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

/** Make a rename in `dir` durable. */
async function fsyncDir (dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

function record (e: Entry): BlobRecord {
  const r: BlobRecord = { state: e.state, size: e.manifest.size, chunkSize: e.manifest.chunkSize }
  if (e.state !== 'complete') r.bitmap = Buffer.from(e.bitmap).toString('base64')
  return r
}

function parseRecord (v: unknown): BlobRecord | undefined {
  if (typeof v !== 'object' || v == null) return undefined
  const r = v as Partial<Record<keyof BlobRecord, unknown>>
  if (r.state !== 'complete' && r.state !== 'partial' && r.state !== 'completing') return undefined
  if (typeof r.size !== 'number' || typeof r.chunkSize !== 'number') return undefined
  if (r.bitmap !== undefined && typeof r.bitmap !== 'string') return undefined
  return { state: r.state, size: r.size, chunkSize: r.chunkSize, bitmap: r.bitmap }
}

/** A stored bitmap of `n` chunks; empty if missing or malformed, bits past `n` cleared. */
function decodeBitmap (b64: string | undefined, n: number): Uint8Array {
  const out = emptyBitmap(n)
  if (b64 == null) return out
  const raw = Buffer.from(b64, 'base64')
  if (raw.length !== out.length) return out
  for (let i = 0; i < n; i++) if (getBit(raw, i)) setBit(out, i)
  return out
}

function missingBytes (m: ManifestView, bitmap: Uint8Array): number {
  let need = 0
  for (let i = 0; i < m.chunks.length; i++) if (!getBit(bitmap, i)) need += chunkLength(m, i)
  return need
}

function closedError (digest: string): EdgelinkError {
  return new EdgelinkError(`the transfer of ${digest} is closed (or was removed); open it again with openPartial`, 'BLOB_CLOSED', 409)
}

function tooLarge (size: number): EdgelinkError {
  return new EdgelinkError(`upload of ${formatBytes(size)} is over the ${formatBytes(MAX_CONTENT_SIZE)} limit; nothing was stored`, 'CONTENT_TOO_LARGE', 413)
}

function hexOf (digest: string): string {
  if (!isDigest(digest)) throw new BadRequestError(`${JSON.stringify(digest.slice(0, 80))} is not a content digest ("sha256:" and 64 hex digits)`, 'DIGEST_INVALID')
  return digest.slice('sha256:'.length)
}

function nextKey (prefix: string): string {
  return prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1)
}

function sha256 (data: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(data).digest())
}

function equalBytes (a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0
}

function emptyBitmap (n: number): Uint8Array {
  return new Uint8Array(Math.ceil(n / 8))
}

function fullBitmap (n: number): Uint8Array {
  const b = emptyBitmap(n)
  for (let i = 0; i < n; i++) setBit(b, i)
  return b
}

function getBit (b: Uint8Array, i: number): boolean {
  return ((b[i >> 3] >> (i & 7)) & 1) === 1
}

function setBit (b: Uint8Array, i: number): void {
  b[i >> 3] |= 1 << (i & 7)
}

function clearBit (b: Uint8Array, i: number): void {
  b[i >> 3] &= ~(1 << (i & 7))
}

function countBits (b: Uint8Array): number {
  let n = 0
  for (const byte of b) for (let v = byte; v !== 0; v &= v - 1) n++
  return n
}

/** "2.1 GiB": one decimal in the largest binary unit that keeps the number ≥ 1. */
export function formatBytes (n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let u = 0
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++ }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`
}
