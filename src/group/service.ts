/**
 * Group membership: tokens, joining, the roster, unlink and leadership handover.
 * This is the logic layer; `join-protocol.ts` and `roster-protocol.ts` move its
 * messages. See protocols/join.md and protocols/roster.md.
 */
import { randomBytes } from 'node:crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { PeerId, PrivateKey } from '@libp2p/interface'
import type { Logger } from '../agent/logger.js'
import type { AgentConfig } from '../agent/config.js'
import type { AuditLog } from '../audit/index.js'
import type { EdgelinkNode } from '../net/node.js'
import type { Store } from '../store/index.js'
import { errorMessage, NotFoundError } from '../errors.js'
import { Mutex } from '../util/mutex.js'
import { u8 } from '../util/bytes.js'
import { formatDuration } from '../util/duration.js'
import { AGENT_VERSION } from '../version.js'
import { GroupKey, type RosterRequest, type RosterResponse } from '../wire/roster.js'
import type { JoinRequest } from '../wire/join.js'
import { GroupStateError, NoQuorumError, RosterError, TokenError } from './errors.js'
import { GroupStore, type GroupKeyMaterial, type Membership } from './state.js'
import { TokenBook, view, type TokenView } from './tokens.js'
import { encodeToken, hex, newGroupId } from './token.js'
import { decideAdopt, isMember, MAX_HANDOVER_CHAIN, nextHandoverChain, memberOf, signHandover, signRoster, verifyHandover, verifyRoster, type Roster, type RosterMember, type SignedRosterRecord } from './roster.js'
import { JOIN_PROTOCOL, joinHandler, JoinStatus, MAX_INBOUND_JOIN_STREAMS, type JoinLeaderLogic, type JoinOffer } from './join-protocol.js'
import { MAX_INBOUND_ROSTER_STREAMS, response, ROSTER_PROTOCOL, rosterCall, rosterHandler, RosterRequestType, RosterStatus, type RosterLogic } from './roster-protocol.js'
import { RosterReplicator } from './replicator.js'
import { linkWithToken } from './link.js'

export const GROUP_KEY_BYTES = 32

export interface GroupComponents {
  node: EdgelinkNode
  store: Store
  privateKey: PrivateKey
  config: AgentConfig
  log: Logger
  audit: AuditLog
}

/** A row of the linked hosts table. */
export interface HostRow {
  peerId: string
  hostname: string
  role: 'leader' | 'follower'
  addresses: string[]
  connected: boolean
  lastSeen: string | null
  self: boolean
  joinedAt: string
  agentVersion: string
}

export interface GroupStatusFields {
  groupId: string | null
  role: 'leader' | 'follower' | null
  leader: string | null
  term: number | null
  rosterVersion: number | null
}

export interface CreatedToken {
  token: string
  id: string
  expiresAt: string
  groupId: string
}

type Listener = [string, (evt: CustomEvent) => void]

export class GroupService implements JoinLeaderLogic, RosterLogic {
  readonly c: GroupComponents
  readonly tokens: TokenBook
  readonly self: string
  private readonly groupStore: GroupStore
  private readonly replicator: RosterReplicator
  /** Serialises roster changes this host makes as leader (joins, unlinks, handover). */
  private readonly changeLock = new Mutex()
  /** Serialises writes of the stored membership (adopting pushed or pulled rosters). */
  private readonly stateLock = new Mutex()
  private member?: Membership
  private readonly lastSeen = new Map<string, number>()
  private readonly learnedAddrs = new Map<string, string[]>()
  private readonly pulling = new Set<string>()
  private listeners: Listener[] = []
  private timers: NodeJS.Timeout[] = []
  private running = false
  private readonly changeListeners = new Set<() => void>()

  constructor (c: GroupComponents) {
    this.c = c
    this.self = c.node.peerId.toString()
    this.tokens = new TokenBook(c.store.sublevel('tokens'))
    this.groupStore = new GroupStore(c.store.sublevel('group'))
    this.replicator = new RosterReplicator({ node: c.node, log: c.log, dialTimeoutMs: c.config.group.dialTimeout, rpcTimeoutMs: c.config.group.rpcTimeout })
  }

