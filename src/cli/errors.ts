/** A CLI failure: one line for stderr and the exit status (1 failure, 2 usage). */
export class CliError extends Error {
  static override name = 'CliError'
  readonly exitCode: number
  readonly code?: string

  constructor (message: string, exitCode = 1, code?: string) {
    super(message)
    this.name = 'CliError'
    this.exitCode = exitCode
    this.code = code
  }
}

/** Exit status for a usage error (bad flags or arguments). */
export const EXIT_USAGE = 2
