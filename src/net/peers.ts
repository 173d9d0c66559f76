/**
 * Agents this host has seen: found on the LAN by mDNS, dialled because they were
 * configured, or connected to us. Kept in memory; `GET /api/v1/peers` serves it.
 */
import type { PeerId, PeerInfo, Connection } from '@libp2p/interface'
import type { EdgelinkNode } from './node.js'

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
  private started = false

  constructor (node: EdgelinkNode) {
    this.node = node
    this.self = node.peerId.toString()
  }

  start (): void {
    if (this.started) return
    this.started = true
    this.on('peer:discovery', (evt) => {
      const info = evt.detail as PeerInfo
      this.touch(info.id, 'mdns', info.multiaddrs.map(String))
    })
    this.on('connection:open', (evt) => {
      const conn = evt.detail as Connection
      this.touch(conn.remotePeer, conn.direction === 'inbound' ? 'inbound' : 'outbound', [conn.remoteAddr.toString()])
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
    this.started = false
  }

  /** Record that a peer was configured and is being dialled. */
  noteConfigured (peerId: PeerId, address: string): void {
    this.touch(peerId, 'config', [address])
  }

  list (): PeerEntry[] {
    return [...this.entries.values()]
      .map(e => ({ ...e, via: [...e.via], addresses: [...e.addresses], connected: this.isConnected(e.peerId) }))
      .sort((a, b) => a.peerId.localeCompare(b.peerId))
  }

  private isConnected (peerId: string): boolean {
    return this.node.getConnections().some(c => c.remotePeer.toString() === peerId)
  }

  private touch (peerId: PeerId, via: FoundVia, addresses: string[]): void {
    const id = peerId.toString()
    if (id === this.self) return
    let entry = this.entries.get(id)
    if (entry == null) {
      entry = { peerId: id, addresses: [], via: [], connected: false, lastSeen: Date.now() }
      this.entries.set(id, entry)
    }
    if (!entry.via.includes(via)) entry.via.push(via)
    for (const a of addresses) if (!entry.addresses.includes(a)) entry.addresses.push(a)
    entry.connected = this.isConnected(id)
    entry.lastSeen = Date.now()
  }

  private on (name: string, fn: (evt: CustomEvent) => void): void {
    this.node.addEventListener(name as never, fn as never)
    this.listeners.push([name, fn])
  }
}
