/**
 * Group membership: tokens, joining, the roster, unlink and leadership handover.
 * This is the logic layer; `join-protocol.ts` and `roster-protocol.ts` move its
 * messages. See protocols/join.md and protocols/roster.md.
 *
 * The service holds the stored membership and answers queries and operator
 * commands; the leader's roster changes live in `leader.ts`, and keeping in touch
 * with other members (pulls, redials, address memory) in `sync.ts`.
 */
import { peerIdFromString } from '@libp2p/peer-id'
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
import type { RosterRequest, RosterResponse } from '../wire/roster.js'
import type { JoinRequest } from '../wire/join.js'
import { GroupStateError, NoQuorumError, RosterError, TokenError } from './errors.js'
import { GroupStore, type GroupKeyMaterial, type Membership } from './state.js'
import { TokenBook, view, type TokenView } from './tokens.js'
import { encodeToken, hex } from './token.js'
import { decideAdopt, isMember, MAX_HANDOVER_CHAIN, memberOf, verifyHandover, verifyRoster, type Roster, type RosterMember, type SignedRosterRecord } from './roster.js'
import { JOIN_PROTOCOL, joinHandler, MAX_INBOUND_JOIN_STREAMS, type JoinLeaderLogic, type JoinOffer } from './join-protocol.js'
import { MAX_INBOUND_ROSTER_STREAMS, response, ROSTER_PROTOCOL, rosterCall, rosterHandler, RosterRequestType, RosterStatus, type RosterLogic } from './roster-protocol.js'
import { linkWithToken } from './link.js'
import { Leader } from './leader.js'
import { MembershipSync } from './sync.js'

export { decodeKey, GROUP_KEY_BYTES } from './key.js'
export { validateJoinRequest } from './leader.js'

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

/** What adopting a roster received from the network did. */
export type AdoptOutcome = 'adopted' | 'same' | 'older' | 'wrong-group' | 'bad-term' | 'term-gap' | 'idle' | 'no-key'

export class GroupService implements JoinLeaderLogic, RosterLogic {
  /** A link (join) of this host is running; see link(). */
  private linking = false
  readonly c: GroupComponents
  readonly tokens: TokenBook
  readonly self: string
  private readonly groupStore: GroupStore
  private readonly leader: Leader
  private readonly sync: MembershipSync
  /** Serialises roster changes this host makes as leader (joins, unlinks, handover). */
  private readonly changeLock = new Mutex()
  /** Serialises writes of the stored membership (adopting pushed or pulled rosters). */
  private readonly stateLock = new Mutex()
  private member?: Membership
  private running = false
  private readonly changeListeners = new Set<() => void>()
  private recentlyHeard: (peer: string) => boolean = () => false

  constructor (c: GroupComponents) {
    this.c = c
    this.self = c.node.peerId.toString()
    this.tokens = new TokenBook(c.store.sublevel('tokens'))
    this.groupStore = new GroupStore(c.store.sublevel('group'))
    const membership = (): Membership | undefined => this.member
    const adopt = async (record: SignedRosterRecord, key: GroupKeyMaterial | undefined): Promise<AdoptOutcome> => await this.adopt(record, key)
    this.leader = new Leader({
      node: c.node,
      privateKey: c.privateKey,
      config: c.config,
      log: c.log,
      audit: c.audit,
      tokens: this.tokens,
      changeLock: this.changeLock,
      self: this.self,
      membership,
      requireMembership: () => this.requireMembership(),
      ownAddresses: () => this.ownAddresses(),
      store: async (m) => { await this.store(m) },
      adopt,
      recentlyHeard: (peer) => this.recentlyHeard(peer)
    })
    this.sync = new MembershipSync({
      node: c.node,
      config: c.config,
      log: c.log,
      self: this.self,
      membership,
      isMemberPeer: (peer) => this.isMemberPeer(peer),
      wasMember: (peer) => this.groupStore.wasMember(peer),
      adopt
    })
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
    this.sync.start()
    if (this.member != null) await this.sync.resume(this.member.record.roster)
  }

