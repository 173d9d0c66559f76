/**
 * Generated protobuf types want `Uint8Array<ArrayBuffer>`; our bytes never live in a
 * SharedArrayBuffer, so narrowing the type is safe.
 */
export function u8 (b: Uint8Array): Uint8Array<ArrayBuffer> {
  return b as Uint8Array<ArrayBuffer>
}
