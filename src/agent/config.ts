/**
 * Agent configuration: defaults that work with no file, then a config file (JSON or
 * YAML), then `EDGELINK_*` environment variables, then command-line flags. Each layer
 * overrides the one before it key by key. The merged result is validated with zod;
 * an invalid value names the key, where it came from, the value and what is allowed.
 */
import { readFileSync } from 'node:fs'
import { hostname as osHostname } from 'node:os'
import { parse as parseYaml } from 'yaml'
import { z } from 'zod'
import { safeParse } from '../util/parse.js'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import { ConfigError, errorMessage } from '../errors.js'
import { formatDuration, parseDuration } from '../util/duration.js'
import { MAX_LABELS } from '../status/records.js'

/** TCP port the agent listens on by default: fixed, so restarted hosts find each other at stored addresses. */
export const DEFAULT_PORT = 4100
/** mDNS service tag: only edgelink agents answer it, so other libp2p software on the LAN is not listed. */
export const DEFAULT_MDNS_SERVICE_TAG = '_edgelink._udp.local'
/** mDNS query interval: a LAN host shows up in `peers` within one interval; 5 s keeps multicast chatter negligible. */
export const DEFAULT_MDNS_INTERVAL_MS = 5_000

/** Default token lifetime: long enough to walk to the other host and paste, short enough to be useless if leaked. */
export const DEFAULT_TOKEN_TTL_MS = 2 * 60 * 1000

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

/** Longest duration: a timer cannot wait longer than 2^31-1 ms (node fires it at once instead); a day is plenty. */
const MAX_DURATION_MS = 86_400_000

/**
 * A duration from `min` to `max` ms. A bare number is milliseconds; 0 or a day and more
 * were accepted once and made timers fire every millisecond.
 */
const duration = (what: string, min = 10, max = MAX_DURATION_MS): z.ZodType<number> => z.union([z.number(), z.string()], { error: `expected ${what} as a duration such as 500ms, 10s or 2m` })
  .transform((v, ctx) => {
    const ms = typeof v === 'number' ? v : parseDuration(v)
    if (ms === undefined || !Number.isFinite(ms) || ms < 0) {
      ctx.addIssue({ code: 'custom', message: `expected ${what} as a duration such as 500ms, 10s or 2m` })
      return z.NEVER
    }
    if (ms < min || ms > max) {
      ctx.addIssue({ code: 'custom', message: `expected ${what} from ${formatDuration(min)} to ${formatDuration(max)}, got ${formatDuration(ms)} (a bare number is milliseconds)` })
      return z.NEVER
    }
    return ms
  })

const multiaddrString = z.string().superRefine((v, ctx) => {
  try {
    multiaddr(v)
  } catch {
    ctx.addIssue({ code: 'custom', message: 'expected a multiaddr such as /ip4/0.0.0.0/tcp/4100' })
  }
})

/** A peer to dial: a multiaddr whose `/p2p/` part, if any, is a valid PeerId. */
const peerAddress = z.string().superRefine((v, ctx) => {
  let id: string | undefined
  try {
    id = multiaddr(v).getComponents().find(c => c.name === 'p2p')?.value
  } catch {
    ctx.addIssue({ code: 'custom', message: 'expected a multiaddr such as /ip4/10.0.0.2/tcp/4100/p2p/12D3KooW…' })
    return
  }
  if (id == null) return
  try {
    peerIdFromString(id)
  } catch {
    ctx.addIssue({ code: 'custom', message: `its /p2p/ part is not a valid PeerId (${id.slice(0, 60)}); copy it whole from \`edgelink status\` on that host` })
  }
})

const hostPort = z.string()
  .regex(/^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, 'expected HOST:PORT such as 127.0.0.1:8080')
  .refine(v => { const port = Number(v.slice(v.lastIndexOf(':') + 1)); return port >= 1 && port <= 65535 }, 'expected a port from 1 to 65535')

