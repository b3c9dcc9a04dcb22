-- The job finished: $1 job id, $2 the source generation copied (NULL keeps it).
UPDATE replication_jobs
   SET state = 'done', finished_at = clock_timestamp(), error = NULL,
       source_generation = COALESCE($2, source_generation),
       updated_at = clock_timestamp()
 WHERE id = $1
