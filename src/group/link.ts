/**
 * The follower's side of linking: check the token and this host's state, dial the
 * pinned leader, prove the secret, store the offered roster and key, and wait for
 * the leader to confirm a majority stored the change.
 */
import { multiaddr } from '@multiformats/multiaddr'
import type { Multiaddr } from '@multiformats/multiaddr'
import { errorMessage } from '../errors.js'
import { AGENT_VERSION } from '../version.js'
import { peerIdFromString } from '@libp2p/peer-id'
import { sameBytes, u8 } from '../util/bytes.js'
import { rosterCall, RosterRequestType, RosterStatus } from './roster-protocol.js'
import { JoinError, GroupStateError, TokenError } from './errors.js'
import { decodeToken, hex, isExpired } from './token.js'
import { isMember, verifyRoster } from './roster.js'
import { requestJoin, JoinStatus } from './join-protocol.js'
import type { JoinResponse } from '../wire/join.js'
import { decodeKey, type GroupService, type GroupStatusFields } from './service.js'
import type { Membership } from './state.js'

/** Follower-side wording for each refusal the leader can send. */
const REFUSALS: Partial<Record<JoinStatus, string>> = {
  [JoinStatus.UNKNOWN_TOKEN]: 'TOKEN_UNKNOWN',
  [JoinStatus.EXPIRED]: 'TOKEN_EXPIRED',
  [JoinStatus.USED]: 'TOKEN_USED',
  [JoinStatus.REVOKED]: 'TOKEN_REVOKED',
  [JoinStatus.BAD_SECRET]: 'TOKEN_BAD_SECRET',
  [JoinStatus.WRONG_GROUP]: 'TOKEN_WRONG_GROUP',
  [JoinStatus.ALREADY_MEMBER]: 'ALREADY_LINKED',
  [JoinStatus.NOT_LEADER]: 'NOT_LEADER',
  [JoinStatus.NO_QUORUM]: 'NO_QUORUM',
  [JoinStatus.BAD_REQUEST]: 'BAD_REQUEST',
  [JoinStatus.BUSY]: 'LEADER_BUSY',
  [JoinStatus.NOT_IDLE]: 'NOT_IDLE'
}

export async function linkWithToken (svc: GroupService, tokenText: string): Promise<GroupStatusFields & { hosts: number }> {
  const t = decodeToken(tokenText)
  if (isExpired(t)) {
    // The leader decides, by its own record: clocks at these sites are often set by hand,
    // and one a few minutes ahead here would refuse every token before it was tried.
    svc.c.log.warn({ expiresAt: new Date(t.expiresAt).toISOString() }, 'this host\'s clock says the token has expired; asking the leader, which decides')
  }
  const groupId = hex(t.groupId)
  const leader = t.leader.toString()
  if (leader === svc.self) throw new JoinError('this token was issued by this host; run `edgelink link TOKEN` on the host that should join', 'TOKEN_OWN', 400)
  const previous = svc.membership
  if (previous != null) {
    const r = previous.record.roster
    if (r.groupId === groupId) throw new GroupStateError(`this host is already linked to group ${groupId}`, 'ALREADY_LINKED', 409)
    if (r.leader !== svc.self) {
      throw new GroupStateError(`this host is linked to group ${r.groupId} (leader ${r.leader}); unlink it first with \`edgelink unlink\``, 'NOT_IDLE', 409)
    }
    if (r.members.length > 1) {
      throw new GroupStateError(`this host leads group ${r.groupId} with ${r.members.length - 1} follower(s); hand leadership over with \`edgelink leader relinquish --to HOST\` and unlink it before linking elsewhere`, 'NOT_IDLE', 409)
    }
  }

  const { config, node, log } = svc.c
  const req = {
    groupId: u8(t.groupId),
    tokenId: u8(t.tokenId),
    secret: u8(t.secret),
    hostname: config.hostname,
    agentVersion: AGENT_VERSION,
    addrs: svc.ownAddresses().slice(0, 16).map(a => u8(multiaddr(a).bytes))
  }
  let stored: Membership | undefined
  const onOffer = async (offer: JoinResponse): Promise<{ persisted: boolean, message: string }> => {
    try {
      const record = await verifyRoster(offer.roster)
      const r = record.roster
      if (r.groupId !== groupId || r.leader !== leader || !isMember(r, svc.self)) {
        return { persisted: false, message: 'offered roster does not match the token' }
      }
      const key = decodeKey(offer.groupKey)
      stored = { record, key }
      // Not acted on until the leader commits: dialling every member now would compete
      // with the leader's commit for their attention (and the commit may still fail).
      await svc.store(stored, { quiet: true })
      return { persisted: true, message: '' }
    } catch (err) {
      log.warn({ err: errorMessage(err) }, 'join offer rejected')
      return { persisted: false, message: errorMessage(err).slice(0, 200) }
    }
  }

  let result
  try {
    result = await requestJoin(node, t.leader, t.addrs, req, onOffer, { dialTimeoutMs: config.group.dialTimeout, timeoutMs: config.group.joinTimeout, log })
  } catch (err) {
    if (stored != null) await restore(svc, previous)
    throw dialError(err, leader, t.addrs, config.group.dialTimeout)
  }
  const { offer, final } = result
  if (offer.status !== JoinStatus.OK) {
    throw new JoinError(`the leader refused: ${offer.message}`, REFUSALS[offer.status] ?? 'JOIN_REFUSED', offer.status === JoinStatus.NO_QUORUM ? 503 : 400)
  }
  if (stored == null) throw new JoinError('the leader\'s offer did not match the token (wrong group or leader); nothing was changed', 'JOIN_OFFER_INVALID', 502)
  let confirmed = final?.status === JoinStatus.OK
  if (final == null) confirmed = await confirmWithLeader(svc, leader, groupId, stored)
  if (!confirmed) {
    await restore(svc, previous)
    throw new JoinError(`the leader did not commit the join: ${final?.message ?? 'no answer'}`, final != null ? (REFUSALS[final.status] ?? 'JOIN_FAILED') : 'JOIN_UNCONFIRMED', 503)
  }
  // Dial the members and start gossip once the operator has the answer.
  setImmediate(() => { svc.announce() })
  if (previous != null) {
    await svc.tokens.revokeAll('host joined another group')
    svc.c.audit.record('group.dissolved', { groupId: previous.record.roster.groupId, reason: 'linked to another group' })
  }
  svc.c.audit.record('join.completed', { groupId, leader, rosterVersion: stored.record.roster.version })
  return { ...svc.statusFields(), hosts: svc.membership?.record.roster.members.length ?? 0 }
}

