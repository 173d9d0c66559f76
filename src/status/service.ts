/**
 * Host status and liveness across the group (see protocols/group.md). Publishes this
 * host's status on the sealed group topic when it changes and periodically, keeps the
 * newest verified status of every member, probes members for liveness, and repairs
 * whatever gossip missed by pulling from members (`/edgelink/group/1.0.0`).
 */
import { peerIdFromString } from '@libp2p/peer-id'
import type { PeerId, PrivateKey } from '@libp2p/interface'
import type { AgentConfig } from '../agent/config.js'
import type { Logger } from '../agent/logger.js'
import type { AuditLog } from '../audit/index.js'
import type { EdgelinkNode } from '../net/node.js'
import type { Store, Sublevel } from '../store/index.js'
import type { GroupService } from '../group/service.js'
import { errorMessage, NotFoundError } from '../errors.js'
import { rpcCall, rpcHandler } from '../net/rpc.js'
import { AGENT_VERSION } from '../version.js'
import { sameBytes, u8 } from '../util/bytes.js'
import { GroupMessageType, GroupRequest, GroupRequestType, GroupResponse, GroupStatus, type ContentProgress, type GroupMessage, type HostStatus } from '../wire/group.js'
import { collectSystem, healthOf } from './collect.js'
import { GroupGossip, type GossipCounters } from './gossip.js'
import { LivenessTable, type LivenessState } from './liveness.js'
import { Heartbeats } from './heartbeat.js'
import { EventHub } from './events.js'
import { pulledRecently } from '../group/sync.js'
import { mapToLabels, MAX_RECORD_BYTES, NO_SETTINGS_STATE, peerBytes, signStatusFitting, verifyStatus, type HostStatusView, type SettingsStateView, type Verified } from './records.js'
import { JitteredInterval, jittered } from '../util/timers.js'
import { monotonicMs, wallTimeOf } from '../util/clock.js'

export const GROUP_PROTOCOL = '/edgelink/group/1.0.0'
/** A pull answer holds one status per member and one settings record per member. */
const MAX_GROUP_FRAME = 2 * 256 * MAX_RECORD_BYTES
const EMPTY = new Uint8Array(0)

/** What the content service contributes to status and to pulls. */
export interface ContentHooks {
  /** This host's progress on every catalog item, reported in its status. */
  progress: () => ContentProgress[]
  /** The newest signed catalog this host holds, to answer a pull. */
  catalog: () => Uint8Array | undefined
  /** A catalog arrived (gossip or pull). */
  receive: (bytes: Uint8Array, via: string) => Promise<'stored' | 'stale' | 'refused'>
}

/** What the settings service contributes to status and to pulls. */
export interface SettingsHooks {
  /** This host's settings state, reported in its status. */
  state: () => SettingsStateView
  /** Settings records this host holds, to answer a pull. */
  records: () => Uint8Array[]
  /** A settings record arrived (gossip, pull or push). */
  receive: (bytes: Uint8Array, via: string) => Promise<'stored' | 'stale' | 'refused'>
}

export interface StatusComponents {
  node: EdgelinkNode
  store: Store
  privateKey: PrivateKey
  config: AgentConfig
  log: Logger
  audit: AuditLog
  group: GroupService
  dataDir: string
}

export interface MemberLiveness {
  liveness: LivenessState
  lastHeard: string | null
  health: string | null
}

export class StatusService {
  private readonly c: StatusComponents
  private readonly self: string
  private readonly gossip: GroupGossip
  private readonly liveness: LivenessTable
  private readonly db: Sublevel<string>
  private readonly statuses = new Map<string, Verified<HostStatusView>>()
  private settings?: SettingsHooks
  private content?: ContentHooks
  private timers: NodeJS.Timeout[] = []
  private jittered: JitteredInterval[] = []
  /** When the periodic status is next due (jittered, so members started together do not publish together). */
  private periodicDue = 0
  private unsubscribe?: () => void
  private lastFingerprint = ''
  private lastSeq = 0n
  private readonly pulling = new Set<string>()
  private readonly pulledAt = new Map<string, number>()
  /** Status and liveness events as they happen (`GET /api/v1/events`). */
  readonly events = new EventHub()
  /** Liveness heartbeats (public for tests and the REPL). */
  readonly heartbeats: Heartbeats
  private onConnect?: (evt: CustomEvent<{ remotePeer: PeerId }>) => void
  private running = false

