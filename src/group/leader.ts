/**
 * The leader's side of roster changes: creating a group of one, admitting joins
 * (protocols/join.md), removing members, and handing leadership over in both
 * directions (protocols/roster.md). Every change is signed here and committed
 * through the replicator, which waits for a majority of voters.
 */
import { randomBytes } from 'node:crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import type { PeerId, PrivateKey } from '@libp2p/interface'
import type { Logger } from '../agent/logger.js'
import type { AgentConfig } from '../agent/config.js'
import type { AuditLog } from '../audit/index.js'
import type { EdgelinkNode } from '../net/node.js'
import { errorMessage } from '../errors.js'
import type { Mutex } from '../util/mutex.js'
import { sameBytes, u8 } from '../util/bytes.js'
import { AGENT_VERSION } from '../version.js'
import { GroupKey, type RosterRequest, type RosterResponse } from '../wire/roster.js'
import type { JoinRequest } from '../wire/join.js'
import { GroupStateError, NoQuorumError } from './errors.js'
import { decodeKey } from './key.js'
import type { GroupKeyMaterial, Membership } from './state.js'
import type { TokenBook } from './tokens.js'
import { hex, newGroupId } from './token.js'
import { isMember, MAX_MEMBERS, memberOf, nextHandoverChain, signHandover, signRoster, verifyHandover, verifyRoster, type Roster, type RosterMember, type SignedRosterRecord } from './roster.js'
import { JoinStatus, type JoinLeaderLogic, type JoinOffer } from './join-protocol.js'
import { response, rosterCall, RosterRequestType, RosterStatus } from './roster-protocol.js'
import { RosterReplicator } from './replicator.js'
import { GROUP_KEY_BYTES } from './key.js'
import type { AdoptOutcome } from './service.js'

/** What the leader logic uses of the group service. */
export interface LeaderComponents {
  node: EdgelinkNode
  privateKey: PrivateKey
  config: AgentConfig
  log: Logger
  audit: AuditLog
  tokens: TokenBook
  /** Serialises roster changes this host makes as leader (joins, unlinks, handover). */
  changeLock: Mutex
  /** This host's PeerId. */
  self: string
  membership: () => Membership | undefined
  requireMembership: () => Membership
  ownAddresses: () => string[]
  /** Store a membership this host created or changed. */
  store: (m: Membership) => Promise<void>
  /** Adopt a verified roster received from another member if it is newer. */
  adopt: (record: SignedRosterRecord, key: GroupKeyMaterial | undefined) => Promise<AdoptOutcome>
  /** See ReplicatorComponents.recentlyHeard. */
  recentlyHeard: (peer: string) => boolean
}

export interface HandoverResult {
  leader: string | null
  term: number | null
  dissolved: boolean
}

export class Leader implements JoinLeaderLogic {
  private readonly c: LeaderComponents
  private readonly replicator: RosterReplicator

  constructor (c: LeaderComponents) {
    this.c = c
    this.replicator = new RosterReplicator({ node: c.node, log: c.log, dialTimeoutMs: c.config.group.dialTimeout, rpcTimeoutMs: c.config.group.rpcTimeout, recentlyHeard: c.recentlyHeard })
  }

  /** Start a group of one, led by this host. The caller holds `changeLock`. */
  async createGroup (): Promise<void> {
    const self = this.c.self
    const roster: Roster = {
      groupId: hex(newGroupId()),
      term: 1,
      version: 1,
      leader: self,
      members: [{ peerId: self, hostname: this.c.config.hostname, addresses: this.c.ownAddresses(), role: 'leader', joinedAt: Date.now(), agentVersion: AGENT_VERSION }],
      updatedAt: Date.now(),
      keyId: 1
    }
    await this.c.store({ record: await signRoster(roster, this.c.privateKey), key: { id: 1, key: randomBytes(GROUP_KEY_BYTES) } })
    this.c.audit.record('group.created', { groupId: roster.groupId, leader: self })
  }

  // ---- join protocol, leader side --------------------------------------------

