/**
 * Signed catalogs and settings changes carry their version and term as 64-bit integers.
 * Beyond what a JavaScript number counts exactly, "held + 1" rounds back to "held" and no
 * later record is ever newer: such records are refused when read. And a catalog that
 * could not be issued (too many items, or over the record size) is known before an upload.
 * Settings changes are ordered by (version, term).
 */
import { describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { catalogProblem, catalogVerdict, signCatalog, MAX_CATALOG_ITEMS, type CatalogItemView, type CatalogView } from '../../src/content/catalog.js'
import { signSettings, signStatusFitting, verifyStatus, peerBytes, MAX_PROGRESS_ERROR } from '../../src/status/records.js'
import { MAX_RECORD_BYTES } from '../../src/status/records.js'
import { u8 } from '../../src/util/bytes.js'
import { settingsAfter } from '../../src/settings/service.js'

const GROUP = 'ab'.repeat(16)

function item (i: number, name = `item-${i}`): CatalogItemView {
  return { digest: `sha256:${i.toString(16).padStart(64, '0')}`, name, kind: 'file', size: 1024, chunkSize: 1024 * 1024, manifestDigest: 'cd'.repeat(32), addedAt: new Date(0).toISOString() }
}

describe('catalog and settings counters', () => {
  it('a catalog whose version or term a number cannot count exactly is refused; the largest safe one is kept', async () => {
    const key = await generateKeyPair('Ed25519')
    const issuer = peerIdFromPrivateKey(key).toString()
    const base = { groupId: GROUP, items: [item(1)], issuer, term: 1, version: 1 }
    await expect(signCatalog({ ...base, version: 2 ** 62 }, key)).rejects.toThrow(/catalog version is out of range/)
    await expect(signCatalog({ ...base, term: 2 ** 53 }, key)).rejects.toThrow(/catalog term is out of range/)
    const ok = await signCatalog({ ...base, version: Number.MAX_SAFE_INTEGER - 1 }, key)
    expect(ok.view.version).toBe(Number.MAX_SAFE_INTEGER - 1)
  })

  it('a settings change whose version or term a number cannot count exactly is refused', async () => {
    const key = await generateKeyPair('Ed25519')
    const self = peerIdFromPrivateKey(key).toString()
    const change = { groupId: u8(Buffer.from(GROUP, 'hex')), target: peerBytes(self), version: 1n, settings: [], issuedAt: 0n, issuer: peerBytes(self), term: 1n }
    await expect(signSettings({ ...change, version: 2n ** 62n }, key)).rejects.toThrow(/settings version is out of range/)
    await expect(signSettings({ ...change, term: 2n ** 60n }, key)).rejects.toThrow(/settings term is out of range/)
    expect((await signSettings(change, key)).view.version).toBe(1)
  })
})

describe('catalogProblem', () => {
  const issuer = '12D3KooWGRUVh3wK4Wa3ZiDoCPDfxUxSHmCbXzYeEzbsbkoAq5Rw'

  it('says nothing of a catalog that can be issued', () => {
    expect(catalogProblem([item(1), item(2)], GROUP, issuer)).toBeUndefined()
  })

  it(`refuses more than ${MAX_CATALOG_ITEMS} items, telling the operator to remove some`, () => {
    const items = Array.from({ length: MAX_CATALOG_ITEMS + 1 }, (_, i) => item(i, `i${i}`))
    expect(catalogProblem(items, GROUP, issuer)).toMatch(/catalog is full \(256 items\); remove items with `edgelink content rm`/)
  })

  it(`refuses a catalog over the ${MAX_RECORD_BYTES / 1024} KiB a member accepts, long before the item limit when names are long`, () => {
    const items: CatalogItemView[] = []
    while (catalogProblem(items, GROUP, issuer) == null) items.push(item(items.length, 'n'.repeat(250) + String(items.length)))
    expect(items.length).toBeLessThan(MAX_CATALOG_ITEMS)
    expect(catalogProblem(items, GROUP, issuer)).toMatch(/catalog is full .*remove items with `edgelink content rm`, or use a shorter name/)
    // One item fewer fits: the check is at the record limit, not short of it.
    expect(catalogProblem(items.slice(0, -1), GROUP, issuer)).toBeUndefined()
  })
})

describe('catalogVerdict', () => {
  const view = (version: number, term: number): CatalogView => ({ groupId: GROUP, version, term, items: [], issuer: 'x', issuedAt: new Date(0).toISOString() })
  const roster = (term: number, leader: string): { term: number, leader: string } => ({ term, leader })

  it('a follower refuses an earlier term\'s catalog, whatever its version', () => {
    expect(catalogVerdict(view(1000, 1), view(2, 2), roster(2, 'lead'), 'me')).toBe('older-term')
    expect(catalogVerdict(view(1000, 1), undefined, roster(2, 'lead'), 'me')).toBe('older-term')
  })

  it('a leader that issued in its term merges an earlier term\'s catalog at or above its version, and ignores one below', () => {
    expect(catalogVerdict(view(3, 1), view(3, 2), roster(2, 'me'), 'me')).toBe('merge')
    expect(catalogVerdict(view(2, 1), view(3, 2), roster(2, 'me'), 'me')).toBe('stale')
  })

  it('a leader that has not issued in its term yet keeps the newest by version', () => {
    expect(catalogVerdict(view(5, 1), view(4, 1), roster(2, 'me'), 'me')).toBe('keep')
  })

  it('within a term, versions only: higher is kept, equal or lower is stale (an equal version of a later term too)', () => {
    expect(catalogVerdict(view(3, 2), view(2, 2), roster(2, 'lead'), 'me')).toBe('keep')
    expect(catalogVerdict(view(2, 2), view(2, 1), roster(2, 'lead'), 'me')).toBe('stale')
    expect(catalogVerdict(view(1, 2), undefined, roster(2, 'lead'), 'me')).toBe('keep')
  })
})

describe('settingsAfter', () => {
  it('orders settings changes by version, then term, so every member keeps the same one', () => {
    expect(settingsAfter({ version: 2, term: 1 }, { version: 1, term: 5 })).toBe(true)
    expect(settingsAfter({ version: 1, term: 2 }, { version: 1, term: 1 })).toBe(true)
    expect(settingsAfter({ version: 1, term: 1 }, { version: 1, term: 2 })).toBe(false)
    expect(settingsAfter({ version: 1, term: 1 }, { version: 1, term: 1 })).toBe(false)
    expect(settingsAfter({ version: 1, term: 9 }, { version: 2, term: 1 })).toBe(false)
    expect(settingsAfter({ version: 1, term: 1 }, undefined)).toBe(true)
  })
})

describe('signStatusFitting', () => {
  it('a status with every catalog item in error and long messages still fits what members take: errors are cut, then left out', async () => {
    const key = await generateKeyPair('Ed25519')
    const self = peerIdFromPrivateKey(key).toString()
    const content = Array.from({ length: 256 }, (_, i) => ({ digest: item(i).digest, state: 'error', have: 0, total: 1024, error: `insufficient space (need 1.0 GiB, have 12.0 MiB) ${'x'.repeat(300)}` }))
    const wire = {
      peerId: peerBytes(self), seq: 1n, at: 1n, hostname: 'h', addresses: [], agentVersion: '0', uptimeMs: 0n, platform: 'linux', osRelease: '', kernel: '', arch: '', cpus: 1,
      load1: 0, load5: 0, load15: 0, memTotal: 0n, memFree: 0n, diskTotal: 0n, diskFree: 0n, role: 'follower', health: 'degraded', healthDetail: 'low disk', labels: [],
      settings: { version: 0n, term: 0n, state: 'none', message: '', at: 0n }, content
    }
    const signed = await signStatusFitting(wire, key)
    expect(signed.bytes.length).toBeLessThanOrEqual(MAX_RECORD_BYTES)
    expect(signed.trimmed).toBe(true)
    const v = await verifyStatus(signed.bytes)
    expect(v.view.content).toHaveLength(256)
    expect(v.view.health).toBe('degraded')
    expect(v.view.content[0].error.length).toBeLessThan(MAX_PROGRESS_ERROR)

    const few = await signStatusFitting({ ...wire, content: content.slice(0, 3) }, key)
    expect((await verifyStatus(few.bytes)).view.content[0].error).toHaveLength(MAX_PROGRESS_ERROR)
  })
})
