-- Installation-wide scheduled jobs (the daily redelivery of dead letters): one row per job
-- and cron slot. The primary key lets one dispatcher win a slot however many replicas race;
-- the latest slot is where the next one is counted from (missed slots are caught up once).
CREATE TABLE job_slots (
    job         text NOT NULL,
    slot        timestamptz NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    summary     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(summary) = 'object'),
    error       text,
    PRIMARY KEY (job, slot)
);

-- The process executing a run: it holds a session advisory lock on this token while it
-- lives, so a run left 'running' whose owner's lock is free was abandoned (docs/architecture.md, Runs).
ALTER TABLE runs ADD COLUMN owner text;
