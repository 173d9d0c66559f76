/**
 * Signatures over a context string and a body, so a signature made for one kind of
 * record can never be replayed as another. Shared by rosters, handovers, statuses,
 * settings changes and catalogs.
 */
import type { PeerId, PrivateKey } from '@libp2p/interface'

export function context (name: string): Uint8Array {
  return new TextEncoder().encode(`edgelink ${name}\0`)
}

export async function signWith (key: PrivateKey, ctx: Uint8Array, body: Uint8Array): Promise<Uint8Array> {
  return await key.sign(concat(ctx, body))
}

/** A malformed signature (wrong length) is a failed verification, never an exception. */
export async function verifyWith (signer: PeerId, ctx: Uint8Array, body: Uint8Array, signature: Uint8Array): Promise<boolean> {
  if (signer.publicKey == null) return false
  try {
    return await signer.publicKey.verify(concat(ctx, body), signature)
  } catch {
    return false
  }
}

export function equalBytes (a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0
}

export function concat (a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length)
  out.set(a, 0)
  out.set(b, a.length)
  return out
}
