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

/** `length` bytes at `position` of `file`; undefined if the file is gone or too short. */
export async function readAt (file: string, position: number, length: number): Promise<Uint8Array | undefined> {
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

export function sha256 (data: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(data).digest())
}

export function equalBytes (a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0
}
