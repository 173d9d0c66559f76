/**
 * Run an agent in this process until SIGINT or SIGTERM. The first signal stops it
 * cleanly (libp2p first, store last, sockets removed); a second one forces exit.
 *
 * The signal handlers are installed before the agent starts: a signal that arrives while
 * it is starting is remembered, start is allowed to finish (or fail and undo itself), and
 * the agent is then stopped at once, so no stale pid file or socket is left behind. (A
 * signal that arrives earlier still, while the CLI is loading this module, kills the
 * process before it has created anything in the data dir.)
 */
import '../polyfill.js'
import { once } from 'node:events'
import { pino } from 'pino'
import { Agent } from './agent.js'
import type { AgentConfig } from './config.js'
import { createLogger, type Logger } from './logger.js'
import { tuneHeap } from './heap.js'
import { EdgelinkError, errorMessage } from '../errors.js'
import { CliError } from '../cli/errors.js'

export interface RunAgentOptions {
  dataDir: string
  config: AgentConfig
  /** Logged once the logger exists (e.g. an `EDGELINK_*` variable nothing reads). */
  warnings?: string[]
}

/** How long the exit path waits for buffered log lines to reach stdout. */
const LOG_DRAIN_TIMEOUT_MS = 2000

export async function runAgent (opts: RunAgentOptions): Promise<void> {
  tuneHeap()
  const log = createLogger({ level: opts.config.logLevel })
  for (const w of opts.warnings ?? []) log.warn(w)
  let agent: Agent
  try {
    agent = new Agent({ dataDir: opts.dataDir, config: opts.config, logger: log })
  } catch (err) {
    throw startError(err) // an unusable data dir: its own clear line, not "unexpected error"
  }

  process.on('unhandledRejection', (reason) => {
    // A stray rejection inside a library must not take the host's agent down.
    log.error({ err: errorMessage(reason) }, 'unhandled promise rejection')
  })

  let started = false
  let stopped = false
  let signalled: NodeJS.Signals | null = null
  let onStopRequested: (() => void) | null = null
  const stopRequested = new Promise<void>((resolve) => { onStopRequested = resolve })
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopped) return // stopped already; exiting now
    if (signalled != null) {
      log.warn({ signal }, 'second signal: forcing exit')
      forceExit(log, signal === 'SIGINT' ? 130 : 143)
      return
    }
    signalled = signal
    if (started) log.info({ signal }, 'stopping agent (send the signal again to force)')
    else log.info({ signal }, 'signal while starting: the agent stops as soon as start finishes (send the signal again to force)')
    onStopRequested?.()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  try {
    await agent.start()
    started = true
  } catch (err) {
    // Start undid what it had done; give the signals back their default action so the
    // process can be killed while the CLI prints the error and exits.
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    throw startError(err)
  }

  await stopRequested
  let exitCode = 0
  try {
    await agent.stop()
  } catch (err) {
    log.error({ err: errorMessage(err) }, 'error while stopping')
    exitCode = 1
  }
  stopped = true
  await drainLogs(log)
  // Exit here rather than returning to the CLI and waiting for the event loop to empty:
  // libp2p 3.3.x leaves a 1000 ms timer running after node.stop(), which would keep the
  // process alive for about a second after "agent stopped". Everything of ours is closed
  // by now (sockets removed, store closed, pid file gone) and the logs are flushed.
  process.exit(exitCode)
}

/** One clear line for an error that stopped the agent from starting. */
function startError (err: unknown): unknown {
  if (err instanceof EdgelinkError) return new CliError(err.message, 1, err.code)
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'EADDRINUSE') return new CliError(`a listen address is already in use (${errorMessage(err)}); stop what uses it or pass another --listen`, 1, code)
  // libp2p's transport manager lists each failed address on a line of its own:
  // "Some configured addresses failed to be listened on, ...:\n  /ip4/…/tcp/N: listen EADDRINUSE: …"
  if (err instanceof Error && err.name === 'UnsupportedListenAddressesError') {
    const failed = [...err.message.matchAll(/^\s+(\/\S+): (.*)$/gm)].map(m => ({ addr: m[1], why: m[2] }))
    if (failed.length > 0) {
      const inUse = failed.filter(f => f.why.includes('EADDRINUSE'))
      if (inUse.length > 0) {
        return new CliError(`cannot listen on ${inUse.map(f => f.addr).join(', ')}: address already in use; stop what uses it or pass another --listen`, 1, 'EADDRINUSE')
      }
      return new CliError(`cannot listen on ${failed.map(f => `${f.addr} (${f.why.replace(/\s+/g, ' ')})`).join(', ')}; check the --listen addresses`, 1, 'LISTEN_FAILED')
    }
  }
  return err
}

/** The second signal: flush what the logger holds (synchronously) and exit now. */
function forceExit (log: Logger, code: number): never {
  try { log.flush() } catch { /* exiting anyway */ }
  // pino flushes its async stdout destination synchronously on 'exit'.
  process.exit(code)
}

/**
 * Wait until the logger's stdout destination has written everything it holds. pino's
 * async destination (SonicBoom) writes with fs.write in the background; process.exit()
 * makes it flush its queue synchronously, but a write already in flight is only certain
 * to land if we wait for it ('drain'). Bounded, in case whoever reads stdout is stuck.
 */
async function drainLogs (log: Logger): Promise<void> {
  const stream = (log as unknown as Record<symbol, unknown>)[pino.symbols.streamSym] as
    { _writing?: boolean, once?: unknown } | undefined
  if (stream == null || stream._writing !== true || typeof stream.once !== 'function') return
  const timeout = AbortSignal.timeout(LOG_DRAIN_TIMEOUT_MS)
  await once(stream as unknown as NodeJS.EventEmitter, 'drain', { signal: timeout }).catch(() => {})
}
