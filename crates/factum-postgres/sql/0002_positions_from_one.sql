-- Version 2: positions start at 1 (ADR 25). KurrentDB's clients take
-- position 0 for "before the first event", so no event may be there.
-- Every position the schema holds moves up by one, once, in the
-- migration's transaction: the log, the link entries, each stream's last
-- position and the head. A new schema's first event is then at 1. The
-- `$all` checkpoints of consumer groups (event data) are not rewritten:
-- events are immutable, and a checkpoint says which numbering it uses
-- (factum-persistent reads an unmarked one as the old numbering).
-- The primary key is dropped for the update and built again, so no
-- intermediate row collides with another's key.
ALTER TABLE {schema}.events DROP CONSTRAINT events_pkey;
UPDATE {schema}.events SET position = position + 1;
ALTER TABLE {schema}.events ADD PRIMARY KEY (position);
UPDATE {schema}.links SET position = position + 1;
UPDATE {schema}.streams SET last_position = last_position + 1;
UPDATE {schema}.head SET next_position = next_position + 1;
