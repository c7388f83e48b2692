/**
 * Token-bucket rate limits (SPEC §7): the admission part of the guarded pick (SQL fragments
 * `claim.ts` builds into its one statement), the declaration of limits at join, and the
 * leader's pruning of buckets.
 *
 * A bucket `(name, partition)` (partition `''` for a limit without partitions) stores the
 * tokens it held when it last granted and when that was; it holds
 * `min(burst, tokens + elapsed × allowed / period)` now. A bucket with no row counts as full.
 */
import { type Queryable, run, statement } from './db.js';

/** The tokens bucket `b` of config `c` holds at `at` (SQL; `b` may be missing: full). */
export function available(c: string, b: string, at = 'now()'): string {
  return `LEAST(${c}.burst, COALESCE(${b}.tokens + extract(epoch FROM ${at} - ${b}.refreshed_at) * 1000 * ${c}.allowed / ${c}.period_ms, ${c}.burst))`;
}

/**
 * The pick's per-candidate look at the bucket of candidate `x`, from the statement's
 * snapshot without a lock: false when the bucket holds less than it `need`s now (the row is
 * skipped, so the rows of a throttled bucket do not fill the batch), null when the limit is
 * unknown (the row is taken, reported and put off), true otherwise. A bucket needs 1 token,
 * or, while a head that did not fit blocks it, that head's weight: so a lighter row behind
 * the head never overtakes it in a later pick. Evaluated only for rows that name a limit.
 */
export const RATE_PROBE = (x: string) => `CASE WHEN ${x}.rate_limit IS NULL THEN true
       ELSE (SELECT ${available('rc', 'rb')} >= COALESCE(rb.need, 1)
             FROM :schema.gen_durable_rate_configs rc
             LEFT JOIN :schema.gen_durable_rate_buckets rb
               ON rb.name = rc.name AND rb.partition = COALESCE(${x}.rate_partition, '')
             WHERE rc.name = ${x}.rate_limit) IS NOT false END`;

/**
 * The admission CTEs over `candidates` (columns `id, rate_limit, rate_partition, weight,
 * p, eligible_at`: rows that passed every other check, in urgency order `p, eligible_at,
 * id`):
 * - `limited`/`rated`: the candidates naming a declared limit, with its config and their
 *   bucket's running total of weight in urgency order (`cum`);
 * - `debited`: one upsert per bucket, in `(name, partition)` order (the one order every
 *   pick locks buckets in), that locks the bucket's latest version, refills it up to the
 *   moment it holds the lock (`clock_timestamp()`, so a pick that waited for another's grant
 *   of the bucket never refills from before that grant), takes the longest prefix of its
 *   candidates whose weight fits, and stores what is left, what was granted and what the
 *   first row left out needs (its weight; 1 when none was left out). A bucket that does not
 *   exist is created with `burst` minus the grant. Another pick's grant of the same bucket
 *   is waited for and then seen (the upsert reads the row it conflicts with, whatever the
 *   snapshot);
 * - `rate_admitted`: the rated candidates inside their bucket's grant; the others stay
 *   runnable where they are (`left_out`);
 * - `unknown_limit`: candidates naming a limit no node declared, and `oversized`: ones
 *   heavier than their bucket's burst (it can never hold their weight: keeping them in the
 *   prefix would block the bucket for good); both are put off by `deferUnknown` ms
 *   (`deferred`) so that they do not fill every batch, and reported.
 * Every scan of the rate tables here is driven by `rated` or by rows naming a limit: with
 * none among the candidates, none of them runs.
 */
