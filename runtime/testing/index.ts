/** `gen-durable/testing`: helpers for the tests of applications built on gen-durable. */
export { liveResources } from '../resources.js';
