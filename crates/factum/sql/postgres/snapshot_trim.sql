-- Keeps the newest $2 snapshots of stream $1 (older ones serve temporal
-- loads until trimmed).
DELETE FROM factum_snapshots
WHERE stream = $1 AND (revision, schema_version) IN (
    SELECT revision, schema_version FROM factum_snapshots
    WHERE stream = $1
    ORDER BY revision DESC, schema_version DESC
    OFFSET $2
)