export function rateCtes(candidates: string, deferUnknown: string): string {
  const grant = (avail: string) =>
    `(SELECT COALESCE(max(x), 0)::int FROM unnest(w.cums) AS x WHERE x <= ${avail})`;
  const need = (avail: string) =>
    `COALESCE((SELECT min(x) FROM unnest(w.cums) AS x WHERE x > ${avail}) - ${grant(avail)}, 1)`;
  // The config is looked up by a scalar subquery per row naming a limit, not joined: a join
  // would be planned as a hash join that reads the configs whatever the candidates.
  return `limited AS (
       SELECT k.id, k.rate_limit, k.rate_partition, k.weight, k.p, k.eligible_at,
              (SELECT rc FROM :schema.gen_durable_rate_configs rc WHERE rc.name = k.rate_limit) AS cfg
       FROM ${candidates} k
       WHERE k.rate_limit IS NOT NULL
     ),
     rated AS (
       SELECT k.id, k.rate_limit AS name, COALESCE(k.rate_partition, '') AS part,
              (k.cfg).allowed, (k.cfg).period_ms, (k.cfg).burst,
              sum(k.weight) OVER (PARTITION BY k.rate_limit, k.rate_partition
                                  ORDER BY k.p, k.eligible_at, k.id) AS cum
       FROM limited k
       WHERE k.cfg IS NOT NULL AND k.weight <= (k.cfg).burst
     ),
     wants AS (
       SELECT r.name, r.part, array_agg(r.cum ORDER BY r.cum) AS cums,
              min(r.allowed) AS allowed, min(r.period_ms) AS period_ms, min(r.burst) AS burst
       FROM rated r
       GROUP BY r.name, r.part
     ),
     debited AS (
       INSERT INTO :schema.gen_durable_rate_buckets AS b (name, partition, tokens, refreshed_at, granted, need)
       SELECT w.name, w.part, w.burst - ${grant('w.burst')}, clock_timestamp(), ${grant('w.burst')}, ${need('w.burst')}
       FROM wants w ORDER BY w.name, w.part
       ON CONFLICT (name, partition) DO UPDATE SET (tokens, refreshed_at, granted, need) = (
         SELECT a.avail - ${grant('a.avail')}, c.at, ${grant('a.avail')}, ${need('a.avail')}
         FROM wants w CROSS JOIN LATERAL (SELECT clock_timestamp() AS at) c
         CROSS JOIN LATERAL (SELECT ${available('w', 'b', 'c.at')} AS avail) a
         WHERE w.name = b.name AND w.part = b.partition)
       RETURNING b.name, b.partition, b.tokens, b.granted
     ),
     rate_admitted AS (
       SELECT r.id FROM rated r JOIN debited d ON d.name = r.name AND d.partition = r.part
       WHERE r.cum <= d.granted
     ),
     left_out AS (
       SELECT r.id FROM rated r JOIN debited d ON d.name = r.name AND d.partition = r.part
       WHERE r.cum > d.granted
     ),
     unknown_limit AS (
       SELECT k.id, k.rate_limit AS name FROM limited k WHERE k.cfg IS NULL
     ),
     oversized AS (
       SELECT k.id, k.rate_limit AS name, k.rate_partition AS partition, k.weight, (k.cfg).burst
       FROM limited k WHERE k.cfg IS NOT NULL AND k.weight > (k.cfg).burst
     ),
     deferred AS (
       UPDATE :schema.gen_durable AS t SET eligible_at = now() + ${deferUnknown} * interval '1 millisecond'
       FROM (SELECT id FROM unknown_limit UNION ALL SELECT id FROM oversized) u WHERE t.id = u.id
       RETURNING t.id
     )`;
}

/**
 * What the pick reports of its admission, as JSON (null when nothing to report): buckets that
 * granted less than their candidates wanted (`throttled`, with the ms until the first one
 * left out fits), the limits nobody declared (`unknown`, with the ids), rows heavier than
 * their bucket's burst (`oversized`), and how many candidates were left out or put off
 * (`passed`).
 */
export const RATE_REPORT = `json_build_object(
       'throttled', (SELECT json_agg(json_build_object(
           'name', d.name, 'partition', NULLIF(d.partition, ''), 'wanted', w.cums[cardinality(w.cums)],
           'granted', d.granted,
           'waitMs', ceil(((SELECT min(x) FROM unnest(w.cums) AS x WHERE x > d.granted) - d.granted - d.tokens)
                          * w.period_ms / w.allowed)))
         FROM debited d JOIN wants w ON w.name = d.name AND w.part = d.partition
         WHERE w.cums[cardinality(w.cums)] > d.granted),
       'unknown', (SELECT json_agg(json_build_object('name', u.name, 'id', u.id::text)) FROM unknown_limit u),
       'oversized', (SELECT json_agg(json_build_object('name', o.name, 'partition', o.partition, 'id', o.id::text,
                                                       'weight', o.weight, 'burst', o.burst)) FROM oversized o),
       'passed', (SELECT count(*) FROM left_out) + (SELECT count(*) FROM deferred))`;

/** A bucket that granted less than its candidates wanted. */
export interface Throttle {
  readonly name: string;
  readonly partition: string | null;
  /** Tokens the candidates of the pick wanted. */
  readonly wanted: number;
  readonly granted: number;
  /** Until the first candidate left out fits. */
  readonly waitMs: number;
}

export interface RateReport {
  readonly throttled: Throttle[] | null;
  readonly unknown: Array<{ name: string; id: string }> | null;
  /** Rows heavier than their bucket's burst: they can never run. */
  readonly oversized: Array<{
    name: string;
    partition: string | null;
    id: string;
    weight: number;
    burst: number;
  }> | null;
  /** Candidates not claimed: left out by their bucket, or put off (an unknown limit). */
  readonly passed: number;
}

export interface RateLimitConfig {
  readonly allowed: number;
  readonly periodMs: number;
  readonly burst: number;
}

/**
 * Declares limits (a registering node's `rateLimits`): inserted, or updated to these
 * settings; `updated_at` is touched either way, so that the housekeeping does not remove a
 * limit declared a moment ago by a node it did not see yet (`pruneUndeclaredLimits`).
 */
