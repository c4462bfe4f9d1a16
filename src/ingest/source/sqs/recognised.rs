//! The ids of the messages most recently committed, oldest dropped first: a
//! message delivered again whose id is here is already in a commit.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

#[derive(Debug)]
pub struct Recognised {
    order: VecDeque<Arc<str>>,
    set: HashSet<Arc<str>>,
    window: usize,
}

impl Recognised {
    /// Starts from the ids the checkpoints hold, which may be more than `window`
    /// (one window per replica): each newer id then pushes one of them out, so
    /// every replica's window stays recognised as long as it would on its own.
    pub fn new(window: usize, seed: &[String]) -> Self {
        let window = window.max(seed.len());
        let mut recognised = Self { order: VecDeque::new(), set: HashSet::new(), window };
        for id in seed {
            recognised.insert(Arc::from(id.as_str()));
        }
        recognised
    }

    pub fn insert(&mut self, id: Arc<str>) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
        }
        if self.order.len() > self.window {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_ids_push_the_oldest_out() {
        let mut recognised = Recognised::new(2, &["a".into(), "b".into(), "c".into()]);
        assert!(["a", "b", "c"].iter().all(|id| recognised.contains(id)));
        recognised.insert("d".into());
        assert!(!recognised.contains("a"));
        assert!(["b", "c", "d"].iter().all(|id| recognised.contains(id)));
        recognised.insert("d".into());
        assert!(recognised.contains("b"), "an id inserted twice takes one place");
        let mut small = Recognised::new(1, &[]);
        small.insert("x".into());
        small.insert("y".into());
        assert!(!small.contains("x") && small.contains("y"));
    }
}
