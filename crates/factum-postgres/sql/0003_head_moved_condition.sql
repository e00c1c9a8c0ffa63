-- Version 3: the writer's fast path (ADR 6) says "another instance wrote"
-- by a named condition. Its guards call this function, which raises
-- SQLSTATE FX001 (class FX, Factum's own: PostgreSQL defines none such)
-- unless `unmoved` holds, so the writer tells a moved `head` from any
-- other failure by its code alone (before this, a division by zero that a
-- data error of the same class could be mistaken for). It writes nothing.
CREATE FUNCTION {schema}.expect_head_unmoved(unmoved boolean) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    IF unmoved IS NOT TRUE THEN
        RAISE EXCEPTION 'head_moved: another instance wrote since this writer''s last commit'
            USING ERRCODE = 'FX001';
    END IF;
    RETURN 1;
END
$$;
