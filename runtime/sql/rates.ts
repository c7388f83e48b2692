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
 * The admission CTEs over `candidates` (columns `id, rate_limit, rate_partition, weight,
 * rate_booked, p, eligible_at`: rows that passed every other check, in urgency order `p,
 * eligible_at, id`).
 *
 * A bucket keeps a line: the rows it could not take are booked into it, each put off
 * (`eligible_at`) until the bucket will have refilled for it and every row booked before it,
 * so throttled rows leave the due range (a pick never reads past them: its cost follows the
 * batch) and come back in the order they were booked. While the line is not over
 * (`booked_until` ahead), only booked rows may be granted, so a row that comes later
 * (another queue, another node, a lighter one) never overtakes it. A booked row still pays
 * when it is claimed: tokens are only ever taken at the claim, so the bound holds however
 * late rows are claimed (after an outage, at most `burst` at once).
 *
 * - `limited`/`rated`: the candidates naming a declared limit, with its config, their
 *   bucket's running total of weight in urgency order (`cum`), and that of its booked rows
 *   (`cum_booked`);
 * - `debited`: one upsert per bucket, in `(name, partition)` order (the one order every
 *   pick locks buckets in), that locks the bucket's latest version, refills it up to the
 *   moment it holds the lock (`clock_timestamp()`, so a pick that waited for another's grant
 *   of the bucket never refills from before that grant), and grants the longest prefix
 *   whose weight fits: of the booked rows while the line is not over (`line`), else of all.
 *   It moves the end of the line past the rows it books. A bucket that does not exist is
 *   created with `burst` minus the grant. Another pick's grant of the same bucket is waited
 *   for and then seen (the upsert reads the row it conflicts with, whatever the snapshot);
 * - `rate_admitted`: the rows granted; `to_book`: the others, each with its place in the
 *   line (`slot`);
 * - `unknown_limit`: candidates naming a limit no node declared, and `oversized`: ones
 *   heavier than their bucket's burst (it can never hold their weight: in the line they
 *   would block the bucket for good); both are put off by `deferUnknown` ms and reported;
 * - `put_off`: the update that books and puts off rows.
 * Every scan of the rate tables here is driven by rows naming a limit: with none among the
 * candidates, none of them runs.
 */
