import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import fc from 'fast-check'
import {
  configSchema,
  DEFAULT_MDNS_INTERVAL_MS,
  DEFAULT_MDNS_SERVICE_TAG,
  DEFAULT_PORT,
  defaultConfig,
  loadConfig,
  ENV_KEYS,
  resolveLayers,
  unknownEnvWarnings,
  type ConfigLayer
} from '../../src/agent/config.js'
import { ConfigError } from '../../src/errors.js'

const dir = mkdtempSync(join(tmpdir(), 'el-config-'))
afterAll(() => { rmSync(dir, { recursive: true, force: true }) })

let fileCount = 0
/** Write a config file with the given name suffix and contents; returns its path. */
function configFile (ext: string, contents: string | Uint8Array): string {
  const file = join(dir, `config-${++fileCount}.${ext}`)
  writeFileSync(file, contents)
  return file
}

/** The ConfigError `fn` throws; fails the test if it returns or throws anything else. */
function configErrorOf (fn: () => unknown): ConfigError {
  let thrown: unknown
  try {
    fn()
  } catch (err) {
    thrown = err
  }
  expect(thrown, 'expected a ConfigError to be thrown').toBeInstanceOf(Error)
  expect((thrown as Error).name).toBe('ConfigError')
  return thrown as ConfigError
}

describe('config precedence: defaults < file < env < flags', () => {
  it('with no file, env or flags the defaults apply and are valid', () => {
    const config = loadConfig({ env: {} })
    expect(config.listen).toEqual([`/ip4/0.0.0.0/tcp/${DEFAULT_PORT}`])
    expect(config.mdns).toEqual({ enabled: true, serviceTag: DEFAULT_MDNS_SERVICE_TAG, interval: DEFAULT_MDNS_INTERVAL_MS })
    expect(config.logLevel).toBe('info')
    expect(config.ui).toBeNull()
    expect(config.peers).toEqual([])
    expect(configSchema.safeParse(defaultConfig()).success).toBe(true)
  })

  it('a JSON file overrides defaults key by key, keeping sibling defaults in nested objects', () => {
    const file = configFile('json', JSON.stringify({ hostname: 'from-file', mdns: { interval: '2s' }, net: { maxConnections: 7 } }))
    const config = loadConfig({ file, env: {} })
    expect(config.hostname).toBe('from-file')
    expect(config.mdns).toEqual({ enabled: true, serviceTag: DEFAULT_MDNS_SERVICE_TAG, interval: 2000 })
    expect(config.net.maxConnections).toBe(7)
    expect(config.net.allow).toEqual(defaultConfig().net?.allow)
  })

  it('a YAML file overrides defaults the same way', () => {
    const file = configFile('yaml', 'hostname: yaml-host\nlogLevel: debug\nmdns:\n  enabled: false\nlisten:\n  - /ip4/127.0.0.1/tcp/4999\n')
    const config = loadConfig({ file, env: {} })
    expect(config.hostname).toBe('yaml-host')
    expect(config.logLevel).toBe('debug')
    expect(config.mdns.enabled).toBe(false)
    expect(config.mdns.interval).toBe(DEFAULT_MDNS_INTERVAL_MS)
    expect(config.listen).toEqual(['/ip4/127.0.0.1/tcp/4999'])
  })

  it('a .yml file with a JSON-style flow mapping is read as YAML', () => {
    const file = configFile('yml', '{ hostname: flow-host, ui: "127.0.0.1:8080" }\n')
    expect(loadConfig({ file, env: {} })).toMatchObject({ hostname: 'flow-host', ui: '127.0.0.1:8080' })
  })

  it('EDGELINK_* environment variables override the file', () => {
    const file = configFile('yaml', 'hostname: from-file\nlogLevel: debug\nmdns: { enabled: true, interval: 1s }\n')
    const config = loadConfig({
      file,
      env: {
        EDGELINK_HOSTNAME: 'from-env',
        EDGELINK_LOG_LEVEL: 'warn',
        EDGELINK_MDNS: 'off',
        EDGELINK_MDNS_INTERVAL: '2m',
        EDGELINK_LISTEN: '/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2',
        EDGELINK_UI: '127.0.0.1:8080'
      }
    })
    expect(config.hostname).toBe('from-env')
    expect(config.logLevel).toBe('warn')
    expect(config.mdns.enabled).toBe(false)
    expect(config.mdns.interval).toBe(120_000)
    expect(config.listen).toEqual(['/ip4/127.0.0.1/tcp/1', '/ip4/127.0.0.1/tcp/2'])
    expect(config.ui).toBe('127.0.0.1:8080')
  })

  it('EDGELINK_UI=none turns off a UI set in the file', () => {
    const file = configFile('yaml', 'ui: 127.0.0.1:8080\n')
    expect(loadConfig({ file, env: { EDGELINK_UI: 'none' } }).ui).toBeNull()
  })

  it('flags override the environment, and each key keeps the value of the highest layer that set it', () => {
    const file = configFile('json', JSON.stringify({ hostname: 'from-file', logLevel: 'debug', mdns: { interval: '3s' }, labels: { site: 'a' } }))
    const config = loadConfig({
      file,
      env: { EDGELINK_HOSTNAME: 'from-env', EDGELINK_LOG_LEVEL: 'warn' },
      flags: { hostname: 'from-flag', mdns: { enabled: false } }
    })
    expect(config.hostname).toBe('from-flag') // set in file, env and flags
    expect(config.logLevel).toBe('warn') // set in file and env
    expect(config.mdns.interval).toBe(3000) // set in file only
    expect(config.mdns.enabled).toBe(false) // set in flags only
    expect(config.mdns.serviceTag).toBe(DEFAULT_MDNS_SERVICE_TAG) // default only
    expect(config.labels).toEqual({ site: 'a' })
  })

  it('lists replace the lower layer instead of being appended to', () => {
    const file = configFile('yaml', 'listen: [/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2]\npeers: [/ip4/127.0.0.1/tcp/9]\n')
    const config = loadConfig({ file, env: {}, flags: { listen: ['/ip4/127.0.0.1/tcp/3'] } })
    expect(config.listen).toEqual(['/ip4/127.0.0.1/tcp/3'])
    expect(config.peers).toEqual(['/ip4/127.0.0.1/tcp/9'])
  })

  it('labels from a higher layer replace the lower layer\'s labels whole', () => {
    const file = configFile('yaml', 'labels: { site: a, rack: r1 }\n')
    expect(loadConfig({ file, env: {}, flags: { labels: { site: 'b' } } }).labels).toEqual({ site: 'b' })
  })
})