/**
 * The leader's final answer was lost: ask it for its roster from scratch, not relative to
 * the offered one, which it may never have committed (an aborted join is followed by a
 * new key under the same version, with other bytes). The join stands only if the
 * leader's roster is the offered one, or a later one that lists this host. A leader
 * that did not commit it answers NOT_MEMBER: this host is not in its roster.
 */
async function confirmWithLeader (svc: GroupService, leader: string, groupId: string, offered: Membership): Promise<boolean> {
  let res
  try {
    res = await rosterCall(svc.c.node, peerIdFromString(leader), { type: RosterRequestType.PULL, groupId: u8(Buffer.from(groupId, 'hex')), knownTerm: 0n, knownVersion: 0n }, svc.c.config.group.rpcTimeout)
  } catch (err) {
    svc.c.log.warn({ leader, err: errorMessage(err) }, 'cannot ask the leader whether it committed the join')
    return false
  }
  if (res.status !== RosterStatus.ROSTER_OK || res.roster.length === 0) return false
  if (sameBytes(res.roster, offered.record.bytes)) return true
  let record
  try {
    record = await verifyRoster(res.roster)
  } catch {
    return false
  }
  if (record.roster.groupId !== groupId || !isMember(record.roster, svc.self)) return false
  // The leader made another change after ours: take it (and its key) as a pull would.
  const key = res.groupKey.length > 0 ? decodeKey(res.groupKey) : undefined
  return await svc.adopt(record, key) === 'adopted' && svc.membership?.record.roster.version === record.roster.version
}

async function restore (svc: GroupService, previous: Membership | undefined): Promise<void> {
  if (previous != null) await svc.store(previous)
  else await svc.forget()
}

function dialError (err: unknown, leader: string, addrs: Multiaddr[], timeoutMs: number): Error {
  if (err instanceof JoinError || err instanceof TokenError) return err
  const name = (err as Error)?.name ?? ''
  const msg = errorMessage(err)
  // Noise reports a different static key as EncryptionFailedError "... does not match expected remote identity key".
  if (name === 'UnexpectedPeerError' || name === 'InvalidPeerIdError' || /does not match expected remote identity|unexpected peer/i.test(msg)) {
    return new JoinError(`the host at the token's address is not the leader named in the token (its identity differs from ${leader}); the token may be forged or the address now belongs to another host`, 'LEADER_IDENTITY_MISMATCH', 502)
  }
  if (name === 'TimeoutError' || name === 'AbortError' || /abort|timed out|timeout/i.test(msg)) {
    return new JoinError(`cannot reach the leader ${leader} within ${Math.round(timeoutMs / 1000)} s (tried ${addrs.length} address${addrs.length === 1 ? '' : 'es'}); check that its agent is running and that this host can reach it`, 'LEADER_UNREACHABLE', 504)
  }
  return new JoinError(`cannot reach the leader ${leader} (${msg}); check that its agent is running and that this host can reach it`, 'LEADER_UNREACHABLE', 502)
}
