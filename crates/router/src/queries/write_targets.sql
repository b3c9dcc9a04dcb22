-- Storages that must get a copy of a write to repository $1 on virtual storage $2
-- whose primary is $3: the assigned storages, or every storage of the virtual
-- storage when the repository has no assignment rows, except the primary.
-- Unassigned replicas are left to drift (the reconciler may remove them).
SELECT target FROM (
    SELECT storage AS target FROM repository_assignments WHERE repository_id = $1
    UNION
    SELECT storage FROM storages
    WHERE virtual_storage = $2
      AND NOT EXISTS (SELECT 1 FROM repository_assignments WHERE repository_id = $1)
) t
WHERE target <> $3
ORDER BY target
