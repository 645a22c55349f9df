//! The forwarder's answer cache: bounded, honouring TTLs, with O(1) (amortised) insertion and
//! eviction. The oldest stored answer leaves first; expired answers at the front leave as soon as
//! anything is stored.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Instant;

struct Stored<V> {
    value: V,
    stored: Instant,
    ttl: u32,
    /// Which push to `order` this value belongs to: older pushes of the same key are stale.
    seq: u64,
}

impl<V> Stored<V> {
    fn elapsed(&self, now: Instant) -> Option<u32> {
        let elapsed = now.saturating_duration_since(self.stored).as_secs();
        (elapsed < u64::from(self.ttl)).then_some(elapsed as u32)
    }
}

pub(super) struct Cache<K, V> {
    map: HashMap<K, Stored<V>>,
    /// Keys in the order they were stored; an entry whose seq no longer matches the map's is
    /// skipped when it reaches the front.
    order: VecDeque<(K, u64)>,
    next: u64,
    capacity: usize,
}

impl<K: Clone + Eq + Hash, V> Cache<K, V> {
    pub(super) fn new(capacity: usize) -> Self {
        Cache {
            map: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            capacity: capacity.max(1),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }

    /// The value for `key` and the seconds since it was stored, while its TTL lasts.
    pub(super) fn get(&self, key: &K, now: Instant) -> Option<(&V, u32)> {
        let s = self.map.get(key)?;
        Some((&s.value, s.elapsed(now)?))
    }

    pub(super) fn insert(&mut self, key: K, value: V, ttl: u32, now: Instant) {
        let seq = self.next;
        self.next += 1;
        let stored = Stored {
            value,
            stored: now,
            ttl,
            seq,
        };
        self.map.insert(key.clone(), stored);
        self.order.push_back((key, seq));
        while self.map.len() > self.capacity {
            self.evict_front();
        }
        // Expired answers at the front go now rather than when the cache is full.
        while self
            .order
            .front()
            .and_then(|(k, s)| self.map.get(k).filter(|v| v.seq == *s))
            .is_some_and(|v| v.elapsed(now).is_none())
        {
            self.evict_front();
        }
        // Re-stored keys leave stale entries in `order`; drop them once they are as many as the
        // live ones, so `order` stays within twice the capacity.
        if self.order.len() > 2 * self.capacity {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|v| v.seq == *s));
        }
    }

    /// Removes the oldest live entry (skipping stale ones).
    fn evict_front(&mut self) {
        while let Some((k, s)) = self.order.pop_front() {
            if self.map.get(&k).is_some_and(|v| v.seq == s) {
                self.map.remove(&k);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bounded_oldest_first_and_ttls_honoured() {
        let now = Instant::now();
        let mut c = Cache::new(3);
        for k in 0..3 {
            c.insert(k, k * 10, 60, now);
        }
        // Re-storing 0 makes it the newest: 1 is the oldest now.
        c.insert(0, 1, 60, now);
        c.insert(3, 30, 60, now);
        assert_eq!(c.len(), 3);
        assert!(c.get(&1, now).is_none(), "the oldest left");
        assert_eq!(c.get(&0, now).map(|(v, _)| *v), Some(1));
        assert_eq!(c.get(&3, now).map(|(v, _)| *v), Some(30));
        // A TTL passes: no answer, and the next store drops the expired front.
        let later = now + Duration::from_secs(61);
        assert!(c.get(&2, later).is_none());
        c.insert(9, 90, 60, later);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&9, later + Duration::from_secs(5)), Some((&90, 5)));
    }

    #[test]
    fn re_storing_one_key_does_not_grow_the_order() {
        let now = Instant::now();
        let mut c = Cache::new(4);
        for v in 0..10_000 {
            c.insert("same", v, 60, now);
        }
        assert_eq!(c.len(), 1);
        assert!(c.order.len() <= 8);
        assert_eq!(c.get(&"same", now).map(|(v, _)| *v), Some(9_999));
    }
}
