-- Deletes a repository record (assignments, replica rows and jobs cascade) and
-- returns what the caller needs to remove the replicas from disk afterwards. Every
-- CTE reads the same snapshot, so `replicas` still sees the rows the cascade removes.
-- No row comes back when the repository does not exist.
WITH repo AS (
    SELECT repository_id, replica_path FROM repositories
    WHERE virtual_storage = $1 AND relative_path = $2
    FOR UPDATE
), replicas AS (
    SELECT s.storage FROM storage_repositories s JOIN repo USING (repository_id)
), deleted AS (
    DELETE FROM repositories r USING repo
    WHERE r.repository_id = repo.repository_id
    RETURNING r.repository_id, r.replica_path
)
SELECT deleted.repository_id,
       deleted.replica_path,
       ARRAY(SELECT storage FROM replicas ORDER BY storage) AS storages
FROM deleted
