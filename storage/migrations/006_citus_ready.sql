-- Every per-user table keyed by its owner (issue 25, docs/scaling.md): user_id leads
-- each primary key, is part of each unique constraint, and of each foreign key to
-- another per-user table, so that Citus can distribute them all by user_id, co-located,
-- and plain PostgreSQL finds one user's rows through these keys. No data is lost: the
-- new columns are filled from documents, and the existing seq values are kept.
--
-- Shared tables stay as they are: users, foods, food_words (Citus reference tables),
-- schema_migrations; audit_log stays a local table of the coordinator (it holds rows
-- without a user: failed logins). tests/test_schema_rules.py checks the rules.

-- documents: (user_id, id). id stays a bigint identity: it names a row, it orders
-- nothing. last_seq is the document's own counter of stored updates (below).
ALTER TABLE documents DROP CONSTRAINT documents_pkey CASCADE;  -- and the 4 FKs on doc_id
ALTER TABLE documents ADD PRIMARY KEY (user_id, id);
-- Tools and tests that know a document by its id alone (a compaction command, say).
CREATE INDEX documents_id ON documents (id);
ALTER TABLE documents ADD COLUMN last_seq bigint NOT NULL DEFAULT 0;

-- doc_updates: seq is per document. The existing values came from one identity, so they
-- rise within each document already; they are kept, and each document's counter starts
-- at its highest (compaction keeps the newest seq it replaced, so that is the newest
-- ever given). A group commit takes the next numbers from the counter (update_log._APPEND).
ALTER TABLE doc_updates ADD COLUMN user_id uuid;
UPDATE doc_updates u SET user_id = d.user_id FROM documents d WHERE d.id = u.doc_id;
ALTER TABLE doc_updates ALTER COLUMN user_id SET NOT NULL;
ALTER TABLE doc_updates ALTER COLUMN seq DROP IDENTITY;
ALTER TABLE doc_updates DROP CONSTRAINT doc_updates_pkey;
DROP INDEX doc_updates_doc_seq;  -- the new primary key serves the same reads
ALTER TABLE doc_updates ADD PRIMARY KEY (user_id, doc_id, seq);
ALTER TABLE doc_updates ADD FOREIGN KEY (user_id, doc_id)
    REFERENCES documents (user_id, id) ON DELETE CASCADE;
UPDATE documents d SET last_seq = m.seq
FROM (SELECT user_id, doc_id, max(seq) AS seq FROM doc_updates GROUP BY user_id, doc_id) m
WHERE d.user_id = m.user_id AND d.id = m.doc_id;

-- doc_snapshots: (user_id, id); its id names a snapshot, taken_at orders them.
ALTER TABLE doc_snapshots ADD COLUMN user_id uuid;
UPDATE doc_snapshots s SET user_id = d.user_id FROM documents d WHERE d.id = s.doc_id;
ALTER TABLE doc_snapshots ALTER COLUMN user_id SET NOT NULL;
ALTER TABLE doc_snapshots DROP CONSTRAINT doc_snapshots_pkey;
ALTER TABLE doc_snapshots ADD PRIMARY KEY (user_id, id);
DROP INDEX doc_snapshots_doc_time;
CREATE INDEX doc_snapshots_doc_time ON doc_snapshots (user_id, doc_id, taken_at);
ALTER TABLE doc_snapshots ADD FOREIGN KEY (user_id, doc_id)
    REFERENCES documents (user_id, id) ON DELETE CASCADE;

-- The popular list's notes and counts.
ALTER TABLE food_log_changes ADD COLUMN user_id uuid;
UPDATE food_log_changes c SET user_id = d.user_id FROM documents d WHERE d.id = c.doc_id;
ALTER TABLE food_log_changes ALTER COLUMN user_id SET NOT NULL;
ALTER TABLE food_log_changes DROP CONSTRAINT food_log_changes_pkey;
ALTER TABLE food_log_changes ADD PRIMARY KEY (user_id, doc_id);
ALTER TABLE food_log_changes ADD FOREIGN KEY (user_id, doc_id)
    REFERENCES documents (user_id, id) ON DELETE CASCADE;

ALTER TABLE food_log_counts ADD COLUMN user_id uuid;
UPDATE food_log_counts c SET user_id = d.user_id FROM documents d WHERE d.id = c.doc_id;
ALTER TABLE food_log_counts ALTER COLUMN user_id SET NOT NULL;
ALTER TABLE food_log_counts DROP CONSTRAINT food_log_counts_pkey;
ALTER TABLE food_log_counts ADD PRIMARY KEY (user_id, doc_id, food_id, day);
ALTER TABLE food_log_counts ADD FOREIGN KEY (user_id, doc_id)
    REFERENCES documents (user_id, id) ON DELETE CASCADE;

-- The updates rewritten above leave dead rows behind; fresh statistics let the planner
-- choose the new keys at once.
ANALYZE documents, doc_updates, doc_snapshots, food_log_changes, food_log_counts;
