-- A link's two unique keys lead with the id they look up (docs/decisions.md, *A link is
-- found by the id it is looked up by, whatever the statistics*).
--
-- As (instance_id, entity, bss_id) and (instance_id, entity, external_id), the two keys
-- shared their first two columns: on a table PostgreSQL had not analyzed yet, a lookup
-- by bss_id costed the other key's (instance_id, entity) prefix as one row, as cheap as
-- its own key, and took it — reading every link of the entity to find one (seen with
-- 100,000 links). Leading with the id, neither key can serve a lookup by the other id.
-- Uniqueness is unchanged (the same columns); ON CONFLICT finds a key by its columns.
ALTER TABLE links
    DROP CONSTRAINT links_bss_key,
    DROP CONSTRAINT links_external_key,
    ADD CONSTRAINT links_bss_key UNIQUE (bss_id, instance_id, entity),
    ADD CONSTRAINT links_external_key UNIQUE (external_id, instance_id, entity);
