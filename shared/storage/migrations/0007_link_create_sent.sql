-- A create that may have reached the third party (docs/architecture.md §5 step 4).
--
-- Just before a create's request goes out, the link row it claimed records when, and
-- what: the idempotency key, the BSS record as read and the body sent (JSON text, not
-- jsonb: a record may hold a NUL, which jsonb refuses and a JSON escape keeps). Linking
-- or deleting the record clears it, and so does a create the third party refused.
-- A record gone from the BSS whose link holds this and no live external id is not
-- "never synchronized": its delete first finds what the create made (match, or the
-- create replayed with the same key), then deletes it.
ALTER TABLE links
    ADD COLUMN create_sent_at timestamptz,
    ADD COLUMN create_sent    text,
    ADD CONSTRAINT links_create_sent_whole
        CHECK ((create_sent_at IS NULL) = (create_sent IS NULL));
