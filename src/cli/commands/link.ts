import type { Command } from 'commander'
import type { GroupStatusFields } from '../../group/service.js'
import { clientFor, withCommon, type CommonOptions } from '../common.js'
import { CliError } from '../errors.js'
import { printJson } from '../output.js'

export function registerLink (program: Command): void {
  withCommon(program.command('link'))
    .description('link this idle host to the group whose leader issued TOKEN')
    .argument('<token>', 'the token printed by `edgelink token create` on the leader ("-" reads it from stdin)')
    .action(async (token: string, opts: CommonOptions) => {
      const text = token === '-' ? await readStdin() : token
      // An empty token is bad input like any other malformed token: the agent says so (exit 1).
      const r = await clientFor(opts).post<GroupStatusFields & { hosts: number }>('/api/v1/link', { token: text.trim() })
      if (opts.json === true) { printJson(r); return }
      process.stdout.write(`Linked to group ${r.groupId ?? '?'} (leader ${r.leader ?? '?'}, ${r.hosts} hosts). See \`edgelink hosts\`.\n`)
    })
}

async function readStdin (): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const c of process.stdin) {
    size += (c as Buffer).length
    if (size > 100_000) throw new CliError('stdin is far larger than a token; pipe only the token')
    chunks.push(c as Buffer)
  }
  return Buffer.concat(chunks).toString('utf8')
}
