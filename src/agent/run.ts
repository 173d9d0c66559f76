/**
 * Run an agent in this process until SIGINT or SIGTERM. The first signal stops it
 * cleanly (libp2p first, store last, sockets removed); a second one forces exit.
 */
import '../polyfill.js'
import { Agent } from './agent.js'
import type { AgentConfig } from './config.js'
import { createLogger } from './logger.js'
import { EdgelinkError, errorMessage } from '../errors.js'
import { CliError } from '../cli/errors.js'

export interface RunAgentOptions {
  dataDir: string
  config: AgentConfig
}

export async function runAgent (opts: RunAgentOptions): Promise<void> {
  const log = createLogger({ level: opts.config.logLevel })
  const agent = new Agent({ dataDir: opts.dataDir, config: opts.config, logger: log })

  process.on('unhandledRejection', (reason) => {
    // A stray rejection inside a library must not take the host's agent down.
    log.error({ err: errorMessage(reason) }, 'unhandled promise rejection')
  })

  try {
    await agent.start()
  } catch (err) {
    if (err instanceof EdgelinkError) throw new CliError(err.message, 1, err.code)
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EADDRINUSE') throw new CliError(`a listen address is already in use (${errorMessage(err)}); stop what uses it or pass another --listen`, 1, code)
    throw err
  }

  await new Promise<void>((resolve) => {
    let stopping = false
    const onSignal = (signal: NodeJS.Signals): void => {
      if (stopping) {
        log.warn({ signal }, 'second signal: forcing exit')
        log.flush()
        process.exit(signal === 'SIGINT' ? 130 : 143)
      }
      stopping = true
      log.info({ signal }, 'stopping agent (send the signal again to force)')
      agent.stop().then(resolve, (err) => {
        log.error({ err: errorMessage(err) }, 'error while stopping')
        resolve()
      })
    }
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
  })
  log.flush()
}
