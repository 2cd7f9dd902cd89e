-- A BSS record the puller is creating shows up as a BSS event (when the BSS does not
-- copy X-Sync-Origin) before the puller has linked it: the pusher must not take it for
-- a new record and create it in the third party a second time. It asks whether a pull
-- create of the entity is in flight for the instance — a claim by external id, no BSS
-- id yet — and waits if one is. This index holds only those rows (a handful at a time).
CREATE INDEX links_pull_creates_idx ON links (instance_id, entity, claimed_at)
    WHERE state = 'creating' AND bss_id IS NULL AND claim IS NOT NULL;
