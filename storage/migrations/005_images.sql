-- Label photos and their OCR jobs (issue 23): one row is both, so erasure (the cascade
-- from users), retention and backups find them in one place. The photo's bytes are
-- dropped when its job ends; the row, with the reading, stays until retention.
-- user_id leads the primary key, as on every per-user table (docs/ocr.md).
CREATE TABLE images (
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    id           uuid NOT NULL DEFAULT gen_random_uuid(),
    doc_name     text NOT NULL,   -- the document whose ocr_drafts gets the reading
    content_type text NOT NULL CHECK (content_type IN ('image/jpeg', 'image/png')),
    width        integer NOT NULL CHECK (width > 0),
    height       integer NOT NULL CHECK (height > 0),
    size         integer NOT NULL CHECK (size > 0),
    data         bytea,           -- NULL once the job has ended
    status       text NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'processing', 'done', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    lease_until  timestamptz,     -- while processing: when another worker may take it
    worker       text,            -- the worker holding the lease
    result       jsonb,           -- when done: the contract's result
    error        text,            -- when failed: why
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    PRIMARY KEY (user_id, id),
    CHECK ((status IN ('done', 'failed')) = (finished_at IS NOT NULL)),
    CHECK (status <> 'done' OR result IS NOT NULL)
);
-- What a worker may claim, oldest first: a small index, since jobs end within seconds.
CREATE INDEX images_open ON images (created_at) WHERE status IN ('queued', 'processing');
-- Retention, oldest first.
CREATE INDEX images_created ON images (created_at);
-- A photo's bytes are read once, by its worker: kept out of line and uncompressed
-- (a JPEG or PNG is compressed already).
ALTER TABLE images ALTER COLUMN data SET STORAGE EXTERNAL;
