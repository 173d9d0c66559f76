/** Chunk bitmaps: bit i of byte i>>3, LSB first; a set bit means chunk i is held. */
import { chunkLength, type ManifestView } from './manifest.js'

export function emptyBitmap (n: number): Uint8Array {
  return new Uint8Array(Math.ceil(n / 8))
}

export function fullBitmap (n: number): Uint8Array {
  const b = emptyBitmap(n)
  for (let i = 0; i < n; i++) setBit(b, i)
  return b
}

export function getBit (b: Uint8Array, i: number): boolean {
  return ((b[i >> 3] >> (i & 7)) & 1) === 1
}

export function setBit (b: Uint8Array, i: number): void {
  b[i >> 3] |= 1 << (i & 7)
}

export function clearBit (b: Uint8Array, i: number): void {
  b[i >> 3] &= ~(1 << (i & 7))
}

export function countBits (b: Uint8Array): number {
  let n = 0
  for (const byte of b) for (let v = byte; v !== 0; v &= v - 1) n++
  return n
}

/** A stored bitmap of `n` chunks; empty if missing or malformed, bits past `n` cleared. */
export function decodeBitmap (b64: string | undefined, n: number): Uint8Array {
  const out = emptyBitmap(n)
  if (b64 == null) return out
  const raw = Buffer.from(b64, 'base64')
  if (raw.length !== out.length) return out
  for (let i = 0; i < n; i++) if (getBit(raw, i)) setBit(out, i)
  return out
}

/** Bytes of the chunks of `m` that `bitmap` does not hold. */
export function missingBytes (m: ManifestView, bitmap: Uint8Array): number {
  let need = 0
  for (let i = 0; i < m.chunks.length; i++) if (!getBit(bitmap, i)) need += chunkLength(m, i)
  return need
}
