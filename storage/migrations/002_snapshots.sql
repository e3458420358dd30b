-- Dated snapshots kept by compaction, for history and restore.

CREATE TABLE doc_snapshots (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    doc_id    bigint NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    taken_at  timestamptz NOT NULL DEFAULT now(),
    cut_seq   bigint NOT NULL,   -- the snapshot holds every update up to this seq
    data      bytea NOT NULL     -- the document's state then, as one Yjs v1 update
);
CREATE INDEX doc_snapshots_doc_time ON doc_snapshots (doc_id, taken_at);
