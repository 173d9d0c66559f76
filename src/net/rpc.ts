/**
 * One request, one response per stream, as length-prefixed protobuf frames, bounded in
 * size and time. The roster and group protocols are built on this; their logic never
 * sees a stream.
 */
import { pbStream } from '@libp2p/utils'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import type { Logger } from '../agent/logger.js'
import { errorMessage } from '../errors.js'
import type { EdgelinkNode } from './node.js'

export interface Codec<T> {
  encode: (value: T) => Uint8Array
  decode: (data: Uint8Array | import('uint8arraylist').Uint8ArrayList) => T
}

export interface RpcHandlerOptions<Req, Res> {
  protocol: string
  request: Codec<Req>
  response: Codec<Res>
  maxFrameBytes: number
  timeoutMs: number
  /** Answer for a request that cannot be decoded. */
  malformed: Res
  handle: (remote: PeerId, req: Req) => Promise<Res>
  log: Logger
}

/**
 * The stream reader gathers a whole frame before decoding it, and refuses to hold more
 * than its buffer (4 MiB by default): a frame the protocol allows must fit, with its
 * length prefix.
 */
function framed (stream: Stream, maxFrameBytes: number): ReturnType<typeof pbStream> {
  return pbStream(stream, { maxDataLength: maxFrameBytes, maxBufferSize: maxFrameBytes + 16 })
}

export function rpcHandler<Req, Res> (o: RpcHandlerOptions<Req, Res>) {
  return async (stream: Stream, connection: Connection): Promise<void> => {
    const signal = AbortSignal.timeout(o.timeoutMs)
    const pb = framed(stream, o.maxFrameBytes)
    const remote = connection.remotePeer
    try {
      let req: Req
      try {
        req = await pb.read(o.request, { signal })
      } catch (err) {
        o.log.debug({ protocol: o.protocol, peer: remote.toString(), err: errorMessage(err) }, 'malformed request')
        await pb.write(o.malformed, o.response, { signal }).catch(() => {})
        stream.abort(err instanceof Error ? err : new Error(String(err)))
        return
      }
      const res = await o.handle(remote, req)
      await pb.write(res, o.response, { signal })
      await stream.close({ signal })
    } catch (err) {
      o.log.debug({ protocol: o.protocol, peer: remote.toString(), err: errorMessage(err) }, 'exchange failed')
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }
}

export async function rpcCall<Req, Res> (node: EdgelinkNode, peer: PeerId, protocol: string, req: Req, codecs: { request: Codec<Req>, response: Codec<Res> }, opts: { maxFrameBytes: number, timeoutMs: number }): Promise<Res> {
  const signal = AbortSignal.timeout(opts.timeoutMs)
  // The request rides with the protocol proposal (no round trip for multistream-select
  // first); a peer that does not speak the protocol fails the read below instead.
  const stream = await node.dialProtocol(peer, protocol, { signal, negotiateFully: false })
  const pb = framed(stream, opts.maxFrameBytes)
  try {
    await pb.write(req, codecs.request, { signal })
    const res = await pb.read(codecs.response, { signal })
    await stream.close({ signal }).catch(() => {})
    return res
  } catch (err) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw err
  }
}
