/**
 * Group gossip budgets (issue 4), measured on real agents in a netns lab of 10 hosts
 * (`scripts/lab.sh`; needs root and network namespaces, else this module fails and says why).
 *
 * 1. **Status change seen on every host** (budget: p99 ≤ 100 ms). Method: the leader (h1)
 *    issues a settings change for a target host (`POST /api/v1/settings`); the target
 *    stores it (no settings hook configured, so it is applied at once) and publishes its
 *    status, which carries the settings state, stamped with `at` (the target's clock, read
 *    just before it signs and publishes). Every other host's `GET /api/v1/events` stream
 *    (NDJSON, open for the whole phase) reports when that agent accepted the target's status
 *    with the new settings version `applied` (`receivedAt`, its clock). Latency =
 *    receivedAt − at. Every namespace shares one kernel clock, so both times come from the
 *    same clock. It includes signing, gossip, validation, decryption and storing; nothing is
 *    polled. "Seen on all hosts" is the slowest of the N−1 other hosts for one change. Targets rotate over every
 *    host, the leader included; a few warm-up changes are not counted. The settings change
 *    travelling to the target is not in the figure.
 *    Baseline: round trip of 1 byte over an open TCP connection between two node processes
 *    in h1's and h2's namespaces (the lab's own cost for one application hop and back).
 * 2. **Stopped host marked down everywhere** (budget: ≤ 5 s). A follower's agent gets
 *    SIGTERM; every other host's `GET /api/v1/hosts` is polled every 50 ms until it reports
 *    the host `down`. Time from the signal to the last host's report. Baseline: the
 *    configured `status.downAfter` (the silence the detector waits for by design: the floor).
 *    The host is restarted and seen alive everywhere before the next sample.
 * 3. **Idle gossip traffic per host** (no budget in the issue). Kernel byte counters of each
 *    host's lab interface (rx + tx of lan0) over IDLE seconds with the linked group idle:
 *    liveness pings, periodic status, anti-entropy pulls, gossipsub heartbeats and mDNS.
 *    Baseline: the same agents over the same time before they were linked (mDNS and libp2p
 *    connections only), so the ratio is what the group adds. Where nft is installed, counters
 *    in each namespace split the bytes into mDNS (UDP 5353) and libp2p (TCP), shown in the note.
 *    Over the same windows: each agent's CPU time (utime + stime from /proc), as % of one CPU:
 *    what an idle group costs its hosts, and how much of this machine the lab itself takes
 *    before anything is measured (read the latency figures with it).
 *
 * No delay can be added here (this kernel has no sch_netem): the latency figures are at
 * the lab's natural latency (veth + bridge, sub-millisecond).
 *
 * Options: --hosts=N (default 10), --idle=SECONDS (default 30; --quick 10), --down-samples=N (default 5; --quick 2), --phases=latency,down,idle (default all),
 * --agent-config=FILE (every agent runs with `--config FILE`, e.g. other status timers, for A/B
 * runs; the rows say so). --runs N sets the number of status changes (default 200; --quick 40).
 * --dump=FILE writes one JSON line per counted status change (target, each viewer's ms), to
 * look at what the slow ones have in common.
 * The lab (`LAB=bg<pid>`, in .lab/) is torn down at the end, on error and on exit; its
 * watchdog removes it after 30 minutes if everything else failed.
 */
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { Agent as HttpAgent, request } from 'node:http'
import { cpus, loadavg } from 'node:os'
import { join, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { ROOT, BIN, NODE, childEnv, median, percentile, spread, spawnTracked, apiRequest, tempDir } from './_lib.mjs'

export const description = 'group gossip in a 10-host netns lab: status change seen on all hosts (p99), stopped host down everywhere, idle traffic per host (needs root)'

const LAB_SH = join(ROOT, 'scripts', 'lab.sh')
const LAT_BUDGET_MS = 100
const DOWN_BUDGET_MS = 5000
/** A change not seen by every host within this long after it was issued counts as missed (gossip did not deliver it). */
const CAP_MS = 3000
/** Pause between two changes: GAP_MS plus up to GAP_MS more, at random. */
const GAP_MS = 250
const WARMUP = 5
const ECHO_PORT = 4999
const ACCT_TABLE = 'edgelink_bench_acct'
const ACCT_RULES = `table inet ${ACCT_TABLE} {
  counter mdns_in { }
  counter mdns_out { }
  counter tcp_in { }
  counter tcp_out { }
  chain input { type filter hook input priority -20; policy accept; iifname "lan0" udp dport 5353 counter name "mdns_in"; iifname "lan0" meta l4proto tcp counter name "tcp_in"; }
  chain output { type filter hook output priority -20; policy accept; oifname "lan0" udp dport 5353 counter name "mdns_out"; oifname "lan0" meta l4proto tcp counter name "tcp_out"; }
}
`

/** Why a lab cannot be built here, or null. */
function labUnavailable () {
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return `network namespaces need root (running as uid ${process.getuid()}); run \`sudo npm run bench gossip\``
  try {
    execFileSync('bash', [LAB_SH, 'check'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 })
    return null
  } catch (err) {
    const out = `${err.stdout ?? ''}`.split('\n').filter(l => l.includes('missing')).join('; ')
    return `scripts/lab.sh check failed: ${out || err.message}`
  }
}

class BenchLab {
  constructor (n) {
    this.n = n
    this.name = `bg${process.pid}`
    this.dir = join(ROOT, '.lab', this.name)
    this.hosts = Array.from({ length: n }, (_, i) => `h${i + 1}`)
    this.env = { ...childEnv(), LAB: this.name, LAB_DIR: this.dir, LAB_TTL: '30m', LAB_NODE: NODE }
    delete this.env.LAB_NET
    this.agents = new Map()
    this.agentArgs = []
    this.ids = new Map()
    this.isUp = false
    // Last resort (run.mjs exits on SIGINT/SIGTERM after its own cleanup); the lab's watchdog is the next one.
    this.onExit = () => { if (this.isUp) { try { execFileSync('bash', [LAB_SH, 'down', '--purge'], { env: this.env, stdio: 'ignore', timeout: 60_000 }) } catch { /* the watchdog will */ } } }
    process.once('exit', this.onExit)
  }

  async sh (args, timeoutMs = 60_000) {
    const child = spawnTracked('bash', [LAB_SH, ...args], { env: this.env })
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    const [{ code, signal, error }] = await Promise.all([child.exited, child.closed])
    clearTimeout(timer)
    if (error != null || code !== 0) throw new Error(`lab.sh ${args.join(' ')} failed (${error?.message ?? code ?? signal}): ${child.tail()}`)
    return child.stdoutText()
  }

  async up () {
    this.isUp = true
    await this.sh(['up', String(this.n)])
  }

  async down () {
    if (!this.isUp) return
    for (const a of this.agents.values()) a.destroy()
    await this.sh(['down', '--purge'], 120_000)
    this.isUp = false
    process.removeListener('exit', this.onExit)
  }

  socket (host) { return join(this.dir, host, 'api.sock') }

  /** GET over a kept-alive connection to the host's API socket; resolves the JSON body, rejects unless 200. */
  get (host, path, timeoutMs = 5000) {
    let agent = this.agents.get(host)
    if (agent == null) { agent = new HttpAgent({ keepAlive: true, maxSockets: 4 }); this.agents.set(host, agent) }
    return new Promise((resolve, reject) => {
      const req = request({ socketPath: this.socket(host), path, method: 'GET', agent, timeout: timeoutMs }, (res) => {
        const chunks = []
        res.on('data', c => chunks.push(c))
        res.on('error', reject)
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8')
          if (res.statusCode !== 200) { reject(new Error(`GET ${path} on ${host}: HTTP ${res.statusCode}: ${text.slice(0, 200)}`)); return }
          try { resolve(JSON.parse(text)) } catch (err) { reject(err) }
        })
      })
      req.on('timeout', () => req.destroy(new Error(`GET ${path} on ${host} timed out after ${timeoutMs} ms`)))
      req.on('error', reject)
      req.end()
    })
  }

  async post (host, path, body) {
    const r = await apiRequest(this.socket(host), 'POST', path, body)
    if (r.statusCode !== 200) throw new Error(`POST ${path} on ${host}: HTTP ${r.statusCode}: ${JSON.stringify(r.body).slice(0, 300)}`)
    return r.body
  }

  async start (host) {
    await this.sh(['start', host, ...this.agentArgs])
    await this.waitFor(`the agent on ${host} to answer`, async () => {
      if (!this.running(host)) throw new Error(`the agent on ${host} died: ${this.logTail(host)}`)
      return await this.get(host, '/api/v1/status', 2000).then(() => true, () => false)
    }, 60_000, 25)
  }

  pid (host) {
    const f = join(this.dir, `${host}.pid`)
    return existsSync(f) ? Number(readFileSync(f, 'utf8').trim()) : NaN
  }

  running (host) {
    const pid = this.pid(host)
    if (!Number.isInteger(pid)) return false
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
      return state !== 'Z' && state !== 'X'
    } catch { return false }
  }

  logTail (host, lines = 10) {
    const f = join(this.dir, `${host}.log`)
    return existsSync(f) ? readFileSync(f, 'utf8').trim().split('\n').slice(-lines).join('\n') : '(no log)'
  }

  /** Poll `check` until it returns something truthy; throws after `timeoutMs` with `what`. */
  async waitFor (what, check, timeoutMs, intervalMs = 100, describe = () => '') {
    const deadline = Date.now() + timeoutMs
    let last
    for (;;) {
      try {
        const v = await check()
        if (v) return v
      } catch (err) {
        if (/died/.test(err.message)) throw err
        last = err
      }
      if (Date.now() > deadline) {
        const state = describe()
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last != null ? ` (last error: ${last.message})` : ''}${state !== '' ? `; last state: ${state}` : ''}`)
      }
      await sleep(intervalMs)
    }
  }

  /** nft byte counters per host (mDNS / TCP, in / out), or null without nft. */
  async acct () {
    if (!this.hasAcct) return null
    const out = await Promise.all(this.hosts.map(async h => {
      const json = JSON.parse(await this.sh(['exec', h, 'nft', '-j', 'list', 'counters', 'table', 'inet', ACCT_TABLE]))
      const c = {}
      for (const e of json.nftables) if (e.counter != null) c[e.counter.name] = e.counter.bytes
      return c
    }))
    return new Map(this.hosts.map((h, i) => [h, out[i]]))
  }

  /** Install the accounting table in every host's namespace (skipped without nft). */
  async installAcct () {
    const file = join(this.dir, 'acct.nft')
    writeFileSync(file, ACCT_RULES)
    try {
      for (const h of this.hosts) await this.sh(['exec', h, 'nft', '-f', file])
      this.hasAcct = true
    } catch (err) {
      this.hasAcct = false
      return err.message
    }
    return null
  }

  /** rx and tx bytes of every host's lan0, from the kernel. */
  async bytes () {
    const out = await Promise.all(this.hosts.map(async h => (await this.sh(['bytes', h])).trim().split(/\s+/).map(Number)))
    return new Map(this.hosts.map((h, i) => [h, { rx: out[i][0], tx: out[i][1] }]))
  }

  /** Every host lists every member alive (and, if `statuses`, holds every other member's status). */
  async allAlive (what, timeoutMs = 60_000, statuses = false) {
    let state = ''
    await this.waitFor(what, async () => {
      const tables = await Promise.all(this.hosts.map(async h => await this.get(h, '/api/v1/hosts')))
      const bad = tables.flatMap((t, i) => t.length !== this.n ? [`${this.hosts[i]} lists ${t.length}`] : t.filter(r => r.liveness !== 'alive').map(r => `${this.hosts[i]}: ${r.hostname} ${r.liveness}`))
      state = bad.slice(0, 5).join(', ')
      if (bad.length > 0) return false
      if (!statuses) return true
      const missing = await Promise.all(this.hosts.flatMap(v => this.hosts.filter(t => t !== v).map(async t => await this.get(v, `/api/v1/hosts/${t}/status`).then(() => 0, () => 1))))
      return missing.every(m => m === 0)
    }, timeoutMs, 200, () => state)
  }
}

/** Round trips of 1 byte over one open TCP connection between node processes in two lab namespaces. */
async function tcpEchoRtt (lab, samples) {
  const server = `const s=require('net').createServer(c=>{c.setNoDelay(true);c.on('data',d=>c.write(d))});s.listen(${ECHO_PORT},'10.213.0.11',()=>console.log('ready'))`
  const client = `const n=require('net');const c=n.connect(${ECHO_PORT},'10.213.0.11',async()=>{c.setNoDelay(true);const out=[];
    for(let i=0;i<${samples + 20};i++){const t=process.hrtime.bigint();await new Promise(r=>{c.once('data',r);c.write('x')});out.push(Number(process.hrtime.bigint()-t)/1e6)}
    console.log(JSON.stringify(out.slice(20)));c.destroy()})`
  const srv = spawnTracked('ip', ['netns', 'exec', `el-${lab.name}-h1`, NODE, '-e', server])
  try {
    await lab.waitFor('the echo server in h1', async () => srv.stdoutText().includes('ready'), 10_000, 20)
    const cli = spawnTracked('ip', ['netns', 'exec', `el-${lab.name}-h2`, NODE, '-e', client])
    const { code } = await cli.exited
    await cli.closed
    if (code !== 0) throw new Error(`echo client failed: ${cli.tail()}`)
    return JSON.parse(cli.stdoutText())
  } finally {
    srv.kill('SIGKILL')
    await srv.exited
  }
}

/** CPU time (user + system, in ms) each agent has used so far, from /proc. */
function cpuMs (lab) {
  const tick = 1000 / 100 // USER_HZ is 100 on Linux
  return new Map(lab.hosts.map(h => {
    const stat = readFileSync(`/proc/${lab.pid(h)}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return [h, (Number(f[11]) + Number(f[12])) * tick]
  }))
}

