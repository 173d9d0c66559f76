/**
 * Fixes for the runtime, loaded before anything else (and in vitest's setupFiles):
 *
 * - Node 20 lacks `Promise.withResolvers`, which libp2p 3 calls. This module must be
 *   imported before anything from libp2p.
 * - protons-runtime (7.1.2, and 8.0.1 too) writes every uint64/int64 in
 *   [2^31, 2^32) as zero bytes: `LongBits` keeps its low word as a signed int, and
 *   the varint writer stops at once on a negative one. A 3 GiB blob's size went on the
 *   wire as 0. Such values are written through the (correct) number path instead.
 * - @chainsafe/libp2p-yamux (8.0.1) answers every data frame it receives with a window
 *   update frame, however small the frame: each heartbeat byte, status message and sync
 *   request cost a second frame back (a Noise encryption and a write on both ends).
 *   Yamux's own implementations (hashicorp/yamux, go-yamux) send the update only once
 *   half the receive window is consumed; so does this, which halves the frames of an
 *   idle group. The window never runs dry: the sender always has at least half of it.
 * - @libp2p/utils' `LengthPrefixedDecoder` (7.4.1; Noise reads every connection's frames
 *   through it) asks its length decoder for the next length after consuming the last
 *   whole frame in the buffer, every time. On an empty buffer that decoder throws a
 *   RangeError, which the loop catches as "wait for more": an Error object with a stack
 *   trace for every read on every connection. In a 10-member group that was 6 % of the
 *   CPU a status change costs. An empty buffer now answers length 0, which the loop reads
 *   as "a frame longer than what is buffered" and leaves exactly as before; a partial
 *   length prefix (1 byte of Noise's 2) still throws and is caught as before.
 */
import { writer } from 'protons-runtime'
import { StreamState, YamuxStream } from '@chainsafe/libp2p-yamux/stream'
import { LengthPrefixedDecoder } from '@libp2p/utils'
type Resolvers<T> = { promise: Promise<T>, resolve: (value: T | PromiseLike<T>) => void, reject: (reason?: unknown) => void }

if (typeof (Promise as { withResolvers?: unknown }).withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers<T> (): Resolvers<T> {
      let resolve!: Resolvers<T>['resolve']
      let reject!: Resolvers<T>['reject']
      const promise = new Promise<T>((res, rej) => { resolve = res; reject = rej })
      return { promise, resolve, reject }
    }
  })
}

interface Uint64Writer {
  uint64: (value: bigint) => unknown
  uint64Number: (value: number) => unknown
}

const writerProto = Object.getPrototypeOf(writer()) as Uint64Writer
const uint64 = writerProto.uint64
writerProto.uint64 = function (this: Uint64Writer, value: bigint) {
  if (value >= 0x80000000n && value <= 0xffffffffn) return this.uint64Number(Number(value))
  return uint64.call(this, value)
}

interface YamuxWindow { state: StreamState, recvWindow: number, recvWindowCapacity: number }
const sendWindowUpdate = YamuxStream.prototype.sendWindowUpdate
YamuxStream.prototype.sendWindowUpdate = function (this: YamuxStream) {
  const w = this as unknown as YamuxWindow
  if (w.state === StreamState.Established && w.recvWindow - w.recvWindowCapacity < w.recvWindow / 2) return
  sendWindowUpdate.call(this)
}

type LengthDecoder = ((buf: { byteLength: number }) => number) & { bytes?: number }
interface Guardable { lengthDecoder: LengthDecoder, [GUARDED]?: true }
const GUARDED = Symbol('edgelink.emptyBufferGuard')
const decode = LengthPrefixedDecoder.prototype.decode
LengthPrefixedDecoder.prototype.decode = function (this: LengthPrefixedDecoder, buf) {
  const d = this as unknown as Guardable
  if (d[GUARDED] !== true) {
    const inner = d.lengthDecoder
    d.lengthDecoder = (b) => b.byteLength === 0 ? 0 : inner(b)
    d[GUARDED] = true
  }
  return decode.call(this, buf)
}

export {}
