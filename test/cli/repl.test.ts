/**
 * `edgelink repl` attached to a running agent process, with stdin piped (no TTY).
 * Leaving the REPL must leave the agent running.
 */
import { connect } from 'node:net'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  apiGet,
  assertBuilt,
  cleanup,
  cleanupKept,
  keep,
  runCli,
  spawnCli,
  startAgent,
  tempDataDir,
  withDeadline,
  type AgentProcess,
  type CliResult
} from '../helpers/cli.js'

beforeAll(() => { assertBuilt() })
afterEach(async () => { await cleanup() })

/**
 * Attach, type `input` and wait for the repl command to exit by itself. stdin stays
 * open, so only `.exit` (or the agent) can end the session.
 */
async function replSession (dataDir: string, input: string): Promise<CliResult> {
  const s = spawnCli(['repl', '--data-dir', dataDir])
  s.proc.stdin?.write(input)
  try {
    return await withDeadline(s, 15_000, 'edgelink repl')
  } finally {
    s.proc.stdin?.end()
  }
}

async function expectAgentAnswers (agent: AgentProcess): Promise<void> {
  expect(agent.proc.exitCode).toBeNull()
  const res = await apiGet(agent.dataDir, '/api/v1/status')
  expect(res.status).toBe(200)
  expect((res.body as { peerId: string }).peerId).toBe(agent.peerId)
}

describe('edgelink repl attached to a running agent', () => {
  // One agent for the whole block: every session must leave it running for the next.
  let agent: AgentProcess
  let dataDir: string
  beforeAll(async () => {
    dataDir = tempDataDir()
    agent = await startAgent(dataDir, ['--hostname', 'repl-host'])
    keep(agent)
  })
  afterAll(async () => { await cleanupKept() })

  it('status() shows the PeerId, .help lists the helpers, .exit leaves with 0 and the agent keeps running', async () => {
    const res = await replSession(dataDir, 'status()\n.help\n.exit\n')
    expect(res.code, res.stderr).toBe(0)
    expect(res.stdout).toContain(agent.peerId)
    for (const helper of ['status()', 'peers()', 'ping(', 'dial(']) expect(res.stdout).toContain(helper)
    expect(res.stdout).toMatch(/leaves the agent running/)
    await expectAgentAnswers(agent)
  })

  it('can attach twice in a row; each session sees the agent and the agent survives both', async () => {
    const first = await replSession(dataDir, 'status().peerId\n.exit\n')
    expect(first.code, first.stderr).toBe(0)
    expect(first.stdout).toContain(agent.peerId)

    const second = await replSession(dataDir, 'peers().length\nagent.status\n.exit\n')
    expect(second.code, second.stderr).toBe(0)
    expect(second.stdout).toMatch(/\b0\b/)
    expect(second.stdout).toContain("'running'")
    await expectAgentAnswers(agent)
  })

  it('an error typed in the REPL is shown and the session goes on', async () => {
    const res = await replSession(dataDir, 'await dial("not a multiaddr")\nstatus().hostname\n.exit\n')
    expect(res.code).toBe(0)
    expect(res.stdout).toMatch(/Error/)
    expect(res.stdout).toContain("'repl-host'")
    await expectAgentAnswers(agent)
  })

  it('end of input (Ctrl-D) leaves the REPL with 0 and the agent keeps running', async () => {
    const res = await runCli(['repl', '--data-dir', dataDir], { input: 'status().peerId\n', timeoutMs: 15_000 })
    expect(res.code).toBe(0)
    expect(res.stdout).toContain(agent.peerId)
    await expectAgentAnswers(agent)
  })

  it('a garbage handshake on the REPL socket is refused and the agent keeps running', async () => {
    // Not JSON; and JSON that is not an object (`null` once killed the agent).
    for (const line of ['\u0000\u00ffnot json', 'null', '42', '"hello"', '[true]']) {
      const answer = await new Promise<string>((resolve, reject) => {
        const socket = connect(join(dataDir, 'repl.sock'))
        let text = ''
        socket.setEncoding('utf8')
        socket.on('data', (s: string) => { text += s })
        socket.on('error', reject)
        socket.on('close', () => { resolve(text) })
        socket.write(line + '\n')
      })
      expect(answer, line).toMatch(/bad handshake/)
      await expectAgentAnswers(agent)
    }
  })
})

describe('edgelink repl without an agent', () => {
  it('exits 1 and says how to start one', async () => {
    const dataDir = tempDataDir()
    const res = await runCli(['repl', '--data-dir', dataDir])
    expect(res.code).toBe(1)
    expect(res.stderr).toContain(`edgelink agent --data-dir ${dataDir}`)
  })
})
