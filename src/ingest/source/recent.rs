//! The ids of the messages a queue source has seen committed, the most recent
//! `window` of them: what a redelivered message is recognised by (`amqp`, `sqs`).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

#[derive(Debug)]
pub struct Recent {
    window: usize,
    order: VecDeque<Arc<str>>,
    known: HashSet<Arc<str>>,
}

impl Recent {
    /// Recalls `ids` (oldest first), which may be more than `window` (the
    /// checkpoints of every replica, one window each): each newer id then pushes one
    /// of them out, so every replica's window stays recognised as long as it would
    /// on its own.
    pub fn new(window: usize, ids: impl IntoIterator<Item = Arc<str>>) -> Self {
        let ids: Vec<Arc<str>> = ids.into_iter().collect();
        let mut recent = Self { window: window.max(ids.len()), order: VecDeque::new(), known: HashSet::new() };
        recent.extend(ids);
        recent
    }

    pub fn contains(&self, id: &str) -> bool {
        self.known.contains(id)
    }

    /// Adds committed ids, forgetting the oldest past the window.
    pub fn extend(&mut self, ids: impl IntoIterator<Item = Arc<str>>) {
        for id in ids {
            if !self.known.insert(id.clone()) {
                continue;
            }
            self.order.push_back(id);
            if self.order.len() > self.window {
                if let Some(old) = self.order.pop_front() {
                    self.known.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|&id| Arc::from(id)).collect()
    }

    #[test]
    fn keeps_the_most_recent_window() {
        let mut recent = Recent::new(3, ids(&["a", "b"]));
        recent.extend(ids(&["c", "b", "d"]));
        assert!(!recent.contains("a"));
        assert!(["b", "c", "d"].iter().all(|id| recent.contains(id)));
        recent.extend(ids(&["e"]));
        assert!(!recent.contains("b"));
    }

    #[test]
    fn every_recalled_id_is_kept_until_newer_ones_push_it_out() {
        let mut recent = Recent::new(2, ids(&["a", "b", "c"]));
        assert!(["a", "b", "c"].iter().all(|id| recent.contains(id)));
        recent.extend(ids(&["d"]));
        assert!(!recent.contains("a") && recent.contains("d"));
    }
}
