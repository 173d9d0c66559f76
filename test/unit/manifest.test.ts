import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import {
  CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_CONTENT_SIZE, MIN_CHUNK_SIZE, ManifestError,
  chunkLength, decodeManifest, encodeManifest, isDigest, manifestDigest, type ManifestView
} from '../../src/content/manifest.js'
import { Manifest } from '../../src/wire/sync.js'

const DIGEST = `sha256:${'ab'.repeat(32)}`

function hashes (n: number): Uint8Array[] {
  return Array.from({ length: n }, (_, i) => new Uint8Array(createHash('sha256').update(String(i)).digest()))
}

function manifest (size: number, chunkSize = CHUNK_SIZE): ManifestView {
  return { digest: DIGEST, size, chunkSize, chunks: hashes(Math.ceil(size / chunkSize)) }
}

/** Encode with the raw wire codec, bypassing encodeManifest's checks. */
function rawEncode (m: { digest: string, size: number | bigint, chunkSize: number, chunks: Uint8Array[] }): Uint8Array {
  return Manifest.encode({ digest: m.digest, size: BigInt(m.size), chunkSize: m.chunkSize, chunks: m.chunks as Array<Uint8Array<ArrayBuffer>> })
}

function decodeError (bytes: Uint8Array): Error {
  try {
    decodeManifest(bytes)
  } catch (err) {
    return err as Error
  }
  throw new Error('expected decodeManifest to throw')
}

