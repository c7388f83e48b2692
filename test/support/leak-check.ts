/** After each test: every node, client and thread pool the test started must be closed. */
import { afterEach, expect } from 'vitest';
import { liveResources } from '../../runtime/resources.js';

afterEach(() => {
  expect(liveResources(), 'resources left open by this test').toEqual([]);
});
