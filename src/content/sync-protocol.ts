/**
 * Wire layer of `/edgelink/sync/1.0.0` (see protocols/sync.md). A stream carries a
 * sequence of requests from the fetcher, each answered by a SyncResponse and, for a
 * chunk, one length-prefixed frame with the chunk's bytes. Streams are long-lived so
 * protocol negotiation is paid once per worker, not once per chunk. Writes wait for
 * the stream's 'drain' event (byteStream), so a slow receiver throttles the sender
 * and memory stays bounded: at most one chunk per stream is in flight.
 */
import { byteStream, lpStream, type ByteStream, type LengthPrefixedStream } from '@libp2p/utils'
import { Uint8ArrayList } from 'uint8arraylist'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import type { Logger } from '../agent/logger.js'
import type { EdgelinkNode } from '../net/node.js'
import { errorMessage } from '../errors.js'
import { SyncRequest, SyncRequestType, SyncResponse, SyncStatus } from '../wire/sync.js'
import { u8 } from '../util/bytes.js'
import { monotonicMs } from '../util/clock.js'

export const SYNC_PROTOCOL = '/edgelink/sync/1.0.0'
/** A request is a digest and an index: tiny. */
export const MAX_SYNC_REQUEST = 1024
/** A response frame: a manifest of the largest file (64 GiB / 1 MiB chunks × 34 B ≈ 2.2 MB) or one chunk (≤ 16 MiB). */
export const MAX_SYNC_FRAME = 17 * 1024 * 1024
/** Streams one peer may hold open to us; fetchers use a few each. */
export const MAX_INBOUND_SYNC_STREAMS = 32
/** A stream with no request for this long is closed by the server. */
export const SYNC_IDLE_MS = 30_000

export { SyncRequestType, SyncStatus }

/** What the serving side's logic answers; it never sees the stream. */
export interface SyncServer {
  authorize: (peer: string) => boolean
  manifest: (digest: string) => Uint8Array | undefined
  bitmap: (digest: string) => Uint8Array | undefined
  /** Chunks of `digest` this host is fetching now (same layout as the bitmap), if any. */
  fetching: (digest: string) => Uint8Array | undefined
  chunk: (digest: string, index: number) => Promise<Uint8Array | undefined>
  /**
   * May `peer` have chunk `index` of `digest` now? A host holding the whole file sends a
   * chunk to one member at a time (see ChunkClaims); false answers SYNC_BUSY.
   */
  claim: (digest: string, index: number, peer: string) => boolean
  /** The chunk claimed by `peer` was sent (or not). */
  unclaim: (digest: string, index: number, peer: string) => void
  /** Count bytes served, per peer, for progress and for the swarming measurement. */
  served: (peer: string, bytes: number) => void
}

const EMPTY = new Uint8Array(0)
/** An unsigned varint of a length up to MAX_SYNC_FRAME takes 4 bytes; lpStream allows as many as the maximum needs. */
const MAX_VARINT_BYTES = 4

/** The unsigned-varint length prefix lpStream writes. */
function encodeLength (n: number): Uint8Array {
  const out: number[] = []
  while (n >= 0x80) { out.push((n % 128) | 0x80); n = Math.floor(n / 128) }
  out.push(n)
  return Uint8Array.from(out)
}

function res (status: SyncStatus, fields: Partial<SyncResponse> = {}): SyncResponse {
  return { status, message: '', manifest: u8(EMPTY), bitmap: u8(EMPTY), length: 0, fetching: u8(EMPTY), ...fields }
}

