/**
 * Errors a person can act on. Every error carries a stable `code` (used in API
 * responses and tests) and a message that says what happened and what to do next.
 * Messages never contain secrets.
 */
export class EdgelinkError extends Error {
  static override name = 'EdgelinkError'
  /** Stable machine-readable code, e.g. `CONFIG_INVALID`. */
  readonly code: string
  /** HTTP status the local API answers with. */
  readonly status: number

  constructor (message: string, code = 'INTERNAL', status = 500, options?: ErrorOptions) {
    super(message, options)
    this.name = (this.constructor as typeof EdgelinkError).name
    this.code = code
    this.status = status
  }
}

export class ConfigError extends EdgelinkError {
  static override name = 'ConfigError'
  /** Where the offending values came from (`command-line flags`, `config file X`, ...). */
  readonly sources: string[]
  constructor (message: string, sources: string[] = []) {
    super(message, 'CONFIG_INVALID', 400)
    this.sources = sources
  }
}

export class IdentityError extends EdgelinkError {
  static override name = 'IdentityError'
  constructor (message: string, options?: ErrorOptions) { super(message, 'IDENTITY_INVALID', 500, options) }
}

export class DataDirLockedError extends EdgelinkError {
  static override name = 'DataDirLockedError'
  constructor (message: string) { super(message, 'DATA_DIR_LOCKED', 409) }
}

export class StoreError extends EdgelinkError {
  static override name = 'StoreError'
  constructor (message: string, options?: ErrorOptions) { super(message, 'STORE_ERROR', 500, options) }
}

export class NotFoundError extends EdgelinkError {
  static override name = 'NotFoundError'
  constructor (message: string, code = 'NOT_FOUND') { super(message, code, 404) }
}

export class BadRequestError extends EdgelinkError {
  static override name = 'BadRequestError'
  constructor (message: string, code = 'BAD_REQUEST') { super(message, code, 400) }
}

/** Render any thrown value as a one-line message without a stack trace. */
export function errorMessage (err: unknown): string {
  if (err instanceof Error) return err.message
  return String(err)
}
