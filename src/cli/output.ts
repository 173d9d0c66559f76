/** Printing for the CLI: one JSON document with --json, human tables otherwise. */
import { formatDuration } from '../util/duration.js'
import { printable } from '../util/printable.js'

export function printJson (value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n')
}

/** A plain-text table with a header row; columns padded to their widest cell. */
export function formatTable (header: string[], rows: string[][]): string {
  // Cells come from the network (names, hostnames, errors): control and invisible format
  // characters are shown escaped, never sent to the terminal as they are.
  rows = rows.map(r => r.map(printable))
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map(r => (r[i] ?? '').length)))
  const line = (cells: string[]): string => cells.map((c, i) => i === cells.length - 1 ? c : c.padEnd(widths[i])).join('  ').trimEnd()
  return [line(header), ...rows.map(line)].join('\n') + '\n'
}

/** Key/value lines: `Key   value`, lists continued on following lines. */
export function formatFields (fields: Array<[string, string | string[]]>): string {
  const width = Math.max(...fields.map(([k]) => k.length))
  const out: string[] = []
  for (const [k, v] of fields) {
    const values = Array.isArray(v) ? (v.length === 0 ? ['-'] : v) : [v]
    values.forEach((val, i) => out.push(`${(i === 0 ? k : '').padEnd(width)}  ${printable(val)}`))
  }
  return out.join('\n') + '\n'
}

export function ago (ms: number, now = Date.now()): string {
  const d = Math.max(0, now - ms)
  return d < 1000 ? 'just now' : `${formatDuration(d)} ago`
}

export { formatDuration }
