/**
 * V8 heap tuning for the agent process (not the CLI).
 *
 * `--heap-growing-percent=200`: after a full collection, V8 lets the old generation grow to
 * 3 times what survived before the next one starts (its own factor, from 1.1 to 4, was about
 * 1.8 here). Why: the old generation's "consumed" bytes include the external memory
 * (ArrayBuffers) allocated since the last full collection, and a transfer allocates two
 * bytes of external memory per byte it moves (a socket read buffer and Noise's plaintext or
 * ciphertext). The buffers die young, and a scavenge frees them; but when a full collection
 * came first, the next one was due after another ~15 MB of buffers (the slack of a 19 MB
 * heap), before the young generation filled, so no scavenge ever ran and only full
 * collections freed buffers: a full collection every ~7 MiB moved. Measured with
 * `node --trace-gc` on the receiving agent, 512 MiB transfers: runs fell either into that
 * mode (77-94 full collections, 56-71 MB/s, 16-20 CPU-ms per MiB on the receiver) or not
 * (9-11, 107-125 MB/s, 9-10 ms/MiB), which made the benchmark's figures bimodal; concurrent
 * marking alone was 25 % of the receiver's CPU in a `perf` profile of a slow run. With this
 * setting, 4 runs of 4 had 1-3 full collections, 117-137 MB/s, 7.9-9.4 ms/MiB on the
 * receiver and 4.0-4.9 on the sender. The cost is a larger old generation between
 * collections: the receiver's RSS growth during those runs was 55-72 MiB, as before.
 *
 * The flag is read each time V8 computes a new limit, so setting it at run time applies
 * from the next collection on (documented as undefined behaviour in general; this flag is a
 * plain number V8 reads on each use). Flags that are read only when the heap is set up,
 * such as the young generation's size, cannot be set this way.
 */
import { setFlagsFromString } from 'node:v8'

export const V8_AGENT_FLAGS = ['--heap-growing-percent=200'] as const

export function tuneHeap (set: (flags: string) => void = setFlagsFromString): void {
  for (const flag of V8_AGENT_FLAGS) set(flag)
}
