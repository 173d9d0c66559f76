/**
 * The libp2p node: TCP, Noise, yamux, identify, ping, mDNS (with edgelink's own
 * service tag, so only edgelink agents are found) and gossipsub.
 */
import '../polyfill.js'
import { createLibp2p, type Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify, type Identify } from '@libp2p/identify'
import { ping, type Ping } from '@libp2p/ping'
import { mdns } from '@libp2p/mdns'
import { gossipsub, type GossipSub } from '@libp2p/gossipsub'
import type { PeerDiscovery, PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { AgentConfig } from '../agent/config.js'
import { AGENT_VERSION, USER_AGENT } from '../version.js'

export interface EdgelinkServices extends Record<string, unknown> {
  identify: Identify
  ping: Ping
  pubsub: GossipSub
  /** Present when mDNS is on; a service (not a plain peerDiscovery entry) so its own events can be told apart. */
  mdns?: PeerDiscovery
}

export type EdgelinkNode = Libp2p<EdgelinkServices>

/**
 * Gossipsub tuned for a LAN group of a handful to a few dozen hosts:
 * - mesh degree D=2 (Dlo 1, Dhi 3, Dout 0, Dlazy 3; defaults 6/4/12/2/6): flood publishing
 *   (below) already delivers a host's own messages to every member in one hop, so the
 *   mesh only relays for members the first copy missed, and every relayed copy is a
 *   duplicate everyone else pays for (an encryption, a write, a read, a decryption). In a
 *   group of 10 on one 2-core machine (10 libp2p nodes, 1.2 KB messages, 200 messages)
 *   a status change cost 23 ms of CPU across the group with D=3 and 15–17 ms with D=2;
 *   D=1 saved nothing more and leaves a mesh of disjoint pairs. Dout (outbound mesh
 *   peers, against eclipse attacks) means nothing in a group whose members are all
 *   authenticated and dialled by each other. Gossip (IHAVE to Dlazy peers every
 *   heartbeat) and anti-entropy pulls repair anything a member missed;
 * - IDONTWANT (gossipsub 1.2) only for messages of 16 KiB or more (default 512 bytes):
 *   a member sends it to its mesh peers when a message arrives, to spare the relayed
 *   copy. A status record is about 1.3 KB, so the IDONTWANT frame costs as much as the
 *   copy it spares, and flood publishing means most copies race it anyway: in the same
 *   measurement it cost 4 ms of the 23. A catalog record can be larger, and there it pays;
 * - heartbeat 700 ms (default 1 s) repairs the mesh quickly after a host returns;
 * - flood publishing on: our own messages go to every subscribed peer at once, so
 *   a status change is seen in one round trip, not after mesh gossip;
 * - publishing with zero topic peers allowed: a group of one still "publishes".
 * - a fast message id (sender + seqno, the same identity StrictSign's message id uses):
 *   without one, gossipsub checks the signature of every duplicate before it notices
 *   the duplicate, and in a group of 10 each message arrives up to D times. A forged
 *   copy never enters the cache (it is filled only after the signature verified).
 * Signing and topic validation are configured by the group service (StrictSign).
 */
export const GOSSIP_HEARTBEAT_MS = 700
export const GOSSIP_IDONTWANT_MIN_BYTES = 16 * 1024

/**
 * A yamux stream's receive window grows up to this (default 16 MiB). A receiver whose
 * CPU is the bottleneck (hashing, decrypting) otherwise lets each content stream park
 * up to 16 MiB in its memory; 1 MiB still covers a LAN's bandwidth-delay product many
 * times (10 Gbit/s × 0.5 ms is 625 KB) and keeps the window under the stream's 4 MiB
 * read-buffer limit (DESIGN.md traps). Measured against 2 MiB, three runs each: the
 * receiver's RSS growth during a 2 GiB fetch fell from 61–64 to 56–60 MiB, with no
 * difference in throughput beyond this machine's noise.
 */
export const YAMUX_MAX_STREAM_WINDOW = 1024 * 1024

export async function createNode (config: AgentConfig, privateKey: PrivateKey): Promise<EdgelinkNode> {
  // The mDNS name must be unique and short: @libp2p/mdns ignores answers whose name starts with
  // its own (so "h1" would never see "h10") and refuses names of 64 characters or more.
  const peerName = peerIdFromPrivateKey(privateKey).toString()
  const mdnsService = config.mdns.enabled
    ? { mdns: mdns({ serviceTag: config.mdns.serviceTag, interval: config.mdns.interval, peerName }) }
    : {}
  return await createLibp2p<EdgelinkServices>({
    privateKey,
    start: false,
    addresses: { listen: config.listen, announce: config.announce },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ streamOptions: { maxStreamWindowSize: YAMUX_MAX_STREAM_WINDOW } })],
    nodeInfo: { name: 'edgelink', version: AGENT_VERSION, userAgent: USER_AGENT },
    // libp2p's connection monitor pings every connection on a new stream (open, negotiate,
    // close) every pingInterval (10 s by default, 30 s here before), all of a host's
    // connections in the same instant; members started together stay in step, so a group of
    // 10 opened some 150 streams within a few seconds, and a status change that met them
    // waited behind them (in the 10-host lab, p99 81–249 ms with it, 47–85 ms without it and
    // with the staggered timers of src/util/timers.ts). It is off: members' connections are watched
    // every second by the heartbeats (src/status/heartbeat.ts), which close a silent one. A
    // connection to a host outside the group (rare: hosts connect to members, and to a leader
    // to link) that dies without a FIN is reset when TCP gives up on yamux's keepalive pings
    // (every 30 s) instead of at the next monitor ping.
    connectionMonitor: { enabled: false },
    connectionManager: {
      maxConnections: config.net.maxConnections,
      allow: config.net.allow
    },
    services: {
      ...(mdnsService as Record<string, never>),
      identify: identify(),
      // Liveness probes and quorum checks ping the same members at once; one stream each (the default) refuses the second.
      ping: ping({ maxOutboundStreams: 4, maxInboundStreams: 8 }),
      pubsub: gossipsub({
        allowPublishToZeroTopicPeers: true,
        floodPublish: true,
        D: 2,
        Dlo: 1,
        Dhi: 3,
        Dout: 0,
        Dscore: 1,
        Dlazy: 3,
        idontwantMinDataSize: GOSSIP_IDONTWANT_MIN_BYTES,
        heartbeatInterval: GOSSIP_HEARTBEAT_MS,
        emitSelf: false,
        fastMsgIdFn
      })
    }
  })
}

/** gossipsub's duplicate check before signature verification: sender and seqno. */
export function fastMsgIdFn (m: { from?: Uint8Array, seqno?: Uint8Array }): string {
  if (m.from == null || m.seqno == null) return 'unsigned' // never cached: StrictSign refuses it first
  return `${Buffer.from(m.from.buffer, m.from.byteOffset, m.from.byteLength).toString('base64')}/${Buffer.from(m.seqno.buffer, m.seqno.byteOffset, m.seqno.byteLength).toString('base64')}`
}