  async start (): Promise<void> {
    if (this.running) return
    this.running = true
    try {
      this.member = await this.groupStore.load()
    } catch (err) {
      throw new RosterError(`the stored roster cannot be verified (${errorMessage(err)}); restore the data dir from a backup`, 'ROSTER_STORED_INVALID')
    }
    const g = this.c.config.group
    await this.c.node.handle(JOIN_PROTOCOL, joinHandler(this, this.c.log, g.joinTimeout), { maxInboundStreams: MAX_INBOUND_JOIN_STREAMS })
    await this.c.node.handle(ROSTER_PROTOCOL, rosterHandler(this, this.c.log, g.rpcTimeout * 4), { maxInboundStreams: MAX_INBOUND_ROSTER_STREAMS })
    this.on('connection:open', (evt) => {
      const peer = (evt.detail as { remotePeer: PeerId }).remotePeer.toString()
      this.lastSeen.set(peer, Date.now())
      if (this.isMemberPeer(peer)) this.pullSoon(peer)
    })
    this.on('connection:close', (evt) => {
      this.lastSeen.set((evt.detail as { remotePeer: PeerId }).remotePeer.toString(), Date.now())
    })
    this.on('peer:discovery', (evt) => {
      const peer = (evt.detail as { id: PeerId }).id
      if (this.isMemberPeer(peer.toString()) && this.c.node.getConnections(peer).length === 0) this.dialMember(peer.toString())
    })
    this.on('peer:identify', (evt) => {
      const d = evt.detail as { peerId: PeerId, listenAddrs: Multiaddr[] }
      const peer = d.peerId.toString()
      if (this.isMemberPeer(peer)) this.learnedAddrs.set(peer, d.listenAddrs.slice(0, 16).map(a => a.decapsulateCode(421).toString()))
    })
    this.timers.push(setInterval(() => { this.reconnect() }, g.reconnectInterval))
    this.timers.push(setInterval(() => { this.antiEntropy() }, g.antiEntropyInterval))
    if (this.member != null) {
      await this.rememberAddresses(this.member.record.roster)
      this.reconnect()
    }
  }

  async stop (): Promise<void> {
    if (!this.running) return
    this.running = false
    for (const t of this.timers) clearInterval(t)
    this.timers = []
    for (const [name, fn] of this.listeners) this.c.node.removeEventListener(name as never, fn as never)
    this.listeners = []
    await this.c.node.unhandle(JOIN_PROTOCOL)
    await this.c.node.unhandle(ROSTER_PROTOCOL)
  }

  /** Call `fn` whenever the stored membership changes (roster, key, or becoming idle). */
  onChange (fn: () => void): () => void {
    this.changeListeners.add(fn)
    return () => { this.changeListeners.delete(fn) }
  }

  private notify (): void {
    for (const fn of this.changeListeners) {
      try { fn() } catch (err) { this.c.log.error({ err: errorMessage(err) }, 'membership listener failed') }
    }
  }

  /**
   * The leader of `term` as far as this host can tell: the current leader for the
   * current term, else from the roster's handover chain. Undefined if unknown.
   */
  async leaderOfTerm (term: number): Promise<string | undefined> {
    const r = this.roster
    if (r == null) return undefined
    if (term === r.term) return r.leader
    for (const bytes of [...(r.handoverChain ?? []), ...(r.handover != null ? [r.handover] : [])]) {
      const h = await verifyHandover(bytes)
      if (h.term === term + 1) return h.previousLeader
      if (h.term === term) return h.newLeader
    }
    return undefined
  }

  // ---- queries ----------------------------------------------------------

  get membership (): Membership | undefined { return this.member }
  get roster (): Roster | undefined { return this.member?.record.roster }
  get isLeader (): boolean { return this.roster?.leader === this.self }

  statusFields (): GroupStatusFields {
    const r = this.roster
    if (r == null) return { groupId: null, role: null, leader: null, term: null, rosterVersion: null }
    return { groupId: r.groupId, role: r.leader === this.self ? 'leader' : 'follower', leader: r.leader, term: r.term, rosterVersion: r.version }
  }

