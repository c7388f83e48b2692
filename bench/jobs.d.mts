import type { z } from 'zod';
import type { JobDefinition, MachineDefinition } from '../index.js';

type Chain = MachineDefinition<z.ZodObject<{ i: z.ZodNumber }>, 'a' | 'b' | 'c' | 'd' | 'e'>;

export declare const BENCH_QUEUE: 'bench';
export declare const noop: JobDefinition<z.ZodObject<{ i: z.ZodNumber }>>;
export declare const CHAIN_STEPS: readonly string[];
export declare const chain: Chain;
export declare const chainAhead: Chain;
export declare const LATENCY_TABLE: 'bench_latency_runs';
export declare function latencyInsert(schema: string): string;
export declare function monotonicMs(): number;
export declare const latencyProbe: JobDefinition<z.ZodObject<{ sent: z.ZodNumber }>>;
