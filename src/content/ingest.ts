/**
 * Receiving an upload: bytes stream into a temporary file, hashed whole and per
 * chunk as they arrive, so the manifest is ready when the last byte is written.
 */
import { createHash } from 'node:crypto'
import { open, rm, type FileHandle } from 'node:fs/promises'
import type { Logger } from '../agent/logger.js'
import { BadRequestError } from '../errors.js'
import { tooLarge } from './errors.js'
import { sha256, writeFully } from './files.js'
import { CHUNK_SIZE, MAX_CONTENT_SIZE, type ManifestView } from './manifest.js'

export interface IngestOptions {
  signal?: AbortSignal
  /** Bytes announced by the sender: free space is checked against it first, and the upload must have exactly this size. */
  expectedSize?: number
  /** Called with the bytes received so far. */
  onProgress?: (bytes: number) => void
  /**
   * Called with the digest once the file is in the store (or was already), inside the
   * store's lock: before any remove() queued meanwhile runs (see BlobStore.remove's `unless`).
   */
  onStored?: (digest: string) => void
}

/**
 * Write `source` to the new file `file`, check its size against `opts.expectedSize`
 * (or the content limit), fsync and close it, and return its manifest. Memory: two
 * chunk buffers, whatever the size. On error or abort the file is removed.
 */
export async function receive (source: AsyncIterable<Uint8Array>, file: string, opts: IngestOptions, log: Logger): Promise<ManifestView> {
  const { signal, expectedSize, onProgress } = opts
  const limit = expectedSize ?? MAX_CONTENT_SIZE
  const fh = await open(file, 'wx', 0o600)
  const writer = new ChunkingWriter(fh, CHUNK_SIZE)
  const it = source[Symbol.asyncIterator]()
  let finished = false
  let closed = false
  try {
    for (;;) {
      const r = signal == null ? await it.next() : await nextOrAbort(it, signal)
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
    if (expectedSize != null && writer.size !== expectedSize) {
      throw new BadRequestError(`upload ended after ${writer.size} of the ${expectedSize} bytes announced; nothing was stored`, 'SIZE_MISMATCH')
    }
    const manifest = await writer.end()
    await fh.sync()
    closed = true
    await fh.close()
    return manifest
  } catch (err) {
    if (!finished) stopSource(it, log)
    await writer.settle()
    if (!closed) await fh.close()
    await rm(file, { force: true })
    throw err
  }
}

function stopSource (it: AsyncIterator<Uint8Array>, log: Logger): void {
  // Not awaited: a generator blocked in next() would only return once it yields again.
  it.return?.()?.then(undefined, (err: unknown) => { log.debug({ err }, 'upload source failed while closing') })
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

/**
 * The source's next value, or "done" as soon as `signal` aborts, so a source blocked in
 * next() cannot hold an aborted upload (the caller then throws `signal.reason`). The abort
 * listener lives for this one step only. Not `Promise.race([it.next(), abortPromise])`
 * with one abort promise for the whole upload: every race leaves a reaction on that promise
 * which holds the race's result, the chunk, so every chunk stayed reachable until the upload
 * ended (a 1 GiB upload took the leader to 1.1 GiB RSS).
 */
async function nextOrAbort (it: AsyncIterator<Uint8Array>, signal: AbortSignal): Promise<IteratorResult<Uint8Array>> {
  if (signal.aborted) return { done: true, value: undefined }
  return await new Promise<IteratorResult<Uint8Array>>((resolve, reject) => {
    const onAbort = (): void => { resolve({ done: true, value: undefined }) }
    signal.addEventListener('abort', onAbort, { once: true })
    it.next().then(
      r => { signal.removeEventListener('abort', onAbort); resolve(r) },
      (err: unknown) => { signal.removeEventListener('abort', onAbort); reject(err) }
    )
  })
}