export async function declareRateLimits(
  db: Queryable,
  schema: string,
  limits: Readonly<Record<string, RateLimitConfig>>,
): Promise<void> {
  const names = Object.keys(limits);
  if (names.length === 0) return;
  const stmt = statement(
    schema,
    'declare_rate_limits',
    `INSERT INTO :schema.gen_durable_rate_configs AS c (name, allowed, period_ms, burst)
     SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::int[]) ORDER BY 1
     ON CONFLICT (name) DO UPDATE SET allowed = EXCLUDED.allowed, period_ms = EXCLUDED.period_ms,
       burst = EXCLUDED.burst, updated_at = now()`,
  );
  const configs = names.map((n) => limits[n]!);
  await run(db, stmt, [
    names,
    configs.map((c) => c.allowed),
    configs.map((c) => Math.round(c.periodMs)),
    configs.map((c) => c.burst),
  ]);
}

/** How many first due rows of a queue `rateWaitIn` looks at. */
const HEAD_SAMPLE = 200;

/**
 * Ms until a throttled row among the first due rows of `queue` can be taken (null when none
 * of them is throttled): the feeder's wake-up for rows its pick skipped because their bucket
 * held less than it needs (`RATE_PROBE`), which a pick cannot report. Reads at most the
 * first 200 due rows (the ones a pick meets first), one bucket look-up each of those naming
 * a limit; unprepared, as the pick. Always a wait, never "now": a row whose bucket could take
 * it was held back by something else (a key, another picker) and does not count.
 */
export async function rateWaitIn(
  db: Queryable,
  schema: string,
  queue: string,
  machines: readonly string[] | null = null,
): Promise<number | null> {
  const stmt = statement(
    schema,
    'rate_wait',
    `SELECT ceil(min((GREATEST(h.weight, COALESCE(rb.need, 1)) - ${available('rc', 'rb')})
                     * rc.period_ms / rc.allowed))::float8 AS ms
     FROM (SELECT rate_limit, rate_partition, weight FROM :schema.gen_durable
           WHERE queue = $1 AND status = 'runnable' AND eligible_at <= now()
             AND ($2::text[] IS NULL OR fsm || '@' || version = ANY ($2::text[]))
           ORDER BY priority, eligible_at, id LIMIT ${HEAD_SAMPLE}) h
     JOIN :schema.gen_durable_rate_configs rc ON rc.name = h.rate_limit
     LEFT JOIN :schema.gen_durable_rate_buckets rb
       ON rb.name = h.rate_limit AND rb.partition = COALESCE(h.rate_partition, '')
     WHERE h.rate_limit IS NOT NULL AND COALESCE(rb.need, 1) <= rc.burst
       AND ${available('rc', 'rb')} < COALESCE(rb.need, 1)`,
    { prepared: false },
  );
  const row = (await run<{ ms: number | null }>(db, stmt, [queue, machines]))[0];
  return row?.ms ?? null;
}

/** How long a limit no registered node declares is kept, from its latest declaration. */
const UNDECLARED_GRACE_MS = 60_000;

/**
 * Removes limits no registered node declares any more (and none has for a minute since the
 * latest declaration), once every bucket of theirs is full again: a bucket still owing tokens
 * keeps its limit, so that a limit declared again (a restart of the nodes that declare it)
 * carries on from what it had granted rather than from full buckets. Their buckets go next
 * (`pruneBuckets`), their rows are reported as unknown. A node that was declared dead and
 * pruned declares its limits again when it registers again.
 */
export async function pruneUndeclaredLimits(db: Queryable, schema: string): Promise<string[]> {
  const stmt = statement(
    schema,
    'prune_limits',
    `DELETE FROM :schema.gen_durable_rate_configs c
     WHERE c.updated_at < now() - $1 * interval '1 millisecond'
       AND NOT EXISTS (SELECT 1 FROM :schema.gen_durable_nodes n WHERE c.name = ANY (n.rate_limits))
       AND NOT EXISTS (SELECT 1 FROM :schema.gen_durable_rate_buckets b
                       WHERE b.name = c.name AND ${available('c', 'b')} < c.burst)
     RETURNING c.name`,
  );
  return (await run<{ name: string }>(db, stmt, [UNDECLARED_GRACE_MS])).map((r) => r.name);
}

/**
 * The leader's bucket housekeeping: deletes up to `limit` buckets that are full again (a
 * missing bucket counts as full, so forgetting them changes nothing: idle partitions do not
 * pile up) and buckets of limits no longer declared. Locked buckets (a pick granting from
 * them) are skipped.
 */
export async function pruneBuckets(db: Queryable, schema: string, limit: number): Promise<number> {
  const stmt = statement(
    schema,
    'prune_buckets',
    `WITH idle AS (
       SELECT b.name, b.partition FROM :schema.gen_durable_rate_buckets b
       LEFT JOIN :schema.gen_durable_rate_configs rc ON rc.name = b.name
       WHERE rc.name IS NULL OR ${available('rc', 'b')} >= rc.burst
       LIMIT $1
       FOR UPDATE OF b SKIP LOCKED
     )
     DELETE FROM :schema.gen_durable_rate_buckets b USING idle
     WHERE b.name = idle.name AND b.partition = idle.partition`,
  );
  const result = await db.query({ text: stmt.text, values: [limit] });
  return result.rowCount ?? 0;
}