describe('manifest', () => {
  it('round-trips sizes of 2 to 10 GiB, including [2^31, 2^32) that protons-runtime alone writes as 0', () => {
    const GiB = 2 ** 30
    for (const size of [2 * GiB - 1, 2 * GiB, 3 * GiB, 4 * GiB - 1, 4 * GiB, 10 * GiB]) {
      const m = { ...manifest(0), size }
      const back = Manifest.decode(rawEncode(m))
      expect(back.size).toBe(BigInt(size))
    }
    fc.assert(fc.property(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), (size) => {
      expect(Manifest.decode(Manifest.encode({ digest: DIGEST, size, chunkSize: CHUNK_SIZE, chunks: [] })).size).toBe(size)
    }), { numRuns: 500 })
  })

  it('round-trips through its encoding', () => {
    for (const m of [manifest(0), manifest(1), manifest(CHUNK_SIZE), manifest(3 * CHUNK_SIZE + 17), manifest(5 * MIN_CHUNK_SIZE, MIN_CHUNK_SIZE)]) {
      const back = decodeManifest(encodeManifest(m))
      expect(back).toEqual(m)
    }
  })

  it('round-trips any consistent manifest (property)', () => {
    fc.assert(fc.property(
      fc.integer({ min: 0, max: 64 * MIN_CHUNK_SIZE }),
      fc.integer({ min: MIN_CHUNK_SIZE, max: 4 * MIN_CHUNK_SIZE }),
      (size, chunkSize) => {
        const m = manifest(size, chunkSize)
        expect(decodeManifest(encodeManifest(m))).toEqual(m)
      }
    ), { numRuns: 100 })
  })

  it('gives a 0-byte file no chunks', () => {
    const m = decodeManifest(encodeManifest(manifest(0)))
    expect(m.size).toBe(0)
    expect(m.chunks).toHaveLength(0)
  })

  it('keeps a 10 GB manifest around 320 KB', () => {
    const size = 10 * 1000 ** 3
    const bytes = encodeManifest(manifest(size))
    expect(bytes.length).toBeGreaterThan(300_000)
    expect(bytes.length).toBeLessThan(360_000)
  })

  it('refuses garbage bytes with ManifestError only (property)', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 400 }), bytes => {
      let m: ManifestView | undefined
      try {
        m = decodeManifest(bytes)
      } catch (err) {
        expect((err as Error).name).toBe('ManifestError')
        expect((err as ManifestError).code).toBe('MANIFEST_INVALID')
        return
      }
      // Anything that decodes must be a consistent manifest.
      expect(isDigest(m.digest)).toBe(true)
      expect(m.chunks).toHaveLength(Math.ceil(m.size / m.chunkSize))
    }), { numRuns: 2000 })
  })

  it('refuses mutated valid encodings with ManifestError only (property)', () => {
    const good = encodeManifest(manifest(3 * MIN_CHUNK_SIZE + 5, MIN_CHUNK_SIZE))
    fc.assert(fc.property(fc.integer({ min: 0, max: good.length - 1 }), fc.integer({ min: 0, max: 255 }), fc.boolean(), (at, value, truncate) => {
      const bytes = truncate ? good.slice(0, at) : Uint8Array.from(good)
      if (!truncate) bytes[at] = value
      try {
        decodeManifest(bytes)
      } catch (err) {
        expect((err as Error).name).toBe('ManifestError')
      }
    }), { numRuns: 1000 })
  })

  it('refuses chunk counts that do not match the size', () => {
    const m = manifest(3 * CHUNK_SIZE + 1)
    expect(decodeError(rawEncode({ ...m, chunks: m.chunks.slice(1) })).message).toMatch(/3 chunk hashes .* \(expected 4\)/)
    expect(decodeError(rawEncode({ ...m, chunks: [...m.chunks, m.chunks[0]] })).name).toBe('ManifestError')
    expect(decodeError(rawEncode({ ...manifest(0), chunks: hashes(1) })).name).toBe('ManifestError')
    expect(decodeError(rawEncode({ ...manifest(CHUNK_SIZE), chunks: hashes(2) })).name).toBe('ManifestError')
  })

  it('refuses chunk hashes that are not 32 bytes', () => {
    const m = manifest(2 * CHUNK_SIZE)
    expect(decodeError(rawEncode({ ...m, chunks: [m.chunks[0], m.chunks[1].subarray(0, 31)] })).message).toMatch(/chunk 1 is not 32 bytes/)
  })

  it('refuses chunk sizes outside 64 KiB..16 MiB', () => {
    expect(decodeError(rawEncode(manifest(10, MIN_CHUNK_SIZE - 1))).message).toMatch(/chunk size/)
    expect(decodeError(rawEncode({ ...manifest(10, MAX_CHUNK_SIZE), chunkSize: MAX_CHUNK_SIZE + 1 })).message).toMatch(/chunk size/)
    expect(decodeError(rawEncode({ digest: DIGEST, size: 0, chunkSize: 0, chunks: [] })).message).toMatch(/chunk size/)
    expect(decodeManifest(encodeManifest(manifest(10, MAX_CHUNK_SIZE))).chunkSize).toBe(MAX_CHUNK_SIZE)
  })

  it('refuses sizes over MAX_CONTENT_SIZE', () => {
    expect(decodeError(rawEncode({ digest: DIGEST, size: BigInt(MAX_CONTENT_SIZE) + 1n, chunkSize: MAX_CHUNK_SIZE, chunks: [] })).message).toMatch(/over the/)
    expect(decodeError(rawEncode({ digest: DIGEST, size: 2n ** 64n - 1n, chunkSize: MAX_CHUNK_SIZE, chunks: [] })).name).toBe('ManifestError')
    expect(() => encodeManifest({ ...manifest(0), size: MAX_CONTENT_SIZE + 1 })).toThrow(ManifestError)
  })

  it('refuses malformed digests', () => {
    for (const digest of ['', 'sha256:', `sha256:${'AB'.repeat(32)}`, `sha512:${'ab'.repeat(32)}`, `sha256:${'ab'.repeat(31)}`, `sha256:${'ab'.repeat(32)}\n`]) {
      expect(decodeError(rawEncode({ ...manifest(0), digest })).name).toBe('ManifestError')
      expect(() => encodeManifest({ ...manifest(0), digest })).toThrow(ManifestError)
    }
  })

  it('computes chunk lengths, the last one short', () => {
    const m = manifest(2 * CHUNK_SIZE + 10)
    expect([0, 1, 2].map(i => chunkLength(m, i))).toEqual([CHUNK_SIZE, CHUNK_SIZE, 10])
    expect(chunkLength(manifest(CHUNK_SIZE), 0)).toBe(CHUNK_SIZE)
    expect(() => chunkLength(m, 3)).toThrow(RangeError)
    expect(() => chunkLength(m, -1)).toThrow(RangeError)
  })

  it('digests the encoding with SHA-256', () => {
    const bytes = encodeManifest(manifest(5))
    expect(Buffer.from(manifestDigest(bytes)).toString('hex')).toBe(createHash('sha256').update(bytes).digest('hex'))
    expect(manifestDigest(bytes)).toHaveLength(32)
  })

  it('recognises digests', () => {
    expect(isDigest(DIGEST)).toBe(true)
    expect(isDigest(DIGEST.toUpperCase())).toBe(false)
    expect(isDigest(DIGEST + '0')).toBe(false)
    expect(MAX_CONTENT_SIZE).toBe(64 * 1024 ** 3)
  })
})