/** Idle traffic per host (rx + tx bytes per second on lan0) and agent CPU over `seconds`. */
async function idleTraffic (lab, seconds) {
  const gossip0 = await gossipCounters(lab)
  const cpu0 = cpuMs(lab)
  const a0 = await lab.acct()
  const b0 = await lab.bytes()
  const t0 = Date.now()
  await sleep(seconds * 1000)
  const b1 = await lab.bytes()
  const secs = (Date.now() - t0) / 1000
  const a1 = await lab.acct()
  const cpu1 = cpuMs(lab)
  const cpu = lab.hosts.map(h => (cpu1.get(h) - cpu0.get(h)) / secs / 10) // % of one CPU
  const gossip1 = await gossipCounters(lab)
  const per = lab.hosts.map(h => ({ host: h, rx: (b1.get(h).rx - b0.get(h).rx) / secs, tx: (b1.get(h).tx - b0.get(h).tx) / secs }))
  const published = gossip0 == null || gossip1 == null ? null : lab.hosts.map(h => (gossip1.get(h).published - gossip0.get(h).published) / secs)
  // Share of the bytes that nft counted as mDNS and as TCP (libp2p), all hosts together.
  let split = null
  if (a0 != null && a1 != null) {
    const sum = (k) => lab.hosts.reduce((n, h) => n + (a1.get(h)[k] - a0.get(h)[k]), 0)
    const mdns = sum('mdns_in') + sum('mdns_out')
    const tcp = sum('tcp_in') + sum('tcp_out')
    split = { mdns: mdns / lab.hosts.length / secs, tcp: tcp / lab.hosts.length / secs }
  }
  return { per, total: per.map(p => p.rx + p.tx), published, secs, split, cpu }
}

