import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    setupFiles: ['./test/setup.ts'],
    include: ['test/**/*.test.ts'],
    // Integration and e2e tests start real agents; the default 5 s is too short on a loaded 2-core machine.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // e2e lab tests own network namespaces; run files one at a time so labs never overlap in time.
    fileParallelism: false,
    pool: 'forks'
  }
})