describe('config validation errors name the key, the source and what is allowed', () => {
  it('a bad multiaddr flag names the key, "command-line flags", the value and the expected form', () => {
    const err = configErrorOf(() => loadConfig({ env: {}, flags: { listen: ['garbage'] } }))
    expect(err.message).toContain('`listen.0`')
    expect(err.message).toContain('command-line flags')
    expect(err.message).toContain('"garbage"')
    expect(err.message).toMatch(/multiaddr/)
    expect(err.sources).toEqual(['command-line flags'])
    expect(err.code).toBe('CONFIG_INVALID')
  })

  it('a bad log level in the file names the file and lists the allowed levels', () => {
    const file = configFile('yaml', 'logLevel: loud\n')
    const err = configErrorOf(() => loadConfig({ file, env: {} }))
    expect(err.message).toContain('`logLevel`')
    expect(err.message).toContain(`config file ${file}`)
    expect(err.message).toContain('"loud"')
    for (const level of ['error', 'warn', 'info', 'debug']) expect(err.message).toContain(level)
    expect(err.sources).toEqual([`config file ${file}`])
  })

  it('a bad duration in the environment names the variable and the expected form', () => {
    const err = configErrorOf(() => loadConfig({ env: { EDGELINK_MDNS_INTERVAL: 'soon' } }))
    expect(err.message).toContain('`mdns.interval`')
    expect(err.message).toContain('environment variable EDGELINK_MDNS_INTERVAL')
    expect(err.message).toMatch(/duration such as/)
    expect(err.sources).toEqual(['environment variable EDGELINK_MDNS_INTERVAL'])
  })

  it('a non-boolean EDGELINK_MDNS names the variable and says true or false', () => {
    const err = configErrorOf(() => loadConfig({ env: { EDGELINK_MDNS: 'maybe' } }))
    expect(err.message).toContain('EDGELINK_MDNS')
    expect(err.message).toContain('"maybe"')
    expect(err.message).toMatch(/true or false/)
    expect(err.sources).toEqual(['environment variable EDGELINK_MDNS'])
  })

  it('a mdns.interval of the wrong type says a duration is expected', () => {
    const file = configFile('json', JSON.stringify({ mdns: { interval: true } }))
    const err = configErrorOf(() => loadConfig({ file, env: {} }))
    expect(err.message).toContain('`mdns.interval`')
    expect(err.message).toContain(`config file ${file}`)
    expect(err.message).toMatch(/duration/)
  })

  it('durations out of range are refused with the range (a 0 or a 30d interval made timers fire every millisecond)', () => {
    for (const [yaml, key, range] of [
      ['group:\n  reconnectInterval: 0\n', 'group.reconnectInterval', 'from 10ms to 24h'],
      ['status:\n  antiEntropyInterval: 30d\n', 'status.antiEntropyInterval', 'from 10ms to 24h'],
      ['mdns:\n  interval: 0\n', 'mdns.interval', 'from 10ms to 24h'],
      ['group:\n  tokenTtl: 120\n', 'group.tokenTtl', 'from 1s to 24h']
    ] as const) {
      const file = configFile('yaml', yaml)
      const err = configErrorOf(() => loadConfig({ file, env: {} }))
      expect(err.message, yaml).toContain(`\`${key}\``)
      expect(err.message, yaml).toContain(`expected ${key} ${range}`)
    }
  })

  it('liveness thresholds out of order, and a default token lifetime above the longest allowed, name the keys at load', () => {
    const late = configErrorOf(() => loadConfig({ file: configFile('yaml', 'status:\n  suspectAfter: 5s\n'), env: {} }))
    expect(late.message).toContain('expected status.downAfter (4s) longer than status.suspectAfter (5s)')
    const probe = configErrorOf(() => loadConfig({ file: configFile('yaml', 'status:\n  probeInterval: 3s\n'), env: {} }))
    expect(probe.message).toContain('expected status.suspectAfter (3s) longer than status.probeInterval (3s)')
    const ttl = configErrorOf(() => loadConfig({ file: configFile('yaml', 'group:\n  tokenTtl: 2h\n  maxTokenTtl: 1h\n'), env: {} }))
    expect(ttl.message).toContain('expected group.tokenTtl (2h) at most group.maxTokenTtl (1h)')
  })

  it('more labels than members take in a status (64) are refused at load', () => {
    const labels = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v']))
    const err = configErrorOf(() => loadConfig({ file: configFile('json', JSON.stringify({ labels })), env: {} }))
    expect(err.message).toContain('`labels`')
    expect(err.message).toContain('expected at most 64 labels')
    expect(loadConfig({ file: configFile('json', JSON.stringify({ labels: Object.fromEntries(Object.entries(labels).slice(0, 64)) })), env: {} }).labels).toHaveProperty('k63')
  })

  it('a --peer whose /p2p/ part is not a PeerId is refused at load, naming it', () => {
    const err = configErrorOf(() => loadConfig({ env: {}, flags: { peers: ['/ip4/127.0.0.1/tcp/4100/p2p/12D3KooWabc'] } }))
    expect(err.message).toContain('`peers.0`')
    expect(err.message).toContain('is not a valid PeerId (12D3KooWabc)')
    expect(loadConfig({ env: {}, flags: { peers: ['/ip4/127.0.0.1/tcp/4100/p2p/12D3KooWGDMwwqrpcYKpKCgxuKT2NfqPqa94QnkoBBpqvCaiCzWd'] } }).peers).toHaveLength(1)
  })

  it('maxConnections below 1 states the lower bound', () => {
    const err = configErrorOf(() => loadConfig({ env: {}, flags: { net: { maxConnections: 0 } } }))
    expect(err.message).toContain('`net.maxConnections`')
    expect(err.message).toMatch(/>=\s*1|at least 1/)
  })

  it('an empty EDGELINK_LISTEN is refused: the agent needs a listen address', () => {
    const err = configErrorOf(() => loadConfig({ env: { EDGELINK_LISTEN: ' , ' } }))
    expect(err.message).toContain('`listen`')
    expect(err.message).toMatch(/at least one listen address/)
  })

  it('a UI port above 65535 is refused', () => {
    const err = configErrorOf(() => loadConfig({ env: {}, flags: { ui: '127.0.0.1:99999' } }))
    expect(err.message).toContain('`ui`')
    expect(err.sources).toEqual(['command-line flags'])
  })

  it('errors from several layers are all reported with their own source', () => {
    const file = configFile('yaml', 'logLevel: loud\n')
    const err = configErrorOf(() => loadConfig({ file, env: {}, flags: { listen: ['nope'] } }))
    expect(err.sources).toContain(`config file ${file}`)
    expect(err.sources).toContain('command-line flags')
    expect(err.message).toContain('`logLevel`')
    expect(err.message).toContain('`listen.0`')
  })
})

