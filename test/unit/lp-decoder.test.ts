/**
 * The LengthPrefixedDecoder fix in src/polyfill.ts: consuming the last whole frame in the
 * buffer no longer asks the length decoder about an empty buffer (which throws a
 * RangeError, an Error with a stack trace per read on every Noise connection), and frames
 * still come out whole and in order however the bytes are split.
 */
import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { LengthPrefixedDecoder } from '@libp2p/utils'
import { Uint8ArrayList } from 'uint8arraylist'

/** Noise's frame length: 2 bytes big-endian. Counts the times it throws for short input. */
function uint16Decoder (): { decode: (b: Uint8Array | Uint8ArrayList) => number, throws: () => number } {
  let throws = 0
  return {
    decode: (b) => {
      if (b.length < 2) { throws++; throw new RangeError('Could not decode int16BE') }
      return b instanceof Uint8Array ? (b[0] << 8) + b[1] : b.getUint16(0)
    },
    throws: () => throws
  }
}

function frame (payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(2 + payload.length)
  out[0] = payload.length >> 8
  out[1] = payload.length & 0xff
  out.set(payload, 2)
  return out
}

function concat (parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) { out.set(p, at); at += p.length }
  return out
}

describe('LengthPrefixedDecoder (polyfilled)', () => {
  it('does not ask the length decoder about an empty buffer after the last whole frame', () => {
    const len = uint16Decoder()
    const dec = new LengthPrefixedDecoder({ lengthDecoder: len.decode, encodingLength: () => 2 })
    const payloads = [new Uint8Array([1, 2, 3]), new Uint8Array(300).fill(7)]
    for (let i = 0; i < 50; i++) {
      const out = [...dec.decode(concat(payloads.map(frame)))].map(l => l.subarray())
      expect(out).toEqual(payloads)
    }
    expect(len.throws()).toBe(0)
  })

  it('yields the same frames, in order, however the bytes are split', () => {
    fc.assert(fc.property(
      fc.array(fc.uint8Array({ minLength: 1, maxLength: 600 }), { minLength: 1, maxLength: 8 }),
      fc.array(fc.nat(), { maxLength: 12 }),
      (payloads, cuts) => {
        const bytes = concat(payloads.map(frame))
        const at = [...new Set(cuts.map(c => c % (bytes.length + 1)))].sort((a, b) => a - b)
        const pieces: Uint8Array[] = []
        let from = 0
        for (const c of [...at, bytes.length]) { pieces.push(bytes.subarray(from, c)); from = c }
        const dec = new LengthPrefixedDecoder({ lengthDecoder: uint16Decoder().decode, encodingLength: () => 2 })
        const out: Uint8Array[] = []
        for (const p of pieces) for (const f of dec.decode(p)) out.push(f.subarray())
        expect(out).toEqual(payloads)
      }
    ))
  })

  it('still refuses a frame longer than the limit', () => {
    const dec = new LengthPrefixedDecoder({ lengthDecoder: uint16Decoder().decode, encodingLength: () => 2, maxDataLength: 10 })
    expect(() => [...dec.decode(frame(new Uint8Array(11)))]).toThrow(/length/i)
  })
})
