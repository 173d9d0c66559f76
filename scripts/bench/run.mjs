#!/usr/bin/env node
/**
 * edgelink benchmark harness: `npm run bench [-- options] [name...]`, or
 * `node scripts/bench/run.mjs [options] [name...]` (default: every module).
 *
 *   --json        print one JSON document on stdout (progress still goes to stderr)
 *   --quick       shorter waits and fewer repetitions, for a quick look; rows say so
 *   --runs N      repetitions per timed figure (overrides each module's default)
 *   --check       exit 1 if any figure is over its budget (default: report only)
 *   --list        list the benchmark modules and exit
 *   --KEY=VALUE   module-specific option, handed to modules in ctx.options
 *
 * Project rule: speed is measured here, not in timed tests. Every figure is printed next
 * to a baseline measured in the same run, with the ratio; machines are shared and noisy,
 * so modules report medians (and percentiles), never single samples or means.
 * Benchmarks run the built CLI (`bin/edgelink` → dist/); run `npm run build` first.
 *
 * ## Module contract
 *
 * A benchmark is `scripts/bench/<name>.mjs` (files starting with `_` are helpers, e.g.
 * `_lib.mjs`, and are not run). It exports:
 *
 *   export const description = 'one line shown by --list'
 *   export async function run (ctx) { ...; return rows }
 *
 * `ctx` is `{ quick, runs, options, log }`:
 *   quick    boolean, --quick was given: shorten waits, and say so in the row's `note`
 *   runs     number | undefined, --runs N; a module uses `ctx.runs ?? itsDefault`
 *   options  { KEY: 'VALUE' } from --KEY=VALUE flags
 *   log(s)   progress line on stderr (never stdout: --json output must stay clean)
 *
 * `run` returns an array of rows, one per figure:
 *
 *   figure         string   what was measured, e.g. 'agent start → API ready (median)'
 *   value          number   the measurement (a median or percentile of n samples)
 *   unit           string   'ms', 'MiB', 'MiB/s', ...; baselineValue and budget use the same unit
 *   baseline       string | null   what the same-run baseline is, e.g. 'node -e ""'
 *   baselineValue  number | null   the baseline, measured in this run, same statistic
 *   ratio          number | null   value / baselineValue (filled in by run.mjs if omitted)
 *   budget         number | null   upper bound from the issue (value ≤ budget passes)
 *   pass           boolean | null  (filled in by run.mjs from budget if omitted; null = no budget)
 *   n              number   (optional) samples behind the value
 *   note           string   (optional) anything a reader needs: spread, p90, --quick, ...
 *
 * For a figure where bigger is better (throughput), set `pass` yourself and say so in `note`.
 * Anything a module spawns or creates must go through `_lib.mjs` (spawnTracked, startAgent,
 * tempDir) so that run.mjs can stop it on success, error, SIGINT and SIGTERM. Agents only
 * ever listen and dial on 127.0.0.1, with mDNS off (startAgent does this).
 * A module that throws is reported as failed; the other modules still run; exit status 1.
 */
import { existsSync, readdirSync, statSync } from 'node:fs'
import { execFileSync } from 'node:child_process'
import { cpus, loadavg } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { ROOT, cleanupAll, cleanupAllSync, liveChildren } from './_lib.mjs'

const HERE = dirname(fileURLToPath(import.meta.url))

function usage (msg) {
  process.stderr.write(`bench: ${msg}\n${HELP}`)
  process.exit(2)
}

function parseArgs (argv) {
  const a = { json: false, quick: false, check: false, list: false, runs: undefined, options: {}, names: [] }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '--json') a.json = true
    else if (arg === '--quick') a.quick = true
    else if (arg === '--check') a.check = true
    else if (arg === '--list') a.list = true
    else if (arg === '-h' || arg === '--help') {
      process.stdout.write(HELP)
      process.exit(0)
    } else if (arg === '--runs' || arg.startsWith('--runs=')) {
      const v = arg.includes('=') ? arg.slice(7) : argv[++i]
      const n = Number(v)
      if (!Number.isInteger(n) || n < 1) usage(`--runs needs a positive integer, got ${JSON.stringify(v)}`)
      a.runs = n
    } else if (/^--[a-z][\w-]*=/i.test(arg)) {
      const eq = arg.indexOf('=')
      a.options[arg.slice(2, eq)] = arg.slice(eq + 1)
    } else if (arg.startsWith('-')) usage(`unknown option ${arg}`)
    else a.names.push(arg)
  }
  return a
}

