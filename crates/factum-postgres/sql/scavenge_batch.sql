-- One bounded batch of a scavenge (ADR 33): removes up to $4 events of
-- stream $1 (never its tombstone, flag 1) that no read can see any more,
-- revision below $2 or created before $3 (microseconds), with their
-- `$ce-`/`$et-` entries; answers how many of each went and the bytes of
-- the removed events' data and metadata (what autovacuum can reuse; ADR 40).
-- `{schema}` is the store's schema.
WITH gone AS (
    DELETE FROM {schema}.events
    WHERE position IN (
        SELECT position FROM {schema}.events
        WHERE stream_id = $1 AND flags & 1 = 0 AND (revision < $2 OR created < $3)
        ORDER BY position
        LIMIT $4)
    RETURNING position, octet_length(data) + octet_length(metadata) AS bytes
), unlinked AS (
    DELETE FROM {schema}.links
    WHERE position IN (SELECT position FROM gone)
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM unlinked),
       (SELECT coalesce(sum(bytes), 0)::bigint FROM gone)
