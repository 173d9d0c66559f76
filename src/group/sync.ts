/**
 * Keeping a member in touch with its group: when other members were last seen and
 * which addresses they listen on, redialling members that are not connected, and
 * pulling newer rosters (on connect, and as anti-entropy on a timer), and answering
 * other members' pushes and pulls. See protocols/roster.md.
 */
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { PeerId } from '@libp2p/interface'
import type { Logger } from '../agent/logger.js'
import type { AgentConfig } from '../agent/config.js'
import type { EdgelinkNode } from '../net/node.js'
import { errorMessage } from '../errors.js'
import { u8 } from '../util/bytes.js'
import { GroupKey, type RosterRequest, type RosterResponse } from '../wire/roster.js'
import { isMember, verifyRoster, type Roster, type SignedRosterRecord } from './roster.js'
import { response, rosterCall, RosterRequestType, RosterStatus } from './roster-protocol.js'
import type { GroupKeyMaterial, Membership } from './state.js'
import { decodeKey } from './key.js'
import type { AdoptOutcome } from './service.js'
import { JitteredInterval } from '../util/timers.js'
import { monotonicMs } from '../util/clock.js'

/** What membership sync uses of the group service. */
export interface SyncComponents {
  node: EdgelinkNode
  config: AgentConfig
  log: Logger
  /** This host's PeerId. */
  self: string
  membership: () => Membership | undefined
  /** `peer` is another member of this host's group. */
  isMemberPeer: (peer: string) => boolean
  /** `peer` was removed from this host's group while this host was in it. */
  wasMember: (peer: string) => boolean
  /** Adopt a verified roster received from another member if it is newer. */
  adopt: (record: SignedRosterRecord, key: GroupKeyMaterial | undefined) => Promise<AdoptOutcome>
}

type Listener = [string, (evt: CustomEvent) => void]

/** Peers whose last connection time is kept before non-members are forgotten (members are at most 256). */
export const MAX_LAST_SEEN = 1024

export class MembershipSync {
  private readonly c: SyncComponents
  private readonly lastSeen = new Map<string, number>()
  private readonly learnedAddrs = new Map<string, string[]>()
  private readonly pulling = new Set<string>()
  private readonly pulledAt = new Map<string, number>()
  /** Members of the roster last acted on (to tell newcomers apart). */
  private known = new Set<string>()
  private knownGroup = ''
  /** Addresses last merged into the peer store, per member. */
  private readonly merged = new Map<string, string>()
  private listeners: Listener[] = []
  private timers: NodeJS.Timeout[] = []
  private jittered: JitteredInterval[] = []

  constructor (c: SyncComponents) {
    this.c = c
  }

  /** Watch connections and discovery, and start the reconnect and anti-entropy timers. */
  start (): void {
    this.on('connection:open', (evt) => {
      const peer = (evt.detail as { remotePeer: PeerId }).remotePeer.toString()
      this.seen(peer)
      // Both sides dial, so a pair often opens two connections at once: one pull is enough.
      if (this.c.isMemberPeer(peer) && !pulledRecently(this.pulledAt, peer)) this.pullSoon(peer)
    })
    this.on('connection:close', (evt) => {
      this.seen((evt.detail as { remotePeer: PeerId }).remotePeer.toString())
    })
    this.on('peer:discovery', (evt) => {
      const peer = (evt.detail as { id: PeerId }).id
      if (this.c.isMemberPeer(peer.toString()) && this.c.node.getConnections(peer).length === 0) this.dialMember(peer.toString())
    })
    this.on('peer:identify', (evt) => {
      const d = evt.detail as { peerId: PeerId, listenAddrs: Multiaddr[] }
      const peer = d.peerId.toString()
      if (this.c.isMemberPeer(peer)) this.learnedAddrs.set(peer, d.listenAddrs.slice(0, 16).map(a => a.decapsulateCode(421).toString()))
    })
    const g = this.c.config.group
    this.timers.push(setInterval(() => { this.reconnect() }, g.reconnectInterval))
    this.jittered.push(new JitteredInterval(() => { this.antiEntropy() }, g.antiEntropyInterval))
  }

  stop (): void {
    for (const t of this.timers) clearInterval(t)
    this.timers = []
    for (const t of this.jittered) t.clear()
    this.jittered = []
    for (const [name, fn] of this.listeners) this.c.node.removeEventListener(name as never, fn as never)
    this.listeners = []
  }

