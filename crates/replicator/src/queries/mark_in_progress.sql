-- The job starts: $1 job id, $2 attempt; returns created_at. Autocommit on its own
-- connection, so operators see `in_progress` while the copy runs.
-- clock_timestamp(), not now(): the times must follow the real order of events
-- across transactions (created <= published <= started <= finished). A job the
-- replicator got was published, whether or not the router's confirmation has been
-- recorded yet.
WITH t AS (SELECT clock_timestamp() AS ts)
UPDATE replication_jobs
   SET state = 'in_progress', attempts = $2, started_at = t.ts,
       published_at = COALESCE(published_at, t.ts), updated_at = t.ts
  FROM t
 WHERE id = $1
RETURNING created_at