export const configSchema = z.object({
  /** Name shown to operators; defaults to the machine's hostname. */
  hostname: z.string().min(1).max(253).regex(/^[\w.-]+$/, 'expected letters, digits, dot, dash or underscore'),
  /** Multiaddrs to listen on. */
  listen: z.array(multiaddrString).min(1, 'expected at least one listen address'),
  /** Multiaddrs to announce instead of the listen addresses (NAT, port forwards). */
  announce: z.array(multiaddrString),
  /** Multiaddrs of peers to dial at start (used where mDNS is off). */
  peers: z.array(peerAddress),
  mdns: z.object({
    enabled: z.boolean(),
    serviceTag: z.string().min(1),
    interval: duration('mdns.interval')
  }).strict(),
  /** HOST:PORT for the Local UI's HTTP listener, or null for none. */
  ui: hostPort.nullable(),
  logLevel: z.enum(LOG_LEVELS),
  /** Operator labels reported in this host's status. */
  labels: z.record(z.string().regex(/^[\w.-]{1,63}$/, 'expected a label key of letters, digits, dot, dash or underscore'), z.string().max(256))
    .refine(l => Object.keys(l).length <= MAX_LABELS, `expected at most ${MAX_LABELS} labels: members refuse a status with more`),
  group: z.object({
    /** Lifetime of a join token when `token create` gives no --ttl (Palette uses 2 minutes). */
    tokenTtl: duration('group.tokenTtl', 1000),
    /** Longest lifetime an operator may ask for: a token is a bearer credential. */
    maxTokenTtl: duration('group.maxTokenTtl', 1000),
    /** Whole join exchange, dial excluded. */
    joinTimeout: duration('group.joinTimeout'),
    /** Dialling a host before it counts as unreachable. */
    dialTimeout: duration('group.dialTimeout'),
    /** One roster request/response. */
    rpcTimeout: duration('group.rpcTimeout'),
    /** How often disconnected members are dialled again. */
    reconnectInterval: duration('group.reconnectInterval'),
    /** How often the newest roster is pulled from a member (anti-entropy). */
    antiEntropyInterval: duration('group.antiEntropyInterval')
  }).strict().superRefine((g, ctx) => {
    if (g.tokenTtl > g.maxTokenTtl) ctx.addIssue({ code: 'custom', path: ['tokenTtl'], message: `expected group.tokenTtl (${formatDuration(g.tokenTtl)}) at most group.maxTokenTtl (${formatDuration(g.maxTokenTtl)})` })
  }),
  status: z.object({
    /** Status is published when it changes and at least this often. */
    interval: duration('status.interval'),
    /** Each member gets a heartbeat this often (liveness, protocols/group.md). */
    probeInterval: duration('status.probeInterval'),
    /** Silence before a member is suspect. */
    suspectAfter: duration('status.suspectAfter'),
    /** Silence before a member is down. */
    downAfter: duration('status.downAfter'),
    /** How often statuses and settings are pulled from a member (anti-entropy). */
    antiEntropyInterval: duration('status.antiEntropyInterval'),
    /** Largest group message accepted. */
    maxMessageBytes: z.number().int().min(1024).max(1024 * 1024),
    /** Sustained group messages per second accepted from one host. */
    ratePerSecond: z.number().min(0.1).max(10_000),
    /** Burst above that rate. */
    rateBurst: z.number().int().min(1).max(100_000)
  }).strict().superRefine((st, ctx) => {
    // The liveness table would refuse these at start, after libp2p was up, naming no key.
    if (!(st.suspectAfter < st.downAfter)) ctx.addIssue({ code: 'custom', path: ['downAfter'], message: `expected status.downAfter (${formatDuration(st.downAfter)}) longer than status.suspectAfter (${formatDuration(st.suspectAfter)})` })
    if (!(st.probeInterval < st.suspectAfter)) ctx.addIssue({ code: 'custom', path: ['suspectAfter'], message: `expected status.suspectAfter (${formatDuration(st.suspectAfter)}) longer than status.probeInterval (${formatDuration(st.probeInterval)}): a member would be suspect between two heartbeats` })
  }),
  settings: z.object({
    /** Executable that applies host settings (JSON on stdin), or null to only store them. */
    hook: z.string().min(1).nullable(),
    /** How long the hook may run. */
    hookTimeout: duration('settings.hookTimeout')
  }).strict(),
  net: z.object({
    /** Multiaddr ranges never rate limited (libp2p limits inbound connections per host to 5/s), e.g. /ip4/127.0.0.0/ipcidr/8. */
    allow: z.array(multiaddrString),
    /** Maximum simultaneous connections; a LAN group is small, this bounds a noisy neighbour. */
    maxConnections: z.number().int().min(1).max(10_000)
  }).strict()
}).strict()

