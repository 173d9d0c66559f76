/** Errors of the blob store, and the byte counts their messages show. */
import { EdgelinkError } from '../errors.js'
import { MAX_CONTENT_SIZE } from './manifest.js'

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

/** A write failed because the file system is full (or the quota is used up). */
export function isNoSpace (err: unknown): boolean {
  if (err instanceof InsufficientSpaceError) return true
  const code = (err as NodeJS.ErrnoException | undefined)?.code
  return code === 'ENOSPC' || code === 'EDQUOT'
}

export function tooLarge (size: number): EdgelinkError {
  return new EdgelinkError(`upload of ${formatBytes(size)} is over the ${formatBytes(MAX_CONTENT_SIZE)} limit; nothing was stored`, 'CONTENT_TOO_LARGE', 413)
}

/** "2.1 GiB": one decimal in the largest binary unit that keeps the number ≥ 1. */
export function formatBytes (n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let u = 0
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++ }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`
}
