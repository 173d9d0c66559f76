/**
 * The peer table lists agents seen on the LAN. Any host can connect under a fresh PeerId
 * each time, so the table is bounded: past MAX_PEER_ENTRIES the entry seen longest ago
 * that is neither connected nor configured goes. The node here is an EventTarget with the
 * three members the table reads (a real node with over a thousand connections is out of
 * reach in a unit test; test/integration runs the table on real nodes).
 */
import { describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { pino } from 'pino'
import { MAX_LAST_SEEN, MembershipSync } from '../../src/group/sync.js'
import { testConfig } from '../helpers/agents.js'
import type { PeerId } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { MAX_PEER_ENTRIES, PeerTable } from '../../src/net/peers.js'
import type { EdgelinkNode } from '../../src/net/node.js'

async function newPeer (): Promise<PeerId> {
  return peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
}

describe('PeerTable', () => {
  it('stays within MAX_PEER_ENTRIES under a stream of new PeerIds, keeping connected and configured peers', async () => {
    const events = new EventTarget()
    const open: Array<{ remotePeer: PeerId }> = []
    const self = await newPeer()
    const node = Object.assign(events, { peerId: self, getConnections: () => open, services: {} }) as unknown as EdgelinkNode
    const table = new PeerTable(node)
    table.start()
    const connect = (peer: PeerId): void => {
      const conn = { remotePeer: peer, direction: 'inbound', remoteAddr: multiaddr('/ip4/127.0.0.1/tcp/1') }
      events.dispatchEvent(new CustomEvent('connection:open', { detail: conn }))
    }
    const configured = await newPeer()
    table.noteConfigured(configured, '/ip4/127.0.0.1/tcp/4100')
    const member = await newPeer()
    open.push({ remotePeer: member })
    connect(member)
    // A neighbour reconnecting under fresh keys, each connection gone again at once.
    for (let i = 0; i < MAX_PEER_ENTRIES + 200; i++) connect(await newPeer())
    const listed = table.list()
    expect(listed.length).toBe(MAX_PEER_ENTRIES)
    const ids = new Set(listed.map(e => e.peerId))
    expect(ids.has(configured.toString())).toBe(true)
    expect(ids.has(member.toString())).toBe(true)
    expect(listed.find(e => e.peerId === member.toString())?.connected).toBe(true)
    table.stop()
  })
})

describe('MembershipSync: when connections to members were last seen', () => {
  it('stays within MAX_LAST_SEEN under a stream of new PeerIds, and keeps the members\' times', async () => {
    const node = Object.assign(new EventTarget(), { peerId: await newPeer(), getConnections: () => [], services: {} }) as unknown as EdgelinkNode
    const member = (await newPeer()).toString()
    const sync = new MembershipSync({
      node,
      config: testConfig('t'),
      log: pino({ level: 'silent' }),
      self: node.peerId.toString(),
      membership: () => undefined,
      isMemberPeer: (p) => p === member,
      wasMember: () => false,
      adopt: async () => 'idle'
    })
    sync.start()
    try {
      const event = (name: string, peer: PeerId): void => { node.dispatchEvent(new CustomEvent(name, { detail: { remotePeer: peer } })) }
      // A joiner connects before it is a member: its time is kept.
      event('connection:open', peerIdFromString(member))
      for (let i = 0; i < MAX_LAST_SEEN + 100; i++) {
        const p = await newPeer()
        event('connection:open', p)
        event('connection:close', p)
      }
      const kept = (sync as unknown as { lastSeen: Map<string, number> }).lastSeen
      expect(kept.size).toBeLessThanOrEqual(MAX_LAST_SEEN)
      expect(sync.seenAt(member)).toBeTypeOf('number')
    } finally {
      sync.stop()
    }
  })
})
