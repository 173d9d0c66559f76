/**
 * Join latency (issue 3): time from `POST /api/v1/link` on an idle agent to the
 * answer, which comes only after the leader committed the roster on a majority.
 * Real agent processes on 127.0.0.1. Baseline: a TCP connect + 1-byte echo round
 * trip on 127.0.0.1 in the same run (the network's own cost), and `node -e ""` for
 * the CLI figure.
 *
 * Between two joins the harness waits until the group has settled (every member lists
 * every host as connected and alive), as when an operator links hosts one at a time:
 * otherwise each join would also be measured against the previous one's aftermath
 * (every member dialling the newcomer, pulls, republished statuses), which on a LAN
 * runs on other machines but here shares two cores with the join being timed. Round 1
 * runs on freshly started agents (cold JIT); its median is given in the note.
 */
import { createServer, connect } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { apiGet, apiRequest, median, now, percentile, spread, startAgent, timeBareNode, spawnTracked, NODE, BIN } from './_lib.mjs'

export const description = 'join latency: link TOKEN committed on a majority, groups of 3 and 10 (real agents on 127.0.0.1)'

const BUDGET_MS = 150

async function post (socket, path, body) {
  const r = await apiRequest(socket, 'POST', path, body)
  if (r.statusCode !== 200) throw new Error(`POST ${path} answered HTTP ${r.statusCode}: ${JSON.stringify(r.body)}`)
  return r.body
}

async function tcpEchoRtt (samples) {
  const server = createServer(s => s.on('data', d => s.write(d)))
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  const port = server.address().port
  const out = []
  for (let i = 0; i < samples; i++) {
    const t0 = now()
    await new Promise((resolve, reject) => {
      const c = connect(port, '127.0.0.1', () => c.write('x'))
      c.once('data', () => { c.destroy(); resolve() })
      c.once('error', reject)
    })
    out.push(now() - t0)
  }
  server.close()
  return out
}

/** Wait until each of `members` lists exactly them, every one connected and alive. */
async function settled (members, timeoutMs = 30_000) {
  const want = new Set(members.map(a => a.status.peerId))
  const t0 = now()
  for (;;) {
    let ok = true
    for (const a of members) {
      const r = await apiGet(a.socket, '/api/v1/hosts')
      const hosts = r.statusCode === 200 && Array.isArray(r.body) ? r.body : []
      if (hosts.length !== want.size || !hosts.every(h => want.has(h.peerId) && (h.self === true || h.peerId === a.status.peerId || (h.connected && h.liveness === 'alive')))) { ok = false; break }
    }
    if (ok) return
    if (now() - t0 > timeoutMs) throw new Error(`the group of ${members.length} did not settle within ${timeoutMs} ms`)
    await sleep(50)
  }
}

/**
 * Link agents[1..n-2] to agents[0] and let the group settle; then link and unlink the
 * last agent `samples` times, each time into a settled group. Returns the link times
 * and the first one (a joiner whose code has not run yet).
 */
async function relinkLast (agents, samples, log) {
  const leader = agents[0]
  const last = agents[agents.length - 1]
  for (let i = 1; i < agents.length - 1; i++) {
    const { token } = await post(leader.socket, '/api/v1/tokens', {})
    await post(agents[i].socket, '/api/v1/link', { token })
  }
  const base = agents.slice(0, -1)
  await settled(base)
  const xs = []
  for (let s = 0; s < samples; s++) {
    const { token } = await post(leader.socket, '/api/v1/tokens', {})
    const t0 = now()
    await post(last.socket, '/api/v1/link', { token })
    xs.push(now() - t0)
    await settled(agents)
    await post(leader.socket, '/api/v1/unlink', { host: last.status.peerId })
    await settled(base)
  }
  log(`  ${samples} links into a group of ${agents.length} timed`)
  for (let i = agents.length - 2; i >= 1; i--) await post(leader.socket, '/api/v1/unlink', { host: agents[i].status.peerId })
  await settled([leader])
  return { samples: xs, first: xs[0] }
}

