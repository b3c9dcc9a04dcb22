-- Everything the router needs to route one repository, in one round trip.
-- $1 = virtual storage, $2 = relative path.
SELECT r.repository_id,
       r.replica_path,
       r."primary",
       r.generation,
       -- Desired placement; an empty array means "every storage of the virtual storage".
       ARRAY(SELECT a.storage FROM repository_assignments a
             WHERE a.repository_id = r.repository_id ORDER BY a.storage) AS assigned,
       -- Replicas that exist, with the generation each is known to contain.
       ARRAY(SELECT s.storage FROM storage_repositories s
             WHERE s.repository_id = r.repository_id ORDER BY s.storage) AS replica_storages,
       ARRAY(SELECT s.generation FROM storage_repositories s
             WHERE s.repository_id = r.repository_id ORDER BY s.storage) AS replica_generations
FROM repositories r
WHERE r.virtual_storage = $1 AND r.relative_path = $2