  hosts (): HostRow[] {
    const r = this.roster
    if (r == null) return []
    return r.members.map(m => {
      const self = m.peerId === this.self
      const conns = self ? [] : this.c.node.getConnections(peerIdFromString(m.peerId))
      const seen = self ? Date.now() : this.lastSeen.get(m.peerId)
      return {
        peerId: m.peerId,
        hostname: m.hostname,
        role: m.role,
        addresses: self ? this.ownAddresses() : (this.learnedAddrs.get(m.peerId) ?? (conns.length > 0 ? conns.map(c => c.remoteAddr.decapsulateCode(421).toString()) : m.addresses)),
        connected: self || conns.length > 0,
        lastSeen: seen != null ? new Date(seen).toISOString() : null,
        self,
        joinedAt: new Date(m.joinedAt).toISOString(),
        agentVersion: m.agentVersion
      }
    })
  }

  async listTokens (): Promise<TokenView[]> {
    return await this.tokens.list()
  }

  /** Find a member by PeerId or hostname. */
  resolveHost (host: string): RosterMember {
    const r = this.requireMembership().record.roster
    const byId = r.members.find(m => m.peerId === host)
    if (byId != null) return byId
    const byName = r.members.filter(m => m.hostname === host)
    if (byName.length === 1) return byName[0]
    if (byName.length > 1) throw new GroupStateError(`${byName.length} linked hosts are named "${host}"; give the PeerId instead (see \`edgelink hosts\`)`, 'HOST_AMBIGUOUS', 400)
    throw new NotFoundError(`no linked host is named or has the PeerId "${host.slice(0, 80)}"; see \`edgelink hosts\``, 'UNKNOWN_HOST')
  }

  // ---- tokens -----------------------------------------------------------

  /** Issue a join token. On an idle host this first creates a group of one, led by this host. */
  async createToken (ttlMs = this.c.config.group.tokenTtl): Promise<CreatedToken> {
    const max = this.c.config.group.maxTokenTtl
    if (!Number.isFinite(ttlMs) || ttlMs < 1000 || ttlMs > max) {
      throw new TokenError(`token lifetime must be between 1s and ${formatDuration(max)} (group.maxTokenTtl)`, 'TOKEN_TTL_INVALID')
    }
    return await this.changeLock.run(async () => {
      if (this.member == null) await this.createGroup()
      const m = this.requireMembership()
      if (m.record.roster.leader !== this.self) {
        throw new GroupStateError(`only the leader can issue tokens; this host is a follower of ${m.record.roster.leader}: run \`edgelink token create\` there`, 'NOT_LEADER', 403)
      }
      const groupId = m.record.roster.groupId
      const { record, secret, tokenId } = await this.tokens.create(groupId, ttlMs)
      const token = encodeToken({
        groupId: Buffer.from(groupId, 'hex'),
        leader: this.c.node.peerId,
        tokenId,
        secret,
        expiresAt: record.expiresAt,
        addrs: this.c.node.getMultiaddrs().map(a => a.decapsulateCode(421))
      })
      secret.fill(0)
      this.c.audit.record('token.issued', { tokenId: record.id, groupId, expiresAt: new Date(record.expiresAt).toISOString() })
      return { token, id: record.id, expiresAt: view(record).expiresAt, groupId }
    })
  }

  async revokeToken (id: string): Promise<TokenView> {
    if (!/^[0-9a-f]{16}$/.test(id)) throw new NotFoundError(`"${id.slice(0, 40)}" is not a token id (16 hex characters, see \`edgelink token list\`)`, 'UNKNOWN_TOKEN')
    const r = await this.tokens.revoke(id, 'revoked by operator')
    if (r == null) throw new NotFoundError(`no token with id ${id}; see \`edgelink token list\``, 'UNKNOWN_TOKEN')
    this.c.audit.record('token.revoked', { tokenId: id, reason: 'operator' })
    return view(r)
  }

  // ---- operator commands --------------------------------------------------

  /** Join the group a token names (see link.ts). */
  async link (tokenText: string): Promise<GroupStatusFields & { hosts: number }> {
    return await linkWithToken(this, tokenText)
  }