  async stop (): Promise<void> {
    if (!this.running) return
    this.running = false
    this.sync.stop()
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
      const seen = self ? Date.now() : this.sync.seenAt(m.peerId)
      return {
        peerId: m.peerId,
        hostname: m.hostname,
        role: m.role,
        addresses: self ? this.ownAddresses() : (this.sync.learnedAddresses(m.peerId) ?? (conns.length > 0 ? conns.map(c => c.remoteAddr.decapsulateCode(421).toString()) : m.addresses)),
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
    if (this.linking && this.member == null) throw new GroupStateError('this host is being linked to a group (an `edgelink link` is running); wait for it to finish, then issue tokens on the group\'s leader', 'LINK_IN_PROGRESS', 409)
    return await this.changeLock.run(async () => {
      if (this.member == null) await this.leader.createGroup()
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
    // One link at a time: two at once would each pass the "idle" check, and each leader
    // would list this host while it kept only the last group it stored.
    if (this.linking) throw new GroupStateError('this host is already being linked (another `edgelink link` is running); wait for it to finish, then check `edgelink status`', 'LINK_IN_PROGRESS', 409)
    this.linking = true
    try {
      return await linkWithToken(this, tokenText)
    } finally {
      this.linking = false
    }
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
    await this.leader.removeMember(target.peerId, force)
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
      // Checked again under the lock: a join offered before (it holds the lock) may have
      // been committed meanwhile, and dissolving then would leave its host without a leader.
      const joined = await this.changeLock.run(async () => {
        const now = this.member?.record.roster
        if (now == null || now.leader !== this.self) return 0
        if (now.members.length > 1) return now.members.length - 1
        await this.dissolve('relinquished by operator')
        return 0
      })
      if (joined > 0) throw new GroupStateError(`a host joined this group while it was being dissolved, so it was not; it has ${joined} follower(s) now: hand leadership over with \`edgelink leader relinquish --to HOST\``, 'NOT_IDLE', 409)
      return { leader: null, term: null, dissolved: true }
    }
    if (to == null) {
      throw new GroupStateError(`choose the new leader with --to HOST (followers: ${followers.map(f => f.hostname).join(', ')})`, 'TARGET_REQUIRED', 400)
    }
    const target = this.resolveHost(to)
    if (target.peerId === this.self) throw new GroupStateError('this host is already the leader; choose a follower', 'TARGET_INVALID', 400)
    return await this.leader.handOver(target)
  }

  // ---- protocol entry points ---------------------------------------------------

  /** The join protocol's leader side (see leader.ts). */
  async prepareJoin (remote: PeerId, req: JoinRequest): Promise<JoinOffer> {
    return await this.leader.prepareJoin(remote, req)
  }

  async handleRosterRequest (remote: PeerId, req: RosterRequest): Promise<RosterResponse> {
    const peer = remote.toString()
    const m = this.member
    // PUSH and PULL are between any members (sync.ts); LEAVE and HANDOVER go to the leader (leader.ts).
    if (m == null || hex(req.groupId) !== m.record.roster.groupId) return response(RosterStatus.NOT_MEMBER, 'this host is not in that group')
    try {
      switch (req.type) {
        case RosterRequestType.PUSH: return await this.sync.onPush(peer, req)
        case RosterRequestType.PULL: return this.sync.onPull(peer, req)
        case RosterRequestType.LEAVE: return await this.leader.onLeave(peer)
        case RosterRequestType.HANDOVER: return await this.leader.onHandover(peer, req)
        default: return response(RosterStatus.INVALID, 'unknown request type')
      }
    } catch (err) {
      if (err instanceof NoQuorumError) return response(RosterStatus.ROSTER_NO_QUORUM, err.message)
      if (err instanceof RosterError) return response(RosterStatus.INVALID, err.message)
      this.c.log.error({ peer, type: req.type, err: errorMessage(err) }, 'roster request failed')
      return response(RosterStatus.ROSTER_INTERNAL, 'internal error; see the log of the host that answered')
    }
  }

  // ---- leaving and the stored membership ----------------------------------------

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
  async adopt (record: SignedRosterRecord, key: GroupKeyMaterial | undefined): Promise<AdoptOutcome> {
    const outcome = await this.adoptLocked(record, key)
    // Dialling new members and telling listeners happen after the caller answered: a
    // member acknowledges a pushed roster first, then dials, republishes and rekeys.
    if (outcome === 'adopted') setImmediate(() => { this.announce() })
    return outcome
  }

  private async adoptLocked (record: SignedRosterRecord, key: GroupKeyMaterial | undefined): Promise<AdoptOutcome> {
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
      // Only a newer key replaces ours: never other bytes under an id we hold.
      // And only the key the roster names: one with another id (a later one, say, from a
      // removed member answering with an old roster that still lists it) is not taken.
      const nextKey = key != null && key.id > m.key.id && key.id === record.roster.keyId ? key : m.key
      // A roster that names a key we would not have (rotated while we were away, and
      // pushed by someone who may not hand out keys) waits for one that comes with it.
      if (record.roster.keyId > nextKey.id) return 'no-key'
      await this.groupStore.save({ record, key: nextKey })
      this.member = { record, key: nextKey }
      if (record.roster.leader !== prev.leader) {
        this.c.log.info({ leader: record.roster.leader, term: record.roster.term }, 'new leader')
      }
      return 'adopted'
    })
  }

  /** Forget the membership (the host becomes idle) without telling anyone. */
  async forget (): Promise<void> {
    await this.stateLock.run(async () => { await this.groupStore.clear(); this.member = undefined })
    this.notify()
  }

  /**
   * Store a membership this host created or joined. `quiet` stores it without acting
   * on it yet (a joiner between the leader's offer and its commit): no dialling of the
   * other members and no listeners told, until `announce()`.
   */
  async store (m: Membership, opts: { quiet?: boolean } = {}): Promise<void> {
    await this.stateLock.run(async () => {
      await this.groupStore.save(m)
      this.member = m
    })
    if (opts.quiet !== true) this.announce()
  }

  /** Where liveness comes from (the status service plugs in; until then, always ping). */
  useLiveness (recentlyHeard: (peer: string) => boolean): void {
    this.recentlyHeard = recentlyHeard
  }

  /** Act on the stored membership: dial the members and tell the listeners. */
  announce (): void {
    if (this.member != null) this.sync.rememberAddressesLater(this.member.record.roster)
    this.notify()
  }

  // ---- other members -------------------------------------------------------------

  /** Pull the newest roster from a member and adopt it if newer. */
  async pullFrom (peer: string): Promise<void> {
    await this.sync.pullFrom(peer)
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
}
