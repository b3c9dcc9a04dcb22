-- Reserve an id for a new repository, but only while its path is free: a taken path
-- fails fast with AlreadyExists before any replica is created. Two concurrent
-- creations of one path can both get an id here; the unique key on
-- (virtual_storage, relative_path) picks the winner when they insert the record.
-- Failed creations leave gaps in the sequence, which is harmless.
SELECT nextval('repositories_repository_id_seq')
WHERE NOT EXISTS (
    SELECT 1 FROM repositories WHERE virtual_storage = $1 AND relative_path = $2
)
