/**
 * The CLI's exit statuses and messages for usage errors and bad configuration, on
 * the built `bin/edgelink`. None of these start a long-lived agent: each command is
 * expected to exit by itself (a deadline kills it otherwise).
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterEach, beforeAll, describe, expect, it } from 'vitest'
import { assertBuilt, cleanEnv, cleanup, runCli, SAFE_AGENT_FLAGS, stackLines, tempDataDir, type CliResult } from '../helpers/cli.js'

beforeAll(() => { assertBuilt() })
afterEach(async () => { await cleanup() })

/** Exactly one non-empty line on stderr, prefixed `edgelink:`, and no stack trace. */
function expectOneClearLine (res: CliResult): string {
  const lines = res.stderr.split('\n').filter(l => l.trim() !== '')
  expect(stackLines(res.stderr), res.stderr).toEqual([])
  expect(lines, res.stderr).toHaveLength(1)
  expect(lines[0]).toMatch(/^edgelink: /)
  return lines[0]
}

describe('usage errors exit 2', () => {
  it('an unknown command exits 2 and names it', async () => {
    const res = await runCli(['frobnicate'])
    expect(res.code).toBe(2)
    expect(res.stderr).toContain('frobnicate')
    expect(stackLines(res.stderr)).toEqual([])
  })

  it('an unknown option exits 2 and names it', async () => {
    const res = await runCli(['status', '--bogus'])
    expect(res.code).toBe(2)
    expect(res.stderr).toContain('--bogus')
  })

  it('no command at all is a usage error: it prints usage and exits 2', async () => {
    const res = await runCli([])
    expect(res.code).toBe(2)
    expect(res.stdout + res.stderr).toMatch(/Usage: edgelink/)
  })

  it('--help exits 0 and lists the commands', async () => {
    const res = await runCli(['--help'])
    expect(res.code).toBe(0)
    for (const cmd of ['agent', 'status', 'peers', 'repl']) expect(res.stdout).toContain(cmd)
  })

  it('agent --listen garbage exits 2 with one line naming the flag value and the expected form', async () => {
    const dataDir = tempDataDir()
    const res = await runCli(['agent', '--data-dir', dataDir, '--no-mdns', '--listen', 'garbage'])
    expect(res.code).toBe(2)
    const line = expectOneClearLine(res)
    expect(line).toContain('"garbage"')
    expect(line).toContain('command-line flags')
    expect(line).toMatch(/multiaddr/)
  })

  it('agent --log-level loud exits 2 with one line listing the allowed levels', async () => {
    const dataDir = tempDataDir()
    const res = await runCli(['agent', '--data-dir', dataDir, ...SAFE_AGENT_FLAGS, '--log-level', 'loud'])
    expect(res.code).toBe(2)
    const line = expectOneClearLine(res)
    expect(line).toContain('"loud"')
    expect(line).toContain('logLevel')
    expect(line).toMatch(/debug/)
  })
})

describe('a command that needs the agent, with no agent running', () => {
  it('status exits 1 with one line naming the data dir and how to start an agent', async () => {
    const dataDir = tempDataDir()
    const res = await runCli(['status', '--data-dir', dataDir])
    expect(res.code).toBe(1)
    const line = expectOneClearLine(res)
    expect(line).toContain(dataDir)
    expect(line).toContain(`edgelink agent --data-dir ${dataDir}`)
    expect(res.stdout).toBe('')
  })

  it('peers --json exits 1 and prints nothing on stdout', async () => {
    const dataDir = tempDataDir()
    const res = await runCli(['peers', '--json', '--data-dir', dataDir])
    expect(res.code).toBe(1)
    expectOneClearLine(res)
    expect(res.stdout).toBe('')
  })

  it('status finds the data dir from $EDGELINK_HOME', async () => {
    const dataDir = tempDataDir()
    const res = await runCli(['status'], { env: cleanEnv({ EDGELINK_HOME: dataDir }) })
    expect(res.code).toBe(1)
    expect(res.stderr).toContain(dataDir)
  })
})

describe('garbage in the config file exits 1 with one clear line and no stack trace', () => {
  const cases: Array<[string, string, string | Uint8Array, RegExp]> = [
    ['invalid YAML', 'bad.yaml', 'hostname: [unclosed\n  - : :\n', /not valid YAML/],
    ['invalid JSON', 'bad.json', '{"hostname": "a",', /not valid JSON/],
    ['an unknown key', 'unknown.yaml', 'hostnme: a\n', /unknown key `hostnme`/],
    ['a bad value', 'value.yaml', 'net:\n  maxConnections: -5\n', /net\.maxConnections/],
    ['a YAML list', 'list.yaml', '- a\n- b\n', /mapping/],
    ['binary bytes', 'binary.yaml', Uint8Array.from([0, 0xff, 0xfe, 0x0a, 0x3a, 0x20, 0x80, 0x00, 0x01]), /config file/],
    ['a number too large for a double', 'huge.json', '{"mdns": {"interval": 1e999}}', /mdns\.interval/],
    ['a self-referencing YAML alias', 'alias.yaml', 'labels: &a { x: *a }\n', /labels/],
    ['an unknown YAML directive and a bad value', 'directive.yaml', '%FOO bar\n---\nlogLevel: loud\n', /logLevel/]
  ]

  it.each(cases)('%s', async (_what, name, contents, pattern) => {
    const dataDir = tempDataDir()
    const file = join(dataDir, name)
    writeFileSync(file, contents)
    const res = await runCli(['agent', '--data-dir', dataDir, ...SAFE_AGENT_FLAGS, '--config', file])
    expect(res.code, res.stderr).toBe(1)
    const line = expectOneClearLine(res)
    expect(line).toContain(file)
    expect(line).toMatch(pattern)
  })

  it('a missing config file exits 1 naming the path', async () => {
    const dataDir = tempDataDir()
    const file = join(dataDir, 'nope.yaml')
    const res = await runCli(['agent', '--data-dir', dataDir, ...SAFE_AGENT_FLAGS, '--config', file])
    expect(res.code).toBe(1)
    expect(expectOneClearLine(res)).toContain(file)
  })
})

