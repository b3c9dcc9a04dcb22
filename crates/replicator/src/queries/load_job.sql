-- The job row and the repository's physical path. Postgres, not the message, says
-- what to do: a missing row means the repository was deleted (the job cascaded away).
SELECT j.state::text      AS state,
       j.change           AS change,
       j.virtual_storage  AS virtual_storage,
       j.source_storage   AS source_storage,
       j.target_storage   AS target_storage,
       j.repository_id    AS repository_id,
       j.error            AS error,
       r.replica_path     AS replica_path
FROM replication_jobs j
JOIN repositories r USING (repository_id)
WHERE j.id = $1
