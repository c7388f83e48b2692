import type { z } from 'zod';
import type { JobDefinition } from '../index.js';

export declare const BENCH_QUEUE: 'bench';
export declare const noop: JobDefinition<z.ZodObject<{ i: z.ZodNumber }>>;
