//! What happens to a job after a failed attempt: another attempt after a growing delay
//! (through the retry tier of that delay), or the dead-letter queue after the last one.

/// The fate of a job whose attempt `attempt` (1-based) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again as attempt `next_attempt` after `delay_ms`.
    Retry {
        /// Delay of the retry tier to publish to.
        delay_ms: u64,
        /// Attempt number the retried delivery carries.
        next_attempt: u32,
    },
    /// No attempts left: dead-letter the job.
    Dead,
}

/// Delay before the attempt following failed attempt `attempt`: the `attempt`-th
/// configured delay, the last one repeating. `delays` is never empty (validated).
pub fn retry_delay(delays: &[u64], attempt: u32) -> u64 {
    let i = (attempt.max(1) as usize - 1).min(delays.len().saturating_sub(1));
    delays.get(i).copied().unwrap_or(1000)
}

/// Decides what follows failed attempt `attempt` when a job may run `max_attempts` times.
pub fn after_failure(delays: &[u64], attempt: u32, max_attempts: u32) -> AfterFailure {
    if attempt >= max_attempts {
        AfterFailure::Dead
    } else {
        AfterFailure::Retry {
            delay_ms: retry_delay(delays, attempt),
            next_attempt: attempt + 1,
        }
    }
}

/// The shortest retry tier: where a job waits when it did not really run (its pair
/// was busy, or Postgres could not record the outcome), without using an attempt.
pub fn shortest(delays: &[u64]) -> u64 {
    delays.iter().copied().min().unwrap_or(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_attempts_and_the_last_repeats() {
        let d = [1000, 5000, 30000, 120000];
        assert_eq!(retry_delay(&d, 1), 1000);
        assert_eq!(retry_delay(&d, 2), 5000);
        assert_eq!(retry_delay(&d, 4), 120000);
        assert_eq!(retry_delay(&d, 9), 120000);
        // A nonsensical attempt 0 (header missing) behaves like the first.
        assert_eq!(retry_delay(&d, 0), 1000);
        assert_eq!(retry_delay(&[250], 3), 250);
    }

    #[test]
    fn last_attempt_goes_to_the_dead_letter_queue() {
        let d = [100, 200];
        assert_eq!(
            after_failure(&d, 1, 3),
            AfterFailure::Retry {
                delay_ms: 100,
                next_attempt: 2
            }
        );
        assert_eq!(
            after_failure(&d, 2, 3),
            AfterFailure::Retry {
                delay_ms: 200,
                next_attempt: 3
            }
        );
        assert_eq!(after_failure(&d, 3, 3), AfterFailure::Dead);
        assert_eq!(after_failure(&d, 7, 3), AfterFailure::Dead);
        assert_eq!(after_failure(&d, 1, 1), AfterFailure::Dead);
        assert_eq!(shortest(&[5000, 100, 200]), 100);
    }
}
