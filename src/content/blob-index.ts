/**
 * The blob store's index in the `content` sublevel: what `blob:<digest>` holds, the
 * in-memory entry built from it, and how an entry is trusted at start-up (see the
 * crash-safety notes in blobs.ts).
 */
import type { Logger } from '../agent/logger.js'
import { BadRequestError } from '../errors.js'
import type { Sublevel } from '../store/index.js'
import { decodeBitmap } from './bitmap.js'
import { fileSize } from './files.js'
import { decodeManifest, isDigest, type ManifestView } from './manifest.js'
import type { OpenPartial } from './partial.js'

export const BLOB_PREFIX = 'blob:'
export const MANIFEST_PREFIX = 'manifest:'

export type State = 'complete' | 'partial' | 'completing'

/** What `blob:<digest>` holds. */
export interface BlobRecord {
  state: State
  size: number
  chunkSize: number
  /** base64 bitmap of durable chunks (partial and completing). */
  bitmap?: string
}

/** In-memory index entry; `bitmap` is the durable bitmap of a partial file. */
export interface Entry {
  digest: string
  state: State
  manifest: ManifestView
  bytes: Uint8Array
  bitmap: Uint8Array
  open?: OpenPartial
}

export function record (e: Entry): BlobRecord {
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

/** The file name of a digest under sha256/ and partial/. */
export function hexOf (digest: string): string {
  if (!isDigest(digest)) throw new BadRequestError(`${JSON.stringify(digest.slice(0, 80))} is not a content digest ("sha256:" and 64 hex digits)`, 'DIGEST_INVALID')
  return digest.slice('sha256:'.length)
}

/** The first key after every key that starts with `prefix`. */
export function nextKey (prefix: string): string {
  return prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1)
}

/** What loading an index entry uses of the store. */
export interface LoadContext {
  db: Sublevel<unknown>
  log: Logger
  /** Path of the complete file of a (valid) digest. */
  completePath: (digest: string) => string
  /** Path of the partial file of a (valid) digest. */
  partialPath: (digest: string) => string
}

/**
 * The entry for a stored `blob:<digest>` record, or undefined if it cannot be
 * trusted (the caller drops it with its manifest). Settles an interrupted completion.
 */
export async function loadEntry (ctx: LoadContext, digest: string, value: unknown): Promise<Entry | undefined> {
  const rec = parseRecord(value)
  if (!isDigest(digest) || rec == null) {
    ctx.log.warn({ digest }, 'dropping an unreadable blob index entry')
    return undefined
  }
  let manifest: ManifestView
  let bytes: Uint8Array
  try {
    const b64 = await ctx.db.get(MANIFEST_PREFIX + digest)
    if (typeof b64 !== 'string') throw new Error('manifest missing')
    bytes = new Uint8Array(Buffer.from(b64, 'base64'))
    manifest = decodeManifest(bytes)
    if (manifest.digest !== digest || manifest.size !== rec.size || manifest.chunkSize !== rec.chunkSize) throw new Error('manifest does not match the entry')
  } catch (err) {
    ctx.log.warn({ digest, err: (err as Error).message }, 'dropping a blob whose manifest is missing or invalid')
    return undefined
  }
  const n = manifest.chunks.length
  const bitmap = decodeBitmap(rec.bitmap, n)
  const completeSize = await fileSize(ctx.completePath(digest))
  const partialSize = await fileSize(ctx.partialPath(digest))
  const entry: Entry = { digest, state: rec.state, manifest, bytes, bitmap }
  if (rec.state === 'completing') {
    if (completeSize === manifest.size) {
      // Verified and fsynced before the record was written; the rename reached the disk.
      entry.state = 'complete'
    } else if (partialSize === manifest.size && rec.bitmap != null) {
      entry.state = 'partial'
    } else {
      ctx.log.warn({ digest }, 'dropping a blob whose completion was interrupted before its file was in place')
      return undefined
    }
    await ctx.db.put(BLOB_PREFIX + digest, record(entry))
    return entry
  }
  const size = rec.state === 'complete' ? completeSize : partialSize
  if (size === undefined) {
    ctx.log.warn({ digest, state: rec.state }, 'dropping a blob whose file vanished')
    return undefined
  }
  if (size !== manifest.size) {
    ctx.log.warn({ digest, state: rec.state, size, expected: manifest.size }, 'dropping a blob whose file has the wrong size (changed behind our back)')
    return undefined
  }
  return entry
}
