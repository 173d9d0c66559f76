import type { Command } from 'commander'
import type { SettingsView } from '../../settings/service.js'
import { clientFor, withCommon, type CommonOptions } from '../common.js'
import { CliError, EXIT_USAGE } from '../errors.js'
import { formatFields, printJson } from '../output.js'

/** Names JSON objects treat specially; the agent's API refuses bodies that use them. */
const RESERVED_KEYS = new Set(['__proto__', 'constructor', 'prototype'])

export function registerSettings (program: Command): void {
  const settings = program.command('settings').description('host settings, applied on the target by its settings hook')

  withCommon(settings.command('set'))
    .description('set settings on HOST (leader only): a signed, versioned change the host applies and reports')
    .argument('<host>', 'PeerId or hostname')
    .argument('<pairs...>', 'KEY=VALUE ...')
    .action(async (host: string, pairs: string[], opts: CommonOptions) => {
      // A prototype-free object: a key such as __proto__ is a key like any other (the agent
      // then accepts or refuses it by its own rule), not silently dropped.
      const values: Record<string, string> = Object.create(null) as Record<string, string>
      for (const p of pairs) {
        const eq = p.indexOf('=')
        if (eq <= 0) throw new CliError(`"${p.slice(0, 80)}" is not KEY=VALUE`, EXIT_USAGE)
        const key = p.slice(0, eq)
        if (RESERVED_KEYS.has(key)) throw new CliError(`"${key}" cannot be a setting name (it is reserved); choose another`, EXIT_USAGE)
        values[key] = p.slice(eq + 1)
      }
      const r = await clientFor(opts).post<SettingsView>('/api/v1/settings', { host, settings: values })
      if (opts.json === true) { printJson(r); return }
      process.stdout.write(`Settings v${r.version} sent to ${r.hostname}; it reports: ${r.state.state}. Follow with \`edgelink settings show ${r.hostname}\`.\n`)
    })

  withCommon(settings.command('show'))
    .description('show the newest settings of HOST (default: this host) and whether they are applied')
    .argument('[host]', 'PeerId or hostname')
    .action(async (host: string | undefined, opts: CommonOptions) => {
      if (host === '') throw new CliError('HOST is empty; give a PeerId or hostname (see `edgelink hosts`), or leave it out for this host', EXIT_USAGE)
      const r = await clientFor(opts).get<SettingsView>(`/api/v1/settings${host != null ? `?host=${encodeURIComponent(host)}` : ''}`)
      if (opts.json === true) { printJson(r); return }
      process.stdout.write(formatFields([
        ['Host', `${r.hostname} (${r.peerId})`],
        ['Version', r.version === 0 ? 'none set' : String(r.version)],
        ['Settings', Object.entries(r.settings).map(([k, v]) => `${k}=${v}`)],
        ['State', `${r.state.state}${r.state.message !== '' ? `: ${r.state.message}` : ''}`],
        ['Issued', r.issuedAt != null ? `${r.issuedAt} by ${r.issuer ?? '?'}` : '-']
      ]))
    })
}