  async prepareJoin (remote: PeerId, req: JoinRequest): Promise<JoinOffer> {
    const refuse = (status: JoinStatus, message: string, extra: Record<string, unknown> = {}): JoinOffer => {
      this.c.audit.record('join.refused', { peer: remote.toString(), reason: status, hostname: safeHostname(req.hostname), ...extra })
      return { status, message }
    }
    const invalid = validateJoinRequest(req)
    if (invalid != null) return refuse(JoinStatus.BAD_REQUEST, invalid)
    const release = await this.c.changeLock.acquire()
    let handedOff = false
    try {
      const m = this.c.membership()
      if (m == null || m.record.roster.leader !== this.c.self) return refuse(JoinStatus.NOT_LEADER, 'this host no longer leads a group; ask the current leader for a new token')
      const r = m.record.roster
      if (hex(req.groupId) !== r.groupId) return refuse(JoinStatus.WRONG_GROUP, 'this token is for another group than the one this leader leads; ask for a new token')
      const tokenId = hex(req.tokenId)
      const check = await this.c.tokens.check(tokenId, r.groupId, req.secret)
      if (!check.ok) {
        if (check.revokedNow === true) this.c.audit.record('token.revoked', { tokenId, reason: 'too many failed proofs' })
        return refuse(JoinStatus[check.status], check.message, { tokenId })
      }
      const peer = remote.toString()
      if (isMember(r, peer)) return refuse(JoinStatus.ALREADY_MEMBER, 'this host is already a member of the group', { tokenId })
      if (r.members.length >= MAX_MEMBERS) return refuse(JoinStatus.BAD_REQUEST, `the group has ${MAX_MEMBERS} members, the most a group can have; unlink a host first`, { tokenId })
      const next: Roster = {
        ...r,
        version: r.version + 1,
        updatedAt: Date.now(),
        members: [...r.members, {
          peerId: peer,
          hostname: req.hostname,
          addresses: req.addrs.map(a => multiaddr(a).toString()),
          role: 'follower',
          joinedAt: Date.now(),
          agentVersion: req.agentVersion
        }]
      }
      const signed = await signRoster(next, this.c.privateKey)
      // Signed first, and read back as every member (and this host at its next start)
      // will: a roster they would refuse (too large, say) is never offered, and the token
      // is reserved only for an offer that can be made.
      try {
        await verifyRoster(signed.bytes)
      } catch (err) {
        return refuse(JoinStatus.BAD_REQUEST, `the group's roster cannot take this host: ${errorMessage(err)}`, { tokenId })
      }
      await this.c.tokens.markUsed(tokenId, peer)
      handedOff = true
      let finished = false
      const finish = (): void => { if (!finished) { finished = true; release() } }
      return {
        status: JoinStatus.OK,
        message: 'offer',
        roster: signed.bytes,
        groupKey: GroupKey.encode({ id: m.key.id, key: u8(m.key.key) }),
        commit: async () => {
          try {
            // An operator may have revoked the token while the offer was out: then no join.
            if (!await this.c.tokens.stillReserved(tokenId, peer)) {
              this.c.audit.record('join.refused', { peer, reason: 'token revoked while the join was offered', tokenId })
              await this.rekeyAfterOffer(peer, 'its token was revoked while the join was offered')
              return { status: JoinStatus.REVOKED, message: 'the token was revoked while this join was in progress; ask the leader for a new token' }
            }
            await this.commit(r, signed, m.key, new Set([this.c.self, peer]))
            await this.c.tokens.confirm(tokenId)
            this.c.audit.record('join.accepted', { peer, hostname: req.hostname, tokenId, groupId: r.groupId, rosterVersion: next.version })
            return { status: JoinStatus.OK, message: 'committed' }
          } catch (err) {
            this.c.log.warn({ peer, err: errorMessage(err) }, 'join not committed')
            return { status: err instanceof NoQuorumError ? JoinStatus.NO_QUORUM : JoinStatus.INTERNAL, message: errorMessage(err) }
          } finally {
            finish()
          }
        },
        abort: async (reason: string) => {
          try {
            // The offer carried the group key: the token is not put back for another try
            // (each would show the new key to a host that never joins), but revoked.
            await this.c.tokens.revoke(tokenId, 'a join with it was offered and did not complete')
            this.c.audit.record('join.refused', { peer, reason, tokenId })
            this.c.audit.record('token.revoked', { tokenId, reason: 'a join with it was offered and did not complete' })
            await this.rekeyAfterOffer(peer, reason)
          } finally {
            finish()
          }
        }
      }
    } catch (err) {
      this.c.log.error({ err: errorMessage(err) }, 'join request failed')
      return { status: JoinStatus.INTERNAL, message: 'the leader could not process the request; see its log' }
    } finally {
      if (!handedOff) release()
    }
  }

  /**
   * The offer carried the group key (the joiner stores it with the roster before it
   * acknowledges); a host that saw it and was not admitted must not read what follows. So
   * the members get a new key, in a roster change like an unlink's, but with the same
   * members. Best effort: without a quorum the key stays, and the log says so. The caller
   * holds `changeLock`.
   */
  private async rekeyAfterOffer (peer: string, reason: string): Promise<void> {
    try {
      const m = this.c.membership()
      if (m == null || m.record.roster.leader !== this.c.self || isMember(m.record.roster, peer)) return
      const next = await this.commitNewKey(m, m.record.roster.members)
      this.c.audit.record('group.rekeyed', { groupId: next.groupId, keyId: next.keyId, peer, reason: `it saw the key in a join offer and was not admitted: ${reason}` })
    } catch (err) {
      this.c.log.warn({ peer, err: errorMessage(err) }, 'a refused joiner saw the group key, and a new key could not be committed; it stays until the next unlink')
    }
  }

