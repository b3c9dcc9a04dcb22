-- The job failed: $1 job id, $2 'failed' (retried) or 'dead', $3 the one-line error.
UPDATE replication_jobs
   SET state = $2::text::replication_job_state, error = $3,
       finished_at = clock_timestamp(), updated_at = clock_timestamp()
 WHERE id = $1
