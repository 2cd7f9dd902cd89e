-- A create made of several requests (a connector's `steps`) that stopped part-way
-- (docs/decisions.md, "Steps: a create resumes where it stopped").
--
-- Once the step that answers the record's id has succeeded, the link is linked to that
-- id — durably, before any later step is sent — and records which steps were done and
-- what each captured (JSON text, as create_sent). A retry then resumes after them
-- instead of creating a second remote record; the push that finishes the steps (or a
-- delete) clears it.
ALTER TABLE links ADD COLUMN push_steps text;
