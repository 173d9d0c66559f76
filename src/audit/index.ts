/**
 * The audit log: one JSON line per security-relevant event (token issued, join
 * accepted or refused, unlink, leadership change) in `DATA_DIR/audit.log`, mode 0600.
 * Callers pass only identifiers; never a secret or key.
 */
import { appendFileSync } from 'node:fs'
import type { Logger } from '../agent/logger.js'
import { errorMessage } from '../errors.js'

export type AuditEvent =
  | 'group.created' | 'group.dissolved'
  | 'token.issued' | 'token.revoked' | 'token.used'
  | 'join.accepted' | 'join.refused' | 'join.completed'
  | 'unlink' | 'unlinked'
  | 'leader.changed'
  | 'liveness.changed'
  | 'settings.issued' | 'settings.applied' | 'settings.refused'
  | 'content.added' | 'content.removed'

export interface AuditEntry {
  time: string
  event: AuditEvent
  [field: string]: unknown
}

/** Field names that must never reach the audit log, whatever a caller passes. */
const FORBIDDEN = new Set(['secret', 'token', 'key', 'groupKey', 'privateKey'])

export class AuditLog {
  private readonly file: string
  private readonly log: Logger

  constructor (file: string, log: Logger) {
    this.file = file
    this.log = log
  }

  record (event: AuditEvent, fields: Record<string, unknown> = {}): void {
    const entry: AuditEntry = { time: new Date().toISOString(), event }
    for (const [k, v] of Object.entries(fields)) {
      if (!FORBIDDEN.has(k)) entry[k] = v
    }
    try {
      appendFileSync(this.file, JSON.stringify(entry) + '\n', { mode: 0o600 })
    } catch (err) {
      this.log.error({ err: errorMessage(err), event }, 'cannot write the audit log')
    }
    this.log.info({ audit: event, ...entry }, `audit: ${event}`)
  }
}