export type AgentConfig = z.infer<typeof configSchema>

/** Configuration input as written by a person: every field optional, durations as strings allowed. */
export type AgentConfigInput = z.input<typeof configSchema>

export function defaultConfig (): AgentConfigInput {
  return {
    hostname: osHostname().replace(/[^\w.-]/g, '-') || 'edgelink',
    listen: [`/ip4/0.0.0.0/tcp/${DEFAULT_PORT}`],
    announce: [],
    peers: [],
    mdns: { enabled: true, serviceTag: DEFAULT_MDNS_SERVICE_TAG, interval: DEFAULT_MDNS_INTERVAL_MS },
    ui: null,
    logLevel: 'info',
    labels: {},
    group: {
      tokenTtl: DEFAULT_TOKEN_TTL_MS,
      maxTokenTtl: 24 * 60 * 60 * 1000,
      joinTimeout: 10_000,
      dialTimeout: 5_000,
      rpcTimeout: 5_000,
      reconnectInterval: 5_000,
      antiEntropyInterval: 30_000
    },
    status: {
      interval: 10_000,
      probeInterval: 1_000,
      suspectAfter: 2_500,
      downAfter: 4_000,
      antiEntropyInterval: 15_000,
      maxMessageBytes: 64 * 1024,
      ratePerSecond: 20,
      rateBurst: 40
    },
    settings: { hook: null, hookTimeout: 30_000 },
    net: { allow: ['/ip4/127.0.0.0/ipcidr/8', '/ip6/::1/ipcidr/128'], maxConnections: 300 }
  }
}

type Kind = 'string' | 'list' | 'bool' | 'duration' | 'nullable'

/** Environment variables and the config keys they set. Lists are comma separated. */
export const ENV_KEYS: Record<string, { path: string[], kind: Kind }> = {
  EDGELINK_HOSTNAME: { path: ['hostname'], kind: 'string' },
  EDGELINK_LISTEN: { path: ['listen'], kind: 'list' },
  EDGELINK_ANNOUNCE: { path: ['announce'], kind: 'list' },
  EDGELINK_PEERS: { path: ['peers'], kind: 'list' },
  EDGELINK_MDNS: { path: ['mdns', 'enabled'], kind: 'bool' },
  EDGELINK_MDNS_SERVICE_TAG: { path: ['mdns', 'serviceTag'], kind: 'string' },
  EDGELINK_MDNS_INTERVAL: { path: ['mdns', 'interval'], kind: 'duration' },
  EDGELINK_UI: { path: ['ui'], kind: 'nullable' },
  EDGELINK_LOG_LEVEL: { path: ['logLevel'], kind: 'string' },
  EDGELINK_TOKEN_TTL: { path: ['group', 'tokenTtl'], kind: 'duration' },
  EDGELINK_SETTINGS_HOOK: { path: ['settings', 'hook'], kind: 'nullable' },
  EDGELINK_STATUS_INTERVAL: { path: ['status', 'interval'], kind: 'duration' }
}

/** One layer of configuration and where it came from, for error messages. */
export interface ConfigLayer {
  source: string
  values: Record<string, unknown>
}

export interface LoadConfigOptions {
  /** Path of a JSON or YAML config file. */
  file?: string
  /** Environment to read `EDGELINK_*` from. @default process.env */
  env?: NodeJS.ProcessEnv
  /** Values from command-line flags (already in config shape). */
  flags?: Record<string, unknown>
  /** Overrides applied last, for tests (shortened timers). */
  overrides?: Record<string, unknown>
}

