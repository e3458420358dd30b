-- On Citus, distribute the tables by user (issue 25, docs/scaling.md, "Citus"). On a
-- PostgreSQL without the citus extension in this database this does nothing at all.
--
-- The per-user tables (their keys lead with user_id since 006) are hash-distributed by
-- user_id, all co-located with documents: one user's rows of every table are on one
-- node, and a statement that names one user runs there whole. The shared tables users,
-- foods and food_words become reference tables, a copy on every node (the coordinator
-- too) that a per-user table may join or refer to. audit_log (rows without a user:
-- failed logins) and schema_migrations stay plain tables of the coordinator.
--
-- The typo vocabulary: reference tables take triggers only with
-- citus.enable_unsafe_triggers, and then the trigger runs on each node's copy (shard)
-- of foods, where a statement on food_words (the distributed table) is refused ("cannot
-- execute a distributed query from a query on a shard"). So on Citus the triggers call
-- food_words_add_shard, which writes the same words into that node's copy of food_words
-- (reference tables share one placement per node): every copy gets the words, in the
-- same transaction as the foods rows, as the plain trigger does.
DO $$
DECLARE
    per_user text[] := ARRAY['doc_updates', 'doc_snapshots', 'food_log_changes',
                             'food_log_counts', 'consents', 'images'];
    t text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    -- users becomes a reference table while the per-user tables still refer to it as
    -- plain tables; by default Citus would then turn those into "citus local" tables,
    -- which cannot be distributed afterwards with identity columns. This keeps them plain
    -- until create_distributed_table below takes each one.
    SET LOCAL citus.enable_local_reference_table_foreign_keys = off;
    SET LOCAL citus.multi_shard_modify_mode = 'sequential';

    DROP TRIGGER food_words_insert ON foods;
    DROP TRIGGER food_words_update ON foods;
    PERFORM create_reference_table('users');
    PERFORM create_reference_table('foods');
    PERFORM create_reference_table('food_words');

    PERFORM create_distributed_table('documents', 'user_id');
    FOREACH t IN ARRAY per_user LOOP
        PERFORM create_distributed_table(t, 'user_id', colocate_with => 'documents');
    END LOOP;

    CREATE FUNCTION food_words_add_shard() RETURNS trigger LANGUAGE plpgsql AS $f$
    BEGIN
        EXECUTE format(
            'INSERT INTO %I (word)'
            ' SELECT DISTINCT unnest(tsvector_to_array(search_vector)) FROM changed_foods'
            ' ON CONFLICT DO NOTHING',
            (SELECT shard_name('food_words'::regclass, shardid) FROM pg_dist_shard
             WHERE logicalrelid = 'food_words'::regclass));
        RETURN NULL;
    END
    $f$;
    SET LOCAL citus.enable_unsafe_triggers = on;
    CREATE TRIGGER food_words_insert AFTER INSERT ON foods
        REFERENCING NEW TABLE AS changed_foods
        FOR EACH STATEMENT EXECUTE FUNCTION food_words_add_shard();
    CREATE TRIGGER food_words_update AFTER UPDATE ON foods
        REFERENCING NEW TABLE AS changed_foods
        FOR EACH STATEMENT EXECUTE FUNCTION food_words_add_shard();
END
$$;
