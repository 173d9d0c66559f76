import type { Command } from 'commander'
import type { PeerEntry } from '../../net/peers.js'
import { clientFor, withCommon, type CommonOptions } from '../common.js'
import { ago, formatTable, printJson } from '../output.js'

export function registerPeers (program: Command): void {
  withCommon(program.command('peers'))
    .description('list edgelink agents seen on the LAN or connected')
    .action(async (opts: CommonOptions) => {
      const peers = await clientFor(opts).get<PeerEntry[]>('/api/v1/peers')
      if (opts.json === true) { printJson(peers); return }
      if (peers.length === 0) {
        process.stdout.write('No agents seen yet. Agents on this LAN appear here within seconds when mDNS is on; otherwise start the agent with --peer MULTIADDR.\n')
        return
      }
      process.stdout.write(formatTable(
        ['PEER ID', 'ADDRESSES', 'FOUND VIA', 'CONNECTED', 'LAST SEEN'],
        peers.map(p => [p.peerId, p.addresses.join(','), p.via.join(','), p.connected ? 'yes' : 'no', ago(p.lastSeen)])
      ))
    })
}