export function rateCtes(candidates: string, deferUnknown: string): string {
  // Per bucket (`w` of `wants`, `avail` tokens, `line`): the weight granted.
  const grant = (avail: string, line: string) => `CASE WHEN ${line}
         THEN (SELECT COALESCE(max(x), 0)::int FROM unnest(w.booked_cums) AS x WHERE x <= ${avail})
         ELSE (SELECT COALESCE(max(x), 0)::int FROM unnest(w.cums) AS x WHERE x <= ${avail}) END`;
  // The time bucket `w` takes to refill `tokens` (in floating point: whole milliseconds
  // would make a long line run ahead of its bucket).
  const refill = (tokens: string, period = 'w.period_ms', allowed = 'w.allowed') =>
    `(${tokens})::float8 * ${period} / ${allowed} * interval '1 millisecond'`;
  // The end of the line once the rows not granted are booked. Without a line: from when the
  // bucket will have refilled past what is left. With one: its booked rows left out stay at
  // its front (each due when the bucket will have refilled for it: a booked row never goes
  // to the back), the unbooked ones join its end.
  const lineEnd = (at: string, left: string, granted: string, line: string, end: string) => `CASE
         WHEN NOT ${line} THEN CASE WHEN w.total > ${granted} THEN ${at} + ${refill(`w.total - ${granted} - (${left})`)} END
         ELSE GREATEST(${end}, ${at} + ${refill(`w.booked_total - ${granted} - (${left})`)})
              + ${refill('w.total - w.booked_total')} END`;
  // The config is looked up by a scalar subquery per row naming a limit, not joined: a join
  // would be planned as a hash join that reads the configs whatever the candidates.
  return `limited AS (
       SELECT k.id, k.rate_limit, k.rate_partition, k.weight, k.rate_booked, k.p, k.eligible_at,
              (SELECT rc FROM :schema.gen_durable_rate_configs rc WHERE rc.name = k.rate_limit) AS cfg
       FROM ${candidates} k
       WHERE k.rate_limit IS NOT NULL
     ),
     rated AS (
       SELECT k.id, k.rate_limit AS name, COALESCE(k.rate_partition, '') AS part, k.weight,
              k.rate_booked AS booked, k.p, k.eligible_at,
              (k.cfg).allowed, (k.cfg).period_ms, (k.cfg).burst,
              sum(k.weight) OVER w AS cum,
              sum(CASE WHEN k.rate_booked THEN k.weight ELSE 0 END) OVER w AS cum_booked,
              sum(CASE WHEN k.rate_booked THEN 0 ELSE k.weight END) OVER w AS cum_unbooked
       FROM limited k
       WHERE k.cfg IS NOT NULL AND k.weight <= (k.cfg).burst
       WINDOW w AS (PARTITION BY k.rate_limit, k.rate_partition ORDER BY k.p, k.eligible_at, k.id)
     ),
     wants AS (
       SELECT r.name, r.part, array_agg(r.cum ORDER BY r.cum) AS cums,
              array_agg(r.cum_booked ORDER BY r.cum) FILTER (WHERE r.booked) AS booked_cums,
              sum(r.weight) AS total, COALESCE(sum(r.weight) FILTER (WHERE r.booked), 0) AS booked_total,
              min(r.allowed) AS allowed, min(r.period_ms) AS period_ms, min(r.burst) AS burst
       FROM rated r
       GROUP BY r.name, r.part
     ),
     -- A line is on while its end is ahead and its bucket not full, or while booked rows are
     -- still there, until a second past its end (its last row falls due at the end, and is
     -- picked a moment later: it must not lose its turn to a row that came meanwhile). It is
     -- over once its bucket is full again with no booked row left (they were cancelled, or
     -- ended: the tokens of the slots nobody took pile up, and nothing waits in front of the
     -- rows that come now), and a second past its end whatever is left (booked rows nobody
     -- claims, a queue no node runs, must not hold the bucket up for good).
     debited AS (
       INSERT INTO :schema.gen_durable_rate_buckets AS b
         (name, partition, tokens, refreshed_at, granted, line, booked_until)
       SELECT w.name, w.part, w.burst - g.granted, g.at, g.granted, false,
              ${lineEnd('g.at', 'w.burst - g.granted', 'g.granted', 'false', 'NULL::timestamptz')}
       FROM wants w
       CROSS JOIN LATERAL (SELECT clock_timestamp() AS at, ${grant('w.burst', 'false')} AS granted) g
       ORDER BY w.name, w.part
       ON CONFLICT (name, partition) DO UPDATE SET (tokens, refreshed_at, granted, line, booked_until) = (
         SELECT a.avail - g.granted, c.at, g.granted, c.line,
                ${lineEnd('c.at', 'a.avail - g.granted', 'g.granted', 'c.line', 'b.booked_until')}
         FROM wants w
         CROSS JOIN LATERAL (SELECT clock_timestamp() AS at) c0
         CROSS JOIN LATERAL (SELECT ${available('w', 'b', 'c0.at')} AS avail) a
         CROSS JOIN LATERAL (
           SELECT c0.at, COALESCE(b.booked_until > c0.at - interval '1 second', false)
                    AND ((b.booked_until > c0.at AND a.avail < w.burst) OR EXISTS (
                          SELECT 1 FROM :schema.gen_durable t
                          WHERE t.rate_booked AND t.status = 'runnable' AND t.rate_limit = b.name
                            AND COALESCE(t.rate_partition, '') = b.partition)) AS line) c
         CROSS JOIN LATERAL (SELECT ${grant('a.avail', 'c.line')} AS granted) g
         WHERE w.name = b.name AND w.part = b.partition)
       RETURNING b.name, b.partition, b.tokens, b.granted, b.line, b.booked_until, b.refreshed_at
     ),
     granted_or_not AS (
       SELECT r.*, d.line, d.tokens AS left_, d.refreshed_at AS at, d.booked_until, d.granted,
              w.total - w.booked_total AS unbooked_total,
              CASE WHEN d.line THEN r.booked AND r.cum_booked <= d.granted ELSE r.cum <= d.granted END AS ok
       FROM rated r JOIN debited d ON d.name = r.name AND d.partition = r.part
       JOIN wants w ON w.name = r.name AND w.part = r.part
     ),
     rate_admitted AS (
       SELECT id FROM granted_or_not WHERE ok
     ),
     -- Each row left out, and its slot: without a line, or booked already, when the bucket will
     -- have refilled for it and the rows before it; else after the end of the line. A slot is
     -- a millisecond late: timestamps hold microseconds, and a row due a hair before its
     -- tokens would be left out again.
     to_book AS (
       SELECT o.id, o.name, o.part,
              CASE WHEN NOT o.line THEN o.at + ${refill('o.cum - o.granted - o.left_', 'o.period_ms', 'o.allowed')}
                   WHEN o.booked THEN o.at + ${refill('o.cum_booked - o.granted - o.left_', 'o.period_ms', 'o.allowed')}
                   ELSE o.booked_until - ${refill('o.unbooked_total - o.cum_unbooked', 'o.period_ms', 'o.allowed')} END
                + interval '1 millisecond' AS slot
       FROM granted_or_not o WHERE NOT o.ok
     ),
     unknown_limit AS (
       SELECT k.id, k.rate_limit AS name FROM limited k WHERE k.cfg IS NULL
     ),
     oversized AS (
       SELECT k.id, k.rate_limit AS name, k.rate_partition AS partition, k.weight, (k.cfg).burst
       FROM limited k WHERE k.cfg IS NOT NULL AND k.weight > (k.cfg).burst
     ),
     put_off AS (
       UPDATE :schema.gen_durable AS t SET eligible_at = o.at, rate_booked = t.rate_booked OR o.book
       FROM (SELECT id, slot AS at, true AS book FROM to_book
             UNION ALL
             SELECT id, now() + ${deferUnknown} * interval '1 millisecond', false
             FROM (SELECT id FROM unknown_limit UNION ALL SELECT id FROM oversized) u) o
       WHERE t.id = o.id
       RETURNING t.id, o.at
     )`;
}

