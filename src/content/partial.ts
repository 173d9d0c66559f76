/**
 * A transfer in progress: chunks are verified against the manifest, written at
 * their offsets in partial/<hex>, recorded in the bitmap only once durable, and the
 * finished file is verified as a whole before it becomes complete. See the
 * crash-safety notes in blobs.ts.
 *
 * The whole-file digest is computed while the transfer runs: as soon as chunk k is
 * written and chunks 0..k-1 were hashed, chunk k is read back from the file and fed to
 * one running SHA-256 (the prefix hash). The fetcher takes chunks roughly in order, so by
 * the time the last chunk lands almost the whole file is hashed, and completing costs a
 * chunk or two rather than a second pass over the file at the end. It reads the bytes back
 * from the file, not from the buffer that was checked: the whole-file check is about
 * what the file holds.
 */
import { createHash, type Hash } from 'node:crypto'
import type { FileHandle } from 'node:fs/promises'
import type { Logger } from '../agent/logger.js'
import { EdgelinkError } from '../errors.js'
import { Mutex } from '../util/mutex.js'
import { clearBit, countBits, getBit, setBit } from './bitmap.js'
import type { Entry } from './blob-index.js'
import { ChunkMismatchError, DigestMismatchError } from './errors.js'
import { equalBytes, readFully, sha256, writeFully } from './files.js'
import { chunkLength, maxChunkLength, type ManifestView } from './manifest.js'

export interface PartialBlob {
  readonly digest: string
  readonly manifest: ManifestView
  /** Chunk `index` is verified and written (flushed or not). */
  has: (index: number) => boolean
  /** Indices of the chunks not held, ascending. */
  missing: () => number[]
  readonly have: number
  /** Chunks [0, hashed) are in the running whole-file hash (read back from the file). */
  readonly hashed: number
  /** Verify against the manifest (ChunkMismatchError, nothing written) and write at its offset. */
  writeChunk: (index: number, data: Uint8Array) => Promise<void>
  /** Make written chunks durable (fdatasync), then record them in the bitmap. A crash loses at most unflushed chunks. */
  flush: () => Promise<void>
  /** All chunks held: verify the whole digest, fsync, rename into sha256/, index as complete. DigestMismatchError leaves the partial with the bad chunks unmarked. */
  complete: () => Promise<void>
  /** Release the file. Does not flush: chunks written since the last `flush()` will be fetched again. */
  close: () => Promise<void>
}

/** What an OpenPartial may do to the store. */
export interface PartialHost {
  log: Logger
  has: (digest: string) => boolean
  persistBitmap: (entry: Entry) => Promise<void>
  promote: (entry: Entry) => Promise<void>
  release: (entry: Entry, partial: OpenPartial) => void
}

/** One open transfer; `entry.bitmap` is its durable bitmap, `held` adds chunks written since the last flush. */
export class OpenPartial implements PartialBlob {
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
  /**
   * A datasync failed: this transfer takes no more chunks and records none (see flush).
   * A new one starts from the durable bitmap.
   */
  private failed: Error | undefined
  /** SHA-256 of chunks [0, prefix) as read back from the file (see the top of this file). */
  private whole: Hash = createHash('sha256')
  private prefix = 0
  /** The prefix hash could not read the file; completing hashes the file from the start. */
  private prefixFailed = false
  private pumping: Promise<void> | undefined
  private readBuf: Buffer | undefined

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

  get hashed (): number {
    return this.done ? this.manifest.chunks.length : this.prefix
  }

  /** close() or abandon() has begun: this transfer takes no more chunks. */
  get isClosed (): boolean {
    return this.closed
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
    if (this.failed != null) throw this.failed
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
    if (getBit(this.held, this.prefix)) void this.pump()
  }

  /** Feed the prefix hash every written chunk that continues it; one reader at a time. Never rejects. */
  private async pump (): Promise<void> {
    if (this.pumping != null) return await this.pumping
    const run = this.runPump()
    this.pumping = run
    void run.finally(() => { if (this.pumping === run) this.pumping = undefined })
    await run
  }

