-- The popular list's notes that a pass has taken and not yet counted (docs/foods.md,
-- "How the popular list is counted"). A pass moves the notes it takes here, and deletes
-- them in the transaction that writes their counts. A pass that dies first (SIGKILL, a
-- lost connection, a failed read) leaves them here, and the next pass, whichever
-- instance runs it, notes them again before it takes any. The group commit never
-- touches this table: nothing on the sync path waits for it.
CREATE TABLE IF NOT EXISTS food_log_taken (
    user_id uuid NOT NULL,
    doc_id  bigint NOT NULL,
    PRIMARY KEY (user_id, doc_id),
    FOREIGN KEY (user_id, doc_id) REFERENCES documents (user_id, id) ON DELETE CASCADE
);

-- On Citus, by user like the other per-user tables (007); nothing without citus. Both
-- statements may run again, for a database moved to Citus after it was migrated
-- (docs/scaling.md, "How the tables get distributed").
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;  -- before any mention of Citus's catalog, which plain PostgreSQL lacks
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_dist_partition
                   WHERE logicalrelid = 'food_log_taken'::regclass) THEN
        -- In parallel, Citus refuses DDL on a table whose foreign keys reach users (a
        -- reference table) touched earlier in the transaction, as 007 found.
        SET LOCAL citus.multi_shard_modify_mode = 'sequential';
        PERFORM create_distributed_table('food_log_taken', 'user_id',
                                         colocate_with => 'documents');
    END IF;
END
$$;
