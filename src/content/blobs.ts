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
 * The parts: `blob-index.ts` (index records, and which to trust at start-up),
 * `partial.ts` (a transfer in progress), `ingest.ts` (receiving an upload),
 * `bitmap.ts`, `files.ts` and `errors.ts`.
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
import { randomBytes } from 'node:crypto'
import { mkdir, open, readdir, rename, rm, statfs, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from '../agent/logger.js'
import { BadRequestError, EdgelinkError } from '../errors.js'
import type { Sublevel } from '../store/index.js'
import { Mutex } from '../util/mutex.js'
import { countBits, emptyBitmap, fullBitmap, getBit, missingBytes } from './bitmap.js'
import { BLOB_PREFIX, hexOf, loadEntry, MANIFEST_PREFIX, nextKey, record, type Entry, type LoadContext, type State } from './blob-index.js'
import { InsufficientSpaceError, tooLarge } from './errors.js'
import { equalBytes, fsyncDir, ReadHandles } from './files.js'
import { receive, type IngestOptions } from './ingest.js'
import { chunkLength, encodeManifest, MAX_CONTENT_SIZE, type ManifestView } from './manifest.js'
import { OpenPartial, type PartialBlob, type PartialHost } from './partial.js'

export { ChunkMismatchError, DigestMismatchError, formatBytes, InsufficientSpaceError } from './errors.js'
export type { IngestOptions } from './ingest.js'
export type { PartialBlob } from './partial.js'

export interface BlobEntry {
  digest: string
  state: 'complete' | 'partial'
  /** Chunks held (verified); `total` when complete. */
  have: number
  /** Chunks in the manifest. */
  total: number
  size: number
}

export interface BlobStoreOptions {
  /** Free bytes available to the store. @default statfs of `root` (blocks available to this user) */
  freeSpace?: () => Promise<number>
}

export class BlobStore {
  private readonly root: string
  private readonly db: Sublevel<unknown>
  private readonly log: Logger
  private readonly dirs: { complete: string, partial: string, tmp: string }
  private readonly getFreeSpace: () => Promise<number>
  private readonly host: PartialHost
  private readonly index = new Map<string, Entry>()
  /** Open read handles for serving chunks; forgotten whenever a path's file is removed, replaced or renamed. */
  private readonly reads = new ReadHandles()
  /** Serialises index changes (records, renames); never held while hashing or copying a whole file. */
  private readonly lock = new Mutex()
  /** Uploads under way, with the bytes each has yet to write (see ingest). */
  private readonly uploads = new Set<{ left: number }>()

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
    this.reads.closeAll()
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
      const entry = await loadEntry(this.loadContext(), digest, value)
      if (entry != null) this.index.set(digest, entry)
      else await this.db.batch([{ type: 'del', key }, { type: 'del', key: MANIFEST_PREFIX + digest }])
    }
    await this.sweep(this.dirs.complete, 'complete')
    await this.sweep(this.dirs.partial, 'partial')
  }

  /** Close the read handles kept for serving (stop). The store stays usable. */
  close (): void {
    this.reads.closeAll()
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

  /** Free space less what open transfers other than `except` still have to write. */
  async available (except?: string): Promise<number> {
    return Math.max(0, await this.getFreeSpace() - this.reserved(except))
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
    const { signal, expectedSize } = opts
    signal?.throwIfAborted()
    // What this upload has yet to write counts against the space others may take (see
    // reserved()), as an open transfer's does: two uploads that each fit, but not both,
    // would otherwise both start and one fail with ENOSPC gigabytes in.
    const upload = { left: 0 }
    if (expectedSize != null) {
      if (!Number.isSafeInteger(expectedSize) || expectedSize < 0) throw new BadRequestError(`expected size ${expectedSize} is not a byte count`, 'SIZE_INVALID')
      if (expectedSize > MAX_CONTENT_SIZE) throw tooLarge(expectedSize)
      await this.ensureSpace(expectedSize, undefined, () => { upload.left = expectedSize; this.uploads.add(upload) })
    }
    const tmp = join(this.dirs.tmp, randomBytes(8).toString('hex'))
    let manifest: ManifestView
    try {
      manifest = await receive(source, tmp, {
        ...opts,
        onProgress: (bytes) => {
          if (expectedSize != null) upload.left = Math.max(0, expectedSize - bytes)
          opts.onProgress?.(bytes)
        }
      }, this.log)
    } finally {
      this.uploads.delete(upload)
    }
    try {
      return await this.lock.run(async () => {
        const stored = await this.commitUpload(tmp, manifest)
        opts.onStored?.(stored.digest)
        return stored
      })
    } catch (err) {
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
      // A transfer whose last holder is closing it (abandon() has begun) is not handed out
      // again: it could never be written to. A new one is opened beside it from the durable bitmap.
      if (held?.open != null && !held.open.isClosed) {
        if (!equalBytes(held.bytes, bytes)) throw new BadRequestError(`a transfer of ${digest} with a different manifest is open; close it first`, 'TRANSFER_CONFLICT')
        held.open.refs++
        return held.open
      }
      let resume = held?.state === 'partial' && equalBytes(held.bytes, bytes)
      if (held != null && !resume) this.log.warn({ digest }, 'manifest differs from the stored one; restarting the transfer')
      let bitmap = resume && held != null ? held.bitmap : emptyBitmap(manifest.chunks.length)
      await this.ensureSpace(missingBytes(manifest, bitmap), digest)
      const file = join(this.dirs.partial, hexOf(digest))
      this.reads.forget(file)
      const entryFor = (): Entry => ({ digest, state: 'partial', manifest: resume && held != null ? held.manifest : manifest, bytes, bitmap })
      const persist = async (entry: Entry): Promise<void> => {
        await this.db.batch([
          { type: 'put', key: BLOB_PREFIX + digest, value: record(entry) },
          { type: 'put', key: MANIFEST_PREFIX + digest, value: Buffer.from(bytes).toString('base64') }
        ])
      }
      // Restarting: the empty bitmap is recorded before 'w+' empties the file, so that no
      // crash in between leaves a stored bitmap describing bytes that are gone.
      if (!resume && held != null) await persist(entryFor())
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
        const entry = entryFor()
        await persist(entry)
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
      const data = await this.reads.readAt(join(this.dirs.partial, hexOf(digest)), position, length)
      if (data != null || !this.has(digest)) return data
      // Completed (renamed) between the check and the read.
    }
    return await this.reads.readAt(this.path(digest), position, length)
  }

  /**
   * Forget a digest: complete file, partial file, index entry and manifest. An open
   * transfer of it is closed. `unless` is asked again once the store's lock is held (an
   * upload of the same digest may have finished while this call waited); if it says
   * true, nothing is removed and remove() resolves false.
   */
  async remove (digest: string, opts: { unless?: () => boolean } = {}): Promise<boolean> {
    const hex = hexOf(digest)
    return await this.lock.run(async () => {
      if (opts.unless?.() === true) return false
      const e = this.index.get(digest)
      if (e?.open != null) await e.open.abandon()
      this.index.delete(digest)
      // Index first: a crash before the files go leaves orphans, which init deletes.
      await this.db.batch([{ type: 'del', key: BLOB_PREFIX + digest }, { type: 'del', key: MANIFEST_PREFIX + digest }])
      this.reads.forget(join(this.dirs.complete, hex))
      this.reads.forget(join(this.dirs.partial, hex))
      await rm(join(this.dirs.complete, hex), { force: true })
      await rm(join(this.dirs.partial, hex), { force: true })
      return true
    })
  }

  /**
   * `need` more bytes fit beside what open transfers other than `except` still have to
   * write: partial files are sparse, so free space alone would let two transfers that
   * each fit, but not both, start and then fail halfway.
   */
  private async ensureSpace (need: number, except?: string, reserve?: () => void): Promise<void> {
    const free = await this.getFreeSpace()
    // From the check to `reserve`, nothing awaits: a concurrent caller sees this one reserved.
    const have = Math.max(0, free - this.reserved(except))
    if (need > have) throw new InsufficientSpaceError(need, have)
    reserve?.()
  }

  /** Bytes the open transfers (other than `except`) and the uploads under way have yet to write. */
  private reserved (except?: string): number {
    let n = 0
    for (const u of this.uploads) n += u.left
    for (const e of this.index.values()) {
      if (e.digest !== except && e.state === 'partial' && e.open != null && !e.open.isClosed) n += missingBytes(e.manifest, e.open.heldBitmap())
    }
    return n
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
    // Synced: the rename below reaches the disk (fsyncDir), and a record lost to a power
    // cut would leave a file no record vouches for, deleted at the next start.
    await this.db.batch([
      { type: 'put', key: BLOB_PREFIX + digest, value: record(entry) },
      { type: 'put', key: MANIFEST_PREFIX + digest, value: Buffer.from(entry.bytes).toString('base64') }
    ], { sync: true })
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
      this.reads.forget(join(this.dirs.partial, hexOf(digest)))
      await rm(join(this.dirs.partial, hexOf(digest)), { force: true })
    }
    return manifest
  }

  /** Delete files the index does not vouch for. */
  private async sweep (dir: string, state: State): Promise<void> {
    for (const name of await readdir(dir)) {
      if (this.index.get(`sha256:${name}`)?.state === state) continue
      this.log.warn({ file: join(dir, name) }, 'deleting a blob file the index does not list')
      await rm(join(dir, name), { recursive: true, force: true })
    }
  }

  private loadContext (): LoadContext {
    return {
      db: this.db,
      log: this.log,
      completePath: (digest) => this.path(digest),
      partialPath: (digest) => join(this.dirs.partial, hexOf(digest))
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
      // Synced before the rename, as in commitUpload: start-up settles `completing` by
      // where the file is; a `partial` record with its file renamed away would be dropped.
      await this.db.put(key, record(entry), { sync: true })
      try {
        this.reads.forget(join(this.dirs.partial, hexOf(entry.digest)))
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