  private async runPump (): Promise<void> {
    try {
      const m = this.manifest
      while (!this.closed && !this.done && !this.prefixFailed && this.prefix < m.chunks.length && getBit(this.held, this.prefix)) {
        const length = chunkLength(m, this.prefix)
        this.readBuf ??= Buffer.allocUnsafe(maxChunkLength(m))
        const buf = this.readBuf.subarray(0, length)
        if (await readFully(this.openHandle(), buf, this.prefix * m.chunkSize) !== length) throw new Error(`chunk ${this.prefix} is short on disk`)
        this.whole.update(buf)
        this.prefix++
      }
    } catch (err) {
      if (!this.closed) {
        this.prefixFailed = true
        this.host.log.debug({ digest: this.digest, err: (err as Error).message }, 'prefix hash stopped; the whole file is hashed when complete')
      }
    }
  }

  async flush (): Promise<void> {
    await this.flushLock.run(async () => {
      if (this.failed != null) throw this.failed
      if (this.done || this.closed || this.pending.size === 0) return
      const batch = [...this.pending]
      try {
        await this.openHandle().datasync()
      } catch (err) {
        // Linux reports a failed writeback once per open file, and marks the pages clean:
        // a second datasync would succeed with the bytes lost. So these chunks are not
        // held, and this transfer is done with.
        for (const i of batch) {
          this.pending.delete(i)
          if (getBit(this.held, i)) { clearBit(this.held, i); this.count-- }
        }
        this.fail(err)
      }
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
    const bad = await this.verifyWhole(fh)
    if (bad.length > 0) {
      for (const i of bad) {
        clearBit(this.entry.bitmap, i)
        if (getBit(this.held, i)) { clearBit(this.held, i); this.count-- }
      }
      await this.host.persistBitmap(this.entry)
      this.host.log.warn({ digest: this.digest, chunks: bad.length }, 'whole-file digest mismatch; chunks unmarked for fetching again')
      throw new DigestMismatchError(`${this.digest} does not match its digest after all chunks were written (${bad.length} of ${this.manifest.chunks.length} chunks unmarked); the transfer will fetch them again`)
    }
    try {
      await fh.sync()
    } catch (err) {
      // As in flush: a retry on this handle could succeed with nothing on disk.
      this.fail(err)
    }
    await this.host.promote(this.entry)
  }

  /** This transfer is done with (see `failed`). */
  private fail (err: unknown): never {
    this.failed = err instanceof Error ? err : new Error(String(err))
    throw this.failed
  }

  /** [] if the file matches its digest, else the chunks to fetch again (see badChunks). */
  private async verifyWhole (fh: FileHandle): Promise<number[]> {
    const n = this.manifest.chunks.length
    if (this.prefixFailed) {
      this.prefixFailed = false
      this.restartPrefix()
    }
    for (;;) {
      if (this.pumping != null) { await this.pumping; continue }
      const before = this.prefix
      await this.pump()
      if (this.prefixFailed || this.prefix === n || this.prefix === before) break
    }
    const ok = !this.prefixFailed && this.prefix === n && `sha256:${this.whole.digest('hex')}` === this.manifest.digest
    this.restartPrefix()
    this.readBuf = undefined
    return ok ? [] : await badChunks(fh, this.manifest)
  }

  private restartPrefix (): void {
    this.whole = createHash('sha256')
    this.prefix = 0
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
    this.readBuf = undefined
    await this.pumping
    const fh = this.fh
    this.fh = undefined
    await fh?.close()
  }
}

/**
 * The whole digest did not match: read the file again chunk by chunk and return the
 * chunks that do not match their hash (all of them if every chunk matches and only the
 * whole digest fails).
 */
async function badChunks (fh: FileHandle, m: ManifestView): Promise<number[]> {
  const buf = Buffer.allocUnsafe(maxChunkLength(m))
  const bad: number[] = []
  for (let i = 0; i < m.chunks.length; i++) {
    const length = chunkLength(m, i)
    const data = buf.subarray(0, length)
    const read = await readFully(fh, data, i * m.chunkSize)
    if (read !== length || !equalBytes(sha256(data), m.chunks[i])) bad.push(i)
  }
  return bad.length > 0 ? bad : m.chunks.map((_, i) => i)
}

function closedError (digest: string): EdgelinkError {
  return new EdgelinkError(`the transfer of ${digest} is closed (or was removed); open it again with openPartial`, 'BLOB_CLOSED', 409)
}