  constructor (c: StatusComponents) {
    this.c = c
    this.self = c.node.peerId.toString()
    this.db = c.store.sublevel<string>('status')
    const s = c.config.status
    this.liveness = new LivenessTable({ suspectAfterMs: s.suspectAfter, downAfterMs: s.downAfter })
    this.gossip = new GroupGossip(c.node, c.log, { maxMessageBytes: s.maxMessageBytes, ratePerSecond: s.ratePerSecond, rateBurst: s.rateBurst },
      (from, msg) => {
        // A message still being handled when the agent stops finds the store closed: not an error.
        this.onGossip(from, msg).catch(err => { if (this.running) this.c.log.warn({ from, err: errorMessage(err) }, 'group message not handled') })
      },
      (from) => { this.pullRosterSoon(from) },
      (from) => { this.pullRosterSoon(from) })
    this.heartbeats = new Heartbeats({
      node: c.node,
      log: c.log,
      intervalMs: s.probeInterval,
      members: () => this.members(),
      isMember: (p) => this.c.group.isMemberPeer(p),
      heard: (p) => { this.heard(p) }
    })
  }

  /** The settings service plugs in here (it needs this service to publish). */
  attachSettings (hooks: SettingsHooks): void {
    this.settings = hooks
  }

  /** The content service plugs in here. */
  attachContent (hooks: ContentHooks): void {
    this.content = hooks
  }

  /** Publish a catalog on the group topic. */
  async publishCatalog (bytes: Uint8Array): Promise<void> {
    await this.gossip.publish({ type: GroupMessageType.CATALOG, record: u8(bytes) })
  }

  get counters (): GossipCounters { return this.gossip.counters }

  async start (): Promise<void> {
    if (this.running) return
    this.running = true
    for await (const [peer, b64] of this.db.iterator()) {
      try {
        this.statuses.set(peer, await verifyStatus(Buffer.from(b64, 'base64')))
      } catch (err) {
        this.c.log.warn({ peer, err: errorMessage(err) }, 'dropping a stored status that does not verify')
        await this.db.del(peer)
      }
    }
    await this.c.node.handle(GROUP_PROTOCOL, rpcHandler({
      protocol: GROUP_PROTOCOL,
      request: GroupRequest,
      response: GroupResponse,
      maxFrameBytes: MAX_RECORD_BYTES + 1024,
      timeoutMs: this.c.config.group.rpcTimeout,
      malformed: groupResponse(GroupStatus.GROUP_INVALID, 'malformed group request'),
      handle: async (remote, req) => await this.handleRequest(remote, req),
      log: this.c.log
    }), { maxInboundStreams: 32 })
    this.gossip.start()
    this.onConnect = (evt) => {
      const peer = evt.detail.remotePeer.toString()
      if (this.c.group.isMemberPeer(peer)) {
        this.heard(peer)
        // Both sides dial, so a pair often opens two connections at once: one pull is enough.
        if (!pulledRecently(this.pulledAt, peer)) this.pullSoon(peer)
      }
    }
    this.c.node.addEventListener('connection:open', this.onConnect as never)
    this.unsubscribe = this.c.group.onChange(() => { this.followMembership() })
    this.followMembership()
    void this.publish(true)
    const s = this.c.config.status
    this.timers.push(setInterval(() => { void this.publish(false) }, Math.min(1000, s.interval)))
    await this.heartbeats.start()
    this.timers.push(setInterval(() => { this.evaluate() }, Math.max(100, Math.floor(s.probeInterval / 4))))
    this.jittered.push(new JitteredInterval(() => { this.antiEntropy() }, s.antiEntropyInterval))
  }

