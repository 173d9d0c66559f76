import type { Command } from 'commander'
import type { HostStatus } from '../../agent/agent.js'
import type { HostStatusView } from '../../status/records.js'
import { clientFor, withCommon, type CommonOptions } from '../common.js'
import { ago, formatDuration, formatFields, printJson } from '../output.js'

type MemberStatus = HostStatusView & { liveness: string, lastHeard: string | null }

export function registerStatus (program: Command): void {
  withCommon(program.command('status'))
    .description('show this host (PeerId, addresses, version, uptime, group), or the newest status of a linked HOST')
    .argument('[host]', 'PeerId or hostname of a linked host')
    .action(async (host: string | undefined, opts: CommonOptions) => {
      const client = clientFor(opts)
      if (host != null) {
        const s = await client.get<MemberStatus>(`/api/v1/hosts/${encodeURIComponent(host)}/status`)
        if (opts.json === true) { printJson(s); return }
        process.stdout.write(formatMemberStatus(s))
        return
      }
      const status = await client.get<HostStatus>('/api/v1/status')
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

const GiB = 1024 ** 3

function formatMemberStatus (s: MemberStatus): string {
  const settings = s.settings.version === 0 ? 'none' : `v${s.settings.version} ${s.settings.state}${s.settings.message !== '' ? `: ${s.settings.message}` : ''}`
  return formatFields([
    ['Hostname', s.hostname],
    ['PeerId', s.peerId],
    ['Role', s.role],
    ['Liveness', `${s.liveness}${s.lastHeard != null ? ` (heard ${ago(Date.parse(s.lastHeard))})` : ''}`],
    ['Health', s.health + (s.healthDetail !== '' ? `: ${s.healthDetail}` : '')],
    ['Addresses', s.addresses],
    ['Version', s.agentVersion],
    ['Uptime', formatDuration(s.uptimeMs)],
    ['OS', `${s.os.release} (${s.os.platform} ${s.os.kernel}, ${s.os.arch})`],
    ['CPU', `${s.cpus} cores, load ${s.load.map(l => l.toFixed(2)).join(' ')}`],
    ['Memory', `${(s.memory.free / GiB).toFixed(1)} GiB free of ${(s.memory.total / GiB).toFixed(1)} GiB`],
    ['Disk', `${(s.disk.free / GiB).toFixed(1)} GiB free of ${(s.disk.total / GiB).toFixed(1)} GiB (data dir)`],
    ['Labels', Object.entries(s.labels).map(([k, v]) => `${k}=${v}`)],
    ['Settings', settings],
    ['Reported', `${s.at} (${ago(Date.parse(s.at))})`]
  ])
}
