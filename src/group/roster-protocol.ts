/**
 * Wire layer of `/edgelink/roster/1.0.0` (see protocols/roster.md): one request,
 * one response per stream, bounded in size and time. The logic answers requests.
 */
import { pbStream } from '@libp2p/utils'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { RosterRequest, RosterRequestType, RosterResponse, RosterStatus } from '../wire/roster.js'
import type { Logger } from '../agent/logger.js'
import { errorMessage } from '../errors.js'
import { MAX_ROSTER_BYTES } from './roster.js'
import type { EdgelinkNode } from '../net/node.js'

export const ROSTER_PROTOCOL = '/edgelink/roster/1.0.0'
/** A request or response holds at most one roster, one key and one handover. */
export const MAX_ROSTER_FRAME = MAX_ROSTER_BYTES + 8 * 1024
export const MAX_INBOUND_ROSTER_STREAMS = 32

export { RosterRequestType, RosterStatus }

export interface RosterLogic {
  handleRosterRequest: (remote: PeerId, req: RosterRequest) => Promise<RosterResponse>
}

const EMPTY = new Uint8Array(0)

export function rosterHandler (logic: RosterLogic, log: Logger, timeoutMs: number) {
  return async (stream: Stream, connection: Connection): Promise<void> => {
    const signal = AbortSignal.timeout(timeoutMs)
    const pb = pbStream(stream, { maxDataLength: MAX_ROSTER_FRAME })
    try {
      let req: RosterRequest
      try {
        req = await pb.read(RosterRequest, { signal })
      } catch (err) {
        log.debug({ peer: connection.remotePeer.toString(), err: errorMessage(err) }, 'malformed roster request')
        await pb.write(response(RosterStatus.INVALID, 'malformed roster request'), RosterResponse, { signal }).catch(() => {})
        stream.abort(err instanceof Error ? err : new Error(String(err)))
        return
      }
      const res = await logic.handleRosterRequest(connection.remotePeer, req)
      await pb.write(res, RosterResponse, { signal })
      await stream.close({ signal })
    } catch (err) {
      log.debug({ peer: connection.remotePeer.toString(), err: errorMessage(err) }, 'roster exchange failed')
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    }
  }
}

export async function rosterCall (node: EdgelinkNode, peer: PeerId, req: Partial<RosterRequest>, timeoutMs: number): Promise<RosterResponse> {
  const signal = AbortSignal.timeout(timeoutMs)
  const stream = await node.dialProtocol(peer, ROSTER_PROTOCOL, { signal })
  const pb = pbStream(stream, { maxDataLength: MAX_ROSTER_FRAME })
  try {
    await pb.write(req as RosterRequest, RosterRequest, { signal })
    const res = await pb.read(RosterResponse, { signal })
    await stream.close({ signal }).catch(() => {})
    return res
  } catch (err) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw err
  }
}

export function response (status: RosterStatus, message = '', roster?: Uint8Array, groupKey?: Uint8Array): RosterResponse {
  return { status, message, roster: (roster ?? EMPTY) as Uint8Array<ArrayBuffer>, groupKey: (groupKey ?? EMPTY) as Uint8Array<ArrayBuffer> }
}
