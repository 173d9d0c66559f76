/**
 * The audit log: one JSON line per security-relevant event (token issued, join
 * accepted or refused, unlink, leadership change) in `DATA_DIR/audit.log`, mode 0600.
 * Callers pass only identifiers; never a secret or key.
 *
 * Rotation (as logrotate's `size` + `rotate N`, done by the agent because an edge host
 * may have no logrotate): a line that would take the file past `maxBytes` first moves
 * `audit.log` to `audit.log.1`, `.1` to `.2`, and so on, dropping the oldest beyond
 * `keep`. The log then takes at most (keep + 1) × maxBytes on disk however long the
 * agent runs (liveness changes are audit lines, and a flapping host makes many). Lines
 * are never split across files. A rotation that fails (read-only or full disk) is logged
 * and the line is appended to the current file: losing the record would be worse.
 */
import { appendFileSync, renameSync, rmSync, statSync } from 'node:fs'
import type { Logger } from '../agent/logger.js'
import { errorMessage } from '../errors.js'

export type AuditEvent =
  | 'group.created' | 'group.dissolved' | 'group.rekeyed'
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

export interface AuditRotation {
  /** Rotate before a line would take the file past this size. */
  maxBytes: number
  /** Rotated files kept (audit.log.1 … audit.log.N). */
  keep: number
}

/** 16 MiB × (1 + 3): 64 MiB at most, tens of thousands of events per file. */
export const AUDIT_ROTATION: AuditRotation = { maxBytes: 16 * 1024 * 1024, keep: 3 }

export class AuditLog {
  private readonly file: string
  private readonly log: Logger
  private readonly rotation: AuditRotation
  /** Bytes in the current file, as far as this process knows (read once, then counted). */
  private size: number | undefined

  constructor (file: string, log: Logger, rotation: AuditRotation = AUDIT_ROTATION) {
    this.file = file
    this.log = log
    this.rotation = rotation
  }

  record (event: AuditEvent, fields: Record<string, unknown> = {}): void {
    const entry: AuditEntry = { time: new Date().toISOString(), event }
    for (const [k, v] of Object.entries(fields)) {
      if (!FORBIDDEN.has(k)) entry[k] = v
    }
    const line = JSON.stringify(entry) + '\n'
    const bytes = Buffer.byteLength(line)
    this.size ??= sizeOf(this.file)
    if (this.size > 0 && this.size + bytes > this.rotation.maxBytes) this.rotate()
    try {
      appendFileSync(this.file, line, { mode: 0o600 })
      this.size += bytes
    } catch (err) {
      this.log.error({ err: errorMessage(err), event }, 'cannot write the audit log')
    }
    this.log.info({ audit: event, ...entry }, `audit: ${event}`)
  }

  private rotate (): void {
    const { keep } = this.rotation
    try {
      rmSync(`${this.file}.${keep}`, { force: true })
      for (let i = keep - 1; i >= 1; i--) renameIfExists(`${this.file}.${i}`, `${this.file}.${i + 1}`)
      if (keep >= 1) renameSync(this.file, `${this.file}.1`)
      else rmSync(this.file, { force: true })
      this.size = 0
    } catch (err) {
      // Keep appending to the current file; the next line tries again.
      this.log.error({ err: errorMessage(err) }, 'cannot rotate the audit log; appending to the current file')
      this.size = sizeOf(this.file)
    }
  }
}

function sizeOf (file: string): number {
  try {
    return statSync(file).size
  } catch {
    return 0
  }
}

function renameIfExists (from: string, to: string): void {
  try {
    renameSync(from, to)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
}