async function gossipCounters (lab) {
  try {
    const all = await Promise.all(lab.hosts.map(async h => (await lab.get(h, '/api/v1/group/gossip')).counters))
    return new Map(lab.hosts.map((h, i) => [h, all[i]]))
  } catch { return null }
}

/**
 * Each viewer's `GET /api/v1/events` stream, kept open for the whole latency phase:
 * `status` events say when that agent accepted a member's newer status (`receivedAt`,
 * its clock) and when the origin signed it (`statusAt`). Nothing is polled, so the
 * measurement costs the agents one write per event rather than an API call every few ms.
 */
function openEvents (lab, hosts) {
  const listeners = new Set()
  const reqs = []
  for (const h of hosts) {
    const req = request({ socketPath: lab.socket(h), path: '/api/v1/events', method: 'GET' }, (res) => {
      let buf = ''
      res.setEncoding('utf8')
      res.on('data', (d) => {
        buf += d
        for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
          const e = JSON.parse(buf.slice(0, i))
          buf = buf.slice(i + 1)
          for (const fn of listeners) fn(h, e)
        }
      })
      res.on('error', () => {})
    })
    req.on('error', () => {})
    req.end()
    reqs.push(req)
  }
  return { on (fn) { listeners.add(fn); return () => listeners.delete(fn) }, close () { for (const r of reqs) r.destroy() } }
}