  /**
   * Unlink `host` (leader only), or this host when `host` is omitted (followers).
   * With `force`, a leader removes members without a quorum and a follower leaves
   * without reaching its leader. Both are unsafe and documented as such.
   */
  async unlink (host?: string, force = false): Promise<{ unlinked: string, hostname: string }> {
    const m = this.requireMembership()
    const target = host == null ? memberOf(m.record.roster, this.self) : this.resolveHost(host)
    if (target == null) throw new GroupStateError('this host is not in its own roster; restore the data dir or link again', 'NOT_LINKED')
    if (target.role === 'leader') {
      throw new GroupStateError('the leader cannot be unlinked; hand leadership to a follower first with `edgelink leader relinquish --to HOST` (a leader alone dissolves the group with `edgelink leader relinquish`)', 'LEADER_CANNOT_UNLINK', 409)
    }
    if (target.peerId === this.self) return await this.leave(force)
    if (!this.isLeader) {
      throw new GroupStateError(`only the leader (${m.record.roster.leader}) can unlink other hosts; run this on the leader, or run \`edgelink unlink\` on ${target.hostname} itself`, 'NOT_LEADER', 403)
    }
    await this.removeMember(target.peerId, force)
    return { unlinked: target.peerId, hostname: target.hostname }
  }

  /**
   * Hand leadership to `to` (new term; a majority of members must store it), or,
   * with no followers, dissolve the group of one so this host is idle again.
   */
  async relinquish (to?: string): Promise<{ leader: string | null, term: number | null, dissolved: boolean }> {
    const m = this.requireMembership()
    const r = m.record.roster
    if (r.leader !== this.self) throw new GroupStateError(`this host is not the leader; the leader is ${r.leader}`, 'NOT_LEADER', 403)
    const followers = r.members.filter(x => x.peerId !== this.self)
    if (followers.length === 0) {
      if (to != null) throw new NotFoundError(`this group has no followers to hand leadership to; \`edgelink leader relinquish\` without --to dissolves it`, 'UNKNOWN_HOST')
      await this.changeLock.run(async () => { await this.dissolve('relinquished by operator') })
      return { leader: null, term: null, dissolved: true }
    }
    if (to == null) {
      throw new GroupStateError(`choose the new leader with --to HOST (followers: ${followers.map(f => f.hostname).join(', ')})`, 'TARGET_REQUIRED', 400)
    }
    const target = this.resolveHost(to)
    if (target.peerId === this.self) throw new GroupStateError('this host is already the leader; choose a follower', 'TARGET_INVALID', 400)
    return await this.changeLock.run(async () => {
      const cur = this.requireMembership().record.roster
      const handover = await signHandover({ groupId: cur.groupId, term: cur.term + 1, newLeader: target.peerId, previousLeader: this.self, issuedAt: Date.now() }, this.c.privateKey)
      let res: RosterResponse
      try {
        res = await rosterCall(this.c.node, peerIdFromString(target.peerId), {
          type: RosterRequestType.HANDOVER,
          groupId: u8(Buffer.from(cur.groupId, 'hex')),
          handover: u8(handover.bytes),
          // The target may lag a push behind (commits wait for a majority, not all); it catches up first.
          roster: u8(this.requireMembership().record.bytes)
        }, this.c.config.group.rpcTimeout * 3)
      } catch (err) {
        throw new GroupStateError(`cannot reach ${target.hostname} to hand over leadership (${errorMessage(err)}); check it is running, or choose another follower`, 'TARGET_UNREACHABLE', 503)
      }
      if (res.status === RosterStatus.ROSTER_NO_QUORUM) throw new GroupStateError(res.message, 'NO_QUORUM', 503)
      if (res.status !== RosterStatus.ROSTER_OK) throw new GroupStateError(`${target.hostname} refused leadership: ${res.message}`, 'HANDOVER_REFUSED', 409)
      if (res.roster.length > 0) await this.adopt(await verifyRoster(res.roster), undefined)
      this.c.audit.record('leader.changed', { groupId: cur.groupId, term: cur.term + 1, from: this.self, to: target.peerId, reason: 'relinquished' })
      const now = this.roster
      return { leader: now?.leader ?? target.peerId, term: now?.term ?? cur.term + 1, dissolved: false }
    })
  }

  // ---- join protocol, leader side --------------------------------------------

