import { existsSync } from 'node:fs'
import { join } from 'node:path'
import type { Command } from 'commander'
import type * as Yaml from 'yaml'
import { resolveDataDir } from '../../agent/datadir.js'
import { withCommon, type CommonOptions } from '../common.js'
import { CliError, EXIT_USAGE } from '../errors.js'
import { printJson } from '../output.js'

interface AgentOptions extends CommonOptions {
  config?: string
  listen?: string[]
  announce?: string[]
  peer?: string[]
  ui?: string
  mdns?: boolean
  hostname?: string
  logLevel?: string
  printConfig?: boolean
}

const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value]

export function registerAgent (program: Command): void {
  withCommon(program.command('agent'))
    .description('run the edgelink agent in the foreground (JSON logs on stdout)')
    .option('--config <file>', 'config file, JSON or YAML (default $EDGELINK_CONFIG, else DATA_DIR/config.yaml or config.json if present)')
    .option('--listen <multiaddr>', 'listen address (repeatable)', collect)
    .option('--announce <multiaddr>', 'address to announce instead of the listen addresses (repeatable)', collect)
    .option('--peer <multiaddr>', 'peer to dial at start, ending in /p2p/<PeerId> (repeatable)', collect)
    .option('--ui <host:port>', 'serve the Local UI on this address (not in this version yet: accepted and logged as ignored)')
    .option('--no-mdns', 'do not discover or announce on the LAN with mDNS')
    .option('--hostname <name>', 'name shown for this host (default: the machine hostname)')
    .option('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent')
    .option('--print-config', 'print the effective configuration and exit')
    .action(async (opts: AgentOptions, cmd: Command) => {
      const dataDir = resolveDataDir(opts.dataDir)
      const file = opts.config ?? process.env.EDGELINK_CONFIG ?? defaultConfigFile(dataDir)
      const flags: Record<string, unknown> = {}
      if (opts.listen != null) flags.listen = opts.listen
      if (opts.announce != null) flags.announce = opts.announce
      if (opts.peer != null) flags.peers = opts.peer
      if (opts.ui != null) flags.ui = opts.ui
      if (cmd.getOptionValueSource('mdns') === 'cli') flags.mdns = { enabled: opts.mdns !== false }
      if (opts.hostname != null) flags.hostname = opts.hostname
      if (opts.logLevel != null) flags.logLevel = opts.logLevel

      // Loaded lazily: `edgelink status` must not pay for importing libp2p.
      const { loadConfig, unknownEnvWarnings } = await import('../../agent/config.js')
      const { ConfigError } = await import('../../errors.js')
      let config
      try {
        config = loadConfig({ file, flags })
      } catch (err) {
        if (err instanceof ConfigError) {
          throw new CliError(err.message, err.sources.includes('command-line flags') ? EXIT_USAGE : 1, err.code)
        }
        throw err
      }
      const warnings = unknownEnvWarnings(process.env)
      if (opts.printConfig === true) {
        for (const w of warnings) process.stderr.write(`edgelink: warning: ${w}\n`)
        if (opts.json === true) printJson({ dataDir, configFile: file ?? null, config })
        else {
          // Loaded lazily (~45 ms): only --print-config needs a YAML writer. `yaml` is
          // CommonJS: in the esbuild bundle its dynamic import has a default export only.
          const yaml = await import('yaml') as Partial<typeof Yaml> & { default?: typeof Yaml }
          const toYaml = yaml.stringify ?? yaml.default?.stringify
          if (toYaml == null) throw new Error('the yaml module has no stringify()')
          process.stdout.write(`# data dir: ${dataDir}\n# config file: ${file ?? '(none)'}\n` + toYaml(config))
        }
        return
      }
      const { runAgent } = await import('../../agent/run.js')
      await runAgent({ dataDir, config, warnings })
    })
}

function defaultConfigFile (dataDir: string): string | undefined {
  for (const name of ['config.yaml', 'config.yml', 'config.json']) {
    const p = join(dataDir, name)
    if (existsSync(p)) return p
  }
  return undefined
}