  async stop (): Promise<void> {
    if (!this.running) return
    this.running = false
    for (const t of this.timers) clearInterval(t)
    this.timers = []
    for (const t of this.jittered) t.clear()
    this.jittered = []
    this.unsubscribe?.()
    if (this.onConnect != null) this.c.node.removeEventListener('connection:open', this.onConnect as never)
    this.gossip.stop()
    await this.heartbeats.stop()
    await this.c.node.unhandle(GROUP_PROTOCOL)
  }

  // ---- queries ------------------------------------------------------------

  /** The newest status of a member (PeerId or hostname); this host's is collected now. */
  statusOf (host: string): HostStatusView & Omit<MemberLiveness, 'health'> {
    const member = this.c.group.membership != null ? this.c.group.resolveHost(host) : undefined
    const peer = member?.peerId ?? (host === this.self || host === this.c.config.hostname ? this.self : undefined)
    if (peer == null) throw new NotFoundError(`no linked host is named or has the PeerId "${host.slice(0, 80)}"; see \`edgelink hosts\``, 'UNKNOWN_HOST')
    if (peer !== this.self) {
      const s = this.statuses.get(peer)
      if (s == null) throw new NotFoundError(`no status from ${member?.hostname ?? peer} yet; it has not been heard from since this host started`, 'STATUS_UNKNOWN')
      const { liveness, lastHeard } = this.memberLiveness(peer)
      return { ...s.view, liveness, lastHeard }
    }
    return { ...this.statuses.get(this.self)?.view ?? this.buildView(), liveness: 'alive', lastHeard: new Date().toISOString() }
  }

  memberLiveness (peer: string): MemberLiveness {
    if (peer === this.self) return { liveness: 'alive', lastHeard: new Date().toISOString(), health: this.statuses.get(peer)?.view.health ?? null }
    const l = this.liveness.get(peer)
    return {
      liveness: l?.state ?? 'down',
      // Not heard since this host started: no time to show (the grace period is not a hearing).
      lastHeard: l?.heard === true ? new Date(wallTimeOf(l.lastHeard)).toISOString() : null,
      health: this.statuses.get(peer)?.view.health ?? null
    }
  }

  // ---- publishing -------------------------------------------------------------

  /**
   * Publish this host's status if what operators care about changed, or `force`, or
   * the interval passed. Load, memory and uptime change all the time and ride along.
   */
  async publish (force: boolean): Promise<void> {
    if (!this.running) return
    try {
      const facts = collectSystem(this.c.dataDir)
      const health = healthOf(facts)
      const fp = JSON.stringify([this.c.group.statusFields(), this.ownAddresses(), health, this.c.config.labels, this.settings?.state(), Math.round(facts.diskFree / 2 ** 30)])
      const due = monotonicMs() >= this.periodicDue
      if (!force && fp === this.lastFingerprint && !due) return
      this.lastFingerprint = fp
      this.periodicDue = monotonicMs() + jittered(this.c.config.status.interval)
      const signed = await signStatusFitting(this.buildWire(facts, health), this.c.privateKey)
      if (signed.trimmed) this.c.log.debug('content error messages shortened to fit this host\'s status record')
      this.statuses.set(this.self, signed)
      if (this.c.group.membership != null) {
        await this.gossip.publish({ type: GroupMessageType.STATUS, record: u8(signed.bytes) })
      }
    } catch (err) {
      this.c.log.warn({ err: errorMessage(err) }, 'cannot publish status')
    }
  }

  /** Publish a settings record on the group topic. */
  async publishSettings (bytes: Uint8Array): Promise<void> {
    await this.gossip.publish({ type: GroupMessageType.SETTINGS, record: u8(bytes) })
  }

