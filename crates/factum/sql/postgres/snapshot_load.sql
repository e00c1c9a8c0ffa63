-- The newest snapshot of stream $1 with schema version $2 whose revision is
-- at most $3 and whose last event was committed at or before $4, and
-- whether a newer one within those bounds has another schema version (the
-- next save replaces it). Always one row; the snapshot columns are NULL
-- when there is none.
WITH usable AS (
    SELECT revision, last_event_at, state, taken_at
    FROM factum_snapshots
    WHERE stream = $1 AND schema_version = $2 AND revision <= $3 AND last_event_at <= $4
    ORDER BY revision DESC
    LIMIT 1
)
SELECT u.revision, u.last_event_at, u.state, u.taken_at,
       EXISTS (
           SELECT 1 FROM factum_snapshots s
           WHERE s.stream = $1 AND s.schema_version <> $2
             AND s.revision <= $3 AND s.last_event_at <= $4
             AND s.revision > COALESCE((SELECT revision FROM usable), -1)
       ) AS skipped_stale
FROM (SELECT 1) AS one
LEFT JOIN usable u ON true
