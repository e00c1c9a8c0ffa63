-- Converts the bookkeeping of a generation written before positions
-- started at 1 (ADR 25; its factum_checkpoint has no positions_from
-- column): every position it holds names the event now one position
-- later. Runs in the transaction that opens the generation (search_path =
-- the generation's schema) and does nothing once the column exists. The
-- dead letters move in two steps so that no intermediate row collides
-- with another's key.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema()
          AND table_name = 'factum_checkpoint'
          AND column_name = 'positions_from'
    ) THEN
        ALTER TABLE factum_checkpoint ADD COLUMN positions_from INTEGER NOT NULL DEFAULT 0;
        UPDATE factum_checkpoint SET position = position + 1, positions_from = 1;
        UPDATE factum_dead_letters SET position = -(position + 1);
        UPDATE factum_dead_letters SET position = -position;
    END IF;
END $$;