/**
 * Build the effective configuration.
 *
 * @example
 * ```ts
 * const config = loadConfig({ file: '/etc/edgelink.yaml', flags: { mdns: { enabled: false } } })
 * ```
 */
export function loadConfig (opts: LoadConfigOptions = {}): AgentConfig {
  const layers: ConfigLayer[] = [{ source: 'defaults', values: defaultConfig() as Record<string, unknown> }]
  if (opts.file != null) layers.push({ source: `config file ${opts.file}`, values: readConfigFile(opts.file) })
  layers.push(...envLayers(opts.env ?? process.env))
  if (opts.flags != null) layers.push({ source: 'command-line flags', values: opts.flags })
  if (opts.overrides != null) layers.push({ source: 'overrides', values: opts.overrides })
  return resolveLayers(layers)
}

export function resolveLayers (layers: ConfigLayer[]): AgentConfig {
  const sources = new Map<string, string>()
  let merged: Record<string, unknown> = {}
  for (const layer of layers) {
    merged = mergeInto(merged, layer.values, [], layer.source, sources)
  }
  const result = safeParse(configSchema, merged)
  if (result.success) return result.data
  const blamed: string[] = []
  const lines = result.error.issues.slice(0, 5).map(issue => {
    const key = issue.path.join('.')
    if (issue.code === 'unrecognized_keys') {
      const from = sourceOf(sources, [...issue.path.map(String), issue.keys[0]])
      blamed.push(from)
      const where = key === '' ? '' : ` under \`${key}\``
      const allowed = allowedKeys(issue.path.map(String))
      return `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map(k => `\`${k}\``).join(', ')}${where} (from ${from}); allowed: ${allowed.join(', ')}`
    }
    if (key === '') {
      // Only safeParse's fallback has no path (a wrong type it could not place): every layer given may hold it.
      blamed.push(...layers.filter(l => l.source !== 'defaults').map(l => l.source))
      return `invalid configuration: ${issue.message}`
    }
    const source = sourceOf(sources, issue.path.map(String))
    blamed.push(source)
    const value = valueAt(merged, issue.path.map(String))
    return `invalid value for \`${key}\` (from ${source}): ${renderValue(value)}: ${issue.message}`
  })
  throw new ConfigError(lines.join('; '), blamed)
}

/** A value as a person should see it in an error: short, never throwing (cycles, Infinity, BigInt). */
export function renderValue (value: unknown): string {
  let text: string
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value)
  try {
    text = JSON.stringify(value, (_k, v: unknown) => typeof v === 'bigint' ? v.toString() : (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v)) ?? String(value)
  } catch {
    text = Array.isArray(value) ? '[a self-referencing list]' : '{a self-referencing mapping}'
  }
  return text.length > 80 ? `${text.slice(0, 77)}...` : text
}

function readConfigFile (file: string): Record<string, unknown> {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new ConfigError(`cannot read config file ${file}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}; check the path given to --config`)
  }
  let parsed: unknown
  try {
    parsed = /\.json$/i.test(file) ? JSON.parse(text) : parseYaml(text, { maxAliasCount: 100, logLevel: 'error' })
  } catch (err) {
    const msg = errorMessage(err).split('\n')[0]
    throw new ConfigError(`config file ${file} is not valid ${/\.json$/i.test(file) ? 'JSON' : 'YAML'}: ${msg}`)
  }
  if (parsed == null) return {}
  if (typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new ConfigError(`config file ${file} must contain a mapping of keys to values, got ${Array.isArray(parsed) ? 'a list' : typeof parsed}`)
  }
  return parsed as Record<string, unknown>
}

function envLayers (env: NodeJS.ProcessEnv): ConfigLayer[] {
  const layers: ConfigLayer[] = []
  for (const [name, { path, kind }] of Object.entries(ENV_KEYS)) {
    const raw = env[name]
    if (raw === undefined) continue
    let value: unknown = raw
    if (kind === 'list') value = raw.split(',').map(s => s.trim()).filter(s => s !== '')
    else if (kind === 'bool') value = parseBool(raw, name)
    else if (kind === 'nullable') value = raw === '' || raw === 'none' ? null : raw
    layers.push({ source: `environment variable ${name}`, values: setPath({}, path, value) })
  }
  return layers
}

