/**
 * The yamux window fix in src/polyfill.ts: a small frame is not answered with a window
 * update (the receiver waits until half its window is consumed, as hashicorp/yamux
 * does), and a transfer larger than the window still completes, its windows refilled.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { randomBytes } from 'node:crypto'
import { lpStream } from '@libp2p/utils'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Stream } from '@libp2p/interface'
import { AgentSet } from '../helpers/agents.js'
import type { Agent } from '../../src/agent/agent.js'

const PROTOCOL = '/edgelink-test/echo/1.0.0'
interface Window { recvWindow: number, recvWindowCapacity: number }
/** Bytes received on a stream that its sender has not been given back as window. */
const unreturned = (s: Stream): number => { const w = s as unknown as Window; return w.recvWindow - w.recvWindowCapacity }

describe('yamux window updates', () => {
  const set = new AgentSet()
  let a: Agent
  let b: Agent
  let inbound: Promise<Stream>

  beforeAll(async () => {
    a = await set.start({ name: 'a' })
    b = await set.start({ name: 'b' })
    let got!: (s: Stream) => void
    inbound = new Promise(resolve => { got = resolve })
    await b.node.handle(PROTOCOL, async (stream) => {
      got(stream)
      const lp = lpStream(stream, { maxDataLength: 1024 * 1024 })
      try {
        for (;;) await lp.write((await lp.read()).subarray())
      } catch {}
    }, { runOnLimitedConnection: false })
    await a.dial(b.node.getMultiaddrs()[0].toString())
  })
  afterAll(async () => { await set.stopAll() })

  it('answers small frames without a window update, and refills the window once half of it is used', async () => {
    const stream = await a.node.dialProtocol(peerIdFromString(b.peerId), PROTOCOL)
    const lp = lpStream(stream, { maxDataLength: 1024 * 1024 })
    const echo = async (i: number): Promise<void> => {
      await lp.write(Uint8Array.of(i))
      expect([...(await lp.read()).subarray()]).toEqual([i])
    }
    await echo(0)
    const server = await inbound
    const before = [unreturned(server), unreturned(stream)]
    for (let i = 1; i <= 50; i++) await echo(i)
    // 50 frames of 2 bytes (length prefix + byte) each way, and no window handed back for them.
    expect([unreturned(server), unreturned(stream)]).toEqual([before[0] + 100, before[1] + 100])
    // Far more than the initial 256 KiB window, both ways: the windows are refilled as it goes.
    for (let i = 0; i < 6; i++) {
      const big = randomBytes(200 * 1024)
      await lp.write(big)
      expect(Buffer.compare((await lp.read()).subarray(), big)).toBe(0)
    }
    const w = server as unknown as Window
    expect(unreturned(server)).toBeLessThan(w.recvWindow / 2)
    await stream.close()
  })
})