  /** Deliver a settings record straight to its target (best effort; gossip and pulls also carry it). */
  async pushSettings (target: string, bytes: Uint8Array): Promise<boolean> {
    const r = this.c.group.roster
    if (r == null) return false
    try {
      const res = await rpcCall(this.c.node, peerIdFromString(target), GROUP_PROTOCOL,
        { type: GroupRequestType.PUSH_SETTINGS, groupId: u8(Buffer.from(r.groupId, 'hex')), record: u8(bytes) },
        { request: GroupRequest, response: GroupResponse }, { maxFrameBytes: MAX_GROUP_FRAME, timeoutMs: this.c.config.group.rpcTimeout })
      return res.status === GroupStatus.GROUP_OK
    } catch (err) {
      this.c.log.info({ target, err: errorMessage(err) }, 'cannot push settings to target; it will pull them when it returns')
      return false
    }
  }

  private buildWire (facts = collectSystem(this.c.dataDir), health = healthOf(facts)): HostStatus {
    const now = BigInt(Date.now()) * 1000n
    this.lastSeq = now > this.lastSeq ? now : this.lastSeq + 1n
    const st = this.settings?.state() ?? NO_SETTINGS_STATE
    const role = this.c.group.statusFields().role
    return {
      peerId: peerBytes(this.self),
      seq: this.lastSeq,
      at: BigInt(Date.now()),
      hostname: this.c.config.hostname,
      addresses: this.ownAddresses(),
      agentVersion: AGENT_VERSION,
      uptimeMs: BigInt(Math.round(process.uptime() * 1000)),
      platform: facts.platform,
      osRelease: facts.osRelease,
      kernel: facts.kernel,
      arch: facts.arch,
      cpus: facts.cpus,
      load1: facts.load[0],
      load5: facts.load[1],
      load15: facts.load[2],
      memTotal: BigInt(facts.memTotal),
      memFree: BigInt(facts.memFree),
      diskTotal: BigInt(facts.diskTotal),
      diskFree: BigInt(facts.diskFree),
      role: role ?? 'idle',
      health: health.health,
      healthDetail: health.detail,
      labels: mapToLabels(this.c.config.labels),
      settings: { version: BigInt(st.version), term: BigInt(st.term), state: st.state, message: st.message, at: BigInt(st.at != null ? Date.parse(st.at) : 0) },
      content: this.content?.progress() ?? []
    }
  }

  private buildView (): HostStatusView {
    const w = this.buildWire()
    const facts = collectSystem(this.c.dataDir)
    return {
      peerId: this.self,
      seq: w.seq.toString(),
      at: new Date().toISOString(),
      hostname: w.hostname,
      addresses: w.addresses,
      agentVersion: w.agentVersion,
      uptimeMs: Number(w.uptimeMs),
      os: { platform: w.platform, release: w.osRelease, kernel: w.kernel, arch: w.arch },
      cpus: w.cpus,
      load: facts.load,
      memory: { total: facts.memTotal, free: facts.memFree },
      disk: { total: facts.diskTotal, free: facts.diskFree },
      role: w.role,
      health: w.health,
      healthDetail: w.healthDetail,
      labels: { ...this.c.config.labels },
      settings: this.settings?.state() ?? NO_SETTINGS_STATE,
      content: w.content.map(c => ({ digest: c.digest, state: c.state, have: c.have, total: c.total, error: c.error }))
    }
  }

  private ownAddresses (): string[] {
    return this.c.group.ownAddresses().slice(0, 16)
  }

  // ---- receiving ------------------------------------------------------------------

  private async onGossip (from: string, msg: GroupMessage): Promise<void> {
    this.heard(from)
    if (msg.type === GroupMessageType.STATUS) await this.acceptStatus(msg.record, from, 'gossip')
    else if (msg.type === GroupMessageType.SETTINGS) await this.settings?.receive(msg.record, from)
    else if (msg.type === GroupMessageType.CATALOG) await this.content?.receive(msg.record, from)
  }

