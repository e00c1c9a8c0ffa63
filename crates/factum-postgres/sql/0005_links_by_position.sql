-- Version 5: a scavenge (ADR 33) removes the `$ce-`/`$et-` entries of the
-- events it removes, found by their position.
CREATE INDEX links_position ON {schema}.links (position);
