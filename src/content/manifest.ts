/**
 * Manifests: how a stored file is cut into chunks, and the SHA-256 of each chunk and of
 * the whole file. A fetcher gets the manifest first (from any member), checks it against
 * the catalog's `manifest_digest`, then checks every chunk against it on receipt and the
 * whole digest on completion (see `blobs.ts`).
 *
 * The wire form is the `Manifest` message of `protocols/sync.proto`; `decodeManifest`
 * is the boundary check, so everything inward can trust a `ManifestView`.
 *
 * @example
 * ```ts
 * const bytes = encodeManifest(manifest)
 * const same = decodeManifest(bytes)        // throws ManifestError on anything malformed
 * const id = manifestDigest(bytes)          // what CatalogItem.manifest_digest carries
 * ```
 */
import { createHash } from 'node:crypto'
import { EdgelinkError } from '../errors.js'
import { u8 } from '../util/bytes.js'
import { Manifest } from '../wire/sync.js'

/**
 * Chunk size of the files this host adds: 1 MiB.
 *
 * - Resume granularity: a transfer cut off by a crash or a dropped link loses at most
 *   the chunks not yet flushed, each only 1 MiB.
 * - Swarming: a 0.5 GiB file is 512 chunks, enough to spread requests over every member
 *   that holds some, with many in flight per peer.
 * - Framing: one chunk travels as one raw frame, far below libp2p's 4 MiB read-buffer
 *   limit (see DESIGN.md "Known traps"), yet large enough that per-frame cost is small.
 * - Manifest size: 32 bytes per chunk, so a 10 GB file's manifest is about 320 KB, one
 *   message, and a bitmap of 1.3 KB.
 */
export const CHUNK_SIZE = 1024 * 1024

/** Smallest chunk size a manifest may use: below it manifests and bitmaps grow large (64 GiB → 32 MB of hashes). */
export const MIN_CHUNK_SIZE = 64 * 1024

/** Largest chunk size a manifest may use: a chunk must fit in one frame and in memory twice over. */
export const MAX_CHUNK_SIZE = 16 * 1024 * 1024

/** Largest file the content store accepts: 64 GiB, well above the 10 GB images it is built for. */
export const MAX_CONTENT_SIZE = 64 * 1024 ** 3

/** Bytes of one SHA-256 hash. */
export const HASH_LENGTH = 32

/** Most chunks a valid manifest can list (MAX_CONTENT_SIZE in MIN_CHUNK_SIZE chunks); bounds decoding. */
const MAX_CHUNKS = Math.ceil(MAX_CONTENT_SIZE / MIN_CHUNK_SIZE)

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/

/** A validated manifest: `digest` is `sha256:<hex>`, `chunks[i]` the SHA-256 of chunk i. */
export interface ManifestView {
  digest: string
  size: number
  chunkSize: number
  chunks: Uint8Array[]
}

export class ManifestError extends EdgelinkError {
  static override name = 'ManifestError'
  constructor (message: string, options?: ErrorOptions) { super(message, 'MANIFEST_INVALID', 400, options) }
}

/** True for `sha256:` followed by 64 lowercase hex digits. */
export function isDigest (s: string): boolean {
  return DIGEST_RE.test(s)
}

/** Number of chunks of a file of `size` bytes (0 for an empty file). */
export function chunkCount (size: number, chunkSize: number): number {
  return Math.ceil(size / chunkSize)
}

/** Length in bytes of chunk `index`: `chunkSize` for all but the last. */
/** The longest chunk of `m` (at least 1 byte): the size of a buffer that holds any of them. */
export function maxChunkLength (m: ManifestView): number {
  return Math.min(m.chunkSize, Math.max(m.size, 1))
}

export function chunkLength (m: ManifestView, index: number): number {
  if (!Number.isInteger(index) || index < 0 || index >= m.chunks.length) {
    throw new RangeError(`chunk ${index} is out of range (the manifest of ${m.digest} has ${m.chunks.length} chunks)`)
  }
  return Math.min(m.chunkSize, m.size - index * m.chunkSize)
}

/**
 * Check a manifest's internal consistency; throws ManifestError naming the first problem.
 * `decodeManifest` and `encodeManifest` call it; so does the blob store on every manifest
 * handed to it.
 */
export function assertManifest (m: ManifestView): void {
  if (typeof m.digest !== 'string' || !isDigest(m.digest)) {
    throw new ManifestError(`manifest digest ${JSON.stringify(String(m.digest).slice(0, 80))} is not "sha256:" followed by 64 lowercase hex digits`)
  }
  if (!Number.isSafeInteger(m.size) || m.size < 0 || m.size > MAX_CONTENT_SIZE) {
    throw new ManifestError(`manifest of ${m.digest}: size ${m.size} is not between 0 and ${MAX_CONTENT_SIZE} bytes`)
  }
  if (!Number.isInteger(m.chunkSize) || m.chunkSize < MIN_CHUNK_SIZE || m.chunkSize > MAX_CHUNK_SIZE) {
    throw new ManifestError(`manifest of ${m.digest}: chunk size ${m.chunkSize} is not between ${MIN_CHUNK_SIZE} and ${MAX_CHUNK_SIZE} bytes`)
  }
  const expected = chunkCount(m.size, m.chunkSize)
  if (!Array.isArray(m.chunks) || m.chunks.length !== expected) {
    throw new ManifestError(`manifest of ${m.digest}: ${m.chunks?.length} chunk hashes for ${m.size} bytes in chunks of ${m.chunkSize} (expected ${expected})`)
  }
  for (let i = 0; i < m.chunks.length; i++) {
    const h = m.chunks[i]
    if (!(h instanceof Uint8Array) || h.length !== HASH_LENGTH) {
      throw new ManifestError(`manifest of ${m.digest}: hash of chunk ${i} is not ${HASH_LENGTH} bytes`)
    }
  }
}

/** The wire encoding of a manifest (validated first; throws ManifestError). */
export function encodeManifest (m: ManifestView): Uint8Array {
  assertManifest(m)
  return Manifest.encode({ digest: m.digest, size: BigInt(m.size), chunkSize: m.chunkSize, chunks: m.chunks.map(u8) })
}

/** Decode and validate a manifest received from anywhere; throws ManifestError, never anything else. */
export function decodeManifest (bytes: Uint8Array): ManifestView {
  let wire: Manifest
  try {
    wire = Manifest.decode(bytes, { limits: { chunks: MAX_CHUNKS } })
  } catch (err) {
    throw new ManifestError(`manifest is not a valid Manifest message: ${(err as Error).message}`, { cause: err })
  }
  if (wire.size > BigInt(MAX_CONTENT_SIZE)) {
    throw new ManifestError(`manifest of ${isDigest(wire.digest) ? wire.digest : 'a file'}: size ${wire.size} is over the ${MAX_CONTENT_SIZE}-byte limit`)
  }
  // Copies: the hashes must not pin or alias the caller's (possibly reused) buffer.
  const m: ManifestView = { digest: wire.digest, size: Number(wire.size), chunkSize: wire.chunkSize, chunks: wire.chunks.map(c => Uint8Array.from(c)) }
  assertManifest(m)
  return m
}

/** SHA-256 of a manifest's encoding: the `manifest_digest` of its catalog item. */
export function manifestDigest (bytes: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(bytes).digest())
}
