import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { pino } from 'pino'
import { AUDIT_ROTATION, AuditLog } from '../../src/audit/index.js'

const root = mkdtempSync(join(tmpdir(), 'el-audit-'))
afterAll(() => { rmSync(root, { recursive: true, force: true }) })

function fresh (): { dir: string, file: string } {
  const dir = mkdtempSync(join(root, 'dd-'))
  return { dir, file: join(dir, 'audit.log') }
}

function entries (file: string): Array<Record<string, unknown>> {
  if (!existsSync(file)) return []
  const text = readFileSync(file, 'utf8')
  expect(text === '' || text.endsWith('\n'), `${file} ends mid-line`).toBe(true)
  return text.split('\n').filter(Boolean).map(l => JSON.parse(l) as Record<string, unknown>)
}

describe('audit log', () => {
  it('never writes a secret field, and the file is 0600', () => {
    const { file } = fresh()
    const audit = new AuditLog(file, pino({ level: 'silent' }))
    audit.record('token.issued', { tokenId: 'abc', secret: 's3cr3t', token: 'edgelink1.xyz', groupKey: 'k', key: 'k', privateKey: 'p' })
    const [e] = entries(file)
    expect(e).toMatchObject({ event: 'token.issued', tokenId: 'abc' })
    expect(Object.keys(e).sort()).toEqual(['event', 'time', 'tokenId'])
    expect(statSync(file).mode & 0o777).toBe(0o600)
  })

  it('rotates by size: at most keep + 1 files, each under the limit, whole lines, newest in audit.log, nothing lost but the oldest', () => {
    const { dir, file } = fresh()
    const audit = new AuditLog(file, pino({ level: 'silent' }), { maxBytes: 1000, keep: 2 })
    for (let n = 0; n < 200; n++) audit.record('liveness.changed', { n, host: 'h'.repeat(n % 40) })
    expect(readdirSync(dir).sort()).toEqual(['audit.log', 'audit.log.1', 'audit.log.2'])
    const files = [`${file}.2`, `${file}.1`, file]
    for (const f of files) {
      expect(statSync(f).size, f).toBeLessThanOrEqual(1000)
      expect(statSync(f).mode & 0o777, f).toBe(0o600)
    }
    // Oldest to newest across the files: consecutive, ending with the last record.
    const ns = files.flatMap(f => entries(f).map(e => e.n as number))
    expect(ns.at(-1)).toBe(199)
    expect(ns).toEqual(ns.map((_, i) => ns[0] + i))
    expect(ns[0]).toBeGreaterThan(0) // the oldest were dropped
  })

  it('counts what a previous run left in the file', () => {
    const { dir, file } = fresh()
    writeFileSync(file, JSON.stringify({ time: 'then', event: 'group.created' }) + '\n'.padStart(950, ' '), { mode: 0o600 })
    const audit = new AuditLog(file, pino({ level: 'silent' }), { maxBytes: 1000, keep: 1 })
    audit.record('unlink', { peer: 'x' })
    expect(readdirSync(dir).sort()).toEqual(['audit.log', 'audit.log.1'])
    expect(entries(file).map(e => e.event)).toEqual(['unlink'])
    expect(entries(`${file}.1`).map(e => e.event)).toEqual(['group.created'])
  })

  it('a rotation that fails keeps the record in the current file and says so', () => {
    const { dir, file } = fresh()
    const errors: string[] = []
    const log = pino({ level: 'error' }, { write: (s: string) => { errors.push(s) } })
    const audit = new AuditLog(file, log, { maxBytes: 200, keep: 1 })
    // audit.log.1 is a non-empty directory: no rotation can replace it, whatever the user (root included).
    mkdirSync(`${file}.1`)
    writeFileSync(join(`${file}.1`, 'keep'), '')
    for (let n = 0; n < 10; n++) audit.record('join.refused', { n })
    expect(entries(file).map(e => e.n)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    expect(errors.some(e => e.includes('cannot rotate the audit log'))).toBe(true)
    expect(readdirSync(dir).sort()).toEqual(['audit.log', 'audit.log.1'])
  })

  it('defaults bound the log to 64 MiB on disk', () => {
    expect(AUDIT_ROTATION.maxBytes * (AUDIT_ROTATION.keep + 1)).toBe(64 * 1024 * 1024)
  })
})