describe('unknown config keys are rejected', () => {
  it('an unknown top-level key in the file is named with the file and the allowed keys', () => {
    const file = configFile('yaml', 'listn: [/ip4/127.0.0.1/tcp/1]\n')
    const err = configErrorOf(() => loadConfig({ file, env: {} }))
    expect(err.message).toContain('unknown key `listn`')
    expect(err.message).toContain(`config file ${file}`)
    expect(err.message).toMatch(/allowed: .*\blisten\b/)
    expect(err.sources).toEqual([`config file ${file}`])
  })

  it('an unknown nested key names its parent and the allowed nested keys', () => {
    const err = configErrorOf(() => loadConfig({ env: {}, flags: { mdns: { enable: false } } }))
    expect(err.message).toContain('unknown key `enable` under `mdns`')
    expect(err.message).toMatch(/allowed: .*\benabled\b/)
    expect(err.sources).toEqual(['command-line flags'])
  })

  it('a "__proto__" key in a JSON config file is rejected as an unknown key of that file', () => {
    const file = configFile('json', '{"__proto__": {"x": 1}}')
    const err = configErrorOf(() => loadConfig({ file, env: {} }))
    expect(err.message).toContain('`__proto__`')
    expect(err.sources).toEqual([`config file ${file}`])
  })

  it('a "__proto__" key with a scalar value is rejected too, not silently ignored', () => {
    const file = configFile('json', '{"__proto__": 5}')
    const err = configErrorOf(() => loadConfig({ file, env: {} }))
    expect(err.message).toContain('`__proto__`')
  })
})