/**
 * One status change: the leader issues settings for `target`; resolves, per other host,
 * the moment its agent accepted the target's status carrying the new settings version
 * as applied (`receivedAt`) and that status's `at`.
 */
async function statusChange (lab, events, target, seq) {
  const viewers = lab.hosts.filter(h => h !== target)
  const targetId = lab.ids.get(target)
  const expected = (lab.versions.get(target) ?? 0) + 1
  const seen = new Map()
  let done
  const allSeen = new Promise((resolve) => { done = resolve })
  const off = events.on((h, e) => {
    if (e.type !== 'status' || e.peer !== targetId || seen.has(h) || h === target) return
    if (e.settings.version >= expected && e.settings.state === 'applied') {
      seen.set(h, { obs: Date.parse(e.receivedAt), at: Date.parse(e.statusAt), via: e.via })
      if (seen.size === viewers.length) done()
    }
  })
  let deadline
  try {
    const r = await lab.post('h1', '/api/v1/settings', { host: target, settings: { bench: String(seq) } })
    if (r.version !== expected) throw new Error(`settings for ${target} got version ${r.version}, expected ${expected}`)
    lab.versions.set(target, r.version)
    // Whatever has not arrived CAP_MS after the leader answered counts as missed.
    deadline = setTimeout(done, CAP_MS)
    await allSeen
  } finally {
    clearTimeout(deadline)
    off()
  }
  return { viewers, seen }
}

