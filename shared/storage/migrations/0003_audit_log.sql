-- The audit log (docs/architecture.md §6): append-only, one partition per month (audit_log_YYYY_MM,
-- created ahead by ensure_audit_partitions), a DEFAULT partition as a safety net.
-- Retention is dropping old partitions, never DELETE.

CREATE TABLE audit_log (
    id             bigint GENERATED ALWAYS AS IDENTITY,
    at             timestamptz NOT NULL,
    category       text NOT NULL DEFAULT 'integration_framework',
    service        text NOT NULL,
    org_id         text,
    instance_id    text,
    entity         text,
    direction      text CHECK (direction IN ('push', 'pull')),
    action         text,
    record_id      text,
    external_id    text,
    outcome        text NOT NULL CHECK (outcome IN ('created', 'updated', 'deleted', 'unchanged',
                                                    'skipped', 'retrying', 'failed', 'dead',
                                                    'dispatched')),
    attempt        integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    http_status    smallint CHECK (http_status BETWEEN 100 AND 599),
    error_class    text,
    error_message  text,
    duration_ms    double precision CHECK (duration_ms >= 0),
    run_id         text,                   -- text: a malformed id must not fail a batch
    message_id     text,
    correlation_id text,
    details        jsonb NOT NULL DEFAULT '{}'
) PARTITION BY RANGE (at);

CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;

CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_org_idx ON audit_log (org_id, at);
CREATE INDEX audit_log_instance_idx ON audit_log (instance_id, entity, at);
CREATE INDEX audit_log_record_idx ON audit_log (record_id) WHERE record_id IS NOT NULL;
CREATE INDEX audit_log_external_idx ON audit_log (external_id) WHERE external_id IS NOT NULL;
CREATE INDEX audit_log_run_idx ON audit_log (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX audit_log_message_idx ON audit_log (message_id, attempt) WHERE message_id IS NOT NULL;
CREATE INDEX audit_log_problem_idx ON audit_log (outcome, at)
    WHERE outcome IN ('retrying', 'failed', 'dead');

-- Append-only: rows are never changed. Partition maintenance (moving rows out of
-- the DEFAULT partition when their month's partition is created) says so first.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('bss_sync.audit_maintenance', true), '') = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
