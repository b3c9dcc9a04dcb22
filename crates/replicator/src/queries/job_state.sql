-- The job's state and error, re-read under the replication lock.
SELECT state::text, error FROM replication_jobs WHERE id = $1
