import { describe, expect, it } from 'vitest'
import { z } from 'zod'
import { safeParse } from '../../src/util/parse.js'

const schema = z.object({ name: z.string().max(10), tags: z.array(z.string().min(1)).max(3).optional(), deep: z.record(z.string(), z.record(z.string(), z.string().max(5))).optional() }).strict()
const bad = (): unknown => ({ length: { toString: '' } })

describe('safeParse of untrusted input', () => {
  it('names the path of a mapping whose "length" cannot be compared, where zod threw a TypeError', () => {
    expect(() => schema.safeParse({ name: bad() })).toThrow(TypeError) // what it guards against
    for (const [input, path] of [
      [{ name: bad() }, ['name']],
      [{ name: 'a', tags: ['x', bad()] }, ['tags', 1]],
      [{ name: 'a', deep: { k: { v: bad() } } }, ['deep', 'k', 'v']],
      [bad(), []]
    ] as Array<[unknown, unknown[]]>) {
      const r = safeParse(schema, input)
      expect(r.success).toBe(false)
      expect(r.error?.issues[0].path).toEqual(path)
      expect(r.error?.issues[0].message).toMatch(/"length" that is not a number/)
    }
  })

  it('still never throws past what it walks: a value after 100 000 others', () => {
    const many: Record<string, string> = {}
    for (let i = 0; i < 100_001; i++) many[`k${i}`] = 'x'
    const input = { name: 'a', deep: { k: { ...many, zz: bad() as string } } }
    expect(() => schema.safeParse(input)).toThrow(TypeError)
    const r = safeParse(schema, input)
    expect(r.success).toBe(false)
    expect(r.error?.issues[0].message).toMatch(/wrong type/)
  })

  it('parses good input as zod does, and leaves Buffers and class instances alone', () => {
    expect(safeParse(schema, { name: 'ok', tags: ['a'] })).toEqual({ success: true, data: { name: 'ok', tags: ['a'] } })
    expect(safeParse(schema, { name: 'far too long a name' }).error?.issues[0].code).toBe('too_big')
    expect(safeParse(schema, Buffer.alloc(4 * 1024 * 1024)).success).toBe(false)
    expect(safeParse(schema, new Map([['name', 'x']])).success).toBe(false)
  })
})
