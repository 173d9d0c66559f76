/**
 * Agents this host has seen: found on the LAN by mDNS, dialled because they were
 * configured, or connected to us. Kept in memory; `GET /api/v1/peers` serves it.
 */
import type { PeerId, PeerInfo, Connection } from '@libp2p/interface'
import type { EdgelinkNode } from './node.js'

/** Dialling a host found on the LAN: a LAN answers in milliseconds; a stuck dial must not pile up. */
const DISCOVERY_DIAL_TIMEOUT_MS = 5_000

/**
 * Most agents listed. Any host on the LAN can connect (or answer mDNS) under a fresh
 * PeerId each time, so without a bound the table grew for as long as one kept doing so.
 * Past it, the entry seen longest ago that is neither connected nor configured goes.
 */
export const MAX_PEER_ENTRIES = 1024

export type FoundVia = 'mdns' | 'config' | 'inbound' | 'outbound'

export interface PeerEntry {
  peerId: string
  addresses: string[]
  via: FoundVia[]
  connected: boolean
  lastSeen: number
  /** The remote agent's libp2p user agent, once identify has run. */
  agentVersion?: string
}

export class PeerTable {
  private readonly entries = new Map<string, PeerEntry>()
  private readonly node: EdgelinkNode
  private readonly self: string
  private readonly listeners: Array<[string, (evt: CustomEvent) => void]> = []
  private readonly unsubscribe: Array<() => void> = []
  private started = false

  private readonly onDialError: (peer: string, err: unknown) => void

  /**
   * @param onDialError - called when dialling a discovered agent fails (it stays listed,
   * marked not connected); the agent logs it.
   */
  constructor (node: EdgelinkNode, onDialError: (peer: string, err: unknown) => void = () => {}) {
    this.node = node
    this.self = node.peerId.toString()
    this.onDialError = onDialError
  }

  start (): void {
    if (this.started) return
    this.started = true
    // Only answers to edgelink's mDNS service tag count as "found on the LAN"; libp2p's own
    // peer:discovery also fires for peers learned through identify.
    const mdns = this.node.services.mdns
    if (mdns != null) {
      const onPeer = (evt: CustomEvent<PeerInfo>): void => { this.onMdnsPeer(evt.detail) }
      mdns.addEventListener('peer', onPeer)
      this.unsubscribe.push(() => { mdns.removeEventListener('peer', onPeer) })
    }
    this.on('connection:open', (evt) => {
      const conn = evt.detail as Connection
      // An inbound connection's remote address has the peer's ephemeral source port: not an address to list.
      const addrs = conn.direction === 'inbound' ? [] : [conn.remoteAddr.decapsulateCode(421).toString()]
      this.touch(conn.remotePeer, conn.direction === 'inbound' ? 'inbound' : 'outbound', addrs)
    })
    this.on('connection:close', (evt) => {
      const conn = evt.detail as Connection
      const entry = this.entries.get(conn.remotePeer.toString())
      if (entry != null) {
        entry.connected = this.node.getConnections(conn.remotePeer).length > 0
        entry.lastSeen = Date.now()
      }
    })
    this.on('peer:identify', (evt) => {
      const result = evt.detail as { peerId: PeerId, agentVersion?: string, listenAddrs: unknown[] }
      const entry = this.entries.get(result.peerId.toString())
      if (entry != null) {
        entry.agentVersion = result.agentVersion
        entry.lastSeen = Date.now()
      }
    })
  }

  stop (): void {
    for (const [name, fn] of this.listeners) this.node.removeEventListener(name as never, fn as never)
    this.listeners.length = 0
    for (const fn of this.unsubscribe) fn()
    this.unsubscribe.length = 0
    this.started = false
  }

  /**
   * An mDNS answer: the host's current addresses replace what we had (DHCP may have
   * moved it). Only edgelink agents answer our service tag, so dial it: that runs
   * identify (agent version) and makes `connected` meaningful. The other side dials
   * too, so expect two connections per pair.
   */
  private onMdnsPeer (info: PeerInfo): void {
    this.touch(info.id, 'mdns', info.multiaddrs.map(String), true)
    if (!this.isConnected(info.id.toString())) {
      this.node.dial(info.id, { signal: AbortSignal.timeout(DISCOVERY_DIAL_TIMEOUT_MS) }).catch(err => { this.onDialError(info.id.toString(), err) })
    }
  }

  /** Record that a peer was configured and is being dialled. */
  noteConfigured (peerId: PeerId, address: string): void {
    this.touch(peerId, 'config', [address])
  }

  list (): PeerEntry[] {
    const connected = this.connectedPeers()
    return [...this.entries.values()]
      .map(e => ({ ...e, via: [...e.via], addresses: [...e.addresses], connected: connected.has(e.peerId) }))
      .sort((a, b) => a.peerId.localeCompare(b.peerId))
  }

  private connectedPeers (): Set<string> {
    return new Set(this.node.getConnections().map(c => c.remotePeer.toString()))
  }

  /** Drop the entry seen longest ago that is neither connected nor configured, while over the bound. */
  private evict (): void {
    if (this.entries.size <= MAX_PEER_ENTRIES) return
    const connected = this.connectedPeers()
    let oldest: PeerEntry | undefined
    for (const e of this.entries.values()) {
      if (connected.has(e.peerId) || e.via.includes('config')) continue
      if (oldest == null || e.lastSeen < oldest.lastSeen) oldest = e
    }
    if (oldest != null) this.entries.delete(oldest.peerId)
  }

  private isConnected (peerId: string): boolean {
    return this.node.getConnections().some(c => c.remotePeer.toString() === peerId)
  }

  private touch (peerId: PeerId, via: FoundVia, addresses: string[], replace = false): void {
    const id = peerId.toString()
    if (id === this.self) return
    let entry = this.entries.get(id)
    if (entry == null) {
      entry = { peerId: id, addresses: [], via: [], connected: false, lastSeen: Date.now() }
      this.entries.set(id, entry)
      this.evict()
    }
    if (!entry.via.includes(via)) entry.via.push(via)
    if (replace) entry.addresses = addresses.slice(0, 16)
    else for (const a of addresses) if (!entry.addresses.includes(a) && entry.addresses.length < 16) entry.addresses.push(a)
    entry.connected = this.isConnected(id)
    entry.lastSeen = Date.now()
  }

  private on (name: string, fn: (evt: CustomEvent) => void): void {
    this.node.addEventListener(name as never, fn as never)
    this.listeners.push([name, fn])
  }
}
