-- One health round of observer $1: every probed storage gets its contact attempt
-- recorded; last_seen_active_at moves only for storages that answered SERVING.
INSERT INTO node_status
    (observer, virtual_storage, storage, last_contact_attempt_at, last_seen_active_at)
SELECT $1, t.vs, t.storage, now(), CASE WHEN t.ok THEN now() END
FROM unnest($2::text[], $3::text[], $4::bool[]) AS t(vs, storage, ok)
ON CONFLICT (observer, virtual_storage, storage) DO UPDATE
    SET last_contact_attempt_at = excluded.last_contact_attempt_at,
        last_seen_active_at = COALESCE(excluded.last_seen_active_at,
                                       node_status.last_seen_active_at)
