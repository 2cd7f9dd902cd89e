-- The audit writer's batches, so that a batch whose commit answer was lost is never
-- written twice (docs/architecture.md §6).
--
-- Each batch inserts its id here in its own transaction, in the same round trip as its
-- COMMIT. When that answer is lost, the writer inserts the same id again marked
-- abandoned: a conflict means the batch committed (abandoned stays false); the insert
-- waits for a commit still in progress; a new row means the batch did not commit, and
-- never will (its own insert would now conflict). Ids are UUIDv7, ordered by time, so
-- the writer prunes ids older than an hour by a range of the key.
CREATE TABLE audit_batches (
    id        uuid PRIMARY KEY,
    abandoned boolean NOT NULL DEFAULT false
);