/**
 * Link agents[1..] to agents[0] `reps` times, waiting for the group to settle after
 * each change; samples[k] = join latencies into a group that becomes k+1 hosts, and
 * first[k] the same for round 1 alone.
 */
async function joinRounds (agents, reps, log) {
  const leader = agents[0]
  const samples = new Map()
  const first = new Map()
  for (let r = 0; r < reps; r++) {
    for (let i = 1; i < agents.length; i++) {
      const { token } = await post(leader.socket, '/api/v1/tokens', {})
      const t0 = now()
      await post(agents[i].socket, '/api/v1/link', { token })
      const ms = now() - t0
      const size = i + 1
      if (!samples.has(size)) samples.set(size, [])
      samples.get(size).push(ms)
      if (r === 0) first.set(size, ms)
      await settled(agents.slice(0, i + 1))
    }
    log(`  round ${r + 1}/${reps}: group of ${agents.length} formed`)
    for (let i = agents.length - 1; i >= 1; i--) {
      await post(leader.socket, '/api/v1/unlink', { host: agents[i].status.peerId })
      await settled(agents.slice(0, i))
    }
  }
  return { samples, first }
}

export async function run (ctx) {
  const reps = ctx.runs ?? (ctx.quick ? 2 : 5)
  const rows = []
  const agents = []
  try {
    for (let i = 0; i < 10; i++) agents.push(await startAgent({ args: ['--hostname', `bench${i}`] }))
    ctx.log(`join: 10 agents up; ${reps} rounds`)
    const rtt = await tcpEchoRtt(50)
    const rttMed = median(rtt)
    const row = (figure, xs, cold) => ({
      figure, value: median(xs), unit: 'ms', baseline: 'TCP connect + 1-byte echo on 127.0.0.1', baselineValue: rttMed,
      budget: BUDGET_MS, n: xs.length, note: `p90 ${percentile(xs, 90).toFixed(1)}, range ${spread(xs, 1)}${cold != null ? `; ${cold}` : ''}`
    })
    // Groups of 3 and 10: the last host is linked and unlinked `samples` times into a settled group.
    const samples = reps * 4
    const small = await relinkLast(agents.slice(0, 3), samples, ctx.log)
    const large = await relinkLast(agents, samples, ctx.log)
    rows.push(row('link into a group of 3 (2 → 3 hosts), API', small.samples, `first (cold) ${small.first.toFixed(1)} ms`))
    rows.push(row('link into a group of 10 (9 → 10 hosts), API', large.samples, `first (cold) ${large.first.toFixed(1)} ms`))
    // Every size on the way: the group is built from 2 to 10 hosts `reps` times.
    const growing = await joinRounds(agents, Math.max(1, Math.ceil(reps / 2)), ctx.log)
    rows.push(row('link, any size 2..10, API', [...growing.samples.values()].flat(), `round 1 median ${median([...growing.first.values()]).toFixed(1)} ms`))

    // End to end with the CLI, as an operator runs it (includes Node start-up).
    const cli = []
    const bare = []
    for (let r = 0; r < reps; r++) {
      const { token } = await post(agents[0].socket, '/api/v1/tokens', {})
      const t0 = now()
      const child = spawnTracked(NODE, [BIN, 'link', token, '--data-dir', agents[1].dataDir, '--json'], { keepStdout: true })
      const res = await child.exited
      if (res.code !== 0) throw new Error(`edgelink link exited ${res.code}: ${child.tail()}`)
      cli.push(now() - t0)
      bare.push(await timeBareNode())
      await post(agents[0].socket, '/api/v1/unlink', { host: agents[1].status.peerId })
    }
    rows.push({ figure: '`edgelink link TOKEN` CLI end to end, group of 2', value: median(cli), unit: 'ms', baseline: 'node -e "" start+exit', baselineValue: median(bare), budget: null, n: cli.length, note: `range ${spread(cli, 0)}; the budget applies to the link itself (rows above)` })
  } finally {
    await Promise.all(agents.map(a => a.stop()))
  }
  return rows
}