/** `EDGELINK_*` variables read outside the agent's configuration (CLI, hook, test harness). */
const OTHER_ENV = ['EDGELINK_HOME', 'EDGELINK_CONFIG', 'EDGELINK_API_TIMEOUT', 'EDGELINK_SETTINGS_VERSION', 'EDGELINK_E2E', 'EDGELINK_KEEP_LAB', 'EDGELINK_TEST_LOG']

/**
 * One line per `EDGELINK_*` variable that nothing reads: a misspelt name would otherwise
 * leave its setting at the default without a word. A warning, not an error, as Consul
 * and LXD treat their environments: other tools may share the prefix.
 */
export function unknownEnvWarnings (env: NodeJS.ProcessEnv): string[] {
  const known = [...Object.keys(ENV_KEYS), ...OTHER_ENV]
  return Object.keys(env).filter(n => n.startsWith('EDGELINK_') && !known.includes(n)).sort().map(name => {
    const near = known.map(k => ({ k, d: editDistance(name, k) })).sort((a, b) => a.d - b.d)[0]
    const hint = near.d <= 3 ? `did you mean ${near.k}?` : `edgelink reads ${Object.keys(ENV_KEYS).join(', ')}`
    return `environment variable ${name} is not one edgelink reads, so it changes nothing; ${hint}`
  })
}

function editDistance (a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const row = [i]
    for (let j = 1; j <= b.length; j++) row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
    prev = row
  }
  return prev[b.length]
}

export function parseBool (raw: string, name: string): boolean {
  const v = raw.trim().toLowerCase()
  if (['1', 'true', 'yes', 'on'].includes(v)) return true
  if (['0', 'false', 'no', 'off'].includes(v)) return false
  throw new ConfigError(`invalid value for ${name}: ${JSON.stringify(raw)}: expected true or false`, [`environment variable ${name}`])
}

function isPlainObject (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Deep-merge plain objects; arrays and scalars replace. Records which layer set each leaf. */
function mergeInto (base: Record<string, unknown>, over: Record<string, unknown>, path: string[], source: string, sources: Map<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base }
  for (const [k, v] of Object.entries(over)) {
    if (k === '__proto__' || k === 'constructor' || k === 'prototype') {
      // Defined as an own property, so the strict schema reports it as an unknown key of this layer.
      Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true })
      sources.set([...path, k].join('.'), source)
      continue
    }
    const p = [...path, k]
    // `labels` is a record of values chosen by the operator: replace it whole, never merge defaults into it.
    if (isPlainObject(v) && isPlainObject(out[k]) && k !== 'labels') {
      out[k] = mergeInto(out[k] as Record<string, unknown>, v, p, source, sources)
    } else {
      out[k] = v
      sources.set(p.join('.'), source)
    }
  }
  return out
}

function sourceOf (sources: Map<string, string>, path: string[]): string {
  for (let i = path.length; i > 0; i--) {
    const s = sources.get(path.slice(0, i).join('.'))
    if (s != null) return s
  }
  return 'defaults'
}

function valueAt (obj: unknown, path: string[]): unknown {
  let cur: unknown = obj
  for (const p of path) {
    if (cur == null || typeof cur !== 'object') return undefined
    cur = (cur as Record<string, unknown>)[p]
  }
  return cur
}

function allowedKeys (path: string[]): string[] {
  const v = valueAt(defaultConfig(), path)
  return isPlainObject(v) ? Object.keys(v) : []
}

export function setPath (obj: Record<string, unknown>, path: string[], value: unknown): Record<string, unknown> {
  let cur = obj
  for (const p of path.slice(0, -1)) {
    if (!isPlainObject(cur[p])) cur[p] = {}
    cur = cur[p] as Record<string, unknown>
  }
  cur[path[path.length - 1]] = value
  return obj
}