  /** Keep a status if it verifies, its origin is a member, and it is newer than ours. */
  private async acceptStatus (bytes: Uint8Array, via: string, how: 'gossip' | 'pull'): Promise<boolean> {
    // Most records in a pull (and gossip duplicates) are ones we hold already: skip the
    // signature check for an exact copy. Nothing unverified is ever kept.
    for (const held of this.statuses.values()) if (sameBytes(held.bytes, bytes)) return false
    let s: Verified<HostStatusView>
    try {
      s = await verifyStatus(bytes)
    } catch (err) {
      this.c.log.debug({ via, err: errorMessage(err) }, 'status record refused')
      return false
    }
    const origin = s.view.peerId
    if (origin === this.self) {
      // Our own record, from before a restart, numbered above what we would number now:
      // the clock was set back (or ran ahead before). Members refuse a lower number as a
      // replay, so until the clock caught up, which can be years, our status would stay
      // frozen everywhere. Number on from it, and publish at once.
      const seq = BigInt(s.view.seq)
      if (seq > this.lastSeq) {
        this.lastSeq = seq
        this.c.log.warn({ seq: seq.toString(), via }, 'a member holds a newer status of this host than this host numbers (was the clock set back?); numbering on from it')
        if (this.running) this.publish(true).catch(err => { this.c.log.debug({ err: errorMessage(err) }, 'status publish failed') })
      }
      return false
    }
    if (!this.c.group.isMemberPeer(origin)) return false
    const held = this.statuses.get(origin)
    if (held != null && BigInt(held.view.seq) >= BigInt(s.view.seq)) return false
    this.statuses.set(origin, s)
    if (this.events.size > 0) {
      const v = s.view
      this.events.emit({ type: 'status', peer: origin, hostname: v.hostname, seq: v.seq, statusAt: v.at, receivedAt: new Date().toISOString(), via: how, settings: { version: v.settings.version, state: v.settings.state } })
    }
    await this.db.put(origin, Buffer.from(s.bytes).toString('base64'))
    return true
  }

  private async handleRequest (remote: PeerId, req: GroupRequest): Promise<GroupResponse> {
    const r = this.c.group.roster
    const peer = remote.toString()
    if (r == null || Buffer.from(req.groupId).toString('hex') !== r.groupId || !this.c.group.isMemberPeer(peer)) {
      return groupResponse(GroupStatus.GROUP_NOT_MEMBER, 'not a member of this host\'s group')
    }
    this.heard(peer)
    if (req.type === GroupRequestType.PULL_STATE) {
      const statuses = [...this.statuses.entries()].filter(([p]) => p === this.self || this.c.group.isMemberPeer(p)).map(([, s]) => u8(s.bytes))
      return { ...groupResponse(GroupStatus.GROUP_OK), statuses, settings: (this.settings?.records() ?? []).map(u8), catalog: u8(this.content?.catalog() ?? EMPTY) }
    }
    if (req.type === GroupRequestType.PUSH_SETTINGS) {
      const outcome = await this.settings?.receive(req.record, peer)
      return outcome === 'refused' ? groupResponse(GroupStatus.GROUP_INVALID, 'settings change refused (not signed by the leader, or malformed)') : groupResponse(GroupStatus.GROUP_OK)
    }
    return groupResponse(GroupStatus.GROUP_INVALID, 'unknown request type')
  }

  /** Pull statuses and settings from a member: gossip is fast, pull is the truth. */
  async pullFrom (peer: string): Promise<void> {
    const r = this.c.group.roster
    if (r == null) return
    const res = await rpcCall(this.c.node, peerIdFromString(peer), GROUP_PROTOCOL,
      { type: GroupRequestType.PULL_STATE, groupId: u8(Buffer.from(r.groupId, 'hex')), record: u8(EMPTY) },
      { request: GroupRequest, response: GroupResponse }, { maxFrameBytes: MAX_GROUP_FRAME, timeoutMs: this.c.config.group.rpcTimeout })
    if (res.status !== GroupStatus.GROUP_OK) return
    this.heard(peer)
    for (const s of res.statuses.slice(0, 256)) await this.acceptStatus(s, peer, 'pull')
    for (const s of res.settings.slice(0, 256)) await this.settings?.receive(s, peer)
    if (res.catalog.length > 0) await this.content?.receive(res.catalog, peer)
  }

