-- GDPR: consents, the audit log, and the shared foods table (issue 22 adds search).

-- Every acceptance and withdrawal, never rewritten: the latest row per document is the
-- state, the rest the history. A NULL version is a withdrawal.
CREATE TABLE consents (
    id       bigint GENERATED ALWAYS AS IDENTITY,
    user_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    document text NOT NULL CHECK (document IN ('privacy_policy', 'terms')),
    version  text CHECK (version <> ''),
    at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, id)
);

-- Append-only (the trigger below). No foreign key to users: entries outlive the
-- account they concern, stripped of its email and address at erasure.
CREATE TABLE audit_log (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    user_id       uuid,
    request_id    text NOT NULL,
    action        text NOT NULL,
    resource_type text NOT NULL,
    resource_id   text,
    email         text,   -- the email an attempt named (a failed login, say)
    ip            inet,   -- truncated unless configured otherwise
    details       jsonb   -- nothing personal: versions, counts
);
CREATE INDEX audit_log_user ON audit_log (user_id, id) WHERE user_id IS NOT NULL;
CREATE INDEX audit_log_email ON audit_log (lower(email)) WHERE email IS NOT NULL;
CREATE INDEX audit_log_at ON audit_log (at);

-- Only retention deletes rows, and only erasure updates them, by stripping the email
-- and the address; each says so for its own transaction (SET LOCAL modi.audit).
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('modi.audit', true) = 'retention' THEN
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND current_setting('modi.audit', true) = 'erasure'
       AND NEW.email IS NULL AND NEW.ip IS NULL
       AND (NEW.id, NEW.at, NEW.user_id, NEW.request_id, NEW.action, NEW.resource_type,
            NEW.resource_id, NEW.details)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.at, OLD.user_id, OLD.request_id, OLD.action, OLD.resource_type,
            OLD.resource_id, OLD.details) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE FUNCTION audit_log_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_no_truncate();

-- The seed's shared food database. A contributed food names its author until the
-- author's account is erased: then it is deleted if unverified, else kept anonymous.
CREATE TABLE foods (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL,
    brand       text,
    barcode     text,
    calories    numeric(10, 2) NOT NULL,
    protein     numeric(10, 2) NOT NULL,
    carbs       numeric(10, 2) NOT NULL,
    fat         numeric(10, 2) NOT NULL,
    created_by  uuid REFERENCES users (id) ON DELETE SET NULL,
    verified    boolean NOT NULL DEFAULT false,
    verified_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX foods_created_by ON foods (created_by, id) WHERE created_by IS NOT NULL;
