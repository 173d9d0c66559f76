/**
 * e2e: real agents in a netns LAN. Three hosts found by mDNS are linked through the
 * CLI with tokens; every agent restarts and the group re-forms by itself; a host's IP
 * address changes and the group finds it again by PeerId.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import type { HostStatus } from '../../src/agent/agent.js'
import type { HostRow } from '../../src/group/service.js'
import { Lab, LAB_NET, labRequired, labUnavailableReason, waitFor } from '../helpers/lab.js'

const unavailable = labUnavailableReason()
const skip = unavailable != null && !labRequired()
const title = 'e2e: linking hosts on a netns LAN' + (skip ? ` [skipped: ${unavailable}]` : '')

describe.skipIf(skip)(title, () => {
  let lab: Lab
  const ids = new Map<string, string>()

  beforeAll(async () => {
    if (unavailable != null) throw new Error(`e2e tests must run here (CI or EDGELINK_E2E=require) but no lab can be built: ${unavailable}`)
    lab = await Lab.up(3)
    // Listen on every address, as a real host does, so an address change needs no new flag.
    await Promise.all(lab.hosts.map(async h => await lab.start(h, ['--listen', '/ip4/0.0.0.0/tcp/4100'])))
    for (const h of lab.hosts) ids.set(h, (await lab.api<HostStatus>(h, '/api/v1/status')).peerId)
  })

  afterAll(async () => {
    await lab?.down()
  })

  /** Every host's hosts table lists all three, with the same roles, all connected. */
  async function groupFormed (what: string, expectAddr?: { host: string, ip: string }): Promise<HostRow[]> {
    const { value } = await waitFor(what, async () => {
      const tables = await Promise.all(lab.hosts.map(async h => await lab.api<HostRow[]>(h, '/api/v1/hosts')))
      const ok = tables.every(t => t.length === 3 && t.every(r => r.connected) &&
        JSON.stringify(t.map(r => `${r.peerId}:${r.role}`).sort()) === JSON.stringify(tables[0].map(r => `${r.peerId}:${r.role}`).sort()))
      if (!ok) return undefined
      if (expectAddr != null) {
        const id = ids.get(expectAddr.host)
        const seenAtNew = tables.every(t => t.find(r => r.peerId === id)?.addresses.some(a => a.includes(`/ip4/${expectAddr.ip}/`)) === true)
        if (!seenAtNew) return undefined
      }
      return tables[0]
    }, { timeoutMs: 30_000, intervalMs: 100, describe: () => lab.hosts.map(h => `${h}: ${lab.logTail(h, 3)}`).join('\n') })
    return value
  }

  it('three hosts found by mDNS are linked with tokens through the CLI', async ({ onTestFailed }) => {
    onTestFailed(() => { lab.keepFiles = true; lab.dumpLogs() })
    // Found on the LAN first, with no addresses given.
    await waitFor('every host to see the other two by mDNS', async () => {
      const all = await Promise.all(lab.hosts.map(async h => (await lab.api<Array<{ peerId: string }>>(h, '/api/v1/peers')).map(p => p.peerId)))
      return all.every((seen, i) => lab.hosts.filter((_, j) => j !== i).every(o => seen.includes(ids.get(o) ?? '?')))
    }, { timeoutMs: 15_000, intervalMs: 50 })

    for (const follower of ['h2', 'h3']) {
      const t = await lab.cli('h1', ['token', 'create', '--json'])
      expect(t.code, t.stderr).toBe(0)
      const { token } = t.json<{ token: string }>()
      const l = await lab.cli(follower, ['link', token, '--json'])
      expect(l.code, l.stderr).toBe(0)
      expect(l.json<{ leader: string }>().leader).toBe(ids.get('h1'))
    }
    const table = await groupFormed('every hosts table to list three connected hosts')
    expect(table.find(r => r.peerId === ids.get('h1'))?.role).toBe('leader')
    const h = await lab.cli('h3', ['hosts', '--json'])
    expect(h.code, h.stderr).toBe(0)
    const rows = h.json<HostRow[]>()
    expect(rows.map(r => r.hostname).sort()).toEqual(['h1', 'h2', 'h3'])
    for (const r of rows) expect(r).toMatchObject({ peerId: ids.get(r.hostname), role: r.hostname === 'h1' ? 'leader' : 'follower', connected: true })
  })

  it('after every agent restarts, the group re-forms by itself', async ({ onTestFailed }) => {
    onTestFailed(() => { lab.keepFiles = true; lab.dumpLogs() })
    const before = await lab.api<HostStatus>('h2', '/api/v1/status')
    for (const h of lab.hosts) await lab.stop(h)
    await Promise.all(lab.hosts.map(async h => await lab.start(h, ['--listen', '/ip4/0.0.0.0/tcp/4100'])))
    await groupFormed('the group to re-form after a full restart')
    const after = await lab.api<HostStatus>('h2', '/api/v1/status')
    expect(after).toMatchObject({ groupId: before.groupId, leader: before.leader, term: before.term, rosterVersion: before.rosterVersion })
  })

  it('a host whose IP address changed is found again by PeerId', async ({ onTestFailed }) => {
    onTestFailed(() => { lab.keepFiles = true; lab.dumpLogs() })
    const newIp = `${LAB_NET}.77`
    // As after a reboot with a new DHCP lease: the agent comes back on another address.
    await lab.stop('h3')
    await lab.addr('h3', newIp)
    await lab.start('h3', ['--listen', '/ip4/0.0.0.0/tcp/4100'])
    const status = await lab.api<HostStatus>('h3', '/api/v1/status')
    expect(status.addresses.some(a => a.includes(`/ip4/${newIp}/`))).toBe(true)
    await groupFormed('the others to reach h3 at its new address', { host: 'h3', ip: newIp })
  })
})
