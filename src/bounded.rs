//! A map that remembers only its most recently inserted keys: for the
//! "have we seen this?" lookups of a long-running host (exchange fill ids,
//! exchange order ids, recently closed orders) whose memory must stay bounded.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Holds at most `capacity` entries; inserting a new key beyond that forgets the oldest.
#[derive(Debug, Clone)]
pub struct BoundedMap<K, V> {
    entries: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    /// An empty map of the given capacity.
    pub fn new(capacity: usize) -> Self {
        BoundedMap { entries: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// Inserts or replaces; returns true when the key was not present.
    pub fn insert(&mut self, key: K, value: V) -> bool {
        let new = self.entries.insert(key.clone(), value).is_none();
        if new {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.entries.remove(&old);
                }
            }
        }
        new
    }

    /// The value of a key, if remembered.
    pub fn get<Q: ?Sized + Hash + Eq>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.entries.get(key)
    }

    /// True when the key is remembered.
    pub fn contains<Q: ?Sized + Hash + Eq>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.entries.contains_key(key)
    }

    /// Number of remembered entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let mut map = BoundedMap::new(2);
        assert!(map.insert("a", 1));
        assert!(map.insert("b", 2));
        assert!(!map.insert("a", 3), "replacing is not new");
        assert!(map.insert("c", 4));
        assert_eq!((map.get(&"a"), map.get(&"b"), map.get(&"c")), (None, Some(&2), Some(&4)));
        assert_eq!(map.len(), 2);
    }
}
