/**
 * A baseline for the content benchmark: bytes over bare libp2p streams with the agents'
 * stack (TCP, Noise, yamux, libp2p's defaults), nothing else: no file read, no hashing,
 * no disk. What the issue calls "one default libp2p stream", measured in the same run.
 *
 *   node _libp2p-copy.mjs receive            prints "addr MULTIADDR", then one JSON line
 *                                           {bytes, ms, cpu} once the sender's streams end
 *   node _libp2p-copy.mjs send ADDR BYTES N  sends BYTES over N streams, waits for the
 *                                           receiver's acknowledgement, prints {cpu}
 *
 * Loopback only: listens on 127.0.0.1, dials only the address it is given.
 */
if (typeof Promise.withResolvers !== 'function') { // node 20 (libp2p 3 calls it); as src/polyfill.ts
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { multiaddr } = await import('@multiformats/multiaddr')

const PROTOCOL = '/edgelink-bench/copy/1'
const [role, addr, bytesArg, streamsArg] = process.argv.slice(2)
const node = await createLibp2p({
  addresses: { listen: role === 'receive' ? ['/ip4/127.0.0.1/tcp/0'] : [] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  connectionMonitor: { enabled: false }
})
const cpuMs = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000 }

if (role === 'receive') {
  let bytes = 0
  let open = 0
  let t0 = null
  let c0 = null
  let expected = Infinity
  await node.handle(PROTOCOL, async (stream) => {
    open++
    t0 ??= performance.now()
    c0 ??= cpuMs()
    let first = true
    for await (const chunk of stream) {
      let data = chunk.subarray()
      if (first) { expected = Number(Buffer.from(data.subarray(0, 8)).readBigUInt64BE()); data = data.subarray(8); first = false }
      bytes += data.byteLength
    }
    if (--open === 0 && bytes >= expected) {
      process.stdout.write(JSON.stringify({ bytes, ms: performance.now() - t0, cpu: cpuMs() - c0 }) + '\n')
    }
    stream.send(Uint8Array.of(1))
    await stream.close()
  }, { maxInboundStreams: 64 })
  process.stdout.write(`addr ${node.getMultiaddrs()[0].toString()}\n`)
  process.on('SIGTERM', () => { node.stop().finally(() => process.exit(0)) })
} else if (role === 'send') {
  const total = Number(bytesArg)
  const n = Number(streamsArg ?? 1)
  const target = multiaddr(addr)
  if (!target.toString().startsWith('/ip4/127.0.0.1/')) throw new Error(`refusing to dial ${addr}: loopback only`)
  const piece = new Uint8Array(256 * 1024).fill(7)
  const c0 = cpuMs()
  const streams = await Promise.all(Array.from({ length: n }, async () => await node.dialProtocol(target, PROTOCOL)))
  await Promise.all(streams.map(async (stream, i) => {
    const share = Math.floor(total / n) + (i === 0 ? total % n : 0)
    const head = new Uint8Array(8)
    new DataView(head.buffer).setBigUint64(0, BigInt(total))
    if (!stream.send(head)) await stream.onDrain()
    for (let sent = 0; sent < share; sent += piece.length) {
      if (!stream.send(piece.subarray(0, Math.min(piece.length, share - sent)))) await stream.onDrain()
    }
    await stream.close() // our end; then wait for the receiver to have read everything
    for await (const ack of stream) { if (ack.byteLength > 0) break }
  }))
  process.stdout.write(JSON.stringify({ cpu: cpuMs() - c0 }) + '\n')
  await node.stop()
  process.exit(0)
} else {
  process.stderr.write('usage: _libp2p-copy.mjs receive | send ADDR BYTES STREAMS\n')
  process.exit(2)
}