  // ---- handover and leaving ----------------------------------------------------

  /** Hand leadership to `target` (new term; a majority of members must store it). */
  async handOver (target: RosterMember): Promise<HandoverResult> {
    return await this.c.changeLock.run(async () => {
      const self = this.c.self
      const cur = this.c.requireMembership().record.roster
      const handover = await signHandover({ groupId: cur.groupId, term: cur.term + 1, newLeader: target.peerId, previousLeader: self, issuedAt: Date.now() }, this.c.privateKey)
      let res: RosterResponse
      try {
        res = await rosterCall(this.c.node, peerIdFromString(target.peerId), {
          type: RosterRequestType.HANDOVER,
          groupId: u8(Buffer.from(cur.groupId, 'hex')),
          handover: u8(handover.bytes),
          // The target may lag a push behind (commits wait for a majority, not all); it catches up
          // first, with the key too: it may have missed a rotation, and takes keys only from the leader.
          roster: u8(this.c.requireMembership().record.bytes),
          groupKey: GroupKey.encode({ id: this.c.requireMembership().key.id, key: u8(this.c.requireMembership().key.key) })
        }, this.c.config.group.rpcTimeout * 3)
      } catch (err) {
        throw new GroupStateError(`cannot reach ${target.hostname} to hand over leadership (${errorMessage(err)}); check it is running, or choose another follower`, 'TARGET_UNREACHABLE', 503)
      }
      // Tokens are the leader's: the new one cannot list or revoke these, and they would
      // work again if leadership came back here. None outlives the handover, whatever the
      // answer: a target that stored the new term without a majority may still have
      // pushed it here (this host follows it then), and that handover stands.
      const handedOver = async (): Promise<void> => {
        const revoked = await this.c.tokens.revokeAll('leadership was handed over')
        if (revoked > 0) this.c.audit.record('token.revoked', { count: revoked, reason: 'leadership was handed over' })
        this.c.audit.record('leader.changed', { groupId: cur.groupId, term: cur.term + 1, from: self, to: target.peerId, reason: 'relinquished' })
      }
      if (res.status !== RosterStatus.ROSTER_OK) {
        if (this.c.membership()?.record.roster.leader !== self) await handedOver()
        if (res.status === RosterStatus.ROSTER_NO_QUORUM) throw new GroupStateError(res.message, 'NO_QUORUM', 503)
        throw new GroupStateError(`${target.hostname} refused leadership: ${res.message}`, 'HANDOVER_REFUSED', 409)
      }
      if (res.roster.length > 0) await this.c.adopt(await verifyRoster(res.roster), undefined)
      await handedOver()
      const now = this.c.membership()?.record.roster
      return { leader: now?.leader ?? target.peerId, term: now?.term ?? cur.term + 1, dissolved: false }
    })
  }

  /** Answer a follower's LEAVE: remove it under a new key (the leader itself cannot leave). */
  async onLeave (peer: string): Promise<RosterResponse> {
    const r = this.c.requireMembership().record.roster
    if (r.leader !== this.c.self) return response(RosterStatus.ROSTER_NOT_LEADER, `this host is not the leader; the leader is ${r.leader}`)
    if (!isMember(r, peer)) return response(RosterStatus.NOT_MEMBER, 'you are not a member')
    if (peer === this.c.self) return response(RosterStatus.INVALID, 'the leader cannot leave')
    await this.removeMember(peer, false)
    return response(RosterStatus.ROSTER_OK, '', this.c.membership()?.record.bytes)
  }

