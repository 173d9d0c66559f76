import type { Command } from 'commander'
import { clientFor, withCommon, type CommonOptions } from '../common.js'
import { printJson } from '../output.js'

export function registerUnlink (program: Command): void {
  withCommon(program.command('unlink'))
    .description('unlink HOST from the group (on the leader), or this host when HOST is omitted (on a follower)')
    .argument('[host]', 'PeerId or hostname of the follower to unlink')
    .option('--force', 'UNSAFE: remove an unreachable member without a quorum, or leave without reaching the leader')
    .action(async (host: string | undefined, opts: CommonOptions & { force?: boolean }) => {
      const r = await clientFor(opts).post<{ unlinked: string, hostname: string }>('/api/v1/unlink', { ...(host != null ? { host } : {}), ...(opts.force === true ? { force: true } : {}) })
      if (opts.json === true) { printJson(r); return }
      process.stdout.write(`Unlinked ${r.hostname} (${r.unlinked}).\n`)
    })
}