const PHASES = ['latency', 'down', 'idle']

export async function run (ctx) {
  const why = labUnavailable()
  if (why != null) throw new Error(`gossip benchmark needs root and a network-namespace lab, unavailable here: ${why}`)
  const n = Number(ctx.options.hosts ?? 10)
  if (!Number.isInteger(n) || n < 3 || n > 50) throw new Error(`--hosts must be 3..50, got ${ctx.options.hosts}`)
  const idleSecs = Number(ctx.options.idle ?? (ctx.quick ? 10 : 30))
  const changes = ctx.runs ?? (ctx.quick ? 40 : 200)
  const downSamples = Number(ctx.options['down-samples'] ?? (ctx.quick ? 2 : 5))
  const phases = (ctx.options.phases ?? PHASES.join(',')).split(',')
  const unknown = phases.filter(p => !PHASES.includes(p))
  if (unknown.length > 0) throw new Error(`--phases: unknown ${unknown.join(', ')} (have ${PHASES.join(', ')})`)
  const agentConfig = ctx.options['agent-config']
  if (agentConfig != null && !existsSync(agentConfig)) throw new Error(`--agent-config: no file ${agentConfig}`)
  const configArgs = agentConfig != null ? ['--config', resolve(agentConfig)] : []
  const quickNote = (ctx.quick ? '; --quick' : '') + (agentConfig != null ? `; agents run with --config ${agentConfig}` : '')

  // The timers the agents run with (lab.sh passes no inherited EDGELINK_* variable on).
  const printed = execFileSync(NODE, [BIN, 'agent', '--print-config', '--json', '--data-dir', tempDir('el-gossip-cfg-'), ...configArgs],
    { encoding: 'utf8', env: Object.fromEntries(Object.entries(childEnv()).filter(([k]) => !k.startsWith('EDGELINK_'))) })
  const statusConfig = JSON.parse(printed).config.status

  const lab = new BenchLab(n)
  lab.agentArgs = configArgs
  lab.versions = new Map()
  const rows = []
  try {
    ctx.log(`building a lab of ${n} hosts (${lab.name})`)
    await lab.up()
    for (const h of lab.hosts) await lab.sh(['start', h, ...lab.agentArgs])
    await Promise.all(lab.hosts.map(async h => await lab.waitFor(`the agent on ${h} to answer`, async () => {
      if (!lab.running(h)) throw new Error(`the agent on ${h} died: ${lab.logTail(h)}`)
      return await lab.get(h, '/api/v1/status', 2000).then(s => { lab.ids.set(h, s.peerId); return true }, () => false)
    }, 90_000, 50)))
    const noAcct = await lab.installAcct()
    if (noAcct != null) ctx.log(`no nft accounting (${noAcct.slice(0, 120)}); traffic is not split by protocol`)
    ctx.log(`${n} agents up; waiting for mDNS to connect them`)
    await lab.waitFor('every agent to be connected to every other (mDNS)', async () => {
      const all = await Promise.all(lab.hosts.map(async h => await lab.get(h, '/api/v1/peers')))
      return all.every(ps => ps.filter(p => p.connected).length >= n - 1)
    }, 60_000, 200)

    // Same-run baseline for idle traffic: the same agents, not linked.
    let idleBefore
    if (phases.includes('idle')) {
      ctx.log(`idle traffic of ${n} unlinked agents over ${idleSecs} s`)
      idleBefore = await idleTraffic(lab, idleSecs)
    }

    ctx.log(`linking h2..h${n} to h1`)
    for (const h of lab.hosts.slice(1)) {
      // Linking is not what is measured here: on a loaded machine a join can miss its quorum; try again.
      for (let attempt = 1; ; attempt++) {
        const { token } = await lab.post('h1', '/api/v1/tokens', {})
        try {
          await lab.post(h, '/api/v1/link', { token })
          break
        } catch (err) {
          // A join that timed out waiting for its quorum may still have been committed (as in Raft).
          if (attempt > 1 && /ALREADY_LINKED/.test(err.message)) { ctx.log(`  ${h} is linked after all (the earlier attempt was committed late)`); break }
          if (attempt >= 3 || !/NO_QUORUM/.test(err.message)) throw err
          ctx.log(`  linking ${h} failed (${err.message.slice(0, 200)}); trying again`)
          await sleep(2000)
        }
      }
    }
    await lab.allAlive('every host to list all members alive with their statuses', 60_000, true)

    if (phases.includes('idle')) {
      ctx.log(`idle traffic of the linked group over ${idleSecs} s`)
      const idleLinked = await idleTraffic(lab, idleSecs)
      const idleNote = (t) => `rx median ${median(t.per.map(p => p.rx)).toFixed(0)}, tx median ${median(t.per.map(p => p.tx)).toFixed(0)} B/s` +
        (t.split != null ? `; mean per host: libp2p (TCP) ${t.split.tcp.toFixed(0)} B/s, mDNS ${t.split.mdns.toFixed(0)} B/s (IP bytes, nft)` : '') +
        (t.published != null ? `; group messages published ${median(t.published).toFixed(2)}/s per host` : '')
      const base = `same ${n} agents before linking (mDNS + libp2p), ${idleSecs} s`
      const busiest = Math.max(...idleLinked.total)
      rows.push({ figure: `idle traffic per host, group of ${n} (median host, rx+tx on lan0)`, value: median(idleLinked.total), unit: 'B/s', baseline: base, baselineValue: median(idleBefore.total), budget: null, n, note: `${idleSecs} s idle; ${idleNote(idleLinked)}; probe every ${statusConfig.probeInterval} ms${quickNote}` })
      rows.push({ figure: `idle agent CPU, group of ${n} (median agent, % of one CPU)`, value: median(idleLinked.cpu), unit: '%', baseline: `same ${n} agents before linking`, baselineValue: median(idleBefore.cpu), budget: null, n, note: `busiest agent ${Math.max(...idleLinked.cpu).toFixed(1)} %, all ${n} together ${idleLinked.cpu.reduce((a, b) => a + b, 0).toFixed(0)} % of one CPU (${cpus().length} CPUs here); utime+stime from /proc${quickNote}` })
      rows.push({ figure: `idle traffic per host, group of ${n} (busiest host)`, value: busiest, unit: 'B/s', baseline: `${base}, busiest host`, baselineValue: Math.max(...idleBefore.total), budget: null, n, note: `busiest: ${idleLinked.per[idleLinked.total.indexOf(busiest)].host} (h1 is the leader); before linking: ${idleNote(idleBefore)}${quickNote}` })
    }

    if (phases.includes('latency')) {
      // Same-run baseline: one application-level round trip across the lab.
      const rtt = await tcpEchoRtt(lab, 500)
      ctx.log(`TCP echo RTT h2→h1: median ${median(rtt).toFixed(3)} ms, p99 ${percentile(rtt, 99).toFixed(3)} ms`)
      ctx.log(`${changes} status changes (+${WARMUP} warm-up), watched through each host's event stream`)
      const events = openEvents(lab, lab.hosts)
      const load0 = loadavg()[0]
      const allSeen = []
      const perHost = []
      let missed = 0
      let atMismatch = 0
      const dump = ctx.options.dump != null ? [] : null
      for (let i = 0; i < changes + WARMUP; i++) {
        const target = lab.hosts[i % n]
        const { viewers, seen } = await statusChange(lab, events, target, i)
        const ats = [...seen.values()].map(s => s.at)
        const at = Math.min(...ats)
        if (new Set(ats).size > 1) atMismatch++
        const lat = viewers.map(v => seen.has(v) ? seen.get(v).obs - at : CAP_MS)
        if (i >= WARMUP) {
          if (dump != null) dump.push(JSON.stringify({ i, target, at, ms: Object.fromEntries(viewers.map((v, k) => [v, lat[k]])) }))
          if (seen.size < viewers.length) missed++
          allSeen.push(Math.max(...lat))
          perHost.push(...lat)
        }
        if (missed > 10) { ctx.log(`more than 10 changes were not seen everywhere within ${CAP_MS} ms; stopping early`); break }
        if ((i + 1) % 50 === 0) ctx.log(`  ${i + 1} changes, median so far ${median(allSeen).toFixed(1)} ms`)
        // One change every 250-500 ms across the group (a host changes every few seconds),
        // out of step with gossipsub's heartbeat: each change is timed on its own, not
        // against a backlog of the previous ones.
        await sleep(GAP_MS + Math.random() * GAP_MS)
      }
      events.close()
      if (dump != null) writeFileSync(String(ctx.options.dump), dump.join('\n') + '\n')
      const load1 = loadavg()[0]
      const rttMed = median(rtt)
      const rttP99 = percentile(rtt, 99)
      const echo = `TCP echo RTT h2→h1 (node↔node, open conn., ${rtt.length} samples)`
      const dist = (xs) => `p50 ${median(xs).toFixed(1)}, p90 ${percentile(xs, 90).toFixed(1)}, p99 ${percentile(xs, 99).toFixed(1)}, max ${Math.max(...xs).toFixed(1)}`
      const extra = `; load ${load0.toFixed(1)}→${load1.toFixed(1)} on ${cpus().length} CPUs` +
        (missed > 0 ? `; ${missed} change(s) not seen everywhere within ${CAP_MS} ms (counted as ${CAP_MS})` : '') +
        (atMismatch > 0 ? `; ${atMismatch} change(s) reached hosts as different records (earliest \`at\` used)` : '') +
        `; one change every ${GAP_MS}-${2 * GAP_MS} ms; agents' own clocks (accepted − signed), no polling; no netem: natural lab latency${quickNote}`
      rows.push({ figure: `status change seen on all ${n - 1} other hosts (median)`, value: median(allSeen), unit: 'ms', baseline: echo, baselineValue: rttMed, budget: null, n: allSeen.length, note: `slowest host per change: ${dist(allSeen)}${extra}` })
      rows.push({ figure: `status change seen on all ${n - 1} other hosts (p99)`, value: percentile(allSeen, 99), unit: 'ms', baseline: `${echo}, p99`, baselineValue: rttP99, budget: LAT_BUDGET_MS, n: allSeen.length, note: `budget: p99 ≤ ${LAT_BUDGET_MS} ms${extra}` })
      rows.push({ figure: 'status change seen per receiving host (median)', value: median(perHost), unit: 'ms', baseline: echo, baselineValue: rttMed, budget: null, n: perHost.length, note: `each host per change: ${dist(perHost)}${quickNote}` })
      rows.push({ figure: 'status change seen per receiving host (p99)', value: percentile(perHost, 99), unit: 'ms', baseline: `${echo}, p99`, baselineValue: rttP99, budget: null, n: perHost.length, note: `range ${spread(perHost, 1)}${quickNote}` })
    }

    if (phases.includes('down')) {
      ctx.log(`${downSamples} stops (SIGTERM) of a follower`)
      const downs = []
      const exits = []
      for (let k = 0; k < downSamples; k++) {
        const target = lab.hosts[1 + (k % (n - 1))]
        const id = lab.ids.get(target)
        await lab.allAlive('every member alive before the stop')
        const viewers = lab.hosts.filter(h => h !== target)
        const pid = lab.pid(target)
        const t0 = Date.now()
        process.kill(pid, 'SIGTERM')
        const firstDown = new Map()
        let exitAt = null
        await lab.waitFor(`every host to report ${target} down`, async () => {
          if (exitAt == null && !lab.running(target)) exitAt = Date.now()
          await Promise.all(viewers.filter(v => !firstDown.has(v)).map(async v => {
            const row = (await lab.get(v, '/api/v1/hosts')).find(r => r.peerId === id)
            if (row?.liveness === 'down') firstDown.set(v, Date.now())
          }))
          return firstDown.size === viewers.length
        }, 30_000, 50)
        downs.push(Math.max(...firstDown.values()) - t0)
        if (exitAt != null) exits.push(exitAt - t0)
        ctx.log(`  ${target}: down everywhere ${downs.at(-1)} ms after SIGTERM (agent exited after ${exitAt != null ? exitAt - t0 : '?'} ms)`)
        await lab.start(target)
      }
      const floor = 'configured status.downAfter (the floor)'
      const downNote = `from SIGTERM to the last of ${n - 1} hosts reporting down (50 ms poll); range ${spread(downs, 0)}; agent exited ${exits.length > 0 ? `${median(exits).toFixed(0)} ms` : '?'} after SIGTERM (median); probe ${statusConfig.probeInterval} ms, suspect after ${statusConfig.suspectAfter} ms${quickNote}`
      rows.push({ figure: `stopped host marked down on all ${n - 1} other hosts (median)`, value: median(downs), unit: 'ms', baseline: floor, baselineValue: statusConfig.downAfter, budget: DOWN_BUDGET_MS, n: downs.length, note: downNote })
      rows.push({ figure: `stopped host marked down on all ${n - 1} other hosts (worst)`, value: Math.max(...downs), unit: 'ms', baseline: floor, baselineValue: statusConfig.downAfter, budget: DOWN_BUDGET_MS, n: downs.length, note: `budget ≤ ${DOWN_BUDGET_MS} ms for every stop${quickNote}` })
    }
  } finally {
    await lab.down().catch(err => ctx.log(`lab teardown failed: ${err.message}; run \`LAB=${lab.name} scripts/lab.sh down --purge\``))
  }
  return rows
}
