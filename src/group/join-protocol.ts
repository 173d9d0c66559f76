/**
 * Wire layer of `/edgelink/join/1.0.0` (see protocols/join.md). Reads and writes
 * length-prefixed protobuf frames with size limits and a deadline; every decision is
 * made by the logic callbacks, which never see the stream.
 */
import { pbStream } from '@libp2p/utils'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import { JoinAck, JoinRequest, JoinResponse, JoinStatus } from '../wire/join.js'
import type { Logger } from '../agent/logger.js'
import { errorMessage } from '../errors.js'
import { MAX_ROSTER_BYTES } from './roster.js'
import type { EdgelinkNode } from '../net/node.js'

export const JOIN_PROTOCOL = '/edgelink/join/1.0.0'
/** Largest JoinRequest or JoinAck: hostname, version, 16 addresses fit in well under 8 KiB. */
export const MAX_JOIN_REQUEST_BYTES = 8 * 1024
/** Largest JoinResponse: a roster plus a key. */
export const MAX_JOIN_RESPONSE_BYTES = MAX_ROSTER_BYTES + 4 * 1024
/** Joins handled at once; more wait in libp2p's stream limit and then fail fast. */
export const MAX_INBOUND_JOIN_STREAMS = 4

export { JoinStatus }

/** What the leader's logic answers to a JoinRequest. */
export interface JoinOffer {
  status: JoinStatus
  message: string
  roster?: Uint8Array
  groupKey?: Uint8Array
  /** Called after the follower acknowledged persisting the offer. */
  commit?: () => Promise<{ status: JoinStatus, message: string }>
  /** Called when the exchange ends before commit; releases the reservation. */
  abort?: (reason: string) => Promise<void>
}

export interface JoinLeaderLogic {
  prepareJoin: (remote: PeerId, req: JoinRequest) => Promise<JoinOffer>
}

/** The leader's stream handler. */
export function joinHandler (logic: JoinLeaderLogic, log: Logger, timeoutMs: number) {
  return async (stream: Stream, connection: Connection): Promise<void> => {
    const signal = AbortSignal.timeout(timeoutMs)
    const pb = pbStream(stream, { maxDataLength: MAX_JOIN_REQUEST_BYTES })
    let offer: JoinOffer | undefined
    let settled = false
    const remote = connection.remotePeer
    try {
      let req: JoinRequest
      try {
        req = await pb.read(JoinRequest, { signal })
      } catch (err) {
        log.debug({ peer: remote.toString(), err: errorMessage(err) }, 'malformed join request')
        await pb.write({ status: JoinStatus.BAD_REQUEST, message: 'malformed join request' }, JoinResponse, { signal }).catch(() => {})
        stream.abort(err instanceof Error ? err : new Error(String(err)))
        return
      }
      offer = await logic.prepareJoin(remote, req)
      await pb.write({ status: offer.status, message: offer.message, roster: offer.roster as Uint8Array<ArrayBuffer>, groupKey: offer.groupKey as Uint8Array<ArrayBuffer> }, JoinResponse, { signal })
      if (offer.status !== JoinStatus.OK || offer.commit == null) {
        settled = true
        await stream.close({ signal })
        return
      }
      const ack = await pb.read(JoinAck, { signal })
      if (!ack.persisted) {
        settled = true
        await offer.abort?.(`follower could not store the roster: ${ack.message.slice(0, 200)}`)
        await stream.close({ signal })
        return
      }
      settled = true
      const result = await offer.commit()
      await pb.write({ status: result.status, message: result.message }, JoinResponse, { signal })
      await stream.close({ signal })
    } catch (err) {
      if (!settled) await offer?.abort?.(`join exchange failed: ${errorMessage(err)}`)
      log.debug({ peer: remote.toString(), err: errorMessage(err) }, 'join exchange failed')
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }
}

export interface JoinClientResult {
  /** The leader's final answer (OK = committed). */
  final: JoinResponse | undefined
  offer: JoinResponse
}

/**
 * The follower's side: dial the pinned leader, send the request, hand the offer to
 * `onOffer` (which stores it and returns whether it did), then read the result.
 * Dial errors propagate so the caller can tell "unreachable" from "wrong identity".
 */
export async function requestJoin (
  node: EdgelinkNode,
  leader: PeerId,
  addrs: Multiaddr[],
  req: JoinRequest,
  onOffer: (offer: JoinResponse) => Promise<{ persisted: boolean, message: string }>,
  opts: { dialTimeoutMs: number, timeoutMs: number, log?: Logger }
): Promise<JoinClientResult> {
  const t0 = performance.now()
  const phases: Record<string, number> = {}
  const mark = (name: string): void => { phases[name] = Math.round(performance.now() - t0) }
  const targets = addrs.map(a => a.encapsulate(`/p2p/${leader.toString()}`))
  const stream = await node.dialProtocol(targets.length > 0 ? targets : leader, JOIN_PROTOCOL, { signal: AbortSignal.timeout(opts.dialTimeoutMs) })
  mark('streamMs')
  const signal = AbortSignal.timeout(opts.timeoutMs)
  const pb = pbStream(stream, { maxDataLength: MAX_JOIN_RESPONSE_BYTES })
  try {
    await pb.write(req, JoinRequest, { signal })
    const offer = await pb.read(JoinResponse, { signal })
    mark('offerMs')
    if (offer.status !== JoinStatus.OK) {
      await stream.close({ signal }).catch(() => {})
      return { offer, final: undefined }
    }
    const stored = await onOffer(offer)
    await pb.write({ persisted: stored.persisted, message: stored.message }, JoinAck, { signal })
    mark('ackMs')
    if (!stored.persisted) {
      await stream.close({ signal }).catch(() => {})
      return { offer, final: undefined }
    }
    let final: JoinResponse | undefined
    try {
      final = await pb.read(JoinResponse, { signal })
    } catch {
      final = undefined
    }
    mark('finalMs')
    opts.log?.debug(phases, 'join exchange timing (ms since the dial started)')
    await stream.close({ signal }).catch(() => {})
    return { offer, final }
  } catch (err) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw err
  }
}
