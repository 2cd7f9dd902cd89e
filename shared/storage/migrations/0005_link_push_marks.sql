-- Which delivery's push last changed a record remotely (docs/architecture.md §5 step 5).
--
-- The link write that ends a push stores the message id and attempt that made it and
-- the outcome its audit row is to say. The row is written after the link, by the
-- consumer runtime; when the process dies between the two, the redelivery of that same
-- message (same id, same attempt) finds its own mark and writes the row it lost
-- instead of pushing again and reporting "unchanged".
ALTER TABLE links
    ADD COLUMN pushed_by      text,
    ADD COLUMN pushed_attempt integer,
    ADD COLUMN pushed_outcome text CHECK (pushed_outcome IN ('created', 'updated', 'deleted')),
    ADD CONSTRAINT links_push_mark_whole
        CHECK ((pushed_by IS NULL) = (pushed_attempt IS NULL)
               AND (pushed_by IS NULL) = (pushed_outcome IS NULL));