const HELP = `usage: node scripts/bench/run.mjs [options] [name...]   (default: every module; --list shows them)
  --json        one JSON document on stdout (progress goes to stderr)
  --quick       shorter waits, fewer repetitions (rows say so)
  --runs N      repetitions per timed figure
  --check       exit 1 if a figure is over its budget
  --list        list benchmark modules
  --KEY=VALUE   module-specific option (see the comment at the top of each module)
`

function discover () {
  return readdirSync(HERE)
    .filter(f => f.endsWith('.mjs') && f !== 'run.mjs' && !f.startsWith('_'))
    .map(f => basename(f, '.mjs'))
    .sort()
}

/** Newest mtime of any file under dir (recursive), with its path. */
function newest (dir) {
  let best = { mtime: 0, path: null }
  for (const ent of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, ent.name)
    if (ent.isDirectory()) {
      const b = newest(p)
      if (b.mtime > best.mtime) best = b
    } else {
      const m = statSync(p).mtimeMs
      if (m > best.mtime) best = { mtime: m, path: p }
    }
  }
  return best
}

function checkBuilt () {
  const main = join(ROOT, 'dist', 'cli', 'main.js')
  if (!existsSync(main)) {
    process.stderr.write(`bench: ${main} is missing: the CLI is not built. Run \`npm run build\` in ${ROOT}, then run the benchmarks again.\n`)
    process.exit(1)
  }
  const src = join(ROOT, 'src')
  if (existsSync(src)) {
    const s = newest(src)
    const builtAt = statSync(main).mtimeMs
    if (s.path != null && s.mtime > builtAt + 1000) {
      process.stderr.write(`bench: warning: ${s.path.slice(ROOT.length + 1)} is newer than dist/; these figures are for the last build (run \`npm run build\` to measure the current source)\n`)
    }
  }
}

function gitCommit () {
  try {
    const rev = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
    const dirty = execFileSync('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() !== ''
    return dirty ? `${rev}+dirty-src` : rev
  } catch { return null }
}

function normaliseRow (row, name) {
  const bad = (why) => { throw new Error(`module ${name} returned a bad row (${why}): ${JSON.stringify(row)}`) }
  if (row == null || typeof row !== 'object') bad('not an object')
  if (typeof row.figure !== 'string' || row.figure === '') bad('figure')
  if (typeof row.value !== 'number' || !Number.isFinite(row.value)) bad('value')
  if (typeof row.unit !== 'string') bad('unit')
  const baselineValue = typeof row.baselineValue === 'number' && Number.isFinite(row.baselineValue) ? row.baselineValue : null
  const budget = typeof row.budget === 'number' && Number.isFinite(row.budget) ? row.budget : null
  const ratio = typeof row.ratio === 'number' ? row.ratio : (baselineValue != null && baselineValue !== 0 ? row.value / baselineValue : null)
  const pass = typeof row.pass === 'boolean' ? row.pass : (budget != null ? row.value <= budget : null)
  const r3 = (x) => x == null ? null : Math.round(x * 1000) / 1000
  return { ...row, value: r3(row.value), baseline: row.baseline ?? null, baselineValue: r3(baselineValue), ratio: r3(ratio), budget, pass }
}

// ---------------------------------------------------------------- printing

function fmtNum (v) {
  if (v == null) return '-'
  const a = Math.abs(v)
  if (a >= 100) return v.toFixed(0)
  if (a >= 10) return v.toFixed(1)
  return v.toFixed(2)
}
const withUnit = (v, unit) => v == null ? '-' : `${fmtNum(v)} ${unit}`
const fmtRatio = (r) => r == null ? '-' : `${r >= 10 ? r.toFixed(1) : r.toFixed(2)}x`
const fmtPass = (p) => p == null ? '-' : (p ? 'ok' : 'OVER')

function table (rows) {
  const header = ['figure', 'value', 'baseline', 'baseline value', 'ratio', 'budget', 'pass', 'n', 'note']
  const right = new Set([1, 3, 4, 5, 7])
  const cells = rows.map(r => [
    r.figure, withUnit(r.value, r.unit), r.baseline ?? '-', withUnit(r.baselineValue, r.unit), fmtRatio(r.ratio),
    r.budget == null ? '-' : `≤ ${withUnit(r.budget, r.unit)}`, fmtPass(r.pass), r.n == null ? '' : String(r.n), r.note ?? ''
  ])
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map(c => c[i].length)))
  const line = (c) => c.map((s, i) => i === c.length - 1 ? s : (right.has(i) ? s.padStart(widths[i]) : s.padEnd(widths[i]))).join('  ').trimEnd()
  return [line(header), line(widths.map(w => '-'.repeat(w))), ...cells.map(line)].join('\n') + '\n'
}

