import { configDefaults, defineConfig } from 'vitest/config';

/**
 * Tests that measure how the engine adapts to its HSM's timing: they run before every other file,
 * one at a time, so that the other files' load on the machine's few CPUs is not part of what they
 * measure (run after them, on a VM whose host then steals CPU in bursts, one failed 3 CI runs in 3).
 */
const TIMING = ['test/adaptive-threads.test.ts'];

export default defineConfig({
  test: {
    pool: 'forks',
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 30000,
    hookTimeout: 60000,
    projects: [
      {
        extends: true,
        test: {
          name: 'main',
          include: ['test/**/*.test.ts'],
          exclude: [...configDefaults.exclude, ...TIMING],
          sequence: { groupOrder: 2 },
        },
      },
      { extends: true, test: { name: 'timing', include: TIMING, fileParallelism: false, sequence: { groupOrder: 1 } } },
    ],
  },
});
