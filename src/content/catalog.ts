/**
 * The catalog: the leader-signed list of content the group should hold. Versioned;
 * a member keeps the newest one whose issuer led the group in its term (the same rule
 * as settings changes). Pure functions; no I/O.
 */
import type { PrivateKey } from '@libp2p/interface'
import { Catalog, type CatalogItem } from '../wire/sync.js'
import { SignedRecord } from '../wire/group.js'
import { MAX_RECORD_BYTES, openRecord, peerBytes, peerFrom, recordCounter, RecordError } from '../status/records.js'
import { context, signWith, verifyWith } from '../util/signing.js'
import { u8 } from '../util/bytes.js'
import { isDigest } from './manifest.js'

const CATALOG_CONTEXT = context('catalog v1')
/** Most items a catalog lists: a site's images and definitions, far below what a gossip message holds. */
export const MAX_CATALOG_ITEMS = 256
import { CONTENT_KINDS, type ContentKind } from './names.js'
export { CONTENT_KINDS, type ContentKind }

export interface CatalogItemView {
  digest: string
  name: string
  kind: ContentKind
  size: number
  chunkSize: number
  manifestDigest: string // hex
  addedAt: string
}

export interface CatalogView {
  groupId: string
  version: number
  items: CatalogItemView[]
  issuer: string
  term: number
  issuedAt: string
}

export interface SignedCatalog {
  view: CatalogView
  bytes: Uint8Array
}

export async function signCatalog (c: Omit<CatalogView, 'issuedAt'>, key: PrivateKey): Promise<SignedCatalog> {
  const body = Catalog.encode({
    groupId: u8(Buffer.from(c.groupId, 'hex')),
    version: BigInt(c.version),
    items: c.items.map(toWireItem),
    issuer: peerBytes(c.issuer),
    term: BigInt(c.term),
    issuedAt: BigInt(Date.now())
  })
  const bytes = SignedRecord.encode({ body, signature: u8(await signWith(key, CATALOG_CONTEXT, body)) })
  return await verifyCatalog(bytes)
}

export async function verifyCatalog (bytes: Uint8Array): Promise<SignedCatalog> {
  const { body, signature } = openRecord(bytes)
  let c: Catalog
  try {
    c = Catalog.decode(body, { limits: { items: MAX_CATALOG_ITEMS } })
  } catch (err) {
    throw new RecordError(`catalog is malformed: ${(err as Error).message}`)
  }
  const issuer = peerFrom(c.issuer)
  if (!await verifyWith(issuer, CATALOG_CONTEXT, body, signature)) throw new RecordError('catalog signature does not verify')
  const seen = new Set<string>()
  const items = c.items.map(i => {
    if (!isDigest(i.digest) || seen.has(i.digest)) throw new RecordError('catalog lists an invalid or duplicate digest')
    seen.add(i.digest)
    if (!(CONTENT_KINDS as readonly string[]).includes(i.kind)) throw new RecordError(`catalog item has an unknown kind "${i.kind.slice(0, 40)}"`)
    if (i.name.length === 0 || i.name.length > 255 || i.manifestDigest.length !== 32 || i.chunkSize === 0) throw new RecordError('catalog item is malformed')
    return {
      digest: i.digest,
      name: i.name,
      kind: i.kind as ContentKind,
      size: Number(i.size),
      chunkSize: i.chunkSize,
      manifestDigest: Buffer.from(i.manifestDigest).toString('hex'),
      addedAt: new Date(Number(i.addedAt)).toISOString()
    }
  })
  return {
    view: {
      groupId: Buffer.from(c.groupId).toString('hex'),
      version: recordCounter(c.version, 'catalog version'),
      items,
      issuer: issuer.toString(),
      term: recordCounter(c.term, 'catalog term'),
      issuedAt: new Date(Number(c.issuedAt)).toISOString()
    },
    bytes
  }
}

/**
 * What a member does with a verified catalog `c` whose issuer led its term, given the one
 * it holds (`mine`) and its roster:
 * - `older-term`: refused, a follower's answer to a catalog of an earlier term once it
 *   knows a newer one (DESIGN: records of an older term are rejected; a former leader
 *   signs no more). Its version does not count toward what this host would issue.
 * - `merge`: the leader, having issued in its term, hears an earlier term's catalog at or
 *   above its version: that leader added something this one missed; issue the union.
 * - `keep`: a higher version. Versions only, not terms: a member holding an old term's
 *   catalog of the same version as the new leader's keeps it, and so can hand it to the
 *   leader (pulls), which merges. A leader that has not issued in its term yet keeps the
 *   newest it hears, and signs it again in its own term.
 * - `stale`: nothing to do.
 */
export function catalogVerdict (c: CatalogView, mine: CatalogView | undefined, roster: { term: number, leader: string }, self: string): 'older-term' | 'merge' | 'keep' | 'stale' {
  if (c.term < roster.term) {
    if (roster.leader !== self) return 'older-term'
    if (mine != null && mine.term === roster.term) return c.version >= mine.version ? 'merge' : 'stale'
  }
  return mine != null && c.version <= mine.version ? 'stale' : 'keep'
}

/**
 * Why a catalog listing `items` (the new item last) could not be issued, or undefined if it can: too many
 * items, or a signed record over the size every member accepts (long names fill it long
 * before the item limit). Checked before an upload, not after gigabytes have arrived.
 */
export function catalogProblem (items: CatalogItemView[], groupId: string, issuer: string): string | undefined {
  if (items.length > MAX_CATALOG_ITEMS) return `the catalog is full (${MAX_CATALOG_ITEMS} items); remove items with \`edgelink content rm\` first`
  const body = Catalog.encode({
    groupId: u8(Buffer.from(groupId, 'hex')),
    version: BigInt(Number.MAX_SAFE_INTEGER),
    items: items.map(toWireItem),
    issuer: peerBytes(issuer),
    term: BigInt(Number.MAX_SAFE_INTEGER),
    issuedAt: BigInt(Date.now())
  })
  const size = SignedRecord.encode({ body, signature: new Uint8Array(64) }).length
  if (size > MAX_RECORD_BYTES) return `the catalog is full (its ${items.length - 1} items and their names fill the ${MAX_RECORD_BYTES / 1024} KiB a catalog may take); remove items with \`edgelink content rm\`, or use a shorter name`
  return undefined
}

function toWireItem (i: CatalogItemView): CatalogItem {
  return {
    digest: i.digest,
    name: i.name,
    kind: i.kind,
    size: BigInt(i.size),
    chunkSize: i.chunkSize,
    manifestDigest: u8(Buffer.from(i.manifestDigest, 'hex')),
    addedAt: BigInt(Date.parse(i.addedAt))
  }
}
