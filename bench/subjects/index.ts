import { genDurable, genDurableKeepNothing, genDurableRunAhead } from './gen-durable.js';
import { graphileWorker } from './graphile-worker.js';
import { pgBoss } from './pg-boss.js';
import type { Subject } from './subject.js';

export const SUBJECTS: Record<string, Subject> = {
  [genDurable.name]: genDurable,
  [genDurableRunAhead.name]: genDurableRunAhead,
  [genDurableKeepNothing.name]: genDurableKeepNothing,
  [graphileWorker.name]: graphileWorker,
  [pgBoss.name]: pgBoss,
};