describe('garbage config files give a ConfigError, never a crash', () => {
  it('invalid JSON names the file and the format on one line', () => {
    const file = configFile('json', '{"hostname": "a",')
    const err = configErrorOf(() => loadConfig({ file, env: {} }))
    expect(err.message).toContain(file)
    expect(err.message).toMatch(/not valid JSON/)
    expect(err.message).not.toContain('\n')
  })

  it('invalid YAML names the file and the format on one line', () => {
    const file = configFile('yaml', 'hostname: [unclosed\n  - : :\n')
    const err = configErrorOf(() => loadConfig({ file, env: {} }))
    expect(err.message).toContain(file)
    expect(err.message).toMatch(/not valid YAML/)
    expect(err.message).not.toContain('\n')
  })

  it('a mapping with a "length" that is not a number where text is expected names the key, not a TypeError', () => {
    const file = configFile('yaml', 'hostname:\n  length:\n    toString: ""\nlisten: {length: {valueOf: 1, toString: 2}}\n')
    const err = configErrorOf(() => loadConfig({ file, env: {} }))
    expect(err.message).toContain('`hostname`')
    expect(err.message).toContain(`config file ${file}`)
    expect(err.message).toMatch(/"length" that is not a number/)
  })

  it('a YAML list instead of a mapping says a mapping is expected', () => {
    const file = configFile('yaml', '- a\n- b\n')
    const err = configErrorOf(() => loadConfig({ file, env: {} }))
    expect(err.message).toContain(file)
    expect(err.message).toMatch(/mapping/)
    expect(err.message).toMatch(/list/)
  })

  it('a scalar file (a lone string) says a mapping is expected', () => {
    const file = configFile('yaml', 'just some words\n')
    expect(configErrorOf(() => loadConfig({ file, env: {} })).message).toMatch(/mapping/)
  })

  it('a binary file is refused with a ConfigError naming the file', () => {
    const file = configFile('yaml', Uint8Array.from([0, 1, 2, 0xff, 0xfe, 0x0a, 0x3a, 0x20, 0x80, 0x00]))
    expect(configErrorOf(() => loadConfig({ file, env: {} })).message).toContain(file)
  })

  it('numbers too large for a double are refused, naming the key and not showing the value as null', () => {
    const file = configFile('json', '{"mdns": {"interval": 1e999}}')
    const err = configErrorOf(() => loadConfig({ file, env: {} }))
    expect(err.message).toContain('`mdns.interval`')
    expect(err.message).toMatch(/duration/)
    expect(err.message).not.toMatch(/: null:/)
  })

  it('a YAML number too large for maxConnections is refused', () => {
    const file = configFile('yaml', 'net: { maxConnections: 1e400 }\n')
    expect(configErrorOf(() => loadConfig({ file, env: {} })).message).toContain('`net.maxConnections`')
  })

  it('a self-referencing YAML alias gives a ConfigError, not a TypeError', () => {
    const file = configFile('yaml', 'labels: &a { x: *a }\n')
    const err = configErrorOf(() => loadConfig({ file, env: {} }))
    expect(err.message).toContain('labels')
    expect(err.sources).toEqual([`config file ${file}`])
  })

  it('a YAML alias bomb is refused quickly', () => {
    const levels = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for (const [prev, name] of [['a', 'b'], ['b', 'c'], ['c', 'd'], ['d', 'e'], ['e', 'f'], ['f', 'g']]) {
      levels.push(`${name}: &${name} [${Array(9).fill(`*${prev}`).join(',')}]`)
    }
    const file = configFile('yaml', levels.join('\n') + '\n')
    const started = Date.now()
    expect(configErrorOf(() => loadConfig({ file, env: {} })).message).toContain(file)
    expect(Date.now() - started).toBeLessThan(2_000)
  })

  it('a missing file names the path and says to check --config', () => {
    const file = join(dir, 'does-not-exist.yaml')
    const err = configErrorOf(() => loadConfig({ file, env: {} }))
    expect(err.message).toContain(file)
    expect(err.message).toContain('ENOENT')
    expect(err.message).toContain('--config')
  })

  it('a directory given as the config file is a ConfigError', () => {
    expect(configErrorOf(() => loadConfig({ file: dir, env: {} })).message).toContain('EISDIR')
  })

  it('an empty file means "no settings": the defaults apply', () => {
    const file = configFile('yaml', '')
    expect(loadConfig({ file, env: {} })).toEqual(loadConfig({ env: {} }))
  })

  it('any bytes in a .yaml or .json config file give a valid config or a ConfigError', () => {
    fc.assert(fc.property(
      fc.constantFrom('yaml', 'json'),
      fc.oneof(
        fc.uint8Array({ maxLength: 300 }),
        fc.string({ maxLength: 300 }).map(s => Buffer.from(s)),
        fc.jsonValue({ maxDepth: 4 }).map(v => Buffer.from(JSON.stringify(v)))
      ),
      (ext, bytes) => {
        const file = configFile(ext, bytes)
        try {
          loadConfig({ file, env: {} })
        } catch (err) {
          if ((err as Error).name !== 'ConfigError') throw err
        } finally {
          rmSync(file, { force: true })
        }
      }
    ), { numRuns: 300 })
  })
})

