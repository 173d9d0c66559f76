import type { Command } from 'commander'
import { clientFor, withCommon, type CommonOptions } from '../common.js'
import { printJson } from '../output.js'

export function registerLeader (program: Command): void {
  const leader = program.command('leader').description('leadership of this host\'s group')
  withCommon(leader.command('relinquish'))
    .description('hand leadership to a follower (--to), or dissolve a group of one')
    .option('--to <host>', 'PeerId or hostname of the follower that becomes leader')
    .action(async (opts: CommonOptions & { to?: string }) => {
      const r = await clientFor(opts).post<{ leader: string | null, term: number | null, dissolved: boolean }>('/api/v1/leader/relinquish', opts.to != null ? { to: opts.to } : {})
      if (opts.json === true) { printJson(r); return }
      process.stdout.write(r.dissolved ? 'The group of one was dissolved; this host is idle.\n' : `Leadership handed to ${r.leader ?? '?'} (term ${r.term ?? '?'}).\n`)
    })
}
