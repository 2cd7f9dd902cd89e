-- What the services remember between messages: links, cursors and runs.

CREATE TABLE links (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id    text NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    entity         text NOT NULL CHECK (entity IN ('account', 'contact', 'order', 'invoice',
                                                   'product', 'payment', 'case', 'subscription')),
    bss_id         text,
    external_id    text,
    state          text NOT NULL DEFAULT 'creating'
                   CHECK (state IN ('creating', 'linked', 'deleted')),
    claim          text,                   -- message id of the delivery working on it
    claimed_at     timestamptz,
    push_hash      text,
    pull_hash      text,
    last_pushed_at timestamptz,
    last_pulled_at timestamptz,
    last_error     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT links_has_an_id CHECK (bss_id IS NOT NULL OR external_id IS NOT NULL),
    CONSTRAINT links_linked_has_both
        CHECK (state <> 'linked' OR (bss_id IS NOT NULL AND external_id IS NOT NULL)),
    CONSTRAINT links_claim_has_time CHECK ((claim IS NULL) = (claimed_at IS NULL)),
    -- NULLs are distinct: a record not yet created on one side takes no slot.
    CONSTRAINT links_bss_key UNIQUE (instance_id, entity, bss_id),
    CONSTRAINT links_external_key UNIQUE (instance_id, entity, external_id)
);
-- "records whose last sync failed" for the push phase of a run.
CREATE INDEX links_failed_idx ON links (instance_id, entity) WHERE last_error IS NOT NULL;

CREATE TABLE cursors (
    instance_id text NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    object      text NOT NULL,
    direction   text NOT NULL CHECK (direction IN ('push', 'pull')),
    value       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, object, direction)
);

CREATE TABLE runs (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id          text NOT NULL REFERENCES organizations (id),
    instance_id     text NOT NULL REFERENCES instances (id),
    trigger         text NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    phase           text NOT NULL DEFAULT 'push' CHECK (phase IN ('push', 'pull', 'done')),
    scheduled_for   timestamptz,           -- the cron slot; one run per slot and instance
    started_at      timestamptz NOT NULL DEFAULT now(),
    push_settled_at timestamptz,
    finished_at     timestamptz,
    counts          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(counts) = 'object'),
    error           text,
    CONSTRAINT runs_one_per_slot UNIQUE (instance_id, scheduled_for),
    CHECK ((status = 'running') = (finished_at IS NULL))
);
CREATE INDEX runs_instance_started_idx ON runs (instance_id, started_at DESC);
CREATE INDEX runs_running_idx ON runs (instance_id) WHERE status = 'running';
