-- Records that the target replica ($2) of repository $1 now holds at least generation
-- $3: the SOURCE generation read before copying. The generation rule (docs/architecture.md, invariant 2):
-- a replication may only raise the target to that generation, never lower it (a write
-- that landed on the target meanwhile keeps its higher number) and never past it (the
-- copy may contain newer data than $3, but only $3 is proven; a later job corrects it).
INSERT INTO storage_repositories (repository_id, storage, generation)
VALUES ($1, $2, $3)
ON CONFLICT (repository_id, storage) DO UPDATE
    SET generation = GREATEST(storage_repositories.generation, EXCLUDED.generation),
        updated_at = now()
