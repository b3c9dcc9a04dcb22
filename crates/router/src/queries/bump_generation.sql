-- The generation rule for a write that succeeded on the primary ($2): the
-- repository's generation becomes max + 1 and the primary's replica is recorded at
-- it. The UPDATE locks the repositories row (the per-repository lock), so concurrent
-- writes to one repository get distinct, increasing generations. No row comes back
-- when the repository was deleted meanwhile.
WITH bumped AS (
    UPDATE repositories SET generation = generation + 1
    WHERE repository_id = $1
    RETURNING repository_id, generation
)
INSERT INTO storage_repositories (repository_id, storage, generation)
SELECT repository_id, $2, generation FROM bumped
ON CONFLICT (repository_id, storage) DO UPDATE
    SET generation = excluded.generation, updated_at = now()
RETURNING generation
