/**
 * Generated protobuf types want `Uint8Array<ArrayBuffer>`; our bytes never live in a
 * SharedArrayBuffer, so narrowing the type is safe.
 */
export function u8 (b: Uint8Array): Uint8Array<ArrayBuffer> {
  return b as Uint8Array<ArrayBuffer>
}

/** Byte-for-byte equality (memcmp, not a constant-time compare: never use it on secrets). */
export function sameBytes (a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b)
}
