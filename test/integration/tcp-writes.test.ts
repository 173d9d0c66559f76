/**
 * The @libp2p/tcp patch (patches/README.md): what a connection sends in one go (Noise's
 * messages, each a length and a ciphertext) reaches the socket as one corked write, not
 * two writes per message; and a transfer larger than the socket's buffers still arrives
 * whole, in order.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createHash, randomBytes } from 'node:crypto'
import { Socket } from 'node:net'
import { lpStream } from '@libp2p/utils'
import { peerIdFromString } from '@libp2p/peer-id'
import { AgentSet } from '../helpers/agents.js'
import type { Agent } from '../../src/agent/agent.js'

const PROTOCOL = '/edgelink-test/sink/1.0.0'
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex')

describe('TCP writes of a libp2p connection', () => {
  const set = new AgentSet()
  let a: Agent
  let b: Agent
  let bPort: number

  beforeAll(async () => {
    a = await set.start({ name: 'a' })
    b = await set.start({ name: 'b' })
    await b.node.handle(PROTOCOL, async (stream) => {
      const lp = lpStream(stream, { maxDataLength: 64 * 1024 * 1024 })
      try {
        for (;;) await lp.write(Buffer.from(sha((await lp.read()).subarray())))
      } catch {}
    }, { runOnLimitedConnection: false })
    const addr = b.node.getMultiaddrs()[0]
    bPort = Number(addr.toString().split('/tcp/')[1].split('/')[0])
    await a.dial(addr.toString())
  })
  afterAll(async () => { await set.stopAll() })

  it('hands Noise messages to the socket in one write per batch, and a large message arrives whole', async () => {
    const stream = await a.node.dialProtocol(peerIdFromString(b.peerId), PROTOCOL)
    const lp = lpStream(stream, { maxDataLength: 64 * 1024 * 1024 })
    await lp.write(Uint8Array.of(1)) // the stream is open both ways
    expect((await lp.read()).subarray().length).toBe(64)

    // Count the socket-level writes (each one a write(2) or writev(2)) from a to b.
    const proto = Socket.prototype as unknown as Record<'_write' | '_writev', (...args: unknown[]) => unknown>
    const original = { _write: proto._write, _writev: proto._writev }
    const counts = { calls: 0, chunks: 0 }
    const toB = (s: Socket): boolean => s.remotePort === bPort && s.remoteAddress === '127.0.0.1'
    proto._write = function (this: Socket, ...args: unknown[]) {
      if (toB(this)) { counts.calls++; counts.chunks++ }
      return original._write.apply(this, args)
    }
    proto._writev = function (this: Socket, ...args: unknown[]) {
      if (toB(this)) { counts.calls++; counts.chunks += (args[0] as unknown[]).length }
      return original._writev.apply(this, args)
    }
    const big = randomBytes(200 * 1024)
    try {
      await lp.write(big)
      expect((await lp.read()).subarray().toString()).toBe(sha(big))
    } finally {
      proto._write = original._write
      proto._writev = original._writev
    }
    // 200 KiB is at least 4 Noise messages (≤ 65535 bytes each), 8 buffers with their lengths.
    expect(counts.chunks).toBeGreaterThanOrEqual(8)
    // Unpatched, each buffer was its own write: 8 or more. Corked, one per batch the yamux
    // window lets through (the first window is 256 KiB: one batch, and a window update's worth).
    expect(counts.calls).toBeLessThanOrEqual(3)

    // More than the socket buffers and the yamux window take at once (a byte stream reads at
    // most 4 MiB ahead): everything arrives, in order.
    for (const size of [1024 * 1024 + 17, 3 * 1024 * 1024]) {
      const data = randomBytes(size)
      await lp.write(data)
      expect((await lp.read()).subarray().toString()).toBe(sha(data))
    }
    await stream.close()
  })
})
