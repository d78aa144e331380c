//! Kombu's Redis layout: list keys per queue and priority, binding sets, unacked bookkeeping.
//!
//! A queue is up to four lists, one per priority step `[0, 3, 6, 9]`; the step-0 list is the
//! queue's own name and the others are `queue + SEP + step`. On Redis a *lower* number is
//! served first, the opposite of RabbitMQ. A consumer polls every queue's step-0 list, then every
//! queue's step-3 list, and so on.

/// Kombu's separator in list keys and binding members (`Channel.sep`).
pub const SEP: &str = "\x06\x16";
/// The priority steps Kombu keeps a list for.
pub const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];
/// Highest priority value Kombu keeps apart; larger values are clamped to it.
pub const MAX_PRIORITY: i64 = 9;
/// Default name of the hash of unacknowledged messages.
pub const UNACKED: &str = "unacked";
/// Default name of the zset indexing unacked messages by delivery time.
pub const UNACKED_INDEX: &str = "unacked_index";
/// Default name of the lock taken while restoring timed-out messages.
pub const UNACKED_MUTEX: &str = "unacked_mutex";
/// How long the restore lock lives, in milliseconds (Kombu's `unacked_mutex_expire`, 300 s).
pub const UNACKED_MUTEX_EXPIRE_MS: u64 = 300_000;

/// Clamps a message priority the way Kombu does (`0..=9`; anything unreadable is 0).
pub fn clamp_priority(priority: i64) -> u8 {
    priority.clamp(0, MAX_PRIORITY) as u8
}

/// The priority step whose list holds messages of `priority`: the largest step ≤ priority.
pub fn priority_step(priority: u8) -> u8 {
    PRIORITY_STEPS
        .iter()
        .copied()
        .rev()
        .find(|step| *step <= priority)
        .unwrap_or(0)
}

/// The list key a message of `priority` for `queue` is pushed to.
pub fn queue_key(queue: &str, priority: u8) -> String {
    match priority_step(priority) {
        0 => queue.to_owned(),
        step => format!("{queue}{SEP}{step}"),
    }
}

/// The queue a list key belongs to (the key without its `SEP + step` suffix).
pub fn queue_of_key(key: &str) -> &str {
    match key.rsplit_once(SEP) {
        Some((queue, step)) if step.parse::<u8>().is_ok() => queue,
        _ => key,
    }
}

/// Keys to poll for `queues`, in Kombu's order: all queues at step 0, then at step 3, …
pub fn poll_keys<S: AsRef<str>>(queues: &[S]) -> Vec<String> {
    PRIORITY_STEPS
        .iter()
        .flat_map(|step| queues.iter().map(move |q| queue_key(q.as_ref(), *step)))
        .collect()
}

/// The set holding an exchange's bindings.
pub fn binding_key(exchange: &str) -> String {
    format!("_kombu.binding.{exchange}")
}

/// Kombu 5.7's mirror of bindings for queues without `x-expires`.
pub fn binding_permanent_key(exchange: &str) -> String {
    format!("_kombu.binding_permanent.{exchange}")
}

/// One member of a binding set: `routing_key SEP pattern SEP queue`.
pub fn binding_member(routing_key: &str, pattern: &str, queue: &str) -> String {
    format!("{routing_key}{SEP}{pattern}{SEP}{queue}")
}

/// Splits a binding member into `(routing_key, pattern, queue)`.
pub fn parse_binding_member(member: &str) -> Option<(&str, &str, &str)> {
    let mut parts = member.splitn(3, SEP);
    Some((parts.next()?, parts.next()?, parts.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_map_to_kombu_lists() {
        let cases = [
            (0, "celery"),
            (1, "celery"),
            (2, "celery"),
            (3, "celery\x06\x163"),
        ];
        for (p, key) in cases {
            assert_eq!(queue_key("celery", p), key);
        }
        assert_eq!(queue_key("celery", 5), "celery\x06\x163");
        assert_eq!(queue_key("celery", 6), "celery\x06\x166");
        assert_eq!(queue_key("celery", clamp_priority(10)), "celery\x06\x169");
        assert_eq!(queue_key("celery", clamp_priority(-4)), "celery");
    }

    #[test]
    fn poll_order_is_step_major() {
        assert_eq!(
            poll_keys(&["a", "b"]),
            vec![
                "a",
                "b",
                "a\x06\x163",
                "b\x06\x163",
                "a\x06\x166",
                "b\x06\x166",
                "a\x06\x169",
                "b\x06\x169"
            ]
        );
        assert_eq!(queue_of_key("media\x06\x166"), "media");
        assert_eq!(queue_of_key("media"), "media");
    }

    #[test]
    fn binding_members_round_trip() {
        let m = binding_member("celery", "", "celery");
        assert_eq!(m, "celery\x06\x16\x06\x16celery");
        assert_eq!(parse_binding_member(&m), Some(("celery", "", "celery")));
    }
}
