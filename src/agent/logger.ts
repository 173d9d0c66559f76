import { pino, type Logger, type DestinationStream } from 'pino'

export type { Logger }

/** Key names whose values pino replaces with "[redacted]" wherever they appear. */
const REDACT = ['secret', '*.secret', 'token', '*.token', 'privateKey', '*.privateKey', 'groupKey', '*.groupKey', 'key', '*.key']

export interface LoggerOptions {
  level: string
  /** Name of this agent, put on every line (multi-agent tests tell agents apart by it). */
  name?: string
  destination?: DestinationStream
}

/** JSON lines on stdout (or the given destination), secrets redacted by key name. */
export function createLogger (opts: LoggerOptions): Logger {
  return pino({
    level: opts.level,
    name: opts.name,
    base: { pid: process.pid },
    redact: { paths: REDACT, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime
  }, opts.destination ?? pino.destination({ fd: 1, sync: false }))
}