  /** With a stored roster at start-up: record the members' addresses, then dial them. */
  async resume (r: Roster): Promise<void> {
    this.known = new Set(r.members.map(m => m.peerId))
    this.knownGroup = r.groupId
    await this.rememberAddresses(r)
    this.reconnect()
  }

  /**
   * Note a connection to `peer` opening or closing. Every peer, since a host may connect
   * before it is a member (a joiner); but any host on the LAN may connect under a new
   * PeerId each time, so past MAX_LAST_SEEN entries those of non-members go.
   */
  private seen (peer: string): void {
    this.lastSeen.set(peer, Date.now())
    if (this.lastSeen.size > MAX_LAST_SEEN) {
      for (const p of this.lastSeen.keys()) if (!this.c.isMemberPeer(p)) this.lastSeen.delete(p)
    }
  }

  /** When a connection to `peer` last opened or closed (ms since the epoch). */
  seenAt (peer: string): number | undefined {
    return this.lastSeen.get(peer)
  }

  /** The listen addresses `peer` last announced through identify. */
  learnedAddresses (peer: string): string[] | undefined {
    return this.learnedAddrs.get(peer)
  }

  /**
   * Answer a PUSH: adopt the pushed roster if it is newer than ours, and its key only if
   * `peer` (who pushed) leads that roster. The key is not signed: taken from anyone who
   * knows the (public) group id, it would let an outsider choose the key a member
   * encrypts with. A roster that needs a newer key than we get waits (see adopt).
   */
  async onPush (peer: string, req: RosterRequest): Promise<RosterResponse> {
    const record = await verifyRoster(req.roster)
    const key = req.groupKey.length > 0 && peer === record.roster.leader ? decodeKey(req.groupKey) : undefined
    const outcome = await this.c.adopt(record, key)
    if (outcome === 'adopted' || outcome === 'same') return response(RosterStatus.ROSTER_OK)
    // Left the group while this push waited (an anti-entropy pull brought the same removal
    // first): answer as a host outside the group does, which the leader counts as stored.
    if (outcome === 'idle') return response(RosterStatus.NOT_MEMBER, 'this host is not in that group')
    return response(outcome === 'older' ? RosterStatus.STALE : RosterStatus.INVALID, `roster not adopted: ${outcome}`)
  }

  /** Answer a PULL: our roster if it is newer than the asker's, with the key if the asker is a member. */
  onPull (peer: string, req: RosterRequest): RosterResponse {
    const m = this.c.membership()
    if (m == null) return response(RosterStatus.NOT_MEMBER, 'this host is not in that group')
    const r = m.record
    // Members, and hosts removed from the group (so one that was down when it was
    // unlinked learns it). Anyone else on the LAN who knows the group id (it names the
    // gossip topic) would read the members' names and addresses.
    if (!isMember(r.roster, peer) && !this.c.wasMember(peer)) return response(RosterStatus.NOT_MEMBER, 'the requester is not a member of this group')
    const known = [Number(req.knownTerm), Number(req.knownVersion)]
    if (r.roster.term < known[0] || (r.roster.term === known[0] && r.roster.version <= known[1])) return response(RosterStatus.NOT_NEWER)
    const key = isMember(r.roster, peer) ? GroupKey.encode({ id: m.key.id, key: u8(m.key.key) }) : undefined
    return response(RosterStatus.ROSTER_OK, '', r.bytes, key)
  }

  /** Pull the newest roster from a member and adopt it if newer. */
  async pullFrom (peer: string): Promise<void> {
    const r = this.roster
    if (r == null || peer === this.c.self) return
    const res = await rosterCall(this.c.node, peerIdFromString(peer), {
      type: RosterRequestType.PULL,
      groupId: u8(Buffer.from(r.groupId, 'hex')),
      knownTerm: BigInt(r.term),
      knownVersion: BigInt(r.version)
    }, this.c.config.group.rpcTimeout)
    if (res.status !== RosterStatus.ROSTER_OK || res.roster.length === 0) return
    const record = await verifyRoster(res.roster)
    // We chose whom to ask; its key counts only if the roster it sent lists it as a member.
    const key = res.groupKey.length > 0 && isMember(record.roster, peer) ? decodeKey(res.groupKey) : undefined
    const outcome = await this.c.adopt(record, key)
    if (outcome === 'adopted') this.c.log.info({ from: peer, version: record.roster.version, term: record.roster.term }, 'pulled newer roster')
  }