  async prepareJoin (remote: PeerId, req: JoinRequest): Promise<JoinOffer> {
    const refuse = (status: JoinStatus, message: string, extra: Record<string, unknown> = {}): JoinOffer => {
      this.c.audit.record('join.refused', { peer: remote.toString(), reason: status, hostname: safeHostname(req.hostname), ...extra })
      return { status, message }
    }
    const invalid = validateJoinRequest(req)
    if (invalid != null) return refuse(JoinStatus.BAD_REQUEST, invalid)
    const release = await this.changeLock.acquire()
    let handedOff = false
    try {
      const m = this.member
      if (m == null || m.record.roster.leader !== this.self) return refuse(JoinStatus.NOT_LEADER, 'this host no longer leads a group; ask the current leader for a new token')
      const r = m.record.roster
      if (hex(req.groupId) !== r.groupId) return refuse(JoinStatus.WRONG_GROUP, 'this token is for another group than the one this leader leads; ask for a new token')
      const tokenId = hex(req.tokenId)
      const check = await this.tokens.check(tokenId, r.groupId, req.secret)
      if (!check.ok) {
        if (check.revokedNow === true) this.c.audit.record('token.revoked', { tokenId, reason: 'too many failed proofs' })
        return refuse(JoinStatus[check.status], check.message, { tokenId })
      }
      const peer = remote.toString()
      if (isMember(r, peer)) return refuse(JoinStatus.ALREADY_MEMBER, 'this host is already a member of the group', { tokenId })
      await this.tokens.markUsed(tokenId, peer)
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
            await this.commit(r, signed, m.key, new Set([this.self, peer]))
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
            await this.tokens.restore(tokenId)
            this.c.audit.record('join.refused', { peer, reason, tokenId })
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

  // ---- roster protocol ------------------------------------------------------

  async handleRosterRequest (remote: PeerId, req: RosterRequest): Promise<RosterResponse> {
    const peer = remote.toString()
    const m = this.member
    if (m == null || hex(req.groupId) !== m.record.roster.groupId) return response(RosterStatus.NOT_MEMBER, 'this host is not in that group')
    try {
      switch (req.type) {
        case RosterRequestType.PUSH: return await this.onPush(req)
        case RosterRequestType.PULL: {
          const r = this.member?.record
          if (r == null) return response(RosterStatus.NOT_MEMBER, 'this host is not in that group')
          const known = [Number(req.knownTerm), Number(req.knownVersion)]
          if (r.roster.term < known[0] || (r.roster.term === known[0] && r.roster.version <= known[1])) return response(RosterStatus.NOT_NEWER)
          const key = isMember(r.roster, peer) && this.member != null ? GroupKey.encode({ id: this.member.key.id, key: u8(this.member.key.key) }) : undefined
          return response(RosterStatus.ROSTER_OK, '', r.bytes, key)
        }
        case RosterRequestType.LEAVE: {
          if (!this.isLeader) return response(RosterStatus.ROSTER_NOT_LEADER, `this host is not the leader; the leader is ${m.record.roster.leader}`)
          if (!isMember(m.record.roster, peer)) return response(RosterStatus.NOT_MEMBER, 'you are not a member')
          if (peer === this.self) return response(RosterStatus.INVALID, 'the leader cannot leave')
          await this.removeMember(peer, false)
          return response(RosterStatus.ROSTER_OK, '', this.member?.record.bytes)
        }
        case RosterRequestType.HANDOVER: return await this.onHandover(peer, req)
        default: return response(RosterStatus.INVALID, 'unknown request type')
      }
    } catch (err) {
      if (err instanceof NoQuorumError) return response(RosterStatus.ROSTER_NO_QUORUM, err.message)
      if (err instanceof RosterError) return response(RosterStatus.INVALID, err.message)
      this.c.log.error({ peer, type: req.type, err: errorMessage(err) }, 'roster request failed')
      return response(RosterStatus.ROSTER_INTERNAL, 'internal error; see the log of the host that answered')
    }
  }

  private async onPush (req: RosterRequest): Promise<RosterResponse> {
    const record = await verifyRoster(req.roster)
    const key = req.groupKey.length > 0 ? decodeKey(req.groupKey) : undefined
    const outcome = await this.adopt(record, key)
    if (outcome === 'adopted' || outcome === 'same') return response(RosterStatus.ROSTER_OK)
    return response(outcome === 'older' ? RosterStatus.STALE : RosterStatus.INVALID, `roster not adopted: ${outcome}`)
  }

  private async onHandover (from: string, req: RosterRequest): Promise<RosterResponse> {
    const h = await verifyHandover(req.handover)
    if (req.roster.length > 0) await this.adopt(await verifyRoster(req.roster), undefined)
    return await this.changeLock.run(async () => {
      const m = this.requireMembership()
      const r = m.record.roster
      if (h.previousLeader !== r.leader || h.previousLeader !== from || h.groupId !== r.groupId || h.term !== r.term + 1 || h.newLeader !== this.self) {
        return response(RosterStatus.INVALID, 'handover does not match this host\'s roster (leader, group or term differ)')
      }
      const next: Roster = {
        ...r,
        term: r.term + 1,
        version: r.version + 1,
        leader: this.self,
        updatedAt: Date.now(),
        handover: h.bytes,
        handoverChain: nextHandoverChain(r),
        members: r.members.map(x => ({ ...x, role: x.peerId === this.self ? 'leader' as const : 'follower' as const }))
      }
      const signed = await signRoster(next, this.c.privateKey)
      await this.commit(r, signed, m.key, new Set([this.self]))
      this.c.audit.record('leader.changed', { groupId: r.groupId, term: next.term, from: h.previousLeader, to: this.self, reason: 'handover' })
      return response(RosterStatus.ROSTER_OK, '', signed.bytes)
    })
  }

  // ---- roster changes ---------------------------------------------------------

  /**
   * Store `next` here, then push it until a majority of voters stored it. The
   * reachability check runs first so a change that cannot reach a quorum fails with
   * nothing changed.
   */
  private async commit (current: Roster, next: SignedRosterRecord, key: GroupKeyMaterial, acked: Set<string>, force = false): Promise<void> {
    if (!force) await this.replicator.checkReachable(current, next.roster, acked)
    await this.store({ record: next, key })
    await this.replicator.push({ current, next, key, acked: new Set([...acked, this.self]), force })
  }

  private async removeMember (peer: string, force: boolean): Promise<void> {
    await this.changeLock.run(async () => {
      const m = this.requireMembership()
      const r = m.record.roster
      const target = memberOf(r, peer)
      if (target == null) return
      const next: Roster = { ...r, version: r.version + 1, updatedAt: Date.now(), keyId: m.key.id + 1, members: r.members.filter(x => x.peerId !== peer) }
      const signed = await signRoster(next, this.c.privateKey)
      // A new key, so the removed host cannot read later group traffic.
      await this.commit(r, signed, { id: m.key.id + 1, key: randomBytes(GROUP_KEY_BYTES) }, new Set([this.self]), force)
      this.c.audit.record('unlink', { groupId: r.groupId, peer, hostname: target.hostname, forced: force, rosterVersion: next.version })
    })
  }

  private async leave (force: boolean): Promise<{ unlinked: string, hostname: string }> {
    const m = this.requireMembership()
    const r = m.record.roster
    const me = memberOf(r, this.self)
    let res: RosterResponse | undefined
    try {
      res = await rosterCall(this.c.node, peerIdFromString(r.leader), { type: RosterRequestType.LEAVE, groupId: u8(Buffer.from(r.groupId, 'hex')) }, this.c.config.group.rpcTimeout * 3)
    } catch (err) {
      if (!force) {
        throw new GroupStateError(`cannot reach the leader ${r.leader} (${errorMessage(err)}); start it and try again, or leave anyway with \`edgelink unlink --force\` (the group keeps listing this host until the leader unlinks it)`, 'LEADER_UNREACHABLE', 503)
      }
    }
    if (res != null && res.status !== RosterStatus.ROSTER_OK && !force) {
      throw new GroupStateError(`the leader refused: ${res.message}`, res.status === RosterStatus.ROSTER_NO_QUORUM ? 'NO_QUORUM' : 'LEAVE_REFUSED', 503)
    }
    if (res?.roster != null && res.roster.length > 0) await this.adopt(await verifyRoster(res.roster), undefined).catch(() => 'invalid')
    if (this.member != null) await this.forget()
    this.c.audit.record('unlinked', { groupId: r.groupId, forced: force && res?.status !== RosterStatus.ROSTER_OK, by: 'self' })
    return { unlinked: this.self, hostname: me?.hostname ?? this.c.config.hostname }
  }

  private async createGroup (): Promise<void> {
    const roster: Roster = {
      groupId: hex(newGroupId()),
      term: 1,
      version: 1,
      leader: this.self,
      members: [{ peerId: this.self, hostname: this.c.config.hostname, addresses: this.ownAddresses(), role: 'leader', joinedAt: Date.now(), agentVersion: AGENT_VERSION }],
      updatedAt: Date.now(),
      keyId: 1
    }
    await this.store({ record: await signRoster(roster, this.c.privateKey), key: { id: 1, key: randomBytes(GROUP_KEY_BYTES) } })
    this.c.audit.record('group.created', { groupId: roster.groupId, leader: this.self })
  }

  /** Leave the group of one this host leads (when relinquishing or linking elsewhere). */
  async dissolve (reason: string): Promise<void> {
    const r = this.roster
    if (r == null) return
    await this.tokens.revokeAll('group dissolved')
    await this.forget()
    this.c.audit.record('group.dissolved', { groupId: r.groupId, reason })
  }

  /**
   * Adopt a verified roster received from the network if it is newer than ours.
   * A roster that no longer lists this host makes it idle.
   */
  async adopt (record: SignedRosterRecord, key: GroupKeyMaterial | undefined): Promise<'adopted' | 'same' | 'older' | 'wrong-group' | 'bad-term' | 'term-gap' | 'idle'> {
    const outcome = await this.adoptLocked(record, key)
    if (outcome === 'adopted') this.notify()
    return outcome
  }

  private async adoptLocked (record: SignedRosterRecord, key: GroupKeyMaterial | undefined): Promise<'adopted' | 'same' | 'older' | 'wrong-group' | 'bad-term' | 'term-gap' | 'idle'> {
    return await this.stateLock.run(async () => {
      const m = this.member
      if (m == null) return 'idle'
      const d = await decideAdopt(m.record.roster, record.roster)
      if (!d.adopt) {
        if (d.reason === 'term-gap') {
          this.c.log.warn({ held: m.record.roster.term, offered: record.roster.term }, `this host missed more than ${MAX_HANDOVER_CHAIN - 1} leadership changes and cannot verify the group's current leader; unlink it on the leader with --force and link it again`)
        }
        return d.reason
      }
      const prev = m.record.roster
      if (!isMember(record.roster, this.self)) {
        await this.groupStore.clear()
        this.member = undefined
        this.c.audit.record('unlinked', { groupId: prev.groupId, by: record.roster.leader, rosterVersion: record.roster.version })
        return 'adopted'
      }
      const nextKey = key != null && key.id >= m.key.id ? key : m.key
      await this.groupStore.save({ record, key: nextKey })
      this.member = { record, key: nextKey }
      if (record.roster.leader !== prev.leader) {
        this.c.log.info({ leader: record.roster.leader, term: record.roster.term }, 'new leader')
      }
      this.rememberAddressesLater(record.roster)
      return 'adopted'
    })
  }

  /** Forget the membership (the host becomes idle) without telling anyone. */
  async forget (): Promise<void> {
    await this.stateLock.run(async () => { await this.groupStore.clear(); this.member = undefined })
    this.notify()
  }

  /** Store a membership this host created or joined. */
  async store (m: Membership): Promise<void> {
    await this.stateLock.run(async () => {
      await this.groupStore.save(m)
      this.member = m
    })
    this.rememberAddressesLater(m.record.roster)
    this.notify()
  }

  // ---- anti-entropy and reconnection ---------------------------------------------

  /** Pull the newest roster from a member and adopt it if newer. */
  async pullFrom (peer: string): Promise<void> {
    const m = this.member
    if (m == null || peer === this.self) return
    const r = m.record.roster
    const res = await rosterCall(this.c.node, peerIdFromString(peer), {
      type: RosterRequestType.PULL,
      groupId: u8(Buffer.from(r.groupId, 'hex')),
      knownTerm: BigInt(r.term),
      knownVersion: BigInt(r.version)
    }, this.c.config.group.rpcTimeout)
    if (res.status !== RosterStatus.ROSTER_OK || res.roster.length === 0) return
    const record = await verifyRoster(res.roster)
    const key = res.groupKey.length > 0 ? decodeKey(res.groupKey) : undefined
    const outcome = await this.adopt(record, key)
    if (outcome === 'adopted') this.c.log.info({ from: peer, version: record.roster.version, term: record.roster.term }, 'pulled newer roster')
  }

  private pullSoon (peer: string): void {
    if (this.pulling.has(peer)) return
    this.pulling.add(peer)
    this.pullFrom(peer).catch(err => {
      this.c.log.debug({ peer, err: errorMessage(err) }, 'roster pull failed')
    }).finally(() => { this.pulling.delete(peer) })
  }

  private antiEntropy (): void {
    const r = this.roster
    if (r == null) return
    const connected = r.members.filter(m => m.peerId !== this.self && this.c.node.getConnections(peerIdFromString(m.peerId)).length > 0)
    const leader = connected.find(m => m.peerId === r.leader)
    const pick = leader ?? connected[Math.floor(Math.random() * connected.length)]
    if (pick != null) this.pullSoon(pick.peerId)
  }

  private reconnect (): void {
    const r = this.roster
    if (r == null) return
    for (const m of r.members) {
      if (m.peerId !== this.self && this.c.node.getConnections(peerIdFromString(m.peerId)).length === 0) this.dialMember(m.peerId)
    }
  }

  private dialMember (peer: string): void {
    this.c.node.dial(peerIdFromString(peer), { signal: AbortSignal.timeout(this.c.config.group.dialTimeout) }).catch(err => {
      this.c.log.debug({ peer, err: errorMessage(err) }, 'member not reachable yet')
    })
  }

  /** Peer-store updates are not needed to answer the leader, so they stay off the join's critical path. */
  private rememberAddressesLater (r: Roster): void {
    this.rememberAddresses(r).catch(err => { this.c.log.debug({ err: errorMessage(err) }, 'cannot record member addresses') })
  }

  /** Put members' known addresses in the peer store so dialling by PeerId finds them. */
  private async rememberAddresses (r: Roster): Promise<void> {
    for (const m of r.members) {
      if (m.peerId === this.self) continue
      const addrs = [...m.addresses, ...(this.learnedAddrs.get(m.peerId) ?? [])]
      try {
        await this.c.node.peerStore.merge(peerIdFromString(m.peerId), { multiaddrs: addrs.map(a => multiaddr(a)) })
      } catch (err) {
        this.c.log.debug({ peer: m.peerId, err: errorMessage(err) }, 'cannot record member addresses')
      }
    }
  }

  ownAddresses (): string[] {
    return this.c.node.getMultiaddrs().map(a => a.decapsulateCode(421).toString())
  }

  isMemberPeer (peer: string): boolean {
    const r = this.roster
    return r != null && peer !== this.self && isMember(r, peer)
  }

  requireMembership (): Membership {
    if (this.member == null) throw new GroupStateError('this host is not linked to a group; link it with `edgelink link TOKEN`, or issue a token with `edgelink token create` to start a group', 'NOT_LINKED', 409)
    return this.member
  }

  private on (name: string, fn: (evt: CustomEvent) => void): void {
    this.c.node.addEventListener(name as never, fn as never)
    this.listeners.push([name, fn])
  }
}

export function decodeKey (bytes: Uint8Array): GroupKeyMaterial {
  let k: GroupKey
  try {
    k = GroupKey.decode(bytes)
  } catch {
    throw new RosterError('group key is malformed')
  }
  if (k.key.length !== GROUP_KEY_BYTES || k.id < 1) throw new RosterError('group key has the wrong size or id')
  return { id: k.id, key: k.key }
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
  try {
    for (const a of req.addrs) multiaddr(a)
  } catch {
    return 'an address is not a valid multiaddr'
  }
  return undefined
}
