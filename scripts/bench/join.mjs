/**
 * Join latency (issue 3): time from `POST /api/v1/link` on an idle agent to the
 * answer, which comes only after the leader committed the roster on a majority.
 * Real agent processes on 127.0.0.1. Baseline: a TCP connect + 1-byte echo round
 * trip on 127.0.0.1 in the same run (the network's own cost), and `node -e ""` for
 * the CLI figure.
 */
import { createServer, connect } from 'node:net'
import { apiRequest, median, now, percentile, spread, startAgent, timeBareNode, spawnTracked, NODE, BIN } from './_lib.mjs'

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

/** Link agents[1..] to agents[0] `reps` times; samples[k] = join latencies into a group that becomes k+1 hosts. */
async function joinRounds (agents, reps, log) {
  const leader = agents[0]
  const samples = new Map()
  for (let r = 0; r < reps; r++) {
    for (let i = 1; i < agents.length; i++) {
      const { token } = await post(leader.socket, '/api/v1/tokens', {})
      const t0 = now()
      await post(agents[i].socket, '/api/v1/link', { token })
      const ms = now() - t0
      const size = i + 1
      if (!samples.has(size)) samples.set(size, [])
      samples.get(size).push(ms)
    }
    log(`  round ${r + 1}/${reps}: group of ${agents.length} formed`)
    for (let i = agents.length - 1; i >= 1; i--) {
      await post(leader.socket, '/api/v1/unlink', { host: agents[i].status.peerId })
    }
  }
  return samples
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
    const small = await joinRounds(agents.slice(0, 3), reps, ctx.log)
    const large = await joinRounds(agents, reps, ctx.log)
    const row = (figure, xs) => ({
      figure, value: median(xs), unit: 'ms', baseline: 'TCP connect + 1-byte echo on 127.0.0.1', baselineValue: rttMed,
      budget: BUDGET_MS, n: xs.length, note: `p90 ${percentile(xs, 90).toFixed(1)}, range ${spread(xs, 1)}`
    })
    rows.push(row('link into a group of 3 (2 → 3 hosts), API', small.get(3)))
    rows.push(row('link into a group of 10 (9 → 10 hosts), API', large.get(10)))
    rows.push(row('link, any size 2..10, API', [...large.values()].flat()))

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
