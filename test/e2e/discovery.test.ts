/**
 * e2e: real agent processes on a LAN of network namespaces (scripts/lab.sh) find each
 * other by mDNS, with no addresses given, within 5 seconds of being up.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import type { HostStatus } from '../../src/agent/agent.js'
import type { PeerEntry } from '../../src/net/peers.js'
import { Lab, LAB_NET, LAB_PORT, labRequired, labUnavailableReason, waitFor } from '../helpers/lab.js'

/** The promise to operators: an agent on the LAN shows up in `peers` within this long. */
const DISCOVERY_LIMIT_MS = 5_000

const unavailable = labUnavailableReason()
const skip = unavailable != null && !labRequired()
const title = 'e2e: mDNS discovery on a netns LAN' + (skip ? ` [skipped: ${unavailable}]` : '')

describe.skipIf(skip)(title, () => {
  let lab: Lab | undefined

  beforeAll(async () => {
    if (unavailable != null) throw new Error(`e2e tests must run here (CI or EDGELINK_E2E=require) but no lab can be built: ${unavailable}`)
    lab = await Lab.up(3)
  })

  afterAll(async () => {
    await lab?.down()
  })

  it(`three agents list each other in \`peers\` within ${DISCOVERY_LIMIT_MS / 1000} s of being up, with no addresses given`, async ({ onTestFailed }) => {
    if (lab == null) throw new Error('no lab')
    const l = lab
    onTestFailed(() => { l.keepFiles = true; l.dumpLogs() })

    // No --peer, no config: mDNS on the lab LAN is the only way to learn about another host.
    const started = await Promise.all(l.hosts.map(async h => await l.start(h)))
    const upAt = Math.max(...started.map(s => s.readyAt))

    const ids = new Map<string, string>()
    await Promise.all(l.hosts.map(async h => {
      const r = await l.cli(h, ['status', '--json'])
      expect(r.code, r.stderr).toBe(0)
      const status = r.json<HostStatus>()
      expect(status.hostname).toBe(h)
      expect(status.peerId).toMatch(/^12D3KooW/)
      ids.set(h, status.peerId)
    }))
    expect(new Set(ids.values()).size).toBe(l.hosts.length)
    const others = (h: string): string[] => l.hosts.filter(o => o !== h)

    let last = new Map<string, PeerEntry[]>()
    const { at } = await waitFor('every host to list the other two in `peers --json`', async () => {
      const lists = await Promise.all(l.hosts.map(async h => {
        const r = await l.cli(h, ['peers', '--json'])
        if (r.code !== 0) throw new Error(`peers on ${h} exited ${r.code}: ${r.stderr.trim()}`)
        return [h, r.json<PeerEntry[]>()] as const
      }))
      last = new Map(lists)
      return lists.every(([h, peers]) => others(h).every(o => peers.some(p => p.peerId === ids.get(o))))
    }, {
      // Wait past the limit so that a failure reports how long discovery really took.
      timeoutMs: 4 * DISCOVERY_LIMIT_MS,
      intervalMs: 50,
      describe: () => JSON.stringify(Object.fromEntries(last))
    })
    const elapsed = at - upAt
    console.log(`mDNS discovery: every host listed the other two ${elapsed} ms after the last agent was up ` +
      `(agents took ${started.map(s => `${s.host} ${s.startMs} ms`).join(', ')} to start)`)
    expect(elapsed, `discovery took ${elapsed} ms`).toBeLessThanOrEqual(DISCOVERY_LIMIT_MS)

    // What was found: only lab agents, at lab addresses, and mDNS did the finding.
    const labAddr = new RegExp(`^/ip4/${LAB_NET.replaceAll('.', '\\.')}\\.\\d{1,3}/tcp/${LAB_PORT}(/|$)`)
    const known = new Set(ids.values())
    for (const [h, peers] of last) {
      expect(peers.map(p => p.peerId), `${h} lists a PeerId that is not a lab agent`).toSatisfy((list: string[]) => list.every(id => known.has(id)))
      expect(peers.some(p => p.peerId === ids.get(h)), `${h} lists itself`).toBe(false)
      for (const p of peers) {
        expect(p.via, `${h}: ${p.peerId} came from configuration`).not.toContain('config')
        for (const a of p.addresses) expect(a, `${h}: address of ${p.peerId}`).toMatch(labAddr)
      }
      expect(peers.some(p => p.via.includes('mdns')), `${h} found no peer via mdns: ${JSON.stringify(peers)}`).toBe(true)
    }
  })
})