interface PrintedConfig {
  dataDir: string
  configFile: string | null
  config: {
    hostname: string
    logLevel: string
    listen: string[]
    mdns: { enabled: boolean, interval: number, serviceTag: string }
    labels: Record<string, string>
    ui: string | null
  }
}

async function printConfig (args: string[], env: Record<string, string> = {}): Promise<PrintedConfig> {
  const res = await runCli(['agent', '--print-config', '--json', ...args], { env: cleanEnv(env) })
  expect(res.code, res.stderr).toBe(0)
  return JSON.parse(res.stdout) as PrintedConfig
}

describe('agent --print-config --json', () => {
  it('prints one JSON document with the precedence defaults < file < env < flags applied', async () => {
    const dataDir = tempDataDir()
    const file = join(dataDir, 'edgelink.yaml')
    writeFileSync(file, [
      'hostname: from-file',
      'logLevel: debug',
      'listen: [/ip4/127.0.0.1/tcp/4999]',
      'mdns: { interval: 3s }',
      'labels: { site: file }',
      'ui: 127.0.0.1:8080'
    ].join('\n') + '\n')
    const printed = await printConfig(
      ['--data-dir', dataDir, '--config', file, '--hostname', 'from-flag', '--no-mdns'],
      { EDGELINK_HOSTNAME: 'from-env', EDGELINK_LOG_LEVEL: 'warn', EDGELINK_UI: 'none' }
    )
    expect(printed.dataDir).toBe(dataDir)
    expect(printed.configFile).toBe(file)
    expect(printed.config.hostname).toBe('from-flag') // file, env and flag: the flag wins
    expect(printed.config.logLevel).toBe('warn') // file and env: env wins
    expect(printed.config.ui).toBeNull() // file and env: env wins
    expect(printed.config.listen).toEqual(['/ip4/127.0.0.1/tcp/4999']) // file only
    expect(printed.config.mdns).toMatchObject({ enabled: false, interval: 3000, serviceTag: '_edgelink._udp.local' })
    expect(printed.config.labels).toEqual({ site: 'file' })
  })

  it('with no --config, reads DATA_DIR/config.yaml', async () => {
    const dataDir = tempDataDir()
    writeFileSync(join(dataDir, 'config.yaml'), 'hostname: from-data-dir\n')
    const printed = await printConfig(['--data-dir', dataDir])
    expect(printed.configFile).toBe(join(dataDir, 'config.yaml'))
    expect(printed.config.hostname).toBe('from-data-dir')
  })

  it('with no --config, $EDGELINK_CONFIG names the file', async () => {
    const dataDir = tempDataDir()
    const file = join(dataDir, 'elsewhere.json')
    writeFileSync(file, JSON.stringify({ hostname: 'from-env-file' }))
    const printed = await printConfig(['--data-dir', dataDir], { EDGELINK_CONFIG: file })
    expect(printed.configFile).toBe(file)
    expect(printed.config.hostname).toBe('from-env-file')
  })

  it('a misspelt EDGELINK_* variable is named on stderr with the name it resembles; the config is as if it were unset', async () => {
    const dataDir = tempDataDir()
    const res = await runCli(['agent', '--print-config', '--json', '--data-dir', dataDir], { env: cleanEnv({ EDGELINK_LISTN: '/ip4/127.0.0.1/tcp/4999' }) })
    expect(res.code, res.stderr).toBe(0)
    expect(res.stderr).toBe('edgelink: warning: environment variable EDGELINK_LISTN is not one edgelink reads, so it changes nothing; did you mean EDGELINK_LISTEN?\n')
    expect((JSON.parse(res.stdout) as PrintedConfig).config.listen).toEqual(['/ip4/0.0.0.0/tcp/4100'])
  })

  it('with nothing set, shows the defaults', async () => {
    const dataDir = tempDataDir()
    const printed = await printConfig(['--data-dir', dataDir])
    expect(printed.configFile).toBeNull()
    expect(printed.config.listen).toEqual(['/ip4/0.0.0.0/tcp/4100'])
    expect(printed.config.mdns.enabled).toBe(true)
    expect(printed.config.logLevel).toBe('info')
  })
})
