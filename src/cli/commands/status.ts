import type { Command } from 'commander'
import type { HostStatus } from '../../agent/agent.js'
import { clientFor, withCommon, type CommonOptions } from '../common.js'
import { formatDuration, formatFields, printJson } from '../output.js'

export function registerStatus (program: Command): void {
  withCommon(program.command('status'))
    .description('show this host: PeerId, hostname, addresses, version, uptime, group')
    .action(async (opts: CommonOptions) => {
      const status = await clientFor(opts).get<HostStatus>('/api/v1/status')
      if (opts.json === true) { printJson(status); return }
      process.stdout.write(formatStatus(status))
    })
}

export function formatStatus (s: HostStatus): string {
  const group = s.groupId == null
    ? 'not linked (idle)'
    : `${s.groupId} (${s.role ?? '?'}, term ${s.term ?? '?'}, roster v${s.rosterVersion ?? '?'})`
  return formatFields([
    ['PeerId', s.peerId],
    ['Hostname', s.hostname],
    ['Addresses', s.addresses],
    ['Version', s.agentVersion],
    ['Uptime', formatDuration(s.uptimeMs)],
    ['Group', group],
    ...(s.leader != null ? [['Leader', s.leader] as [string, string]] : [])
  ])
}