  /**
   * After a roster change: record the members' addresses and dial the ones we are not
   * connected to, so a new member is in everyone's gossip mesh at once rather than at
   * the next reconnect tick. Off the join's critical path: the leader is not kept waiting.
   */
  rememberAddressesLater (r: Roster): void {
    // A member that just joined dials every member itself once its link completes, so
    // the others leave it to do so (one connection per pair, not two, and no burst of
    // handshakes while the join is being committed). The reconnect timer still dials
    // it if it does not show up.
    const ids = r.members.map(m => m.peerId)
    // Only while this host was already in this group; a host that just joined dials everyone.
    const wasMember = this.knownGroup === r.groupId && this.known.has(this.c.self)
    const newcomers = new Set(wasMember ? ids.filter(p => !this.known.has(p)) : [])
    this.known = new Set(ids)
    this.knownGroup = r.groupId
    this.rememberAddresses(r).then(() => { this.reconnect(newcomers) }, err => { this.c.log.debug({ err: errorMessage(err) }, 'cannot record member addresses') })
  }

  private get roster (): Roster | undefined {
    return this.c.membership()?.record.roster
  }

  private pullSoon (peer: string): void {
    if (this.pulling.has(peer)) return
    this.pulling.add(peer)
    this.pulledAt.set(peer, monotonicMs())
    this.pullFrom(peer).catch(err => {
      this.c.log.debug({ peer, err: errorMessage(err) }, 'roster pull failed')
    }).finally(() => { this.pulling.delete(peer) })
  }

  private antiEntropy (): void {
    const r = this.roster
    if (r == null) return
    const connected = r.members.filter(m => m.peerId !== this.c.self && this.c.node.getConnections(peerIdFromString(m.peerId)).length > 0)
    const leader = connected.find(m => m.peerId === r.leader)
    const pick = leader ?? connected[Math.floor(Math.random() * connected.length)]
    if (pick != null) this.pullSoon(pick.peerId)
  }

  private reconnect (skip?: Set<string>): void {
    const r = this.roster
    if (r == null) return
    for (const m of r.members) {
      if (m.peerId !== this.c.self && skip?.has(m.peerId) !== true && this.c.node.getConnections(peerIdFromString(m.peerId)).length === 0) this.dialMember(m.peerId)
    }
  }

  private dialMember (peer: string): void {
    this.c.node.dial(peerIdFromString(peer), { signal: AbortSignal.timeout(this.c.config.group.dialTimeout) }).catch(err => {
      this.c.log.debug({ peer, err: errorMessage(err) }, 'member not reachable yet')
    })
  }

  /** Put members' known addresses in the peer store so dialling by PeerId finds them. */
  private async rememberAddresses (r: Roster): Promise<void> {
    for (const m of r.members) {
      if (m.peerId === this.c.self) continue
      const addrs = [...m.addresses, ...(this.learnedAddrs.get(m.peerId) ?? [])]
      // A peer-store merge re-encodes the whole peer record: skip it when nothing changed.
      const key = addrs.join(' ')
      if (this.merged.get(m.peerId) === key) continue
      try {
        await this.c.node.peerStore.merge(peerIdFromString(m.peerId), { multiaddrs: addrs.map(a => multiaddr(a)) })
        this.merged.set(m.peerId, key)
      } catch (err) {
        this.c.log.debug({ peer: m.peerId, err: errorMessage(err) }, 'cannot record member addresses')
      }
    }
  }

  private on (name: string, fn: (evt: CustomEvent) => void): void {
    this.c.node.addEventListener(name as never, fn as never)
    this.listeners.push([name, fn])
  }
}

/** A pull on a new connection is skipped if one from the same peer started this recently. */
export const CONNECT_PULL_GAP_MS = 1000

/** True if a pull from `peer` started within CONNECT_PULL_GAP_MS (and prunes old entries). */
export function pulledRecently (pulledAt: Map<string, number>, peer: string, now = monotonicMs()): boolean {
  if (pulledAt.size > 1024) for (const [p, t] of pulledAt) if (now - t > CONNECT_PULL_GAP_MS) pulledAt.delete(p)
  const t = pulledAt.get(peer)
  return t != null && now - t < CONNECT_PULL_GAP_MS
}
