import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Real servers and real binaries: give them room, but every test still bounds itself.
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // 2-core CI: two workers keep end-to-end tests with child processes from starving each other.
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
  },
});
