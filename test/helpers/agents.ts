/**
 * Start real agents in this process for integration tests: their own temp data
 * dirs, listening on 127.0.0.1 only, mDNS off (traffic never leaves this machine).
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { pino } from 'pino'
import { Agent } from '../../src/agent/agent.js'
import { loadConfig } from '../../src/agent/config.js'

export interface TestAgentOptions {
  name?: string
  dataDir?: string
  /** Extra config (merged over the test defaults). */
  config?: Record<string, unknown>
}

/** Log level for agents in tests: EDGELINK_TEST_LOG=debug shows each agent's lines, prefixed by its name. */
const TEST_LOG = process.env.EDGELINK_TEST_LOG ?? 'silent'

export function tempDir (prefix = 'el-'): string {
  return mkdtempSync(join(tmpdir(), prefix))
}

export function testConfig (name: string, extra: Record<string, unknown> = {}): ReturnType<typeof loadConfig> {
  return loadConfig({
    env: {},
    overrides: {
      hostname: name,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      mdns: { enabled: false },
      logLevel: TEST_LOG,
      ...extra
    }
  })
}

export function testLogger (name: string): pino.Logger {
  const out = new Writable({
    write (chunk: Buffer, _enc, cb) { process.stderr.write(`[${name}] ${chunk.toString()}`); cb() }
  })
  return pino({ level: TEST_LOG, name }, out)
}

/** Agents started by a test and cleaned up by `stopAll`. */
export class AgentSet {
  readonly agents: Agent[] = []
  private readonly dirs: string[] = []

  async start (opts: TestAgentOptions = {}): Promise<Agent> {
    const name = opts.name ?? `a${this.agents.length + 1}`
    const dataDir = opts.dataDir ?? tempDir(`el-${name}-`)
    if (opts.dataDir == null) this.dirs.push(dataDir)
    const agent = new Agent({ dataDir, config: testConfig(name, opts.config), logger: testLogger(name) })
    await agent.start()
    this.agents.push(agent)
    return agent
  }

  async stopAll (): Promise<void> {
    await Promise.all(this.agents.map(async a => { await a.stop() }))
    this.agents.length = 0
    for (const d of this.dirs) rmSync(d, { recursive: true, force: true })
    this.dirs.length = 0
  }
}