  private pullSoon (peer: string): void {
    if (this.pulling.has(peer) || peer === this.self) return
    this.pulling.add(peer)
    this.pulledAt.set(peer, monotonicMs())
    this.pullFrom(peer).catch(err => {
      this.c.log.debug({ peer, err: errorMessage(err) }, 'status pull failed')
    }).finally(() => { this.pulling.delete(peer) })
  }

  /** Our roster or key is behind `peer`'s: pull the roster (which carries the key), then statuses. */
  private pullRosterSoon (peer: string): void {
    if (this.pulling.has(`roster:${peer}`)) return
    this.pulling.add(`roster:${peer}`)
    this.c.group.pullFrom(peer).then(() => { this.pullSoon(peer) }, err => {
      this.c.log.debug({ peer, err: errorMessage(err) }, 'roster pull failed')
    }).finally(() => { this.pulling.delete(`roster:${peer}`) })
  }

  private antiEntropy (): void {
    const others = this.members().filter(p => this.c.node.getConnections(peerIdFromString(p)).length > 0)
    const pick = others[Math.floor(Math.random() * others.length)]
    if (pick != null) this.pullSoon(pick)
  }

  // ---- liveness ---------------------------------------------------------------------

  private members (): string[] {
    return this.c.group.roster?.members.map(m => m.peerId).filter(p => p !== this.self) ?? []
  }

  private followMembership (): void {
    const m = this.c.group.membership
    this.gossip.setGroup(m == null
      ? undefined
      : { groupId: m.record.roster.groupId, key: m.key, isMember: (p) => this.c.group.isMemberPeer(p) })
    this.liveness.track(this.members())
    this.heartbeats.follow()
    for (const p of this.statuses.keys()) {
      if (p !== this.self && !this.c.group.isMemberPeer(p)) {
        this.statuses.delete(p)
        this.db.del(p).catch(err => { this.c.log.debug({ err: errorMessage(err) }, 'cannot drop status of a former member') })
      }
    }
    // No publish here: the roster is in the status fingerprint, so each member's
    // once-a-second check publishes within a second, at its own phase, rather than the
    // whole group at the instant a change commits (which is when the leader is waiting
    // for acknowledgements).
  }

  /**
   * Heard from `peer` within one and a half heartbeat intervals, and still connected:
   * the group's reachability check counts such a member without pinging it. A stopped
   * host closes its connections, so it never passes; a paused one passes for at most
   * that long.
   */
  heardRecently (peer: string): boolean {
    const l = this.liveness.get(peer)
    if (l == null || l.state !== 'alive' || monotonicMs() - l.lastHeard > this.c.config.status.probeInterval * 1.5) return false
    return this.c.node.getConnections(peerIdFromString(peer)).some(c => c.status === 'open')
  }

  private heard (peer: string): void {
    const change = this.liveness.heard(peer)
    if (change != null) this.recordChange(change.peer, change.from, change.to, 0)
  }

  private evaluate (): void {
    for (const ch of this.liveness.evaluate()) this.recordChange(ch.peer, ch.from, ch.to, ch.silentMs)
  }

  private recordChange (peer: string, from: LivenessState, to: LivenessState, silentMs: number): void {
    const hostname = this.c.group.roster?.members.find(m => m.peerId === peer)?.hostname
    this.c.audit.record('liveness.changed', { peer, hostname, from, to, silentMs })
    this.events.emit({ type: 'liveness', peer, hostname: hostname ?? null, from, to, at: new Date().toISOString() })
  }
}

function groupResponse (status: GroupStatus, message = ''): GroupResponse {
  return { status, message, statuses: [], settings: [], catalog: new Uint8Array(0) }
}
