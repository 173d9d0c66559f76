/**
 * Wire layer of `/edgelink/roster/1.0.0` (see protocols/roster.md): one request,
 * one response per stream, bounded in size and time. The logic answers requests.
 */
import type { PeerId } from '@libp2p/interface'
import { RosterRequest, RosterRequestType, RosterResponse, RosterStatus } from '../wire/roster.js'
import type { Logger } from '../agent/logger.js'
import { MAX_ROSTER_BYTES } from './roster.js'
import type { EdgelinkNode } from '../net/node.js'
import { rpcCall, rpcHandler } from '../net/rpc.js'

export const ROSTER_PROTOCOL = '/edgelink/roster/1.0.0'
/** A request or response holds at most one roster, one key and one handover. */
export const MAX_ROSTER_FRAME = MAX_ROSTER_BYTES + 8 * 1024
export const MAX_INBOUND_ROSTER_STREAMS = 32

export { RosterRequestType, RosterStatus }

export interface RosterLogic {
  handleRosterRequest: (remote: PeerId, req: RosterRequest) => Promise<RosterResponse>
}

const EMPTY = new Uint8Array(0)

export function rosterHandler (logic: RosterLogic, log: Logger, timeoutMs: number): ReturnType<typeof rpcHandler> {
  return rpcHandler({
    protocol: ROSTER_PROTOCOL,
    request: RosterRequest,
    response: RosterResponse,
    maxFrameBytes: MAX_ROSTER_FRAME,
    timeoutMs,
    malformed: response(RosterStatus.INVALID, 'malformed roster request'),
    handle: async (remote, req) => await logic.handleRosterRequest(remote, req),
    log
  })
}

export async function rosterCall (node: EdgelinkNode, peer: PeerId, req: Partial<RosterRequest>, timeoutMs: number): Promise<RosterResponse> {
  return await rpcCall(node, peer, ROSTER_PROTOCOL, req as RosterRequest, { request: RosterRequest, response: RosterResponse }, { maxFrameBytes: MAX_ROSTER_FRAME, timeoutMs })
}

export function response (status: RosterStatus, message = '', roster?: Uint8Array, groupKey?: Uint8Array): RosterResponse {
  return { status, message, roster: (roster ?? EMPTY) as Uint8Array<ArrayBuffer>, groupKey: (groupKey ?? EMPTY) as Uint8Array<ArrayBuffer> }
}
