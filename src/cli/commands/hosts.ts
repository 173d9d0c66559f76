import type { Command } from 'commander'
import type { HostRow } from '../../group/service.js'
import type { MemberLiveness } from '../../status/service.js'
import { clientFor, withCommon, type CommonOptions } from '../common.js'
import { ago, formatTable, printJson } from '../output.js'

export function registerHosts (program: Command): void {
  withCommon(program.command('hosts'))
    .description('the linked hosts table: every member of this host\'s group')
    .action(async (opts: CommonOptions) => {
      const hosts = await clientFor(opts).get<Array<HostRow & MemberLiveness & { content?: { complete: number, total: number } }>>('/api/v1/hosts')
      if (opts.json === true) { printJson(hosts); return }
      if (hosts.length === 0) { process.stdout.write('This host is not linked. Start a group with `edgelink token create`, or join one with `edgelink link TOKEN`.\n'); return }
      process.stdout.write(formatTable(['HOSTNAME', 'ROLE', 'LIVENESS', 'HEALTH', 'SYNCED', 'PEER ID', 'ADDRESSES', 'CONNECTED', 'LAST SEEN'],
        hosts.map(h => [h.hostname + (h.self ? ' (this host)' : ''), h.role, h.liveness, h.health ?? '-', h.content == null || h.content.total === 0 ? '-' : `${h.content.complete}/${h.content.total}`, h.peerId, h.addresses.join(','), h.connected ? 'yes' : 'no', h.lastSeen == null ? 'never' : ago(Date.parse(h.lastSeen))])))
    })
}