// ---------------------------------------------------------------- main

async function main () {
  const args = parseArgs(process.argv.slice(2))
  const all = discover()
  if (args.list) {
    for (const name of all) {
      const mod = await import(pathToFileURL(join(HERE, `${name}.mjs`)).href)
      process.stdout.write(`${name.padEnd(12)} ${mod.description ?? ''}\n`)
    }
    return 0
  }
  const unknown = args.names.filter(n => !all.includes(n))
  if (unknown.length > 0) usage(`no benchmark named ${unknown.join(', ')} (have: ${all.join(', ')})`)
  const names = args.names.length > 0 ? args.names : all
  checkBuilt()

  const env = {
    startedAt: new Date().toISOString(),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? null,
    loadavg: loadavg().map(l => Number(l.toFixed(2))),
    commit: gitCommit(),
    quick: args.quick,
    runs: args.runs ?? null,
    options: args.options
  }
  const log = (s) => process.stderr.write(`bench: ${s}\n`)
  log(`node ${env.node}, ${env.cpus} CPUs, load ${env.loadavg.join(' ')}, commit ${env.commit ?? '?'}${args.quick ? ', --quick' : ''}`)
  if (!args.json) {
    process.stdout.write(`edgelink benchmarks — ${env.startedAt}, node ${env.node}, ${env.platform}, ${env.cpus} × ${env.cpuModel}, load ${env.loadavg.join(' ')}, commit ${env.commit ?? '?'}${args.quick ? ', QUICK' : ''}\n`)
    process.stdout.write('Values are medians unless the figure says otherwise; ratio = value / baseline measured in this run.\n')
  }

  const results = []
  let failed = false
  for (const name of names) {
    const t0 = Date.now()
    const ctx = { quick: args.quick, runs: args.runs, options: args.options, log: (s) => log(`[${name}] ${s}`) }
    const result = { module: name, rows: [], error: null, seconds: 0 }
    try {
      const mod = await import(pathToFileURL(join(HERE, `${name}.mjs`)).href)
      if (typeof mod.run !== 'function') throw new Error(`${name}.mjs does not export run(ctx)`)
      const rows = await mod.run(ctx)
      if (!Array.isArray(rows)) throw new Error(`${name}.run() did not return an array of rows`)
      result.rows = rows.map(r => normaliseRow(r, name))
    } catch (err) {
      failed = true
      result.error = err instanceof Error ? (err.stack ?? err.message) : String(err)
      log(`[${name}] FAILED: ${err instanceof Error ? err.message : String(err)}`)
    } finally {
      await cleanupAll()
    }
    result.seconds = Math.round((Date.now() - t0) / 100) / 10
    results.push(result)
    if (!args.json) {
      process.stdout.write(`\n## ${name} (${result.seconds} s)\n`)
      if (result.rows.length > 0) process.stdout.write(table(result.rows))
      if (result.error != null) process.stdout.write(`FAILED: ${result.error.split('\n')[0]}\n`)
    }
  }

  const over = results.flatMap(r => r.rows.filter(row => row.pass === false).map(row => `${r.module}: ${row.figure}`))
  if (args.json) {
    process.stdout.write(JSON.stringify({ env, results }, null, 2) + '\n')
  } else if (over.length > 0) {
    process.stdout.write(`\nOver budget: ${over.join('; ')}\n`)
  }
  if (failed) return 1
  if (args.check && over.length > 0) return 1
  return 0
}

let interrupted = false
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    if (interrupted) { cleanupAllSync(); process.exit(sig === 'SIGINT' ? 130 : 143) }
    interrupted = true
    process.stderr.write(`\nbench: ${sig}: stopping ${liveChildren()} child process(es) and removing temp dirs\n`)
    cleanupAll().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143))
  })
}
process.on('exit', cleanupAllSync)

main().then(
  (code) => { process.exitCode = code },
  async (err) => {
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
    await cleanupAll()
    process.exitCode = 1
  }
)
