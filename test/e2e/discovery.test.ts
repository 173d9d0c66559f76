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
    // Each host runs its own chain: start; then, side by side, its PeerId from
    // `edgelink status --json` and a fast poll of its peer table over the API socket,
    // which timestamps when the table first holds the others. A CLI process per poll would
    // add its own start-up time (seconds on a loaded 2-core machine) to the measurement;
    // the CLI's output is checked afterwards.
    const ids = new Map<string, string>()
    const others = (h: string): string[] => l.hosts.filter(o => o !== h)
    const listsOthers = (h: string, peerIds: string[]): boolean =>
      ids.size === l.hosts.length && others(h).every(o => peerIds.includes(ids.get(o) ?? '?'))

    const results = await Promise.all(l.hosts.map(async h => {
      const started = await l.start(h)
      const history: Array<{ at: number, peerIds: string[] }> = []
      const [, seen] = await Promise.all([
        (async () => {
          const r = await l.cli(h, ['status', '--json'])
          expect(r.code, r.stderr).toBe(0)
          const status = r.json<HostStatus>()
          expect(status.hostname).toBe(h)
          expect(status.peerId).toMatch(/^12D3KooW/)
          ids.set(h, status.peerId)
        })(),
        waitFor(`${h}'s peer table to hold ${others(h).join(' and ')}`, async () => {
          const peers = await l.api<PeerEntry[]>(h, '/api/v1/peers')
          history.push({ at: Date.now(), peerIds: peers.map(p => p.peerId) })
          return history.find(e => listsOthers(h, e.peerIds))
        }, {
          // Wait past the limit so that a failure reports how long discovery really took.
          timeoutMs: 30_000,
          intervalMs: 20,
          describe: () => `ids ${JSON.stringify(Object.fromEntries(ids))}, ${h} lists ${JSON.stringify(history.at(-1)?.peerIds)}`
        })
      ])

      // The operator's view: `edgelink peers --json` lists them.
      const cliStart = Date.now()
      const p = await l.cli(h, ['peers', '--json'])
      expect(p.code, p.stderr).toBe(0)
      const peers = p.json<PeerEntry[]>()
      expect(listsOthers(h, peers.map(e => e.peerId)), `${h}: peers --json ${p.stdout}`).toBe(true)
      return { host: h, started, seenAt: seen.value.at, peers, cliMs: Date.now() - cliStart }
    }))
    expect(new Set(ids.values()).size).toBe(l.hosts.length)

    const upAt = Math.max(...results.map(r => r.started.readyAt))
    const elapsed = Math.max(...results.map(r => r.seenAt)) - upAt
    console.log(`mDNS discovery: every host listed the other two ${elapsed} ms after the last agent was up ` +
      `(per host: ${results.map(r => `${r.host} ${r.seenAt - upAt} ms`).join(', ')}; ` +
      `agent start: ${results.map(r => `${r.host} ${r.started.startMs} ms`).join(', ')}; ` +
      `\`peers --json\` took ${results.map(r => `${r.cliMs} ms`).join(', ')})`)
    expect(elapsed, `discovery took ${elapsed} ms`).toBeLessThanOrEqual(DISCOVERY_LIMIT_MS)

    // What was found: only lab agents, at lab addresses, and mDNS did the finding.
    const labAddr = new RegExp(`^/ip4/${LAB_NET.replaceAll('.', '\\.')}\\.\\d{1,3}/tcp/${LAB_PORT}(/|$)`)
    const known = new Set(ids.values())
    for (const { host: h, peers } of results) {
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
