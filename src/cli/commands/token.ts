import type { Command } from 'commander'
import type { CreatedToken } from '../../group/service.js'
import type { TokenView } from '../../group/tokens.js'
import { clientFor, withCommon, type CommonOptions } from '../common.js'
import { formatDuration, formatTable, printJson } from '../output.js'

export function registerToken (program: Command): void {
  const token = program.command('token').description('issue, list and revoke join tokens (leader)')

  withCommon(token.command('create'))
    .description('issue a single-use join token; on an idle host this starts a new group led by it')
    .option('--ttl <duration>', 'lifetime, e.g. 90s, 2m, 1h (default 2m)')
    .action(async (opts: CommonOptions & { ttl?: string }) => {
      const t = await clientFor(opts).post<CreatedToken>('/api/v1/tokens', opts.ttl != null ? { ttl: opts.ttl } : {})
      if (opts.json === true) { printJson(t); return }
      process.stdout.write(`${t.token}\n`)
      process.stderr.write(`Token ${t.id} for group ${t.groupId}, single use, expires ${t.expiresAt} (in ${formatDuration(Math.max(0, Date.parse(t.expiresAt) - Date.now()))}).\nOn the host to link, run: edgelink link <token>\n`)
    })

  withCommon(token.command('list'))
    .description('list tokens issued by this leader (never their secrets)')
    .action(async (opts: CommonOptions) => {
      const list = await clientFor(opts).get<TokenView[]>('/api/v1/tokens')
      if (opts.json === true) { printJson(list); return }
      if (list.length === 0) { process.stdout.write('No tokens. Issue one with `edgelink token create`.\n'); return }
      process.stdout.write(formatTable(['ID', 'STATE', 'EXPIRES', 'FAILED PROOFS', 'USED BY'],
        list.map(t => [t.id, t.state + (t.revokedReason != null ? ` (${t.revokedReason})` : ''), t.expiresAt, String(t.failures), t.usedBy ?? '-'])))
    })

  withCommon(token.command('revoke'))
    .description('revoke a token so it can no longer be used')
    .argument('<id>', 'token id, from `edgelink token list`')
    .action(async (id: string, opts: CommonOptions) => {
      const t = await clientFor(opts).delete<TokenView>(`/api/v1/tokens/${encodeURIComponent(id)}`)
      if (opts.json === true) { printJson(t); return }
      process.stdout.write(`Token ${t.id} is ${t.state}.\n`)
    })
}
