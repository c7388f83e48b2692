/**
 * What a stretch of work wrote to the WAL: bytes in all (`pg_current_wal_lsn` before and
 * after), and, where `pg_walinspect` is installed (Postgres ≥ 15 contrib), the breakdown by
 * record: full-page images, b-tree index inserts (one per index tuple written), heap
 * inserts, updates (HOT or not) and deletes. The whole server's WAL is counted: run nothing
 * else meanwhile.
 */
import type pg from 'pg';

export interface WalWindow {
  readonly bytes: number;
  /** Of `bytes`, the full-page images (the first write of a page after a checkpoint). */
  readonly fpiBytes: number | undefined;
  readonly indexInserts: number | undefined;
  readonly heapInserts: number | undefined;
  readonly updates: number | undefined;
  readonly hotUpdates: number | undefined;
  readonly deletes: number | undefined;
}

export async function walLsn(db: pg.Pool): Promise<string> {
  const { rows } = await db.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn');
  return rows[0]!.lsn;
}

/** Installs `pg_walinspect` when it is available; false when it is not. */
export async function enableWalInspect(db: pg.Pool): Promise<boolean> {
  try {
    await db.query('CREATE EXTENSION IF NOT EXISTS pg_walinspect');
    return true;
  } catch {
    return false;
  }
}

export async function walBetween(db: pg.Pool, from: string, inspect: boolean): Promise<WalWindow> {
  const { rows } = await db.query<{ bytes: string; to: string }>(
    'SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::text AS bytes, pg_current_wal_lsn()::text AS to',
    [from],
  );
  const bytes = Number(rows[0]!.bytes);
  const none = { fpiBytes: undefined, indexInserts: undefined, heapInserts: undefined, updates: undefined };
  if (!inspect) return { bytes, ...none, hotUpdates: undefined, deletes: undefined };
  // The records up to what is flushed; the last few in flight do not change the picture.
  // Per record, the first column reads "<resource manager>/<record type>" (Postgres 15).
  const stats = await db.query<{ rm: string; type: string; count: string; fpi: string }>(
    `SELECT split_part(s."resource_manager/record_type", '/', 1) AS rm,
            split_part(s."resource_manager/record_type", '/', 2) AS type,
            s.count::text, s.fpi_size::text AS fpi
       FROM pg_get_wal_stats($1::pg_lsn, pg_current_wal_flush_lsn(), true) AS s`,
    [from],
  );
  let fpiBytes = 0;
  const count = (rm: string, type: RegExp): number =>
    stats.rows.filter((r) => r.rm === rm && type.test(r.type)).reduce((a, r) => a + Number(r.count), 0);
  for (const r of stats.rows) fpiBytes += Number(r.fpi);
  return {
    bytes,
    fpiBytes,
    indexInserts: count('Btree', /^INSERT_(LEAF|UPPER|META|POST)/),
    heapInserts: count('Heap', /^INSERT/) + count('Heap2', /^MULTI_INSERT/),
    updates: count('Heap', /^(UPDATE|HOT_UPDATE)/),
    hotUpdates: count('Heap', /^HOT_UPDATE/),
    deletes: count('Heap', /^DELETE/),
  };
}
