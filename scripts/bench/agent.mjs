/**
 * Issue 2's budgets for a single agent:
 *   - agent start → API ready          ≤ 1 s    (fresh and reused data dirs; baseline: `node -e ""`)
 *   - idle RSS after 30 s              ≤ 80 MiB (baseline: an idle bare node)
 *   - CLI `status --json` round trip   ≤ 300 ms (baselines: `node -e ""`, and the raw API call)
 *
 * Options: --only=start,rss,cli (a subset), --rss-wait=SECONDS (default 30; 5 with --quick),
 * --bin=PATH (measure another build's bin/edgelink, e.g. a bundled one, for an A/B comparison).
 * Baselines and measurements are interleaved sample by sample, so load on a shared machine
 * hits both alike.
 */
import { pathToFileURL } from 'node:url'
import { existsSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  BIN, NODE, ROOT, median, percentile, spread, readRss, spawnTracked, startAgent, stopChild,
  tempDir, timeApiGet, timeBareNode, timeNode
} from './_lib.mjs'

export const description = 'issue 2: agent start → API ready, idle RSS, CLI status round trip'

const BARE = 'node -e "" start+exit'
const PARTS = ['start', 'rss', 'cli']

export async function run (ctx) {
  const only = ctx.options.only != null ? ctx.options.only.split(',') : PARTS
  const bad = only.filter(p => !PARTS.includes(p))
  if (bad.length > 0) throw new Error(`--only takes ${PARTS.join(',')}; got ${bad.join(',')}`)
  const bin = ctx.options.bin != null ? resolve(ctx.options.bin) : BIN
  if (!existsSync(bin)) throw new Error(`--bin: no such file ${bin}`)
  if (bin !== BIN) ctx.log(`measuring ${bin}`)
  ctx = { ...ctx, bin }
  const rows = []
  if (only.includes('start')) rows.push(...await startToReady(ctx))
  if (only.includes('rss')) rows.push(...await idleRss(ctx))
  if (only.includes('cli')) rows.push(...await cliRoundTrip(ctx))
  return rows
}

const p90note = (xs) => `p90 ${percentile(xs, 90).toFixed(0)}, range ${spread(xs)}`

// ---------------------------------------------------------------- start → API ready

async function startToReady (ctx) {
  const n = ctx.runs ?? (ctx.quick ? 3 : 7)
  const reusedDir = tempDir()
  ctx.log(`start → API ready: warm-up, then ${n} × (node -e "", fresh data dir, reused data dir)`)
  // Warm-up (not counted): page cache for node_modules, and the reused dir gets its key and store.
  await timeBareNode()
  await (await startAgent({ bin: ctx.bin, dataDir: reusedDir })).stop()

  const bare = []; const fresh = []; const reused = []; const stops = []; const badExits = []
  for (let i = 0; i < n; i++) {
    bare.push(await timeBareNode())
    for (const [dir, into] of [[tempDir(), fresh], [reusedDir, reused]]) {
      const a = await startAgent({ bin: ctx.bin, dataDir: dir })
      into.push(a.readyMs)
      const s = await a.stop()
      stops.push(s.ms)
      if (s.code !== 0) badExits.push(s.code ?? s.signal)
    }
  }
  const bareMed = median(bare)
  return [
    { figure: 'agent start → API ready, fresh data dir', value: median(fresh), unit: 'ms', baseline: BARE, baselineValue: bareMed, budget: 1000, n, note: p90note(fresh) },
    { figure: 'agent start → API ready, reused data dir', value: median(reused), unit: 'ms', baseline: BARE, baselineValue: bareMed, budget: 1000, n, note: p90note(reused) },
    {
      figure: 'agent stop, SIGTERM → exit',
      value: median(stops),
      unit: 'ms',
      baseline: null,
      baselineValue: null,
      budget: null,
      n: stops.length,
      note: `range ${spread(stops)}` + (badExits.length > 0 ? `; ${badExits.length} exits not 0: ${[...new Set(badExits)].join(',')}` : '; all exit 0')
    }
  ]
}

// ---------------------------------------------------------------- idle RSS

