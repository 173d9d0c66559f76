/** File and byte helpers of the blob store: positional reads and writes that finish, and durable renames. */
import { createHash } from 'node:crypto'
import { open, stat, type FileHandle } from 'node:fs/promises'

export async function writeFully (fh: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let offset = 0
  while (offset < data.length) {
    const { bytesWritten } = await fh.write(data, offset, data.length - offset, position + offset)
    offset += bytesWritten
  }
}

export async function readFully (fh: FileHandle, buf: Uint8Array, position: number): Promise<number> {
  let offset = 0
  while (offset < buf.length) {
    const { bytesRead } = await fh.read(buf, offset, buf.length - offset, position + offset)
    if (bytesRead === 0) break
    offset += bytesRead
  }
  return offset
}

interface ReadHandle {
  fh: Promise<FileHandle>
  users: number
  idle?: NodeJS.Timeout
  /** Forgotten: close as soon as the last reader is done. */
  dropped: boolean
}

/**
 * Read handles of blob files, kept open for `idleMs` after their last read. A member
 * serving a file reads it a chunk at a time, and opening and closing it for every chunk
 * cost as much CPU as the read. `forget` closes a path's handle when its file is removed
 * or replaced, so a deleted file does not stay allocated on disk and a new file at the
 * same path is not read through the old handle.
 */
export class ReadHandles {
  private readonly handles = new Map<string, ReadHandle>()
  private readonly idleMs: number

  constructor (idleMs = 2000) {
    this.idleMs = idleMs
  }

  /** `length` bytes at `position` of `file`; undefined if the file is gone or too short. */
  async readAt (file: string, position: number, length: number): Promise<Uint8Array | undefined> {
    const h = this.acquire(file)
    try {
      const fh = await h.fh
      const buf = Buffer.allocUnsafe(length)
      return await readFully(fh, buf, position) === length ? buf : undefined
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    } finally {
      this.release(file, h)
    }
  }

  forget (file: string): void {
    const h = this.handles.get(file)
    if (h == null) return
    this.handles.delete(file)
    h.dropped = true
    if (h.users === 0) closeHandle(h)
  }

  closeAll (): void {
    for (const file of [...this.handles.keys()]) this.forget(file)
  }

  private acquire (file: string): ReadHandle {
    let h = this.handles.get(file)
    if (h == null) {
      const handle: ReadHandle = { fh: open(file, 'r'), users: 0, dropped: false }
      // A file that cannot be opened is not cached: the next read tries again.
      handle.fh.catch(() => { if (this.handles.get(file) === handle) this.handles.delete(file); handle.dropped = true })
      this.handles.set(file, handle)
      h = handle
    }
    clearTimeout(h.idle)
    h.users++
    return h
  }

  private release (file: string, h: ReadHandle): void {
    if (--h.users > 0) return
    if (h.dropped) { closeHandle(h); return }
    h.idle = setTimeout(() => { this.forget(file) }, this.idleMs)
    h.idle.unref()
  }
}

function closeHandle (h: ReadHandle): void {
  clearTimeout(h.idle)
  h.fh.then(async fh => { await fh.close() }, () => {}).catch(() => {})
}

export async function fileSize (file: string): Promise<number | undefined> {
  try {
    const s = await stat(file)
    return s.isFile() ? s.size : undefined
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}

/** Make a rename in `dir` durable. */
export async function fsyncDir (dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/**
 * SHA-256 on this thread. Not WebCrypto's digest on libuv's thread pool: that copies its
 * input first, and on this machine the copy of a fresh megabyte (page faults on the event
 * loop) cost 0.6 ms of the 0.9 ms the hash itself takes, so the event loop gained little
 * and the host paid 1.5 times the CPU (protocols/sync.md).
 */
export function sha256 (data: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(data).digest())
}

export function equalBytes (a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0
}
