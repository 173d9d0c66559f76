/**
 * Records that travel in the group: a host's status (signed by that host) and a
 * settings change (signed by the leader that issued it). Because each record carries
 * its origin's signature, any member may relay it (gossip, anti-entropy pull) and no
 * member can forge another's. Pure functions; no I/O.
 */
import { peerIdFromMultihash, peerIdFromString } from '@libp2p/peer-id'
import * as Digest from 'multiformats/hashes/digest'
import type { PeerId, PrivateKey } from '@libp2p/interface'
import { HostStatus, SettingsChange, SignedRecord, type Label } from '../wire/group.js'
import { EdgelinkError } from '../errors.js'
import { u8 } from '../util/bytes.js'
import { context, equalBytes, signWith, verifyWith } from '../util/signing.js'

/** Largest signed record accepted (a status with 16 addresses and 64 labels is a few KiB). */
export const MAX_RECORD_BYTES = 32 * 1024
export const MAX_LABELS = 64
export const MAX_SETTINGS = 64
const STATUS_CONTEXT = context('status v1')
const SETTINGS_CONTEXT = context('settings v1')

export class RecordError extends EdgelinkError {
  static override name = 'RecordError'
  constructor (message: string) { super(message, 'RECORD_INVALID', 400) }
}

/** A host that never received a settings change. */
export const NO_SETTINGS_STATE: SettingsStateView = Object.freeze({ version: 0, term: 0, state: 'none', message: '', at: null })

export interface SettingsStateView {
  version: number
  /** Term of the change `version` belongs to: changes are ordered by (version, term); 0 if none. */
  term: number
  state: 'none' | 'pending' | 'applied' | 'failed'
  message: string
  at: string | null
}

/** A host's status as the API shows it. */
export interface HostStatusView {
  peerId: string
  seq: string
  at: string
  hostname: string
  addresses: string[]
  agentVersion: string
  uptimeMs: number
  os: { platform: string, release: string, kernel: string, arch: string }
  cpus: number
  load: [number, number, number]
  memory: { total: number, free: number }
  disk: { total: number, free: number }
  role: string
  health: string
  healthDetail: string
  labels: Record<string, string>
  settings: SettingsStateView
  content: ContentProgressView[]
}

export interface ContentProgressView {
  digest: string
  state: string
  have: number
  total: number
  error: string
}

export interface SettingsChangeView {
  groupId: string
  target: string
  version: number
  settings: Record<string, string>
  issuedAt: string
  issuer: string
  term: number
}

export interface Verified<T> {
  view: T
  /** SignedRecord encoding, to store and relay as is. */
  bytes: Uint8Array
}

export async function signStatus (s: HostStatus, key: PrivateKey): Promise<Verified<HostStatusView>> {
  const body = HostStatus.encode(s)
  const bytes = SignedRecord.encode({ body, signature: u8(await signWith(key, STATUS_CONTEXT, body)) })
  return { view: statusView(s), bytes }
}

/** Longest content error a status carries; the host's own API shows the whole message. */
export const MAX_PROGRESS_ERROR = 200

/**
 * Sign a status that members will take: one over MAX_RECORD_BYTES is refused by every
 * receiver (and one over the gossip limit gets the sender's messages rejected). Many items
 * in error with long messages can get there (256 items of 140 characters do), and the
 * status that says the disk is full must still arrive: errors are cut to
 * MAX_PROGRESS_ERROR, then shorter, then left out, until it fits.
 */
export async function signStatusFitting (s: HostStatus, key: PrivateKey): Promise<Verified<HostStatusView> & { trimmed: boolean }> {
  let wire: HostStatus = { ...s, content: s.content.map(c => ({ ...c, error: c.error.slice(0, MAX_PROGRESS_ERROR) })) }
  let signed = await signStatus(wire, key)
  for (const cut of [40, 0]) {
    if (signed.bytes.length <= MAX_RECORD_BYTES) break
    wire = { ...wire, content: wire.content.map(c => ({ ...c, error: c.error.slice(0, cut) })) }
    signed = await signStatus(wire, key)
  }
  if (signed.bytes.length > MAX_RECORD_BYTES) throw new RecordError(`this host's status is ${signed.bytes.length} bytes even without error messages, over the ${MAX_RECORD_BYTES} limit`)
  return { ...signed, trimmed: wire.content.some((c, i) => c.error !== s.content[i].error) }
}

export async function verifyStatus (bytes: Uint8Array): Promise<Verified<HostStatusView>> {
  const { body, signature } = openRecord(bytes)
  let s: HostStatus
  try {
    s = HostStatus.decode(body, { limits: { addresses: 16, labels: MAX_LABELS, content: 256 } })
  } catch (err) {
    throw new RecordError(`status record is malformed: ${(err as Error).message}`)
  }
  const origin = peerFrom(s.peerId)
  if (!await verifyWith(origin, STATUS_CONTEXT, body, signature)) throw new RecordError('status signature does not verify')
  return { view: statusView(s), bytes }
}