/** Whole ms from now until `at` (SQL), at least 1. */
const msUntil = (at: string) => `GREATEST(1, ceil(extract(epoch FROM ${at} - now()) * 1000))`;

/**
 * What the pick reports of its admission, as JSON (null when nothing to report): buckets that
 * granted less than their candidates wanted (`throttled`, with the ms until the first row
 * it booked falls due), the limits nobody declared (`unknown`, with the ids), rows heavier
 * than their bucket's burst (`oversized`), how many candidates were booked or put off
 * (`passed`) and the ms until the first of them falls due (`nextMs`).
 */
export const RATE_REPORT = `json_build_object(
       'throttled', (SELECT json_agg(json_build_object(
           'name', d.name, 'partition', NULLIF(d.partition, ''), 'wanted', w.total, 'granted', d.granted,
           'waitMs', (SELECT ${msUntil('min(tb.slot)')} FROM to_book tb WHERE tb.name = d.name AND tb.part = d.partition)))
         FROM debited d JOIN wants w ON w.name = d.name AND w.part = d.partition
         WHERE w.total > d.granted),
       'unknown', (SELECT json_agg(json_build_object('name', u.name, 'id', u.id::text)) FROM unknown_limit u),
       'oversized', (SELECT json_agg(json_build_object('name', o.name, 'partition', o.partition, 'id', o.id::text,
                                                       'weight', o.weight, 'burst', o.burst)) FROM oversized o),
       'passed', (SELECT count(*) FROM put_off),
       'nextMs', (SELECT CASE WHEN count(*) > 0 THEN ${msUntil('min(at)')} END FROM put_off))`;

/** A bucket that granted less than its candidates wanted. */
export interface Throttle {
  readonly name: string;
  readonly partition: string | null;
  /** Tokens the candidates of the pick wanted. */
  readonly wanted: number;
  readonly granted: number;
  /** Until the first row the pick booked falls due. */
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
  /** Candidates not claimed: booked into their bucket's line, or put off. */
  readonly passed: number;
  /** Ms until the first of them falls due (null when none). */
  readonly nextMs: number | null;
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
                       WHERE b.name = c.name AND (${available('c', 'b')} < c.burst OR b.booked_until > now()))
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
       WHERE rc.name IS NULL
          OR (${available('rc', 'b')} >= rc.burst AND (b.booked_until IS NULL OR b.booked_until <= now()))
       LIMIT $1
       FOR UPDATE OF b SKIP LOCKED
     )
     DELETE FROM :schema.gen_durable_rate_buckets b USING idle
     WHERE b.name = idle.name AND b.partition = idle.partition
     RETURNING 1`,
  );
  return (await run(db, stmt, [limit])).length;
}