/** Keys a person might write at the top level, plus ones that stress a naive merge. */
const topKeys = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('hostname', 'listen', 'announce', 'peers', 'mdns', 'ui', 'logLevel', 'labels', 'net') },
  { weight: 1, arbitrary: fc.constantFrom('__proto__', 'constructor', 'toString', '') },
  { weight: 1, arbitrary: fc.string({ maxLength: 8 }) }
)
const nestedKeys = fc.oneof(
  fc.constantFrom('enabled', 'serviceTag', 'interval', 'allow', 'maxConnections', '__proto__', 'x'),
  fc.string({ maxLength: 6 })
)
/** A JSON value, sometimes an object using the config's own nested keys. */
const layerValue = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }),
  fc.dictionary(nestedKeys, fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 }),
  fc.constantFrom('2s', '500ms', '/ip4/127.0.0.1/tcp/1', 'debug', 1e308, -1, 0, true, null)
)
/** One layer's values exactly as JSON.parse would hand them over from a file. */
const layerValues = fc.dictionary(topKeys, layerValue, { maxKeys: 5 })
  .map(v => JSON.parse(JSON.stringify(v)) as Record<string, unknown>)
const layers = fc.array(layerValues, { minLength: 1, maxLength: 3 })
  .map(values => [
    { source: 'defaults', values: defaultConfig() as Record<string, unknown> },
    ...values.map((v, i) => ({ source: `layer ${i + 1}`, values: v }))
  ] satisfies ConfigLayer[])

