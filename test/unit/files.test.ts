import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { open, type FileHandle } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { byteLength, sha256, writevFully } from '../../src/content/files.js'

const dir = mkdtempSync(join(tmpdir(), 'edgelink-files-'))
afterAll(() => { rmSync(dir, { recursive: true, force: true }) })

describe('chunk bytes in pieces', () => {
  const whole = randomBytes(300_001)
  const pieces = [whole.subarray(0, 1), whole.subarray(1, 1), whole.subarray(1, 70_000), whole.subarray(70_000)]

  it('hashes pieces as the bytes they make up', () => {
    const want = createHash('sha256').update(whole).digest()
    expect(Buffer.from(sha256(pieces)).equals(want)).toBe(true)
    expect(Buffer.from(sha256(whole)).equals(want)).toBe(true)
    expect(byteLength(pieces)).toBe(whole.length)
    expect(byteLength(whole)).toBe(whole.length)
  })

  it('writes pieces at an offset of a real file', async () => {
    const file = join(dir, 'w')
    const fh = await open(file, 'w+')
    try {
      await writevFully(fh, pieces, 5)
      await writevFully(fh, whole.subarray(0, 5), 0)
    } finally { await fh.close() }
    const got = readFileSync(file)
    expect(got.length).toBe(whole.length + 5)
    expect(got.subarray(5).equals(whole)).toBe(true)
  })

  it('goes on after short writes, from the byte where each stopped', async () => {
    // A regular file does not write short on demand; this handle does, then hands the rest to a real file.
    const file = join(dir, 'short')
    const real = await open(file, 'w+')
    const sizes = [1, 69_999, 12_345]
    let calls = 0
    const shorty = {
      writev: async (bufs: Uint8Array[], position: number) => {
        const limit = sizes[calls++] ?? Infinity
        const out: Uint8Array[] = []
        let left = limit
        for (const b of bufs) { if (left <= 0) break; const part = b.subarray(0, Math.min(b.length, left)); out.push(part); left -= part.length }
        return await real.writev(out, position)
      },
      write: real.write.bind(real)
    } as unknown as FileHandle
    try {
      await writevFully(shorty, pieces, 0)
    } finally { await real.close() }
    expect(calls).toBe(4)
    expect(readFileSync(file).equals(whole)).toBe(true)
  })
})