async function idleRss (ctx) {
  const defaultWait = ctx.quick ? 5 : 30
  const waitS = ctx.options['rss-wait'] != null ? Number(ctx.options['rss-wait']) : defaultWait
  if (!(waitS >= 0)) throw new Error(`--rss-wait needs seconds, got ${ctx.options['rss-wait']}`)
  const k = 3
  ctx.log(`idle RSS: ${k} agents and ${k} bare idle node processes, reading VmRSS after ${waitS} s idle`)
  const agents = []
  for (let i = 0; i < k; i++) agents.push(await startAgent({ bin: ctx.bin }))
  const bares = []
  for (let i = 0; i < k; i++) bares.push(spawnTracked(NODE, ['-e', 'setInterval(() => {}, 1 << 30)'], { keepStdout: false }))
  await sleep(waitS * 1000)
  for (const c of [...agents.map(a => a.child), ...bares]) {
    if (c.exitCode !== null || c.signalCode !== null) throw new Error(`pid ${c.pid} exited during the idle wait: ${c.tail()}`)
  }
  const agentRss = agents.map(a => readRss(a.pid))
  const bareRss = bares.map(c => readRss(c.pid))
  await Promise.all([...agents.map(a => a.stop()), ...bares.map(c => stopChild(c))])

  const rss = agentRss.map(r => r.rssMiB)
  const hwm = agentRss.map(r => r.hwmMiB)
  const bareMed = median(bareRss.map(r => r.rssMiB))
  const quickNote = waitS !== 30 ? `; waited ${waitS} s, not 30 s${ctx.quick ? ' (--quick)' : ''}: budget is for 30 s` : ''
  return [
    {
      figure: `agent idle RSS after ${waitS} s`,
      value: median(rss),
      unit: 'MiB',
      baseline: `idle bare node after ${waitS} s`,
      baselineValue: bareMed,
      budget: 80,
      n: k,
      note: `VmRSS of the node pid; range ${spread(rss, 1)}; peak (VmHWM) median ${median(hwm).toFixed(1)}${quickNote}`
    }
  ]
}

// ---------------------------------------------------------------- CLI round trip

async function cliRoundTrip (ctx) {
  const n = ctx.runs ?? (ctx.quick ? 7 : 15)
  const agent = await startAgent({ bin: ctx.bin })
  const cliArgs = [ctx.bin, 'status', '--data-dir', agent.dataDir, '--json']
  const timeCli = async () => {
    const r = await timeNode(cliArgs)
    if (r.code !== 0) throw new Error(`edgelink status exited ${r.code ?? r.signal}: ${r.tail}`)
    let peerId
    try { peerId = JSON.parse(r.stdout).peerId } catch { throw new Error(`edgelink status --json printed something that is not JSON: ${r.stdout.slice(0, 200)}`) }
    if (peerId !== agent.status.peerId) throw new Error(`edgelink status answered for ${peerId}, expected ${agent.status.peerId}`)
    return r.ms
  }
  const timeApi = () => timeApiGet(agent.socket, '/api/v1/status')
  // How long loading the CLI's module graph takes inside a fresh node, against commander alone.
  const timeImport = async (specifier) => {
    const code = `const t = performance.now(); await import(${JSON.stringify(specifier)}); process.stdout.write(String(performance.now() - t))`
    const r = await timeNode(['--input-type=module', '-e', code], { cwd: ROOT })
    const ms = Number(r.stdout)
    if (r.code !== 0 || !Number.isFinite(ms)) throw new Error(`import(${specifier}) failed: ${r.tail}`)
    return ms
  }
  const mainPath = resolve(dirname(ctx.bin), '..', 'dist', 'cli', 'main.js')
  const mainUrl = existsSync(mainPath) ? pathToFileURL(mainPath).href : null

  ctx.log(`CLI round trip: warm-up, then ${n} × (node -e "", edgelink status --json, GET /api/v1/status, import main.js, import commander)`)
  for (let i = 0; i < 2; i++) { await timeBareNode(); await timeCli(); await timeApi() }

  const bare = []; const cli = []; const api = []; const impMain = []; const impCommander = []
  for (let i = 0; i < n; i++) {
    bare.push(await timeBareNode())
    cli.push(await timeCli())
    api.push(await timeApi())
    if (mainUrl != null) {
      impMain.push(await timeImport(mainUrl))
      impCommander.push(await timeImport('commander'))
    }
  }
  await agent.stop()

  const cliMed = median(cli); const bareMed = median(bare); const apiMed = median(api)
  const rows = [
    { figure: 'CLI `status --json` round trip', value: cliMed, unit: 'ms', baseline: BARE, baselineValue: bareMed, budget: 300, n, note: p90note(cli) },
    { figure: 'CLI `status --json` round trip, p90', value: percentile(cli, 90), unit: 'ms', baseline: `${BARE}, p90`, baselineValue: percentile(bare, 90), budget: 300, n },
    {
      figure: 'CLI cost over node start-up (round trip − node -e)',
      value: cliMed - bareMed,
      unit: 'ms',
      baseline: 'GET /api/v1/status from bench process',
      baselineValue: apiMed,
      budget: null,
      n,
      note: `difference of medians; API call range ${spread(api, 1)} ms, new connection each`
    }
  ]
  if (mainUrl != null) {
    rows.push({
      figure: 'import dist/cli/main.js in a fresh node',
      value: median(impMain),
      unit: 'ms',
      baseline: 'import commander alone',
      baselineValue: median(impCommander),
      budget: null,
      n,
      note: `module graph load only; range ${spread(impMain)}`
    })
  }
  return rows
}