  /** Answer a HANDOVER request: take over leadership from `from` if the handover matches our roster. */
  async onHandover (from: string, req: RosterRequest): Promise<RosterResponse> {
    const h = await verifyHandover(req.handover)
    if (req.roster.length > 0) {
      const record = await verifyRoster(req.roster)
      // The key counts only from the leader of the roster it comes with (see GroupSync.onPush).
      const key = req.groupKey.length > 0 && from === record.roster.leader ? decodeKey(req.groupKey) : undefined
      const outcome = await this.c.adopt(record, key)
      if (outcome !== 'adopted' && outcome !== 'same' && outcome !== 'older') {
        return response(RosterStatus.INVALID, `cannot take over: this host could not catch up with the leader's roster (${outcome})`)
      }
    }
    return await this.c.changeLock.run(async () => {
      const self = this.c.self
      const m = this.c.requireMembership()
      const r = m.record.roster
      if (h.previousLeader !== r.leader || h.previousLeader !== from || h.groupId !== r.groupId || h.term !== r.term + 1 || h.newLeader !== self) {
        return response(RosterStatus.INVALID, 'handover does not match this host\'s roster (leader, group or term differ)')
      }
      const next: Roster = {
        ...r,
        term: r.term + 1,
        version: r.version + 1,
        leader: self,
        updatedAt: Date.now(),
        handover: h.bytes,
        handoverChain: nextHandoverChain(r),
        members: r.members.map(x => ({ ...x, role: x.peerId === self ? 'leader' as const : 'follower' as const }))
      }
      const signed = await signRoster(next, this.c.privateKey)
      await this.commit(r, signed, m.key, new Set([self]))
      this.c.audit.record('leader.changed', { groupId: r.groupId, term: next.term, from: h.previousLeader, to: self, reason: 'handover' })
      return response(RosterStatus.ROSTER_OK, '', signed.bytes)
    })
  }

  // ---- roster changes ---------------------------------------------------------

  /** Remove `peer` from the roster under a new group key; `force` commits without a quorum (unsafe). */
  async removeMember (peer: string, force: boolean): Promise<void> {
    await this.c.changeLock.run(async () => {
      const m = this.c.requireMembership()
      const r = m.record.roster
      const target = memberOf(r, peer)
      if (target == null) return
      // A new key, so the removed host cannot read later group traffic.
      const next = await this.commitNewKey(m, r.members.filter(x => x.peerId !== peer), force)
      this.c.audit.record('unlink', { groupId: r.groupId, peer, hostname: target.hostname, forced: force, rosterVersion: next.version })
    })
  }

  /** Commit the next roster version with `members` under a new group key (key id + 1). The caller holds `changeLock`. */
  private async commitNewKey (m: Membership, members: RosterMember[], force = false): Promise<Roster> {
    const r = m.record.roster
    const next: Roster = { ...r, version: r.version + 1, updatedAt: Date.now(), keyId: m.key.id + 1, members }
    await this.commit(r, await signRoster(next, this.c.privateKey), { id: m.key.id + 1, key: randomBytes(GROUP_KEY_BYTES) }, new Set([this.c.self]), force)
    return next
  }

  /**
   * Store `next` here, then push it until a majority of voters stored it. The
   * reachability check runs first so a change that cannot reach a quorum fails with
   * nothing changed.
   */
  private async commit (current: Roster, next: SignedRosterRecord, key: GroupKeyMaterial, acked: Set<string>, force = false): Promise<void> {
    const t0 = performance.now()
    if (!force) await this.replicator.checkReachable(current, next.roster, acked)
    const t1 = performance.now()
    await this.c.store({ record: next, key })
    const t2 = performance.now()
    const out = await this.replicator.push({ current, next, key, acked: new Set([...acked, this.c.self]), force })
    this.c.log.debug({ version: next.roster.version, acked: out.acked, voters: out.voters, checkMs: Math.round(t1 - t0), storeMs: Math.round(t2 - t1), pushMs: Math.round(performance.now() - t2) }, 'roster committed')
  }
}

const HOSTNAME_RE = /^[\w.-]{1,253}$/

function safeHostname (h: string): string {
  return HOSTNAME_RE.test(h) ? h : '(invalid)'
}

/** Check a JoinRequest's fields before any lookup; returns a reason or undefined. */
export function validateJoinRequest (req: JoinRequest): string | undefined {
  if (req.groupId.length !== 16) return 'group id must be 16 bytes'
  if (req.tokenId.length !== 8) return 'token id must be 8 bytes'
  if (req.secret.length !== 16) return 'secret must be 16 bytes'
  if (!HOSTNAME_RE.test(req.hostname)) return 'hostname must be 1-253 letters, digits, dot, dash or underscore'
  if (req.agentVersion.length > 64) return 'agent version is too long'
  if (req.addrs.length > 16) return 'too many addresses'
  for (const a of req.addrs) {
    let text: string
    try {
      text = multiaddr(a).toString()
    } catch {
      return 'an address is not a valid multiaddr'
    }
    // The roster carries addresses as text: one whose text does not read back as the
    // same bytes could not be signed into it.
    let back: Uint8Array | undefined
    try { back = multiaddr(text).bytes } catch { back = undefined }
    if (back == null || !sameBytes(back, a)) return `address ${text.slice(0, 80)} does not read back the same from its text form`
  }
  return undefined
}
