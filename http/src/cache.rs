//! A bounded cache of open files for the server: what a path opened to, and
//! when that was last checked against the file system.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Open files by request path, each with the time it was last opened or
/// revalidated. An entry older than `max_age` is not returned (the caller
/// opens the path again and puts the fresh result back), so a change on
/// disk is seen within `max_age`. At most `capacity` entries: inserting
/// into a full cache drops the oldest one. The value (a file handle with its
/// size, times and validators) is shared as `Rc`, so a response still
/// sending from a dropped entry keeps its file open.
#[derive(Debug)]
pub struct FileCache<V> {
    map: HashMap<PathBuf, (Instant, Rc<V>)>,
    capacity: usize,
    max_age: Duration,
}

impl<V> FileCache<V> {
    /// A cache of at most `capacity` entries (0 disables it), each trusted
    /// for `max_age`.
    pub fn new(capacity: usize, max_age: Duration) -> FileCache<V> {
        FileCache {
            map: HashMap::with_capacity(capacity.min(4096)),
            capacity,
            max_age,
        }
    }

    /// The entry for `path` if it was checked less than `max_age` before
    /// `now`. A stale entry stays until [`FileCache::insert`] or
    /// [`FileCache::remove`] replaces it.
    pub fn get(&self, path: &Path, now: Instant) -> Option<Rc<V>> {
        let (at, v) = self.map.get(path)?;
        (now.saturating_duration_since(*at) < self.max_age).then(|| v.clone())
    }

    /// Records `value` for `path`, checked at `now`; returns the entry it
    /// replaced or evicted, if any.
    pub fn insert(&mut self, path: PathBuf, value: Rc<V>, now: Instant) -> Option<Rc<V>> {
        if self.capacity == 0 || self.max_age.is_zero() {
            return None;
        }
        if let Some(old) = self.map.insert(path.clone(), (now, value.clone())) {
            return Some(old.1);
        }
        if self.map.len() <= self.capacity {
            return None;
        }
        let oldest = self
            .map
            .iter()
            .filter(|(p, _)| **p != path)
            .min_by_key(|(_, (at, _))| *at)
            .map(|(p, _)| p.clone())?;
        self.map.remove(&oldest).map(|e| e.1)
    }

    /// Drops the entry for `path` (after an error on it).
    pub fn remove(&mut self, path: &Path) -> Option<Rc<V>> {
        self.map.remove(path).map(|e| e.1)
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_revalidated() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = FileCache::new(2, ms(100));
        assert!(c.insert("a".into(), Rc::new(1), t0).is_none());
        assert!(c.insert("b".into(), Rc::new(2), t0 + ms(1)).is_none());
        assert_eq!(c.get(Path::new("a"), t0 + ms(50)).as_deref(), Some(&1));
        assert_eq!(c.get(Path::new("a"), t0 + ms(100)), None, "stale");
        // Full: the oldest (a) goes.
        assert_eq!(
            c.insert("c".into(), Rc::new(3), t0 + ms(2)).as_deref(),
            Some(&1)
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(Path::new("a"), t0 + ms(3)), None);
        assert_eq!(
            c.insert("b".into(), Rc::new(4), t0 + ms(3)).as_deref(),
            Some(&2)
        );
        assert_eq!(c.remove(Path::new("c")).as_deref(), Some(&3));
        let mut off = FileCache::new(0, ms(100));
        assert!(off.insert("a".into(), Rc::new(1), t0).is_none());
        assert!(off.is_empty());
    }
}