export function syncHandler (server: SyncServer, log: Logger) {
  return async (stream: Stream, connection: Connection): Promise<void> => {
    const peer = connection.remotePeer.toString()
    const lp = lpStream(stream, { maxDataLength: MAX_SYNC_REQUEST })
    const refuse = async (): Promise<void> => {
      await lp.write(SyncResponse.encode(res(SyncStatus.SYNC_NOT_MEMBER, { message: 'only members of this group may fetch its content' })), { signal: AbortSignal.timeout(5000) })
      await stream.close()
    }
    try {
      if (!server.authorize(peer)) return await refuse()
      for (;;) {
        let req: SyncRequest
        try {
          const frame = await lp.read({ signal: AbortSignal.timeout(SYNC_IDLE_MS) })
          req = SyncRequest.decode(frame)
        } catch (err) {
          if (isEnd(err)) { await stream.close().catch(() => {}); return }
          await endInvalid(stream, lp, err)
          return
        }
        // Membership is checked on every request, not only when the stream opens: a host
        // unlinked while its streams are open gets nothing more on them.
        if (!server.authorize(peer)) return await refuse()
        const signal = AbortSignal.timeout(SYNC_IDLE_MS)
        if (req.type === SyncRequestType.GET_MANIFEST) {
          const m = server.manifest(req.digest)
          await lp.write(SyncResponse.encode(m == null ? res(SyncStatus.SYNC_NOT_FOUND) : res(SyncStatus.SYNC_OK, { manifest: u8(m) })), { signal })
        } else if (req.type === SyncRequestType.GET_HAVE) {
          const b = server.bitmap(req.digest)
          const f = b == null ? undefined : server.fetching(req.digest)
          await lp.write(SyncResponse.encode(b == null ? res(SyncStatus.SYNC_NOT_FOUND) : res(SyncStatus.SYNC_OK, { bitmap: u8(b), fetching: u8(f ?? EMPTY) })), { signal })
        } else if (req.type === SyncRequestType.GET_CHUNK) {
          if (!server.claim(req.digest, req.index, peer)) {
            await lp.write(SyncResponse.encode(res(SyncStatus.SYNC_BUSY, { message: 'this chunk is on its way to another member; fetch it from there' })), { signal })
            continue
          }
          try {
            const data = await server.chunk(req.digest, req.index)
            if (data == null) {
              await lp.write(SyncResponse.encode(res(SyncStatus.SYNC_NOT_FOUND)), { signal })
            } else {
              await lp.writeV([SyncResponse.encode(res(SyncStatus.SYNC_OK, { length: data.length })), data], { signal })
              server.served(peer, data.length)
            }
          } finally {
            server.unclaim(req.digest, req.index, peer)
          }
        } else {
          await lp.write(SyncResponse.encode(res(SyncStatus.SYNC_INVALID, { message: 'unknown request type' })), { signal })
        }
      }
    } catch (err) {
      log.debug({ peer, err: errorMessage(err) }, 'sync stream ended with an error')
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }
}

/** How long a stream refused as malformed may take to send what is queued and be closed by the peer. */
export const SYNC_CLOSE_MS = 5000

/**
 * Answer a malformed request with SYNC_INVALID and end the stream. Closing, not a reset:
 * answers to the requests before it may still be on their way (a chunk waits for the
 * peer's yamux window), and a reset would drop them. The peer closes its end once it has
 * read them; one that does not is reset after SYNC_CLOSE_MS.
 */
async function endInvalid (stream: Stream, lp: LengthPrefixedStream<Stream>, err: unknown): Promise<void> {
  const signal = AbortSignal.timeout(SYNC_CLOSE_MS)
  const closed = new Promise<void>(resolve => {
    if (stream.status === 'closed') { resolve(); return }
    stream.addEventListener('close', () => { resolve() }, { once: true })
    signal.addEventListener('abort', () => { resolve() }, { once: true })
  })
  try {
    await lp.write(SyncResponse.encode(res(SyncStatus.SYNC_INVALID, { message: 'malformed sync request' })), { signal })
    await stream.close({ signal })
  } catch {}
  await closed
  if (stream.status !== 'closed') stream.abort(err instanceof Error ? err : new Error(String(err)))
}

function isEnd (err: unknown): boolean {
  const name = (err as Error)?.name
  return name === 'UnexpectedEOFError' || name === 'StreamClosedError' || name === 'StreamResetError'
}

/**
 * How long a whole-file holder refuses a chunk it just sent to another member: longer than
 * it takes that member's GET_HAVE answer to reach the others through links full of chunks.
 */
export const SEED_HOLD_MS = 3000

/**
 * Super-seeding: a host that holds the whole file sends each chunk to one member at a
 * time, and for `holdMs` after sending it refuses it to others (SYNC_BUSY): they fetch it
 * from the member that just got it, and the seed's link goes to chunks no one else has.
 * A member that cannot get it elsewhere asks again after `holdMs`.
 */
export class ChunkClaims {
  private readonly claims = new Map<string, { peer: string, active: number, until: number }>()
  private readonly holdMs: number

  constructor (holdMs = SEED_HOLD_MS) {
    this.holdMs = holdMs
  }

  claim (digest: string, index: number, peer: string): boolean {
    const key = `${digest}#${index}`
    const now = monotonicMs()
    const c = this.claims.get(key)
    if (c != null && c.peer !== peer && (c.active > 0 || c.until > now)) return false
    if (c != null && c.peer === peer) c.active++
    else this.claims.set(key, { peer, active: 1, until: 0 })
    if (this.claims.size > 4096) this.prune(now)
    return true
  }

  unclaim (digest: string, index: number, peer: string): void {
    const c = this.claims.get(`${digest}#${index}`)
    if (c == null || c.peer !== peer) return
    c.active = Math.max(0, c.active - 1)
    c.until = monotonicMs() + this.holdMs
  }

  private prune (now: number): void {
    for (const [key, c] of this.claims) if (c.active === 0 && c.until <= now) this.claims.delete(key)
  }
}

export class SyncRefusedError extends Error {
  static override name = 'SyncRefusedError'
  readonly status: SyncStatus
  constructor (status: SyncStatus, message: string) {
    super(message)
    this.name = 'SyncRefusedError'
    this.status = status
  }
}

/**
 * A chunk's body is read off the stream this much at a time and copied into the session's
 * own buffer at once (see SyncSession.chunk).
 */
export const BODY_PIECE = 64 * 1024

/**
 * One fetcher's stream to one peer: requests one after another, each bounded by
 * `timeoutMs` (a peer that stalls is abandoned and the chunk fetched elsewhere).
 */
export class SyncSession {
  readonly peer: string
  private readonly stream: Stream
  private readonly bytes: ByteStream<Stream>
  private readonly timeoutMs: number
  private broken = false
  /** Where chunk bodies are assembled; one per session, reused (see chunk()). */
  private body: Buffer | undefined

  private readonly cancel: AbortSignal | undefined
  private readonly onCancel = (): void => { this.broken = true; this.stream.abort(new Error('sync session cancelled')) }

  private constructor (peer: string, stream: Stream, timeoutMs: number, cancel?: AbortSignal) {
    this.peer = peer
    this.stream = stream
    this.cancel = cancel
    cancel?.addEventListener('abort', this.onCancel, { once: true })
    // What waits here is a response header (a manifest of the largest file: 2.2 MB) or up to
    // one BODY_PIECE, plus what the yamux window lets in: whatever the chunk size (up to
    // 16 MiB), the buffer never holds a whole chunk, so lpStream's 4 MiB default is ample.
    this.bytes = byteStream(stream, { maxBufferSize: 4 * 1024 * 1024 })
    this.timeoutMs = timeoutMs
  }

  /** `cancel`: aborting it ends the dial, and the session's stream with whatever request is waiting. */
  static async open (node: EdgelinkNode, peer: PeerId, timeoutMs: number, cancel?: AbortSignal): Promise<SyncSession> {
    const timeout = AbortSignal.timeout(timeoutMs)
    const stream = await node.dialProtocol(peer, SYNC_PROTOCOL, { signal: cancel == null ? timeout : AbortSignal.any([timeout, cancel]) })
    if (cancel?.aborted === true) {
      stream.abort(new Error('sync session cancelled'))
      throw new Error('sync session cancelled')
    }
    return SyncSession.over(peer.toString(), stream, timeoutMs, cancel)
  }

  /** A session on a stream already open to `peer` (open() dials one). */
  static over (peer: string, stream: Stream, timeoutMs: number, cancel?: AbortSignal): SyncSession {
    return new SyncSession(peer, stream, timeoutMs, cancel)
  }

  get usable (): boolean { return !this.broken && this.stream.status === 'open' }

  async manifest (digest: string): Promise<Uint8Array> {
    const r = await this.ask({ type: SyncRequestType.GET_MANIFEST, digest, index: 0 })
    return r.manifest
  }

  async have (digest: string): Promise<Uint8Array> {
    return (await this.haveAndFetching(digest)).have
  }

  /** What the peer holds, and what it is fetching now (empty from a peer that does not say). */
  async haveAndFetching (digest: string): Promise<{ have: Uint8Array, fetching: Uint8Array }> {
    const r = await this.ask({ type: SyncRequestType.GET_HAVE, digest, index: 0 })
    return { have: r.bitmap, fetching: r.fetching }
  }

  /**
   * The chunk's bytes as sent (unverified: the caller checks them against the manifest).
   *
   * The body is read BODY_PIECE at a time and copied into this session's buffer as it
   * arrives. Read as one length-prefixed frame, the whole chunk first piled up in the
   * stream reader's buffer, and a chunk over its 4 MiB cap (a manifest may use chunks of
   * up to 16 MiB) ended the stream with "Read buffer overflow". The copy costs nothing
   * measurable: 8 alternating 256 MiB pairs against the frame reader gave 116 against
   * 117 MB/s and 12.4 against 12.8 CPU-ms/MiB for both agents. The hope that it would
   * also lower the receiver's RSS peak (the decrypted buffers die at once) did not hold:
   * 61 against 59 MiB on the first transfer (see protocols/sync.md, "The agent's heap").
   *
   * The returned array is this session's buffer: valid until the next chunk() call.
   */
  async chunk (digest: string, index: number, expectedLength: number): Promise<Uint8Array> {
    const r = await this.ask({ type: SyncRequestType.GET_CHUNK, digest, index })
    if (r.length !== expectedLength) {
      this.fail(new Error(`peer announced a chunk of ${r.length} bytes, expected ${expectedLength}`))
    }
    try {
      const signal = AbortSignal.timeout(this.timeoutMs)
      const length = await this.readLength(MAX_SYNC_FRAME, signal)
      if (length !== expectedLength) throw new Error(`peer sent ${length} bytes, expected ${expectedLength}`)
      if (this.body == null || this.body.byteLength < length) this.body = Buffer.allocUnsafeSlow(length)
      const out = this.body.subarray(0, length)
      let at = 0
      while (at < length) {
        const piece = await this.bytes.read({ bytes: Math.min(BODY_PIECE, length - at), signal })
        for (const buf of piece) {
          out.set(buf, at)
          at += buf.byteLength
        }
      }
      return out
    } catch (err) {
      this.fail(err)
    }
  }

  close (): void {
    this.cancel?.removeEventListener('abort', this.onCancel)
    this.broken = true
    this.stream.close().catch(() => { this.stream.abort(new Error('closed')) })
  }

  private async ask (req: SyncRequest): Promise<SyncResponse> {
    if (!this.usable) throw new Error('sync session is closed')
    const signal = AbortSignal.timeout(this.timeoutMs)
    let r: SyncResponse
    try {
      const frame = SyncRequest.encode(req)
      await this.bytes.write(new Uint8ArrayList(encodeLength(frame.byteLength), frame), { signal })
      const length = await this.readLength(MAX_SYNC_FRAME, signal)
      r = SyncResponse.decode(length === 0 ? EMPTY : await this.bytes.read({ bytes: length, signal }))
    } catch (err) {
      this.fail(err)
    }
    if (r.status !== SyncStatus.SYNC_OK) throw new SyncRefusedError(r.status, r.message !== '' ? r.message : r.status)
    return r
  }

  /** A frame's unsigned-varint length prefix (as lpStream reads it), refused past `max`. */
  private async readLength (max: number, signal: AbortSignal): Promise<number> {
    let value = 0
    for (let i = 0; i < MAX_VARINT_BYTES; i++) {
      const b = (await this.bytes.read({ bytes: 1, signal })).get(0)
      value += (b & 0x7f) * 2 ** (7 * i)
      if (value > max) throw new Error(`peer sent a frame of more than ${max} bytes`)
      if (b < 0x80) return value
    }
    throw new Error(`peer sent a length prefix of more than ${MAX_VARINT_BYTES} bytes`)
  }

  private fail (err: unknown): never {
    this.broken = true
    this.stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw err instanceof Error ? err : new Error(String(err))
  }
}