export async function signSettings (c: SettingsChange, key: PrivateKey): Promise<Verified<SettingsChangeView>> {
  const body = SettingsChange.encode(c)
  const bytes = SignedRecord.encode({ body, signature: u8(await signWith(key, SETTINGS_CONTEXT, body)) })
  return { view: settingsView(c), bytes }
}

export async function verifySettings (bytes: Uint8Array): Promise<Verified<SettingsChangeView>> {
  const { body, signature } = openRecord(bytes)
  let c: SettingsChange
  try {
    c = SettingsChange.decode(body, { limits: { settings: MAX_SETTINGS } })
  } catch (err) {
    throw new RecordError(`settings record is malformed: ${(err as Error).message}`)
  }
  const issuer = peerFrom(c.issuer)
  peerFrom(c.target)
  if (!await verifyWith(issuer, SETTINGS_CONTEXT, body, signature)) throw new RecordError('settings signature does not verify')
  return { view: settingsView(c), bytes }
}

export function openRecord (bytes: Uint8Array): SignedRecord {
  if (bytes.length > MAX_RECORD_BYTES) throw new RecordError(`record is ${bytes.length} bytes, over the ${MAX_RECORD_BYTES} limit`)
  let r: SignedRecord
  try {
    r = SignedRecord.decode(bytes)
  } catch (err) {
    throw new RecordError(`record is malformed: ${(err as Error).message}`)
  }
  if (!equalBytes(SignedRecord.encode(r), bytes)) throw new RecordError('record is not in its canonical encoding')
  return r
}

export function labelsToMap (labels: Label[]): Record<string, string> {
  const out: Record<string, string> = Object.create(null) as Record<string, string>
  for (const l of labels) out[l.key] = l.value
  return { ...out }
}

export function mapToLabels (m: Record<string, string>): Label[] {
  return Object.entries(m).sort(([a], [b]) => a.localeCompare(b)).map(([key, value]) => ({ key, value }))
}

function statusView (s: HostStatus): HostStatusView {
  return {
    peerId: peerFrom(s.peerId).toString(),
    seq: s.seq.toString(),
    at: new Date(Number(s.at)).toISOString(),
    hostname: s.hostname,
    addresses: s.addresses,
    agentVersion: s.agentVersion,
    uptimeMs: Number(s.uptimeMs),
    os: { platform: s.platform, release: s.osRelease, kernel: s.kernel, arch: s.arch },
    cpus: s.cpus,
    load: [s.load1, s.load5, s.load15],
    memory: { total: Number(s.memTotal), free: Number(s.memFree) },
    disk: { total: Number(s.diskTotal), free: Number(s.diskFree) },
    role: s.role,
    health: s.health,
    healthDetail: s.healthDetail,
    labels: labelsToMap(s.labels),
    settings: {
      version: Number(s.settings?.version ?? 0n),
      term: Number(s.settings?.term ?? 0n),
      state: (['none', 'pending', 'applied', 'failed'].includes(s.settings?.state ?? '') ? s.settings?.state : 'none') as SettingsStateView['state'],
      message: s.settings?.message ?? '',
      at: s.settings?.at != null && s.settings.at > 0n ? new Date(Number(s.settings.at)).toISOString() : null
    },
    content: s.content.map(c => ({ digest: c.digest, state: c.state, have: c.have, total: c.total, error: c.error }))
  }
}

/**
 * A version or term as a number, refused beyond what counts exactly (and one more can be
 * issued after it): a signer could otherwise pick a version whose successor rounds back
 * to itself, and no later record would ever be newer.
 */
export function recordCounter (v: bigint, what: string): number {
  if (v < 0n || v >= BigInt(Number.MAX_SAFE_INTEGER)) throw new RecordError(`${what} is out of range`)
  return Number(v)
}

function settingsView (c: SettingsChange): SettingsChangeView {
  return {
    groupId: Buffer.from(c.groupId).toString('hex'),
    target: peerFrom(c.target).toString(),
    version: recordCounter(c.version, 'settings version'),
    settings: labelsToMap(c.settings),
    issuedAt: new Date(Number(c.issuedAt)).toISOString(),
    issuer: peerFrom(c.issuer).toString(),
    term: recordCounter(c.term, 'settings term')
  }
}

export function peerBytes (peer: string): Uint8Array<ArrayBuffer> {
  return u8(peerIdFromString(peer).toMultihash().bytes)
}

export function peerFrom (b: Uint8Array): PeerId {
  try {
    return peerIdFromMultihash(Digest.decode(b))
  } catch {
    throw new RecordError('record holds an invalid PeerId')
  }
}

