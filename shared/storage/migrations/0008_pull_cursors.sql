-- Pull discovery's cursors: one row per instance × object (docs/architecture.md, Pull discovery).
-- `value` is the highest modification time of a completed listing; `resume` the next page of
-- a listing in progress (with the `since` it started from and the highest time seen so far),
-- written only once every message of the page before it is confirmed by the broker.
CREATE TABLE pull_cursors (
    instance_id   text NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    object        text NOT NULL,
    value         timestamptz,
    resume        jsonb CHECK (resume IS NULL OR jsonb_typeof(resume) = 'object'),
    listing_since timestamptz,
    listing_high  timestamptz,
    pages         integer NOT NULL DEFAULT 0 CHECK (pages >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, object)
);