describe('resolveLayers with arbitrary JSON values', () => {
  it('returns a config the schema accepts, or throws ConfigError: never another error', () => {
    fc.assert(fc.property(layers, (ls) => {
      let config
      try {
        config = resolveLayers(ls)
      } catch (err) {
        if ((err as Error).name !== 'ConfigError') throw err
        return
      }
      expect(configSchema.safeParse(config).success).toBe(true)
    }), { numRuns: 500 })
  })

  it('a wrong type found only past what the walk looks at (no path) blames every layer given, and says so plainly', () => {
    // 100 001 labels, then one whose value is a mapping with a "length" zod cannot compare:
    // safeParse's walk stops before it, zod throws, and the error has no path to blame.
    const labels: Record<string, unknown> = {}
    for (let i = 0; i < 100_001; i++) labels[`k${i}`] = 'x'
    labels.zz = { length: { toString: '' } }
    const err = configErrorOf(() => resolveLayers([
      { source: 'defaults', values: defaultConfig() as Record<string, unknown> },
      { source: 'config file /etc/edgelink.yaml', values: { labels } },
      { source: 'environment (EDGELINK_*)', values: {} }
    ]))
    expect(err.message).toMatch(/^invalid configuration: a value has the wrong type/)
    expect(err.sources).toEqual(['config file /etc/edgelink.yaml', 'environment (EDGELINK_*)'])
  })

  it('never blames the (valid) defaults: every source in a ConfigError is a layer that was given', () => {
    fc.assert(fc.property(layers, (ls) => {
      try {
        resolveLayers(ls)
      } catch (err) {
        if ((err as Error).name !== 'ConfigError') return // the property above reports those
        const given = ls.slice(1).map(l => l.source)
        for (const s of (err as ConfigError).sources) expect(given).toContain(s)
      }
    }), { numRuns: 500 })
  })
})

describe('EDGELINK_* variables nothing reads', () => {
  it('each gets one warning line, with the nearest known name when one is close', () => {
    expect(unknownEnvWarnings({ EDGELINK_LISTN: '/ip4/127.0.0.1/tcp/1', EDGELINK_LISTEN: 'x', EDGELINK_HOME: '/x', PATH: '/bin', EDGELINK_API_TIMEOUT: '5s' })).toEqual([
      'environment variable EDGELINK_LISTN is not one edgelink reads, so it changes nothing; did you mean EDGELINK_LISTEN?'
    ])
    const far = unknownEnvWarnings({ EDGELINK_WHATEVER_ELSE: '1' })
    expect(far).toHaveLength(1)
    expect(far[0]).toMatch(/^environment variable EDGELINK_WHATEVER_ELSE is not one edgelink reads, so it changes nothing; edgelink reads EDGELINK_HOSTNAME, EDGELINK_LISTEN, /)
  })

  it('every name the README documents, and none other than EDGELINK_*, passes without a warning', () => {
    expect(unknownEnvWarnings({ ...Object.fromEntries(Object.keys(ENV_KEYS).map(k => [k, ''])), EDGELINK_HOME: '', EDGELINK_CONFIG: '', EDGELINK_API_TIMEOUT: '', HOME: '/root', edgelink_listen: 'x' })).toEqual([])
  })

  it('garbage names never throw, and name only themselves', () => {
    fc.assert(fc.property(fc.string({ maxLength: 40 }), (tail) => {
      const name = `EDGELINK_${tail}`
      const out = unknownEnvWarnings({ [name]: 'v' })
      expect(out.length).toBeLessThanOrEqual(1)
      if (out.length === 1) expect(out[0].startsWith(`environment variable ${name} is not one`)).toBe(true)
    }))
  })
})
